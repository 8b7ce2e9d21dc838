//! The outbox relay: publishes the events the writes left in the `outbox`
//! table to Kafka, and deletes each row only once the broker has
//! acknowledged it.
//!
//! It wakes when a write commits (the table's trigger notifies `outbox`,
//! which this relay `LISTEN`s to), at start, and every second besides, which
//! also covers notifications lost with a dropped `LISTEN` connection.
//!
//! The outbox is sharded by key: a row belongs to shard
//! `(hashtext(key) & 2147483647) % RELAY_SHARDS`, worked out when it is
//! read, never stored, so one user's rows are always in one shard. Each shard
//! has a Postgres advisory lock of its own, and the replicas share the
//! shards: each relay holds a connection of its own on which it takes, as
//! session locks, its fair share of the shards (all of them divided by the
//! relays running, rounded up), gives back what is beyond its share when
//! another relay joins, and takes a free shard when one leaves. A shard is
//! published by the one relay holding its lock, so one user's events come
//! from one relay at a time. A relay that dies loses its connection, and
//! Postgres releases its locks with it; the others see the shards free at
//! their next claim, at most [`CLAIM_EVERY`] later. A connection Postgres
//! cannot see is dead (a host gone without closing it) or that hangs (a
//! paused process) is ended by Postgres after the bounds set on it
//! (about [`IDLE_BOUND`]), which frees its shards too.
//!
//! Each round runs on that connection, in one transaction: a bounded batch of
//! the held shards' rows in id order; the rows sent through the idempotent
//! producer (`acks=all`); the acknowledged rows deleted; commit. If the
//! connection is lost mid-round, the round rolls back with its locks gone,
//! and the rows it sent are sent again by the next holder: a duplicate, which
//! the consumer keeps once. Relays started with another `RELAY_SHARDS` (a
//! change rolled out) take no shard while relays of the old count still
//! hold any, and a relay of the one-lock kind (before shards) and a sharded
//! relay never run a round at once; so a user's rows are never published by
//! two relays side by side.
//!
//! One user's events reach the topic in the order of the writes by
//! construction: the rows of one key (one user) are sent one after the
//! other, each only once the one before it is acknowledged, while different
//! keys go side by side. When a send fails, the rows of its key after it are
//! not sent in that round, so no later event of a user is ever on the topic
//! ahead of an earlier one that failed; the rows acknowledged so far are
//! deleted, and the rest are retried with backoff: a row stays until
//! acknowledged. A row sent twice (its acknowledgement lost, or a commit that
//! failed after it) reaches the consumer twice with one event id and one
//! sequence, and the consumer keeps one row per event id, never one older
//! than its user's newest: exactly once, in order, in effect.
//!
//! A row Kafka refuses for good (its topic does not exist, the message is
//! larger than the broker takes) is moved to `outbox_dead_letters` with the
//! reason, in the round's transaction, so it no longer holds up the rows
//! behind it; its user's later events go on, and the gap shows in their
//! sequence.
//!
//! Each send opens the `send <topic>` producer span as a child of the trace
//! context the row kept (the writing request's), and the message's headers
//! carry the producer span's own, so the consumer's process span sits under
//! it in that same trace.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use callchain_events::headers;
use callchain_telemetry::{
    kafka::{self, KafkaLogs},
    propagation,
};
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use sqlx::{Connection as _, PgConnection, PgPool, postgres::PgListener};
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

/// The advisory lock every round of the relay before shards took alone (a
/// single bigint key): a sharded round takes it shared, so the two kinds of
/// relay never publish at once while a deployment rolls from one to the
/// other.
const ONE_LOCK: &str = "SELECT pg_try_advisory_xact_lock_shared(hashtext('callchain outbox relay')::bigint)";
/// The first int4 of the relay's pairs of lock keys (apart from the
/// idempotency keys' pairs, which use the caller's hash).
const NAMESPACE: i32 = 0x6f75_7462;
/// The second int4 of a relay's pair: `count * SLOTS + slot`, where slot
/// `MEMBER` is the lock each relay of `count` shards holds shared while it
/// runs (so the relays can be counted) and slots below it are the shards.
const SLOTS: i32 = 1 << 16;
const MEMBER: i32 = SLOTS - 1;
/// How often a relay claims its share of the shards (and gives back what is
/// beyond it): how long a dead relay's shards may wait for another.
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);
/// How long a relay's connection may sit idle, or its host be unreachable,
/// before Postgres ends it and frees its shards (beyond a round under way).
const IDLE_BOUND: Duration = Duration::from_secs(15);
/// Claim passes of all the relays run one at a time, so two relays of
/// different shard counts never both find the other's shards free.
const CLAIM_TURN: &str = "SELECT pg_advisory_xact_lock($1, 0)";
/// The relays of this shard count that run, and the shards relays of another
/// count hold (this relay's own turn is no other's shard), on this database
/// (advisory locks are a database's own, `pg_locks` shows the server's).
const CENSUS: &str = "SELECT count(*) FILTER (WHERE objid::bigint = $2 * $3 + $4), \
       count(*) FILTER (WHERE objid::bigint / $3 <> $2 AND objid::bigint % $3 <> $4 \
         AND pid <> pg_backend_pid()) \
     FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1 \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
