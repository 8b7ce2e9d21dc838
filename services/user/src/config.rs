//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use callchain_runtime::env::{Env, SecretString, Setting};

use crate::fault::Faults;

pub const USER_LISTEN_ADDR: Setting = Setting {
    name: "USER_LISTEN_ADDR",
    default: Some("0.0.0.0:50051"),
    doc: "Where the gRPC service listens (`user.v1.UserService`, health, reflection).",
};
pub const DATABASE_URL: Setting = Setting {
    name: "DATABASE_URL",
    default: None,
    doc: "Required: the Postgres database of the users and the outbox. A secret (it carries the password), never \
          printed.",
};
pub const DATABASE_MAX_CONNECTIONS: Setting = Setting {
    name: "DATABASE_MAX_CONNECTIONS",
    default: Some("10"),
    doc: "The most connections the pool opens to Postgres.",
};
pub const ADMIN_EMAIL: Setting = Setting {
    name: "ADMIN_EMAIL",
    default: None,
    doc: "With `ADMIN_PASSWORD`: an administrator created at start when no user has that email. Both or neither; \
          unset, none is created.",
};
pub const ADMIN_PASSWORD: Setting = Setting {
    name: "ADMIN_PASSWORD",
    default: None,
    doc: "The password of `ADMIN_EMAIL`'s administrator; a secret, never printed.",
};
pub const KAFKA_BROKERS: Setting = Setting {
    name: "KAFKA_BROKERS",
    default: Some("127.0.0.1:9092"),
    doc: "Where the outbox relay publishes the events (comma-separated `host:port`).",
};
pub const KAFKA_TOPIC: Setting = Setting {
    name: "KAFKA_TOPIC",
    default: Some(callchain_events::TOPIC),
    doc: "The topic of the events.",
};
pub const KAFKA_PUBLISH_TIMEOUT_MS: Setting = Setting {
    name: "KAFKA_PUBLISH_TIMEOUT_MS",
    default: Some("5000"),
    doc: "How long the outbox relay waits for the broker to acknowledge an event before it counts the send as \
          failed and retries it later (the event, and its user's events after it, stay in the outbox), in \
          milliseconds.",
};
/// The most shards `RELAY_SHARDS` may ask for.
pub const MAX_RELAY_SHARDS: u32 = 1024;

pub const RELAY_SHARDS: Setting = Setting {
    name: "RELAY_SHARDS",
    default: Some("8"),
    doc: "How many shards the outbox relay splits the events into, by user (1 to 1024): each shard has its own \
          advisory lock and is published by one replica at a time, the replicas sharing the shards, so more \
          replicas publish more. Every replica must have the same; replicas started with a new value publish \
          once none with the old one runs.",
};
pub const PASSWORD_HASH_CONCURRENCY: Setting = Setting {
    name: "PASSWORD_HASH_CONCURRENCY",
    default: None,
    doc: "How many argon2 hashes (a registration, a password change, a login) run at once; unset, one per core. \
          New passwords may hold all but one, so logins never queue behind registrations; a call beyond it waits \
          for a slot within its deadline, then answers `503` with `Retry-After` (UNAVAILABLE).",
};
pub const FAULT_LATENCY_MS: Setting = Setting {
    name: "FAULT_LATENCY_MS",
    default: Some("0"),
    doc: "**Chaos only.** A delay, in milliseconds, before every `UserService` call (health checks are spared), \
          inside its server span. Never set it in production.",
};
pub const FAULT_ERROR_RATE: Setting = Setting {
    name: "FAULT_ERROR_RATE",
    default: Some("0"),
    doc: "**Chaos only.** The fraction, 0 to 1, of `UserService` calls answered `UNAVAILABLE`, evenly spread. Never \
          set it in production.",
};

/// Every variable this service reads (beside the telemetry's own).
pub const SETTINGS: &[Setting] = &[
    USER_LISTEN_ADDR,
    DATABASE_URL,
    DATABASE_MAX_CONNECTIONS,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    KAFKA_BROKERS,
    KAFKA_TOPIC,
    KAFKA_PUBLISH_TIMEOUT_MS,
    RELAY_SHARDS,
    PASSWORD_HASH_CONCURRENCY,
    FAULT_LATENCY_MS,
    FAULT_ERROR_RATE,
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT,
];

/// The variables without which it does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &[DATABASE_URL.name];

