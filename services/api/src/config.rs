//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use callchain_runtime::env::Env;

/// Every variable this service reads (beside the telemetry's own).
pub const ENV_VARS: &[&str] = &[
    "API_LISTEN_ADDR",
    "USER_SERVICE_URL",
    "JWT_SECRET",
    "JWT_TTL_SECONDS",
    "REQUEST_TIMEOUT_MS",
    "MAX_BODY_BYTES",
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_PUBLISH_TIMEOUT_MS",
];

/// The variables without which a release build does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["JWT_SECRET"];

/// The signing key debug builds use when `JWT_SECRET` is unset. Release
/// builds have no default.
#[cfg(debug_assertions)]
const DEV_JWT_SECRET: &str = "callchain-development-secret-do-not-use-in-production";

#[derive(Clone)]
pub struct Config {
    /// `API_LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `USER_SERVICE_URL`, default `http://127.0.0.1:50051`.
    pub user_service_url: String,
    /// `JWT_SECRET`: the HMAC key tokens are signed with (at least 32 bytes).
    pub jwt_secret: String,
    /// `JWT_TTL_SECONDS`, default 3600.
    pub jwt_ttl: Duration,
    /// `REQUEST_TIMEOUT_MS`, default 10000: the budget of one request,
    /// passed on to every call it makes.
    pub request_timeout: Duration,
    /// `MAX_BODY_BYTES`, default 16384.
    pub max_body_bytes: usize,
    /// `KAFKA_BROKERS`, default `127.0.0.1:9092`.
    pub kafka_brokers: String,
    /// `KAFKA_TOPIC`, default `user-events`: where the events go.
    pub kafka_topic: String,
    /// `KAFKA_PUBLISH_TIMEOUT_MS`, default 5000: how long a write waits for
    /// the broker to acknowledge its event before answering 503.
    pub publish_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("user_service_url", &self.user_service_url)
            .field("jwt_secret", &"***")
            .field("jwt_ttl", &self.jwt_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_topic", &self.kafka_topic)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

impl Config {
    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let jwt_secret = match env.var("JWT_SECRET") {
            Some(secret) => secret,
            #[cfg(debug_assertions)]
            None => DEV_JWT_SECRET.to_owned(),
            #[cfg(not(debug_assertions))]
            None => anyhow::bail!("JWT_SECRET is required: the key API tokens are signed with (32 bytes or more)"),
        };
        anyhow::ensure!(jwt_secret.len() >= 32, "JWT_SECRET must be at least 32 bytes long");
        Ok(Self {
            listen_addr: env.parse_or(
                "API_LISTEN_ADDR",
                "an address such as 0.0.0.0:8080",
                ([0, 0, 0, 0], 8080).into(),
            )?,
            user_service_url: env
                .var("USER_SERVICE_URL")
                .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned()),
            jwt_secret,
            jwt_ttl: Duration::from_secs(env.parse_or("JWT_TTL_SECONDS", "a whole number", 3600)?),
            request_timeout: Duration::from_millis(env.parse_or("REQUEST_TIMEOUT_MS", "a whole number", 10_000)?),
            max_body_bytes: env.parse_or("MAX_BODY_BYTES", "a whole number", 16 * 1024)?,
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

    /// Defaults for tests: the given user service, broker and topic, a fixed test key.
    pub fn for_tests(user_service_url: String, kafka_brokers: String, kafka_topic: String, jwt_secret: String) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            user_service_url,
            jwt_secret,
            jwt_ttl: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            kafka_brokers,
            kafka_topic,
            publish_timeout: Duration::from_secs(3),
        }
    }
}
