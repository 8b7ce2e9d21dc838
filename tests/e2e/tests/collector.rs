//! The OpenTelemetry Collector under a burst: when the consumer drains a
//! backlog, its spans reach the collector far faster than any steady load
//! sends them, in back-to-back exports. Every span the collector accepts
//! must reach Jaeger: its own counts say none was refused or failed to send,
//! and sampled traces of the burst are read back whole from Jaeger.
//!
//! The burst is the consumer's own spans for 50,000 events (a `process
//! <topic>` span with its `event stored` event and its link, and an `INSERT
//! user_events` span under it), sent through the services' OTLP exporter in
//! large exports, several at once: how a drain looks to the collector,
//! without waiting for Kafka and Postgres to go as fast.
//!
//! It runs against the run's collector and Jaeger (`make test`, or
//! `scripts/test-parts.sh`), which run `observability/`'s configs: this is
//! the test of those configs' batch sizes and limits.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use callchain_e2e::{
    jaeger::spans_from_jaeger,
    stack::{COLLECTOR_VAR, JAEGER_VAR},
};
use callchain_telemetry::otlp::OtlpExporter;
use callchain_testkit::spans::SpanRecord;
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use serde_json::Value;

/// The variable that names the run's collector's own metrics (Prometheus
/// text, `http://host:port/metrics`).
const METRICS_VAR: &str = "CALLCHAIN_TEST_OTELCOL_METRICS";

/// Events in the backlog: as many as put 100,000 spans on the collector at
/// once (a `process <topic>` and an `INSERT user_events` span per event).
const BACKLOG: usize = 50_000;

/// Events whose spans go in one export: 4,096 spans, about 2.5 MB, within
/// the collector's 4 MiB receive limit.
const EVENTS_PER_EXPORT: usize = 2_048;

/// Exports in flight at once.
const CONCURRENT_EXPORTS: usize = 4;

/// The consumer's statement, as its `INSERT user_events` span carries it.
const INSERT_EVENTS: &str = "INSERT INTO user_events \
     (event_id, event_type, user_id, occurred_at, schema_version, payload, trace_id, kafka_partition, kafka_offset) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::integer[], \
     $6::text[]::jsonb[], $7::text[], $8::integer[], $9::bigint[]) \
     ON CONFLICT (event_id) DO NOTHING";

/// Of the backlog's traces, those read back from Jaeger: every this many.
const SAMPLE_EVERY: usize = 10_000;

/// The collector's own counts of spans, summed over its components.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CollectorCounts {
    /// `otelcol_receiver_accepted_spans`: taken in from the services.
    accepted: u64,
    /// `otelcol_receiver_refused_spans`: turned away (the memory limiter).
    refused: u64,
    /// `otelcol_exporter_sent_spans`: delivered to Jaeger.
    sent: u64,
    /// `otelcol_exporter_send_failed_spans`: given up on, never delivered.
    send_failed: u64,
    /// `otelcol_exporter_enqueue_failed_spans`: refused by a full queue.
    enqueue_failed: u64,
}

impl CollectorCounts {
    /// The counts now, read from the collector's metrics at `url`.
    async fn read(http: &reqwest::Client, url: &str) -> Self {
        let text = http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("cannot read the collector's metrics at {url}: {error}"))
            .text()
            .await
            .unwrap();
        let metrics = metric_sums(&text);
        let count = |name: &str| {
            // The Prometheus exporter may add `_total` to a counter's name.
            metrics
                .get(name)
                .or_else(|| metrics.get(&format!("{name}_total")))
                .copied()
                .unwrap_or(0.0) as u64
        };
        Self {
            accepted: count("otelcol_receiver_accepted_spans"),
            refused: count("otelcol_receiver_refused_spans"),
            sent: count("otelcol_exporter_sent_spans"),
            send_failed: count("otelcol_exporter_send_failed_spans"),
            enqueue_failed: count("otelcol_exporter_enqueue_failed_spans"),
        }
    }

    /// What happened between `earlier` and these counts.
    fn since(self, earlier: Self) -> Self {
        Self {
            accepted: self.accepted - earlier.accepted,
            refused: self.refused - earlier.refused,
            sent: self.sent - earlier.sent,
            send_failed: self.send_failed - earlier.send_failed,
            enqueue_failed: self.enqueue_failed - earlier.enqueue_failed,
        }
    }

    /// Whether every accepted span has been dealt with, sent or not.
    fn settled(self) -> bool {
        self.sent + self.send_failed + self.enqueue_failed >= self.accepted
    }
}

