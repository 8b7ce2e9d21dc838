//! Settings, from environment variables.

use std::{net::SocketAddr, time::Duration};

use callchain_runtime::env::{Env, Setting};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    throttle::{Limits, RegistrationLimits},
    upstream::{BreakerPolicy, Targets},
};

/// Where the API listens.
pub const API_LISTEN_ADDR: Setting = Setting {
    name: "API_LISTEN_ADDR",
    default: Some("0.0.0.0:8080"),
    doc: "Where the API listens: REST, JSON-RPC, `/openapi.json`, `/healthz`, `/readyz`.",
};
pub const USER_SERVICE_URL: Setting = Setting {
    name: "USER_SERVICE_URL",
    default: Some("http://127.0.0.1:50051"),
    doc: "The user service: one URL or several, comma-separated (`http://host:port` each); a name that resolves \
          to several addresses is one replica per address.",
};
pub const JWT_SECRET: Setting = Setting {
    name: "JWT_SECRET",
    default: None,
    doc: "The HMAC key tokens are signed with, at least 32 bytes; a secret, never printed. Required in release \
          builds; debug builds fall back to a development key.",
};
pub const JWT_TTL_SECONDS: Setting = Setting {
    name: "JWT_TTL_SECONDS",
    default: Some("3600"),
    doc: "How long a token is valid, in seconds.",
};
pub const REQUEST_TIMEOUT_MS: Setting = Setting {
    name: "REQUEST_TIMEOUT_MS",
    default: Some("10000"),
    doc: "The time budget of one request, in milliseconds, passed on to every call it makes (as `grpc-timeout`); \
          past it, `504`.",
};
pub const MAX_BODY_BYTES: Setting = Setting {
    name: "MAX_BODY_BYTES",
    default: Some("16384"),
    doc: "The largest request body; past it, `413`.",
};
pub const LOGIN_MAX_FAILURES_PER_ACCOUNT: Setting = Setting {
    name: "LOGIN_MAX_FAILURES_PER_ACCOUNT",
    default: Some("5"),
    doc: "Failed logins for one email within the window; past them a login answers `429` with `Retry-After` until \
          the oldest failure leaves the window.",
};
pub const LOGIN_MAX_FAILURES_PER_ADDRESS: Setting = Setting {
    name: "LOGIN_MAX_FAILURES_PER_ADDRESS",
    default: Some("50"),
    doc: "Failed logins from one client address within the window; past them, `429` the same way.",
};
pub const LOGIN_FAILURE_WINDOW_SECONDS: Setting = Setting {
    name: "LOGIN_FAILURE_WINDOW_SECONDS",
    default: Some("900"),
    doc: "The sliding window, in seconds, both counts of failed logins cover.",
};
pub const REGISTRATIONS_PER_ADDRESS: Setting = Setting {
    name: "REGISTRATIONS_PER_ADDRESS",
    default: Some("20"),
    doc: "Registrations from one client address (an IPv6 one by its /64) within the window; past them a \
          registration answers `429` with `Retry-After`, over REST and JSON-RPC alike.",
};
pub const REGISTRATION_WINDOW_SECONDS: Setting = Setting {
    name: "REGISTRATION_WINDOW_SECONDS",
    default: Some("3600"),
    doc: "The sliding window, in seconds, registrations per address are counted over.",
};
pub const AUTH_CACHE_TTL_MS: Setting = Setting {
    name: "AUTH_CACHE_TTL_MS",
    default: Some("1000"),
    doc: "How long the user service's word on a token's user (still there, with which role) is kept, in \
          milliseconds; `0` asks on every request.",
};
pub const BREAKER_FAILURE_RATE: Setting = Setting {
    name: "BREAKER_FAILURE_RATE",
    default: Some("0.5"),
    doc: "The failed share (above 0, at most 1) of the last `BREAKER_MIN_CALLS` calls to the user service that \
          opens its circuit breaker.",
};
pub const BREAKER_MIN_CALLS: Setting = Setting {
    name: "BREAKER_MIN_CALLS",
    default: Some("20"),
    doc: "How many of the last calls (within 10 s) the failure rate is taken over; with fewer the breaker stays \
          closed.",
};
pub const BREAKER_OPEN_MS: Setting = Setting {
    name: "BREAKER_OPEN_MS",
    default: Some("5000"),
    doc: "How long the breaker stays open before a probe, in milliseconds; meanwhile calls answer `503` at once.",
};
pub const API_MAX_IN_FLIGHT: Setting = Setting {
    name: "API_MAX_IN_FLIGHT",
    default: Some("512"),
    doc: "Requests served at once; past it, `503` with `Retry-After` at once instead of queueing (`/healthz` and \
          `/readyz` are never refused).",
};

