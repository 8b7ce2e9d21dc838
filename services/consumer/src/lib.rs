//! The consumer: user events from Kafka into Postgres, once per event id.
//!
//! - [`config`]: settings from the environment.
//! - `pipeline`: the consume loop: batches, retries, dead letters, offsets.
//! - `batch`: the pure bookkeeping of a batch: column arrays, offsets per
//!   partition, the backoff.
//! - `store`: the pool, the migrations, and the one statement that writes a
//!   batch, each event in its own database client span.
//! - `dead_letter`: unreadable messages to `user-events.dlq`, with their
//!   headers and the reason.
//! - `broker`: the Kafka clients, with librdkafka's logs in ours.
//! - `health`: `/healthz` and `/readyz`.
//! - `shutdown`: the stop signal, shared by the loop and the health server.
//!
//! [`run`] consumes, and serves health on a listener it is given, until the
//! shutdown future resolves, so `main` and the tests start it the same way.

mod batch;
mod broker;
pub mod config;
mod dead_letter;
mod health;
mod pipeline;
mod shutdown;
mod store;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use config::Config;

use crate::{health::Health, pipeline::Pipeline, shutdown::Shutdown};

/// Connects, migrates, serves `/healthz` and `/readyz` on `health_listener`
/// and consumes until `shutdown` resolves; then it finishes the batch in hand
/// (unless Postgres is down: that batch is left to be replayed), commits the
/// stored offsets and returns.
pub async fn run(
    config: Config,
    health_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new(shutdown);
    let pool = store::connect(&config).await?;
    let health = Arc::new(Health::default());
    let pipeline = Pipeline::new(&config, pool.clone(), health.clone(), shutdown.clone())?;

    tracing::info!(
        addr = %health_listener.local_addr()?,
        brokers = %config.brokers,
        batch_size = config.batch_size,
        batch_timeout_ms = config.batch_timeout.as_millis() as u64,
        "consumer starting"
    );
    let health_server = async {
        axum::serve(health_listener, health::router(health, pool))
            .with_graceful_shutdown(shutdown.wait())
            .await
            .context("the health server failed")
    };
    tokio::try_join!(health_server, pipeline.run())?;
    tracing::info!("consumer stopped");
    Ok(())
}

/// Probes `/healthz` on `addr`: the container health check, which needs no
/// tool the image does not ship.
pub async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host.as_str(), addr.port())),
    )
    .await??;
    stream
        .write_all(format!("GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await??;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(status_line.contains(" 200 "), "not healthy: {status_line}");
    Ok(())
}
