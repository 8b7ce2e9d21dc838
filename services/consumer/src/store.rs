//! The `user_events` table: a pool with the migrations applied, and the one
//! statement that writes a batch, which keeps each user's rows in the order
//! of that user's writes (their `sequence`).

use std::{future::Future, time::Duration};

use callchain_runtime::db::Failure;
use callchain_telemetry::db;
use sqlx::{Arguments as _, PgPool, postgres::PgArguments};
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

/// The batch's rows, as `UNNEST` makes them of the column arrays (in order).
macro_rules! batch {
    () => {
        "UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::integer[], $6::text[]::jsonb[], \
         $7::text[], $8::integer[], $9::bigint[], $10::bigint[]) WITH ORDINALITY \
         AS b (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, kafka_partition, \
         kafka_offset, sequence, position)"
    };
}

/// Every row of a batch in one statement, each stored only if its sequence
/// is newer than its user's newest, stored before or earlier in the batch:
/// a replayed or duplicated event is skipped, and an older event that came
/// after a newer one is left for [`RECORD_STALE`], so a user's rows never
/// go back in sequence.
const INSERT_EVENTS: &str = concat!(
    "INSERT INTO user_events (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, \
     kafka_partition, kafka_offset, sequence) \
     WITH judged AS (SELECT b.*, \
       GREATEST((SELECT max(e.sequence) FROM user_events e WHERE e.user_id = b.user_id), \
         max(b.sequence) OVER (PARTITION BY b.user_id ORDER BY b.position \
           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS newest \
       FROM ",
    batch!(),
    ") \
     SELECT event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, kafka_partition, \
     kafka_offset, sequence FROM judged WHERE newest IS NULL OR sequence > newest \
     ON CONFLICT DO NOTHING"
);

/// After [`INSERT_EVENTS`], in its transaction: the events of the batch it
/// did not store and that are not stored from before are older than their
/// user's newest; each is recorded once, beside that newest (as stored once
/// this batch is), and returned.
const RECORD_STALE: &str = concat!(
    "INSERT INTO stale_user_events (event_id, event_type, user_id, sequence, newer_sequence, occurred_at, payload, \
     trace_id, kafka_partition, kafka_offset) \
     SELECT * FROM (SELECT b.event_id, b.event_type, b.user_id, b.sequence, \
       (SELECT max(e.sequence) FROM user_events e WHERE e.user_id = b.user_id) AS newer_sequence, \
       b.occurred_at, b.payload, b.trace_id, b.kafka_partition, b.kafka_offset FROM ",
    batch!(),
    " WHERE NOT EXISTS (SELECT 1 FROM user_events e WHERE e.event_id = b.event_id)) AS stale \
     WHERE sequence <= newer_sequence \
     ON CONFLICT (event_id) DO NOTHING RETURNING event_id, user_id, sequence, newer_sequence"
);

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

/// A committed write: how many rows were new, and the statements' spans,
/// ended (their end time is the statement's) but not yet dropped.
///
/// Dropping a span is when its data is built, its span record written and
/// it is queued for export: most of the consumer's own work per event. The
/// caller drops these off its loop (`crate::close`).
pub struct Inserted {
    pub rows: u64,
    pub spans: Vec<Span>,
}

/// Writes `rows` in one transaction with one statement. Each row comes with
/// the span its `INSERT user_events` span goes under (its message's process
/// span); that span lasts as long as the statement.
pub async fn insert(pool: &PgPool, rows: &[(&EventRow, &Span)]) -> Result<Inserted, WriteError> {
    tokio::time::timeout(WRITE_TIMEOUT, insert_in_transaction(pool, rows))
        .await
        .unwrap_or(Err(WriteError::TimedOut))
}

