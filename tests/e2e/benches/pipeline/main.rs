//! `make bench`: the figures of docs/performance.md, measured on real parts (Apache
//! Kafka, Postgres, the in-process OTLP receiver) with the load generator in
//! the same process. It prints figures; it asserts no time.
//!
//! 0. The limits ([`limits`]): Kafka's raw consume rate, Postgres's for the
//!    consumer's batched insert, the user service's update transaction; the
//!    consumer and the write ceiling are given as fractions of them. The
//!    write ceiling ([`ceiling`]) and the shipped span queue's drops
//!    ([`defaults`]) come after the consumer.
//! 1. Consumer throughput: events fed straight into the topic, then the
//!    consumer started; events per second written into Postgres with every
//!    span exported, and again with every span recorded but none exported
//!    (the batch processor hands its batches to an exporter that drops
//!    them), and whether every span arrived.
//! 2. Lag at a steady write rate: `PATCH /v1/users/{id}` (updates: argon2
//!    makes registrations slow on purpose) at a fixed rate; lag from the API's
//!    answer to the committed event row, p50 and p99.
//! 3. Protocols: one user read through REST (`GET /v1/users/{id}`),
//!    JSON-RPC (`user.get`) and gRPC straight to the user service, each from
//!    32 connections; requests/s, p50, p99 and the CPU time per request of
//!    the services, Postgres, the span export and the load generator, as a
//!    Markdown table. Then REST again with every span recorded, none
//!    exported: the price of export.
//! 4. Trace integrity: updates at a steady rate, every request sampled; how
//!    many requests left a whole trace at the OTLP receiver, how many spans
//!    lost their parent or were dropped on the way, how many of the log lines
//!    written for the requests carry their trace id, and what tracechain's
//!    `--check-all` says of the same run's logs.
//!
//! Sizes can be changed with BENCH_EVENTS, BENCH_WRITE_RATE,
//! BENCH_WRITE_SECONDS, BENCH_READ_SECONDS, BENCH_INTEGRITY_RATE and
//! BENCH_INTEGRITY_SECONDS, BENCH_LIMIT_SECONDS, BENCH_CEILING_START and
//! BENCH_CEILING_SECONDS;
//! BENCH_ONLY=limits,consumer,ceiling,defaults,lag,protocols,integrity,metrics,relay
//! runs only those (consumer and ceiling measure the limits too; metrics: the
//! price of metrics, `metrics.rs`; relay: the outbox relay's rate with one and
//! two replicas, `relay.rs`);
//! BENCH_INTEGRITY_LOGS=<folder> keeps the integrity run's logs there, for
//! `tracechain --check-all <folder>` (an absolute path: cargo runs a bench
//! in its package's folder).
//! BENCH_INTEGRITY_KILL_BROKER=1 runs the integrity run on a three-node
//! Kafka cluster of its own and `kill -9`s one node (not the controller)
//! halfway through its load.
//! BENCH_MARKDOWN=<file> (absolute too) also writes the protocols' tables
//! there as docs/performance.md shows them, each headed, dated and naming
//! the machine, to be pasted rather than retyped.

mod ceiling;
mod defaults;
mod kill_broker;
mod limits;
mod relay;

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use callchain_e2e::{
    cpu::{self, CpuTimes, process_cpu},
    load::{self, Http1, Outcome, Pace, percentile},
    stack::{Stack, spawn_consumer},
};
use callchain_events::{EventType, UserEvent, UserPayload};
use callchain_proto::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use callchain_telemetry::Export;
use callchain_testkit::{
    kafka::Kafka,
    otlp::SpanCounter,
    postgres::TestDatabase,
    spans::{SpanKind, SpanRecord},
};
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use serde_json::json;

