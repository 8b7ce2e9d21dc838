//! The outbox relay: publishes the events the writes left in the `outbox`
//! table to Kafka, and deletes each row only once the broker has
//! acknowledged it.
//!
//! It wakes when a write commits (the table's trigger notifies `outbox`,
//! which this relay `LISTEN`s to), at start, and every second besides, which
//! also covers notifications lost with a dropped `LISTEN` connection. Each
//! round is one transaction: a transaction-scoped advisory lock, so one relay
//! of all the replicas publishes at a time (one user's events keep their
//! order); a bounded batch of rows in id order; every row sent through the
//! idempotent producer (`acks=all`) and every acknowledgement awaited; the
//! rows deleted; commit. When a send fails the round rolls back and is
//! retried with backoff: a row stays until acknowledged. A row sent twice
//! (its acknowledgement lost, or a commit that failed after it) reaches the
//! consumer twice with one event id, and the consumer keeps one row per
//! event id: exactly once in effect.
//!
//! Each send opens the `send <topic>` producer span as a child of the trace
//! context the row kept (the writing request's), and the message's headers
//! carry the producer span's own, so the consumer's process span sits under
//! it in that same trace.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use callchain_events::headers;
use callchain_telemetry::{kafka, propagation};
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, watch};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::Config;

/// The channel the outbox's trigger notifies on commit.
const CHANNEL: &str = "outbox";
/// Most rows one round publishes; a full round is followed by another at once.
const BATCH: i64 = 500;
/// The longest a relay sleeps with no notification.
const TICK: Duration = Duration::from_secs(1);
/// The pause after a failed round, doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a round under way may go on once the service is stopping.
pub const ROUND_GRACE: Duration = Duration::from_secs(2);

/// The key of the advisory lock a round holds: one relay publishes at a time.
/// (A single bigint key, apart from the idempotency keys' pairs of int4.)
const LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtext('callchain outbox relay')::bigint)";
const SELECT_BATCH: &str = "SELECT id, event_id, topic, key, event_type, payload, traceparent, tracestate, baggage \
     FROM outbox ORDER BY id LIMIT $1";
const DELETE_SENT: &str = "DELETE FROM outbox WHERE id = ANY($1)";

/// Why a round failed; the next round tries again.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the outbox's database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kafka did not acknowledge event {event_id}: {error}")]
    Kafka { event_id: uuid::Uuid, error: KafkaError },
    #[error("Kafka did not acknowledge the batch within {0:?}")]
    TimedOut(Duration),
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: uuid::Uuid,
    topic: String,
    key: String,
    event_type: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    baggage: Option<String>,
}

impl OutboxRow {
    /// The `send <topic>` span of this row, under the writing request's span.
    fn producer_span(&self) -> tracing::Span {
        let fields: HashMap<String, String> = [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
            ("baggage", &self.baggage),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value.clone()?)))
        .collect();
        let span = kafka::producer_span(&self.topic, &self.key);
        let _ = span.set_parent(propagation::extract_fields(&fields));
        span
    }
}

/// How a round ended.
enum Round {
    /// This many rows were published (a full batch means more may wait).
    Published(usize),
    /// Another relay holds the lock: it publishes what waits, and every
    /// relay is notified of every commit, so it will see ours too.
    Busy,
}

/// The relay of one user-service process.
pub struct Relay {
    pool: PgPool,
    brokers: String,
    timeout: Duration,
    producer: FutureProducer,
}