/// The bounds of a relay's connection: idle longer than [`IDLE_BOUND`]
/// (outside a round, `$1`) or a round longer than a publish could take plus
/// that (`$2`), and Postgres ends it; its TCP keepalives and user timeout
/// find a host gone without a word within about as long.
const BOUNDS: &str = "SELECT set_config('idle_session_timeout', $1, false), \
       set_config('idle_in_transaction_session_timeout', $2, false), \
       set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '2', false), \
       set_config('tcp_keepalives_count', '3', false), set_config('tcp_user_timeout', $1, false), \
       set_config('application_name', 'user outbox relay', false)";
const JOIN: &str = "SELECT pg_advisory_lock_shared($1, $2)";
const TRY_SHARD: &str = "SELECT pg_try_advisory_lock($1, $2)";
const GIVE_BACK: &str = "SELECT pg_advisory_unlock($1, $2)";
/// The held shards' rows, oldest first; the shard as the module says.
const SELECT_BATCH: &str = "SELECT id, event_id, topic, key, event_type, payload, traceparent, tracestate, baggage \
     FROM outbox WHERE (hashtext(key) & 2147483647) % $2 = ANY($3) ORDER BY id LIMIT $1";
const DELETE_SENT: &str = "DELETE FROM outbox WHERE id = ANY($1)";
/// Moves rows from the outbox to its dead letters, each with its reason.
const PARK: &str = "WITH parked AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING *) \
     INSERT INTO outbox_dead_letters (id, event_id, topic, key, event_type, payload, traceparent, tracestate, \
     baggage, sequence, created_at, reason) \
     SELECT parked.id, event_id, topic, key, event_type, payload, traceparent, tracestate, baggage, sequence, \
     created_at, reason FROM parked JOIN UNNEST($1::bigint[], $2::text[]) AS r (id, reason) ON r.id = parked.id";
/// How long librdkafka waits for a topic that the broker says does not
/// exist to appear before it fails the topic's messages as refused for good
/// (its default, 30 s, is longer than a publish timeout, which would make
/// the refusal look like a timeout, and be retried for ever).
const TOPIC_PROPAGATION: Duration = Duration::from_secs(1);

/// Why a round failed; the next round tries again.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the outbox's database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kafka did not acknowledge event {event_id}: {error}")]
    Kafka { event_id: uuid::Uuid, error: KafkaError },
    #[error("Kafka did not acknowledge event {event_id} within {budget:?}")]
    TimedOut { event_id: uuid::Uuid, budget: Duration },
}

/// What a round did with its rows.
#[derive(Default)]
struct Sent {
    /// Acknowledged by the broker: deleted when the round commits.
    acknowledged: Vec<i64>,
    /// Refused by Kafka for good, with the reason: parked when the round
    /// commits.
    refused: Vec<(i64, String)>,
    /// The first failure worth another try; the rows of its key from there
    /// on wait for the next round.
    failed: Option<RoundError>,
}

impl Sent {
    fn absorb(&mut self, other: Sent) {
        self.acknowledged.extend(other.acknowledged);
        self.refused.extend(other.refused);
        if self.failed.is_none() {
            self.failed = other.failed;
        }
    }
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
    /// This relay holds no shard (the others hold them all, or relays of
    /// another shard count do), or a relay of the one-lock kind runs a round:
    /// the holders publish what waits, and every relay is notified of every
    /// commit, so they see ours too.
    Busy,
}