mod metrics;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether the run `name` is among those `BENCH_ONLY` names (a
/// comma-separated list; all of them when it is unset).
fn runs(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

/// The services run in this process, so it installs their allocator.
#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

/// The bench's span queue: large enough for a whole run, in large batches.
const BENCH_SPANS: callchain_telemetry::SpanBatch = callchain_telemetry::SpanBatch {
    max_queue_size: 1_000_000,
    max_export_batch_size: 2048,
    scheduled_delay: Duration::from_millis(200),
};

fn main() -> anyhow::Result<()> {
    callchain_runtime::tune_allocator();
    // Every span must reach the receiver: a queue large enough for a whole
    // run, and large export batches. The SDK reads these from the process
    // environment, so they are set here.
    // SAFETY: `set_var` races with any other thread reading the environment.
    // This is the first thing `main` does and the bench has no harness, so
    // no other thread exists yet. (The workspace denies `unsafe` elsewhere.)
    #[allow(unsafe_code)]
    unsafe {
        // Every request sampled (the SDK's default too, said out loud).
        std::env::set_var("OTEL_TRACES_SAMPLER", "parentbased_always_on");
        // The services' log lines go through the queue a process has
        // (`LOG_QUEUE_LINES=0 make bench` writes each in its thread).
        if std::env::var_os("LOG_QUEUE_LINES").is_none() {
            std::env::set_var("LOG_QUEUE_LINES", "65536");
        }
    }
    callchain_testkit::service::set_span_batch(Some(BENCH_SPANS));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "callchain benchmark ({} cores)\n",
            std::thread::available_parallelism()?.get()
        );
        let events = setting("BENCH_EVENTS", 100_000);
        let limits = if runs("limits") || runs("consumer") || runs("ceiling") {
            Some(limits::measure(events, setting("BENCH_LIMIT_SECONDS", 5)).await?)
        } else {
            None
        };
        if runs("consumer") {
            // The first run of a process pays for its memory (the allocator's
            // first pages): a warm-up takes that, and the two modes then take
            // turns, three times, so neither is favoured by its place in the
            // run. What slows a run on a shared machine only ever slows it:
            // the fastest of each mode's runs is the one least disturbed.
            consumer_throughput(events / 5, false, "warm-up, not counted").await?;
            let (mut exported, mut recorded) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                exported.push(consumer_throughput(events, true, "").await?);
                recorded.push(consumer_throughput(events, false, "").await?);
            }
            let figures = |runs: &[f64]| runs.iter().map(|rate| format!("{rate:.0}")).collect::<Vec<_>>().join(", ");
            println!(
                "   consumer events/s, every span exported: {}; recorded only: {}",
                figures(&exported),
                figures(&recorded)
            );
            if let Some(limits) = &limits {
                println!(
                    "   consumer, every span exported, as a fraction of its limit ({:.0} events/s): {:.2}",
                    limits.consumer(),
                    limits::Spread(exported.clone()).over(limits.consumer())
                );
            }
            let (exported, recorded) = (fastest(&exported), fastest(&recorded));
            println!(
                "   consumer: {exported:.0} events/s exported, {recorded:.0} recorded only (the fastest of three runs each): \
                 export keeps {:.2} of the rate\n",
                exported / recorded
            );
        }
        if runs("ceiling") {
            ceiling::ceiling(
                limits.as_ref(),
                std::env::var("BENCH_CEILING_START").ok().and_then(|v| v.parse().ok()),
                setting("BENCH_CEILING_SECONDS", 5),
            )
            .await?;
        }
        if runs("defaults") {
            defaults::defaults(events, setting("BENCH_READ_SECONDS", 10), BENCH_SPANS).await?;
        }
        if runs("lag") {
            write_lag(setting("BENCH_WRITE_RATE", 500), setting("BENCH_WRITE_SECONDS", 10)).await?;
        }
        if runs("protocols") {
            let markdown = Markdown::from_env()?;
            protocols(setting("BENCH_READ_SECONDS", 10), markdown.as_ref()).await?;
        }
        if runs("metrics") {
            metrics::price_of_metrics(events / 5, setting("BENCH_READ_SECONDS", 10)).await?;
        }
        if runs("relay") {
            relay::relay_ceiling(setting("BENCH_RELAY_EVENTS", 20_000)).await?;
        }
        if runs("integrity") {
            integrity(
                setting("BENCH_INTEGRITY_RATE", 500),
                setting("BENCH_INTEGRITY_SECONDS", 60),
            )
            .await?;
        }
        Ok(())
    })
}

/// The largest of `figures`.
fn fastest(figures: &[f64]) -> f64 {
    figures.iter().copied().fold(f64::NAN, f64::max)
}

/// Feeds `count` events into the topic, then times the consumer writing
/// them; its rate while writing.
async fn consumer_throughput(count: u64, export: bool, note: &str) -> anyhow::Result<f64> {
    let mut label = if export {
        "with every span exported"
    } else {
        "every span recorded, none exported"
    }
    .to_owned();
    if !note.is_empty() {
        label.push_str(&format!(" ({note})"));
    }
    let db = TestDatabase::create().await?;
    let kafka = Kafka::shared().await?;
    println!("== consumer: {count} events fed into a topic of 3 partitions, {label}");
    let otlp = SpanCounter::start()?;

    let feeding = Instant::now();
    let fed = feed(&kafka, count).await?;
    println!("   fed in {:.1} s", feeding.elapsed().as_secs_f64());

    let started = Instant::now();
    let cpu = CpuTimes::now()?;
    let spans = if export {
        Export::Otlp(otlp.endpoint())
    } else {
        Export::Discard
    };
    let mut consumer = spawn_consumer(&db, &kafka, spans).await?;
    wait_for_rows(&db, count, &fed, started, true).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = CpuTimes::now()?.since(&cpu);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / count as f64;
    let (rate, writing) = writing_rate(&db, count).await?;
    println!(
        "   {rate:.0} events/s while writing ({count} rows in {writing:.2} s); {:.0} events/s from consumer start ({wall:.2} s)",
        count as f64 / wall
    );
    println!(
        "   CPU µs per event: consumer {:.1}, its Kafka client {:.1}, span export {:.1}, the OTLP receiver {:.1}",
        per(cpu.of("consumer")),
        per(cpu.of("librdkafka")),
        per(cpu.of("span export")),
        per(cpu.of("receiver")),
    );
    if export {
        let flushed = Instant::now();
        consumer.flush().await;
        let expected = 2 * count as usize; // `process <topic>` and `INSERT user_events` per event
        while otlp.count() < expected && flushed.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let process = otlp.count_of(&format!("process {}", kafka.topic));
        let insert = otlp.count_of("INSERT user_events");
        println!(
            "   spans received: {process} `process <topic>`, {insert} `INSERT user_events` (expected {count} each; dropped: {}, {:.0}/s)",
            (2 * count as usize).saturating_sub(process + insert),
            (2 * count as usize).saturating_sub(process + insert) as f64 / writing
        );
    }
    consumer.stop().await?;
    println!();
    Ok(rate)
}

