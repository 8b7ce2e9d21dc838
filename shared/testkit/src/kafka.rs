//! Apache Kafka for tests: the same broker, version and settings `make dev`
//! runs (`scripts/kafka.sh`), one KRaft node or a cluster of them.
//!
//! - [`Kafka::shared`]: the test run's broker (or cluster, with
//!   `KAFKA_NODES=3 make test`), which `make test` starts and names in
//!   `CALLCHAIN_TEST_KAFKA`, with topics and a consumer group of the test's
//!   own, so tests never see each other's messages.
//! - [`Kafka::own`]: a broker of the test's own, for tests that stop, kill or
//!   restart it.
//! - [`Cluster`]: three KRaft nodes of the test's own (each broker and
//!   controller), whose nodes a test kills and restarts; [`Kafka::on_cluster`]
//!   makes its topics there, with three replicas.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
};

/// The variable that names the shared broker (`host:port`).
pub const SHARED_BROKER_VAR: &str = "CALLCHAIN_TEST_KAFKA";

const HOW_TO_GET_KAFKA: &str = "run the tests with `make test`: it installs Apache Kafka (the version in .env) \
     under $HOME once, starts one broker for the run and names it in CALLCHAIN_TEST_KAFKA. To run \
     `cargo test` by hand, start the parts first: `scripts/test-parts.sh up` prints what to export";

/// How long a broker may take from start to answering metadata requests.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker a test uses, with topics and a group nobody else uses.
pub struct Kafka {
    bootstrap: String,
    /// The events topic (3 partitions unless [`Kafka::shared_with`] says),
    /// in place of `user-events`; with three
    /// replicas and `min.insync.replicas=2` on a cluster, else one.
    pub topic: String,
    /// Its dead-letter topic, `<topic>.dlq`.
    pub dlq: String,
    /// A consumer group id of this test's own.
    pub group: String,
    own: Option<Broker>,
}

impl Kafka {
    /// The run's shared broker, with fresh topics.
    pub async fn shared() -> anyhow::Result<Self> {
        Self::shared_with(3).await
    }

    /// The run's shared broker, with fresh topics, the events topic of
    /// `partitions` partitions (`user-events` has 12).
    pub async fn shared_with(partitions: i32) -> anyhow::Result<Self> {
        let bootstrap = std::env::var(SHARED_BROKER_VAR).map_err(|_| {
            anyhow::anyhow!("no Kafka broker for the tests ({SHARED_BROKER_VAR} is unset): {HOW_TO_GET_KAFKA}")
        })?;
        Self::on(bootstrap, None, partitions).await
    }

    /// A broker of this test's own, started now, with fresh topics.
    pub async fn own() -> anyhow::Result<Self> {
        let broker = tokio::task::spawn_blocking(Broker::start).await??;
        Self::on(broker.bootstrap(), Some(broker), 3).await
    }

    /// Fresh topics on `cluster`, with three replicas (two in sync for a
    /// write). The cluster stays the caller's, to kill and restart nodes of.
    pub async fn on_cluster(cluster: &Cluster) -> anyhow::Result<Self> {
        Self::on(cluster.bootstrap(), None, 3).await
    }

    async fn on(bootstrap: String, own: Option<Broker>, partitions: i32) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("{}-{}", callchain_events::TOPIC, &suffix[..12]);
        let kafka = Self {
            dlq: callchain_events::dlq_topic(&topic),
            group: format!("user-events-writer-{}", &suffix[..12]),
            topic,
            bootstrap,
            own,
        };
        create_topics(&kafka.bootstrap, &[(&kafka.topic, partitions), (&kafka.dlq, 1)]).await?;
        Ok(kafka)
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Waits (up to `patience`) until the test's group has committed offsets
    /// past every message in the test's topic, as it stands when this is
    /// called: a consumer of the group has handled everything written so far
    /// (the consumer commits an offset only once its row is committed).
    pub async fn wait_until_consumed(&self, patience: Duration) -> anyhow::Result<()> {
        let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .create()?;
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::{Offset, TopicPartitionList, consumer::Consumer as _};
            let timeout = Duration::from_secs(5);
            let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut ends = Vec::new();
            for &partition in &partitions {
                ends.push((partition, probe.fetch_watermarks(&topic, partition, timeout)?.1));
            }
            let started = Instant::now();
            loop {
                let mut list = TopicPartitionList::new();
                for &partition in &partitions {
                    list.add_partition(&topic, partition);
                }
                // A fresh broker answers "not coordinator" while it makes its
                // offsets topic: asked again, it answers.
                let committed = match probe.committed_offsets(list, timeout) {
                    Ok(committed) => committed,
                    Err(error) if started.elapsed() < patience => {
                        eprintln!("committed offsets not readable yet ({error}); asking again");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                let behind: Vec<String> = ends
                    .iter()
                    .filter_map(|&(partition, end)| {
                        let at = match committed.find_partition(&topic, partition).map(|p| p.offset()) {
                            Some(Offset::Offset(offset)) => offset,
                            _ => 0,
                        };
                        (at < end).then(|| format!("partition {partition} at {at} of {end}"))
                    })
                    .collect();
                if behind.is_empty() {
                    return Ok(());
                }
                anyhow::ensure!(
                    started.elapsed() < patience,
                    "the consumer group did not catch up within {patience:?}: {}",
                    behind.join(", ")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await?
    }

    /// The broker of [`Kafka::own`], to stop or restart.
    pub fn broker(&mut self) -> &mut Broker {
        self.own
            .as_mut()
            .expect("only a broker of the test's own (Kafka::own) may be stopped or restarted")
    }
}

/// Creates `topics` (name, partitions), and waits until the broker knows
/// them: with one replica each on one node, with three (and
/// `min.insync.replicas=2`) when `bootstrap` lists three nodes or more, as
/// `scripts/kafka.sh create-topic` does on a cluster.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("a Kafka admin client")?;
    let (replicas, min_isr) = replication(bootstrap);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replicas)).set("min.insync.replicas", min_isr)
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .with_context(|| format!("creating topics on {bootstrap}; is the broker up? {HOW_TO_GET_KAFKA}"))?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic} failed: {code}"))?;
    }
    Ok(())
}

