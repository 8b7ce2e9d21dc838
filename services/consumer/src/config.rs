//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use callchain_runtime::{
    env::{Env, SecretString},
    lifecycle,
};

/// Every variable this service reads (beside the telemetry's own).
pub const ENV_VARS: &[&str] = &[
    "CONSUMER_HEALTH_ADDR",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_GROUP_INSTANCE_ID",
    "CONSUMER_BATCH_SIZE",
    "CONSUMER_BATCH_TIMEOUT_MS",
    "FAULT_PROCESS_DELAY_MS",
    lifecycle::SHUTDOWN_TIMEOUT_VAR,
];

/// The variables without which it does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["DATABASE_URL"];

#[derive(Debug, Clone)]
pub struct Config {
    /// `CONSUMER_HEALTH_ADDR`, default `0.0.0.0:8081`: `/healthz` and `/readyz`.
    pub health_addr: SocketAddr,
    /// `DATABASE_URL`, required. A secret: it carries the password.
    pub database_url: SecretString,
    /// `DATABASE_MAX_CONNECTIONS`, default 4.
    pub max_connections: u32,
    /// `KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub brokers: String,
    /// `KAFKA_TOPIC`, default `user-events`: what it reads; dead letters go
    /// to `<topic>.dlq`.
    pub topic: String,
    /// `KAFKA_GROUP_ID`, default `user-events-writer`.
    pub group_id: String,
    /// `KAFKA_GROUP_INSTANCE_ID`, unset by default: a stable name for this
    /// member of the group (static membership). A consumer that restarts
    /// under the same name, after a crash too, gets its partitions back at
    /// once instead of after the dead member's session times out. Two
    /// running consumers must never share one.
    pub group_instance_id: Option<String>,
    /// `CONSUMER_BATCH_SIZE`, default 500: most messages per transaction.
    pub batch_size: usize,
    /// `CONSUMER_BATCH_TIMEOUT_MS`, default 20: longest wait to fill a batch.
    pub batch_timeout: Duration,
    /// `FAULT_PROCESS_DELAY_MS`, default 0: a delay injected per message
    /// before its batch is written, for chaos runs (a slow consumer). Never
    /// set it in production.
    pub process_delay: Duration,
    /// `SHUTDOWN_TIMEOUT_SECONDS` (the lifecycle's default): how long the
    /// drain after SIGTERM may last, the last commit included.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Defaults for tests: the given database, broker, topic and group; the
    /// health endpoint on a port-0 listener the test binds.
    pub fn for_tests(database_url: &str, brokers: &str, topic: &str, group_id: &str) -> Self {
        Self {
            health_addr: "127.0.0.1:0".parse().expect("a valid address"),
            database_url: database_url.into(),
            max_connections: 4,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
            group_instance_id: None,
            batch_size: 500,
            batch_timeout: Duration::from_millis(20),
            process_delay: Duration::ZERO,
            shutdown_timeout: lifecycle::DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let batch_size = env.parse_or("CONSUMER_BATCH_SIZE", "a whole number", 500usize)?;
        anyhow::ensure!(batch_size > 0, "CONSUMER_BATCH_SIZE must be at least 1");
        Ok(Self {
            health_addr: env.parse_or(
                "CONSUMER_HEALTH_ADDR",
                "an address such as 0.0.0.0:8081",
                ([0, 0, 0, 0], 8081).into(),
            )?,
            database_url: env
                .secret("DATABASE_URL")
                .context("DATABASE_URL is required, e.g. postgres://callchain:callchain@127.0.0.1:5432/callchain")?,
            max_connections: env.parse_or("DATABASE_MAX_CONNECTIONS", "a whole number", 4)?,
            brokers: env.var("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            topic: env
                .var("KAFKA_TOPIC")
                .unwrap_or_else(|| callchain_events::TOPIC.to_owned()),
            group_id: env
                .var("KAFKA_GROUP_ID")
                .unwrap_or_else(|| "user-events-writer".to_owned()),
            group_instance_id: env.var("KAFKA_GROUP_INSTANCE_ID"),
            batch_size,
            batch_timeout: Duration::from_millis(env.parse_or("CONSUMER_BATCH_TIMEOUT_MS", "a whole number", 20)?),
            process_delay: Duration::from_millis(env.parse_or(
                "FAULT_PROCESS_DELAY_MS",
                "a whole number of milliseconds",
                0,
            )?),
            shutdown_timeout: lifecycle::shutdown_timeout(env)?,
        })
    }
}
