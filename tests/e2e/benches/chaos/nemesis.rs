//! Scenario 14, the nemesis: faults in combination, at random, drawn from a
//! seed (`callchain_e2e::nemesis`), over the three-node cluster, three
//! consumers and two user-service replicas under the steady write load:
//! `kill -9` and restart of any process, `SIGSTOP`/`SIGCONT` pauses longer
//! than the session timeout, a Postgres restart, the collector down,
//! overlapping. One checker at the end: nothing acknowledged lost, nothing
//! duplicated, each user's events in order and without a hole, every
//! process serving again without a hand, and no `/readyz` saying ready for
//! long while its service did not serve.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use callchain_e2e::nemesis::{self, Action, Fault, Shape, Target};
use callchain_testkit::process::signal;

use crate::{
    cluster::{CONSUMERS, ClusterParts, Fleet, NODES, answered, events_written},
    collector_down::Collector,
    harness::{Answer, Row, Settings, Spec, audit, caught_up, first_2xx_after, setting, start_load, warm_up},
    postgres_restart::restart_postgres,
};

/// The consumers' session timeout (the consumer's `session.timeout.ms`),
/// which a pause outlasts.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `/readyz` may say ready while its service does not serve: the
/// consumer's own grace, plus the sampling's slack.
const READY_GRACE: Duration = Duration::from_secs(13);
/// How often readiness is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long every process has, after the last fault, to serve again.
const SETTLE: Duration = Duration::from_secs(60);

/// What `make chaos NEMESIS=<minutes> SEED=<n>` asks for.
pub struct Plan {
    pub minutes: f64,
    pub seed: u64,
    pub postgres: bool,
}

impl Plan {
    /// From `NEMESIS` (minutes; 2 when unset), `SEED` (a fresh one when
    /// unset) and `NEMESIS_POSTGRES` (`0` leaves the machine's Postgres
    /// alone); and whether `NEMESIS` was set.
    pub fn from_env() -> (Self, bool) {
        let asked: Option<f64> = setting("NEMESIS")
            .and_then(|m| m.parse().ok())
            .filter(|m: &f64| *m > 0.0);
        let seed = setting("SEED").and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
        let plan = Self {
            minutes: asked.unwrap_or(2.0),
            seed,
            postgres: setting("NEMESIS_POSTGRES").is_none_or(|v| v != "0"),
        };
        (plan, asked.is_some())
    }

    fn shape() -> Shape {
        Shape {
            kafka_nodes: NODES,
            consumers: CONSUMERS,
            users: 2,
            session_timeout: SESSION_TIMEOUT,
            postgres: true,
        }
    }

    pub fn schedule(&self) -> Vec<Fault> {
        let shape = Shape {
            postgres: self.postgres,
            ..Self::shape()
        };
        nemesis::schedule(self.seed, Duration::from_secs_f64(self.minutes * 60.0), &shape)
    }
}

/// One look at every service's readiness.
struct Look {
    /// From the load's start.
    at: Duration,
    ready: BTreeMap<String, bool>,
    /// Each consumer's events written (its `/healthz`).
    written: Vec<Option<u64>>,
    rows: Option<usize>,
    /// Events still in the outbox: not in Kafka yet, so no consumer's to
    /// read (a relay's stall is not a consumer's).
    outbox: Option<usize>,
    acknowledged: usize,
}