/// The outbox's rows and the age of its oldest, in seconds, in one cheap
/// statement: the rows' count, and the oldest by the primary key's order.
const BACKLOG: &str = "SELECT count(*), \
     COALESCE(EXTRACT(EPOCH FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1))::float8, 0) \
     FROM outbox";

/// What the relay last measured of the outbox, for the
/// `callchain.outbox.backlog` and `callchain.outbox.oldest_age` gauges.
#[derive(Default)]
struct Backlog {
    rows: AtomicU64,
    /// The oldest row's age in milliseconds.
    oldest_ms: AtomicU64,
}

impl Backlog {
    /// The gauges, read at each metric export; `None` when the service
    /// records no metrics (the relay then measures nothing).
    fn register() -> Option<Arc<Self>> {
        let meter = callchain_telemetry::metrics::meter()?;
        let backlog = Arc::new(Self::default());
        let rows = Arc::downgrade(&backlog);
        meter
            .u64_observable_gauge("callchain.outbox.backlog")
            .with_unit("{row}")
            .with_description("Events in the outbox not yet acknowledged by Kafka, as the relay last counted.")
            .with_callback(move |gauge| {
                if let Some(backlog) = rows.upgrade() {
                    gauge.observe(backlog.rows.load(Ordering::Relaxed), &[]);
                }
            })
            .build();
        let age = Arc::downgrade(&backlog);
        meter
            .f64_observable_gauge("callchain.outbox.oldest_age")
            .with_unit("s")
            .with_description("Age of the oldest event in the outbox, 0 when it is empty.")
            .with_callback(move |gauge| {
                if let Some(backlog) = age.upgrade() {
                    gauge.observe(backlog.oldest_ms.load(Ordering::Relaxed) as f64 / 1000.0, &[]);
                }
            })
            .build();
        Some(backlog)
    }

    /// Counts the outbox now. A failure (the database is down) keeps the
    /// last figures: the relay's own warning says why it cannot publish.
    async fn measure(&self, pool: &PgPool) {
        if let Ok((rows, age)) = sqlx::query_as::<_, (i64, f64)>(BACKLOG).fetch_one(pool).await {
            self.rows.store(rows.max(0) as u64, Ordering::Relaxed);
            self.oldest_ms.store((age.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
        }
    }
}

/// The shards a relay holds, on the connection whose session holds their
/// locks and runs its rounds.
struct Holding {
    conn: PgConnection,
    shards: BTreeSet<i32>,
    /// When the shards were last claimed; `None` before the first claim.
    claimed: Option<Instant>,
    /// Whether relays of another shard count were seen at the last claim
    /// (said once, not at every claim).
    deferring: bool,
}

/// The relay of one user-service process.
pub struct Relay {
    pool: PgPool,
    brokers: String,
    timeout: Duration,
    producer: FutureProducer<KafkaLogs>,
    /// The outbox's gauges, measured at most once per [`TICK`].
    backlog: Option<Arc<Backlog>>,
    /// `RELAY_SHARDS`.
    shards: i32,
    /// `None` until connected, and again once its connection failed.
    holding: Option<Holding>,
}

impl Relay {
    pub fn new(pool: PgPool, config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            brokers: config.kafka_brokers.clone(),
            timeout: config.publish_timeout,
            producer: producer(&config.kafka_brokers, config.publish_timeout)?,
            backlog: Backlog::register(),
            shards: i32::try_from(config.relay_shards.min(crate::config::MAX_RELAY_SHARDS)).unwrap_or(1),
            holding: None,
        })
    }

