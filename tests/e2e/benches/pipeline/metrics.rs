//! The price of metrics (`BENCH_ONLY=metrics`): the consumer's events/s and
//! REST's requests/s with metrics recorded and exported against none
//! (`OTEL_METRICS_EXPORTER=none`), every span exported in both, the two
//! modes taking turns three times, the fastest run of each compared. The
//! metrics go to the span counter's endpoint every
//! `OTEL_METRIC_EXPORT_INTERVAL` (its default), as a deployment's would.

use std::time::{Duration, Instant};

use callchain_e2e::stack::{Stack, spawn_consumer};
use callchain_telemetry::{Export, metrics::MetricsExporter};
use callchain_testkit::service::Telemetry;
use callchain_testkit::{kafka::Kafka, otlp::SpanCounter, postgres::TestDatabase};

use super::{Pace, Protocol, Reader, fastest, feed, wait_for_rows, writing_rate};

/// What each mode is called in the output.
fn mode(metrics: MetricsExporter) -> &'static str {
    match metrics {
        MetricsExporter::Otlp => "metrics on",
        MetricsExporter::None => "metrics off",
    }
}

/// Consumer and REST, each with metrics on and off, three times each.
pub async fn price_of_metrics(events: u64, seconds: u64) -> anyhow::Result<()> {
    println!(
        "== the price of metrics: the consumer ({events} events) and REST flat out ({seconds} s), every span \
         exported, metrics on and off taking turns, three times each"
    );
    let counter = SpanCounter::start()?;
    let modes = [MetricsExporter::Otlp, MetricsExporter::None];

    consumer_rate(&counter, events / 5, MetricsExporter::Otlp).await?; // warm-up, not counted
    let mut consumer: Vec<(MetricsExporter, f64)> = Vec::new();
    for _ in 0..3 {
        for metrics in modes {
            consumer.push((metrics, consumer_rate(&counter, events, metrics).await?));
        }
    }

    let duration = Duration::from_secs(seconds);
    let mut rest: Vec<(MetricsExporter, f64)> = Vec::new();
    for _ in 0..3 {
        for metrics in modes {
            let telemetry = Telemetry {
                export: Export::Otlp(counter.endpoint()),
                metrics,
            };
            let stack = Stack::start_exporting(telemetry).await?;
            let reader = Reader::new(&stack, Some(&counter)).await?;
            let rate = reader.read(Protocol::Rest, duration, Pace::Flat).await?.outcome.rate();
            println!("   REST, {}: {rate:.0} requests/s", mode(metrics));
            rest.push((metrics, rate));
        }
    }

    println!("   metric exports received in all: {}", counter.metric_exports());
    for (what, unit, runs) in [("consumer", "events/s", &consumer), ("REST", "requests/s", &rest)] {
        let of = |metrics| {
            runs.iter()
                .filter(|(m, _)| *m == metrics)
                .map(|(_, rate)| *rate)
                .collect::<Vec<_>>()
        };
        let figures = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        let (on, off) = (of(MetricsExporter::Otlp), of(MetricsExporter::None));
        println!(
            "   {what} {unit}, metrics on: {}; off: {}; on / off (the fastest of each): {:.2}",
            figures(&on),
            figures(&off),
            fastest(&on) / fastest(&off)
        );
    }
    println!();
    Ok(())
}

/// Feeds `count` events into a fresh topic, then times a consumer writing
/// them with metrics as `metrics` says; its events/s while writing.
async fn consumer_rate(counter: &SpanCounter, count: u64, metrics: MetricsExporter) -> anyhow::Result<f64> {
    let db = TestDatabase::create().await?;
    let kafka = Kafka::shared().await?;
    let fed = feed(&kafka, count).await?;
    let telemetry = Telemetry {
        export: Export::Otlp(counter.endpoint()),
        metrics,
    };
    let mut consumer = spawn_consumer(&db, &kafka, telemetry).await?;
    wait_for_rows(&db, count, &fed, Instant::now(), false).await?;
    let (rate, _) = writing_rate(&db, count).await?;
    println!("   consumer, {}: {rate:.0} events/s while writing", mode(metrics));
    consumer.stop().await?;
    // The spans of this run are exported before the next run starts.
    counter
        .wait_quiet(Duration::from_millis(500), Duration::from_secs(60))
        .await;
    Ok(rate)
}