/// Waits until the `count` events `fed` are written (within 10 min of
/// `started`), saying how many every 5 s when `progress`.
///
/// It looks every 20 ms whether the last event fed to each partition is
/// stored (a primary-key lookup each), and counts the table only then: the
/// consumer stores each partition in order, every event its own user's. A
/// `count(*)` every 20 ms scanned up to the whole table each time, and
/// took Postgres's CPU from the consumer it measured, which the raw
/// insert's run did not.
async fn wait_for_rows(
    db: &TestDatabase,
    count: u64,
    fed: &Fed,
    started: Instant,
    progress: bool,
) -> anyhow::Result<()> {
    let count_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_events")
            .fetch_one(db.pool())
            .await
    };
    let mut last_report = Instant::now();
    loop {
        let ends: i64 = sqlx::query_scalar("SELECT count(*) FROM user_events WHERE event_id = ANY($1)")
            .bind(&fed.last)
            .fetch_one(db.pool())
            .await?;
        if ends as usize >= fed.last.len() && count_rows().await? as u64 >= count {
            return Ok(());
        }
        let report = progress && last_report.elapsed() > Duration::from_secs(5);
        let late = started.elapsed() >= Duration::from_secs(600);
        if report || late {
            let written = count_rows().await?;
            anyhow::ensure!(!late, "only {written} of {count} after 10 min");
            println!("   ... {written} written");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rate at which the `count` rows were written, from the first row's
/// `written_at` to the last's, and those seconds.
async fn writing_rate(db: &TestDatabase, count: u64) -> anyhow::Result<(f64, f64)> {
    let (first, last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT min(written_at), max(written_at) FROM user_events")
            .fetch_one(db.pool())
            .await?;
    let writing = (last - first).num_microseconds().unwrap_or(1) as f64 / 1e6;
    Ok((count as f64 / writing, writing))
}

/// What [`feed`] produced: the last event of each partition.
struct Fed {
    last: Vec<uuid::Uuid>,
}

/// Produces `count` well-formed events, each in a trace of its own and of a
/// user of its own.
async fn feed(kafka: &Kafka, count: u64) -> anyhow::Result<Fed> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "500")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let producer = Arc::new(producer);
    let mut pending = Vec::with_capacity(10_000);
    let mut last = LastOfEach::default();
    for n in 0..count {
        let user_id = uuid::Uuid::now_v7();
        let event = UserEvent::new(
            EventType::UserUpdated,
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
            user_id,
            1,
            UserPayload {
                email: format!("bench{n}@example.com"),
                name: format!("Bench {n}"),
                role: "USER".into(),
            },
        );
        let traceparent = format!("00-{:032x}-{:016x}-01", uuid::Uuid::new_v4().as_u128(), n + 1);
        let producer = producer.clone();
        let topic = kafka.topic.clone();
        pending.push(tokio::spawn(async move {
            let key = event.key();
            let payload = event.to_json();
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent.as_str()),
            });
            let record = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
            producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
                .map(|delivery| (delivery.partition, delivery.offset, event.event_id))
                .map_err(|(e, _)| e)
        }));
        if pending.len() == 10_000 {
            for sent in pending.drain(..) {
                last.note(sent.await??);
            }
        }
    }
    for sent in pending {
        last.note(sent.await??);
    }
    Ok(Fed {
        last: last.0.into_values().map(|(_, event_id)| event_id).collect(),
    })
}

/// The event at the highest offset of each partition.
#[derive(Default)]
struct LastOfEach(std::collections::HashMap<i32, (i64, uuid::Uuid)>);

impl LastOfEach {
    fn note(&mut self, (partition, offset, event_id): (i32, i64, uuid::Uuid)) {
        let last = self.0.entry(partition).or_insert((offset, event_id));
        if offset >= last.0 {
            *last = (offset, event_id);
        }
    }
}

/// One update of a steady load, as its client saw it.
struct Update {
    /// The name it set, which its event row carries.
    name: String,
    ok: bool,
    latency: Duration,
    answered: SystemTime,
    traceparent: Option<String>,
}

