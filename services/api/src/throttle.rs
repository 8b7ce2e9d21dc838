//! Login throttling: failed logins are counted per account and per client
//! address in a sliding window, and past the limit a login answers `429`
//! with `Retry-After` until the oldest failure in the window leaves it.
//!
//! - An account is the email as sent, lower-cased, whether or not anyone
//!   has it: an unknown email is throttled exactly like a known one, so the
//!   answer tells nothing about which accounts exist.
//! - An attempt counts as a failure from the moment it starts, so many
//!   concurrent guesses cannot slip in before the first one fails. A
//!   successful login resets its account's count and takes its own attempt
//!   back from its address; an attempt that never reached a verdict (the
//!   user service was down) is taken back from both.
//! - The state lives in this API process: each process counts on its own,
//!   so N processes allow up to N times the limits. Memory stays bounded:
//!   each key keeps at most its limit of timestamps, and keys whose
//!   failures have all left the window are dropped once the map grows past
//!   [`MAX_KEYS`].

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use callchain_domain::Email;

use crate::error::ApiError;

/// The limits, from `LOGIN_MAX_FAILURES_PER_ACCOUNT`,
/// `LOGIN_MAX_FAILURES_PER_ADDRESS` and `LOGIN_FAILURE_WINDOW_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_account: usize,
    pub per_address: usize,
    pub window: Duration,
}

/// How many keys a table holds before the expired ones are swept out.
const MAX_KEYS: usize = 10_000;

pub struct LoginThrottle {
    limits: Limits,
    accounts: Mutex<Window<String>>,
    addresses: Mutex<Window<IpAddr>>,
}

/// A login in progress, counted as a failure until it is known to be none.
#[must_use = "an attempt counts as a failure until it is settled"]
pub struct Attempt {
    account: String,
    address: Option<IpAddr>,
    at: Instant,
}

impl LoginThrottle {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            accounts: Mutex::new(Window::default()),
            addresses: Mutex::new(Window::default()),
        }
    }

    /// Starts a login for `email` from `address`: `429` when either has
    /// failed too often in the window, otherwise an attempt already counted.
    pub fn begin(&self, email: &Email, address: Option<IpAddr>) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let account = email.as_str().to_lowercase();
        let mut accounts = self.accounts.lock().expect("throttle");
        let mut addresses = self.addresses.lock().expect("throttle");
        let wait = [
            accounts.wait(&account, self.limits.per_account, self.limits.window, now),
            address.and_then(|address| addresses.wait(&address, self.limits.per_address, self.limits.window, now)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            // Whole seconds, rounded up: a client that waits as told is let in.
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ApiError::TooManyRequests {
                detail: format!("too many failed logins; retry in {retry_after_secs} s"),
                retry_after_secs,
            });
        }
        accounts.record(account.clone(), self.limits.per_account, now);
        if let Some(address) = address {
            addresses.record(address, self.limits.per_address, now);
        }
        Ok(Attempt {
            account,
            address,
            at: now,
        })
    }

    /// The credentials were right: the account starts afresh, and the
    /// address no longer counts this attempt.
    pub fn succeeded(&self, attempt: Attempt) {
        self.accounts.lock().expect("throttle").clear(&attempt.account);
        if let Some(address) = attempt.address {
            self.addresses.lock().expect("throttle").take_back(&address, attempt.at);
        }
    }

    /// The credentials were wrong: the attempt stays counted.
    pub fn failed(&self, attempt: Attempt) {
        drop(attempt);
    }

    /// No verdict was reached (the user service was unreachable): the
    /// attempt is not held against anyone.
    pub fn undecided(&self, attempt: Attempt) {
        self.accounts
            .lock()
            .expect("throttle")
            .take_back(&attempt.account, attempt.at);
        if let Some(address) = attempt.address {
            self.addresses.lock().expect("throttle").take_back(&address, attempt.at);
        }
    }
}

/// The recent failures of each key, oldest first, at most its limit of them.
struct Window<K> {
    failures: HashMap<K, VecDeque<Instant>>,
}

