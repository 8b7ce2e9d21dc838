//! Settings, from environment variables.

use std::net::SocketAddr;

use anyhow::Context as _;
use callchain_runtime::env::Env;

/// Every variable this service reads (beside the telemetry's own).
pub const ENV_VARS: &[&str] = &[
    "USER_LISTEN_ADDR",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
];

/// The variables without which it does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["DATABASE_URL"];

#[derive(Debug, Clone)]
pub struct Config {
    /// `USER_LISTEN_ADDR`, default `0.0.0.0:50051`.
    pub listen_addr: SocketAddr,
    /// `DATABASE_URL`, required.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`, default 10.
    pub max_connections: u32,
    /// `ADMIN_EMAIL` and `ADMIN_PASSWORD`: an administrator created at start
    /// when no user has that email. Both or neither.
    pub admin: Option<(String, String)>,
}

impl Config {
    /// Defaults for tests: the given database and administrator, on a port-0
    /// listener the test binds.
    pub fn for_tests(database_url: &str, admin: Option<(String, String)>) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            database_url: database_url.to_owned(),
            max_connections: 5,
            admin,
        }
    }

    /// Reads the variables in [`ENV_VARS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let admin = match (env.var("ADMIN_EMAIL"), env.var("ADMIN_PASSWORD")) {
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
                .var("DATABASE_URL")
                .context("DATABASE_URL is required, e.g. postgres://callchain:callchain@127.0.0.1:5432/callchain")?,
            max_connections: env.parse_or("DATABASE_MAX_CONNECTIONS", "a whole number", 10)?,
            admin,
        })
    }
}
