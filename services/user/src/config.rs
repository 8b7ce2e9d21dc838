//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use callchain_runtime::env::{Env, SecretString};

use crate::fault::Faults;

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
    "PASSWORD_HASH_CONCURRENCY",
    "FAULT_LATENCY_MS",
    "FAULT_ERROR_RATE",
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT_VAR,
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
    /// `PASSWORD_HASH_CONCURRENCY`, default [`default_hash_concurrency`]
    /// (the core count): how many argon2 hashes (a registration, a password
    /// change, a login) run at once; new passwords may hold all but one, so
    /// logins never queue behind registrations. A call beyond it waits for
    /// a slot within its deadline, then answers UNAVAILABLE.
    pub password_hash_concurrency: usize,
    /// `FAULT_LATENCY_MS` (default 0) and `FAULT_ERROR_RATE` (0 to 1,
    /// default 0): faults injected into every `UserService` call, for chaos
    /// runs. Never set them in production.
    pub faults: Faults,
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
            password_hash_concurrency: default_hash_concurrency(),
            faults: Faults::default(),
        }
    }

    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let admin = match (env.var("ADMIN_EMAIL"), env.secret("ADMIN_PASSWORD")) {
            (Some(email), Some(password)) => Some((email, password)),
            (None, None) => None,
            _ => anyhow::bail!("set both ADMIN_EMAIL and ADMIN_PASSWORD, or neither"),
        };
        let password_hash_concurrency = env.parse_or(
            "PASSWORD_HASH_CONCURRENCY",
            "a whole number of at least 1",
            default_hash_concurrency(),
        )?;
        anyhow::ensure!(
            password_hash_concurrency >= 1,
            "PASSWORD_HASH_CONCURRENCY must be at least 1: with no slot no password could be checked"
        );
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
            password_hash_concurrency,
            faults: faults(env)?,
        })
    }
}

/// `PASSWORD_HASH_CONCURRENCY`'s default: one hash per core, as hashing is
/// CPU-bound; more at once would only queue on the cores and add memory.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The injected faults: none unless set.
fn faults(env: &Env) -> anyhow::Result<Faults> {
    let error_rate: f64 = env.parse_or("FAULT_ERROR_RATE", "a fraction from 0 to 1", 0.0)?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&error_rate),
        "FAULT_ERROR_RATE must be a fraction from 0 to 1, not {error_rate}"
    );
    Ok(Faults {
        latency: Duration::from_millis(env.parse_or("FAULT_LATENCY_MS", "a whole number of milliseconds", 0)?),
        error_rate,
    })
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

    #[test]
    fn faults_are_off_unless_set_and_a_rate_outside_0_to_1_is_refused() {
        let url = ("DATABASE_URL", "postgres://x@127.0.0.1/x");
        assert!(!Config::from_env(&Env::from_pairs([url])).unwrap().faults.is_active());
        let env = Env::from_pairs([url, ("FAULT_LATENCY_MS", "250"), ("FAULT_ERROR_RATE", "0.1")]);
        assert_eq!(
            Config::from_env(&env).unwrap().faults,
            Faults {
                latency: Duration::from_millis(250),
                error_rate: 0.1
            }
        );
        let env = Env::from_pairs([url, ("FAULT_ERROR_RATE", "1.5")]);
        assert!(Config::from_env(&env).is_err());
    }

    #[test]
    fn password_hash_concurrency_defaults_to_the_core_count_and_refuses_0() {
        let url = ("DATABASE_URL", "postgres://x@127.0.0.1/x");
        let config = Config::from_env(&Env::from_pairs([url])).unwrap();
        assert_eq!(config.password_hash_concurrency, default_hash_concurrency());
        let env = Env::from_pairs([url, ("PASSWORD_HASH_CONCURRENCY", "3")]);
        assert_eq!(Config::from_env(&env).unwrap().password_hash_concurrency, 3);
        let env = Env::from_pairs([url, ("PASSWORD_HASH_CONCURRENCY", "0")]);
        assert!(Config::from_env(&env).is_err());
    }
}
