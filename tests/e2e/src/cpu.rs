//! CPU time by thread name, read from `/proc`: how a benchmark tells the
//! services' CPU time from its load generator's and the span receiver's
//! when all of them share one process.
//!
//! The in-process services run on threads named after them (`api`, `user`,
//! `consumer`); the OpenTelemetry batch span processors on threads named
//! `OpenTelemetry.*`; the OTLP receiver on `otlp-receiver`; librdkafka on
//! `rdk:*`. The rest (the benchmark's own runtime) is the load generator.
//!
//! [`machine`] names the machine the figures were measured on, as the docs
//! date and place every table.

use std::{collections::BTreeMap, time::Duration};

/// CPU time (user + system) of every thread of this process, summed by
/// [`group`], as of one moment.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes(BTreeMap<&'static str, Duration>);

/// The group a thread's name (its `comm`, cut to 15 bytes by Linux) counts in.
pub fn group(comm: &str) -> &'static str {
    match comm {
        "api" => "api",
        "user" => "user",
        // Its loop's runtime, and the thread that drops its handled batches.
        "consumer" | "consumer-close" => "consumer",
        "otlp-receiver" => "receiver",
        comm if comm.starts_with("OpenTelemetry") => "span export",
        comm if comm.starts_with("rdk:") => "librdkafka",
        _ => "load generator",
    }
}

impl CpuTimes {
    /// The CPU time of this process's threads now. Threads that ended
    /// before this moment are missing: take both snapshots of a
    /// measurement while the same threads run.
    pub fn now() -> std::io::Result<Self> {
        let mut times = BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            let path = task?.path();
            // A thread may end between the listing and the reading.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
            ) else {
                continue;
            };
            let Some(busy) = busy_ticks(&stat) else { continue };
            *times.entry(group(comm.trim())).or_default() +=
                Duration::from_secs_f64(busy as f64 / CLOCK_TICKS_PER_SECOND);
        }
        Ok(Self(times))
    }

    /// The CPU time spent between `earlier` and `self`, by group.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes(
            self.0
                .iter()
                .map(|(group, time)| {
                    let before = earlier.0.get(group).copied().unwrap_or_default();
                    (*group, time.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// The time of one group (zero when no thread of it ran).
    pub fn of(&self, group: &str) -> Duration {
        self.0.get(group).copied().unwrap_or_default()
    }

    /// The time of every group but those named.
    pub fn all_but(&self, groups: &[&str]) -> Duration {
        self.0
            .iter()
            .filter(|(group, _)| !groups.contains(group))
            .map(|(_, time)| *time)
            .sum()
    }
}

/// utime + stime, in clock ticks, from a `/proc/<pid>/task/<tid>/stat` line.
fn busy_ticks(stat: &str) -> Option<u64> {
    // The command name, field 2, is in parentheses and may hold spaces; the
    // fields after its closing parenthesis start at field 3 (the state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second for `/proc` times: 100 on every
/// Linux this runs on (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system) of processes outside this one, such as the
/// Postgres backends serving a benchmark, in clock ticks from their
/// `/proc/<pid>/stat`; processes that are gone count nothing.
pub fn process_cpu(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| busy_ticks(&stat))
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_SECOND))
        .sum()
}

/// The machine, as the docs name it, from the text of `/proc/cpuinfo` and
/// the number of cores: its cores, architecture, whether it is a virtual
/// machine (the `hypervisor` CPU flag), and its CPU's model.
pub fn machine(cpuinfo: &str, cores: usize) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim())
    };
    let virtual_machine = field("flags").is_some_and(|flags| flags.split_whitespace().any(|flag| flag == "hypervisor"));
    let kind = if virtual_machine { "VM" } else { "machine" };
    let model = field("model name")
        .map(|model| format!(" ({model})"))
        .unwrap_or_default();
    format!("{cores}-core {} {kind}{model}", std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (OpenTelemetry.T x) S 1 2 3 4 5 6 7 8 9 10 120 35 0 0 20 0 1 0";
        assert_eq!(busy_ticks(stat), Some(155));
    }

    #[test]
    fn threads_are_grouped_by_their_names() {
        assert_eq!(group("api"), "api");
        assert_eq!(group("consumer-close"), "consumer");
        assert_eq!(group("OpenTelemetry.T"), "span export");
        assert_eq!(group("rdk:broker1"), "librdkafka");
        assert_eq!(group("tokio-rt-worker"), "load generator");
    }

    #[test]
    fn a_busy_thread_shows_in_the_load_generator_group() {
        let before = CpuTimes::now().expect("/proc/self/task");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let spent = CpuTimes::now().expect("/proc/self/task").since(&before);
        assert!(spent.of("load generator") >= Duration::from_millis(200), "{spent:?}");
    }

    #[test]
    fn a_machine_is_named_by_its_cores_architecture_model_and_whether_it_is_virtual() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme hypervisor lahf_lm\n\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        let arch = std::env::consts::ARCH;
        assert_eq!(machine(cpuinfo, 2), format!("2-core {arch} VM (AMD EPYC 7B13)"));
        let bare = cpuinfo.replace(" hypervisor", "");
        assert_eq!(machine(&bare, 16), format!("16-core {arch} machine (AMD EPYC 7B13)"));
        assert_eq!(machine("", 4), format!("4-core {arch} machine"));
    }
}
