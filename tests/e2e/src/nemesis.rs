//! The nemesis of `make chaos NEMESIS=<minutes> SEED=<n>`: a random schedule
//! of faults, drawn from a seed, so a schedule that broke something can be
//! run again as it was.
//!
//! Pure logic: what to do to which process and when. The chaos bench carries
//! it out on the running processes.
//!
//! The schedule's rules:
//! - faults start at random gaps ([`GAPS`]) and last longer than some gaps,
//!   so they overlap;
//! - one fault at a time per process, and one at a time among the Kafka
//!   nodes: the cluster is built to go on without one of its three (a
//!   majority of controllers and `min.insync.replicas=2` remain); without
//!   two it stops by design;
//! - a pause (`SIGSTOP`, then `SIGCONT`) lasts longer than the Kafka
//!   session timeout, so the paused member is taken for dead and comes back
//!   to find its place given away.

use std::{fmt, time::Duration};

/// Gaps between the starts of two faults, in seconds.
pub const GAPS: std::ops::RangeInclusive<u64> = 1..=20;
/// How long a process stays dead after `kill -9`, in seconds.
pub const DOWN: std::ops::RangeInclusive<u64> = 2..=25;
/// How long the collector stays down, in seconds.
pub const COLLECTOR_DOWN: std::ops::RangeInclusive<u64> = 5..=30;
/// Seconds a pause lasts beyond the session timeout.
pub const PAUSE_BEYOND_SESSION: std::ops::RangeInclusive<u64> = 2..=15;
/// How long a Postgres restart is reckoned to keep its target busy.
pub const POSTGRES_RESTART: Duration = Duration::from_secs(5);

/// splitmix64: a small PRNG whose every number follows from the seed alone,
/// on every machine and with every version of every crate.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range` (inclusive), nearly uniform.
    pub fn within(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        let (low, high) = (*range.start(), *range.end());
        low + self.next_u64() % (high - low + 1)
    }

    /// An index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A process, or a part, a fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A Kafka node by its index (0-based), whatever its role.
    Broker(usize),
    /// Whichever Kafka node leads the controller quorum when the fault
    /// comes.
    Controller,
    Consumer(usize),
    /// A user-service replica.
    User(usize),
    Api,
    /// The machine's Postgres.
    Postgres,
    /// The OpenTelemetry Collector every service exports to.
    Collector,
}

impl Target {
    /// Whether it is one of the Kafka nodes.
    pub fn is_kafka(self) -> bool {
        matches!(self, Self::Broker(_) | Self::Controller)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broker(n) => write!(f, "kafka-{n}"),
            Self::Controller => f.write_str("the active controller"),
            Self::Consumer(n) => write!(f, "consumer-{n}"),
            Self::User(n) => write!(f, "user-{n}"),
            Self::Api => f.write_str("api"),
            Self::Postgres => f.write_str("postgres"),
            Self::Collector => f.write_str("the collector"),
        }
    }
}

/// What is done to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `kill -9`, started again `down` later.
    Kill { down: Duration },
    /// `SIGSTOP`, `SIGCONT` `paused` later.
    Pause { paused: Duration },
    /// Restarted (Postgres: `pg_ctlcluster restart`).
    Restart,
    /// Stopped, started again `down` later (the collector).
    Down { down: Duration },
}