/// Registers 20 users for a load (`<label><i>@example.com`); their ids.
async fn load_users(stack: &Stack, label: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..20 {
        let user = stack
            .register(&format!("{label}{i}@example.com"), "benchmark password")
            .await;
        ids.push(user["id"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

/// Renames `ids` in turn, as `admin`, at a steady `rate` for `seconds`
/// (`PATCH /v1/users/{id}`, names `<label><n>`); every answer, and the
/// seconds the load took until the last one.
async fn steady_updates(
    stack: &Stack,
    admin: &str,
    ids: &[String],
    (rate, seconds): (u64, u64),
    label: &str,
) -> anyhow::Result<(Vec<Update>, f64)> {
    let total = rate * seconds;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for n in 0..total {
        interval.tick().await;
        let (http, url, admin, name) = (
            stack.http.clone(),
            stack.url(&format!("/v1/users/{}", ids[n as usize % ids.len()])),
            admin.to_owned(),
            format!("{label}{n}"),
        );
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = http
                .patch(url)
                .bearer_auth(admin)
                .json(&json!({ "name": name }))
                .send()
                .await;
            let answered = SystemTime::now();
            let (ok, traceparent) = match &response {
                Ok(r) if r.status() == 200 => (
                    true,
                    r.headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                ),
                _ => (false, None),
            };
            Update {
                name,
                ok,
                latency: sent.elapsed(),
                answered,
                traceparent,
            }
        }));
    }
    let mut updates = Vec::with_capacity(requests.len());
    for request in requests {
        updates.push(request.await?);
    }
    Ok((updates, started.elapsed().as_secs_f64()))
}

/// Updates at a steady `rate` for `seconds`; the lag from each answer to its
/// event row.
async fn write_lag(rate: u64, seconds: u64) -> anyhow::Result<()> {
    println!("== lag: PATCH /v1/users/{{id}} at {rate}/s for {seconds} s, answer -> committed event row");
    let stack = Stack::start().await?;
    let admin = stack.admin_token().await;
    let ids = load_users(&stack, "lag").await;
    let (updates, elapsed) = steady_updates(&stack, &admin, &ids, (rate, seconds), "w").await?;
    let mut answered_at = std::collections::HashMap::new();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for update in updates {
        if update.ok {
            latencies.push(update.latency.as_secs_f64() * 1000.0);
            answered_at.insert(update.name, update.answered);
        } else {
            failed += 1;
        }
    }
    // Wait for the last rows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = loop {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT payload->>'name', written_at FROM user_events WHERE event_type = 'user.updated'")
                .fetch_all(stack.db.pool())
                .await?;
        if rows.len() >= answered_at.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut lags: Vec<f64> = rows
        .iter()
        .filter_map(|(name, written)| {
            let answered = answered_at.get(name)?;
            let written = SystemTime::from(*written);
            // A row committed before the client read its answer has no lag.
            Some(
                written
                    .duration_since(*answered)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0),
            )
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    println!(
        "   {} answered 200 in {elapsed:.1} s ({:.0}/s), {failed} failed; rows found for {} of them",
        answered_at.len(),
        answered_at.len() as f64 / elapsed,
        lags.len()
    );
    println!(
        "   lag answer -> row: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "   PATCH latency: p50 {:.1} ms, p99 {:.1} ms\n",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    Ok(())
}

/// Connections (or concurrent gRPC calls) of every protocol run.
const CONNECTIONS: usize = 32;
/// The rate of the paced runs: well below what each protocol can do.
const PACED_RATE: u32 = 2_000;

/// One user read through each protocol, flat out and then paced; then REST
/// again with its spans recorded but not exported. A Markdown table of each,
/// printed, and written to `markdown` when it is given.
async fn protocols(seconds: u64, markdown: Option<&Markdown>) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    println!(
        "== protocols: one user read through each protocol, {CONNECTIONS} connections, {seconds} s each \
         (after 2 s of warm-up), every request sampled and exported; each protocol twice, the second \
         round in the reverse order, so none gains from its place in the run"
    );
    let counter = SpanCounter::start()?;
    let exported = Stack::start_exporting(Export::Otlp(counter.endpoint())).await?;
    let reader = Reader::new(&exported, Some(&counter)).await?;
    let flat = reader.rounds(duration, Pace::Flat).await?;
    let rest_exported = flat.runs[0].1.clone();
    if let Some(markdown) = markdown {
        markdown.section(
            "The three protocols, flat out",
            &format!(
                "the better of each protocol's two runs, from {CONNECTIONS} connections flat out, every request \
                 sampled and exported"
            ),
            &flat.best,
        )?;
    }
    println!(
        "\n   JSON-RPC requests/s / REST requests/s = {:.2}\n",
        flat.best[1].1.outcome.rate() / flat.best[0].1.outcome.rate()
    );

    println!("== the same reads paced at {PACED_RATE} requests/s: latency below saturation");
    let paced = reader.rounds(duration, Pace::Rate(PACED_RATE)).await?;
    if let Some(markdown) = markdown {
        markdown.section(
            "The three protocols, paced",
            &format!("the better of each protocol's two runs, paced at {PACED_RATE} requests/s"),
            &paced.best,
        )?;
    }
    let p50 = |rows: &[(&str, Measured)], n: usize| rows[n].1.outcome.percentile(50.0);
    let rate = |rows: &[(&str, Measured)], n: usize| rows[n].1.outcome.rate();
    println!(
        "   REST requests/s / gRPC-direct requests/s, flat out: {:.2} (the better run of each; each round: {})",
        rate(&flat.best, 0) / rate(&flat.best, 2),
        flat.runs
            .chunks(3)
            .map(|round| {
                let of = |name: &str| {
                    round
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(f64::NAN, |(_, m)| m.outcome.rate())
                };
                format!("{:.2}", of(Protocol::Rest.name()) / of(Protocol::Grpc.name()))
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\n   REST p50 / gRPC p50 = {:.2} flat out, {:.2} paced\n",
        p50(&flat.best, 0) / p50(&flat.best, 2),
        p50(&paced.best, 0) / p50(&paced.best, 2),
    );
    drop(reader);
    drop(exported);

    // The two modes take turns, so neither gains from its place in the run.
    println!(
        "== the price of export: REST flat out, every span exported, then every span recorded and none exported, three times"
    );
    let mut runs: Vec<(&str, Measured)> = vec![("REST, every span exported", rest_exported)];
    for round in 0..3 {
        if round > 0 {
            let stack = Stack::start_exporting(Export::Otlp(counter.endpoint())).await?;
            let reader = Reader::new(&stack, Some(&counter)).await?;
            runs.push((
                "REST, every span exported",
                reader.read(Protocol::Rest, duration, Pace::Flat).await?,
            ));
        }
        let stack = Stack::start_recording_only().await?;
        let reader = Reader::new(&stack, None).await?;
        runs.push((
            "REST, every span recorded, none exported",
            reader.read(Protocol::Rest, duration, Pace::Flat).await?,
        ));
    }
    println!();
    print_table(&runs);
    if let Some(markdown) = markdown {
        markdown.section(
            "The price of export",
            "REST flat out, every span exported and every span recorded with none exported, the two modes taking \
             turns",
            &runs,
        )?;
    }
    let best = |name: &str| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, m)| m.outcome.rate())
            .collect();
        fastest(&rates)
    };
    println!(
        "\n   exported / recorded only (the fastest run of each): {:.2} of the requests/s\n",
        best("REST, every span exported") / best("REST, every span recorded, none exported")
    );
    Ok(())
}

/// Every run of [`Reader::rounds`], and the better run of each protocol.
struct Rounds {
    runs: Vec<(&'static str, Measured)>,
    /// In the order of [`Protocol::ALL`].
    best: Vec<(&'static str, Measured)>,
}

/// The three ways to read a user.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Rest,
    JsonRpc,
    Grpc,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Rest, Protocol::JsonRpc, Protocol::Grpc];

    fn name(self) -> &'static str {
        match self {
            Protocol::Rest => "REST `GET /v1/users/{id}`",
            Protocol::JsonRpc => "JSON-RPC `user.get`",
            Protocol::Grpc => "gRPC `GetUser`, straight to the user service",
        }
    }
}