/// The replicas of a topic made on `bootstrap`, and the in-sync replicas a
/// write needs: 3 and 2 on a cluster (three nodes listed or more), else 1 and 1.
fn replication(bootstrap: &str) -> (i32, &'static str) {
    if bootstrap.split(',').count() >= 3 {
        (3, "2")
    } else {
        (1, "1")
    }
}

/// The repository's `scripts/kafka.sh`, which runs one KRaft node.
fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka.sh")
}

/// A Kafka node of a test's own, on free ports and a data folder of its own:
/// alone ([`Broker::start`]) or one of a [`Cluster`]. Dropping it kills the
/// broker and removes its data.
pub struct Broker {
    id: u32,
    addr: SocketAddr,
    controller_port: u16,
    /// The cluster's voters and id (`scripts/kafka.sh`'s
    /// `KAFKA_CONTROLLER_QUORUM_VOTERS`, `KAFKA_CLUSTER_ID`); none alone.
    quorum: Option<(String, String)>,
    data: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a node and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let mut broker = Self::new(1)?;
        broker.launch()?;
        Ok(broker)
    }

    /// A node not started yet, with free ports and an empty data folder.
    fn new(id: u32) -> anyhow::Result<Self> {
        let data = std::env::temp_dir().join(format!("callchain-kafka-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data)?;
        Ok(Self {
            id,
            addr: crate::process::free_addr()?,
            controller_port: crate::process::free_addr()?.port(),
            quorum: None,
            data,
            child: None,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.data.join("kafka.log")
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_until_answering()
    }

    /// Starts the node's process, without waiting: a node of a cluster
    /// answers only once a majority of the voters runs.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("bash");
        command
            .arg(kafka_script())
            .env("KAFKA_NODE_ID", self.id.to_string())
            .env("KAFKA_PORT", self.addr.port().to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_DATA_DIR", &self.data);
        if let Some((voters, cluster_id)) = &self.quorum {
            command
                .env("KAFKA_CONTROLLER_QUORUM_VOTERS", voters)
                .env("KAFKA_CLUSTER_ID", cluster_id)
                .env("KAFKA_REPLICATION", "3");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kafka_script().display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_until_answering(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() && self.answers() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!(
                    "Kafka exited at start ({status}): {}\n{HOW_TO_GET_KAFKA}",
                    self.log_tail()
                );
            }
            anyhow::ensure!(
                started.elapsed() < START_TIMEOUT,
                "Kafka node {} did not answer on {} within {START_TIMEOUT:?}: {}",
                self.id,
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the broker answers a metadata request.
    fn answers(&self) -> bool {
        let Ok(client) = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create::<rdkafka::consumer::BaseConsumer>()
        else {
            return false;
        };
        rdkafka::consumer::Consumer::fetch_metadata(&client, None, Duration::from_secs(2))
            .is_ok_and(|m| !m.brokers().is_empty())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "the end of its log:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The node's id (`node.id`): 1 alone, 1 to 3 in a [`Cluster`].
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Kills the broker (`kill -9`), as an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses the broker (`SIGSTOP`): its connections stay open and nothing
    /// answers on them, as with a node that hangs. `scripts/kafka.sh` execs
    /// java in place of itself, so the child is the JVM.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a paused broker run again (`SIGCONT`).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the broker is not running")?;
        crate::process::signal(child.id(), name)
    }

    /// Starts it again on the same port and data: what it had acknowledged
    /// is still there.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A KRaft cluster of a test's own: every node both broker and controller,
/// all of them voters, formatted with one cluster id, on free ports.
/// Topics made with [`Kafka::on_cluster`] have three replicas, two of which
/// must have a write before `acks=all` acknowledges it. Dropping it kills the
/// nodes and removes their data.
pub struct Cluster {
    nodes: Vec<Broker>,
}

impl Cluster {
    /// Starts `nodes` nodes (3 for replication; at most 3) and waits until
    /// each answers. Blocking: from async code, in `spawn_blocking`.
    pub fn start(nodes: u32) -> anyhow::Result<Self> {
        anyhow::ensure!((1..=3).contains(&nodes), "a test cluster has 1 to 3 nodes, not {nodes}");
        let mut brokers = (1..=nodes).map(Broker::new).collect::<anyhow::Result<Vec<_>>>()?;
        let voters = brokers
            .iter()
            .map(|b| format!("{}@127.0.0.1:{}", b.id, b.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = random_cluster_id();
        for broker in &mut brokers {
            broker.quorum = Some((voters.clone(), cluster_id.clone()));
            broker.spawn()?;
        }
        for broker in &mut brokers {
            broker.wait_until_answering()?;
        }
        Ok(Self { nodes: brokers })
    }

    /// Node `id` (1 to the number of nodes), to kill or restart.
    ///
    /// # Panics
    /// When the cluster has no node `id`.
    pub fn node(&mut self, id: u32) -> &mut Broker {
        let count = self.nodes.len();
        self.nodes
            .iter_mut()
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("the cluster's nodes are 1 to {count}, not {id}"))
    }

    /// Every node's `host:port`, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(Broker::bootstrap).collect::<Vec<_>>().join(",")
    }

    /// The node id of the active controller (the KRaft quorum's leader), as
    /// `scripts/kafka.sh controller` reports it. Blocking.
    pub fn controller(&self) -> anyhow::Result<u32> {
        let out = self.script(&["controller"])?;
        out.parse()
            .with_context(|| format!("scripts/kafka.sh controller printed '{out}', not a node id"))
    }

    /// How many partitions have fewer in-sync replicas than replicas, as
    /// `scripts/kafka.sh under-replicated` reports it: 0 once every node has
    /// caught up. Blocking.
    pub fn under_replicated(&self) -> anyhow::Result<u32> {
        let out = self.script(&["under-replicated"])?;
        out.parse()
            .with_context(|| format!("scripts/kafka.sh under-replicated printed '{out}', not a count"))
    }

    /// `scripts/kafka.sh COMMAND BOOTSTRAP`, against the nodes running now:
    /// its output, trimmed.
    fn script(&self, command: &[&str]) -> anyhow::Result<String> {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|b| b.child.is_some())
            .map(Broker::bootstrap)
            .collect();
        let output = Command::new("bash")
            .arg(kafka_script())
            .args(command)
            .arg(running.join(","))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", kafka_script().display()))?;
        anyhow::ensure!(
            output.status.success(),
            "scripts/kafka.sh {} failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// A new cluster id in Kafka's form: 16 random bytes, URL-safe base64 without
/// padding (what `kafka-storage.sh random-uuid` prints), and, as Kafka's own,
/// never starting with `-`: `kafka-storage format --cluster-id -x...` reads
/// such an id as an option and fails (one id in 64).
fn random_cluster_id() -> String {
    loop {
        let id = cluster_id_of(uuid::Uuid::new_v4().as_u128());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// `bits` as a cluster id: 22 characters of URL-safe base64.
fn cluster_id_of(bits: u128) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // 22 characters of 6 bits hold 132 bits: the 128, then 4 zero bits.
    (0..22)
        .map(|i| {
            let shift = 128 - 6 * (i + 1);
            let sextet = if shift >= 0 { bits >> shift } else { bits << -shift } & 0x3f;
            char::from(ALPHABET[usize::try_from(sextet).expect("six bits")])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_kafkas_base64_of_its_bits() {
        assert_eq!(cluster_id_of(0), "A".repeat(22));
        // The top six bits are the first character; `-` is 62.
        assert_eq!(&cluster_id_of(62 << 122)[..2], "-A");
        assert_eq!(cluster_id_of(u128::MAX), format!("{}w", "_".repeat(21)));
    }

    #[test]
    fn no_cluster_id_starts_with_a_dash_which_kafka_storage_reads_as_an_option() {
        // One in 64 would: among 10,000, some 156.
        let dashed = (0..10_000)
            .map(|_| random_cluster_id())
            .filter(|id| id.starts_with('-'))
            .count();
        assert_eq!(dashed, 0);
    }
}
