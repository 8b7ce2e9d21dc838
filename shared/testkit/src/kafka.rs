//! Apache Kafka for tests: the same broker, version and settings `make dev`
//! runs (`scripts/kafka.sh`), one KRaft node.
//!
//! - [`Kafka::shared`]: the test run's one broker, which `make test` starts
//!   and names in `CALLCHAIN_TEST_KAFKA`, with topics and a consumer group of
//!   the test's own, so tests never see each other's messages.
//! - [`Kafka::own`]: a broker of the test's own, for tests that stop, kill or
//!   restart it.

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
    /// The events topic (3 partitions), in place of `user-events`.
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
        let bootstrap = std::env::var(SHARED_BROKER_VAR).map_err(|_| {
            anyhow::anyhow!("no Kafka broker for the tests ({SHARED_BROKER_VAR} is unset): {HOW_TO_GET_KAFKA}")
        })?;
        Self::on(bootstrap, None).await
    }

    /// A broker of this test's own, started now, with fresh topics.
    pub async fn own() -> anyhow::Result<Self> {
        let broker = tokio::task::spawn_blocking(Broker::start).await??;
        Self::on(broker.bootstrap(), Some(broker)).await
    }

    async fn on(bootstrap: String, own: Option<Broker>) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("{}-{}", callchain_events::TOPIC, &suffix[..12]);
        let kafka = Self {
            dlq: callchain_events::dlq_topic(&topic),
            group: format!("user-events-writer-{}", &suffix[..12]),
            topic,
            bootstrap,
            own,
        };
        create_topics(&kafka.bootstrap, &[(&kafka.topic, 3), (&kafka.dlq, 1)]).await?;
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

/// Creates `topics` (name, partitions) with one replica each, and waits until
/// the broker knows them.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("a Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
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

/// The repository's `scripts/kafka.sh`, which runs one KRaft node.
fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka.sh")
}

/// A Kafka node of a test's own, on free ports and a data folder of its own.
/// Dropping it kills the broker and removes its data.
pub struct Broker {
    addr: SocketAddr,
    controller_port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a node and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let data = std::env::temp_dir().join(format!("callchain-kafka-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data)?;
        let mut broker = Self {
            addr: crate::process::free_addr()?,
            controller_port: crate::process::free_addr()?.port(),
            data,
            child: None,
        };
        broker.launch()?;
        Ok(broker)
    }

    fn log_path(&self) -> PathBuf {
        self.data.join("kafka.log")
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("bash")
            .arg(kafka_script())
            .env("KAFKA_PORT", self.addr.port().to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_DATA_DIR", &self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kafka_script().display()))?;
        self.child = Some(child);
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
                "Kafka did not answer on {} within {START_TIMEOUT:?}: {}",
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

    /// Kills the broker (`kill -9`), as an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