/// A protocol run: what the load generator saw, and where the CPU went.
#[derive(Clone)]
struct Measured {
    outcome: Outcome,
    cpu: CpuTimes,
    postgres: Duration,
}

/// Prints rows as a Markdown table.
fn print_table(rows: &[(&str, Measured)]) {
    print!("{}", table(rows));
}

/// Rows as a Markdown table, one line each.
fn table(rows: &[(&str, Measured)]) -> String {
    let mut text = String::from(
        "| read | requests/s | p50 ms | p99 ms | failed | CPU µs per request: api + user | Postgres | span export + receiver | load generator |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, m) in rows {
        let n = m.outcome.latencies_ms.len().max(1) as f64;
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n;
        text += &format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            m.outcome.rate(),
            m.outcome.percentile(50.0),
            m.outcome.percentile(99.0),
            m.outcome.failed,
            per(m.cpu.of("api") + m.cpu.of("user")),
            per(m.postgres),
            per(m.cpu.of("span export") + m.cpu.of("receiver")),
            per(m.cpu.of("load generator")),
        );
    }
    text
}

/// `BENCH_MARKDOWN`: the file the tables are also written to, as
/// docs/performance.md shows them.
struct Markdown {
    path: PathBuf,
    /// When and where the figures were measured, as the docs say it.
    measured: String,
}

impl Markdown {
    /// The file `BENCH_MARKDOWN` names, emptied; `None` when it is unset.
    fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(path) = std::env::var_os("BENCH_MARKDOWN").map(PathBuf::from) else {
            return Ok(None);
        };
        std::fs::File::create(&path)
            .map_err(|error| anyhow::anyhow!("BENCH_MARKDOWN: cannot write {}: {error}", path.display()))?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let measured = format!(
            "Measured {}, on a {}",
            chrono::Utc::now().format("%Y-%m-%d"),
            cpu::machine(&cpuinfo, std::thread::available_parallelism()?.get())
        );
        Ok(Some(Self { path, measured }))
    }

    /// Appends a headed, dated table of `rows`; `what` says what they are.
    fn section(&self, title: &str, what: &str, rows: &[(&str, Measured)]) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        write!(file, "## {title}\n\n{}: {what}.\n\n{}\n", self.measured, table(rows))?;
        Ok(())
    }
}

/// One registered user, read back through each protocol.
struct Reader<'a> {
    stack: &'a Stack,
    /// Where the stack's spans arrive, when they are exported.
    counter: Option<&'a SpanCounter>,
    id: String,
    token: String,
}