async fn insert_in_transaction(pool: &PgPool, rows: &[(&EventRow, &Span)]) -> Result<Inserted, WriteError> {
    let columns: Columns = rows.iter().map(|&(row, _)| row).collect();
    let mut transaction = pool.begin().await?;

    let mut spans = Vec::new();
    let stored = traced(rows, "user_events", INSERT_EVENTS, &mut spans, async {
        sqlx::query_with(INSERT_EVENTS, arguments(&columns)?)
            .execute(&mut *transaction)
            .await
            .map(|done| done.rows_affected())
    })
    .await?;
    // Every row not stored is a replay, a duplicate or stale: only then is
    // there anything to record.
    let stale = if (stored as usize) < rows.len() {
        traced(rows, "stale_user_events", RECORD_STALE, &mut spans, async {
            sqlx::query_as_with::<_, Stale, _>(RECORD_STALE, arguments(&columns)?)
                .fetch_all(&mut *transaction)
                .await
        })
        .await?
    } else {
        Vec::new()
    };
    transaction.commit().await?;

    for (event_id, user_id, sequence, newer_sequence) in stale {
        let span = rows
            .iter()
            .find(|(row, _)| row.event.event_id == event_id)
            .map_or(Span::none(), |&(_, span)| span.clone());
        span.in_scope(|| {
            tracing::warn!(
                %event_id,
                %user_id,
                sequence,
                newer_sequence,
                "an event older than one already stored for its user: recorded in stale_user_events, not stored"
            );
        });
    }
    Ok(Inserted { rows: stored, spans })
}

/// Runs `statement` inside one `<operation> <table>` span per row, each
/// under that row's span; the spans end with the statement, whose duration
/// is recorded once. They go into `ended` when the statement succeeds, to
/// be dropped later; a failed statement's are dropped here.
async fn traced<T>(
    rows: &[(&EventRow, &Span)],
    table: &'static str,
    query: &'static str,
    ended: &mut Vec<Span>,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let started = std::time::Instant::now();
    let spans: Vec<Span> = rows
        .iter()
        .map(|&(_, parent)| db::batch_span(parent, "INSERT", table, query, rows.len()))
        .collect();
    let result = statement.await;
    if let Err(error) = &result {
        spans.iter().for_each(|span| db::record_error(span, error));
    }
    db::record_duration(started, "INSERT", table, result.is_err());
    if result.is_ok() {
        // A span that was never entered ends when it is dropped; entered
        // once, it ends when it is left: now, whenever it is dropped.
        for span in &spans {
            span.in_scope(|| {});
        }
        ended.extend(spans);
    }
    result
}

/// The batch's columns as `$1` ... `$10` of [`batch!`].
fn arguments(columns: &Columns) -> Result<PgArguments, sqlx::Error> {
    let mut arguments = PgArguments::default();
    // The encoded arrays in one allocation, sized once: grown by doubling,
    // the buffer of a 500-row batch was allocated afresh eight times per
    // statement, and the kernel zeroing its new pages took a tenth of the
    // consumer thread's time (docs/performance.md). Per row: the payload and
    // the trace id as text, and the fixed-size columns, each with its length
    // word.
    let rows = columns.event_ids.len();
    let text: usize = columns.payloads.iter().map(String::len).sum::<usize>()
        + columns.trace_ids.iter().flatten().map(String::len).sum::<usize>()
        + columns.event_types.iter().map(|t| t.len()).sum::<usize>();
    arguments.reserve(10, text + rows * 160 + 10 * 64);
    let mut add = || -> Result<(), sqlx::error::BoxDynError> {
        arguments.add(&columns.event_ids)?;
        arguments.add(&columns.event_types)?;
        arguments.add(&columns.user_ids)?;
        arguments.add(&columns.occurred_at)?;
        arguments.add(&columns.schema_versions)?;
        arguments.add(&columns.payloads)?;
        arguments.add(&columns.trace_ids)?;
        arguments.add(&columns.partitions)?;
        arguments.add(&columns.offsets)?;
        arguments.add(&columns.sequences)
    };
    add().map_err(sqlx::Error::Encode)?;
    Ok(arguments)
}

/// A row [`RECORD_STALE`] returns: the event, its user, its sequence and
/// its user's newest stored.
type Stale = (uuid::Uuid, uuid::Uuid, i64, i64);
