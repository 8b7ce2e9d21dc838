//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use callchain_runtime::{
    env::{Env, SecretString, Setting},
    lifecycle,
};

pub const CONSUMER_HEALTH_ADDR: Setting = Setting {
    name: "CONSUMER_HEALTH_ADDR",
    default: Some("0.0.0.0:8081"),
    doc: "Where `/healthz` and `/readyz` are served.",
};
pub const DATABASE_URL: Setting = Setting {
    name: "DATABASE_URL",
    default: None,
    doc: "Required: the Postgres database the events are written into. A secret (it carries the password), never \
          printed.",
};
pub const DATABASE_MAX_CONNECTIONS: Setting = Setting {
    name: "DATABASE_MAX_CONNECTIONS",
    default: Some("4"),
    doc: "The most connections the pool opens to Postgres.",
};
pub const KAFKA_BROKERS: Setting = Setting {
    name: "KAFKA_BROKERS",
    default: Some("127.0.0.1:9092"),
    doc: "Where the events are read from (comma-separated `host:port`).",
};
pub const KAFKA_TOPIC: Setting = Setting {
    name: "KAFKA_TOPIC",
    default: Some(callchain_events::TOPIC),
    doc: "The topic it reads; dead letters go to `<topic>.dlq`.",
};
pub const KAFKA_GROUP_ID: Setting = Setting {
    name: "KAFKA_GROUP_ID",
    default: Some("user-events-writer"),
    doc: "The consumer group.",
};
pub const KAFKA_GROUP_INSTANCE_ID: Setting = Setting {
    name: "KAFKA_GROUP_INSTANCE_ID",
    default: None,
    doc: "Unset by default (`consumer-{hostname}` in `make up`, `consumer-1` in `make dev`, the pod's name in \
          the Helm chart): a stable name for this member of the group (static membership), so a consumer that \
          restarts, after a crash too, gets its partitions back at once instead of after the dead member's session \
          times out. `{hostname}` in it stands for the machine's hostname, so replicas given one environment \
          (`docker compose up --scale consumer=2`) each get their own. Never give two running consumers the same \
          one.",
};

/// In `KAFKA_GROUP_INSTANCE_ID`, what stands for the machine's hostname.
pub const HOSTNAME_PLACEHOLDER: &str = "{hostname}";
pub const CONSUMER_BATCH_SIZE: Setting = Setting {
    name: "CONSUMER_BATCH_SIZE",
    default: Some("500"),
    doc: "The most messages written in one transaction.",
};
pub const CONSUMER_BATCH_TIMEOUT_MS: Setting = Setting {
    name: "CONSUMER_BATCH_TIMEOUT_MS",
    default: Some("20"),
    doc: "The longest wait to fill a batch, in milliseconds.",
};
pub const FAULT_PROCESS_DELAY_MS: Setting = Setting {
    name: "FAULT_PROCESS_DELAY_MS",
    default: Some("0"),
    doc: "**Chaos only.** A delay per message, in milliseconds, before its batch is written: a slow consumer. \
          Never set it in production.",
};

/// Every variable this service reads (beside the telemetry's own).
pub const SETTINGS: &[Setting] = &[
    CONSUMER_HEALTH_ADDR,
    DATABASE_URL,
    DATABASE_MAX_CONNECTIONS,
    KAFKA_BROKERS,
    KAFKA_TOPIC,
    KAFKA_GROUP_ID,
    KAFKA_GROUP_INSTANCE_ID,
    CONSUMER_BATCH_SIZE,
    CONSUMER_BATCH_TIMEOUT_MS,
    FAULT_PROCESS_DELAY_MS,
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT,
];

/// The variables without which it does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &[DATABASE_URL.name];

/// Each field's setting, with its default, is in [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct Config {
    /// [`CONSUMER_HEALTH_ADDR`].
    pub health_addr: SocketAddr,
    /// [`DATABASE_URL`]: a secret, it carries the password.
    pub database_url: SecretString,
    /// [`DATABASE_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// [`KAFKA_BROKERS`].
    pub brokers: String,
    /// [`KAFKA_TOPIC`].
    pub topic: String,
    /// [`KAFKA_GROUP_ID`].
    pub group_id: String,
    /// [`KAFKA_GROUP_INSTANCE_ID`]: static membership.
    pub group_instance_id: Option<String>,
    /// [`CONSUMER_BATCH_SIZE`].
    pub batch_size: usize,
    /// [`CONSUMER_BATCH_TIMEOUT_MS`].
    pub batch_timeout: Duration,
    /// [`FAULT_PROCESS_DELAY_MS`]: for chaos runs only.
    pub process_delay: Duration,
    /// [`lifecycle::SHUTDOWN_TIMEOUT`]: how long the
    /// drain after SIGTERM may last, the last commit included.
    pub shutdown_timeout: Duration,
}

