//! Scenarios 9 and 10: on a three-node cluster, one node `kill -9`ed and
//! started again 20 s later: a follower (9), or the active controller (10),
//! whose quorum then elects another.

use std::time::{Duration, Instant};

use crate::{
    cluster::{ClusterParts, NODES, OutboxWatch},
    harness::{Row, Settings, all_alive, audit, start_load, warm_up},
};

/// How long the killed node stays down.
const DOWN: Duration = Duration::from_secs(20);
/// How long the cluster may take to report no under-replicated partition
/// after the node is back.
const RESYNC: Duration = Duration::from_secs(60);

/// 9: a node other than the controller's leader.
pub async fn follower_killed(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    node_killed(settings, row, false).await
}

/// 10: the active controller.
pub async fn controller_killed(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    node_killed(settings, row, true).await
}

async fn node_killed(settings: &Settings, row: &mut Row, controller: bool) -> anyhow::Result<()> {
    let mut cluster = ClusterParts::start(NODES).await?;
    let watch = OutboxWatch::start(&cluster.parts);
    let (mut services, load_users, load) =
        start_load(settings, &cluster.parts, 1, &cluster.parts.otlp.endpoint(), |api| api).await?;
    warm_up(settings).await;
    let leader = cluster.controller()?;
    let victim = if controller {
        leader
    } else {
        (0..NODES).find(|&n| n != leader).expect("another node")
    };
    eprintln!(
        "    the controller is node {}; killing node {} ({})",
        cluster.node_id(leader),
        cluster.node_id(victim),
        if controller { "the controller" } else { "a follower" }
    );
    let killed = Instant::now();
    cluster.kill(victim);
    if controller {
        let deadline = killed + DOWN;
        let mut elected = None;
        while Instant::now() < deadline {
            if let Ok(new) = cluster.controller()
                && new != victim
            {
                elected = Some((new, killed.elapsed()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match elected {
            Some((new, took)) => eprintln!(
                "    node {} elected the new controller, seen {:.1} s after the kill",
                cluster.node_id(new),
                took.as_secs_f64()
            ),
            None => eprintln!("    no new controller seen within {DOWN:?}"),
        }
        row.must(
            elected.is_some(),
            format!(
                "a new controller is elected while the old one is down{}",
                elected.map_or_else(String::new, |(new, took)| format!(
                    " (node {}, seen {:.1} s after the kill)",
                    cluster.node_id(new),
                    took.as_secs_f64()
                ))
            ),
        );
    }
    tokio::time::sleep(DOWN.saturating_sub(killed.elapsed())).await;
    cluster.restart(victim)?;
    let back = Instant::now();
    let resynced = cluster.wait_in_sync(RESYNC).await;
    eprintln!(
        "    node {} back; {}",
        cluster.node_id(victim),
        resynced.map_or_else(
            || format!("partitions still under-replicated after {RESYNC:?}"),
            |took| format!("no partition under-replicated {:.1} s later", took.as_secs_f64())
        )
    );
    tokio::time::sleep(settings.secs(10, 5)).await;
    let answers = load.stop().await;
    let stall = watch.stall(killed, back + RESYNC);
    eprintln!(
        "    the relay's stall: {:.1} s from the kill until the outbox flowed again",
        stall.as_secs_f64()
    );
    row.recovered(stall);
    audit(row, &cluster.parts, &load_users, &answers).await?;
    row.must(
        row.server_errors == 0,
        format!(
            "0 5xx at the API: the outbox absorbs the node's death ({} 5xx)",
            row.server_errors
        ),
    );
    row.check(
        resynced.is_some(),
        format!("the cluster reports no under-replicated partition within {RESYNC:?} of the node's return"),
    );
    all_alive(row, &mut services);
    Ok(())
}
