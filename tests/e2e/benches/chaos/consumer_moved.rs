//! Scenario 12: one of three consumers in a group `kill -9`ed and left
//! dead: its partitions move to the other two (once the broker gives up on
//! its session), and the other two never stop consuming meanwhile (the
//! cooperative-sticky assignor takes nothing from them).

use std::time::{Duration, Instant};

use crate::{
    cluster::{CONSUMERS, ClusterParts, Fleet, NODES, events_written, held_partitions},
    harness::{Row, Settings, audit, start_load, warm_up},
};

/// How soon after the kill every partition of the dead consumer must be
/// written by another.
const MOVE_BOUND: Duration = Duration::from_secs(10);
/// How long the others' throughput is watched after the kill.
const WATCHED: Duration = Duration::from_secs(20);

pub async fn consumer_moved(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let cluster = ClusterParts::start(NODES).await?;
    let (services, load_users, load) =
        start_load(settings, &cluster.parts, 1, &cluster.parts.otlp.endpoint(), |api| api).await?;
    let mut fleet = Fleet::start(services, CONSUMERS).await?;
    warm_up(settings).await;
    // Every consumer holds partitions before one dies.
    tokio::time::sleep(settings.secs(5, 3)).await;
    let victim = CONSUMERS - 1;
    let held = held_partitions(&fleet.consumer(victim).1);
    for n in 0..CONSUMERS {
        eprintln!(
            "    consumer-{n} holds partitions {:?}",
            held_partitions(&fleet.consumer(n).1)
        );
    }
    row.check(
        !held.is_empty(),
        format!("consumer-{victim} held partitions before its death ({held:?})"),
    );

    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let survivors: Vec<std::net::SocketAddr> = (0..victim).map(|n| fleet.consumer(n).0.addr).collect();
    let killed = Instant::now();
    let killed_at: chrono::DateTime<chrono::Utc> = chrono::Utc::now();
    fleet.consumer(victim).1.kill();
    // Each survivor's events written, every second.
    let mut counts: Vec<Vec<Option<u64>>> = vec![Vec::new(); survivors.len()];
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    while killed.elapsed() < WATCHED {
        every_second.tick().await;
        for (n, addr) in survivors.iter().enumerate() {
            counts[n].push(events_written(&http, *addr).await);
        }
    }
    let answers = load.stop().await;

    // When each of the dead consumer's partitions was next written.
    let mut moved = Vec::new();
    for &partition in &held {
        let (first,): (Option<chrono::DateTime<chrono::Utc>>,) =
            sqlx::query_as("SELECT min(written_at) FROM user_events WHERE kafka_partition = $1 AND written_at > $2")
                .bind(i32::try_from(partition)?)
                .bind(killed_at)
                .fetch_one(cluster.parts.db.pool())
                .await?;
        let after = first.and_then(|at| (at - killed_at).to_std().ok());
        moved.push((partition, after));
    }
    for (partition, after) in &moved {
        eprintln!(
            "    partition {partition} written again {}",
            after.map_or_else(
                || "never".to_owned(),
                |took| format!("{:.1} s after the kill", took.as_secs_f64())
            )
        );
    }
    let slowest = moved.iter().filter_map(|(_, after)| *after).max();
    let all_moved = moved.iter().all(|(_, after)| after.is_some());
    if let Some(slowest) = slowest {
        row.recovered(slowest);
    }
    // Throughput per survivor, second by second.
    let mut stopped = Vec::new();
    for (n, series) in counts.iter().enumerate() {
        let rates: Vec<String> = series
            .windows(2)
            .map(|pair| match (pair[0], pair[1]) {
                (Some(a), Some(b)) => (b.saturating_sub(a)).to_string(),
                _ => "?".to_owned(),
            })
            .collect();
        eprintln!("    consumer-{n} events/s after the kill: {}", rates.join(" "));
        let idle = series
            .windows(2)
            .filter(|pair| matches!((pair[0], pair[1]), (Some(a), Some(b)) if b == a))
            .count();
        if idle > 0 {
            stopped.push(format!("consumer-{n} idle {idle} s"));
        }
    }
    audit(row, &cluster.parts, &load_users, &answers).await?;
    row.must(
        all_moved,
        format!(
            "every partition of the dead consumer is written by another ({} of {})",
            moved.iter().filter(|(_, a)| a.is_some()).count(),
            moved.len()
        ),
    );
    row.check(
        all_moved && slowest.is_some_and(|s| s <= MOVE_BOUND),
        format!(
            "its partitions moved within {MOVE_BOUND:?} of the kill (the slowest {})",
            slowest.map_or_else(|| "never".to_owned(), |s| format!("{:.1} s", s.as_secs_f64()))
        ),
    );
    row.must(
        stopped.is_empty(),
        format!("the other consumers wrote every second of the move ({stopped:?})"),
    );
    let dead = fleet.dead();
    row.must(
        dead.iter().all(|d| d.starts_with(&format!("consumer-{victim} "))),
        format!("every other service still running ({dead:?})"),
    );
    Ok(())
}
