//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use callchain_runtime::env::{Env, SecretString};

/// Every variable this service reads (beside the telemetry's own).
pub const ENV_VARS: &[&str] = &[
    "USER_LISTEN_ADDR",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_PUBLISH_TIMEOUT_MS",
];

/// The variables without which it does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["DATABASE_URL"];

#[derive(Debug, Clone)]
pub struct Config {
    /// `USER_LISTEN_ADDR`, default `0.0.0.0:50051`.
    pub listen_addr: SocketAddr,
    /// `DATABASE_URL`, required. A secret: it carries the password.
    pub database_url: SecretString,
    /// `DATABASE_MAX_CONNECTIONS`, default 10.
    pub max_connections: u32,
    /// `ADMIN_EMAIL` and `ADMIN_PASSWORD`: an administrator created at start
    /// when no user has that email. Both or neither. The password is a secret.
    pub admin: Option<(String, SecretString)>,
    /// `KAFKA_BROKERS`, default `127.0.0.1:9092`: where the outbox relay
    /// publishes the events.
    pub kafka_brokers: String,
    /// `KAFKA_TOPIC`, default `user-events`.
    pub kafka_topic: String,
    /// `KAFKA_PUBLISH_TIMEOUT_MS`, default 5000: how long the relay waits for
    /// the broker to acknowledge a batch before it rolls back and retries.
    pub publish_timeout: Duration,
}

impl Config {
    /// Defaults for tests: the given database, administrator, broker and
    /// topic, on a port-0 listener the test binds.
    pub fn for_tests(
        database_url: &str,
        admin: Option<(String, String)>,
        kafka_brokers: &str,
        kafka_topic: &str,
    ) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            database_url: database_url.into(),
            max_connections: 5,
            admin: admin.map(|(email, password)| (email, password.into())),
            kafka_brokers: kafka_brokers.to_owned(),
            kafka_topic: kafka_topic.to_owned(),
            publish_timeout: Duration::from_secs(3),
        }
    }

    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let admin = match (env.var("ADMIN_EMAIL"), env.secret("ADMIN_PASSWORD")) {
            (Some(email), Some(password)) => Some((email, password)),
            (None, None) => None,
            _ => anyhow::bail!("set both ADMIN_EMAIL and ADMIN_PASSWORD, or neither"),
        };
        Ok(Self {
            listen_addr: env.parse_or(
                "USER_LISTEN_ADDR",
                "an address such as 0.0.0.0:50051",
                ([0, 0, 0, 0], 50051).into(),
            )?,
            database_url: env
                .secret("DATABASE_URL")
                .context("DATABASE_URL is required, e.g. postgres://callchain:callchain@127.0.0.1:5432/callchain")?,
            max_connections: env.parse_or("DATABASE_MAX_CONNECTIONS", "a whole number", 10)?,
            admin,
            kafka_brokers: env.var("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned()),
            kafka_topic: env
                .var("KAFKA_TOPIC")
                .unwrap_or_else(|| callchain_events::TOPIC.to_owned()),
            publish_timeout: Duration::from_millis(env.parse_or(
                "KAFKA_PUBLISH_TIMEOUT_MS",
                "a whole number",
                5_000,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_database_password_or_the_admin_password() {
        let env = Env::from_pairs([
            (
                "DATABASE_URL",
                "postgres://callchain:db-pass-never-shown@127.0.0.1/callchain",
            ),
            ("ADMIN_EMAIL", "admin@example.com"),
            ("ADMIN_PASSWORD", "admin-pass-never-shown"),
        ]);
        let debug = format!("{:?}", Config::from_env(&env).unwrap());
        assert!(debug.contains("admin@example.com"), "{debug}");
        assert!(!debug.contains("never-shown"), "{debug}");
    }
}
