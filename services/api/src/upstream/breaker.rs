//! The circuit breaker's state machine: pure, the caller passes the time.
//!
//! Closed, it counts outcomes over a rolling window; once the window holds
//! at least `min_calls` and the failed share reaches `failure_rate`, it
//! opens. Open, every call fails at once for `open_for`, so a struggling user
//! service is left alone to recover and callers get their answer without
//! waiting out a deadline. Then one probe goes through (half-open): success
//! closes the breaker, failure opens it again for another `open_for`.

use std::time::{Duration, Instant};

/// How many slots the window is cut into; the oldest slot leaves as a whole.
const SLOTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// The failed share of calls at which the breaker opens (0.5).
    pub failure_rate: f64,
    /// The fewest calls in the window before the rate means anything (20).
    pub min_calls: u32,
    /// How long it stays open before a probe (5 s).
    pub open_for: Duration,
    /// How far back outcomes count (10 s).
    pub window: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_calls: 20,
            open_for: Duration::from_secs(5),
            window: Duration::from_secs(10),
        }
    }
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

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    index: u64,
    calls: u32,
    failures: u32,
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
    origin: Instant,
    slots: [Slot; SLOTS as usize],
    phase: Phase,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy, now: Instant) -> Self {
        Self {
            policy,
            origin: now,
            slots: [Slot::default(); SLOTS as usize],
            phase: Phase::Closed,
        }
    }

    #[cfg(test)]
    fn state(&self) -> State {
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
                self.slots = [Slot::default(); SLOTS as usize];
                Some(State::Closed)
            }
            (Admission::Call, Phase::Closed) => {
                let slot = self.current(now);
                slot.calls += 1;
                slot.failures += u32::from(failed);
                let (calls, failures) = self.totals(now);
                let tripped = calls >= self.policy.min_calls
                    && f64::from(failures) >= self.policy.failure_rate * f64::from(calls);
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

    fn slot_index(&self, now: Instant) -> u64 {
        let length = (self.policy.window / SLOTS).max(Duration::from_millis(1));
        (now.saturating_duration_since(self.origin).as_nanos() / length.as_nanos()) as u64
    }

    fn current(&mut self, now: Instant) -> &mut Slot {
        let index = self.slot_index(now);
        let slot = &mut self.slots[(index % u64::from(SLOTS)) as usize];
        if slot.index != index {
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        slot
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let newest = self.slot_index(now);
        self.slots
            .iter()
            .filter(|slot| slot.index + u64::from(SLOTS) > newest && slot.index <= newest)
            .fold((0, 0), |(calls, failures), slot| {
                (calls + slot.calls, failures + slot.failures)
            })
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
        let mut breaker = Breaker::new(policy(), now);
        assert_eq!(calls(&mut breaker, 2, false, now), None);
        // 1 failure of 3: too few calls; 2 of 4: half of them, open.
        assert_eq!(calls(&mut breaker, 1, true, now), None);
        assert_eq!(calls(&mut breaker, 1, true, now), Some(State::Open));
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn failures_below_the_rate_keep_it_closed() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(), now);
        calls(&mut breaker, 10, false, now);
        assert_eq!(calls(&mut breaker, 9, true, now), None);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(), now);
        calls(&mut breaker, 3, true, now);
        let later = now + Duration::from_secs(11);
        assert_eq!(calls(&mut breaker, 1, true, later), None);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn open_refuses_with_the_time_left_then_lets_one_probe_through() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(), now);
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
        let mut breaker = Breaker::new(policy(), now);
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
        let mut breaker = Breaker::new(policy(), now);
        calls(&mut breaker, 4, true, now);
        let after = now + Duration::from_secs(5);
        assert_eq!(breaker.admit(after).0, Admission::Probe);
        assert_eq!(breaker.admit(after + Duration::from_secs(5)).0, Admission::Probe);
    }

    #[test]
    fn late_answers_of_calls_from_before_do_not_move_it() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(), now);
        calls(&mut breaker, 4, true, now);
        assert_eq!(breaker.record(Admission::Call, false, now), None);
        assert_eq!(breaker.state(), State::Open);
    }
}
