//! `make chaos`: faults injected into the running services under a steady
//! write load, on real parts, and one table of what became of the writes.
//!
//! Each scenario starts its own parts (a Kafka broker of its own, a fresh
//! database on the machine's Postgres, an OTLP receiver, or a collector
//! process for scenario 6) and runs the service binaries as processes, so
//! they can be sent SIGTERM and `kill -9`. The load is `PATCH /v1/users/{id}`
//! at a fixed rate over users registered first, each user's changes one after
//! the other, each naming its own sequence number, so the consumer's rows
//! say which change they are and in which order they came.
//!
//! 1. The broker stopped for 10 s, then started.
//! 2. The consumer `kill -9`ed 10 times in a row, mid-stream.
//! 3. Postgres restarted (the machine's cluster: every database on it).
//! 4. One of two user-service replicas `kill -9`ed.
//! 5. The user service slowed past the request deadline, then healed.
//! 6. The OTLP collector down for 30 s.
//! 7. SIGTERM to each service in turn, under load.
//!
//! It prints one Markdown table, a row per scenario, then each scenario's
//! checks, and exits non-zero when a change the API acknowledged is lost or
//! duplicated, when a user's changes arrive out of order, or when a service
//! does not recover without a restart by hand.
//!
//! Settings: `CHAOS_ONLY=2` (or `2,6`) runs those scenarios;
//! `CHAOS_QUICK=1` shortens every phase; `CHAOS_RATE` (default 200) is the
//! write rate per second; `CHAOS_BIN_DIR` is where the service binaries are
//! (default `target/release`, which `make chaos` builds first: a bench cannot
//! run cargo itself while cargo holds the target folder).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use callchain_e2e::load::percentile;
use callchain_events::UserEvent;
use callchain_testkit::{
    kafka::Kafka,
    otlp::OtlpReceiver,
    postgres::TestDatabase,
    process::{ServiceProcess, free_addr},
    spans::SpanKind,
};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{BaseConsumer, Consumer as _},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use serde_json::json;

/// Users the load writes to; each is written one change at a time.
const LOAD_USERS: usize = 20;
/// The API's whole budget for a request, in the slow-user scenario.
const DEADLINE_MS: u64 = 1000;
/// What every service is given to drain in after SIGTERM.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);
/// How long a consumer may take to be back at the head after a crash.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
const JWT_SECRET: &str = "callchain-chaos-secret-0123456789abcdef";
const PASSWORD: &str = "correct horse battery staple";

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The run's settings.
struct Settings {
    quick: bool,
    only: Option<BTreeSet<u32>>,
    rate: u64,
    bins: PathBuf,
}

