//! Scenario 6: the OTLP collector down for 30 s.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use callchain_e2e::load::percentile;
use callchain_testkit::process::{ServiceProcess, free_addr};

use crate::harness::{Parts, Row, Settings, all_alive, audit, setting, start_load};

/// 6: the OTLP collector (a process of its own) down for 30 s: requests do
/// not slow down, the dropped spans are counted and logged once, and export
/// resumes.
pub async fn collector_down(settings: &Settings, row: &mut Row) -> anyhow::Result<()> {
    let parts = Parts::start().await?;
    let mut collector = Collector::start()?;
    let (mut services, load_users, load) = start_load(settings, &parts, 1, &collector.endpoint(), |api| api).await?;
    let phase = settings.secs(30, 10);
    tokio::time::sleep(phase).await;
    let stopped = load.now();
    collector.stop();
    tokio::time::sleep(phase).await;
    let restarted = load.now();
    let resumed_at = Instant::now();
    collector.restart()?;
    // Export resumes: every service says so.
    let mut resumed = None;
    while resumed_at.elapsed() < Duration::from_secs(30) {
        let all = services
            .users
            .iter()
            .map(|(_, p)| p)
            .chain([&services.api.1, &services.consumer.1])
            .all(|p| p.messages().iter().any(|m| m.starts_with("span export resumed")));
        if all {
            resumed = Some(resumed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settings.secs(5, 2)).await;
    let answers = load.stop().await;
    if let Some(took) = resumed {
        row.recovered(took);
    }
    audit(row, &parts, &load_users, &answers).await?;

    let p99 = |from: Duration, to: Duration| {
        let mut latencies: Vec<f64> = answers
            .iter()
            .filter(|a| a.sent >= from && a.sent < to)
            .map(|a| a.latency.as_secs_f64() * 1000.0)
            .collect();
        latencies.sort_by(f64::total_cmp);
        percentile(&latencies, 99.0)
    };
    let (before, during) = (p99(Duration::ZERO, stopped), p99(stopped, restarted));
    row.check(
        during <= before * 1.1,
        format!("p99 {before:.1} ms with the collector, {during:.1} ms without it (< 10% more)"),
    );
    for (_, process) in services.users.iter().map(|(s, p)| (s, p)).chain([
        (&services.api.0, &services.api.1),
        (&services.consumer.0, &services.consumer.1),
    ]) {
        let failing = process
            .messages()
            .iter()
            .filter(|m| m.starts_with("span export failing"))
            .count();
        row.check(
            failing == 1,
            format!("{} logged the failing export once ({failing} times)", process.name()),
        );
    }
    row.must(resumed.is_some(), "span export resumes by itself in every service");
    all_alive(row, &mut services);
    Ok(())
}

/// The collector binary the test parts run (scripts/parts.sh), on ports of
/// its own, forwarding to the test parts' Jaeger.
pub(crate) struct Collector {
    process: Option<ServiceProcess>,
    grpc: std::net::SocketAddr,
    env: Vec<(String, String)>,
    program: String,
}

impl Collector {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let program = callchain_e2e::tools::script_tool("OTELCOL_BIN", "scripts/install-otelcol.sh")
            .map_err(anyhow::Error::msg)?;
        let grpc = free_addr()?;
        // The test parts' Jaeger takes OTLP on 25317 (scripts/test-parts.sh).
        let jaeger = setting("TEST_JAEGER_GRPC_PORT").unwrap_or_else(|| "25317".into());
        let env = vec![
            ("OTELCOL_OTLP_GRPC_ENDPOINT".to_owned(), grpc.to_string()),
            ("OTELCOL_OTLP_HTTP_ENDPOINT".to_owned(), free_addr()?.to_string()),
            ("OTELCOL_HEALTH_ENDPOINT".to_owned(), free_addr()?.to_string()),
            ("OTELCOL_METRICS_PORT".to_owned(), free_addr()?.port().to_string()),
            ("OTELCOL_JAEGER_ENDPOINT".to_owned(), format!("127.0.0.1:{jaeger}")),
            // And the test parts' VictoriaMetrics takes its metrics on 28428.
            (
                "OTELCOL_VICTORIAMETRICS_ENDPOINT".to_owned(),
                format!(
                    "http://127.0.0.1:{}/opentelemetry",
                    setting("TEST_VICTORIAMETRICS_PORT").unwrap_or_else(|| "28428".into())
                ),
            ),
            ("OTELCOL_METRICS_HOST".to_owned(), "127.0.0.1".to_owned()),
        ];
        let mut collector = Self {
            process: None,
            grpc,
            env,
            program: program.to_string_lossy().into_owned(),
        };
        collector.restart()?;
        Ok(collector)
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../observability/otel-collector.yaml");
        let mut process = ServiceProcess::spawn_with_args(
            "otelcol",
            &self.program,
            &[
                format!("--config={}", config.display()),
                // Its start-up lines would bury the table.
                "--set=service.telemetry.logs.level=warn".to_owned(),
            ],
            self.env.clone(),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_err() {
            if let Some(status) = process.try_exit() {
                anyhow::bail!("the collector exited at start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the collector does not listen after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process = Some(process);
        Ok(())
    }
}
