//! What the scenarios on a three-node Kafka cluster (9 to 12, and the
//! nemesis) share: the parts on the cluster, three consumers in one group,
//! the outbox watched for the relay's stalls, and the consumers' own
//! counters.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use callchain_testkit::{
    kafka::{Cluster, Kafka},
    otlp::OtlpReceiver,
    postgres::TestDatabase,
    process::{ServiceProcess, free_addr, signal},
};

use crate::harness::{Answer, Outcome, Parts, Services, Spec};

/// Kafka nodes of the cluster scenarios.
pub const NODES: usize = 3;
/// Consumers of the cluster scenarios, in one group.
pub const CONSUMERS: usize = 3;
/// An outbox whose oldest row is older than this is not flowing.
const STALLED_AGE: f64 = 0.5;

/// The parts on a cluster: the harness's [`Parts`] with their topics on it,
/// and its nodes, by index (0 to [`NODES`] - 1; node ids are one more).
pub struct ClusterParts {
    pub parts: Parts,
    cluster: Cluster,
}

impl ClusterParts {
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
        let count = u32::try_from(nodes)?;
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(count))
            .await?
            .context("a Kafka cluster of the scenario's own")?;
        let parts = Parts {
            kafka: Kafka::on_cluster(&cluster).await?,
            db: TestDatabase::create().await?,
            otlp: OtlpReceiver::start().await?,
        };
        Ok(Self { parts, cluster })
    }

    /// The node id of the node at `index`.
    pub fn node_id(&self, index: usize) -> u32 {
        u32::try_from(index).map_or(0, |i| i + 1)
    }

    /// The index of the active controller.
    pub fn controller(&self) -> anyhow::Result<usize> {
        let id = tokio::task::block_in_place(|| self.cluster.controller())?;
        Ok(usize::try_from(id)?.saturating_sub(1))
    }

    /// How many partitions lack an in-sync replica.
    pub fn under_replicated(&self) -> anyhow::Result<u32> {
        tokio::task::block_in_place(|| self.cluster.under_replicated())
    }

    /// Waits until no partition is under-replicated: how long it took, or
    /// `None` after `patience`.
    pub async fn wait_in_sync(&self, patience: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < patience {
            if self.under_replicated().is_ok_and(|n| n == 0) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    /// `kill -9` of the node at `index`.
    pub fn kill(&mut self, index: usize) {
        let id = self.node_id(index);
        tokio::task::block_in_place(|| self.cluster.node(id).kill());
    }

    /// Starts the node at `index` again and waits until it answers.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let id = self.node_id(index);
        tokio::task::block_in_place(|| self.cluster.node(id).restart())
    }

    /// The pid of the node's JVM: the process listening on its client port
    /// (`scripts/kafka.sh` execs java in place of itself).
    pub fn pid(&mut self, index: usize) -> anyhow::Result<u32> {
        let id = self.node_id(index);
        let port = self
            .cluster
            .node(id)
            .bootstrap()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let out = std::process::Command::new("ss")
            .args(["-Hltnp", &format!("sport = :{port}")])
            .output()
            .context("running ss")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("pid=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse().ok())
            .with_context(|| format!("no process listens on port {port} of node {id}"))
    }

    /// SIGTERM to the node at `index`, as an operator stops it: how long it
    /// took to exit.
    pub fn stop(&mut self, index: usize) -> anyhow::Result<Duration> {
        let pid = self.pid(index)?;
        let started = Instant::now();
        signal(pid, "TERM")?;
        // Until the JVM has exited (a zombie, or gone), not merely closed its
        // port: it writes its clean-shutdown marker last.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        };
        while running() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "node {} still runs 60 s after SIGTERM",
                self.node_id(index)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(started.elapsed())
    }
}

/// The services of a cluster scenario: the harness's, with consumers 1 and
/// 2 beside its consumer 0, each under a static member id of its own.
pub struct Fleet {
    pub services: Services,
    pub more_consumers: Vec<(Spec, ServiceProcess)>,
}

impl Fleet {
    /// Starts `CONSUMERS - 1` more consumers like `services`' one.
    pub async fn start(services: Services, consumers: usize) -> anyhow::Result<Self> {
        let mut more_consumers = Vec::new();
        for n in 1..consumers {
            let addr = free_addr()?;
            let mut spec = services
                .consumer
                .0
                .clone()
                .with("CONSUMER_HEALTH_ADDR", addr.to_string())
                .with("KAFKA_GROUP_INSTANCE_ID", format!("chaos-consumer-{n}"));
            spec.addr = addr;
            spec.name = "consumer".to_owned();
            let process = spec.start().await?;
            more_consumers.push((spec, process));
        }
        Ok(Self {
            services,
            more_consumers,
        })
    }

    pub fn consumers(&self) -> usize {
        1 + self.more_consumers.len()
    }

    /// Consumer `n` (0 is the harness's).
    pub fn consumer(&mut self, n: usize) -> &mut (Spec, ServiceProcess) {
        if n == 0 {
            &mut self.services.consumer
        } else {
            &mut self.more_consumers[n - 1]
        }
    }

    /// Every process that has exited.
    pub fn dead(&mut self) -> Vec<String> {
        let mut dead = self.services.dead();
        for (n, (_, process)) in self.more_consumers.iter_mut().enumerate() {
            if let Some(status) = process.try_exit() {
                dead.push(format!("consumer-{} ({status})", n + 1));
            }
        }
        dead
    }
}

/// Consumer `n`'s count of events written, from its `/healthz`.
pub async fn events_written(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<u64> {
    let body: serde_json::Value = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["events_written"].as_u64()
}

/// The partitions a consumer holds, by its log: what it was assigned, less
/// what was revoked from it, line by line.
pub fn held_partitions(process: &ServiceProcess) -> BTreeSet<i64> {
    let mut held = BTreeSet::new();
    for line in process.log_lines() {
        let ids = || -> Vec<i64> {
            line["partitions"]
                .as_str()
                .unwrap_or_default()
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        match line["message"].as_str() {
            Some("partitions assigned") => held.extend(ids()),
            Some("partitions revoked") => {
                for id in ids() {
                    held.remove(&id);
                }
            }
            _ => {}
        }
    }
    held
}

// ---------------------------------------------------------------------------
// The relay, seen from the outbox

/// The age of the outbox's oldest row, sampled until dropped.
pub struct OutboxWatch {
    samples: Arc<Mutex<Vec<(Instant, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OutboxWatch {
    pub fn start(parts: &Parts) -> Self {
        let pool = parts.db.pool().clone();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let kept = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let age: Result<(f64,), _> = sqlx::query_as(
                    "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 FROM outbox",
                )
                .fetch_one(&pool)
                .await;
                if let Ok((age,)) = age {
                    kept.lock().expect("samples").push((Instant::now(), age));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { samples, task }
    }

    /// Seconds from `since` until the outbox flowed again: until the last
    /// look before `until` at which its oldest row had waited longer than
    /// [`STALLED_AGE`] (zero when none had).
    pub fn stall(&self, since: Instant, until: Instant) -> Duration {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .filter(|(at, age)| *at >= since && *at <= until && *age > STALLED_AGE)
            .map(|(at, _)| *at - since)
            .max()
            .unwrap_or_default()
    }

    /// The longest stretch between `since` and `until` in which the
    /// outbox's oldest row had waited longer than [`STALLED_AGE`].
    pub fn longest_stall(&self, since: Instant, until: Instant) -> Duration {
        let samples = self.samples.lock().expect("samples");
        let mut longest = Duration::ZERO;
        let mut from: Option<Instant> = None;
        for &(at, age) in samples.iter().filter(|(at, _)| *at >= since && *at <= until) {
            if age > STALLED_AGE {
                // The row had been waiting `age` seconds already.
                let start = *from.get_or_insert_with(|| at.checked_sub(Duration::from_secs_f64(age)).unwrap_or(at));
                longest = longest.max(at - start);
            } else {
                from = None;
            }
        }
        longest
    }
}

impl Drop for OutboxWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answers without those cut off (a process killed or paused while it
/// held them): the audit counts them apart.
pub fn answered(answers: &[Answer]) -> (Vec<Answer>, usize) {
    let kept: Vec<Answer> = answers
        .iter()
        .filter(|a| !matches!(a.outcome, Outcome::CutOff(_)))
        .cloned()
        .collect();
    let cut_off = answers.len() - kept.len();
    (kept, cut_off)
}
