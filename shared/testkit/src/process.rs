//! A service binary in a process of its own, for what only a real process
//! shows: SIGTERM and its drain, `kill -9`, the exit status, the last spans
//! flushed on the way out.

use std::{
    io::BufRead as _,
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;

/// The ports [`free_addr`] picks from: below Linux's range of ephemeral
/// ports (32768 and up). A broker or a service is restarted on its port
/// after it is killed; a port of that range could meanwhile become the
/// source port of any connection, even of a client retrying the dead
/// server (which connects to itself when it picks the port it dials).
const PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A free port on loopback (bound, then released for the process to take),
/// from [`PORTS`], tried from a random place on.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let span = u32::from(PORTS.end - PORTS.start);
    let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
    (0..span)
        .map(|n| PORTS.start + ((start + n) % span) as u16)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok()?.local_addr().ok())
        .ok_or_else(|| anyhow::anyhow!("no free port on loopback in {PORTS:?}"))
}

/// A running service binary whose log lines (stdout) are kept.
pub struct ServiceProcess {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `program` with exactly `env` added to a cleared environment
    /// (beside `PATH` and `HOME`), so nothing of the test's own shell leaks
    /// into it.
    pub fn spawn<K, V>(name: &str, program: &str, env: impl IntoIterator<Item = (K, V)>) -> anyhow::Result<Self>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        Self::spawn_with_args(name, program, &[] as &[&str], env)
    }

    /// [`Self::spawn`], with command-line arguments.
    pub fn spawn_with_args<A, K, V>(
        name: &str,
        program: &str,
        args: &[A],
        env: impl IntoIterator<Item = (K, V)>,
    ) -> anyhow::Result<Self>
    where
        A: AsRef<std::ffi::OsStr>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(program);
        command.args(args);
        command.env_clear();
        for kept in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(kept) {
                command.env(kept, value);
            }
        }
        let mut child = command
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let stdout = child.stdout.take().context("its stdout")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().expect("log lines").push(line);
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            logs,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM: the signal to drain and stop.
    pub fn terminate(&self) -> anyhow::Result<()> {
        signal(self.pid(), "TERM")
    }

    /// `kill -9`, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `patience` for it to exit; `Err` when it is still running.
    pub async fn wait_exit(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} still runs {patience:?} later",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit: how long it took. `Err` when it
    /// is still running 2 s past `bound`, exits other than 0 (with its log),
    /// or exits but not within `bound`.
    pub async fn stop_within(&mut self, bound: Duration) -> anyhow::Result<Duration> {
        let signalled = tokio::time::Instant::now();
        self.terminate()?;
        let status = self
            .wait_exit(bound + Duration::from_secs(2))
            .await
            .with_context(|| format!("{} exits after SIGTERM", self.name))?;
        let took = signalled.elapsed();
        anyhow::ensure!(
            status.success(),
            "exit status {status}; its logs:\n{}",
            self.log_text().join("\n")
        );
        anyhow::ensure!(took < bound, "{} exited {took:?} after SIGTERM", self.name);
        Ok(took)
    }

    /// Every line it wrote to stdout so far.
    pub fn log_text(&self) -> Vec<String> {
        self.logs.lock().expect("log lines").clone()
    }

    /// Its JSON log lines (any other line is left out).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The `message` of each of its log lines.
    pub fn messages(&self) -> Vec<String> {
        self.log_lines()
            .iter()
            .filter_map(|line| line["message"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -<name> <pid>`, through the `kill` program, so tests need no
/// binding to libc.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("cannot run kill")?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed: {status}");
    Ok(())
}