    /// Measures the outbox for its gauges, if a [`TICK`] has passed since
    /// `last`.
    async fn measure_backlog(&self, last: &mut Option<Instant>) {
        let Some(backlog) = &self.backlog else { return };
        if last.is_some_and(|last| last.elapsed() < TICK) {
            return;
        }
        *last = Some(Instant::now());
        backlog.measure(&self.pool).await;
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
        let mut measured: Option<Instant> = None;
        loop {
            self.measure_backlog(&mut measured).await;
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
                Ok(Round::Busy) => CLAIM_EVERY.min(TICK),
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
        // Closing the connection hands its shards to the other relays at
        // once, rather than when Postgres notices it gone.
        if let Some(holding) = self.holding.take() {
            let _ = holding.conn.close().await;
        }
    }

    /// One round: connect if need be, claim the shards when due, then (if
    /// this relay holds any) read a batch of their rows, send it (each
    /// user's rows one after the other), delete the acknowledged rows, park
    /// the refused ones, commit. A failure worth retrying ends the round in
    /// an error once what it did achieve is committed. A database error
    /// drops the connection, and the shards with it: the next round starts
    /// afresh.
    async fn round(&mut self) -> Result<Round, RoundError> {
        let mut holding = match self.holding.take() {
            Some(holding) => holding,
            None => self.connect().await?,
        };
        let outcome = self.round_on(&mut holding).await;
        if let Err(RoundError::Database(error)) = &outcome {
            if !holding.shards.is_empty() {
                tracing::warn!(
                    error = %error,
                    shards = ?holding.shards,
                    "the outbox relay lost its database connection, and its shards with it"
                );
            }
        } else {
            self.holding = Some(holding);
        }
        outcome
    }

    /// A connection of the relay's own: bounded so that Postgres ends it,
    /// freeing its shards, when it goes quiet for longer than a live relay
    /// ever does (see [`IDLE_BOUND`]); a member of the relays of its shard
    /// count.
    async fn connect(&self) -> Result<Holding, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let in_round = self.timeout + Duration::from_secs(1) + IDLE_BOUND;
        sqlx::query(BOUNDS)
            .bind(format!("{}ms", IDLE_BOUND.as_millis()))
            .bind(format!("{}ms", in_round.as_millis()))
            .execute(&mut conn)
            .await?;
        sqlx::query(JOIN)
            .bind(NAMESPACE)
            .bind(self.shards * SLOTS + MEMBER)
            .execute(&mut conn)
            .await?;
        Ok(Holding {
            conn,
            shards: BTreeSet::new(),
            claimed: None,
            deferring: false,
        })
    }

