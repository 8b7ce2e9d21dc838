//! What travels on Kafka between the user service (its outbox relay) and
//! the consumer.
//!
//! - [`UserEvent`]: the envelope (`event_id`, `event_type`, `occurred_at`,
//!   `user_id`, `sequence`, `schema_version`) and its payload, which holds
//!   no secret.
//! - [`TOPIC`], [`DLQ_TOPIC`]: where events go, and where those the consumer
//!   cannot read end up (the defaults: both services take another topic
//!   from `KAFKA_TOPIC`, with [`dlq_topic`] beside it).
//! - [`headers`]: the Kafka header names beside the trace context
//!   (`traceparent`, `tracestate`, `baggage`, written by the telemetry).
//!
//! Messages are keyed by user id, so one user's events keep their order;
//! each event also carries its user's `sequence` (1 for the creation, one
//! more for each write after it), so a reader can tell an older event of a
//! user from a newer one, and a missing one from a gap in the numbers.

use callchain_domain::{Change, Email, Invalid, Role, User, UserName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic of user events.
pub const TOPIC: &str = "user-events";
/// Messages the consumer cannot read, with their original headers and the reason.
pub const DLQ_TOPIC: &str = "user-events.dlq";

/// The dead-letter topic of `topic`: `<topic>.dlq` ([`DLQ_TOPIC`] for [`TOPIC`]).
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
/// The highest sequence an event may carry: the user service counts it in a
/// Postgres `bigint`, and the consumer stores it in one.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// The envelope version this code writes and reads. Version 2 added the
/// required `sequence`; a version 1 envelope has none, so it is not read
/// (the consumer dead-letters it with the reason).
pub const SCHEMA_VERSION: u32 = 2;

/// Kafka header names.
pub mod headers {
    /// The event's id, so a message can be identified without parsing it.
    pub const EVENT_ID: &str = "event-id";
    /// `user.created`, `user.updated` or `user.deleted`.
    pub const EVENT_TYPE: &str = "event-type";
    /// On a dead letter: why the consumer refused the message.
    pub const ERROR: &str = "error";
    /// On a dead letter: where the message came from.
    pub const ORIGINAL_TOPIC: &str = "original-topic";
    pub const ORIGINAL_PARTITION: &str = "original-partition";
    pub const ORIGINAL_OFFSET: &str = "original-offset";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "user.deleted")]
    UserDeleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::UserUpdated => "user.updated",
            EventType::UserDeleted => "user.deleted",
        }
    }
}

/// The user as the event tells it: never a password or a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPayload {
    pub email: String,
    pub name: String,
    pub role: String,
}

impl UserPayload {
    /// Whether every field is one the domain takes.
    pub fn check(&self) -> Result<(), Invalid> {
        Email::parse(&self.email)?;
        UserName::parse(&self.name)?;
        Role::parse(&self.role)?;
        Ok(())
    }
}

/// One change to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Stable across retries of the same write: the consumer's dedup key.
    pub event_id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub user_id: Uuid,
    /// The user's version this event made: 1 for the creation, and one more
    /// for each write after it (the deletion included), counted by the
    /// user service in the statement of the write itself, so one user's
    /// sequences follow the order its writes committed in.
    pub sequence: u64,
    pub schema_version: u32,
    pub payload: UserPayload,
}

/// Why a message is not a user event this code can read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the message has no payload")]
    Empty,
    #[error("the payload is not a user event: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("schema version {0} is not one this consumer reads (it reads {SCHEMA_VERSION})")]
    UnknownSchemaVersion(u64),
    #[error("sequence {0} is not one a user service writes (1 to {MAX_SEQUENCE})")]
    SequenceOutOfRange(u64),
    /// A field the domain refuses: the same rules as the API's and the user
    /// service's, so nothing reaches Postgres that it would refuse (a NUL).
    #[error("the payload's {0}")]
    Invalid(#[from] Invalid),
}

impl UserEvent {
    pub fn new(
        event_type: EventType,
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        user_id: Uuid,
        sequence: u64,
        payload: UserPayload,
    ) -> Self {
        Self {
            event_id,
            event_type,
            occurred_at,
            user_id,
            sequence,
            schema_version: SCHEMA_VERSION,
            payload,
        }
    }

    /// The event of a write: `change` made to `user` (as it stands after
    /// the change; for a deletion, as it stood before), which made the
    /// user's version `sequence`.
    pub fn of(event_type: EventType, user: &User, change: &Change, sequence: u64) -> Self {
        Self::new(
            event_type,
            change.event_id,
            change.occurred_at,
            user.id.as_uuid(),
            sequence,
            UserPayload {
                email: user.email.to_string(),
                name: user.name.as_str().to_owned(),
                role: user.role.as_str().to_owned(),
            },
        )
    }

