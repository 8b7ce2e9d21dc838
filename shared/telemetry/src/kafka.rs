//! Trace context in Kafka message headers, and the messaging spans.
//!
//! The producer opens a `producer` span `send <topic>` and writes its context
//! into the message's headers (`traceparent`, `tracestate`, `baggage`). The
//! consumer opens a `consumer` span `process <topic>` that is a child of that
//! context (one trace holds the whole chain) and also links to it, as the
//! OpenTelemetry messaging conventions ask, and that records the caller's id
//! from the baggage as `enduser.id`. Only our own services write the topics,
//! so their baggage is trusted, within the W3C limits.

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use rdkafka::{
    ClientContext,
    config::RDKafkaLogLevel,
    error::KafkaError,
    message::{BorrowedHeaders, Header, Headers as _, OwnedHeaders},
};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// rdkafka reports through the `log` crate by default, which nothing here
/// listens to; this context reports through `tracing` instead, so
/// librdkafka's warnings (a broker down, a request timed out) reach the
/// service's JSON log. Broker outages arrive as errors: librdkafka
/// reconnects by itself, so they are logged and nothing else.
pub struct KafkaLogs;

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "kafka client error: {reason}");
    }
}

/// One librdkafka log line, at its level, in the service's log: what a
/// client context of its own (with more to do than log) calls from its
/// `log`.
pub fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

struct HeaderInjector(Option<OwnedHeaders>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = self.0.take().unwrap_or_default();
        self.0 = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

/// Reads the context from a message's headers. Header values are bytes;
/// those that are not UTF-8 are ignored. Of several headers with one name
/// the last counts, as Kafka readers take it: a message passed on again
/// keeps the headers it came with and appends newer ones.
pub struct HeaderExtractor<'a>(pub Option<&'a BorrowedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?
            .iter()
            .filter(|header| header.key.eq_ignore_ascii_case(key))
            .last()
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|headers| headers.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

/// Adds `context` to `headers` as `traceparent`, `tracestate` and `baggage`.
pub fn inject(context: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut injector = HeaderInjector(Some(headers));
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(context, &mut injector));
    injector.0.unwrap_or_default()
}

/// Adds the context of `span` to `headers`: the producer side.
pub fn inject_span(span: &Span, headers: OwnedHeaders) -> OwnedHeaders {
    inject(&span.context(), headers)
}

/// The context a message's headers carry (empty when they carry none).
pub fn extract(headers: Option<&BorrowedHeaders>) -> Context {
    crate::baggage::BaggagePolicy::TRUSTED.extract(&HeaderExtractor(headers))
}

/// The `producer` span of sending one message; record the broker's answer
/// with [`record_delivery`].
pub fn producer_span(topic: &str, key: &str) -> Span {
    tracing::info_span!(
        "kafka.send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.kafka.message.key = key,
        messaging.message.id = Empty,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
    )
}

/// The id of the message sent (our event id): a message sent again, after
/// an acknowledgement that never came, has a `send` span per attempt with
/// the same id, so a reader of the trace can tell the attempts of one
/// message from two messages.
pub fn record_message_id(span: &Span, id: &str) {
    span.record("messaging.message.id", id);
}

/// Where the broker stored the message.
pub fn record_delivery(span: &Span, partition: i32, offset: i64) {
    span.record("messaging.destination.partition.id", partition.to_string());
    span.record("messaging.kafka.offset", offset);
}

/// Marks a messaging span as failed.
pub fn record_error(span: &Span, error: &dyn std::fmt::Display) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
}

/// Counts one message a producer tried to send to `topic`
/// (`messaging.client.sent.messages`), with `error.type` when the broker
/// never acknowledged it.
pub fn record_sent(topic: &str, failed: bool) {
    crate::metrics::with(|metrics| {
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
        ];
        if failed {
            attributes.push(KeyValue::new("error.type", "_OTHER"));
        }
        metrics.messaging_sent.add(1, &attributes);
    });
}

/// Records one message's `messaging.process.duration`: from `received`
/// (when the consumer had it) until now, when its processing ended.
pub fn record_processed(received: std::time::Instant, topic: &str, consumer_group: &str) {
    crate::metrics::with(|metrics| {
        let attributes = [
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.consumer.group.name", consumer_group.to_owned()),
        ];
        metrics
            .messaging_process_duration
            .record(received.elapsed().as_secs_f64(), &attributes);
    });
}

/// Where a received message came from.
#[derive(Clone, Copy)]
pub struct Received<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub headers: Option<&'a BorrowedHeaders>,
}

/// The `consumer` span `process <topic>` of one message: a child of the
/// context in its headers, with a link to it too.
pub fn process_span(message: Received<'_>, consumer_group: &str) -> Span {
    let key = message.key.map(String::from_utf8_lossy);
    let span = tracing::info_span!(
        "kafka.process",
        otel.name = %format_args!("process {}", message.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = message.topic,
        messaging.consumer.group.name = consumer_group,
        messaging.destination.partition.id = %message.partition,
        messaging.kafka.offset = message.offset,
        messaging.kafka.message.key = key.as_deref(),
        enduser.id = Empty,
    );
    let parent = extract(message.headers);
    crate::baggage::record_enduser(&span, &parent);
    let producer = parent.span().span_context().clone();
    if producer.is_valid() {
        span.add_link(producer);
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message as _, OwnedMessage, Timestamp};

    #[test]
    fn context_injected_into_headers_is_extracted_from_them() {
        crate::install_propagator();
        let mut incoming = ::http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            ::http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = crate::propagation::extract(&incoming);

        let headers = inject(
            &context,
            OwnedHeaders::new().insert(Header {
                key: "event-id",
                value: Some("e1"),
            }),
        );
        let message = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
        let borrowed = message.headers().map(|h| h.as_borrowed());
        let extracted = extract(borrowed);
        let span_context = extracted.span().span_context().clone();
        assert_eq!(span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context.is_remote());
        // The headers we had are kept.
        let extractor = HeaderExtractor(borrowed);
        let keys = extractor.keys();
        assert!(keys.contains(&"event-id") && keys.contains(&"traceparent"), "{keys:?}");
    }

    #[test]
    fn of_two_traceparent_headers_the_later_one_is_extracted() {
        crate::install_propagator();
        let later = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            })
            .insert(Header {
                key: "error",
                value: Some("the message has no payload"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(later),
            });
        let message = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers));
        let borrowed = message.headers().map(|h| h.as_borrowed());

        assert_eq!(HeaderExtractor(borrowed).get("traceparent"), Some(later));
        let span_context = extract(borrowed).span().span_context().clone();
        assert_eq!(span_context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span_context.span_id().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn a_message_without_context_extracts_to_nothing() {
        crate::install_propagator();
        assert!(!extract(None).span().span_context().is_valid());
    }
}
