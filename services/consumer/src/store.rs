//! The `user_events` table: a pool with the migrations applied, and the one
//! statement that writes a batch, which keeps each user's rows in the order
//! of that user's writes (their `sequence`).

use std::time::Duration;

use callchain_runtime::db::Failure;
use callchain_telemetry::db;
use sqlx::PgPool;
use tracing::Span;

use crate::{
    batch::{Columns, EventRow},
    config::Config,
};

/// A pool on `DATABASE_URL`, with the consumer's migrations applied.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    callchain_runtime::db::open(
        &config.database_url,
        config.max_connections,
        sqlx::migrate!("./migrations"),
        "the consumer's database (DATABASE_URL)",
    )
    .await
}

/// The longest a whole write (connection, statement, commit) may take before
/// it counts as failed and is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every row of a batch in one statement. Each row is judged against the
/// newest sequence of its user already stored or earlier in the batch:
///
/// - newer: stored;
/// - the same event again (a replay, a duplicate from the broker): skipped;
/// - an older event not stored yet (it came after a newer one): recorded
///   once in `stale_user_events`, never stored, so a user's rows never go
///   back in sequence; the statement returns it, one row each.
///
/// The statement always returns at least one row, whose first column is how
/// many events were stored.
const INSERT_EVENTS: &str = "WITH batch AS ( \
       SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::integer[], \
       $6::text[]::jsonb[], $7::text[], $8::integer[], $9::bigint[], $10::bigint[]) WITH ORDINALITY \
       AS b (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, \
       kafka_partition, kafka_offset, sequence, position)), \
     judged AS ( \
       SELECT b.*, \
         GREATEST((SELECT max(e.sequence) FROM user_events e WHERE e.user_id = b.user_id), \
           max(b.sequence) OVER (PARTITION BY b.user_id ORDER BY b.position \
             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS newest, \
         EXISTS (SELECT 1 FROM user_events e WHERE e.event_id = b.event_id) \
           OR row_number() OVER (PARTITION BY b.event_id ORDER BY b.position) > 1 AS seen \
       FROM batch b), \
     stored AS ( \
       INSERT INTO user_events (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, \
         kafka_partition, kafka_offset, sequence) \
       SELECT event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, \
         kafka_partition, kafka_offset, sequence FROM judged \
       WHERE NOT seen AND (newest IS NULL OR sequence > newest) \
       ON CONFLICT DO NOTHING RETURNING 1), \
     stale AS ( \
       INSERT INTO stale_user_events (event_id, event_type, user_id, sequence, newer_sequence, occurred_at, \
         payload, trace_id, kafka_partition, kafka_offset) \
       SELECT event_id, event_type, user_id, sequence, newest, occurred_at, payload, trace_id, \
         kafka_partition, kafka_offset FROM judged \
       WHERE NOT seen AND sequence <= newest \
       ON CONFLICT (event_id) DO NOTHING RETURNING event_id, user_id, sequence, newer_sequence) \
     SELECT (SELECT count(*) FROM stored), stale.event_id, stale.user_id, stale.sequence, stale.newer_sequence \
     FROM (VALUES (1)) AS one LEFT JOIN stale ON true";

/// Why a write failed, which decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Postgres refused the rows themselves (a data or constraint error):
    /// writing them again cannot succeed.
    #[error("Postgres refused the rows: {0}")]
    Rejected(#[source] sqlx::Error),
    /// Postgres is unreachable or failed: the same write may succeed later.
    #[error("Postgres is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("Postgres did not finish the write within {WRITE_TIMEOUT:?}")]
    TimedOut,
}

impl From<sqlx::Error> for WriteError {
    /// Only rows Postgres refused are rejected (and dead-lettered); a
    /// transient failure, and anything else, is retried, so no event is
    /// dead-lettered for Postgres being down.
    fn from(error: sqlx::Error) -> Self {
        match callchain_runtime::db::classify(&error) {
            Failure::Refused => Self::Rejected(error),
            Failure::Transient | Failure::Other => Self::Unavailable(error),
        }
    }
}

/// Writes `rows` in one transaction with one statement, and returns how
/// many rows were new. Each row comes with the span its `INSERT user_events`
/// span goes under (its message's process span); that span lasts as long as
/// the statement.
pub async fn insert(pool: &PgPool, rows: &[(&EventRow, &Span)]) -> Result<u64, WriteError> {
    tokio::time::timeout(WRITE_TIMEOUT, insert_in_transaction(pool, rows))
        .await
        .unwrap_or(Err(WriteError::TimedOut))
}

async fn insert_in_transaction(pool: &PgPool, rows: &[(&EventRow, &Span)]) -> Result<u64, WriteError> {
    let columns: Columns = rows.iter().map(|&(row, _)| row).collect();
    let mut transaction = pool.begin().await?;

    let spans: Vec<Span> = rows
        .iter()
        .map(|&(_, parent)| db::batch_span(parent, "INSERT", "user_events", INSERT_EVENTS, rows.len()))
        .collect();
    let result = sqlx::query_as::<_, Judged>(INSERT_EVENTS)
        .bind(columns.event_ids)
        .bind(columns.event_types)
        .bind(columns.user_ids)
        .bind(columns.occurred_at)
        .bind(columns.schema_versions)
        .bind(columns.payloads)
        .bind(columns.trace_ids)
        .bind(columns.partitions)
        .bind(columns.offsets)
        .bind(columns.sequences)
        .fetch_all(&mut *transaction)
        .await;
    if let Err(error) = &result {
        spans.iter().for_each(|span| db::record_error(span, error));
    }
    drop(spans);

    let judged = result?;
    transaction.commit().await?;
    for &(_, event_id, user_id, sequence, newer_sequence) in &judged {
        let Some(event_id) = event_id else { continue };
        let span = rows
            .iter()
            .find(|(row, _)| row.event.event_id == event_id)
            .map_or(Span::none(), |&(_, span)| span.clone());
        span.in_scope(|| {
            tracing::warn!(
                %event_id,
                user_id = ?user_id,
                sequence = ?sequence,
                newer_sequence = ?newer_sequence,
                "an event older than one already stored for its user: recorded in stale_user_events, not stored"
            );
        });
    }
    Ok(judged.first().map_or(0, |&(stored, ..)| stored.unsigned_abs()))
}

/// A row `INSERT_EVENTS` returns: how many events it stored, and one stale
/// event's id, user, sequence and newer sequence (or none).
type Judged = (i64, Option<uuid::Uuid>, Option<uuid::Uuid>, Option<i64>, Option<i64>);
