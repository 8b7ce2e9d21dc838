//! `BENCH_INTEGRITY_KILL_BROKER=1`: the trace-integrity run on a three-node
//! Kafka cluster of its own, one node `kill -9`ed halfway through the load
//! and left dead, so the traces are judged across a broker's death.

use std::time::Duration;

use callchain_testkit::kafka::{Cluster, Kafka};

/// The cluster of the run, until its node is killed.
pub struct KillBroker {
    cluster: Cluster,
}

impl KillBroker {
    /// A three-node cluster when `BENCH_INTEGRITY_KILL_BROKER=1`, else none.
    pub async fn from_env() -> anyhow::Result<Option<Self>> {
        if std::env::var("BENCH_INTEGRITY_KILL_BROKER").is_ok_and(|v| v == "1") {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            Ok(Some(Self { cluster }))
        } else {
            Ok(None)
        }
    }

    /// Fresh topics on the cluster, for the run's stack.
    pub async fn kafka(&self) -> anyhow::Result<Kafka> {
        Kafka::on_cluster(&self.cluster).await
    }

    /// Kills a node other than the active controller `after` from now;
    /// which node, once done. The cluster (with its dead node) is handed
    /// back, so it outlives the run.
    pub fn midway(mut self, after: Duration) -> tokio::task::JoinHandle<anyhow::Result<(Cluster, u32)>> {
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(after);
            let controller = self.cluster.controller()?;
            let victim = (1..=3).find(|&id| id != controller).unwrap_or(1);
            self.cluster.node(victim).kill();
            Ok((self.cluster, victim))
        })
    }
}