    /// Takes this relay's fair share of the shards (of those free) and gives
    /// back what it holds beyond it; none while relays of another shard
    /// count hold any. One claim of all the relays at a time.
    async fn claim(&self, holding: &mut Holding) -> Result<(), sqlx::Error> {
        let before = holding.shards.clone();
        let mut tx = holding.conn.begin().await?;
        sqlx::query(CLAIM_TURN).bind(NAMESPACE).execute(&mut *tx).await?;
        let (members, foreign): (i64, i64) = sqlx::query_as(CENSUS)
            .bind(i64::from(NAMESPACE))
            .bind(i64::from(self.shards))
            .bind(i64::from(SLOTS))
            .bind(i64::from(MEMBER))
            .fetch_one(&mut *tx)
            .await?;
        let share = if foreign > 0 {
            0
        } else {
            fair_share(self.shards, members)
        };
        while holding.shards.len() > share {
            let Some(shard) = holding.shards.pop_last() else { break };
            sqlx::query(GIVE_BACK)
                .bind(NAMESPACE)
                .bind(self.shards * SLOTS + shard)
                .execute(&mut *tx)
                .await?;
        }
        // Each relay starts its search at a shard of its own, so relays
        // claiming together mostly try different shards.
        let start = (uuid::Uuid::new_v4().as_u128() % self.shards.unsigned_abs() as u128) as i32;
        for shard in (0..self.shards).map(|n| (start + n) % self.shards) {
            if holding.shards.len() >= share {
                break;
            }
            if holding.shards.contains(&shard) {
                continue;
            }
            let taken: bool = sqlx::query_scalar(TRY_SHARD)
                .bind(NAMESPACE)
                .bind(self.shards * SLOTS + shard)
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                holding.shards.insert(shard);
            }
        }
        tx.commit().await?;
        holding.claimed = Some(Instant::now());
        if foreign > 0 && !holding.deferring {
            tracing::warn!(
                relay_shards = self.shards,
                "relays started with another RELAY_SHARDS hold shards of the outbox; this relay takes none until they stop"
            );
        }
        holding.deferring = foreign > 0;
        if holding.shards != before {
            tracing::info!(
                shards = ?holding.shards,
                held = holding.shards.len(),
                of = self.shards,
                relays = members,
                "the outbox relay publishes these shards"
            );
        }
        Ok(())
    }

    /// Claims when due, then publishes a batch of the held shards' rows.
    async fn round_on(&self, holding: &mut Holding) -> Result<Round, RoundError> {
        if holding.claimed.is_none_or(|at| at.elapsed() >= CLAIM_EVERY) {
            self.claim(holding).await?;
        }
        if holding.shards.is_empty() {
            return Ok(Round::Busy);
        }
        let shards: Vec<i32> = holding.shards.iter().copied().collect();
        let mut tx = holding.conn.begin().await?;
        if !sqlx::query_scalar::<_, bool>(ONE_LOCK).fetch_one(&mut *tx).await? {
            return Ok(Round::Busy);
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(SELECT_BATCH)
            .bind(BATCH)
            .bind(self.shards)
            .bind(&shards)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(Round::Published(0));
        }
        let sent = publish(&rows, |row| self.send(row)).await;
        if !sent.acknowledged.is_empty() {
            sqlx::query(DELETE_SENT)
                .bind(&sent.acknowledged)
                .execute(&mut *tx)
                .await?;
        }
        if !sent.refused.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<&str>) =
                sent.refused.iter().map(|(id, reason)| (*id, reason.as_str())).unzip();
            sqlx::query(PARK).bind(&ids).bind(&reasons).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for (id, reason) in &sent.refused {
            tracing::error!(
                outbox_id = id,
                reason = %reason,
                "Kafka refuses an event for good; it is parked in outbox_dead_letters and the outbox goes on"
            );
        }
        match sent.failed {
            Some(error) => Err(error),
            None => Ok(Round::Published(rows.len())),
        }
    }

    /// Sends one row and waits for its acknowledgement, and counts the
    /// attempt in `messaging.client.sent.messages`.
    async fn send(&self, row: &OutboxRow) -> Result<(), RoundError> {
        let result = self.publish(row).await;
        kafka::record_sent(&row.topic, result.is_err());
        result
    }

    /// Sends one row and waits for its acknowledgement.
    async fn publish(&self, row: &OutboxRow) -> Result<(), RoundError> {
        let span = row.producer_span();
        let event_id = row.event_id.to_string();
        kafka::record_message_id(&span, &event_id);
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
        let failed = |error: KafkaError| {
            kafka::record_error(&span, &error);
            RoundError::Kafka {
                event_id: row.event_id,
                error,
            }
        };
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _record)| failed(error))?;
        // librdkafka fails a message itself after `message.timeout.ms`
        // (the publish timeout); this bound only guards against a lost
        // callback.
        let budget = self.timeout + Duration::from_secs(1);
        match tokio::time::timeout(budget, delivery).await {
            Ok(Ok(Ok(delivery))) => {
                kafka::record_delivery(&span, delivery.partition, delivery.offset);
                Ok(())
            }
            Ok(Ok(Err((error, _message)))) => Err(failed(error)),
            Ok(Err(_canceled)) => {
                kafka::record_error(&span, &"the producer dropped the message");
                Err(RoundError::TimedOut {
                    event_id: row.event_id,
                    budget,
                })
            }
            Err(_elapsed) => {
                kafka::record_error(&span, &"no acknowledgement in time");
                Err(RoundError::TimedOut {
                    event_id: row.event_id,
                    budget,
                })
            }
        }
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

/// The shards each of `relays` relays holds at most: all of them divided
/// among the relays, rounded up, so together they hold every shard.
fn fair_share(shards: i32, relays: i64) -> usize {
    let shards = usize::try_from(shards).unwrap_or(1);
    let relays = usize::try_from(relays.max(1)).unwrap_or(1);
    shards.div_ceil(relays)
}

