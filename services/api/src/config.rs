//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use callchain_runtime::env::Env;
use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    throttle::{Limits, RegistrationLimits},
    upstream::{BreakerPolicy, Targets},
};

/// Every variable this service reads (beside the telemetry's own).
pub const ENV_VARS: &[&str] = &[
    "API_LISTEN_ADDR",
    "USER_SERVICE_URL",
    "JWT_SECRET",
    "JWT_TTL_SECONDS",
    "REQUEST_TIMEOUT_MS",
    "MAX_BODY_BYTES",
    "LOGIN_MAX_FAILURES_PER_ACCOUNT",
    "LOGIN_MAX_FAILURES_PER_ADDRESS",
    "LOGIN_FAILURE_WINDOW_SECONDS",
    "REGISTRATIONS_PER_ADDRESS",
    "REGISTRATION_WINDOW_SECONDS",
    "AUTH_CACHE_TTL_MS",
    "BREAKER_FAILURE_RATE",
    "BREAKER_MIN_CALLS",
    "BREAKER_OPEN_MS",
    "API_MAX_IN_FLIGHT",
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT_VAR,
];

/// The variables without which a release build does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &["JWT_SECRET"];

/// The signing key debug builds use when `JWT_SECRET` is unset. Release
/// builds have no default.
#[cfg(debug_assertions)]
const DEV_JWT_SECRET: &str = "callchain-development-secret-do-not-use-in-production";

