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
//! 8. The consumer `kill -9`ed and started again under its static member
//!    id, then, 15 s later, the broker restarted.
//! 13. One of two user-service replicas `kill -9`ed while both publish
//!     shards of the outbox: the other takes them (how soon is printed).
//!
//! On a cluster of three Kafka nodes (topics of three replicas, two in
//! sync at least):
//!
//! 9. A node other than the active controller `kill -9`ed, started again
//!    20 s later.
//! 10. The active controller `kill -9`ed: another is elected.
//! 11. A rolling restart of the three nodes, each waiting until no partition
//!     is under-replicated.
//! 12. One of three consumers `kill -9`ed: its partitions move to the
//!     others, which never stop.
//! 14. The nemesis (`NEMESIS=<minutes> SEED=<n>`): a seeded random schedule
//!     of overlapping faults of every kind, and one checker at the end.
//!
//! Each scenario is a module of its own, named after it; `harness` holds
//! what they share: the parts, the service processes, the load and the
//! audit.
//!
//! It prints one Markdown table, a row per scenario, then each scenario's
//! checks, and exits non-zero when a change the API acknowledged is lost or
//! duplicated, when a user's changes arrive out of order, or when a service
//! does not recover without a restart by hand.
//!
//! Settings: `CHAOS_ONLY=2` (or `2,6`) runs those scenarios;
//! `NEMESIS=<minutes>` runs scenario 14 (alone, unless `CHAOS_ONLY` names
//! more) for that long (2 minutes otherwise), drawn from `SEED=<n>` (a
//! fresh seed when unset), `NEMESIS_POSTGRES=0` leaving the machine's
//! Postgres out of it;
//! `CHAOS_QUICK=1` shortens every phase; `CHAOS_RATE` (default 200) is the
//! write rate per second; `CHAOS_BIN_DIR` is where the service binaries are
//! (default `target/release`, which `make chaos` builds first: a bench cannot
//! run cargo itself while cargo holds the target folder).

mod broker_outage;
mod cluster;
mod collector_down;
mod consumer_kill_then_broker_restart;
mod consumer_kills;
mod consumer_moved;
mod harness;
mod nemesis;
mod node_killed;
mod postgres_restart;
mod relay_shards_taken_over;
mod replica_killed;
mod rolling_restart;
mod sigterm_each;
mod slow_user;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use harness::{Row, Settings, setting};

fn main() -> anyhow::Result<()> {
    let (plan, nemesis_asked) = nemesis::Plan::from_env();
    let only = setting("CHAOS_ONLY")
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect::<BTreeSet<u32>>()
        })
        .or_else(|| nemesis_asked.then(|| BTreeSet::from([NEMESIS])));
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
        nemesis: plan,
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

/// The nemesis's number among the scenarios (13 is the relay's).
const NEMESIS: u32 = 14;

/// Where `cargo build --release` puts the binaries.
fn release_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    setting("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("release")
}

async fn run(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    type Scenario = for<'a> fn(&'a Settings, &'a mut Row) -> futures_like::Boxed<'a>;
    let scenarios: [(u32, &str, Scenario); 14] = [
        (1, "1. broker stopped for 10 s", |s, r| {
            Box::pin(broker_outage::broker_outage(s, r))
        }),
        (2, "2. consumer kill -9, 10 times", |s, r| {
            Box::pin(consumer_kills::consumer_kills(s, r))
        }),
        (3, "3. Postgres restarted", |s, r| {
            Box::pin(postgres_restart::postgres_restart(s, r))
        }),
        (4, "4. one of two user replicas killed", |s, r| {
            Box::pin(replica_killed::replica_killed(s, r))
        }),
        (5, "5. user service past the deadline", |s, r| {
            Box::pin(slow_user::slow_user(s, r))
        }),
        (6, "6. collector down for 30 s", |s, r| {
            Box::pin(collector_down::collector_down(s, r))
        }),
        (7, "7. SIGTERM to each service", |s, r| {
            Box::pin(sigterm_each::sigterm_each(s, r))
        }),
        (8, "8. consumer kill -9, then a broker restart", |s, r| {
            Box::pin(consumer_kill_then_broker_restart::consumer_kill_then_broker_restart(
                s, r,
            ))
        }),
        (9, "9. a Kafka node kill -9, back 20 s later", |s, r| {
            Box::pin(node_killed::follower_killed(s, r))
        }),
        (10, "10. the active controller kill -9", |s, r| {
            Box::pin(node_killed::controller_killed(s, r))
        }),
        (11, "11. a rolling restart of the three nodes", |s, r| {
            Box::pin(rolling_restart::rolling_restart(s, r))
        }),
        (12, "12. one of three consumers kill -9", |s, r| {
            Box::pin(consumer_moved::consumer_moved(s, r))
        }),
        (13, "13. one of two relays killed, its shards taken over", |s, r| {
            Box::pin(relay_shards_taken_over::relay_shards_taken_over(s, r))
        }),
        (NEMESIS, "14. the nemesis", |s, r| {
            Box::pin(nemesis::nemesis(s, r, &s.nemesis))
        }),
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
