//! Scenario 13: two user-service replicas, each publishing some of the
//! outbox's shards; one `kill -9`ed mid-stream. Postgres frees the dead
//! relay's shard locks with its connection, and the other relay takes them at
//! its next claim: how long that took is printed. Nothing is lost, and every
//! user's events are stored in order without a hole (the audit's checks).

use std::time::{Duration, Instant};

use callchain_testkit::process::ServiceProcess;

use crate::harness::{Parts, Row, Settings, after_the_first_replica_killed, start_load, warm_up};

/// What the relay logs when the shards it publishes change.
const SHARDS_CHANGED: &str = "the outbox relay publishes these shards";
/// `RELAY_SHARDS`' default, which the replicas run with.
const SHARDS: u64 = 8;
/// How long the survivor may take: the relay's claim interval (1 s) and a
/// round under way, with room for a loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

/// How many shards `process` said it publishes last, from the `held` of its
/// last [`SHARDS_CHANGED`] line after `skip` lines; `None` if it said none.
fn held(process: &ServiceProcess, skip: usize) -> Option<u64> {
    process
        .log_lines()
        .iter()
        .skip(skip)
        .filter(|line| line["message"] == SHARDS_CHANGED)
        .filter_map(|line| line["held"].as_u64())
        .next_back()
}

/// 13: one of two user-service replicas `kill -9`ed while both publish
/// shards of the outbox: the other takes all of them, nothing is lost, order
/// is kept.
pub async fn relay_shards_taken_over(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let (mut services, load_users, load) = start_load(settings, &parts, 2, &parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    // Both replicas publish a share of the shards before the kill.
    let shared_out = Instant::now();
    let shares = loop {
        let shares: Vec<u64> = services.users.iter().map(|(_, p)| held(p, 0).unwrap_or(0)).collect();
        if shares.iter().all(|&n| n > 0) && shares.iter().sum::<u64>() == SHARDS {
            break shares;
        }
        anyhow::ensure!(
            shared_out.elapsed() < TAKEOVER_BOUND,
            "the two relays do not share the {SHARDS} shards (they hold {shares:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("    before the kill the two relays hold {shares:?} of the {SHARDS} shards");
    let survivor_lines = services.users[1].1.log_lines().len();
    let killed = load.now();
    let killed_at = Instant::now();
    services.users[0].1.kill();
    let dead = load.now();
    let mut took = None;
    while killed_at.elapsed() < TAKEOVER_BOUND {
        if held(&services.users[1].1, survivor_lines) == Some(SHARDS) {
            took = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match took {
        Some(took) => eprintln!("    the surviving relay took the dead one's shards {took:.1?} after the kill -9"),
        None => eprintln!("    the surviving relay did not take all {SHARDS} shards within {TAKEOVER_BOUND:?}"),
    }
    row.must(
        took.is_some(),
        format!(
            "the surviving relay holds all {SHARDS} shards {} after the kill (bound {TAKEOVER_BOUND:?})",
            took.map_or_else(|| "never".to_owned(), |t| format!("{:.1} s", t.as_secs_f64()))
        ),
    );
    after_the_first_replica_killed(settings, row, &parts, services, &load_users, load, (killed, dead)).await
}
