//! Messages the consumer cannot read go to `user-events.dlq`, as they came
//! (key, payload, every header) plus why and where from, so they can be
//! inspected and replayed.

use std::time::Duration;

use callchain_events::headers;
use callchain_telemetry::kafka;
use rdkafka::{
    error::KafkaError,
    message::{BorrowedHeaders, Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use tracing::{Instrument as _, Span};

use callchain_telemetry::kafka::KafkaLogs;

/// How long a send may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The headers of a dead letter: all of the original's, then `error`,
/// `original-topic`, `original-partition` and `original-offset`. A message
/// that was dead-lettered before keeps its old ones too; as Kafka readers
/// do, take the last header of a name.
pub fn dead_letter_headers(
    original: Option<&BorrowedHeaders>,
    reason: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let kept = original.map_or(0, |h| h.count());
    let mut out = OwnedHeaders::new_with_capacity(kept + 4);
    for header in original.into_iter().flat_map(|h| h.iter()) {
        out = out.insert(header);
    }
    let partition = partition.to_string();
    let offset = offset.to_string();
    [
        (headers::ERROR, reason),
        (headers::ORIGINAL_TOPIC, topic),
        (headers::ORIGINAL_PARTITION, partition.as_str()),
        (headers::ORIGINAL_OFFSET, offset.as_str()),
    ]
    .into_iter()
    .fold(out, |out, (key, value)| {
        out.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Sends dead letters and waits for the broker's acknowledgement.
pub struct DeadLetters {
    producer: FutureProducer<KafkaLogs>,
    topic: String,
}

impl DeadLetters {
    /// Dead letters to `topic` (`<topic read>.dlq`) through `producer`.
    pub fn new(producer: FutureProducer<KafkaLogs>, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Sends `message` to the dead-letter topic in a `send <topic>.dlq`
    /// span under `parent` (the message's process span); resolves once the
    /// broker has it.
    pub async fn send(&self, message: &OwnedMessage, reason: &str, parent: &Span) -> Result<(), KafkaError> {
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        let span = parent.in_scope(|| kafka::producer_span(&self.topic, &key));
        let headers = dead_letter_headers(
            message.headers().map(|h| h.as_borrowed()),
            reason,
            message.topic(),
            message.partition(),
            message.offset(),
        );
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        let sent = self.producer.send(record, QUEUE_TIMEOUT).instrument(span.clone()).await;
        kafka::record_sent(&self.topic, sent.is_err());
        match sent {
            Ok(delivery) => {
                kafka::record_delivery(&span, delivery.partition, delivery.offset);
                Ok(())
            }
            Err((error, _)) => {
                kafka::record_error(&span, &error);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn header_pairs(headers: &OwnedHeaders) -> Vec<(String, Option<String>)> {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn a_dead_letter_keeps_every_original_header_and_adds_the_reason_and_origin() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            })
            .insert(Header {
                key: "x-custom",
                value: Some(&[0xff, 0x00][..]),
            })
            .insert(Header::<&str> {
                key: "x-null",
                value: None,
            });
        let message = OwnedMessage::new(
            None,
            None,
            "user-events".into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(original),
        );

        let headers = dead_letter_headers(
            message.headers().map(|h| h.as_borrowed()),
            "schema version 2 is not one this consumer reads (it reads 1)",
            message.topic(),
            message.partition(),
            message.offset(),
        );

        let pairs = header_pairs(&headers);
        assert_eq!(
            pairs,
            [
                (
                    "traceparent".to_owned(),
                    Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())
                ),
                ("x-custom".to_owned(), Some("\u{fffd}\u{0}".to_owned())),
                ("x-null".to_owned(), None),
                (
                    "error".to_owned(),
                    Some("schema version 2 is not one this consumer reads (it reads 1)".to_owned())
                ),
                ("original-topic".to_owned(), Some("user-events".to_owned())),
                ("original-partition".to_owned(), Some("2".to_owned())),
                ("original-offset".to_owned(), Some("41".to_owned())),
            ]
        );
        // Binary header values travel untouched.
        assert_eq!(headers.get(1).value, Some(&[0xff, 0x00][..]));
    }

    #[test]
    fn a_message_without_headers_gets_only_the_dead_letter_headers() {
        let headers = dead_letter_headers(None, "the message has no payload", "user-events", 0, 0);
        let keys: Vec<String> = header_pairs(&headers).into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            ["error", "original-topic", "original-partition", "original-offset"]
        );
    }
}
