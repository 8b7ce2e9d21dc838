//! The consumer and the REST read once more with the span queue the stack
//! ships (`callchain_telemetry::SETTINGS`' defaults, which `make dev`,
//! `make up` and the Helm chart leave unset), rather than the bench's own:
//! how many spans a second the full queue drops at the bench's rates.

use std::time::Duration;

use callchain_e2e::{load::Pace, stack::Stack};
use callchain_telemetry::{Export, SpanBatch};
use callchain_testkit::{otlp::SpanCounter, service::set_span_batch};

use super::{Protocol, Reader};

/// Runs both with the shipped defaults, then puts `bench` back.
pub async fn defaults(events: u64, seconds: u64, bench: SpanBatch) -> anyhow::Result<()> {
    let shipped = SpanBatch::from_env(&callchain_runtime::env::Env::default())?;
    println!(
        "== the shipped span queue: {} spans, batches of {}, every {} ms (the bench's own: {} spans)",
        shipped.max_queue_size,
        shipped.max_export_batch_size,
        shipped.scheduled_delay.as_millis(),
        bench.max_queue_size
    );
    set_span_batch(None);
    let result = async {
        super::consumer_throughput(events, true, "the shipped span queue").await?;
        rest(seconds).await
    }
    .await;
    set_span_batch(Some(bench));
    result
}

/// REST flat out with the shipped queue; the spans it ended (their records
/// in the logs) against those received, per second of the run.
async fn rest(seconds: u64) -> anyhow::Result<()> {
    println!("== REST flat out, {seconds} s, the shipped span queue");
    let counter = SpanCounter::start()?;
    let stack = Stack::start_exporting(Export::Otlp(counter.endpoint())).await?;
    let reader = Reader::new(&stack, Some(&counter)).await?;
    let started = std::time::Instant::now();
    let measured = reader
        .read(Protocol::Rest, Duration::from_secs(seconds), Pace::Flat)
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    stack.flush().await;
    counter
        .wait_quiet(Duration::from_millis(500), Duration::from_secs(30))
        .await;
    let ended: usize = [&stack.api, &stack.user]
        .iter()
        .map(|service| service.logs.text().matches("\"target\":\"callchain::span\"").count())
        .sum();
    let dropped = ended.saturating_sub(counter.count());
    println!(
        "   {:.0} requests/s; spans ended {ended}, received {}, dropped {dropped}: {:.0} dropped/s\n",
        measured.outcome.rate(),
        counter.count(),
        dropped as f64 / elapsed
    );
    Ok(())
}
