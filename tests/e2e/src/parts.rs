//! A telemetry pipeline of one test's own: VictoriaMetrics, Jaeger and the
//! OpenTelemetry Collector, started by `scripts/parts.sh` (the programs and
//! configs of `make dev`) on free ports in a folder of their own, so a test
//! may count every request the store holds, or stop a part, without another
//! test's traffic or parts in the way. The run's Kafka is not among them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use callchain_testkit::process::free_addr;
use serde_json::Value;

use crate::compose::workspace_root;

/// The three parts, stopped (and their folder removed) on drop.
pub struct OwnParts {
    dir: tempfile::TempDir,
    /// `(variable, port)` for each port `scripts/parts.sh` reads.
    ports: Vec<(&'static str, u16)>,
    http: reqwest::Client,
}

/// The parts `scripts/parts.sh` names by these pid files.
pub const VICTORIAMETRICS: &str = "victoriametrics";
pub const JAEGER: &str = "jaeger";
pub const COLLECTOR: &str = "otelcol";

impl OwnParts {
    /// Starts the three (installing what is missing) and waits until each
    /// answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_metrics_through(None)
    }

    /// The same, with the collector's metrics sent to `endpoint` (an OTLP
    /// base URL, `.../v1/metrics` appended) instead of the store: a tap that
    /// passes them on to [`Self::store`].
    pub fn start_with_metrics_through(endpoint: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("callchain-parts").tempdir()?;
        let mut ports = Vec::new();
        for name in [
            "OTELCOL_GRPC_PORT",
            "OTELCOL_HTTP_PORT",
            "OTELCOL_HEALTH_PORT",
            "OTELCOL_METRICS_PORT",
            "JAEGER_QUERY_PORT",
            "JAEGER_QUERY_GRPC_PORT",
            "JAEGER_GRPC_PORT",
            "JAEGER_HTTP_PORT",
            "JAEGER_HEALTH_PORT",
            "JAEGER_METRICS_PORT",
            "VICTORIAMETRICS_PORT",
        ] {
            ports.push((name, free_addr()?.port()));
        }
        let parts = Self {
            dir,
            ports,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        };
        let mut up = parts.script();
        up.arg("up").arg(parts.dir.path()).env("PARTS_WITHOUT_KAFKA", "1");
        if let Some(endpoint) = endpoint {
            up.env("PARTS_METRICS_ENDPOINT", endpoint);
        }
        let output = up.output()?;
        anyhow::ensure!(
            output.status.success(),
            "scripts/parts.sh up failed (it installs VictoriaMetrics, Jaeger and the collector with \
             `make tools` when missing):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(parts)
    }

    fn script(&self) -> Command {
        let mut command = Command::new(workspace_root().join("scripts/parts.sh"));
        for (name, port) in &self.ports {
            command.env(name, port.to_string());
        }
        command
    }

    /// The port `scripts/parts.sh` gave `variable` (`JAEGER_QUERY_PORT`, ...).
    pub fn port(&self, variable: &str) -> u16 {
        self.ports
            .iter()
            .find(|(name, _)| *name == variable)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no port {variable}"))
    }

    /// `(variable, port)` for each of them, for a script that reads them.
    pub fn port_vars(&self) -> &[(&'static str, u16)] {
        &self.ports
    }

    /// The collector's OTLP gRPC endpoint, for the services.
    pub fn otlp(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("OTELCOL_GRPC_PORT"))
    }

    /// Jaeger's query API.
    pub fn jaeger(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("JAEGER_QUERY_PORT"))
    }

    /// VictoriaMetrics (Prometheus' query API, vmui).
    pub fn store(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("VICTORIAMETRICS_PORT"))
    }

    /// The folder the parts' logs and data are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A part's log.
    pub fn log(&self, part: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{part}.log"))
    }

    /// Stops one part (`VICTORIAMETRICS`, `JAEGER`, `COLLECTOR`) at once,
    /// with SIGKILL, as a crash would.
    pub fn kill(&self, part: &str) -> anyhow::Result<()> {
        let pid_file = self.dir.path().join("pids").join(part);
        let pid = std::fs::read_to_string(&pid_file)?;
        let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} ({part})");
        std::fs::remove_file(pid_file)?;
        Ok(())
    }

    /// The store's answer to an instant PromQL query: its `data.result`.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.store()))
            .query(&[("query", promql)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        answer["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the store answered {answer}"))
    }

    /// The value of a query that yields one series, once `done` holds for
    /// it, polling up to `patience`; the last value (or none) otherwise.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        patience: Duration,
        done: impl Fn(f64) -> bool,
    ) -> Result<f64, Option<f64>> {
        let deadline = Instant::now() + patience;
        let mut last = None;
        loop {
            if let Ok(result) = self.query(promql).await
                && let Some(value) = result
                    .first()
                    .and_then(|series| series["value"][1].as_str())
                    .and_then(|value| value.parse::<f64>().ok())
            {
                last = Some(value);
                if done(value) {
                    return Ok(value);
                }
            }
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for OwnParts {
    fn drop(&mut self) {
        let _ = self.script().arg("down").arg(self.dir.path()).output();
    }
}
