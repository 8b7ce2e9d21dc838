//! Publishing user events to Kafka: after each write, before the answer.
//!
//! The producer is idempotent with `acks=all`, so an acknowledged event is
//! durably in the topic exactly once per send. A write answers 2xx only after
//! that acknowledgement; when the broker does not give it in time the write
//! answers 503, and a retry with the same `Idempotency-Key` republishes the
//! same `event_id` (the consumer keeps one row per event id).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use callchain_domain::{Change, User};
use callchain_events::{EventType, UserEvent, UserPayload, headers};
use callchain_telemetry::kafka;
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    util::Timeout,
};
use tracing::Instrument as _;

use crate::{error::ApiError, extract::Deadline};

pub struct Publisher {
    brokers: String,
    topic: String,
    timeout: Duration,
    producer: RwLock<Arc<FutureProducer>>,
}

impl Publisher {
    pub fn new(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            timeout,
            producer: RwLock::new(Arc::new(producer(brokers, timeout)?)),
        })
    }

    /// Sends `event` and waits for the broker's acknowledgement, within the
    /// publish timeout and the request's deadline.
    pub async fn publish(&self, event: &UserEvent, deadline: &Deadline) -> Result<(), ApiError> {
        let key = event.key();
        let payload = event.to_json();
        let span = kafka::producer_span(&self.topic, &key);
        let event_id = event.event_id.to_string();
        let headers = kafka::inject_span(
            &span,
            OwnedHeaders::new()
                .insert(Header {
                    key: headers::EVENT_ID,
                    value: Some(event_id.as_str()),
                })
                .insert(Header {
                    key: headers::EVENT_TYPE,
                    value: Some(event.event_type.as_str()),
                }),
        );
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let budget = self.timeout.min(deadline.remaining());
        let producer = self.producer.read().expect("producer lock").clone();

        let sent = tokio::time::timeout(budget, producer.send(record, Timeout::After(budget)))
            .instrument(span.clone())
            .await;
        match sent {
            Ok(Ok(delivery)) => {
                kafka::record_delivery(&span, delivery.partition, delivery.offset);
                Ok(())
            }
            Ok(Err((error, _message))) => {
                kafka::record_error(&span, &error);
                self.recover_from(&producer, &error);
                Err(self.unavailable(&span, &error.to_string()))
            }
            Err(_elapsed) => {
                let reason = format!("no acknowledgement within {budget:?}");
                kafka::record_error(&span, &reason);
                if budget < self.timeout {
                    return Err(ApiError::DeadlineExceeded(
                        "the request ran out of time waiting for the event broker".into(),
                    ));
                }
                Err(self.unavailable(&span, &reason))
            }
        }
    }

    fn unavailable(&self, span: &tracing::Span, reason: &str) -> ApiError {
        span.in_scope(|| tracing::warn!(reason, "publishing an event failed"));
        ApiError::unavailable(
            "the event broker did not acknowledge the event; the change is stored: retry with the same \
             Idempotency-Key to publish it",
        )
    }

    /// An idempotent producer that hit a fatal error, or whose producer id
    /// the broker no longer accepts (a broker that lost or garbled its
    /// producer state fences it, or fails every send with an unknown server
    /// error), can send no more: replace it, so the service recovers by
    /// itself. A new producer registers a new producer id.
    fn recover_from(&self, producer: &Arc<FutureProducer>, error: &KafkaError) {
        let fenced = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerIdMapping
                    | RDKafkaErrorCode::Unknown
            )
        );
        if !fenced && producer.client().fatal_error().is_none() {
            return;
        }
        let mut current = self.producer.write().expect("producer lock");
        if !Arc::ptr_eq(&current, producer) {
            return; // a concurrent failure replaced it already
        }
        tracing::error!(error = %error, "the Kafka producer can send no more; starting a new one");
        match self::producer(&self.brokers, self.timeout) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                // Dropping a producer blocks briefly while it purges.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(error) => tracing::error!(error = %error, "cannot start a new Kafka producer"),
        }
    }

    /// Whether the broker answers a metadata request within a second.
    pub async fn ready(&self) -> bool {
        let producer = self.producer.read().expect("producer lock").clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

fn producer(brokers: &str, timeout: Duration) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Delivery fails (and the write answers 503) once this has passed.
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        // A short linger batches concurrent writes without adding latency.
        .set("linger.ms", "2")
        .set("reconnect.backoff.max.ms", "1000")
        .create()?)
}

/// The event of a write the user service made: `change` to `user`.
pub fn event_of(event_type: EventType, user: &User, change: &Change) -> UserEvent {
    UserEvent::new(
        event_type,
        change.event_id,
        change.occurred_at,
        user.id.as_uuid(),
        UserPayload {
            email: user.email.to_string(),
            name: user.name.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
        },
    )
}
