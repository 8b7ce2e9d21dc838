//! What every scenario shares: the settings, the table, the parts and the
//! service processes, the write load, and the audit of what became of the
//! writes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
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
};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{BaseConsumer, Consumer as _},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use serde_json::json;

/// Users the load writes to; each is written one change at a time.
pub const LOAD_USERS: usize = 20;
/// What every service is given to drain in after SIGTERM.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);
/// How long a consumer may take to be back at the head after a crash.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
pub const JWT_SECRET: &str = "callchain-chaos-secret-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The run's settings.
pub struct Settings {
    pub quick: bool,
    pub only: Option<BTreeSet<u32>>,
    pub rate: u64,
    pub bins: PathBuf,
    /// Scenario 14's length and seed.
    pub nemesis: crate::nemesis::Plan,
}

impl Settings {
    /// `full` normally, `quick` with `CHAOS_QUICK=1`.
    pub fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

// ---------------------------------------------------------------------------
// The table

/// One scenario's line of the table, and its checks.
pub struct Row {
    pub fault: String,
    pub requests: usize,
    pub ok: usize,
    pub client_errors: usize,
    pub server_errors: usize,
    pub p99_ms: f64,
    pub committed: usize,
    pub events: usize,
    pub rows: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub recover: Option<Duration>,
    pub checks: Vec<Check>,
    pub error: Option<anyhow::Error>,
}

pub struct Check {
    pub what: String,
    pub passed: bool,
    /// A failed hard check fails the run: loss, duplication, order, a service
    /// that needs a hand.
    pub hard: bool,
}

impl Row {
    pub fn new(fault: &str) -> Self {
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

    pub fn check(&mut self, passed: bool, what: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            passed,
            hard: false,
        });
    }

    pub fn must(&mut self, passed: bool, what: impl Into<String>) {
        self.checks.push(Check {
            what: what.into(),
            passed,
            hard: true,
        });
    }

    pub fn recovered(&mut self, took: Duration) {
        self.recover = Some(self.recover.map_or(took, |slowest| slowest.max(took)));
    }

    pub fn markdown(&self) -> String {
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
    pub fn count(&mut self, answers: &[Answer]) {
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
pub struct Parts {
    pub kafka: Kafka,
    pub db: TestDatabase,
    pub otlp: OtlpReceiver,
}

impl Parts {
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            kafka: Kafka::own().await.context("a Kafka broker of the scenario's own")?,
            db: TestDatabase::create().await?,
            otlp: OtlpReceiver::start().await?,
        })
    }
}

/// How to start one service process, so it can be started again the same.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub addr: std::net::SocketAddr,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Starts it and waits until it is healthy.
    pub async fn start(&self) -> anyhow::Result<ServiceProcess> {
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

pub async fn callchain_runtime_probe(addr: std::net::SocketAddr, path: &str) -> bool {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|answer| answer.status().is_success())
}