pub async fn nemesis(settings: &Settings, row: &mut Row, plan: &Plan) -> anyhow::Result<()> {
    let schedule = plan.schedule();
    row.fault = format!("14. the nemesis, seed {}, {} min", plan.seed, plan.minutes);
    println!(
        "\nNEMESIS: seed {}, {} min, {} faults{} (replay: make chaos NEMESIS={} SEED={}{})",
        plan.seed,
        plan.minutes,
        schedule.len(),
        if plan.postgres { "" } else { ", Postgres left alone" },
        plan.minutes,
        plan.seed,
        if plan.postgres { "" } else { " NEMESIS_POSTGRES=0" },
    );
    for fault in &schedule {
        println!("  {fault}");
    }
    let mut cluster = ClusterParts::start(NODES).await?;
    let mut collector = Collector::start()?;
    let (services, load_users, load) =
        start_load(settings, &cluster.parts, 2, &collector.endpoint(), |api| api).await?;
    let mut fleet = Fleet::start(services, CONSUMERS).await?;
    warm_up(settings).await;

    // Readiness, each consumer's progress and the rows, every half second.
    let looks = Arc::new(Mutex::new(Vec::<Look>::new()));
    let watcher = {
        let probes: Vec<(String, Probe, SocketAddr)> = probes(&mut fleet);
        let consumers: Vec<SocketAddr> = (0..CONSUMERS).map(|n| fleet.consumer(n).0.addr).collect();
        let (looks, answers, started, db) = (
            looks.clone(),
            load.answers.clone(),
            load.started,
            cluster.parts.db.pool().clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .build()
                .expect("an HTTP client");
            loop {
                let at = started.elapsed();
                let mut ready = BTreeMap::new();
                for (name, probe, addr) in &probes {
                    ready.insert(name.clone(), probe.ready(&http, *addr).await);
                }
                let mut written = Vec::new();
                for addr in &consumers {
                    written.push(events_written(&http, *addr).await);
                }
                let rows =
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_events WHERE event_type = 'user.updated'")
                        .fetch_one(&db)
                        .await
                        .ok()
                        .map(|n| n as usize);
                let outbox = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
                    .fetch_one(&db)
                    .await
                    .ok()
                    .map(|n| n as usize);
                let acknowledged = answers.lock().expect("answers").iter().filter(|a| a.is_2xx()).count();
                looks.lock().expect("looks").push(Look {
                    at,
                    ready,
                    written,
                    rows,
                    outbox,
                    acknowledged,
                });
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    // The schedule's steps, in time order.
    let mut steps: Vec<(Duration, bool, usize)> = Vec::new();
    for (n, fault) in schedule.iter().enumerate() {
        steps.push((fault.at, true, n));
        if fault.action != Action::Restart {
            steps.push((fault.ends(), false, n));
        }
    }
    steps.sort();
    let began = Instant::now();
    let offset = load.now();
    let mut struck: BTreeMap<usize, usize> = BTreeMap::new(); // fault -> Kafka node
    let mut hands: Vec<String> = Vec::new();
    let mut busy: Vec<Target> = Vec::new();
    // When each fault actually began: a restart that waits for its process
    // delays the steps after it, and a fault begun late lasts its whole
    // length all the same.
    let mut begun: BTreeMap<usize, Duration> = BTreeMap::new();
    for (at, begins, n) in steps {
        let at = if begins {
            at
        } else {
            at.max(begun.get(&n).map_or(at, |start| *start + schedule[n].action.lasts()))
        };
        tokio::time::sleep(at.saturating_sub(began.elapsed())).await;
        if begins {
            begun.insert(n, began.elapsed());
        }
        let fault = schedule[n];
        let now = began.elapsed().as_secs_f64();
        // A process that died without being killed needed a hand.
        for target in services_of(&fleet) {
            if busy.contains(&target) {
                continue;
            }
            if let Some((_, process)) = service(&mut fleet, target)
                && let Some(status) = process.try_exit()
            {
                hands.push(format!("{target} exited by itself ({status}) before {now:.0} s"));
                eprintln!("    {now:>6.1} s  {target} exited by itself ({status}); started again");
                restart_service(&mut fleet, target).await;
            }
        }
        let what = match (begins, fault.target, fault.action) {
            (true, Target::Broker(_) | Target::Controller, action) => {
                let node = match fault.target {
                    Target::Broker(node) => node,
                    _ => cluster.controller().unwrap_or(0),
                };
                struck.insert(n, node);
                busy.push(fault.target);
                match action {
                    Action::Pause { .. } => {
                        let _ = cluster.pid(node).and_then(|pid| signal(pid, "STOP"));
                        format!("SIGSTOP kafka node {}", cluster.node_id(node))
                    }
                    _ => {
                        cluster.kill(node);
                        format!("kill -9 kafka node {}", cluster.node_id(node))
                    }
                }
            }
            (false, Target::Broker(_) | Target::Controller, action) => {
                let node = struck[&n];
                busy.retain(|t| *t != fault.target);
                match action {
                    Action::Pause { .. } => {
                        let _ = cluster.pid(node).and_then(|pid| signal(pid, "CONT"));
                        format!("SIGCONT kafka node {}", cluster.node_id(node))
                    }
                    _ => match cluster.restart(node) {
                        Ok(()) => format!("kafka node {} started again", cluster.node_id(node)),
                        Err(error) => {
                            hands.push(format!(
                                "kafka node {} would not start again: {error:#}",
                                cluster.node_id(node)
                            ));
                            format!("kafka node {} would not start again: {error:#}", cluster.node_id(node))
                        }
                    },
                }
            }
            (_, Target::Postgres, _) => match tokio::task::block_in_place(restart_postgres) {
                Ok(()) => "Postgres restarted".to_owned(),
                Err(error) => format!("Postgres restart failed: {error:#}"),
            },
            (true, Target::Collector, _) => {
                collector.stop();
                "collector stopped".to_owned()
            }
            (false, Target::Collector, _) => match tokio::task::block_in_place(|| collector.restart()) {
                Ok(()) => "collector started again".to_owned(),
                Err(error) => {
                    hands.push(format!("the collector would not start again: {error:#}"));
                    format!("the collector would not start again: {error:#}")
                }
            },
            (true, target, Action::Pause { .. }) => {
                busy.push(target);
                let pid = service(&mut fleet, target).map(|(_, p)| p.pid());
                let _ = pid.map(|pid| signal(pid, "STOP"));
                format!("SIGSTOP {target}")
            }
            (false, target, Action::Pause { .. }) => {
                busy.retain(|t| *t != target);
                let pid = service(&mut fleet, target).map(|(_, p)| p.pid());
                let _ = pid.map(|pid| signal(pid, "CONT"));
                format!("SIGCONT {target}")
            }
            (true, target, _) => {
                busy.push(target);
                if let Some((_, process)) = service(&mut fleet, target) {
                    process.kill();
                }
                format!("kill -9 {target}")
            }
            (false, target, _) => {
                busy.retain(|t| *t != target);
                if restart_service(&mut fleet, target).await {
                    format!("{target} started again")
                } else {
                    hands.push(format!("{target} would not start again"));
                    format!("{target} would not start again")
                }
            }
        };
        eprintln!("    {:>6.1} s  {what}", began.elapsed().as_secs_f64());
    }
    let healed = load.now();
    eprintln!(
        "    the last fault healed {:.0} s in; every process has {SETTLE:?} to serve again",
        (healed - offset).as_secs_f64()
    );

    // Every process serving again, by itself.
    let settle_from = Instant::now();
    let probes = probes(&mut fleet);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let mut not_ready: Vec<String> = probes.iter().map(|(name, _, _)| name.clone()).collect();
    while !not_ready.is_empty() && settle_from.elapsed() < SETTLE {
        let mut still = Vec::new();
        for (name, probe, addr) in &probes {
            if not_ready.contains(name) && !probe.ready(&http, *addr).await {
                still.push(name.clone());
            }
        }
        not_ready = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let target = load.acknowledged();
    let consumed = caught_up(&cluster.parts.db, target, SETTLE).await;
    let dead = fleet.dead();
    watcher.abort();
    let answers = load.stop().await;
    let writes_back = first_2xx_after(&answers, healed);
    if let Some(took) = writes_back {
        row.recovered(took);
    }

    let (kept, cut_off) = answered(&answers);
    audit(row, &cluster.parts, &load_users, &kept).await?;
    row.count(&answers);
    eprintln!(
        "    {cut_off} requests cut off while the API or a replica died or slept (none acknowledged, so none owed)"
    );
    row.must(hands.is_empty(), format!("no process needed a hand ({hands:?})"));
    row.must(
        dead.is_empty() && not_ready.is_empty(),
        format!(
            "every process serves again by itself after the last fault (not ready after {SETTLE:?}: {not_ready:?}; dead: {dead:?})"
        ),
    );
    row.must(
        writes_back.is_some(),
        "the API answers writes 2xx again after the last fault",
    );
    row.must(
        consumed.is_some(),
        format!("the consumers write every acknowledged change ({target}) by the end"),
    );
    let looks = std::mem::take(&mut *looks.lock().expect("looks"));
    for (what, longest) in lies(&looks, &answers) {
        row.must(
            longest <= READY_GRACE,
            format!("{what} said ready while not serving for at most {READY_GRACE:?} (longest {longest:.1?})"),
        );
    }
    Ok(())
}

/// How a service's readiness is asked.
#[derive(Clone, Copy)]
enum Probe {
    Http,
    Grpc,
}

impl Probe {
    async fn ready(self, http: &reqwest::Client, addr: SocketAddr) -> bool {
        match self {
            Self::Http => http
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|answer| answer.status().is_success()),
            Self::Grpc => tokio::time::timeout(Duration::from_secs(1), callchain_user::healthcheck(addr))
                .await
                .is_ok_and(|result| result.is_ok()),
        }
    }
}

/// Every service's readiness probe: the API, the user replicas, the consumers.
fn probes(fleet: &mut Fleet) -> Vec<(String, Probe, SocketAddr)> {
    let mut probes = vec![("api".to_owned(), Probe::Http, fleet.services.api.0.addr)];
    for (n, (spec, _)) in fleet.services.users.iter().enumerate() {
        probes.push((format!("user-{n}"), Probe::Grpc, spec.addr));
    }
    for n in 0..CONSUMERS {
        probes.push((format!("consumer-{n}"), Probe::Http, fleet.consumer(n).0.addr));
    }
    probes
}

fn services_of(fleet: &Fleet) -> Vec<Target> {
    let mut targets = vec![Target::Api];
    targets.extend((0..fleet.services.users.len()).map(Target::User));
    targets.extend((0..fleet.consumers()).map(Target::Consumer));
    targets
}

fn service(fleet: &mut Fleet, target: Target) -> Option<&mut (Spec, callchain_testkit::process::ServiceProcess)> {
    match target {
        Target::Api => Some(&mut fleet.services.api),
        Target::User(n) => fleet.services.users.get_mut(n),
        Target::Consumer(n) => Some(fleet.consumer(n)),
        _ => None,
    }
}

/// Starts a killed service again, trying for a minute (its parts may be
/// down meanwhile): whether it came back.
async fn restart_service(fleet: &mut Fleet, target: Target) -> bool {
    let Some((spec, process)) = service(fleet, target) else {
        return false;
    };
    process.kill();
    let spec = spec.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match spec.start().await {
            Ok(started) => {
                if let Some((_, process)) = service(fleet, target) {
                    *process = started;
                }
                return true;
            }
            Err(error) if Instant::now() < deadline => {
                eprintln!("    {target} did not start ({error:#}); trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => {
                eprintln!("    {target} did not start ({error:#})");
                return false;
            }
        }
    }
}

/// For each service, the longest stretch in which its `/readyz` said ready
/// while it did not serve:
/// - the API: every write answered in the stretch failed;
/// - a consumer: changes waited in Kafka (acknowledged, neither stored nor
///   still in the outbox), and neither it nor any other wrote one.
fn lies(looks: &[Look], answers: &[Answer]) -> Vec<(String, Duration)> {
    let mut found = Vec::new();
    // The API.
    let failing = |at: Duration| {
        let near: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.done() + Duration::from_secs(1) >= at && a.done() <= at + Duration::from_secs(1))
            .collect();
        !near.is_empty() && near.iter().all(|a| !a.is_2xx())
    };
    found.push((
        "the API".to_owned(),
        longest(
            looks,
            |look| look.ready.get("api") == Some(&true) && failing(look.at),
            |_, _| true,
        ),
    ));
    for n in 0..CONSUMERS {
        let name = format!("consumer-{n}");
        found.push((
            name.clone(),
            longest(
                looks,
                |look| {
                    look.ready.get(&name) == Some(&true)
                        && look
                            .rows
                            .zip(look.outbox)
                            .is_some_and(|(rows, outbox)| look.acknowledged > rows + outbox)
                },
                |first, look| look.rows == first.rows && look.written.get(n) == first.written.get(n),
            ),
        ));
    }
    found
}

/// The longest run of looks that are each `stuck`, and each `same` as the
/// run's first.
fn longest(looks: &[Look], stuck: impl Fn(&Look) -> bool, same: impl Fn(&Look, &Look) -> bool) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<&Look> = None;
    for look in looks {
        match since {
            Some(first) if stuck(look) && same(first, look) => longest = longest.max(look.at - first.at),
            _ if stuck(look) => since = Some(look),
            _ => since = None,
        }
    }
    longest
}