impl<'a> Reader<'a> {
    async fn new(stack: &'a Stack, counter: Option<&'a SpanCounter>) -> anyhow::Result<Self> {
        let user = stack.register("reader@example.com", "benchmark password").await;
        let token = stack.login("reader@example.com", "benchmark password").await;
        let id = user["id"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!id.is_empty(), "registering the reader failed: {user}");
        Ok(Self {
            stack,
            counter,
            id,
            token,
        })
    }

    /// Each protocol twice, paced as `pace` says, the second round in the
    /// reverse order; prints every run, then the better run of each (the
    /// higher rate flat out, the lower p50 paced).
    async fn rounds(&self, duration: Duration, pace: Pace) -> anyhow::Result<Rounds> {
        let mut runs = Vec::new();
        let order = Protocol::ALL.iter().chain(Protocol::ALL.iter().rev());
        for &protocol in order {
            runs.push((protocol.name(), self.read(protocol, duration, pace).await?));
        }
        // Higher is better.
        let score = |run: &Measured| match pace {
            Pace::Flat => run.outcome.rate(),
            Pace::Rate(_) => -run.outcome.percentile(50.0),
        };
        let best: Vec<_> = Protocol::ALL
            .iter()
            .map(|protocol| {
                runs.iter()
                    .filter(|(name, _)| *name == protocol.name())
                    .max_by(|a, b| score(&a.1).total_cmp(&score(&b.1)))
                    .expect("two runs")
                    .clone()
            })
            .collect();
        println!();
        print_table(&runs);
        println!("\n   the better run of each:\n");
        print_table(&best);
        Ok(Rounds { runs, best })
    }

    /// Warms up for 2 s, then measures `duration` of `run`, with the CPU
    /// time of every thread of the process and of the Postgres backends.
    /// The spans of the run before are all exported first.
    async fn measure<F, Fut>(&self, duration: Duration, run: F) -> anyhow::Result<Measured>
    where
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Outcome>>,
    {
        if let Some(counter) = self.counter {
            counter
                .wait_quiet(Duration::from_millis(500), Duration::from_secs(30))
                .await;
        }
        run(Duration::from_secs(2)).await?;
        let backends = self.postgres_backends().await?;
        let (cpu, postgres) = (CpuTimes::now()?, process_cpu(&backends));
        let outcome = run(duration).await?;
        let cpu = CpuTimes::now()?.since(&cpu);
        let postgres = process_cpu(&backends).saturating_sub(postgres);
        Ok(Measured { outcome, cpu, postgres })
    }

    /// The server processes of the stack's database (the services' pools).
    async fn postgres_backends(&self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(self.stack.db.pool())
        .await?;
        Ok(pids.into_iter().map(|pid| pid as u32).collect())
    }

    async fn read(&self, protocol: Protocol, duration: Duration, pace: Pace) -> anyhow::Result<Measured> {
        match protocol {
            Protocol::Rest => self.rest(duration, pace).await,
            Protocol::JsonRpc => self.json_rpc(duration, pace).await,
            Protocol::Grpc => self.grpc(duration, pace).await,
        }
    }

    async fn rest(&self, duration: Duration, pace: Pace) -> anyhow::Result<Measured> {
        let path = format!("/v1/users/{}", self.id);
        let request = load::request("GET", &path, self.stack.api.addr, &self.token, None);
        self.http(request, |status, _| status == 200, duration, pace).await
    }

