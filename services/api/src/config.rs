//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use callchain_runtime::env::Env;
use secrecy::{ExposeSecret as _, SecretString};

use crate::throttle::Limits;

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
    "LOGIN_MAX_FAILURES_PER_ACCOUNT",
    "LOGIN_MAX_FAILURES_PER_ADDRESS",
    "LOGIN_FAILURE_WINDOW_SECONDS",
    "AUTH_CACHE_TTL_MS",
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT_VAR,
];

/// The variables without which a release build does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["JWT_SECRET"];

/// The signing key debug builds use when `JWT_SECRET` is unset. Release
/// builds have no default.
#[cfg(debug_assertions)]
const DEV_JWT_SECRET: &str = "callchain-development-secret-do-not-use-in-production";

/// `Debug` prints every setting but the secret, which `SecretString` keeps
/// to itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// `API_LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `USER_SERVICE_URL`, default `http://127.0.0.1:50051`.
    pub user_service_url: String,
    /// `JWT_SECRET`: the HMAC key tokens are signed with (at least 32 bytes).
    /// A secret: it never prints.
    pub jwt_secret: SecretString,
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
    /// `LOGIN_MAX_FAILURES_PER_ACCOUNT` (default 5) and
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS` (default 50) failed logins within
    /// `LOGIN_FAILURE_WINDOW_SECONDS` (default 900); past either, a login
    /// answers 429 until the oldest failure leaves the window.
    pub login_limits: Limits,
    /// `AUTH_CACHE_TTL_MS`, default 1000: how long the user service's word on
    /// a token's user (still there, with what role) is kept; 0 asks on every
    /// request.
    pub auth_cache_ttl: Duration,
}

impl Config {
    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let jwt_secret = match env.secret("JWT_SECRET") {
            Some(secret) => secret,
            #[cfg(debug_assertions)]
            None => DEV_JWT_SECRET.into(),
            #[cfg(not(debug_assertions))]
            None => anyhow::bail!("JWT_SECRET is required: the key API tokens are signed with (32 bytes or more)"),
        };
        anyhow::ensure!(
            jwt_secret.expose_secret().len() >= 32,
            "JWT_SECRET must be at least 32 bytes long"
        );
        let login_limits = Limits {
            per_account: env.parse_or("LOGIN_MAX_FAILURES_PER_ACCOUNT", "a whole number", 5)?,
            per_address: env.parse_or("LOGIN_MAX_FAILURES_PER_ADDRESS", "a whole number", 50)?,
            window: Duration::from_secs(env.parse_or("LOGIN_FAILURE_WINDOW_SECONDS", "a whole number", 900)?),
        };
        anyhow::ensure!(
            login_limits.per_account > 0 && login_limits.per_address > 0 && !login_limits.window.is_zero(),
            "LOGIN_MAX_FAILURES_PER_ACCOUNT, LOGIN_MAX_FAILURES_PER_ADDRESS and LOGIN_FAILURE_WINDOW_SECONDS must be at least 1"
        );
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
            login_limits,
            auth_cache_ttl: Duration::from_millis(env.parse_or("AUTH_CACHE_TTL_MS", "a whole number", 1_000)?),
        })
    }

    /// Defaults for tests: the given user service, broker and topic, a fixed test key.
    pub fn for_tests(user_service_url: String, kafka_brokers: String, kafka_topic: String, jwt_secret: String) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            user_service_url,
            jwt_secret: jwt_secret.into(),
            jwt_ttl: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
            kafka_brokers,
            kafka_topic,
            publish_timeout: Duration::from_secs(3),
            login_limits: Limits::default(),
            auth_cache_ttl: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_signing_key() {
        let config = Config::from_env(&Env::from_pairs([(
            "JWT_SECRET",
            "a-signing-key-nobody-may-ever-read!!",
        )]))
        .unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains("jwt_secret"), "{debug}");
        assert!(!debug.contains("a-signing-key-nobody-may-ever-read"), "{debug}");
    }

    #[test]
    fn login_limits_are_read_and_checked() {
        let env = Env::from_pairs([
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "3"),
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "30"),
            ("LOGIN_FAILURE_WINDOW_SECONDS", "60"),
        ]);
        let limits = Config::from_env(&env).unwrap().login_limits;
        assert_eq!(
            (limits.per_account, limits.per_address, limits.window.as_secs()),
            (3, 30, 60)
        );
        let zero = Env::from_pairs([("LOGIN_MAX_FAILURES_PER_ACCOUNT", "0")]);
        assert!(Config::from_env(&zero).is_err());
    }
}