/// Each metric of a Prometheus text exposition, summed over its label sets.
fn metric_sums(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(value) = value.parse::<f64>() {
            *sums.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

fn required_var(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "no {what} for the tests ({name} is unset): run the tests with `make test`, or start the parts with \
             `scripts/test-parts.sh up` and export what it prints"
        )
    })
}

/// The consumer's two spans of the event at `offset` in a trace of its own
/// (`trace_id`), as the consumer ends them: the `INSERT user_events` span,
/// then the `process <topic>` span it is under.
fn consumer_spans(trace_id: TraceId, offset: i64, topic: &str) -> [SpanData; 2] {
    let scope = InstrumentationScope::builder("consumer").build();
    let context = |span: u64, remote: bool| {
        SpanContext::new(
            trace_id,
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::NONE,
        )
    };
    let producer = context(1, true);
    let (process, insert) = (context(2, false), context(3, false));
    let (start, end) = (SystemTime::now(), SystemTime::now() + Duration::from_millis(3));
    let (user_id, event_id) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());

    let mut events = SpanEvents::default();
    events.events.push(Event::new(
        "event stored",
        end,
        vec![
            KeyValue::new("level", "INFO"),
            KeyValue::new("target", "callchain_consumer::pipeline"),
            KeyValue::new("event_id", event_id),
            KeyValue::new("event_type", "user.updated"),
            KeyValue::new("user_id", user_id.clone()),
            KeyValue::new("partition", 0_i64),
            KeyValue::new("offset", offset),
        ],
        0,
    ));
    let mut links = SpanLinks::default();
    links.links.push(Link::with_context(producer.clone()));
    let process_span = SpanData {
        span_context: process.clone(),
        parent_span_id: producer.span_id(),
        parent_span_is_remote: true,
        span_kind: SpanKind::Consumer,
        name: Cow::Owned(format!("process {topic}")),
        start_time: start,
        end_time: end,
        attributes: vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.consumer.group.name", format!("{topic}-writer")),
            KeyValue::new("messaging.destination.partition.id", "0"),
            KeyValue::new("messaging.kafka.offset", offset),
            KeyValue::new("messaging.kafka.message.key", user_id),
        ],
        dropped_attributes_count: 0,
        events,
        links,
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    let insert_span = SpanData {
        span_context: insert,
        parent_span_id: process.span_id(),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Borrowed("INSERT user_events"),
        start_time: start,
        end_time: end,
        attributes: vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", "INSERT"),
            KeyValue::new("db.collection.name", "user_events"),
            KeyValue::new("db.query.text", INSERT_EVENTS),
            KeyValue::new("db.operation.batch.size", 500_i64),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope,
    };
    [insert_span, process_span]
}