    async fn json_rpc(&self, duration: Duration, pace: Pace) -> anyhow::Result<Measured> {
        let body = json!({ "jsonrpc": "2.0", "method": "user.get", "params": { "id": self.id }, "id": 1 }).to_string();
        let request = load::request("POST", "/rpc", self.stack.api.addr, &self.token, Some(&body));
        // An error is an answer too: only a result counts.
        let answered = |status, body: &[u8]| status == 200 && body.starts_with(br#"{"jsonrpc":"2.0","result""#);
        self.http(request, answered, duration, pace).await
    }

    /// `request` to the API over its own keep-alive connections; `answered`
    /// tells an expected answer by its status and body.
    async fn http(
        &self,
        request: Vec<u8>,
        answered: fn(u16, &[u8]) -> bool,
        duration: Duration,
        pace: Pace,
    ) -> anyhow::Result<Measured> {
        let addr = self.stack.api.addr;
        let request = Arc::new(request);
        self.measure(duration, |duration| {
            let request = request.clone();
            load::closed_loop(
                CONNECTIONS,
                duration,
                pace,
                move |_| Http1::connect(addr),
                move |mut connection: Http1| {
                    let request = request.clone();
                    async move {
                        let answer = connection
                            .send(&request)
                            .await
                            .map(|status| answered(status, connection.body()));
                        (connection, answer)
                    }
                },
            )
        })
        .await
    }

    /// Straight to the user service, over 4 HTTP/2 connections.
    async fn grpc(&self, duration: Duration, pace: Pace) -> anyhow::Result<Measured> {
        let url = format!("http://{}", self.stack.user.addr);
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                tonic::transport::Endpoint::from_shared(url.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        let id = self.id.clone();
        self.measure(duration, |duration| {
            let (channels, id) = (channels.clone(), id.clone());
            load::closed_loop(
                CONNECTIONS,
                duration,
                pace,
                move |n| {
                    let channel = channels[n % channels.len()].clone();
                    async move { Ok(UserServiceClient::new(channel)) }
                },
                move |mut client: UserServiceClient<tonic::transport::Channel>| {
                    let id = id.clone();
                    async move {
                        let answer = client
                            .get_user(GetUserRequest { id })
                            .await
                            .map(|response| response.into_inner().user.is_some())
                            .map_err(anyhow::Error::from);
                        (client, answer)
                    }
                },
            )
        })
        .await
    }
}

/// The trace every update must leave: `(service, name, kind, parent's index)`.
/// The outbox relay's send continues the user service's span, whose context
/// the outbox row kept.
const UPDATE_CHAIN: [(&str, &str, SpanKind, Option<usize>); 8] = [
    ("api", "PATCH /v1/users/{id}", SpanKind::Server, None),
    ("api", "user.v1.UserService/UpdateUser", SpanKind::Client, Some(0)),
    ("user", "user.v1.UserService/UpdateUser", SpanKind::Server, Some(1)),
    ("user", "UPDATE users", SpanKind::Client, Some(2)),
    ("user", "INSERT outbox", SpanKind::Client, Some(2)),
    ("user", "send <topic>", SpanKind::Producer, Some(2)),
    ("consumer", "process <topic>", SpanKind::Consumer, Some(5)),
    ("consumer", "INSERT user_events", SpanKind::Client, Some(6)),
];

/// Whether `spans` (one trace, as the OTLP receiver got it) hold the whole
/// update chain, each span under the right parent. A hop may be there more
/// than once: an event the relay sent again (its first acknowledgement lost
/// with a broker) has a `send` span per attempt, and the consumer's span
/// hangs under the attempt it read; any of them completes the chain.
fn is_whole_update_chain(spans: &[SpanRecord], topic: &str) -> bool {
    // Any span beyond the chain's (the role lookup an authenticated request
    // makes when its cached answer has expired, a second send) must hang
    // under a span of the same trace too.
    let rooted = spans.iter().all(|s| {
        s.parent_span_id
            .as_deref()
            .is_none_or(|parent| spans.iter().any(|p| p.span_id == parent))
    });
    if !rooted {
        return false;
    }
    // For each hop of the chain, the spans that are it: of its service, name
    // and kind, under one of the spans that are its parent hop.
    let mut hops: Vec<Vec<&str>> = Vec::with_capacity(UPDATE_CHAIN.len());
    for (service, name, kind, parent) in &UPDATE_CHAIN {
        let name = name.replace("<topic>", topic);
        let these: Vec<&str> = spans
            .iter()
            .filter(|s| s.service == *service && s.name == name && s.kind == *kind)
            .filter(|s| match parent {
                None => s.parent_span_id.is_none(),
                Some(parent) => s
                    .parent_span_id
                    .as_deref()
                    .is_some_and(|id| hops[*parent].contains(&id)),
            })
            .map(|s| s.span_id.as_str())
            .collect();
        if these.is_empty() {
            return false;
        }
        hops.push(these);
    }
    true
}

/// Lines the services write for no request: the consumer's Kafka client and
/// its offset commits, as `(target, message)` (`None`: any message).
const BACKGROUND: &[(&str, Option<&str>)] = &[
    ("librdkafka", None),
    ("callchain_consumer::broker", None),
    ("callchain_consumer::pipeline", Some("offsets committed")),
];

fn is_background(line: &serde_json::Value) -> bool {
    let target = line["target"].as_str().unwrap_or_default();
    let message = line["message"].as_str().unwrap_or_default();
    BACKGROUND
        .iter()
        .any(|(t, m)| *t == target && m.is_none_or(|m| m == message))
}

/// Updates at `rate` for `seconds`, every request sampled; then the
/// integrity of their traces, at the OTLP receiver and in the logs.
async fn integrity(rate: u64, seconds: u64) -> anyhow::Result<()> {
    println!("== trace integrity: PATCH /v1/users/{{id}} at {rate}/s for {seconds} s, every request sampled");
    let kill = kill_broker::KillBroker::from_env().await?;
    let stack = match &kill {
        Some(kill) => Stack::start_on(kill.kafka().await?).await?,
        None => Stack::start().await?,
    };
    let admin = stack.admin_token().await;
    let ids = load_users(&stack, "integrity").await;
    // Everything before the load is done and logged: the load's logs start here.
    stack.wait_until_published(Duration::from_secs(60)).await?;
    stack.kafka.wait_until_consumed(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let services = [&stack.api, &stack.user, &stack.consumer];
    let offsets: Vec<usize> = services.iter().map(|s| s.logs.text().len()).collect();

    let total = rate * seconds;
    let killer = kill.map(|kill| kill.midway(Duration::from_secs(seconds) / 2));
    let (updates, elapsed) = steady_updates(&stack, &admin, &ids, (rate, seconds), "i").await?;
    // The cluster, its node dead, lives until the run's end.
    let _cluster = match killer {
        Some(killer) => {
            let (cluster, node) = killer.await??;
            println!("   on a three-node cluster, node {node} killed (kill -9) halfway and left dead");
            Some(cluster)
        }
        None => None,
    };
    let traces: Vec<String> = updates
        .iter()
        .filter_map(|update| update.traceparent.as_deref())
        .filter_map(|header| callchain_tracechain::parse_trace_id(header).ok())
        .collect();
    println!(
        "   {} of {total} answered 200 in {elapsed:.1} s ({:.0}/s)",
        traces.len(),
        traces.len() as f64 / elapsed
    );

    // Wait for the relay and the consumer, for the last spans' records, then
    // for export.
    stack.wait_until_published(Duration::from_secs(120)).await?;
    stack.kafka.wait_until_consumed(Duration::from_secs(120)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected_records = UPDATE_CHAIN.len() * traces.len();
    let records_written = || {
        services
            .iter()
            .zip(&offsets)
            .map(|(s, &from)| s.logs.text()[from..].matches("\"target\":\"callchain::span\"").count())
            .sum::<usize>()
    };
    while records_written() < expected_records && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.flush().await;
    let wanted: std::collections::HashSet<&str> = traces.iter().map(String::as_str).collect();
    let received_of_requests =
        |spans: &[SpanRecord]| spans.iter().filter(|s| wanted.contains(s.trace_id.as_str())).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received_of_requests(&stack.otlp.spans()) < records_written() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // At the receiver: whole traces, orphans.
    let mut received: HashMap<String, Vec<SpanRecord>> = HashMap::new();
    for span in stack.otlp.spans() {
        if wanted.contains(span.trace_id.as_str()) {
            received.entry(span.trace_id.clone()).or_default().push(span);
        }
    }
    let complete = traces
        .iter()
        .filter(|id| {
            received
                .get(*id)
                .is_some_and(|spans| is_whole_update_chain(spans, &stack.kafka.topic))
        })
        .count();
    let orphans: usize = received
        .values()
        .map(|spans| {
            spans
                .iter()
                .filter(|s| {
                    s.parent_span_id
                        .as_deref()
                        .is_some_and(|parent| !spans.iter().any(|p| p.span_id == parent))
                })
                .count()
        })
        .sum();
    let received_spans: usize = received.values().map(Vec::len).sum();

    // In the logs: the span records (every span that ended), the lines.
    let logs: Vec<(&str, String)> = services
        .iter()
        .zip(&offsets)
        .map(|(s, &from)| (s.name, s.logs.text()[from..].to_owned()))
        .collect();
    let all: String = logs.iter().map(|(_, text)| text.as_str()).collect();
    let read = callchain_tracechain::Logs::parse(&all);
    let ended = read
        .spans
        .iter()
        .filter(|s| wanted.contains(s.trace_id.as_str()))
        .count();
    let mut lines = 0usize;
    let mut traced = 0usize;
    let mut background = 0usize;
    let mut sdk_drop_warnings = 0usize;
    let mut untraced: BTreeMap<String, usize> = BTreeMap::new();
    for line in all.lines() {
        let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = line["target"].as_str().unwrap_or_default();
        if target == "callchain::span" {
            continue;
        }
        if target.starts_with("opentelemetry") && line.to_string().contains("BatchSpanProcessor") {
            sdk_drop_warnings += 1;
        }
        if is_background(&line) {
            background += 1;
            continue;
        }
        lines += 1;
        if line["trace_id"].as_str().is_some_and(|id| wanted.contains(id)) {
            traced += 1;
        } else {
            let key = format!("{target}: {}", line["message"].as_str().unwrap_or_default());
            *untraced.entry(key).or_default() += 1;
        }
    }
    let summary = callchain_tracechain::Traces::new(read).check_all();

    let share = |part: usize, whole: usize| 100.0 * part as f64 / whole.max(1) as f64;
    println!(
        "   complete traces at the receiver (the 8 spans of the chain, and every span, under its parent): {complete} / {total} requests ({:.2}%)",
        share(complete, total as usize)
    );
    println!("   orphan spans (a parent that never arrived): {orphans}");
    println!(
        "   spans dropped by the exporter: {} ({ended} spans ended, by their records in the logs; {received_spans} received; SDK drop warnings: {sdk_drop_warnings})",
        ended.saturating_sub(received_spans)
    );
    println!(
        "   in-request log lines carrying their trace id: {traced} / {lines} ({:.2}%); background lines left out: {background}",
        share(traced, lines)
    );
    for (line, count) in untraced.iter().take(5) {
        println!("     without it: {count} × {line}");
    }
    println!(
        "   tracechain --check-all over the same logs: {} of {} traces complete, {} orphan spans",
        summary.complete, summary.traces, summary.orphan_spans
    );
    for incomplete in summary.incomplete.iter().take(3) {
        println!("     {}: {}", incomplete.trace_id, incomplete.gaps[0].message);
    }
    if let Ok(folder) = std::env::var("BENCH_INTEGRITY_LOGS") {
        std::fs::create_dir_all(&folder)?;
        for (service, text) in &logs {
            std::fs::write(std::path::Path::new(&folder).join(format!("{service}.log")), text)?;
        }
        println!("   the run's logs are in {folder}");
    }
    println!();
    Ok(())
}
