//! The limits of the parts under the services, measured in the same run so
//! that every figure of the services can be given as a fraction of them: a
//! fraction means the same on a fast machine and a slow one.
//!
//! - Kafka: the benchmark's topic read with the consumer's own client and
//!   settings (`callchain_consumer::kafka_client_config`), each message
//!   received and nothing else done with it.
//! - Postgres: the consumer's own batched statement
//!   (`callchain_consumer::store::insert`), on the same rows in batches of
//!   the consumer's size, one after the other as the consumer writes them;
//!   no Kafka, no spans (the bench's own thread has no subscriber).
//! - The user service: its own update and outbox row in one transaction
//!   (`callchain_user::store`), from 32 tasks at once on the service's pool,
//!   over the 20 users the write loads rename; no gRPC, no API, no spans.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use callchain_consumer::EventRow;
use callchain_domain::{Email, Role, UserId, UserName};
use callchain_events::{EventType, UserEvent, UserPayload};
use callchain_testkit::{kafka::Kafka, postgres::TestDatabase};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio::time::Instant;

/// Figures of several runs: their least, median and greatest.
#[derive(Debug, Clone, Default)]
pub struct Spread(pub Vec<f64>);

impl Spread {
    fn sorted(&self) -> Vec<f64> {
        let mut runs = self.0.clone();
        runs.sort_by(f64::total_cmp);
        runs
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn median(&self) -> f64 {
        let runs = self.sorted();
        match runs.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => runs[n / 2],
            n => f64::midpoint(runs[n / 2 - 1], runs[n / 2]),
        }
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// Each run divided by `by`.
    pub fn over(&self, by: f64) -> Spread {
        Spread(self.0.iter().map(|run| run / by).collect())
    }
}

impl fmt::Display for Spread {
    /// `min / median / max`, in the precision asked (`{:.2}`), whole by default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = f.precision().unwrap_or(0);
        write!(
            f,
            "{:.digits$} / {:.digits$} / {:.digits$} (min / median / max of {})",
            self.min(),
            self.median(),
            self.max(),
            self.0.len()
        )
    }
}

/// The three limits, each of [`RUNS`] runs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages per second the consumer's Kafka client receives.
    pub kafka: Spread,
    /// Rows per second the consumer's batched statement writes.
    pub postgres: Spread,
    /// Update transactions (with their outbox row) per second.
    pub user: Spread,
}

impl Limits {
    /// The lower of the consumer's two limits (by their medians).
    pub fn consumer(&self) -> f64 {
        self.kafka.median().min(self.postgres.median())
    }
}

pub const RUNS: usize = 3;

/// Measures the three limits, `events` messages and rows for the
/// consumer's, `seconds` of transactions for the user service's.
pub async fn measure(events: u64, seconds: u64) -> anyhow::Result<Limits> {
    println!(
        "== limits: the parts under the services, {RUNS} runs each: {events} messages read raw, {events} rows written \
         raw, {seconds} s of update transactions"
    );
    let kafka = Kafka::shared().await?;
    super::feed(&kafka, events).await?;
    let mut limits = Limits {
        kafka: Spread::default(),
        postgres: Spread::default(),
        user: Spread::default(),
    };
    for run in 0..RUNS {
        limits.kafka.0.push(kafka_raw(&kafka, events, run).await?);
        limits.postgres.0.push(postgres_raw(&kafka, events).await?);
        limits.user.0.push(user_raw(&kafka, seconds).await?);
    }
    println!(
        "   Kafka, the topic read raw by the consumer's client: {} messages/s",
        limits.kafka
    );
    println!(
        "   Postgres, the consumer's batched insert raw: {} rows/s",
        limits.postgres
    );
    println!(
        "   the user service's update + outbox transaction raw: {} transactions/s",
        limits.user
    );
    println!(
        "   the consumer's limit, the lower of Kafka's and Postgres's: {:.0} events/s\n",
        limits.consumer()
    );
    Ok(limits)
}