/// Sends the consumer's spans of `trace_ids` (one event each) to the
/// collector at `endpoint` through the services' OTLP exporter, in exports
/// of [`EVENTS_PER_EXPORT`] events, [`CONCURRENT_EXPORTS`] at once; panics
/// unless the collector accepts every export.
async fn burst(endpoint: &str, trace_ids: &[TraceId], topic: &str) {
    let mut exporter = OtlpExporter::new(endpoint).expect("an OTLP endpoint");
    exporter.set_resource(&Resource::builder().with_service_name("consumer").build());
    let exporter = Arc::new(exporter);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_EXPORTS));
    let mut exports = Vec::new();
    for (chunk, ids) in trace_ids.chunks(EVENTS_PER_EXPORT).enumerate() {
        let batch: Vec<SpanData> = ids
            .iter()
            .enumerate()
            .flat_map(|(n, &trace_id)| consumer_spans(trace_id, (chunk * EVENTS_PER_EXPORT + n) as i64, topic))
            .collect();
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let exporter = exporter.clone();
        exports.push(tokio::spawn(async move {
            let result = exporter.export(batch).await;
            drop(permit);
            result
        }));
    }
    for export in exports {
        if let Err(error) = export.await.unwrap() {
            panic!("the collector did not take an export of the burst: {error}");
        }
    }
}

/// The spans of `trace_id` in Jaeger once both of the consumer's spans of
/// the event are there, or what there is after `patience`.
async fn trace_from_jaeger(
    http: &reqwest::Client,
    jaeger: &str,
    trace_id: &str,
    patience: Duration,
) -> Vec<SpanRecord> {
    let deadline = Instant::now() + patience;
    loop {
        let spans = match http.get(format!("{jaeger}/api/traces/{trace_id}")).send().await {
            Ok(answer) if answer.status().is_success() => {
                spans_from_jaeger(&answer.json::<Value>().await.unwrap()).expect("Jaeger's trace JSON")
            }
            _ => Vec::new(),
        };
        if spans.len() >= 2 || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_spans_like_a_backlog_drain_reaches_jaeger_whole_through_the_collector() {
    let collector = required_var(COLLECTOR_VAR, "OpenTelemetry Collector");
    let jaeger = required_var(JAEGER_VAR, "Jaeger");
    let metrics = required_var(METRICS_VAR, "collector metrics endpoint");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let topic = format!("user-events-{}", uuid::Uuid::new_v4().simple());
    let trace_ids: Vec<TraceId> = (0..BACKLOG)
        .map(|_| TraceId::from(uuid::Uuid::new_v4().as_u128()))
        .collect();

    let before = CollectorCounts::read(&http, &metrics).await;
    burst(&collector, &trace_ids, &topic).await;

    // The collector batches and retries: wait until every span it accepted
    // has been sent or given up on.
    let deadline = Instant::now() + Duration::from_secs(180);
    let counts = loop {
        let counts = CollectorCounts::read(&http, &metrics).await.since(before);
        if (counts.accepted as usize >= 2 * BACKLOG && counts.settled()) || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        counts.accepted as usize >= 2 * BACKLOG,
        "the collector accepted {} spans of the burst, not {}: {counts:?}",
        counts.accepted,
        2 * BACKLOG
    );
    assert_eq!(
        counts.refused, 0,
        "the collector refused spans of the burst: {counts:?}"
    );
    assert_eq!(
        counts.send_failed, 0,
        "the collector failed to send spans of the burst to Jaeger: {counts:?}"
    );
    assert_eq!(
        counts.enqueue_failed, 0,
        "the collector's export queue turned spans of the burst away: {counts:?}"
    );
    assert_eq!(
        counts.sent, counts.accepted,
        "the collector sent Jaeger fewer spans than it accepted: {counts:?}"
    );

    let process = format!("process {topic}");
    let mut broken = Vec::new();
    for trace_id in trace_ids.iter().step_by(SAMPLE_EVERY) {
        let spans = trace_from_jaeger(&http, &jaeger, &trace_id.to_string(), Duration::from_secs(30)).await;
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
        if !(names.contains(&process.as_str()) && names.contains(&"INSERT user_events")) {
            broken.push(format!("{trace_id}: {names:?}"));
        }
    }
    assert!(
        broken.is_empty(),
        "traces of the burst not whole in Jaeger:\n{}",
        broken.join("\n")
    );
}