/// Sends `rows` with `send`: each key's rows in order and one at a time, the
/// keys side by side.
async fn publish<'a, F, Fut>(rows: &'a [OutboxRow], send: F) -> Sent
where
    F: Fn(&'a OutboxRow) -> Fut,
    Fut: Future<Output = Result<(), RoundError>>,
{
    let mut keys: HashMap<&str, usize> = HashMap::new();
    let mut chains: Vec<Vec<&OutboxRow>> = Vec::new();
    for row in rows {
        let chain = *keys.entry(row.key.as_str()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[chain].push(row);
    }
    let mut sent = Sent::default();
    for chain in futures::future::join_all(chains.iter().map(|chain| publish_chain(chain, &send))).await {
        sent.absorb(chain);
    }
    sent
}

/// Sends one key's rows in order, each once the one before it is
/// acknowledged (or refused for good), and stops at the first failure worth
/// retrying: nothing of this key after it is sent.
async fn publish_chain<'a, F, Fut>(chain: &[&'a OutboxRow], send: &F) -> Sent
where
    F: Fn(&'a OutboxRow) -> Fut,
    Fut: Future<Output = Result<(), RoundError>>,
{
    let mut sent = Sent::default();
    for &row in chain {
        match send(row).await {
            Ok(()) => sent.acknowledged.push(row.id),
            Err(RoundError::Kafka { error, .. }) if refused_for_good(&error) => {
                sent.refused.push((row.id, error.to_string()));
            }
            Err(error) => {
                sent.failed = Some(error);
                break;
            }
        }
    }
    sent
}

/// Whether Kafka refuses this message however often it is sent: its topic
/// does not exist (librdkafka says so once [`TOPIC_PROPAGATION`] has passed
/// without it), or the message is too large or malformed for the broker.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
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

fn producer(brokers: &str, timeout: Duration) -> anyhow::Result<FutureProducer<KafkaLogs>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "user-outbox")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A delivery fails (and its row and its user's rows after it wait
        // for the next round) once this has passed.
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        // A short linger batches a round's messages without adding latency.
        .set("linger.ms", "2")
        .set("reconnect.backoff.max.ms", "1000")
        .set(
            "topic.metadata.propagation.max.ms",
            TOPIC_PROPAGATION.as_millis().to_string(),
        )
        .create_with_context(KafkaLogs)?)
}

/// Resolves once `stop` says the service is stopping.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        // The sender is gone: nobody will ever say stop.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn row(id: i64, key: &str) -> OutboxRow {
        OutboxRow {
            id,
            event_id: uuid::Uuid::now_v7(),
            topic: "user-events".into(),
            key: key.into(),
            event_type: "user.updated".into(),
            payload: Vec::new(),
            traceparent: None,
            tracestate: None,
            baggage: None,
        }
    }

    fn kafka(row: &OutboxRow, code: RDKafkaErrorCode) -> RoundError {
        RoundError::Kafka {
            event_id: row.event_id,
            error: KafkaError::MessageProduction(code),
        }
    }

    /// Row 1 (user a) times out, row 5 (user b) is too large for Kafka:
    /// nothing of a after row 1 is sent, b goes on past row 5.
    #[tokio::test]
    async fn after_a_failed_send_no_later_row_of_its_key_is_sent_and_a_refused_row_does_not_stop_its_key() {
        let rows: Vec<OutboxRow> = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b"), (6, "a"), (7, "b")]
            .into_iter()
            .map(|(id, key)| row(id, key))
            .collect();
        let sent_ids = Mutex::new(Vec::new());
        let sent = publish(&rows, |row| {
            sent_ids.lock().unwrap().push(row.id);
            let outcome = match row.id {
                1 => Err(RoundError::TimedOut {
                    event_id: row.event_id,
                    budget: Duration::from_secs(1),
                }),
                5 => Err(kafka(row, RDKafkaErrorCode::MessageSizeTooLarge)),
                _ => Ok(()),
            };
            async move {
                tokio::task::yield_now().await;
                outcome
            }
        })
        .await;

        let mut tried = sent_ids.into_inner().unwrap();
        tried.sort_unstable();
        assert_eq!(tried, [1, 2, 4, 5, 7], "rows 3 and 6 of key a wait behind row 1");
        let mut acknowledged = sent.acknowledged.clone();
        acknowledged.sort_unstable();
        assert_eq!(acknowledged, [2, 4, 7]);
        assert_eq!(sent.refused.len(), 1);
        assert_eq!(sent.refused[0].0, 5);
        assert!(
            sent.refused[0].1.contains("MessageSizeTooLarge"),
            "{}",
            sent.refused[0].1
        );
        assert!(matches!(sent.failed, Some(RoundError::TimedOut { .. })));
    }

    #[test]
    fn the_relays_fair_shares_cover_every_shard_and_differ_by_at_most_one() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(8, 0), 8, "a relay counts itself; never none");
        assert_eq!(fair_share(8, 20), 1, "relays beyond the shard count hold one at most");
    }

    #[test]
    fn only_what_kafka_can_never_take_is_refused_for_good() {
        for code in [
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTopic,
        ] {
            assert!(refused_for_good(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(!refused_for_good(&KafkaError::MessageProduction(code)), "{code:?}");
        }
    }
}
