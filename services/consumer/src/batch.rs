//! The pure bookkeeping of a batch: its rows as column arrays, the offsets it
//! moves, and the pause between attempts to write it.

use std::{collections::BTreeMap, time::Duration};

use callchain_events::UserEvent;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One `user_events` row: the event and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event: UserEvent,
    /// The trace of the request that made the event (32 hex digits), when
    /// the message carried one.
    pub trace_id: Option<String>,
    pub partition: i32,
    pub offset: i64,
}

/// A batch of rows as one array per column, bound to the ten parameters of
/// `UNNEST($1, ..., $10)` in the one statement that writes them: one
/// statement whatever the batch size, so Postgres prepares it once per
/// connection.
#[derive(Debug, Default, PartialEq)]
pub struct Columns {
    pub event_ids: Vec<Uuid>,
    pub event_types: Vec<&'static str>,
    pub user_ids: Vec<Uuid>,
    pub occurred_at: Vec<DateTime<Utc>>,
    pub schema_versions: Vec<i32>,
    /// The event's payload as JSON text; the statement casts it to `jsonb`.
    pub payloads: Vec<String>,
    pub trace_ids: Vec<Option<String>>,
    pub partitions: Vec<i32>,
    pub offsets: Vec<i64>,
    /// Each event's place in its user's writes (`bigint` in Postgres).
    pub sequences: Vec<i64>,
}

impl<'a> FromIterator<&'a EventRow> for Columns {
    fn from_iter<I: IntoIterator<Item = &'a EventRow>>(rows: I) -> Self {
        let mut columns = Self::default();
        for row in rows {
            let event = &row.event;
            columns.event_ids.push(event.event_id);
            columns.event_types.push(event.event_type.as_str());
            columns.user_ids.push(event.user_id);
            columns.occurred_at.push(event.occurred_at);
            columns
                .schema_versions
                .push(i32::try_from(event.schema_version).expect("UserEvent::parse accepts only SCHEMA_VERSION"));
            columns
                .payloads
                .push(serde_json::to_string(&event.payload).expect("a UserPayload always serialises"));
            columns.trace_ids.push(row.trace_id.clone());
            columns.partitions.push(row.partition);
            columns.offsets.push(row.offset);
            columns
                .sequences
                .push(i64::try_from(event.sequence).expect("UserEvent::parse accepts only sequences Postgres stores"));
        }
        columns
    }
}

/// The highest offset handled per topic and partition: what to store once
/// every message of the batch is written or dead-lettered.
#[derive(Debug, Default, PartialEq)]
pub struct Offsets(BTreeMap<(String, i32), i64>);

impl Offsets {
    pub fn handled(&mut self, topic: &str, partition: i32, offset: i64) {
        self.0
            .entry((topic.to_owned(), partition))
            .and_modify(|highest| *highest = (*highest).max(offset))
            .or_insert(offset);
    }

    /// `(topic, partition, highest offset handled)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0
            .iter()
            .map(|((topic, partition), &offset)| (topic.as_str(), *partition, offset))
    }
}

/// The pause before each retry: 100 ms, doubling, at most 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use callchain_events::{EventType, UserPayload};

    use super::*;

    fn row(partition: i32, offset: i64, trace_id: Option<&str>) -> EventRow {
        EventRow {
            event: UserEvent::new(
                EventType::UserUpdated,
                Uuid::now_v7(),
                Utc::now(),
                Uuid::now_v7(),
                offset as u64 + 1,
                UserPayload {
                    email: "ada@example.com".into(),
                    name: "Ada".into(),
                    role: "USER".into(),
                },
            ),
            trace_id: trace_id.map(str::to_owned),
            partition,
            offset,
        }
    }

    #[test]
    fn a_batch_becomes_one_array_per_column_in_row_order() {
        let rows = [row(0, 7, Some("4bf92f3577b34da6a3ce929d0e0e4736")), row(2, 3, None)];
        let columns: Columns = rows.iter().collect();

        assert_eq!(columns.event_ids, [rows[0].event.event_id, rows[1].event.event_id]);
        assert_eq!(columns.event_types, ["user.updated", "user.updated"]);
        assert_eq!(columns.user_ids, [rows[0].event.user_id, rows[1].event.user_id]);
        assert_eq!(
            columns.occurred_at,
            [rows[0].event.occurred_at, rows[1].event.occurred_at]
        );
        assert_eq!(columns.schema_versions, [2, 2]);
        assert_eq!(columns.sequences, [8, 4]);
        assert_eq!(
            columns.trace_ids,
            [Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()), None]
        );
        assert_eq!(columns.partitions, [0, 2]);
        assert_eq!(columns.offsets, [7, 3]);
        let payload: serde_json::Value = serde_json::from_str(&columns.payloads[0]).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({ "email": "ada@example.com", "name": "Ada", "role": "USER" })
        );
    }

    #[test]
    fn an_empty_batch_has_empty_columns() {
        assert_eq!(std::iter::empty::<&EventRow>().collect::<Columns>(), Columns::default());
    }

    #[test]
    fn offsets_keep_the_highest_handled_per_partition_whatever_the_order() {
        let mut offsets = Offsets::default();
        offsets.handled("user-events", 1, 10);
        offsets.handled("user-events", 0, 4);
        offsets.handled("user-events", 1, 12);
        offsets.handled("user-events", 1, 11);
        offsets.handled("user-events", 0, 3);
        offsets.handled("other", 1, 2);

        assert_eq!(
            offsets.iter().collect::<Vec<_>>(),
            [("other", 1, 2), ("user-events", 0, 4), ("user-events", 1, 12)]
        );
    }

    #[test]
    fn no_message_handled_stores_no_offset() {
        assert_eq!(Offsets::default().iter().count(), 0);
    }

    #[test]
    fn the_backoff_doubles_from_100_ms_and_stops_at_5_s() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