impl Settings {
    /// `full` normally, `quick` with `CHAOS_QUICK=1`.
    fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

fn main() -> anyhow::Result<()> {
    let only = setting("CHAOS_ONLY").map(|list| {
        list.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect::<BTreeSet<u32>>()
    });
    let bins = setting("CHAOS_BIN_DIR").map_or_else(release_dir, PathBuf::from);
    for bin in ["api", "user", "consumer"] {
        anyhow::ensure!(
            bins.join(bin).exists(),
            "no {bin} binary in {}: run `make chaos`, or build them with `make build`",
            bins.display()
        );
    }
    let settings = Settings {
        quick: setting("CHAOS_QUICK").is_some_and(|v| v != "0"),
        only,
        rate: setting("CHAOS_RATE").and_then(|v| v.parse().ok()).unwrap_or(200),
        bins,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(run(&settings))?;

    println!("\n## make chaos ({} writes/s)\n", settings.rate);
    println!(
        "| fault | requests | 2xx | 4xx | 5xx | p99 | changes committed | events in Kafka | rows written | lost | duplicated | seconds to recover |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        println!("{}", row.markdown());
    }
    let mut failed = false;
    for row in &rows {
        println!("\n{}:", row.fault);
        for check in &row.checks {
            println!("- {} {}", if check.passed { "✓" } else { "✗" }, check.what);
            failed |= check.hard && !check.passed;
        }
        if let Some(error) = &row.error {
            println!("- ✗ the scenario did not run to its end: {error:#}");
            failed = true;
        }
    }
    if failed {
        println!("\nFAILED: a change was lost, duplicated or reordered, or a service did not recover by itself.");
        std::process::exit(1);
    }
    println!("\nNothing committed was lost or duplicated, and every service recovered by itself.");
    Ok(())
}

/// Where `cargo build --release` puts the binaries.
fn release_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    setting("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("release")
}

async fn run(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    type Scenario = for<'a> fn(&'a Settings, &'a mut Row) -> futures_like::Boxed<'a>;
    let scenarios: [(u32, &str, Scenario); 7] = [
        (1, "1. broker stopped for 10 s", |s, r| Box::pin(broker_outage(s, r))),
        (2, "2. consumer kill -9, 10 times", |s, r| {
            Box::pin(consumer_kills(s, r))
        }),
        (3, "3. Postgres restarted", |s, r| Box::pin(postgres_restart(s, r))),
        (4, "4. one of two user replicas killed", |s, r| {
            Box::pin(replica_killed(s, r))
        }),
        (5, "5. user service past the deadline", |s, r| Box::pin(slow_user(s, r))),
        (6, "6. collector down for 30 s", |s, r| Box::pin(collector_down(s, r))),
        (7, "7. SIGTERM to each service", |s, r| Box::pin(sigterm_each(s, r))),
    ];
    let mut rows = Vec::new();
    for (number, fault, scenario) in scenarios {
        if settings.only.as_ref().is_some_and(|only| !only.contains(&number)) {
            continue;
        }
        eprintln!("==> scenario {fault}");
        let mut row = Row::new(fault);
        if let Err(error) = scenario(settings, &mut row).await {
            eprintln!("    it failed: {error:#}");
            row.error = Some(error);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A boxed scenario future, without a dependency for it.
mod futures_like {
    pub type Boxed<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;
}

// ---------------------------------------------------------------------------
// The table

/// One scenario's line of the table, and its checks.
struct Row {
    fault: String,
    requests: usize,
    ok: usize,
    client_errors: usize,
    server_errors: usize,
    p99_ms: f64,
    committed: usize,
    events: usize,
    rows: usize,
    lost: usize,
    duplicated: usize,
    recover: Option<Duration>,
    checks: Vec<Check>,
    error: Option<anyhow::Error>,
}

struct Check {
    what: String,
    passed: bool,
    /// A failed hard check fails the run: loss, duplication, order, a service
    /// that needs a hand.
    hard: bool,
}

impl Row {
    fn new(fault: &str) -> Self {
        Self {
            fault: fault.to_owned(),
            requests: 0,
            ok: 0,
            client_errors: 0,
            server_errors: 0,
            p99_ms: f64::NAN,
            committed: 0,
            events: 0,
            rows: 0,
            lost: 0,
            duplicated: 0,
            recover: None,
            checks: Vec::new(),
            error: None,
        }
    }

    fn check(&mut self, passed: bool, what: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            passed,
            hard: false,
        });
    }

    fn must(&mut self, passed: bool, what: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            passed,
            hard: true,
        });
    }

    fn recovered(&mut self, took: Duration) {
        self.recover = Some(self.recover.map_or(took, |slowest| slowest.max(took)));
    }

    fn markdown(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fault,
            self.requests,
            self.ok,
            self.client_errors,
            self.server_errors,
            if self.p99_ms.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.1} ms", self.p99_ms)
            },
            self.committed,
            self.events,
            self.rows,
            self.lost,
            self.duplicated,
            self.recover
                .map_or_else(|| "-".to_owned(), |took| format!("{:.1}", took.as_secs_f64())),
        )
    }

    /// Fills in the request columns from the load's answers.
    fn count(&mut self, answers: &[Answer]) {
        self.requests = answers.len();
        self.ok = answers.iter().filter(|a| a.is_2xx()).count();
        self.client_errors = answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Status(400..=499)))
            .count();
        self.server_errors = answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Status(500..=599)))
            .count();
        let mut latencies: Vec<f64> = answers.iter().map(|a| a.latency.as_secs_f64() * 1000.0).collect();
        latencies.sort_by(f64::total_cmp);
        self.p99_ms = percentile(&latencies, 99.0);
        self.committed = self.ok;
    }
}

// ---------------------------------------------------------------------------
// The parts and the services

/// What a scenario runs on.
struct Parts {
    kafka: Kafka,
    db: TestDatabase,
    otlp: OtlpReceiver,
}

impl Parts {
    async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            kafka: Kafka::own().await.context("a Kafka broker of the scenario's own")?,
            db: TestDatabase::create().await?,
            otlp: OtlpReceiver::start().await?,
        })
    }
}

/// How to start one service process, so it can be started again the same.
#[derive(Clone)]
struct Spec {
    name: String,
    program: PathBuf,
    addr: std::net::SocketAddr,
    env: Vec<(String, String)>,
}