    /// The message key: the user id, so one user's events stay in order.
    pub fn key(&self) -> String {
        self.user_id.to_string()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a UserEvent always serialises")
    }

    /// Reads a message payload; the version is checked before the rest, so a
    /// newer envelope is told apart from a broken one.
    pub fn parse(payload: Option<&[u8]>) -> Result<Self, EventError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u64,
        }
        let payload = payload.filter(|p| !p.is_empty()).ok_or(EventError::Empty)?;
        let Version { schema_version } = serde_json::from_slice(payload)?;
        if schema_version != u64::from(SCHEMA_VERSION) {
            return Err(EventError::UnknownSchemaVersion(schema_version));
        }
        let event: Self = serde_json::from_slice(payload)?;
        if !(1..=MAX_SEQUENCE).contains(&event.sequence) {
            return Err(EventError::SequenceOutOfRange(event.sequence));
        }
        event.payload.check()?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> UserEvent {
        UserEvent::new(
            EventType::UserCreated,
            Uuid::now_v7(),
            Utc::now(),
            Uuid::now_v7(),
            1,
            UserPayload {
                email: "ada@example.com".into(),
                name: "Ada".into(),
                role: "USER".into(),
            },
        )
    }

    #[test]
    fn an_event_round_trips_through_json() {
        let event = event();
        let json = event.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""event_type":"user.created""#), "{text}");
        assert!(text.contains(r#""schema_version":2"#), "{text}");
        assert!(text.contains(r#""sequence":1"#), "{text}");
        assert_eq!(UserEvent::parse(Some(&json)).unwrap(), event);
    }

    #[test]
    fn garbage_an_empty_message_and_a_future_version_are_refused_apart() {
        assert!(matches!(UserEvent::parse(None), Err(EventError::Empty)));
        assert!(matches!(
            UserEvent::parse(Some(b"{not json")),
            Err(EventError::Malformed(_))
        ));
        let mut future = serde_json::to_value(event()).unwrap();
        future["schema_version"] = 3.into();
        let bytes = serde_json::to_vec(&future).unwrap();
        let error = UserEvent::parse(Some(&bytes)).unwrap_err();
        assert!(matches!(error, EventError::UnknownSchemaVersion(3)));
        assert!(error.to_string().contains("schema version 3"));
    }

    #[test]
    fn a_payload_field_the_domain_refuses_is_invalid_and_named() {
        for (field, value) in [
            ("email", "ada\u{0}@example.com"),
            ("name", "Ada\u{0}"),
            ("role", "ROOT"),
        ] {
            let mut json = serde_json::to_value(event()).unwrap();
            json["payload"][field] = value.into();
            let error = UserEvent::parse(Some(&serde_json::to_vec(&json).unwrap())).unwrap_err();
            match &error {
                EventError::Invalid(invalid) => assert_eq!(invalid.field, field),
                other => panic!("{field}: unexpected {other:?}"),
            }
            assert!(
                error.to_string().starts_with(&format!("the payload's {field}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_version_1_envelope_without_a_sequence_is_not_read() {
        let mut old = serde_json::to_value(event()).unwrap();
        old["schema_version"] = 1.into();
        old.as_object_mut().unwrap().remove("sequence");
        let error = UserEvent::parse(Some(&serde_json::to_vec(&old).unwrap())).unwrap_err();
        assert!(matches!(error, EventError::UnknownSchemaVersion(1)), "{error}");
    }

    #[test]
    fn a_sequence_of_0_or_past_a_bigint_is_refused() {
        for sequence in [0, MAX_SEQUENCE + 1] {
            let mut json = serde_json::to_value(event()).unwrap();
            json["sequence"] = sequence.into();
            let error = UserEvent::parse(Some(&serde_json::to_vec(&json).unwrap())).unwrap_err();
            assert!(
                matches!(error, EventError::SequenceOutOfRange(s) if s == sequence),
                "{sequence}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_sequence_is_malformed() {
        let mut value = serde_json::to_value(event()).unwrap();
        value.as_object_mut().unwrap().remove("sequence");
        let error = UserEvent::parse(Some(&serde_json::to_vec(&value).unwrap())).unwrap_err();
        assert!(error.to_string().contains("sequence"), "{error}");
    }

    #[test]
    fn a_missing_field_is_malformed() {
        let mut value = serde_json::to_value(event()).unwrap();
        value.as_object_mut().unwrap().remove("user_id");
        let error = UserEvent::parse(Some(&serde_json::to_vec(&value).unwrap())).unwrap_err();
        assert!(error.to_string().contains("user_id"), "{error}");
    }
}