/// The three services' specs for `parts`, with `replicas` user services,
/// exporting spans to `otlp`.
pub fn specs(
    settings: &Settings,
    parts: &Parts,
    replicas: usize,
    otlp: &str,
) -> anyhow::Result<(Vec<Spec>, Spec, Spec)> {
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
pub struct Services {
    pub users: Vec<(Spec, ServiceProcess)>,
    pub api: (Spec, ServiceProcess),
    pub consumer: (Spec, ServiceProcess),
}

impl Services {
    pub async fn start(users: Vec<Spec>, api: Spec, consumer: Spec) -> anyhow::Result<Self> {
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

    pub fn base(&self) -> String {
        format!("http://{}", self.api.0.addr)
    }

    /// Every process that has died (none should, but for faults it is sent).
    pub fn dead(&mut self) -> Vec<String> {
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
    pub async fn stop(&mut self) -> Vec<(String, bool)> {
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
pub enum Outcome {
    Status(u16),
    /// The connection was refused: the request was never accepted.
    Refused,
    /// The request was sent and no whole answer came back.
    CutOff(String),
}

#[derive(Debug, Clone)]
pub struct Answer {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
    pub user: usize,
    pub seq: u64,
    pub trace_id: Option<String>,
}

impl Answer {
    pub fn is_2xx(&self) -> bool {
        matches!(self.outcome, Outcome::Status(200..=299))
    }

    pub fn done(&self) -> Duration {
        self.sent + self.latency
    }
}

/// A registered user the load writes to.
#[derive(Clone)]
pub struct LoadUser {
    pub id: String,
    pub token: String,
}

/// Registers the load's users through the API and logs each in.
pub async fn register(base: &str) -> anyhow::Result<Vec<LoadUser>> {
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
pub struct Load {
    pub started: Instant,
    pub stop: Arc<AtomicBool>,
    pub answers: Arc<Mutex<Vec<Answer>>>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(base: String, users: &[LoadUser], rate: u64) -> Self {
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

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn acknowledged(&self) -> usize {
        self.answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|a| a.is_2xx())
            .count()
    }

    pub async fn stop(self) -> Vec<Answer> {
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
pub fn first_2xx_after(answers: &[Answer], since: Duration) -> Option<Duration> {
    answers
        .iter()
        .filter(|a| a.is_2xx() && a.sent >= since)
        .map(|a| a.done().saturating_sub(since))
        .min()
}

// ---------------------------------------------------------------------------
// What became of the writes

/// The consumer's rows of update events.
pub async fn updated_rows(db: &TestDatabase) -> anyhow::Result<usize> {
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_events WHERE event_type = 'user.updated'")
        .fetch_one(db.pool())
        .await?;
    Ok(rows as usize)
}

/// Waits until the consumer has written at least `target` update rows;
/// how long it took, or `None` after `patience`.
pub async fn caught_up(db: &TestDatabase, target: usize, patience: Duration) -> Option<Duration> {
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
pub fn events_in_kafka(kafka: &Kafka) -> anyhow::Result<(usize, usize)> {
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
    // As many partitions as the topic has (3 on one broker, more on a cluster).
    let partitions = reader
        .fetch_metadata(Some(&kafka.topic), Duration::from_secs(10))?
        .topics()
        .iter()
        .map(|topic| topic.partitions().len())
        .sum::<usize>()
        .max(1);
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
pub async fn audit(row: &mut Row, parts: &Parts, users: &[LoadUser], answers: &[Answer]) -> anyhow::Result<()> {
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
    // Each user's stored events, by the sequence the user service stamped:
    // in order, and without a hole but for what the relay parked.
    let faults = callchain_e2e::order::stored_sequence_faults(parts.db.pool()).await?;
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
    row.must(
        faults.is_empty(),
        format!(
            "{} users whose stored sequence is out of order or has a hole{}",
            faults.len(),
            faults
                .first()
                .map(|fault| format!(" (first: {fault})"))
                .unwrap_or_default()
        ),
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
/// The end of a run in which the first user replica was `kill -9`ed at
/// `killed` and was gone by `dead` (both on the load's clock): the load runs
/// on a while, then the writes are audited, no request but those in flight
/// at the kill may have answered 5xx, and every other service still lives.
pub async fn after_the_first_replica_killed(
    settings: &Settings,
    row: &mut Row,
    parts: &Parts,
    mut services: Services,
    load_users: &[LoadUser],
    load: Load,
    (killed, dead): (Duration, Duration),
) -> anyhow::Result<()> {
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    if let Some(took) = first_2xx_after(&answers, killed) {
        row.recovered(took);
    }
    audit(row, parts, load_users, &answers).await?;
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

pub fn all_alive(row: &mut Row, services: &mut Services) {
    let dead = services.dead();
    row.must(
        dead.is_empty(),
        format!("every service still running, none restarted by hand (dead: {dead:?})"),
    );
}

/// Starts the services as `specs` makes them (`replicas` user services,
/// spans to `otlp`, the API's spec changed by `api`), registers the load's
/// users and starts the steady write load on them.
pub async fn start_load(
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
pub async fn warm_up(settings: &Settings) {
    tokio::time::sleep(settings.secs(5, 2)).await;
}