/// Each field's setting, with its default, is in [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct Config {
    /// [`USER_LISTEN_ADDR`].
    pub listen_addr: SocketAddr,
    /// [`DATABASE_URL`]: a secret, it carries the password.
    pub database_url: SecretString,
    /// [`DATABASE_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// [`ADMIN_EMAIL`] and [`ADMIN_PASSWORD`] (a secret).
    pub admin: Option<(String, SecretString)>,
    /// [`KAFKA_BROKERS`].
    pub kafka_brokers: String,
    /// [`KAFKA_TOPIC`].
    pub kafka_topic: String,
    /// [`KAFKA_PUBLISH_TIMEOUT_MS`].
    pub publish_timeout: Duration,
    /// [`RELAY_SHARDS`].
    pub relay_shards: u32,
    /// [`PASSWORD_HASH_CONCURRENCY`]; unset, [`default_hash_concurrency`].
    pub password_hash_concurrency: usize,
    /// [`FAULT_LATENCY_MS`] and [`FAULT_ERROR_RATE`]: faults injected into
    /// every `UserService` call, for chaos runs.
    pub faults: Faults,
}

const WHOLE: &str = "a whole number";

impl Config {
    /// Defaults for tests: the given database, administrator, broker and
    /// topic, on a port-0 listener the test binds; a smaller pool and a
    /// shorter publish timeout than a deployment's.
    pub fn for_tests(
        database_url: &str,
        admin: Option<(String, String)>,
        kafka_brokers: &str,
        kafka_topic: &str,
    ) -> Self {
        let env = Env::from_pairs([
            (DATABASE_URL.name, database_url),
            (KAFKA_BROKERS.name, kafka_brokers),
            (KAFKA_TOPIC.name, kafka_topic),
        ]);
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            max_connections: 5,
            admin: admin.map(|(email, password)| (email, password.into())),
            publish_timeout: Duration::from_secs(3),
            ..Self::from_env(&env).expect("the defaults and a database URL")
        }
    }

    /// Reads the variables in [`SETTINGS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let admin = match (env.var(ADMIN_EMAIL.name), env.secret(ADMIN_PASSWORD.name)) {
            (Some(email), Some(password)) => Some((email, password)),
            (None, None) => None,
            _ => anyhow::bail!("set both ADMIN_EMAIL and ADMIN_PASSWORD, or neither"),
        };
        let password_hash_concurrency = env.parse_or(
            PASSWORD_HASH_CONCURRENCY.name,
            "a whole number of at least 1",
            default_hash_concurrency(),
        )?;
        anyhow::ensure!(
            password_hash_concurrency >= 1,
            "PASSWORD_HASH_CONCURRENCY must be at least 1: with no slot no password could be checked"
        );
        let relay_shards: u32 = env.setting(&RELAY_SHARDS, "a whole number from 1 to 1024")?;
        anyhow::ensure!(
            (1..=MAX_RELAY_SHARDS).contains(&relay_shards),
            "RELAY_SHARDS must be from 1 to {MAX_RELAY_SHARDS}, not {relay_shards}"
        );
        Ok(Self {
            listen_addr: env.setting(&USER_LISTEN_ADDR, "an address such as 0.0.0.0:50051")?,
            database_url: env
                .secret(DATABASE_URL.name)
                .context("DATABASE_URL is required, e.g. postgres://callchain:callchain@127.0.0.1:5432/callchain")?,
            max_connections: env.setting(&DATABASE_MAX_CONNECTIONS, WHOLE)?,
            admin,
            kafka_brokers: env.setting(&KAFKA_BROKERS, "a list of brokers")?,
            kafka_topic: env.setting(&KAFKA_TOPIC, "a topic name")?,
            publish_timeout: Duration::from_millis(env.setting(&KAFKA_PUBLISH_TIMEOUT_MS, WHOLE)?),
            relay_shards,
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
    let error_rate: f64 = env.setting(&FAULT_ERROR_RATE, "a fraction from 0 to 1")?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&error_rate),
        "FAULT_ERROR_RATE must be a fraction from 0 to 1, not {error_rate}"
    );
    Ok(Faults {
        latency: Duration::from_millis(env.setting(&FAULT_LATENCY_MS, "a whole number of milliseconds")?),
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
    fn relay_shards_defaults_to_8_and_refuses_0_and_more_than_1024() {
        let url = ("DATABASE_URL", "postgres://x@127.0.0.1/x");
        assert_eq!(Config::from_env(&Env::from_pairs([url])).unwrap().relay_shards, 8);
        let env = Env::from_pairs([url, ("RELAY_SHARDS", "1024")]);
        assert_eq!(Config::from_env(&env).unwrap().relay_shards, 1024);
        for refused in ["0", "1025", "-1", "eight"] {
            let env = Env::from_pairs([url, ("RELAY_SHARDS", refused)]);
            assert!(Config::from_env(&env).is_err(), "{refused}");
        }
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