impl<K> Default for Window<K> {
    fn default() -> Self {
        Self {
            failures: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> Window<K> {
    /// How long until `key` may try again, when it has used up `limit`.
    fn wait(&mut self, key: &K, limit: usize, window: Duration, now: Instant) -> Option<Duration> {
        let failures = self.failures.get_mut(key)?;
        while failures.front().is_some_and(|at| now.duration_since(*at) >= window) {
            failures.pop_front();
        }
        if failures.len() < limit {
            return None;
        }
        let oldest = *failures.front()?;
        Some(window.saturating_sub(now.duration_since(oldest)))
    }

    fn record(&mut self, key: K, limit: usize, now: Instant) {
        if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(&key) {
            // Keys whose newest failure is older than any window worth
            // keeping; a key past its limit always has a recent one.
            self.failures
                .retain(|_, failures| failures.back().is_some_and(|at| now.duration_since(*at) < SWEEP_AFTER));
        }
        let failures = self.failures.entry(key).or_default();
        failures.push_back(now);
        while failures.len() > limit.max(1) {
            failures.pop_front();
        }
    }

    fn clear(&mut self, key: &K) {
        self.failures.remove(key);
    }

    fn take_back(&mut self, key: &K, at: Instant) {
        if let Some(failures) = self.failures.get_mut(key)
            && let Some(position) = failures.iter().rposition(|failure| *failure == at)
        {
            failures.remove(position);
        }
    }
}

/// How old a key's newest failure must be before a sweep may drop it: longer
/// than any window this service is likely to be given.
const SWEEP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    fn email(text: &str) -> Email {
        Email::parse(text).unwrap()
    }

    fn throttle(per_account: usize, per_address: usize) -> LoginThrottle {
        LoginThrottle::new(Limits {
            per_account,
            per_address,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn an_account_is_refused_past_its_limit_whatever_the_case_of_its_email() {
        let throttle = throttle(2, 100);
        for _ in 0..2 {
            throttle.failed(throttle.begin(&email("Ada@example.com"), None).unwrap());
        }
        let refused = throttle
            .begin(&email("ada@EXAMPLE.com"), None)
            .err()
            .expect("throttled");
        match refused {
            ApiError::TooManyRequests { retry_after_secs, .. } => assert!((1..=60).contains(&retry_after_secs)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(throttle.begin(&email("grace@example.com"), None).is_ok());
    }

    #[test]
    fn a_success_resets_the_account() {
        let throttle = throttle(2, 100);
        throttle.failed(throttle.begin(&email("ada@example.com"), None).unwrap());
        throttle.succeeded(throttle.begin(&email("ada@example.com"), None).unwrap());
        throttle.failed(throttle.begin(&email("ada@example.com"), None).unwrap());
        assert!(throttle.begin(&email("ada@example.com"), None).is_ok());
    }

    #[test]
    fn an_address_is_refused_past_its_limit_across_accounts() {
        let throttle = throttle(100, 3);
        let here: IpAddr = [10, 0, 0, 1].into();
        for i in 0..3 {
            throttle.failed(
                throttle
                    .begin(&email(&format!("u{i}@example.com")), Some(here))
                    .unwrap(),
            );
        }
        assert!(throttle.begin(&email("other@example.com"), Some(here)).is_err());
        assert!(
            throttle
                .begin(&email("other@example.com"), Some([10, 0, 0, 2].into()))
                .is_ok()
        );
    }

    #[test]
    fn an_undecided_attempt_is_not_held_against_anyone() {
        let throttle = throttle(1, 1);
        let here: IpAddr = [10, 0, 0, 1].into();
        throttle.undecided(throttle.begin(&email("ada@example.com"), Some(here)).unwrap());
        assert!(throttle.begin(&email("ada@example.com"), Some(here)).is_ok());
    }

    #[test]
    fn failures_leave_the_window_as_it_slides() {
        let mut window = Window::default();
        let start = Instant::now();
        let span = Duration::from_secs(10);
        window.record("k", 2, start);
        window.record("k", 2, start + Duration::from_secs(4));
        assert_eq!(
            window.wait(&"k", 2, span, start + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(window.wait(&"k", 2, span, start + Duration::from_secs(10)), None);
    }
}