/// Every variable this service reads (beside the telemetry's own).
pub const SETTINGS: &[Setting] = &[
    API_LISTEN_ADDR,
    USER_SERVICE_URL,
    JWT_SECRET,
    JWT_TTL_SECONDS,
    REQUEST_TIMEOUT_MS,
    MAX_BODY_BYTES,
    LOGIN_MAX_FAILURES_PER_ACCOUNT,
    LOGIN_MAX_FAILURES_PER_ADDRESS,
    LOGIN_FAILURE_WINDOW_SECONDS,
    REGISTRATIONS_PER_ADDRESS,
    REGISTRATION_WINDOW_SECONDS,
    AUTH_CACHE_TTL_MS,
    BREAKER_FAILURE_RATE,
    BREAKER_MIN_CALLS,
    BREAKER_OPEN_MS,
    API_MAX_IN_FLIGHT,
    callchain_runtime::lifecycle::SHUTDOWN_TIMEOUT,
];

/// The variables without which a release build does not start.
pub const REQUIRED_ENV_VARS: &[&str] = &[JWT_SECRET.name];

/// The signing key debug builds use when `JWT_SECRET` is unset. Release
/// builds have no default.
#[cfg(debug_assertions)]
const DEV_JWT_SECRET: &str = "callchain-development-secret-do-not-use-in-production";

/// `Debug` prints every setting but the secret, which `SecretString` keeps
/// to itself. Each field's setting, with its default, is in [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct Config {
    /// [`API_LISTEN_ADDR`].
    pub listen_addr: SocketAddr,
    /// [`USER_SERVICE_URL`].
    pub user_service: Targets,
    /// [`JWT_SECRET`]: a secret, it never prints.
    pub jwt_secret: SecretString,
    /// [`JWT_TTL_SECONDS`].
    pub jwt_ttl: Duration,
    /// [`REQUEST_TIMEOUT_MS`].
    pub request_timeout: Duration,
    /// [`MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// [`LOGIN_MAX_FAILURES_PER_ACCOUNT`], [`LOGIN_MAX_FAILURES_PER_ADDRESS`]
    /// and [`LOGIN_FAILURE_WINDOW_SECONDS`].
    pub login_limits: Limits,
    /// [`REGISTRATIONS_PER_ADDRESS`] and [`REGISTRATION_WINDOW_SECONDS`].
    pub registration_limits: RegistrationLimits,
    /// [`AUTH_CACHE_TTL_MS`].
    pub auth_cache_ttl: Duration,
    /// [`BREAKER_FAILURE_RATE`], [`BREAKER_MIN_CALLS`] and [`BREAKER_OPEN_MS`].
    pub breaker: BreakerPolicy,
    /// [`API_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

const WHOLE: &str = "a whole number";

