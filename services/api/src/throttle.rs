//! Throttles: failed logins counted per account and per client address,
//! and registrations per client address, each in a sliding window; past a
//! limit, the request answers `429` with `Retry-After` until the oldest
//! entry in the window leaves it.
//!
//! - An account is the email as sent, lower-cased, whether or not anyone
//!   has it: an unknown email is throttled exactly like a known one, so the
//!   answer tells nothing about which accounts exist.
//! - An address is an IPv4 address whole, and an IPv6 address by its /64:
//!   one subscriber is usually given a whole /64, so counting its addresses
//!   one by one would give it an unlimited supply of fresh counts.
//! - An attempt counts from the moment it starts, so many concurrent
//!   requests (a JSON-RPC batch among them) cannot slip in before the first
//!   one is counted. A successful login resets its account's count and takes
//!   its own attempt back from its address; an attempt that never reached a
//!   verdict (the user service was down) is taken back from all it counted
//!   against.
//! - The state lives in this API process: each process counts on its own,
//!   so N processes allow up to N times the limits. Memory stays bounded:
//!   each key keeps at most its limit of timestamps, a key is dropped as
//!   soon as its newest entry leaves the window, and each table holds at
//!   most [`MAX_KEYS`] keys: past that, the least recently counted key is
//!   forgotten (and a warning says so), so a flood of fresh keys costs the
//!   same for every key and never grows the table.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
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

/// The limit on registrations, from `REGISTRATIONS_PER_ADDRESS` and
/// `REGISTRATION_WINDOW_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    pub per_address: usize,
    pub window: Duration,
}

/// The most keys a table holds; past it, the least recently counted goes.
/// A key costs its text and up to its limit of timestamps: a few hundred
/// bytes to a few kilobytes, so a table stays within tens of megabytes.
const MAX_KEYS: usize = 10_000;