const WHOLE: &str = "a whole number";

impl Config {
    /// Defaults for tests: the given database, broker, topic and group; the
    /// health endpoint on a port-0 listener the test binds.
    pub fn for_tests(database_url: &str, brokers: &str, topic: &str, group_id: &str) -> Self {
        let env = Env::from_pairs([
            (DATABASE_URL.name, database_url),
            (KAFKA_BROKERS.name, brokers),
            (KAFKA_TOPIC.name, topic),
            (KAFKA_GROUP_ID.name, group_id),
        ]);
        Self {
            health_addr: "127.0.0.1:0".parse().expect("a valid address"),
            ..Self::from_env(&env).expect("the defaults and a database URL")
        }
    }

    /// Reads the variables in [`SETTINGS`] from `env`, on this machine (its
    /// hostname fills a [`HOSTNAME_PLACEHOLDER`] in the instance id).
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Self::from_env_on(env, host.trim())
    }

    /// [`Config::from_env`] on the host named `host`.
    pub fn from_env_on(env: &Env, host: &str) -> anyhow::Result<Self> {
        let group_instance_id = match env.var(KAFKA_GROUP_INSTANCE_ID.name) {
            Some(id) if id.contains(HOSTNAME_PLACEHOLDER) => {
                anyhow::ensure!(
                    !host.is_empty(),
                    "KAFKA_GROUP_INSTANCE_ID names {HOSTNAME_PLACEHOLDER}, but this machine's hostname cannot be read"
                );
                Some(id.replace(HOSTNAME_PLACEHOLDER, host))
            }
            id => id,
        };
        let batch_size = env.setting(&CONSUMER_BATCH_SIZE, WHOLE)?;
        anyhow::ensure!(batch_size > 0, "CONSUMER_BATCH_SIZE must be at least 1");
        Ok(Self {
            health_addr: env.setting(&CONSUMER_HEALTH_ADDR, "an address such as 0.0.0.0:8081")?,
            database_url: env
                .secret(DATABASE_URL.name)
                .context("DATABASE_URL is required, e.g. postgres://callchain:callchain@127.0.0.1:5432/callchain")?,
            max_connections: env.setting(&DATABASE_MAX_CONNECTIONS, WHOLE)?,
            brokers: env.setting(&KAFKA_BROKERS, "a list of brokers")?,
            topic: env.setting(&KAFKA_TOPIC, "a topic name")?,
            group_id: env.setting(&KAFKA_GROUP_ID, "a group name")?,
            group_instance_id,
            batch_size,
            batch_timeout: Duration::from_millis(env.setting(&CONSUMER_BATCH_TIMEOUT_MS, WHOLE)?),
            process_delay: Duration::from_millis(
                env.setting(&FAULT_PROCESS_DELAY_MS, "a whole number of milliseconds")?,
            ),
            shutdown_timeout: lifecycle::shutdown_timeout(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nothing_but_the_database_set_every_default_parses() {
        let config = Config::from_env(&Env::from_pairs([(DATABASE_URL.name, "postgres://x@127.0.0.1/x")])).unwrap();
        assert_eq!(config.topic, callchain_events::TOPIC);
        assert_eq!(config.group_instance_id, None);
    }

    #[test]
    fn an_instance_id_naming_the_hostname_is_unique_per_replica() {
        // `docker compose up --scale consumer=2` gives both replicas one
        // environment; their hostnames (container ids) tell them apart.
        let env = |id: &str| {
            Env::from_pairs([
                (DATABASE_URL.name, "postgres://x@127.0.0.1/x"),
                (KAFKA_GROUP_INSTANCE_ID.name, id),
            ])
        };
        let on = |host: &str, id: &str| Config::from_env_on(&env(id), host).unwrap().group_instance_id;
        assert_eq!(on("3f2a9c", "consumer-{hostname}").as_deref(), Some("consumer-3f2a9c"));
        assert_eq!(on("b71e04", "consumer-{hostname}").as_deref(), Some("consumer-b71e04"));
        assert_eq!(on("3f2a9c", "consumer-1").as_deref(), Some("consumer-1"));
    }
}
