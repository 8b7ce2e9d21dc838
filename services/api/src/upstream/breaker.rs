//! The circuit breaker's state machine: pure, the caller passes the time.
//!
//! Closed, it keeps the outcomes of the last `min_calls` calls (those no
//! older than `window`); once it holds that many and the failed share of
//! them reaches `failure_rate`, it opens. Counting the last calls rather
//! than a stretch of time makes it open within about one deadline of a
//! sudden slowdown, however many calls had succeeded just before: when every
//! call starts to wait out its deadline, the calls that fail are the last
//! ones made. Open, every call fails at once for `open_for`, so a struggling user
//! service is left alone to recover and callers get their answer without
//! waiting out a deadline. Then one probe goes through (half-open): success
//! closes the breaker, failure opens it again for another `open_for`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The breaker's settings; the configured ones' defaults are in the API's
/// `config::SETTINGS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// The failed share of calls at which the breaker opens.
    pub failure_rate: f64,
    /// How many of the last calls the rate is taken over; fewer (in the
    /// window) mean nothing yet.
    pub min_calls: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
    /// How old an outcome may be and still count.
    pub window: Duration,
}

impl BreakerPolicy {
    /// How old an outcome may be and still count: not a setting.
    pub const WINDOW: Duration = Duration::from_secs(10);
}

/// The breaker's state, as logs and spans name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A call counted in the window.
    Call,
    /// The one call that tests a half-open breaker.
    Probe,
    /// Refused: the breaker is open for this much longer.
    Refused { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe went out at `since`; if it never reports (its caller gave
    /// up), another may go once `open_for` has passed.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    /// When each of the last calls ended, and whether it failed.
    outcomes: VecDeque<(Instant, bool)>,
    phase: Phase,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            outcomes: VecDeque::with_capacity(policy.min_calls as usize),
            phase: Phase::Closed,
        }
    }

    /// The state now, as `callchain.upstream.breaker.state` reports it.
    pub(super) fn state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Decides on a call about to go out; a change of state (open to
    /// half-open) comes back with it.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<State>) {
        match self.phase {
            Phase::Closed => (Admission::Call, None),
            Phase::Open { until } if now < until => (
                Admission::Refused {
                    retry_after: until - now,
                },
                None,
            ),
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen { since: now };
                (Admission::Probe, Some(State::HalfOpen))
            }
            Phase::HalfOpen { since } if now.saturating_duration_since(since) >= self.policy.open_for => {
                self.phase = Phase::HalfOpen { since: now };
                (Admission::Probe, None)
            }
            Phase::HalfOpen { since } => (
                Admission::Refused {
                    retry_after: self
                        .policy
                        .open_for
                        .saturating_sub(now.saturating_duration_since(since)),
                },
                None,
            ),
        }
    }

    /// Records how an admitted call ended; a change of state comes back.
    pub fn record(&mut self, admission: Admission, failed: bool, now: Instant) -> Option<State> {
        match (admission, self.phase) {
            (Admission::Probe, Phase::HalfOpen { .. }) if failed => {
                self.phase = Phase::Open {
                    until: now + self.policy.open_for,
                };
                Some(State::Open)
            }
            (Admission::Probe, Phase::HalfOpen { .. }) => {
                self.phase = Phase::Closed;
                self.outcomes.clear();
                Some(State::Closed)
            }
            (Admission::Call, Phase::Closed) => {
                let last = self.policy.min_calls.max(1) as usize;
                if self.outcomes.len() == last {
                    self.outcomes.pop_front();
                }
                self.outcomes.push_back((now, failed));
                while self
                    .outcomes
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.policy.window)
                {
                    self.outcomes.pop_front();
                }
                let calls = self.outcomes.len();
                let failures = self.outcomes.iter().filter(|(_, failed)| *failed).count();
                let tripped = calls >= last && failures as f64 >= self.policy.failure_rate * calls as f64;
                tripped.then(|| {
                    self.phase = Phase::Open {
                        until: now + self.policy.open_for,
                    };
                    State::Open
                })
            }
            // Calls admitted in an earlier state, answering late: the state
            // they would speak to has passed.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_calls: 4,
            open_for: Duration::from_secs(5),
            window: Duration::from_secs(10),
        }
    }

    /// Admits and records `n` calls at `now`; the last change of state.
    fn calls(breaker: &mut Breaker, n: u32, failed: bool, now: Instant) -> Option<State> {
        let mut change = None;
        for _ in 0..n {
            let (admission, _) = breaker.admit(now);
            change = breaker.record(admission, failed, now).or(change);
        }
        change
    }

    #[test]
    fn it_opens_on_the_failure_rate_once_enough_calls_count() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        assert_eq!(calls(&mut breaker, 2, false, now), None);
        // 1 failure of 3: too few calls; 2 of 4: half of them, open.
        assert_eq!(calls(&mut breaker, 1, true, now), None);
        assert_eq!(calls(&mut breaker, 1, true, now), Some(State::Open));
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn failures_below_the_rate_keep_it_closed() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        // One failure in every four calls: a quarter of any last four.
        for _ in 0..10 {
            assert_eq!(calls(&mut breaker, 3, false, now), None);
            assert_eq!(calls(&mut breaker, 1, true, now), None);
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn a_sudden_run_of_failures_opens_it_however_many_calls_succeeded_before() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 1000, false, now);
        let later = now + Duration::from_secs(1);
        assert_eq!(calls(&mut breaker, 1, true, later), None);
        assert_eq!(calls(&mut breaker, 1, true, later), Some(State::Open));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 3, true, now);
        let later = now + Duration::from_secs(11);
        assert_eq!(calls(&mut breaker, 1, true, later), None);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn open_refuses_with_the_time_left_then_lets_one_probe_through() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 4, true, now);
        let (admission, _) = breaker.admit(now + Duration::from_secs(2));
        assert_eq!(
            admission,
            Admission::Refused {
                retry_after: Duration::from_secs(3)
            }
        );
        let after = now + Duration::from_secs(5);
        assert_eq!(breaker.admit(after), (Admission::Probe, Some(State::HalfOpen)));
        // Only one probe at a time.
        assert!(matches!(breaker.admit(after).0, Admission::Refused { .. }));
        assert_eq!(breaker.record(Admission::Probe, false, after), Some(State::Closed));
        assert_eq!(breaker.admit(after).0, Admission::Call);
        // Closing forgets the failures that opened it.
        assert_eq!(calls(&mut breaker, 1, true, after), None);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_cool_down() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 4, true, now);
        let after = now + Duration::from_secs(5);
        let (probe, _) = breaker.admit(after);
        assert_eq!(breaker.record(probe, true, after), Some(State::Open));
        assert_eq!(
            breaker.admit(after + Duration::from_secs(1)).0,
            Admission::Refused {
                retry_after: Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cool_down() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 4, true, now);
        let after = now + Duration::from_secs(5);
        assert_eq!(breaker.admit(after).0, Admission::Probe);
        assert_eq!(breaker.admit(after + Duration::from_secs(5)).0, Admission::Probe);
    }

    #[test]
    fn late_answers_of_calls_from_before_do_not_move_it() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy());
        calls(&mut breaker, 4, true, now);
        assert_eq!(breaker.record(Admission::Call, false, now), None);
        assert_eq!(breaker.state(), State::Open);
    }
}
