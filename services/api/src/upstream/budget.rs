//! The retry budget: retries may add at most a fixed share of load.
//!
//! In the style of Finagle's and Linkerd's budgets: every original call
//! deposits `ratio` of a retry, every retry withdraws a whole one, over a
//! sliding window; a small floor of retries per second keeps a quiet service
//! able to retry at all. When the user service is down, each caller's retries
//! would otherwise multiply the load on it just as it tries to come back.
//! Pure accounting: the caller passes the time.

use std::time::{Duration, Instant};

/// How many slots the window is cut into; the oldest slot leaves as a whole.
const SLOTS: u32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct BudgetPolicy {
    /// Retries allowed per original call (0.2: at most 20% extra load).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_second: f64,
    /// How far back calls and retries count.
    pub window: Duration,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10.0,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which slot of time this is (its start, in slot lengths since `origin`).
    index: u64,
    calls: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    origin: Instant,
    slots: [Slot; SLOTS as usize],
}

impl RetryBudget {
    pub fn new(policy: BudgetPolicy, now: Instant) -> Self {
        Self {
            policy,
            origin: now,
            slots: [Slot::default(); SLOTS as usize],
        }
    }

    fn slot_length(&self) -> Duration {
        (self.policy.window / SLOTS).max(Duration::from_millis(1))
    }

    /// The current slot, emptied first if it last held an older slot of time.
    fn current(&mut self, now: Instant) -> &mut Slot {
        let index = (now.saturating_duration_since(self.origin).as_nanos() / self.slot_length().as_nanos()) as u64;
        let slot = &mut self.slots[(index % u64::from(SLOTS)) as usize];
        if slot.index != index {
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        slot
    }

    /// An original call: it earns `ratio` of a retry.
    pub fn deposit(&mut self, now: Instant) {
        self.current(now).calls += 1;
    }

    /// Takes one retry from the budget, if the window has one left.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let newest = self.current(now).index;
        let live = self
            .slots
            .iter()
            .filter(|slot| slot.index + u64::from(SLOTS) > newest && slot.index <= newest);
        let (calls, retries) = live.fold((0, 0), |(calls, retries), slot| {
            (calls + slot.calls, retries + slot.retries)
        });
        let allowed = calls as f64 * self.policy.ratio + self.policy.min_per_second * self.policy.window.as_secs_f64();
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.current(now).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min_per_second: f64) -> BudgetPolicy {
        BudgetPolicy {
            ratio: 0.2,
            min_per_second,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_at_most_a_fifth_of_the_calls() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(policy(0.0), start);
        for _ in 0..100 {
            budget.deposit(start);
        }
        let granted = (0..100).filter(|_| budget.withdraw(start)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn a_quiet_service_still_gets_its_floor() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(policy(1.0), start);
        // 1 per second over a 10 s window: 10 retries with no call at all.
        let granted = (0..50).filter(|_| budget.withdraw(start)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn calls_and_retries_leave_the_window() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(policy(0.0), start);
        for _ in 0..50 {
            budget.deposit(start);
        }
        assert_eq!((0..50).filter(|_| budget.withdraw(start)).count(), 10);
        // Eleven seconds on, the old calls no longer earn anything...
        let later = start + Duration::from_secs(11);
        assert!(!budget.withdraw(later));
        // ...and new ones earn afresh, with the old retries forgotten too.
        for _ in 0..10 {
            budget.deposit(later);
        }
        assert_eq!((0..10).filter(|_| budget.withdraw(later)).count(), 2);
    }
}
