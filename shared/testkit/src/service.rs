//! One service, in process, as if it were its own process: its own Tokio
//! runtime, whose threads log and trace through the service's own telemetry
//! (its `service.name`, its log buffer), on a port-0 listener.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use callchain_telemetry::{Export, SpanBatch, TelemetryConfig, TelemetryGuard, metrics::MetricsExporter};
use tokio::sync::oneshot;

use crate::logs::LogBuffer;

/// Where a service's telemetry goes: its spans as [`Export`] says, and its
/// metrics (to the same OTLP endpoint) unless `metrics` is
/// [`MetricsExporter::None`]. An [`Export`], or an endpoint, exports
/// metrics too.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub export: Export,
    pub metrics: MetricsExporter,
}

impl From<Export> for Telemetry {
    fn from(export: Export) -> Self {
        Self {
            export,
            metrics: MetricsExporter::Otlp,
        }
    }
}

impl From<Option<String>> for Telemetry {
    fn from(endpoint: Option<String>) -> Self {
        Export::from(endpoint).into()
    }
}

/// The span queue of the services started from now on in this process;
/// `None`: the shipped defaults. A benchmark sizes it for its bursts, then
/// measures the defaults too.
static SPAN_BATCH: std::sync::RwLock<Option<SpanBatch>> = std::sync::RwLock::new(None);

/// Sets the span queue of the services started from now on (see [`SPAN_BATCH`]).
pub fn set_span_batch(batch: Option<SpanBatch>) {
    *SPAN_BATCH.write().expect("span batch") = batch;
}

/// A running service. Dropping it stops it abruptly.
pub struct ServiceHandle {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub logs: LogBuffer,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<anyhow::Result<()>>>,
    telemetry: Option<Arc<TelemetryGuard>>,
}

impl ServiceHandle {
    /// Starts `serve(listener, shutdown)` for `name` on a runtime of its own,
    /// its spans exported as `export` says (an OTLP endpoint, `None`, an
    /// [`Export`], or a [`Telemetry`]).
    /// The telemetry exporter runs on the caller's runtime (it must outlive
    /// the services' runtimes to flush their last spans).
    pub fn spawn<F, Fut>(name: &'static str, export: impl Into<Telemetry>, serve: F) -> anyhow::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::spawn_at("127.0.0.1:0".parse()?, name, export, serve)
    }

    /// The same, on `addr`: a service started again where a stopped one
    /// listened, so its callers find it at the address they know.
    pub fn spawn_at<F, Fut>(
        addr: SocketAddr,
        name: &'static str,
        export: impl Into<Telemetry>,
        serve: F,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let telemetry = export.into();
        let mut config = TelemetryConfig::new(name, telemetry.export);
        config.metrics = telemetry.metrics;
        config.log_filter = "info,sqlx=warn,h2=warn,tower=warn,hyper=warn".to_owned();
        // A test reads a line as soon as it is logged, so each line is
        // written in the thread that logs it; a benchmark that sets
        // LOG_QUEUE_LINES in its process measures the queue a process has.
        config.log_queue_lines = std::env::var(callchain_telemetry::LOG_QUEUE_LINES.name)
            .ok()
            .and_then(|lines| lines.parse().ok())
            .unwrap_or(0);
        if let Some(batch) = *SPAN_BATCH.read().expect("span batch") {
            config.span_batch = batch;
        }
        let (dispatch, telemetry) = callchain_telemetry::build(&config, move || writer.clone())?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                // Every thread of this runtime reports as this service, for
                // its whole life.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()?;

        let std_listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("{name} cannot listen on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (finished_tx, finished_rx) = oneshot::channel();
        runtime.spawn(async move {
            let result = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(listener) => serve(listener, shutdown_rx).await,
                Err(error) => Err(error.into()),
            };
            if let Err(error) = &result {
                tracing::error!(error = %format!("{error:#}"), "service failed");
            }
            let _ = finished_tx.send(result);
        });
        Ok(Self {
            name,
            addr,
            logs,
            runtime: Some(runtime),
            shutdown: Some(shutdown_tx),
            finished: Some(finished_rx),
            telemetry: Some(Arc::new(telemetry)),
        })
    }

    /// Exports every span the service has finished. Blocks a blocking-pool
    /// thread, not the caller's runtime.
    pub async fn flush(&self) {
        if let Some(telemetry) = self.telemetry.clone() {
            let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
        }
    }

    /// Whether the service's task has ended (it failed or was stopped).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.finished {
            Some(finished) => !matches!(finished.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            None => true,
        }
    }

    /// Graceful stop: signals shutdown, waits for in-flight work to drain,
    /// and flushes telemetry. Returns how the service ended.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = match self.finished.take() {
            Some(finished) => tokio::time::timeout(Duration::from_secs(15), finished)
                .await
                .map_err(|_| anyhow::anyhow!("{} did not stop within 15 s", self.name))?
                .unwrap_or(Ok(())),
            None => Ok(()),
        };
        if let Some(telemetry) = self.telemetry.take() {
            let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
        }
        result
    }

    /// Abrupt stop, as a crash: every task is dropped where it stands.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // The guard's drop flushes spans; it blocks, so not on a runtime thread.
        if let Some(telemetry) = self.telemetry.take() {
            let _ = std::thread::spawn(move || drop(telemetry)).join();
        }
    }
}

/// Polls `probe` until it succeeds, for up to 30 s; fails early, with the
/// service's logs, if the service exits.
pub async fn wait_until<F, Fut>(service: &mut ServiceHandle, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match probe().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if service.has_exited() || tokio::time::Instant::now() >= deadline {
            return Err(error).with_context(|| {
                format!(
                    "{} did not become ready; its logs:\n{}",
                    service.name,
                    service.logs.text()
                )
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