impl Relay {
    pub fn new(pool: PgPool, config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            brokers: config.kafka_brokers.clone(),
            timeout: config.publish_timeout,
            producer: producer(&config.kafka_brokers, config.publish_timeout)?,
        })
    }

    /// Publishes until `stop` turns true; a round under way finishes (its
    /// sends acknowledged and its rows deleted, or rolled back) first, if it
    /// can within [`ROUND_GRACE`].
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.pool.clone(), wake.clone()));
        let mut backoff = FIRST_BACKOFF;
        // Since when rounds fail, so an outage is logged once, not per round.
        let mut failing: Option<Instant> = None;
        loop {
            let outcome = {
                let round = self.round();
                tokio::pin!(round);
                tokio::select! {
                outcome = &mut round => outcome,
                () = stopping(&mut stop) => {
                    // The round under way gets a moment to finish; past it
                    // (a broker that does not answer) it is dropped: its
                    // transaction rolls back and its rows wait in the outbox
                    // for the next start, so the process still stops within
                    // its bound and nothing is lost.
                    match tokio::time::timeout(ROUND_GRACE, &mut round).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            tracing::warn!(
                                grace_ms = ROUND_GRACE.as_millis() as u64,
                                "the outbox relay stops with a round unfinished; its events stay in the outbox"
                            );
                            listener.abort();
                            return;
                        }
                    }
                }
                }
            };
            let pause = match outcome {
                Ok(Round::Published(n)) => {
                    if let Some(since) = failing.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            "the outbox relay publishes again"
                        );
                    }
                    backoff = FIRST_BACKOFF;
                    if n as i64 == BATCH {
                        if *stop.borrow() {
                            break;
                        }
                        continue;
                    }
                    TICK
                }
                Ok(Round::Busy) => TICK,
                Err(error) => {
                    if failing.is_none() {
                        failing = Some(Instant::now());
                        tracing::warn!(
                            error = %error,
                            "the outbox relay cannot publish; events wait in the outbox until it can"
                        );
                    } else {
                        tracing::debug!(error = %error, "the outbox relay still cannot publish");
                    }
                    self.recover_from(&error);
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            if *stop.borrow() {
                break;
            }
            let failed = failing.is_some();
            tokio::select! {
                // A commit while failing does not cut the backoff short.
                () = wake.notified(), if !failed => {}
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        listener.abort();
        // The changes committed while the service drained: one last round
        // sends them, so a clean stop leaves nothing waiting.
        match tokio::time::timeout(ROUND_GRACE, self.round()).await {
            Ok(Ok(Round::Published(n))) => tracing::info!(published = n, "outbox relay stopped"),
            Ok(Ok(Round::Busy)) => tracing::info!("outbox relay stopped; another replica's relay publishes"),
            Ok(Err(error)) => tracing::warn!(
                error = %error,
                "outbox relay stopped; its last round failed and its events stay in the outbox"
            ),
            Err(_) => {
                tracing::warn!("outbox relay stopped with its last round unfinished; its events stay in the outbox")
            }
        }
    }

    /// One round: lock, read a batch, send it all, await every
    /// acknowledgement, delete the rows, commit.
    async fn round(&self) -> Result<Round, RoundError> {
        let mut tx = self.pool.begin().await?;
        if !sqlx::query_scalar::<_, bool>(LOCK).fetch_one(&mut *tx).await? {
            return Ok(Round::Busy);
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(SELECT_BATCH).bind(BATCH).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            return Ok(Round::Published(0));
        }
        self.publish(&rows).await?;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        sqlx::query(DELETE_SENT).bind(&ids).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Round::Published(rows.len()))
    }

    /// Sends every row, in order, and waits for every acknowledgement.
    async fn publish(&self, rows: &[OutboxRow]) -> Result<(), RoundError> {
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let span = row.producer_span();
            let event_id = row.event_id.to_string();
            let headers = kafka::inject_span(
                &span,
                OwnedHeaders::new()
                    .insert(Header {
                        key: headers::EVENT_ID,
                        value: Some(event_id.as_str()),
                    })
                    .insert(Header {
                        key: headers::EVENT_TYPE,
                        value: Some(row.event_type.as_str()),
                    }),
            );
            let record = FutureRecord::to(&row.topic)
                .key(&row.key)
                .payload(&row.payload)
                .headers(headers);
            // Queued at once and in order; librdkafka keeps the order per
            // partition, so one user's events arrive as they were written.
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push((row, span, delivery)),
                Err((error, _record)) => {
                    kafka::record_error(&span, &error);
                    return Err(RoundError::Kafka {
                        event_id: row.event_id,
                        error,
                    });
                }
            }
        }
        // librdkafka fails a message itself after `message.timeout.ms` (the
        // publish timeout); this bound only guards against a lost callback.
        let budget = self.timeout + Duration::from_secs(1);
        let acknowledged = tokio::time::timeout(
            budget,
            futures::future::join_all(deliveries.iter_mut().map(|(_, _, delivery)| delivery)),
        )
        .await;
        let Ok(results) = acknowledged else {
            for (_, span, _) in &deliveries {
                kafka::record_error(span, &"no acknowledgement in time");
            }
            return Err(RoundError::TimedOut(budget));
        };
        let mut failed = None;
        for ((row, span, _), result) in deliveries.iter().zip(results) {
            match result {
                Ok(Ok(delivery)) => kafka::record_delivery(span, delivery.partition, delivery.offset),
                Ok(Err((error, _message))) => {
                    kafka::record_error(span, &error);
                    failed.get_or_insert(RoundError::Kafka {
                        event_id: row.event_id,
                        error,
                    });
                }
                Err(_canceled) => {
                    kafka::record_error(span, &"the producer dropped the message");
                    failed.get_or_insert(RoundError::TimedOut(budget));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// An idempotent producer that hit a fatal error, or whose producer id
    /// the broker no longer accepts (a broker that lost or garbled its
    /// producer state fences it, or fails every send with an unknown server
    /// error), can send no more: replace it, so the relay recovers by
    /// itself. A new producer registers a new producer id.
    fn recover_from(&mut self, error: &RoundError) {
        let RoundError::Kafka { error, .. } = error else {
            return;
        };
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
        if !fenced && self.producer.client().fatal_error().is_none() {
            return;
        }
        tracing::error!(error = %error, "the Kafka producer can send no more; starting a new one");
        match producer(&self.brokers, self.timeout) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.producer, fresh);
                // Dropping a producer blocks briefly while it purges.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(error) => tracing::error!(error = %error, "cannot start a new Kafka producer"),
        }
    }
}

/// Wakes the relay on every notification of `outbox`, and once more after
/// its connection was lost and restored (notifications sent meanwhile are
/// lost; the tick would also catch up).
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut listener: Option<PgListener> = None;
    loop {
        let current = match &mut listener {
            Some(current) => current,
            None => match subscribe(&pool).await {
                Ok(fresh) => {
                    wake.notify_one();
                    listener.insert(fresh)
                }
                Err(error) => {
                    tracing::debug!(error = %error, "cannot listen for outbox commits; retrying");
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            },
        };
        match current.try_recv().await {
            Ok(Some(_)) => wake.notify_one(),
            // The connection was lost and is being restored.
            Ok(None) => wake.notify_one(),
            Err(error) => {
                tracing::debug!(error = %error, "listening for outbox commits failed; reconnecting");
                listener = None;
                tokio::time::sleep(TICK).await;
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn producer(brokers: &str, timeout: Duration) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "user-outbox")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A delivery fails (and its round rolls back, to be retried) once
        // this has passed.
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        // A short linger batches a round's messages without adding latency.
        .set("linger.ms", "2")
        .set("reconnect.backoff.max.ms", "1000")
        .create()?)
}

/// Resolves once `stop` says the service is stopping.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        // The sender is gone: nobody will ever say stop.
        std::future::pending::<()>().await;
    }
}