impl Config {
    /// Reads the variables in [`SETTINGS`] from `env`.
    pub fn from_env(env: &Env) -> anyhow::Result<Self> {
        let jwt_secret = match env.secret(JWT_SECRET.name) {
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
            per_account: env.setting(&LOGIN_MAX_FAILURES_PER_ACCOUNT, WHOLE)?,
            per_address: env.setting(&LOGIN_MAX_FAILURES_PER_ADDRESS, WHOLE)?,
            window: Duration::from_secs(env.setting(&LOGIN_FAILURE_WINDOW_SECONDS, WHOLE)?),
        };
        anyhow::ensure!(
            login_limits.per_account > 0 && login_limits.per_address > 0 && !login_limits.window.is_zero(),
            "LOGIN_MAX_FAILURES_PER_ACCOUNT, LOGIN_MAX_FAILURES_PER_ADDRESS and LOGIN_FAILURE_WINDOW_SECONDS must be at least 1"
        );
        let registration_limits = RegistrationLimits {
            per_address: env.setting(&REGISTRATIONS_PER_ADDRESS, WHOLE)?,
            window: Duration::from_secs(env.setting(&REGISTRATION_WINDOW_SECONDS, WHOLE)?),
        };
        anyhow::ensure!(
            registration_limits.per_address > 0 && !registration_limits.window.is_zero(),
            "REGISTRATIONS_PER_ADDRESS and REGISTRATION_WINDOW_SECONDS must be at least 1"
        );
        let breaker = BreakerPolicy {
            failure_rate: env.setting(&BREAKER_FAILURE_RATE, "a number above 0 and at most 1")?,
            min_calls: env.setting(&BREAKER_MIN_CALLS, WHOLE)?,
            open_for: Duration::from_millis(env.setting(&BREAKER_OPEN_MS, WHOLE)?),
            window: BreakerPolicy::WINDOW,
        };
        anyhow::ensure!(
            breaker.failure_rate > 0.0 && breaker.failure_rate <= 1.0,
            "BREAKER_FAILURE_RATE must be above 0 and at most 1"
        );
        anyhow::ensure!(
            breaker.min_calls > 0 && !breaker.open_for.is_zero(),
            "BREAKER_MIN_CALLS and BREAKER_OPEN_MS must be at least 1"
        );
        let max_in_flight = env.setting(&API_MAX_IN_FLIGHT, WHOLE)?;
        anyhow::ensure!(
            max_in_flight > 0 && max_in_flight <= tokio::sync::Semaphore::MAX_PERMITS,
            "API_MAX_IN_FLIGHT must be at least 1 and at most {}",
            tokio::sync::Semaphore::MAX_PERMITS
        );
        Ok(Self {
            listen_addr: env.setting(&API_LISTEN_ADDR, "an address such as 0.0.0.0:8080")?,
            user_service: env
                .var(USER_SERVICE_URL.name)
                .as_deref()
                .or(USER_SERVICE_URL.default)
                .unwrap_or_default()
                .parse()?,
            jwt_secret,
            jwt_ttl: Duration::from_secs(env.setting(&JWT_TTL_SECONDS, WHOLE)?),
            request_timeout: Duration::from_millis(env.setting(&REQUEST_TIMEOUT_MS, WHOLE)?),
            max_body_bytes: env.setting(&MAX_BODY_BYTES, WHOLE)?,
            login_limits,
            registration_limits,
            auth_cache_ttl: Duration::from_millis(env.setting(&AUTH_CACHE_TTL_MS, WHOLE)?),
            breaker,
            max_in_flight,
        })
    }

    /// The defaults, with the given user service (one URL or several,
    /// comma-separated) and signing key, on a port-0 listener the test binds.
    pub fn for_tests(user_service_url: String, jwt_secret: String) -> Self {
        let env = Env::from_pairs([(USER_SERVICE_URL.name, user_service_url), (JWT_SECRET.name, jwt_secret)]);
        Self {
            listen_addr: "127.0.0.1:0".parse().expect("a valid address"),
            ..Self::from_env(&env).expect("the defaults, a valid user service URL and a signing key of 32 bytes")
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
        let defaults = Config::from_env(&Env::default()).unwrap().registration_limits;
        assert_eq!((defaults.per_address, defaults.window.as_secs()), (20, 3600));
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
            ("USER_SERVICE_URL", "user:50051"),
        ] {
            assert!(
                Config::from_env(&Env::from_pairs([(name, value)])).is_err(),
                "{name}={value}"
            );
        }
    }
}
