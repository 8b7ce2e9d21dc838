//! A real Kafka-protocol broker for tests: tansu, started on a free port,
//! one per test, storing in a SQLite file of its own.
//!
//! Why SQLite by default: tansu 0.6's memory storage answers nothing to a
//! fetch that starts inside a record batch, so a consumer resuming from such
//! an offset (after a restart, or a pause) would wait forever. SQLite storage
//! serves it, and keeps the data across a broker restart, as Kafka does.
//!
//! Why memory for broker restarts: after a restart tansu 0.6's SQLite storage
//! panics on the next idempotent produce and serves no more; memory storage
//! comes back empty, which a client sees as a broker that lost its state.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

const HOW_TO_GET_TANSU: &str = "tansu, the Kafka-compatible broker the tests run against, is not installed: \
     run `make tools` (it runs `cargo install tansu --locked --features dynostore,libsql`), \
     or point TANSU_BIN at a tansu binary";

/// The tansu binary: `TANSU_BIN`, else `tansu` on `PATH`, else cargo's bin directory.
pub fn tansu_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return Ok(bin.into());
    }
    let candidates = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/tansu")));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(HOW_TO_GET_TANSU)
}

/// A running tansu broker. Dropping it kills the broker and removes its data.
pub struct Broker {
    addr: SocketAddr,
    data: PathBuf,
    in_memory: bool,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on SQLite storage on a free port and creates
    /// `user-events` (3 partitions) and `user-events.dlq`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// The same on memory storage: for tests that restart the broker.
    pub fn start_in_memory() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(in_memory: bool) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = std::env::temp_dir().join(format!("callchain-tansu-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data)?;
        let mut broker = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            data,
            in_memory,
            child: None,
        };
        broker.launch()?;
        broker.create_topics()?;
        Ok(broker)
    }

    fn create_topics(&self) -> anyhow::Result<()> {
        self.create_topic("user-events", 3)?;
        self.create_topic("user-events.dlq", 1)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.addr);
        let child = Command::new(tansu_bin()?)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // tansu reads a SQLite path relative to its working directory.
            .current_dir(&self.data)
            .args([
                "--storage-engine",
                if self.in_memory {
                    "memory://tansu/"
                } else {
                    "sqlite://tansu.db"
                },
            ])
            // The broker's own spans would land in the tests' receiver.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| HOW_TO_GET_TANSU.to_owned())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("tansu exited at start ({status})");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 10 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `host:port`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let output = Command::new(tansu_bin()?)
            .args(["topic", "create", name, "--broker", &format!("tcp://{}", self.addr)])
            .args(["--partitions", &partitions.to_string()])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "creating topic {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Kills the broker, as an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: with the data it had on SQLite,
    /// empty (topics re-created) in memory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()?;
        if self.in_memory {
            self.create_topics()?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
