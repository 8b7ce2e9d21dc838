//! The `user_events` table: a pool with the migrations applied, and the one
//! statement that writes a batch.

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

/// Every row of a batch in one statement; a replayed event hits the primary
/// key and is skipped.
const INSERT_EVENTS: &str = "INSERT INTO user_events \
     (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, kafka_partition, kafka_offset) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::integer[], \
     $6::text[]::jsonb[], $7::text[], $8::integer[], $9::bigint[]) \
     ON CONFLICT (event_id) DO NOTHING";

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
    let result = sqlx::query(INSERT_EVENTS)
        .bind(columns.event_ids)
        .bind(columns.event_types)
        .bind(columns.user_ids)
        .bind(columns.occurred_at)
        .bind(columns.schema_versions)
        .bind(columns.payloads)
        .bind(columns.trace_ids)
        .bind(columns.partitions)
        .bind(columns.offsets)
        .execute(&mut *transaction)
        .await;
    if let Err(error) = &result {
        spans.iter().for_each(|span| db::record_error(span, error));
    }
    drop(spans);

    let rows = result?.rows_affected();
    transaction.commit().await?;
    Ok(rows)
}