impl Action {
    /// How long the target is unwell.
    pub fn lasts(self) -> Duration {
        match self {
            Self::Kill { down } | Self::Down { down } => down,
            Self::Pause { paused } => paused,
            Self::Restart => POSTGRES_RESTART,
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// From the start of the schedule.
    pub at: Duration,
    pub target: Target,
    pub action: Action,
}

impl Fault {
    pub fn ends(&self) -> Duration {
        self.at + self.action.lasts()
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_secs();
        match self.action {
            Action::Kill { down } => write!(f, "{at:>4} s  kill -9 {}, back {} s later", self.target, down.as_secs()),
            Action::Pause { paused } => {
                write!(
                    f,
                    "{at:>4} s  SIGSTOP {}, SIGCONT {} s later",
                    self.target,
                    paused.as_secs()
                )
            }
            Action::Restart => write!(f, "{at:>4} s  restart {}", self.target),
            Action::Down { down } => write!(
                f,
                "{at:>4} s  stop {}, start it {} s later",
                self.target,
                down.as_secs()
            ),
        }
    }
}

/// What the schedule is drawn over.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kafka_nodes: usize,
    pub consumers: usize,
    pub users: usize,
    /// The Kafka session timeout a pause must outlast.
    pub session_timeout: Duration,
    /// Whether Postgres may be restarted (it is the machine's, shared).
    pub postgres: bool,
}

/// The faults of `seed` over `length`: the first at a gap from the start,
/// none starting after `length`; every fault ends by `length` plus its
/// longest duration.
pub fn schedule(seed: u64, length: Duration, shape: &Shape) -> Vec<Fault> {
    let mut rng = SplitMix64::new(seed);
    let mut targets: Vec<Target> = (0..shape.kafka_nodes).map(Target::Broker).collect();
    if shape.kafka_nodes > 1 {
        targets.push(Target::Controller);
    }
    targets.extend((0..shape.consumers).map(Target::Consumer));
    targets.extend((0..shape.users).map(Target::User));
    targets.push(Target::Api);
    if shape.postgres {
        targets.push(Target::Postgres);
    }
    targets.push(Target::Collector);

    let mut faults: Vec<Fault> = Vec::new();
    let mut at = Duration::from_secs(rng.within(GAPS));
    while at < length {
        let free: Vec<Target> = targets
            .iter()
            .copied()
            .filter(|&target| {
                faults.iter().all(|fault| {
                    let clash = fault.target == target || (fault.target.is_kafka() && target.is_kafka());
                    !clash || fault.ends() <= at
                })
            })
            .collect();
        if !free.is_empty() {
            let target = free[rng.below(free.len())];
            let action = match target {
                Target::Postgres => Action::Restart,
                Target::Collector => Action::Down {
                    down: Duration::from_secs(rng.within(COLLECTOR_DOWN)),
                },
                _ if rng.below(3) == 0 => Action::Pause {
                    paused: shape.session_timeout + Duration::from_secs(rng.within(PAUSE_BEYOND_SESSION)),
                },
                _ => Action::Kill {
                    down: Duration::from_secs(rng.within(DOWN)),
                },
            };
            faults.push(Fault { at, target, action });
        }
        at += Duration::from_secs(rng.within(GAPS));
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            kafka_nodes: 3,
            consumers: 3,
            users: 2,
            session_timeout: Duration::from_secs(10),
            postgres: true,
        }
    }

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let first = schedule(42, TEN_MINUTES, &shape());
        assert!(first.len() > 10, "ten minutes hold more than ten faults: {first:?}");
        assert_eq!(first, schedule(42, TEN_MINUTES, &shape()));
    }

    #[test]
    fn another_seed_draws_another_schedule() {
        let first = schedule(1, TEN_MINUTES, &shape());
        for seed in 2..50 {
            assert_ne!(first, schedule(seed, TEN_MINUTES, &shape()), "seed {seed}");
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The reference outputs of splitmix64 seeded with 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn faults_overlap_but_never_two_on_one_process_or_two_kafka_nodes() {
        let mut overlapping = 0;
        for seed in 0..200 {
            let faults = schedule(seed, TEN_MINUTES, &shape());
            for (n, a) in faults.iter().enumerate() {
                assert!(a.at < TEN_MINUTES);
                for b in &faults[n + 1..] {
                    let overlap = b.at < a.ends();
                    overlapping += usize::from(overlap);
                    if overlap {
                        assert_ne!(a.target, b.target, "seed {seed}: {a} and {b}");
                        assert!(
                            !(a.target.is_kafka() && b.target.is_kafka()),
                            "seed {seed}: {a} and {b}"
                        );
                    }
                }
            }
        }
        assert!(
            overlapping > 100,
            "faults overlap ({overlapping} pairs in 200 schedules)"
        );
    }

    #[test]
    fn every_kind_of_fault_comes_and_pauses_outlast_the_session() {
        let faults: Vec<Fault> = (0..20).flat_map(|seed| schedule(seed, TEN_MINUTES, &shape())).collect();
        for target in [
            Target::Broker(0),
            Target::Controller,
            Target::Consumer(2),
            Target::User(1),
            Target::Api,
            Target::Postgres,
            Target::Collector,
        ] {
            assert!(faults.iter().any(|f| f.target == target), "{target} never struck");
        }
        assert!(faults.iter().any(|f| matches!(f.action, Action::Kill { .. })));
        for fault in &faults {
            if let Action::Pause { paused } = fault.action {
                assert!(paused > shape().session_timeout, "{fault}");
            }
        }
        assert!(faults.iter().any(|f| matches!(f.action, Action::Pause { .. })));
    }

    #[test]
    fn without_postgres_it_is_never_restarted() {
        let shape = Shape {
            postgres: false,
            ..shape()
        };
        assert!((0..50).all(|seed| {
            schedule(seed, TEN_MINUTES, &shape)
                .iter()
                .all(|f| f.target != Target::Postgres)
        }));
    }
}