/// How often, at most, a table says that it forgets keys to stay bounded.
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The key an address is counted under: an IPv4 address (an IPv4-mapped
/// IPv6 one included) whole, an IPv6 address by its /64.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// The `429` of a limit that has `wait` left, counted under `throttle`
/// (`login` or `registration`) in `callchain.throttled`.
fn too_many(throttle: &'static str, what: &str, wait: Duration) -> ApiError {
    callchain_telemetry::metrics::count_throttled(throttle);
    // Whole seconds, rounded up: a client that waits as told is let in.
    let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::TooManyRequests {
        detail: format!("too many {what}; retry in {retry_after_secs} s"),
        retry_after_secs,
    }
}

pub struct LoginThrottle {
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
            accounts: Mutex::new(Window::new("login accounts", limits.per_account, limits.window)),
            addresses: Mutex::new(Window::new("login addresses", limits.per_address, limits.window)),
        }
    }

    /// Starts a login for `email` from `address`: `429` when either has
    /// failed too often in the window, otherwise an attempt already counted.
    pub fn begin(&self, email: &Email, address: Option<IpAddr>) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let account = email.as_str().to_lowercase();
        let address = address.map(address_key);
        let mut accounts = self.accounts.lock().expect("throttle");
        let mut addresses = self.addresses.lock().expect("throttle");
        let wait = [
            accounts.wait(&account, now),
            address.and_then(|address| addresses.wait(&address, now)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(too_many("login", "failed logins", wait));
        }
        accounts.record(account.clone(), now);
        if let Some(address) = address {
            addresses.record(address, now);
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

/// Registrations counted per client address: each creates a user (and an
/// event), so one address may not create them without end.
pub struct RegistrationThrottle {
    addresses: Mutex<Window<IpAddr>>,
}

/// A registration in progress, counted until it is known to have reached
/// no verdict.
#[must_use = "a registration counts until it is settled"]
pub struct Registration {
    address: Option<IpAddr>,
    at: Instant,
}

impl RegistrationThrottle {
    pub fn new(limits: RegistrationLimits) -> Self {
        Self {
            addresses: Mutex::new(Window::new("registration addresses", limits.per_address, limits.window)),
        }
    }

    /// Starts a registration from `address`: `429` when it has registered
    /// too often in the window, otherwise a registration already counted.
    pub fn begin(&self, address: Option<IpAddr>) -> Result<Registration, ApiError> {
        let now = Instant::now();
        let address = address.map(address_key);
        if let Some(address) = address {
            let mut addresses = self.addresses.lock().expect("throttle");
            if let Some(wait) = addresses.wait(&address, now) {
                return Err(too_many("registration", "registrations from this address", wait));
            }
            addresses.record(address, now);
        }
        Ok(Registration { address, at: now })
    }

    /// The user service answered, whatever it answered: it stays counted.
    pub fn decided(&self, registration: Registration) {
        drop(registration);
    }

    /// No verdict was reached (the user service was unreachable): it is not
    /// held against the address.
    pub fn undecided(&self, registration: Registration) {
        if let Some(address) = registration.address {
            self.addresses
                .lock()
                .expect("throttle")
                .take_back(&address, registration.at);
        }
    }
}

/// The recent entries of each key, oldest first, at most its limit of them,
/// for at most [`MAX_KEYS`] keys.
struct Window<K> {
    /// What the table counts, for its warning.
    name: &'static str,
    limit: usize,
    span: Duration,
    keys: HashMap<K, Entry>,
    /// The keys by when they last recorded an entry, least recent first:
    /// the order they leave the window in, and are forgotten in when full.
    order: BTreeMap<u64, K>,
    /// The next place in `order`.
    next: u64,
    /// Keys forgotten for room since the last warning, and when that was.
    evicted: usize,
    warned_at: Option<Instant>,
    /// How many keys sweeps and evictions have looked at: the work a new
    /// key costs, which the tests bound.
    visited: usize,
}

struct Entry {
    at: VecDeque<Instant>,
    /// Its key's place in `order`.
    place: u64,
}

impl<K: Eq + Hash + Clone> Window<K> {
    fn new(name: &'static str, limit: usize, span: Duration) -> Self {
        Self {
            name,
            limit: limit.max(1),
            span,
            keys: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            evicted: 0,
            warned_at: None,
            visited: 0,
        }
    }

    /// How long until `key` may try again, when it has used up its limit.
    fn wait(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let entry = self.keys.get_mut(key)?;
        while entry.at.front().is_some_and(|at| now.duration_since(*at) >= self.span) {
            entry.at.pop_front();
        }
        if entry.at.is_empty() {
            self.remove(key);
            return None;
        }
        if entry.at.len() < self.limit {
            return None;
        }
        let oldest = *entry.at.front()?;
        Some(self.span.saturating_sub(now.duration_since(oldest)))
    }

    fn record(&mut self, key: K, now: Instant) {
        self.sweep(now);
        let place = self.next;
        self.next += 1;
        if let Some(entry) = self.keys.get_mut(&key) {
            entry.at.push_back(now);
            while entry.at.len() > self.limit {
                entry.at.pop_front();
            }
            self.order.remove(&entry.place);
            entry.place = place;
        } else {
            if self.keys.len() >= MAX_KEYS {
                self.evict(now);
            }
            self.keys.insert(
                key.clone(),
                Entry {
                    at: VecDeque::from([now]),
                    place,
                },
            );
        }
        self.order.insert(place, key);
    }

    /// Drops the keys whose newest entry has left the window: they are the
    /// least recent, so the sweep stops at the first key still in it.
    fn sweep(&mut self, now: Instant) {
        while let Some((_, key)) = self.order.first_key_value() {
            self.visited += 1;
            let newest = self.keys.get(key).and_then(|entry| entry.at.back().copied());
            if newest.is_some_and(|at| now.duration_since(at) < self.span) {
                return;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Forgets the least recently counted key, to make room.
    fn evict(&mut self, now: Instant) {
        let Some((_, key)) = self.order.pop_first() else {
            return;
        };
        self.visited += 1;
        self.keys.remove(&key);
        self.evicted += 1;
        if self
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= EVICTION_WARNING_EVERY)
        {
            tracing::warn!(
                throttle = self.name,
                keys = MAX_KEYS,
                forgotten = self.evicted,
                "a throttle is full: it forgets the least recently counted keys, whose counts start afresh"
            );
            self.evicted = 0;
            self.warned_at = Some(now);
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some(entry) = self.keys.remove(key) {
            self.order.remove(&entry.place);
        }
    }

    fn clear(&mut self, key: &K) {
        self.remove(key);
    }

    fn take_back(&mut self, key: &K, at: Instant) {
        let Some(entry) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(position) = entry.at.iter().rposition(|entry| *entry == at) {
            entry.at.remove(position);
        }
        if entry.at.is_empty() {
            self.remove(key);
        }
    }
}

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
        let start = Instant::now();
        let mut window = Window::new("test", 2, Duration::from_secs(10));
        window.record("k", start);
        window.record("k", start + Duration::from_secs(4));
        assert_eq!(
            window.wait(&"k", start + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(window.wait(&"k", start + Duration::from_secs(10)), None);
    }

    #[test]
    fn a_key_is_swept_once_its_failures_leave_the_window() {
        let start = Instant::now();
        let span = Duration::from_secs(10);
        let mut window = Window::new("test", 5, span);
        window.record("old", start);
        window.record("new", start + span);
        assert_eq!(window.keys.len(), 1, "the old key outlived its window");
        assert_eq!(window.order.len(), 1);
    }

    #[test]
    fn a_hundred_thousand_distinct_keys_stay_within_the_bound_and_a_new_key_costs_the_same() {
        let start = Instant::now();
        let mut window = Window::new("test", 5, Duration::from_secs(3600));
        for i in 0..100_000u64 {
            let before = window.visited;
            window.record(format!("attacker-{i}@example.com"), start + Duration::from_micros(i));
            let visited = window.visited - before;
            assert!(visited <= 2, "key {} visited {visited} entries", i + 1);
            assert!(
                window.keys.len() <= MAX_KEYS && window.order.len() == window.keys.len(),
                "{} keys after {} distinct ones, past the bound of {MAX_KEYS}",
                window.keys.len(),
                i + 1
            );
        }
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_are_counted_as_one() {
        let throttle = throttle(100, 2);
        let at = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        throttle.failed(throttle.begin(&email("a@example.com"), at("2001:db8::1")).unwrap());
        throttle.failed(throttle.begin(&email("b@example.com"), at("2001:db8::2")).unwrap());
        assert!(
            throttle.begin(&email("c@example.com"), at("2001:db8::ffff:1")).is_err(),
            "another address of the same /64 was let in"
        );
        assert!(throttle.begin(&email("c@example.com"), at("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn registrations_from_one_address_are_refused_past_the_limit_unless_undecided() {
        let registrations = RegistrationThrottle::new(RegistrationLimits {
            per_address: 2,
            window: Duration::from_secs(60),
        });
        let here: IpAddr = [10, 0, 0, 1].into();
        registrations.undecided(registrations.begin(Some(here)).unwrap());
        for _ in 0..2 {
            registrations.decided(registrations.begin(Some(here)).unwrap());
        }
        match registrations.begin(Some(here)).err().expect("throttled") {
            ApiError::TooManyRequests { retry_after_secs, .. } => assert!((1..=60).contains(&retry_after_secs)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(registrations.begin(Some([10, 0, 0, 2].into())).is_ok());
    }
}
