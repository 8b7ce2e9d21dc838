//! Scenario 8: the consumer `kill -9`ed and started again under its static
//! member id, then, 15 s later, the broker restarted. The broker may then
//! take the restarted consumer for an impostor of its own instance id and
//! fence it, which librdkafka treats as fatal: the consumer must replace
//! its client and consume again by itself, and its `/readyz` must say ready
//! only while it consumes.

use std::time::{Duration, Instant};

use crate::harness::{
    Parts, RECOVERY_BOUND, Row, Settings, all_alive, audit, caught_up, start_load, updated_rows, warm_up,
};

/// How long the consumer runs between its crash and the broker's restart,
/// as in the report that found the fault.
const BEFORE_BROKER_RESTART: Duration = Duration::from_secs(15);

/// The consumer's `/readyz` grace (how long it may say ready without
/// progress while messages wait), plus the sampling's own slack.
const READY_GRACE: Duration = Duration::from_secs(13);

/// How often `/readyz` and the rows are sampled after the broker restart.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One look at the consumer after the broker restart.
struct Sample {
    at: Instant,
    ready: bool,
    rows: usize,
    acknowledged: usize,
}

pub async fn consumer_kill_then_broker_restart(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let mut parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    services.consumer.1.kill();
    services.consumer.1 = services.consumer.0.start().await?;
    tokio::time::sleep(BEFORE_BROKER_RESTART).await;
    tokio::task::block_in_place(|| parts.kafka.broker().restart())?;
    let restarted = Instant::now();

    let readyz = format!("http://{}/readyz", services.consumer.0.addr);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let mut samples = Vec::new();
    while restarted.elapsed() < settings.secs(20, 10) {
        let ready = http
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|answer| answer.status().is_success());
        samples.push(Sample {
            at: Instant::now(),
            ready,
            rows: updated_rows(&parts.db).await.unwrap_or(0),
            acknowledged: load.acknowledged(),
        });
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    // Back at the head without a hand: every change acknowledged by now written.
    let target = load.acknowledged();
    let back = caught_up(&parts.db, target, RECOVERY_BOUND * 3).await;
    // Recovered: the first look at which rows had grown since the restart.
    if let Some(first) = samples.first()
        && let Some(writing) = samples.iter().find(|sample| sample.rows > first.rows)
    {
        row.recovered(writing.at - restarted);
    }
    let ready_at_the_end = http
        .get(&readyz)
        .send()
        .await
        .is_ok_and(|answer| answer.status().is_success());
    let answers = load.stop().await;
    audit(row, &parts, &load_users, &answers).await?;

    let fenced = services
        .consumer
        .1
        .messages()
        .iter()
        .any(|m| m.starts_with("the Kafka client failed"));
    eprintln!(
        "    the restarted consumer {}",
        if fenced {
            "was fenced and replaced its client"
        } else {
            "was not fenced this time"
        }
    );
    row.must(
        back.is_some(),
        format!("the consumer wrote every change acknowledged by {target} by itself"),
    );
    let stale = longest_ready_without_progress(&samples);
    row.must(
        stale <= READY_GRACE,
        format!("/readyz said ready while changes waited and none was written for at most {READY_GRACE:?} (longest {stale:.1?})"),
    );
    row.must(
        ready_at_the_end,
        "/readyz says ready once the consumer is back at the head",
    );
    all_alive(row, &mut services);
    Ok(())
}

/// The longest stretch of samples in which `/readyz` said ready, changes
/// were acknowledged and not yet written, and the rows did not grow.
fn longest_ready_without_progress(samples: &[Sample]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<&Sample> = None;
    for sample in samples {
        let stuck = sample.ready && sample.acknowledged > sample.rows;
        match since {
            Some(first) if stuck && sample.rows == first.rows => longest = longest.max(sample.at - first.at),
            _ if stuck => since = Some(sample),
            _ => since = None,
        }
    }
    longest
}