impl Spec {
    fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Starts it and waits until it is healthy.
    async fn start(&self) -> anyhow::Result<ServiceProcess> {
        let mut process = ServiceProcess::spawn(&self.name, &self.program.to_string_lossy(), self.env.clone())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = match self.name.as_str() {
                "api" => callchain_runtime_probe(self.addr, "/healthz").await,
                "consumer" => callchain_consumer::healthcheck(self.addr).await.is_ok(),
                _ => callchain_user::healthcheck(self.addr).await.is_ok(),
            };
            if healthy {
                return Ok(process);
            }
            if let Some(status) = process.try_exit() {
                anyhow::bail!(
                    "{} exited at start ({status}): {}",
                    self.name,
                    process.log_text().join("\n")
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "{} is not healthy after 60 s", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn callchain_runtime_probe(addr: std::net::SocketAddr, path: &str) -> bool {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|answer| answer.status().is_success())
}

/// The three services' specs for `parts`, with `replicas` user services,
/// exporting spans to `otlp`.
fn specs(settings: &Settings, parts: &Parts, replicas: usize, otlp: &str) -> anyhow::Result<(Vec<Spec>, Spec, Spec)> {
    let common = |name: &str, addr| Spec {
        name: name.to_owned(),
        program: settings.bins.join(if name.starts_with("user") { "user" } else { name }),
        addr,
        env: vec![
            ("RUST_LOG".into(), "info,callchain::span=off,rdkafka=warn".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp.to_owned()),
            (
                "OTEL_SERVICE_NAME".into(),
                if name.starts_with("user") { "user" } else { name }.into(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "500".into()),
            ("SHUTDOWN_TIMEOUT_SECONDS".into(), SHUTDOWN_BOUND.as_secs().to_string()),
            ("DATABASE_URL".into(), parts.db.url().to_owned()),
            ("KAFKA_BROKERS".into(), parts.kafka.bootstrap().to_owned()),
            ("KAFKA_TOPIC".into(), parts.kafka.topic.clone()),
        ],
    };
    let mut users = Vec::new();
    for n in 0..replicas {
        let addr = free_addr()?;
        users.push(common(&format!("user{}", n + 1), addr).with("USER_LISTEN_ADDR", addr.to_string()));
    }
    let user_urls: Vec<String> = users.iter().map(|u| format!("http://{}", u.addr)).collect();
    let api_addr = free_addr()?;
    let api = common("api", api_addr)
        .with("API_LISTEN_ADDR", api_addr.to_string())
        .with("USER_SERVICE_URL", user_urls.join(","))
        .with("JWT_SECRET", JWT_SECRET)
        .with("REQUEST_TIMEOUT_MS", "10000");
    let consumer_addr = free_addr()?;
    let consumer = common("consumer", consumer_addr)
        .with("CONSUMER_HEALTH_ADDR", consumer_addr.to_string())
        .with("KAFKA_GROUP_ID", parts.kafka.group.clone())
        // Static membership: a restarted consumer gets its partitions back
        // at once, not after the dead member's session times out.
        .with("KAFKA_GROUP_INSTANCE_ID", "chaos-consumer");
    Ok((users, api, consumer))
}

/// The running services of a scenario.
struct Services {
    users: Vec<(Spec, ServiceProcess)>,
    api: (Spec, ServiceProcess),
    consumer: (Spec, ServiceProcess),
}

impl Services {
    async fn start(users: Vec<Spec>, api: Spec, consumer: Spec) -> anyhow::Result<Self> {
        let mut started = Vec::new();
        for spec in users {
            let process = spec.start().await?;
            started.push((spec, process));
        }
        let api_process = api.start().await?;
        let consumer_process = consumer.start().await?;
        Ok(Self {
            users: started,
            api: (api, api_process),
            consumer: (consumer, consumer_process),
        })
    }

    fn base(&self) -> String {
        format!("http://{}", self.api.0.addr)
    }

    /// Every process that has died (none should, but for faults it is sent).
    fn dead(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for (spec, process) in self.users.iter_mut().chain([&mut self.api, &mut self.consumer]) {
            if let Some(status) = process.try_exit() {
                dead.push(format!("{} ({status})", spec.name));
            }
        }
        dead
    }

    /// SIGTERM to all, so their last spans are flushed; whether each exited
    /// 0 within the bound.
    async fn stop(&mut self) -> Vec<(String, bool)> {
        let mut all: Vec<&mut (Spec, ServiceProcess)> = vec![&mut self.api];
        all.extend(self.users.iter_mut());
        all.push(&mut self.consumer);
        let mut stopped = Vec::new();
        for (spec, process) in all {
            let clean = process.terminate().is_ok()
                && process
                    .wait_exit(SHUTDOWN_BOUND + Duration::from_secs(1))
                    .await
                    .is_ok_and(|status| status.success());
            stopped.push((spec.name.clone(), clean));
        }
        stopped
    }
}

// ---------------------------------------------------------------------------
// The load

#[derive(Debug, Clone)]
enum Outcome {
    Status(u16),
    /// The connection was refused: the request was never accepted.
    Refused,
    /// The request was sent and no whole answer came back.
    CutOff(String),
}

#[derive(Debug, Clone)]
struct Answer {
    /// When it was sent, from the start of the load.
    sent: Duration,
    latency: Duration,
    outcome: Outcome,
    user: usize,
    seq: u64,
    trace_id: Option<String>,
}

impl Answer {
    fn is_2xx(&self) -> bool {
        matches!(self.outcome, Outcome::Status(200..=299))
    }

    fn done(&self) -> Duration {
        self.sent + self.latency
    }
}

/// A registered user the load writes to.
#[derive(Clone)]
struct LoadUser {
    id: String,
    token: String,
}

/// Registers the load's users through the API and logs each in.
async fn register(base: &str) -> anyhow::Result<Vec<LoadUser>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut users = Vec::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    for n in 0..LOAD_USERS {
        let email = format!("chaos-{}-{n}@example.com", &run[..8]);
        let answer = http
            .post(format!("{base}/v1/users"))
            .json(&json!({ "email": email, "name": format!("Chaos {n}"), "password": PASSWORD }))
            .send()
            .await?;
        anyhow::ensure!(answer.status() == 201, "registering a load user: {}", answer.status());
        let id = answer.json::<serde_json::Value>().await?["id"]
            .as_str()
            .context("an id")?
            .to_owned();
        let login: serde_json::Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await?
            .json()
            .await?;
        let token = login["access_token"].as_str().context("a token")?.to_owned();
        users.push(LoadUser { id, token });
    }
    Ok(users)
}

/// A steady write load: each user's changes one after the other, all users
/// together at `rate` changes a second.
struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: String, users: &[LoadUser], rate: u64) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        let period = Duration::from_secs_f64(users.len() as f64 / rate.max(1) as f64);
        let workers = users
            .iter()
            .cloned()
            .enumerate()
            .map(|(index, user)| {
                let (http, base, stop, answers) = (http.clone(), base.clone(), stop.clone(), answers.clone());
                tokio::spawn(async move {
                    // Spread the users' first requests over one period.
                    tokio::time::sleep(period.mul_f64(index as f64 / LOAD_USERS as f64)).await;
                    let mut ticks = tokio::time::interval(period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        ticks.tick().await;
                        seq += 1;
                        let sent = started.elapsed();
                        let result = http
                            .patch(format!("{base}/v1/users/{}", user.id))
                            .bearer_auth(&user.token)
                            .json(&json!({ "name": format!("Chaos {index} {seq}") }))
                            .send()
                            .await;
                        let (outcome, trace_id) = match result {
                            Ok(answer) => {
                                let status = answer.status().as_u16();
                                let trace_id = answer
                                    .headers()
                                    .get("traceparent")
                                    .and_then(|value| value.to_str().ok())
                                    .and_then(|value| value.split('-').nth(1))
                                    .map(str::to_owned);
                                match answer.bytes().await {
                                    Ok(_) => (Outcome::Status(status), trace_id),
                                    Err(error) => (Outcome::CutOff(error.to_string()), None),
                                }
                            }
                            Err(error) if error.is_connect() => (Outcome::Refused, None),
                            Err(error) => (Outcome::CutOff(error.to_string()), None),
                        };
                        let latency = started.elapsed() - sent;
                        answers.lock().expect("answers").push(Answer {
                            sent,
                            latency,
                            outcome,
                            user: index,
                            seq,
                            trace_id,
                        });
                    }
                })
            })
            .collect();
        Self {
            started,
            stop,
            answers,
            workers,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn acknowledged(&self) -> usize {
        self.answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|a| a.is_2xx())
            .count()
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        Arc::try_unwrap(self.answers)
            .map(|answers| answers.into_inner().expect("answers"))
            .unwrap_or_else(|shared| shared.lock().expect("answers").clone())
    }
}

/// The first 2xx that completed after `since` (from the load's start), and
/// how long after.
fn first_2xx_after(answers: &[Answer], since: Duration) -> Option<Duration> {
    answers
        .iter()
        .filter(|a| a.is_2xx() && a.sent >= since)
        .map(|a| a.done().saturating_sub(since))
        .min()
}

// ---------------------------------------------------------------------------
// What became of the writes

/// The consumer's rows of update events.
async fn updated_rows(db: &TestDatabase) -> anyhow::Result<usize> {
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_events WHERE event_type = 'user.updated'")
        .fetch_one(db.pool())
        .await?;
    Ok(rows as usize)
}

/// Waits until the consumer has written at least `target` update rows;
/// how long it took, or `None` after `patience`.
async fn caught_up(db: &TestDatabase, target: usize, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if updated_rows(db).await.is_ok_and(|rows| rows >= target) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Reads the whole topic from the start: how many distinct update events it
/// holds, and how many messages repeat an event id.
fn events_in_kafka(kafka: &Kafka) -> anyhow::Result<(usize, usize)> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", format!("chaos-audit-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    reader.subscribe(&[&kafka.topic])?;
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut at_end = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partitions = 3;
    while at_end.len() < partitions && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                if let Ok(event) = UserEvent::parse(message.payload())
                    && event.event_type.as_str() == "user.updated"
                {
                    *seen.entry(event.event_id).or_default() += 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(error)) => eprintln!("    reading the topic: {error}"),
            None => {}
        }
    }
    let duplicates = seen.values().map(|n| n - 1).sum();
    Ok((seen.len(), duplicates))
}