/// `API_LISTEN_ADDR`'s default.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";
/// `USER_SERVICE_URL`'s default.
pub const DEFAULT_USER_SERVICE_URL: &str = "http://127.0.0.1:50051";
/// `JWT_TTL_SECONDS`'s default.
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 3600;
/// `REQUEST_TIMEOUT_MS`'s default.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// `MAX_BODY_BYTES`'s default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// `LOGIN_MAX_FAILURES_PER_ACCOUNT`'s default.
pub const DEFAULT_LOGIN_MAX_FAILURES_PER_ACCOUNT: usize = 5;
/// `LOGIN_MAX_FAILURES_PER_ADDRESS`'s default.
pub const DEFAULT_LOGIN_MAX_FAILURES_PER_ADDRESS: usize = 50;
/// `LOGIN_FAILURE_WINDOW_SECONDS`'s default.
pub const DEFAULT_LOGIN_FAILURE_WINDOW_SECONDS: u64 = 15 * 60;
/// `REGISTRATIONS_PER_ADDRESS`'s default.
pub const DEFAULT_REGISTRATIONS_PER_ADDRESS: usize = 20;
/// `REGISTRATION_WINDOW_SECONDS`'s default.
pub const DEFAULT_REGISTRATION_WINDOW_SECONDS: u64 = 60 * 60;
/// `AUTH_CACHE_TTL_MS`'s default.
pub const DEFAULT_AUTH_CACHE_TTL_MS: u64 = 1_000;
/// `BREAKER_FAILURE_RATE`'s default.
pub const DEFAULT_BREAKER_FAILURE_RATE: f64 = 0.5;
/// `BREAKER_MIN_CALLS`'s default.
pub const DEFAULT_BREAKER_MIN_CALLS: u32 = 20;
/// `BREAKER_OPEN_MS`'s default.
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 5_000;
/// `API_MAX_IN_FLIGHT`'s default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// `Debug` prints every setting but the secret, which `SecretString` keeps
/// to itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// `API_LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `USER_SERVICE_URL`, default `http://127.0.0.1:50051`: one URL or
    /// several, comma-separated; a name that resolves to several addresses
    /// is a replica per address.
    pub user_service: Targets,
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
    /// `LOGIN_MAX_FAILURES_PER_ACCOUNT` (default 5) and
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS` (default 50) failed logins within
    /// `LOGIN_FAILURE_WINDOW_SECONDS` (default 900); past either, a login
    /// answers 429 until the oldest failure leaves the window.
    pub login_limits: Limits,
    /// `REGISTRATIONS_PER_ADDRESS` (default 20) registrations from one
    /// client address within `REGISTRATION_WINDOW_SECONDS` (default 3600);
    /// past it, a registration answers 429 until the oldest leaves the
    /// window.
    pub registration_limits: RegistrationLimits,
    /// `AUTH_CACHE_TTL_MS`, default 1000: how long the user service's word on
    /// a token's user (still there, with what role) is kept; 0 asks on every
    /// request.
    pub auth_cache_ttl: Duration,
    /// `BREAKER_FAILURE_RATE` (default 0.5) of the last `BREAKER_MIN_CALLS`
    /// (default 20) calls to the user service (within 10 s) failing opens
    /// the circuit breaker for `BREAKER_OPEN_MS` (default 5000).
    pub breaker: BreakerPolicy,
    /// `API_MAX_IN_FLIGHT`, default 512: requests served at once; past it a
    /// request answers 503 at once instead of queueing.
    pub max_in_flight: usize,
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
            per_account: env.parse_or(
                "LOGIN_MAX_FAILURES_PER_ACCOUNT",
                "a whole number",
                DEFAULT_LOGIN_MAX_FAILURES_PER_ACCOUNT,
            )?,
            per_address: env.parse_or(
                "LOGIN_MAX_FAILURES_PER_ADDRESS",
                "a whole number",
                DEFAULT_LOGIN_MAX_FAILURES_PER_ADDRESS,
            )?,
            window: Duration::from_secs(env.parse_or(
                "LOGIN_FAILURE_WINDOW_SECONDS",
                "a whole number",
                DEFAULT_LOGIN_FAILURE_WINDOW_SECONDS,
            )?),
        };
        anyhow::ensure!(
            login_limits.per_account > 0 && login_limits.per_address > 0 && !login_limits.window.is_zero(),
            "LOGIN_MAX_FAILURES_PER_ACCOUNT, LOGIN_MAX_FAILURES_PER_ADDRESS and LOGIN_FAILURE_WINDOW_SECONDS must be at least 1"
        );
        let registration_limits = RegistrationLimits {
            per_address: env.parse_or(
                "REGISTRATIONS_PER_ADDRESS",
                "a whole number",
                DEFAULT_REGISTRATIONS_PER_ADDRESS,
            )?,
            window: Duration::from_secs(env.parse_or(
                "REGISTRATION_WINDOW_SECONDS",
                "a whole number",
                DEFAULT_REGISTRATION_WINDOW_SECONDS,
            )?),
        };
        anyhow::ensure!(
            registration_limits.per_address > 0 && !registration_limits.window.is_zero(),
            "REGISTRATIONS_PER_ADDRESS and REGISTRATION_WINDOW_SECONDS must be at least 1"
        );
        let breaker = BreakerPolicy {
            failure_rate: env.parse_or(
                "BREAKER_FAILURE_RATE",
                "a number above 0 and at most 1",
                DEFAULT_BREAKER_FAILURE_RATE,
            )?,
            min_calls: env.parse_or("BREAKER_MIN_CALLS", "a whole number", DEFAULT_BREAKER_MIN_CALLS)?,
            open_for: Duration::from_millis(env.parse_or(
                "BREAKER_OPEN_MS",
                "a whole number",
                DEFAULT_BREAKER_OPEN_MS,
            )?),
            ..BreakerPolicy::default()
        };
        anyhow::ensure!(
            breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0,
            "BREAKER_FAILURE_RATE must be above 0 and at most 1"
        );
        anyhow::ensure!(
            breaker.min_calls > 0 && !breaker.open_for.is_zero(),
            "BREAKER_MIN_CALLS and BREAKER_OPEN_MS must be at least 1"
        );
        let max_in_flight = env.parse_or("API_MAX_IN_FLIGHT", "a whole number", DEFAULT_MAX_IN_FLIGHT)?;
        anyhow::ensure!(
            max_in_flight > 0 && max_in_flight <= tokio::sync::Semaphore::MAX_PERMITS,
            "API_MAX_IN_FLIGHT must be at least 1 and at most {}",
            tokio::sync::Semaphore::MAX_PERMITS
        );
        Ok(Self {
            listen_addr: env.parse_or(
                "API_LISTEN_ADDR",
                "an address such as 0.0.0.0:8080",
                DEFAULT_LISTEN_ADDR.parse().expect("a valid address"),
            )?,
            user_service: env
                .var("USER_SERVICE_URL")
                .as_deref()
                .unwrap_or(DEFAULT_USER_SERVICE_URL)
                .parse()?,
            jwt_secret,
            jwt_ttl: Duration::from_secs(env.parse_or("JWT_TTL_SECONDS", "a whole number", DEFAULT_JWT_TTL_SECONDS)?),
            request_timeout: Duration::from_millis(env.parse_or(
                "REQUEST_TIMEOUT_MS",
                "a whole number",
                DEFAULT_REQUEST_TIMEOUT_MS,
            )?),
            max_body_bytes: env.parse_or("MAX_BODY_BYTES", "a whole number", DEFAULT_MAX_BODY_BYTES)?,
            login_limits,
            registration_limits,
            auth_cache_ttl: Duration::from_millis(env.parse_or(
                "AUTH_CACHE_TTL_MS",
                "a whole number",
                DEFAULT_AUTH_CACHE_TTL_MS,
            )?),
            breaker,
            max_in_flight,
        })
    }

    /// Defaults for tests: the given user service (one URL or several,
    /// comma-separated) and signing key.
    pub fn for_tests(user_service_url: String, jwt_secret: String) -> Self {
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            user_service: user_service_url.parse().expect("valid user service URLs"),
            jwt_secret: jwt_secret.into(),
            jwt_ttl: Duration::from_secs(DEFAULT_JWT_TTL_SECONDS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            login_limits: Limits::default(),
            registration_limits: RegistrationLimits::default(),
            auth_cache_ttl: Duration::from_millis(DEFAULT_AUTH_CACHE_TTL_MS),
            breaker: BreakerPolicy::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

// The policies' defaults are these constants, so each is written once, here
// beside its variable; the modules that apply a policy import nothing from
// the settings.
impl Default for Limits {
    fn default() -> Self {
        Self {
            per_account: DEFAULT_LOGIN_MAX_FAILURES_PER_ACCOUNT,
            per_address: DEFAULT_LOGIN_MAX_FAILURES_PER_ADDRESS,
            window: Duration::from_secs(DEFAULT_LOGIN_FAILURE_WINDOW_SECONDS),
        }
    }
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            per_address: DEFAULT_REGISTRATIONS_PER_ADDRESS,
            window: Duration::from_secs(DEFAULT_REGISTRATION_WINDOW_SECONDS),
        }
    }
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_rate: DEFAULT_BREAKER_FAILURE_RATE,
            min_calls: DEFAULT_BREAKER_MIN_CALLS,
            open_for: Duration::from_millis(DEFAULT_BREAKER_OPEN_MS),
            window: Duration::from_secs(10),
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

    #[test]
    fn registration_limits_are_read_and_checked() {
        let env = Env::from_pairs([
            ("REGISTRATIONS_PER_ADDRESS", "7"),
            ("REGISTRATION_WINDOW_SECONDS", "120"),
        ]);
        let limits = Config::from_env(&env).unwrap().registration_limits;
        assert_eq!((limits.per_address, limits.window.as_secs()), (7, 120));
        let defaults = Config::from_env(&Env::from_pairs(Vec::<(String, String)>::new()))
            .unwrap()
            .registration_limits;
        assert_eq!(defaults, RegistrationLimits::default());
        for (name, value) in [("REGISTRATIONS_PER_ADDRESS", "0"), ("REGISTRATION_WINDOW_SECONDS", "0")] {
            assert!(
                Config::from_env(&Env::from_pairs([(name, value)])).is_err(),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn resilience_settings_are_read_and_checked() {
        let env = Env::from_pairs([
            ("USER_SERVICE_URL", "http://127.0.0.1:50051,http://127.0.0.1:50052"),
            ("BREAKER_FAILURE_RATE", "0.25"),
            ("BREAKER_MIN_CALLS", "8"),
            ("BREAKER_OPEN_MS", "1500"),
            ("API_MAX_IN_FLIGHT", "64"),
        ]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(
            config.user_service.to_string(),
            "http://127.0.0.1:50051,http://127.0.0.1:50052"
        );
        assert_eq!(
            (
                config.breaker.failure_rate,
                config.breaker.min_calls,
                config.breaker.open_for
            ),
            (0.25, 8, Duration::from_millis(1500))
        );
        assert_eq!(config.max_in_flight, 64);
        for (name, value) in [
            ("BREAKER_FAILURE_RATE", "0"),
            ("BREAKER_FAILURE_RATE", "1.5"),
            ("BREAKER_MIN_CALLS", "0"),
            ("BREAKER_OPEN_MS", "0"),
            ("API_MAX_IN_FLIGHT", "0"),
            ("API_MAX_IN_FLIGHT", "18446744073709551615"),
            ("USER_SERVICE_URL", "user:50051"),
        ] {
            assert!(
                Config::from_env(&Env::from_pairs([(name, value)])).is_err(),
                "{name}={value}"
            );
        }
    }
}