/// Reads the topic's `count` messages with the consumer's client and
/// settings, in a group of its own; messages per second from the first to
/// the last.
async fn kafka_raw(kafka: &Kafka, count: u64, run: usize) -> anyhow::Result<f64> {
    let group = format!("{}-raw-{run}-{}", kafka.group, uuid::Uuid::new_v4());
    let config = callchain_consumer::Config::for_tests("postgres://unused", kafka.bootstrap(), &kafka.topic, &group);
    let consumer: StreamConsumer = callchain_consumer::kafka_client_config(&config).create()?;
    consumer.subscribe(&[&kafka.topic])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    let mut received = 0u64;
    while received < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {received} of {count} messages read raw in 5 min"
        );
        // A partition's end arrives as an error: nothing to count.
        if let Ok(Ok(_message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            first.get_or_insert_with(Instant::now);
            received += 1;
        }
    }
    let elapsed = first.map_or(f64::NAN, |first| first.elapsed().as_secs_f64());
    Ok((count - 1) as f64 / elapsed)
}

/// A row as the consumer makes it of the `n`th message the bench feeds.
fn row(n: u64) -> EventRow {
    EventRow {
        event: UserEvent::new(
            EventType::UserUpdated,
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
            uuid::Uuid::now_v7(),
            1,
            UserPayload {
                email: format!("bench{n}@example.com"),
                name: format!("Bench {n}"),
                role: "USER".into(),
            },
        ),
        trace_id: Some(format!("{:032x}", uuid::Uuid::new_v4().as_u128())),
        partition: (n % 3) as i32,
        offset: (n / 3) as i64,
    }
}

/// Writes `count` rows into a fresh database with the consumer's statement,
/// a batch of the consumer's size at a time; rows per second.
async fn postgres_raw(kafka: &Kafka, count: u64) -> anyhow::Result<f64> {
    let db = TestDatabase::create().await?;
    let config = callchain_consumer::Config::for_tests(db.url(), kafka.bootstrap(), &kafka.topic, &kafka.group);
    let pool = callchain_consumer::store::connect(&config).await?;
    let rows: Vec<EventRow> = (0..count).map(row).collect();
    let none = tracing::Span::none();
    let started = Instant::now();
    for batch in rows.chunks(config.batch_size) {
        let batch: Vec<(&EventRow, &tracing::Span)> = batch.iter().map(|row| (row, &none)).collect();
        callchain_consumer::store::insert(&pool, &batch).await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Tasks writing at once, as the benchmark's 32 connections make the
/// service do.
const WRITERS: usize = 32;

/// Renames 20 users over and over for `seconds`, each rename one
/// transaction with its outbox row, on the user service's own pool and
/// statements; transactions per second.
async fn user_raw(kafka: &Kafka, seconds: u64) -> anyhow::Result<f64> {
    use callchain_user::store;
    let db = TestDatabase::create().await?;
    let config = callchain_user::Config::for_tests(db.url(), None, kafka.bootstrap(), &kafka.topic);
    let pool = callchain_user::connect(&config).await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut conn = pool.acquire().await?;
        let user = store::NewUser {
            id: UserId::new(),
            email: Email::parse(&format!("limit{i}@example.com"))?,
            name: UserName::parse(&format!("Limit {i}"))?,
            password_hash: "not a hash: no one logs in".into(),
            role: Role::User,
        };
        ids.push(store::insert_user(&mut conn, &user).await?.user.id);
    }
    let ids = Arc::new(ids);
    let topic = Arc::new(kafka.topic.clone());
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (pool, ids, topic) = (pool.clone(), ids.clone(), topic.clone());
        writers.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = writer;
            while Instant::now() < until {
                let id = ids[n % ids.len()];
                n += WRITERS;
                let changes = store::UserChanges {
                    name: Some(UserName::parse(&format!("Renamed {n}"))?),
                    ..store::UserChanges::default()
                };
                let mut tx = pool.begin().await?;
                let written = store::update_user(&mut tx, id, &changes).await?;
                let user = &written.user;
                let event = UserEvent::new(
                    EventType::UserUpdated,
                    uuid::Uuid::now_v7(),
                    user.updated_at,
                    user.id.as_uuid(),
                    written.sequence,
                    UserPayload {
                        email: user.email.as_str().to_owned(),
                        name: user.name.as_str().to_owned(),
                        role: user.role.as_str().to_owned(),
                    },
                );
                let row = store::OutboxEvent {
                    event: &event,
                    topic: &topic,
                    trace: HashMap::new(),
                };
                store::insert_outbox(&mut tx, &row).await?;
                tx.commit().await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for writer in writers {
        done += writer.await??;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
