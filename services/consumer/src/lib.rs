//! The consumer: user events from Kafka into Postgres, once per event id.
//!
//! - [`config`]: settings from the environment.
//! - `pipeline`: the consume loop: batches, retries, dead letters, offsets,
//!   and a fresh Kafka client when one fails.
//! - `message`: a message in hand with its process span, and what it turns
//!   out to be: a readable event or a dead letter.
//! - `batch`: the pure bookkeeping of a batch: column arrays, offsets per
//!   partition, the backoff.
//! - `store`: the pool, the migrations, and the one statement that writes a
//!   batch of rows, each in a database client span under the span it is
//!   given, never an older event of a user after a newer one.
//! - `dead_letter`: unreadable messages to `user-events.dlq`, with their
//!   headers and the reason.
//! - `broker`: the Kafka clients, with librdkafka's logs in ours, and what
//!   an error from the consumer means (passing, a partition's end, or a
//!   client to replace).
//! - `health`: `/healthz` and `/readyz` (ready while it consumes and can
//!   write).
//! - `shutdown`: the stop signal, shared by the loop and the health server.
//!
//! [`run`] consumes, and serves health on a listener it is given, until the
//! shutdown future resolves, so `main` and the tests start it the same way;
//! [`Config`] tells the shared runner (`callchain_runtime::runner`) how to
//! start it as a process.

mod batch;
mod broker;
mod close;
pub mod config;
mod dead_letter;
mod health;
mod lag;
mod message;
mod pipeline;
mod shutdown;
pub mod store;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use batch::EventRow;
pub use broker::ASSIGNMENT_STRATEGY;
pub use broker::client_config as kafka_client_config;
pub use config::Config;

use crate::{health::Health, pipeline::Pipeline, shutdown::Shutdown};

/// Connects, migrates, serves `/healthz` and `/readyz` on `health_listener`
/// and consumes until `shutdown` resolves; then it finishes the batch in hand
/// (unless Postgres is down: that batch is left to be replayed), commits the
/// stored offsets (for at most half of `SHUTDOWN_TIMEOUT_SECONDS`: what is
/// not committed is replayed) and returns.
pub async fn run(
    config: Config,
    health_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new(shutdown);
    if !config.process_delay.is_zero() {
        tracing::warn!(
            delay_ms = config.process_delay.as_millis() as u64,
            "a delay is injected per message (FAULT_PROCESS_DELAY_MS)"
        );
    }
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

/// Probes `/healthz` on `addr`: the container health check.
pub async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    Ok(callchain_runtime::lifecycle::http_probe(addr, "/healthz").await?)
}

/// What the shared runner (`callchain_runtime::runner`) needs to start
/// the consumer as a process.
impl callchain_runtime::runner::Service for Config {
    const NAME: &'static str = "consumer";

    fn from_env(env: &callchain_runtime::env::Env) -> anyhow::Result<Self> {
        Config::from_env(env)
    }

    fn listen_addr(&self) -> SocketAddr {
        self.health_addr
    }

    async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
        healthcheck(addr).await
    }

    async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: callchain_runtime::lifecycle::BoxedSignal,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
}