/// Compares the acknowledged changes with the consumer's rows: fills in the
/// row's columns and adds the loss, duplicate and order checks.
async fn audit(row: &mut Row, parts: &Parts, users: &[LoadUser], answers: &[Answer]) -> anyhow::Result<()> {
    row.count(answers);
    // Let the consumer finish what the broker holds.
    let target = row.committed;
    if caught_up(&parts.db, target, Duration::from_secs(60)).await.is_none() {
        eprintln!("    the consumer did not write all {target} acknowledged changes within 60 s");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let index: HashMap<&str, usize> = users.iter().enumerate().map(|(n, u)| (u.id.as_str(), n)).collect();
    let stored: Vec<(uuid::Uuid, Option<String>, i32, i64)> = sqlx::query_as(
        "SELECT user_id, payload->>'name', kafka_partition, kafka_offset FROM user_events \
         WHERE event_type = 'user.updated' ORDER BY kafka_partition, kafka_offset",
    )
    .fetch_all(parts.db.pool())
    .await?;
    row.rows = stored.len();
    // (user, seq) -> rows; and each user's sequence in offset order.
    let mut copies: HashMap<(usize, u64), usize> = HashMap::new();
    let mut order: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (user_id, name, _, _) in &stored {
        let Some(&user) = index.get(user_id.to_string().as_str()) else {
            continue;
        };
        let Some(seq) = name
            .as_deref()
            .and_then(|n| n.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        *copies.entry((user, seq)).or_default() += 1;
        order.entry(user).or_default().push(seq);
    }
    row.lost = answers
        .iter()
        .filter(|a| a.is_2xx() && !copies.contains_key(&(a.user, a.seq)))
        .count();
    row.duplicated = copies.values().map(|n| n - 1).sum();
    let out_of_order = order
        .values()
        .filter(|seqs| seqs.windows(2).any(|pair| pair[0] >= pair[1]))
        .count();
    let (events, repeated) = tokio::task::block_in_place(|| events_in_kafka(&parts.kafka))?;
    row.events = events;
    row.must(
        row.lost == 0,
        format!("{} acknowledged changes without a row", row.lost),
    );
    row.must(
        row.duplicated == 0,
        format!("{} changes with more than one row", row.duplicated),
    );
    row.must(
        out_of_order == 0,
        format!("{out_of_order} users whose rows are out of order"),
    );
    // The outbox promises each change once in effect: a relay round cut off
    // between the broker's acknowledgement and its commit (Postgres going
    // away) sends its rows again, and the consumer stores each once.
    row.check(
        repeated == 0 || row.duplicated == 0,
        if repeated == 0 {
            "0 events more than once in Kafka".to_owned()
        } else {
            format!("{repeated} events sent to Kafka again after a relay round was cut off; each stored once")
        },
    );
    let cut_off: Vec<&str> = answers
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::CutOff(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    row.must(
        cut_off.is_empty(),
        format!(
            "{} requests cut off without a whole answer{}",
            cut_off.len(),
            cut_off
                .first()
                .map(|why| format!(" (first: {why})"))
                .unwrap_or_default()
        ),
    );
    Ok(())
}

/// Checks every process is still running: no restart by hand was needed.
fn all_alive(row: &mut Row, services: &mut Services) {
    let dead = services.dead();
    row.must(
        dead.is_empty(),
        format!("every service still running, none restarted by hand (dead: {dead:?})"),
    );
}

/// Starts the services as `specs` makes them (`replicas` user services,
/// spans to `otlp`, the API's spec changed by `api`), registers the load's
/// users and starts the steady write load on them.
async fn start_load(
    settings: &Settings,
    parts: &Parts,
    replicas: usize,
    otlp: &str,
    api: impl FnOnce(Spec) -> Spec,
) -> anyhow::Result<(Services, Vec<LoadUser>, Load)> {
    let (users, api_spec, consumer) = specs(settings, parts, replicas, otlp)?;
    let services = Services::start(users, api(api_spec), consumer).await?;
    let load_users = register(&services.base()).await?;
    let load = Load::start(services.base(), &load_users, settings.rate);
    Ok((services, load_users, load))
}

/// Sends the load for `seconds` before a fault.
async fn warm_up(settings: &Settings) {
    tokio::time::sleep(settings.secs(5, 2)).await;
}

// ---------------------------------------------------------------------------
// The scenarios

/// 1: the broker stopped for 10 s; the outbox (in the user service) must
/// absorb it, so writes keep answering 2xx.
async fn broker_outage(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let mut parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let outage = settings.secs(10, 10);
    tokio::task::block_in_place(|| parts.kafka.broker().kill());
    tokio::time::sleep(outage).await;
    tokio::task::block_in_place(|| parts.kafka.broker().restart())?;
    let restarted = load.now();
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    if let Some(took) = first_2xx_after(&answers, restarted) {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    row.check(
        row.server_errors == 0,
        format!(
            "writes keep answering 2xx through the outage ({} 5xx)",
            row.server_errors
        ),
    );
    all_alive(row, &mut services);
    Ok(())
}

/// 2: the consumer `kill -9`ed ten times in a row, restarted at once each time.
async fn consumer_kills(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let mut slowest = Duration::ZERO;
    let mut unrecovered = 0;
    for _ in 0..10 {
        tokio::time::sleep(settings.secs(3, 1)).await;
        services.consumer.1.kill();
        let restarted = Instant::now();
        services.consumer.1 = services.consumer.0.start().await?;
        // Back at the head: every change acknowledged by the restart written.
        let target = load.acknowledged();
        match caught_up(&parts.db, target, RECOVERY_BOUND * 3).await {
            Some(_) => slowest = slowest.max(restarted.elapsed()),
            None => unrecovered += 1,
        }
    }
    row.recovered(slowest);
    let answers = load.stop().await;
    audit(row, &parts, &load_users, &answers).await?;
    row.must(
        unrecovered == 0 && slowest <= RECOVERY_BOUND,
        format!("each restart back at the head within {RECOVERY_BOUND:?} (slowest {slowest:.1?}, {unrecovered} never)"),
    );
    all_alive(row, &mut services);
    Ok(())
}

/// 3: the machine's Postgres restarted; every service recovers without a
/// restart, answering 503 (and only 503) meanwhile.
async fn postgres_restart(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let began = load.now();
    restart_postgres()?;
    let back = load.now();
    eprintln!("    Postgres was down for {:.1?}", back - began);
    tokio::time::sleep(settings.secs(15, 8)).await;
    let target = load.acknowledged();
    let consumer_back = caught_up(&parts.db, target, Duration::from_secs(30)).await;
    let answers = load.stop().await;
    let recovered = first_2xx_after(&answers, back);
    if let Some(took) = recovered {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    let not_503: Vec<u16> = answers
        .iter()
        .filter_map(|a| match a.outcome {
            Outcome::Status(status @ 500..=599) if status != 503 => Some(status),
            _ => None,
        })
        .collect();
    row.check(not_503.is_empty(), format!("every 5xx is a 503 (others: {not_503:?})"));
    let last_5xx = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(500..=599)))
        .map(Answer::done)
        .max();
    let reconnect = Duration::from_secs(5);
    row.check(
        last_5xx.is_none_or(|last| last <= back + reconnect),
        format!(
            "5xx stop within {reconnect:?} of Postgres being back (the last {})",
            last_5xx.map_or_else(
                || "never came".to_owned(),
                |last| format!("{:.1} s after", last.saturating_sub(back).as_secs_f64())
            )
        ),
    );
    row.must(recovered.is_some(), "the API answers 2xx again by itself");
    row.must(consumer_back.is_some(), "the consumer writes again by itself");
    all_alive(row, &mut services);
    Ok(())
}

/// Restarts the machine's first Postgres cluster, as scripts/ensure-postgres.sh
/// finds it.
fn restart_postgres() -> anyhow::Result<()> {
    let clusters = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()?;
    let text = String::from_utf8_lossy(&clusters.stdout);
    let mut first = text.lines().next().context("no Postgres cluster")?.split_whitespace();
    let (version, name) = (first.next().context("a version")?, first.next().context("a name")?);
    let status = std::process::Command::new("pg_ctlcluster")
        .args([version, name, "restart"])
        .status()?;
    anyhow::ensure!(status.success(), "pg_ctlcluster {version} {name} restart failed");
    Ok(())
}

/// 4: one of two user-service replicas `kill -9`ed: the API (given both in
/// `USER_SERVICE_URL`) answers from the other.
async fn replica_killed(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 2, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let killed = load.now();
    services.users[0].1.kill();
    // A request sent before the replica was gone may have reached it.
    let dead = load.now();
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    if let Some(took) = first_2xx_after(&answers, killed) {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;
    // In flight at the kill: sent before the replica was gone, answered
    // after the kill began.
    let in_flight = answers.iter().filter(|a| a.sent <= dead && a.done() >= killed).count();
    row.check(
        row.server_errors <= in_flight,
        format!(
            "no 5xx beyond the {in_flight} requests in flight ({} 5xx)",
            row.server_errors
        ),
    );
    services.users.remove(0);
    all_alive(row, &mut services);
    Ok(())
}

/// 5: the user service slowed past the API's deadline: 504 within the
/// deadline + 50 ms; the breaker opens (503 at once) and closes once the
/// service is healed (restarted without the fault).
async fn slow_user(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    // Two replicas named to the API, so that the fault comes and goes
    // without a moment when no user service listens: the API's answers in
    // the slow phase are the slowness's alone, not a restart's.
    let (mut services, load_users, load) = start_load(settings, &parts, 2, &parts.otlp.endpoint(), |api| {
        api.with("REQUEST_TIMEOUT_MS", DEADLINE_MS.to_string())
    })
    .await?;
    warm_up(settings).await;

    // The second replica turns slow while the first serves; then the first
    // stops, and every call meets the slow one.
    let slowed = load.now();
    restart_user(&mut services, 1, Some(DEADLINE_MS + 500)).await?;
    rejoin().await;
    stop_user(&mut services, 0).await?;
    tokio::time::sleep(settings.secs(10, 5)).await;

    // Healed: the first comes back as it was, then the slow one leaves and
    // comes back healthy.
    let healed = load.now();
    start_user(&mut services, 0).await?;
    rejoin().await;
    restart_user(&mut services, 1, None).await?;
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    let recovered = first_2xx_after(&answers, healed);
    if let Some(took) = recovered {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;

    let during: Vec<&Answer> = answers.iter().filter(|a| a.sent >= slowed && a.sent < healed).collect();
    let timeouts: Vec<&&Answer> = during
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(504)))
        .collect();
    let slowest_504 = timeouts.iter().map(|a| a.latency).max().unwrap_or_default();
    let bound = Duration::from_millis(DEADLINE_MS + 50);
    row.check(
        !timeouts.is_empty() && slowest_504 <= bound,
        format!(
            "{} answers 504, the slowest in {slowest_504:.1?} (bound {bound:?})",
            timeouts.len()
        ),
    );
    // Once open, the breaker answers at once: in the second half of the
    // slow phase, most answers are 503s that took no time. (A 503 while the
    // service was being restarted is no sign of a breaker.)
    let open_phase = slowed + (healed - slowed) / 2;
    let late: Vec<&&Answer> = during.iter().filter(|a| a.sent >= open_phase).collect();
    let fast_503 = late
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(503)) && a.latency < Duration::from_millis(50))
        .count();
    row.check(
        !late.is_empty() && fast_503 * 2 > late.len(),
        format!(
            "the breaker is open: {fast_503} of the last {} answers of the slow phase are 503 at once",
            late.len()
        ),
    );
    row.must(
        recovered.is_some(),
        "writes answer 2xx again once the service is healed",
    );
    all_alive(row, &mut services);
    Ok(())
}

/// Restarts user replica `index`, with `FAULT_LATENCY_MS` when `latency_ms`
/// is given (its spec keeps none, so a restart with `None` heals it); the
/// other replica serves meanwhile.
async fn restart_user(services: &mut Services, index: usize, latency_ms: Option<u64>) -> anyhow::Result<()> {
    stop_user(services, index).await?;
    let (spec, process) = &mut services.users[index];
    let spec = match latency_ms {
        Some(latency) => spec.clone().with("FAULT_LATENCY_MS", latency.to_string()),
        None => spec.clone(),
    };
    *process = spec.start().await?;
    Ok(())
}

/// Waits until the API has health-checked a replica that came back (it
/// checks every half second), so stopping the other leaves one serving.
async fn rejoin() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Stops user replica `index` with SIGTERM and waits for it to exit.
async fn stop_user(services: &mut Services, index: usize) -> anyhow::Result<()> {
    let process = &mut services.users[index].1;
    process.terminate()?;
    process.wait_exit(SHUTDOWN_BOUND + Duration::from_secs(1)).await?;
    Ok(())
}

/// Starts user replica `index` again, as its spec says.
async fn start_user(services: &mut Services, index: usize) -> anyhow::Result<()> {
    let (spec, process) = &mut services.users[index];
    *process = spec.start().await?;
    Ok(())
}

/// 6: the OTLP collector (a process of its own) down for 30 s: requests do
/// not slow down, the dropped spans are counted and logged once, and export
/// resumes.
async fn collector_down(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let mut collector = Collector::start()?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &collector.endpoint(), |api| api).await?;
    let phase = settings.secs(30, 10);
    tokio::time::sleep(phase).await;
    let stopped = load.now();
    collector.stop();
    tokio::time::sleep(phase).await;
    let restarted = load.now();
    let resumed_at = Instant::now();
    collector.restart()?;
    // Export resumes: every service says so.
    let mut resumed = None;
    while resumed_at.elapsed() < Duration::from_secs(30) {
        let all = services
            .users
            .iter()
            .map(|(_, p)| p)
            .chain([&services.api.1, &services.consumer.1])
            .all(|p| p.messages().iter().any(|m| m.starts_with("span export resumed")));
        if all {
            resumed = Some(resumed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settings.secs(5, 2)).await;
    let answers = load.stop().await;
    if let Some(took) = resumed {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;

    let p99 = |from: Duration, to: Duration| {
        let mut latencies: Vec<f64> = answers
            .iter()
            .filter(|a| a.sent >= from && a.sent < to)
            .map(|a| a.latency.as_secs_f64() * 1000.0)
            .collect();
        latencies.sort_by(f64::total_cmp);
        percentile(&latencies, 99.0)
    };
    let (before, during) = (p99(Duration::ZERO, stopped), p99(stopped, restarted));
    row.check(
        during <= before * 1.1,
        format!("p99 {before:.1} ms with the collector, {during:.1} ms without it (< 10% more)"),
    );
    for (_, process) in services.users.iter().map(|(s, p)| (s, p)).chain([
        (&services.api.0, &services.api.1),
        (&services.consumer.0, &services.consumer.1),
    ]) {
        let failing = process
            .messages()
            .iter()
            .filter(|m| m.starts_with("span export failing"))
            .count();
        row.check(
            failing == 1,
            format!("{} logged the failing export once ({failing} times)", process.name()),
        );
    }
    row.must(resumed.is_some(), "span export resumes by itself in every service");
    all_alive(row, &mut services);
    Ok(())
}

/// The collector binary the test parts run (scripts/parts.sh), on ports of
/// its own, forwarding to the test parts' Jaeger.
struct Collector {
    process: Option<ServiceProcess>,
    grpc: std::net::SocketAddr,
    env: Vec<(String, String)>,
    program: String,
}

impl Collector {
    fn start() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let versions = std::fs::read_to_string(root.join(".env"))?;
        let version = versions
            .lines()
            .find_map(|line| line.strip_prefix("OTELCOL_VERSION="))
            .context("OTELCOL_VERSION in .env")?
            .trim()
            .to_owned();
        let tools = setting("CALLCHAIN_TOOLS").map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".callchain/tools"),
            PathBuf::from,
        );
        let program = tools.join(format!("otelcol-{version}/otelcol-callchain"));
        anyhow::ensure!(
            program.exists(),
            "no collector at {}: run `make tools`",
            program.display()
        );
        let grpc = free_addr()?;
        // The test parts' Jaeger takes OTLP on 25317 (scripts/test-parts.sh).
        let jaeger = setting("TEST_JAEGER_GRPC_PORT").unwrap_or_else(|| "25317".into());
        let env = vec![
            ("OTELCOL_OTLP_GRPC_ENDPOINT".to_owned(), grpc.to_string()),
            ("OTELCOL_OTLP_HTTP_ENDPOINT".to_owned(), free_addr()?.to_string()),
            ("OTELCOL_HEALTH_ENDPOINT".to_owned(), free_addr()?.to_string()),
            ("OTELCOL_METRICS_PORT".to_owned(), free_addr()?.port().to_string()),
            ("OTELCOL_JAEGER_ENDPOINT".to_owned(), format!("127.0.0.1:{jaeger}")),
        ];
        let mut collector = Self {
            process: None,
            grpc,
            env,
            program: program.to_string_lossy().into_owned(),
        };
        collector.restart()?;
        Ok(collector)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../observability/otel-collector.yaml");
        let mut process = ServiceProcess::spawn_with_args(
            "otelcol",
            &self.program,
            &[
                format!("--config={}", config.display()),
                // Its start-up lines would bury the table.
                "--set=service.telemetry.logs.level=warn".to_owned(),
            ],
            self.env.clone(),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_err() {
            if let Some(status) = process.try_exit() {
                anyhow::bail!("the collector exited at start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the collector does not listen after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process = Some(process);
        Ok(())
    }
}

/// 7: SIGTERM to each service in turn, under load, each started again
/// after it exits: no accepted request is cut off, every answered request's
/// spans arrive, and each service exits 0 within the bound.
async fn sigterm_each(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let mut exits = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    for which in ["consumer", "user1", "api"] {
        let (spec, process) = match which {
            "consumer" => &mut services.consumer,
            "api" => &mut services.api,
            _ => &mut services.users[0],
        };
        let signalled = Instant::now();
        process.terminate()?;
        let status = process.wait_exit(SHUTDOWN_BOUND + Duration::from_secs(2)).await;
        let took = signalled.elapsed();
        exits.push((
            spec.name.clone(),
            status.as_ref().is_ok_and(|s| s.success()) && took <= SHUTDOWN_BOUND,
            took,
        ));
        *process = spec.start().await?;
        slowest_restart = slowest_restart.max(signalled.elapsed());
        tokio::time::sleep(settings.secs(5, 2)).await;
    }
    let answers = load.stop().await;
    row.recovered(slowest_restart);
    // Every service flushes its last spans on the way out.
    let stopped = services.stop().await;
    audit(row, &parts, &load_users, &answers).await?;
    for (name, clean, took) in exits {
        row.must(
            clean,
            format!("{name} exited 0 within {SHUTDOWN_BOUND:?} of SIGTERM ({took:.1?})"),
        );
    }
    for (name, clean) in stopped {
        row.must(clean, format!("{name} exited 0 at the end"));
    }
    let refused = answers.iter().filter(|a| matches!(a.outcome, Outcome::Refused)).count();
    eprintln!("    {refused} requests refused while the API was down (never accepted)");
    // The spans of the completed requests: the API's server span of each.
    let served: BTreeSet<String> = parts
        .otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Server && span.service == "api")
        .map(|span| span.trace_id)
        .collect();
    let answered: Vec<&String> = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(_)))
        .filter_map(|a| a.trace_id.as_ref())
        .collect();
    let missing = answered.iter().filter(|id| !served.contains(**id)).count();
    row.must(
        missing == 0,
        format!(
            "the API's span of every answered request arrived ({missing} of {} missing)",
            answered.len()
        ),
    );
    Ok(())
}
