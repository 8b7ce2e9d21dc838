//! Scenario 11: a rolling restart of the three nodes, what an operator does
//! for an upgrade: each stopped (SIGTERM) and started again, the next only
//! once the cluster reports no under-replicated partition.

use std::time::{Duration, Instant};

use crate::{
    cluster::{ClusterParts, NODES, OutboxWatch},
    harness::{Row, Settings, all_alive, audit, start_load, warm_up},
};

/// How long the cluster may take to be whole again after a node's return.
const RESYNC: Duration = Duration::from_secs(90);

pub async fn rolling_restart(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let mut cluster = ClusterParts::start(NODES).await?;
    let watch = OutboxWatch::start(&cluster.parts);
    let (mut services, load_users, load) =
        start_load(settings, &cluster.parts, 1, &cluster.parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let began = Instant::now();
    let mut whole = 0;
    for node in 0..NODES {
        let stopped = Instant::now();
        let took_to_stop = cluster.stop(node)?;
        cluster.restart(node)?;
        let resynced = cluster.wait_in_sync(RESYNC).await;
        eprintln!(
            "    node {}: stopped in {:.1} s, back, {} ({:.1} s from its stop)",
            cluster.node_id(node),
            took_to_stop.as_secs_f64(),
            resynced.map_or_else(
                || format!("still under-replicated after {RESYNC:?}"),
                |took| format!("no partition under-replicated {:.1} s later", took.as_secs_f64())
            ),
            stopped.elapsed().as_secs_f64()
        );
        whole += usize::from(resynced.is_some());
    }
    let ended = Instant::now();
    eprintln!("    the rolling restart took {:.1} s", (ended - began).as_secs_f64());
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    let stall = watch.longest_stall(began, ended);
    eprintln!(
        "    the relay's longest stall during the restart: {:.1} s",
        stall.as_secs_f64()
    );
    row.recovered(stall);
    audit(row, &cluster.parts, &load_users, &answers).await?;
    row.must(
        row.server_errors == 0,
        format!("0 5xx at the API through the restart ({} 5xx)", row.server_errors),
    );
    row.must(
        whole == NODES,
        format!("after each node's return the cluster reported no under-replicated partition ({whole} of {NODES})"),
    );
    all_alive(row, &mut services);
    Ok(())
}
