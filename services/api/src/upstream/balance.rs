//! The user service's replicas: found by address or DNS name, admitted by
//! their gRPC health check, balanced round-robin.
//!
//! `USER_SERVICE_URL` names one URL or several, comma-separated; a host that
//! resolves to several addresses (`user` in Docker Compose with
//! `--scale user=2`) counts once per address. A watcher resolves the names
//! again and checks each replica's health every [`CHECK_EVERY`]: a replica
//! takes calls only while it answers SERVING, and one that fails a call at
//! the connection level is dropped at once, so after a crash only the calls
//! already in flight meet it (and the idempotent ones are retried). A replica
//! whose health check answers nothing in time is given [`PATIENCE`] before it
//! is dropped: a slow user service is the circuit breaker's business, and its
//! callers get their `504` at their deadline, but one that stays silent is as
//! good as gone (a host that vanished answers nothing at all).

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tower::{BoxError, Service, ServiceExt as _};

/// How often names are resolved again and replicas checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a health check may take before it counts as unanswered.
const CHECK_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a serving replica may leave its health checks unanswered.
pub const PATIENCE: Duration = Duration::from_secs(3);
/// The service whose health the user service reports.
const HEALTH_SERVICE: &str = "user.v1.UserService";

/// One URL of `USER_SERVICE_URL`: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

/// The user service's URLs, parsed: at least one, each `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Vec<Target>);

#[derive(Debug, thiserror::Error)]
#[error("USER_SERVICE_URL: {0}")]
pub struct InvalidTargets(String);

impl FromStr for Targets {
    type Err = InvalidTargets;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let targets = text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                let invalid = |why: &str| InvalidTargets(format!("`{url}` {why}"));
                let uri: http::Uri = url.parse().map_err(|_| invalid("is not a URL"))?;
                if uri.scheme_str() != Some("http") {
                    return Err(invalid("must start with http://"));
                }
                let host = uri
                    .host()
                    .filter(|host| !host.is_empty())
                    .ok_or_else(|| invalid("has no host"))?;
                let port = uri.port_u16().ok_or_else(|| invalid("has no port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                Ok(Target { host, port })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(InvalidTargets("names no URL".into()));
        }
        Ok(Self(targets))
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            if target.host.contains(':') {
                write!(f, "{separator}http://[{}]:{}", target.host, target.port)?;
            } else {
                write!(f, "{separator}http://{}:{}", target.host, target.port)?;
            }
        }
        Ok(())
    }
}

struct Replica {
    addr: SocketAddr,
    /// Which target's name resolved to it.
    target: usize,
    channel: Channel,
    serving: bool,
    /// Since when its health checks have gone unanswered.
    silent_since: Option<Instant>,
}

#[derive(Default)]
struct Members {
    replicas: Vec<Replica>,
    /// Where the round-robin goes on from.
    next: usize,
    /// When the last check of every replica ended.
    checked_at: Option<Instant>,
}

/// The replicas, as a tower service: each call goes to the next serving
/// replica, or fails at once with UNAVAILABLE when none serves.
#[derive(Clone)]
pub struct Replicas {
    members: Arc<Mutex<Members>>,
    /// Held by the readiness probe that checks the replicas, so probes that
    /// come meanwhile wait for its answer instead of checking again.
    probing: Arc<tokio::sync::Mutex<()>>,
}

impl Replicas {
    /// Starts watching `targets` on the current Tokio runtime; the watcher
    /// ends once the last clone of the returned value is dropped.
    ///
    /// Before its first health check a replica is tried (nothing says yet
    /// that it is down, and the API's first requests should not fail for
    /// want of a check): those named by IP address join at once, those of a
    /// name at its first resolution. A call that cannot reach one, or its
    /// first failed check, takes it out. Replicas found later join once
    /// their health check passes.
    pub fn watch(targets: Targets) -> Self {
        let members = Arc::new(Mutex::new(Members::default()));
        let literal: Vec<(usize, SocketAddr)> = targets
            .0
            .iter()
            .enumerate()
            .filter_map(|(index, target)| {
                let ip: std::net::IpAddr = target.host.parse().ok()?;
                Some((index, SocketAddr::new(ip, target.port)))
            })
            .collect();
        update(
            &mut members.lock().expect("replicas"),
            &literal,
            &HashSet::new(),
            Untried::Join,
        );
        tokio::spawn(watch(targets, Arc::downgrade(&members)));
        Self {
            members,
            probing: Arc::default(),
        }
    }

    /// How many replicas serve now, as their last health check said.
    pub fn serving(&self) -> usize {
        let members = self.members.lock().expect("replicas");
        members.replicas.iter().filter(|replica| replica.serving).count()
    }

    /// How many replicas serve, as a check at most [`CHECK_EVERY`] old
    /// says: the readiness probe's answer. The probe needs no token and is
    /// never shed, so it must not be a way to make the API check every
    /// replica on demand: it answers from the last check (the watcher's or
    /// a probe's), and checks afresh only when that is older than an
    /// interval (before the watcher's first round, or while it is late),
    /// one probe at a time. However many probes come, they add at most one
    /// check an interval to the watcher's.
    pub async fn serving_checked(&self) -> usize {
        let _probing = self.probing.lock().await;
        let checked_at = self.members.lock().expect("replicas").checked_at;
        if checked_at.is_none_or(|at| at.elapsed() >= CHECK_EVERY) {
            check_all(&self.members).await;
        }
        self.serving()
    }

    fn pick(&self) -> Option<(SocketAddr, Channel)> {
        let mut members = self.members.lock().expect("replicas");
        let count = members.replicas.len();
        let start = members.next;
        let index = (0..count)
            .map(|i| (start + i) % count)
            .find(|&index| members.replicas[index].serving)?;
        members.next = index + 1;
        let replica = &members.replicas[index];
        Some((replica.addr, replica.channel.clone()))
    }

    /// Takes `addr` out of the rotation until its health check passes again.
    fn drop_replica(&self, addr: SocketAddr, error: &BoxError) {
        let mut members = self.members.lock().expect("replicas");
        if let Some(replica) = members
            .replicas
            .iter_mut()
            .find(|replica| replica.addr == addr && replica.serving)
        {
            replica.serving = false;
            tracing::warn!(replica = %addr, error = %error, "user service replica left: a call could not reach it");
        }
    }
}

impl Service<Request<Body>> for Replicas {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        // Each replica's channel buffers; readiness is awaited per call.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some((addr, channel)) = self.pick() else {
            return Box::pin(async {
                Err(Box::new(tonic::Status::unavailable("no user service replica is serving")) as BoxError)
            });
        };
        let replicas = self.clone();
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(error) => {
                    let error = BoxError::from(error);
                    // A call that ran out of time says the replica is slow,
                    // not gone: the circuit breaker deals with slowness.
                    if !super::timed_out(&*error) {
                        replicas.drop_replica(addr, &error);
                    }
                    Err(error)
                }
            }
        })
    }
}

fn channel_to(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Resolves the targets and checks every replica, every [`CHECK_EVERY`],
/// for as long as the replicas are in use.
async fn watch(targets: Targets, members: Weak<Mutex<Members>>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Which targets failed to resolve, so each failure is logged once.
    let mut unresolved = HashSet::new();
    let mut untried = Untried::Join;
    loop {
        ticks.tick().await;
        let mut found = Vec::new();
        for (index, target) in targets.0.iter().enumerate() {
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(addrs) => {
                    unresolved.remove(&index);
                    found.extend(addrs.map(|addr| (index, addr)));
                }
                // A name that fails to resolve keeps the replicas it had.
                Err(error) => {
                    if unresolved.insert(index) {
                        tracing::warn!(host = %target.host, error = %error, "cannot resolve the user service's name");
                    }
                }
            }
        }
        let Some(members) = members.upgrade() else { return };
        update(&mut members.lock().expect("replicas"), &found, &unresolved, untried);
        untried = Untried::WaitForCheck;
        check_all(&members).await;
    }
}

/// Checks every replica's health at once, and moves each in or out of the
/// rotation as its check says.
async fn check_all(members: &Mutex<Members>) {
    let checks = members
        .lock()
        .expect("replicas")
        .replicas
        .iter()
        .map(|replica| (replica.addr, replica.channel.clone()))
        .collect::<Vec<_>>();
    let results = futures::future::join_all(
        checks
            .into_iter()
            .map(|(addr, channel)| async move { (addr, check(channel).await) }),
    )
    .await;
    let now = Instant::now();
    let mut members = members.lock().expect("replicas");
    members.checked_at = Some(now);
    for (addr, health) in results {
        let Some(replica) = members.replicas.iter_mut().find(|replica| replica.addr == addr) else {
            continue;
        };
        let failed = match health {
            Health::Serving => {
                replica.silent_since = None;
                if !replica.serving {
                    replica.serving = true;
                    tracing::info!(replica = %addr, "user service replica joined");
                }
                continue;
            }
            Health::Down(why) => why,
            Health::Silent => {
                let since = *replica.silent_since.get_or_insert(now);
                if now.duration_since(since) < PATIENCE {
                    continue;
                }
                format!("its health checks went unanswered for {PATIENCE:?}")
            }
        };
        if replica.serving {
            replica.serving = false;
            tracing::warn!(replica = %addr, reason = %failed, "user service replica left: its health check failed");
        }
    }
}

/// Whether a replica found before its first health check takes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Untried {
    /// At start: it does, until a call or a check says it is down.
    Join,
    /// Later: it waits for its first check to pass.
    WaitForCheck,
}

/// Adds the replicas newly `found`, and removes those whose target resolved
/// without them (a target that failed to resolve keeps its own).
fn update(members: &mut Members, found: &[(usize, SocketAddr)], unresolved: &HashSet<usize>, untried: Untried) {
    members.replicas.retain(|replica| {
        let keep = unresolved.contains(&replica.target) || found.iter().any(|(_, addr)| *addr == replica.addr);
        if !keep && replica.serving {
            tracing::warn!(replica = %replica.addr, "user service replica left: its name no longer resolves to it");
        }
        keep
    });
    for &(target, addr) in found {
        if members.replicas.iter().any(|replica| replica.addr == addr) {
            continue;
        }
        match channel_to(addr) {
            Ok(channel) => {
                let serving = untried == Untried::Join;
                if serving {
                    tracing::info!(replica = %addr, "user service replica joined, before its first health check");
                }
                members.replicas.push(Replica {
                    addr,
                    target,
                    channel,
                    serving,
                    silent_since: None,
                });
            }
            Err(error) => {
                tracing::warn!(replica = %addr, error = %error, "cannot make a channel to a user service replica")
            }
        }
    }
}

/// What one health check found.
enum Health {
    Serving,
    /// It answered, or its connection failed: it does not serve, and why.
    Down(String),
    /// No answer in time.
    Silent,
}

async fn check(channel: Channel) -> Health {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: HEALTH_SERVICE.into(),
    });
    request.set_timeout(CHECK_TIMEOUT);
    let answer = tokio::time::timeout(CHECK_TIMEOUT, HealthClient::new(channel).check(request)).await;
    match answer {
        Err(_) => Health::Silent,
        Ok(Err(status)) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            Health::Silent
        }
        Ok(Err(status)) => Health::Down(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => Health::Serving,
        Ok(Ok(response)) => Health::Down(format!("it answered {:?}", response.get_ref().status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_targets_and_print_back() {
        let targets: Targets = "http://user:50051, http://127.0.0.1:50052".parse().unwrap();
        assert_eq!(
            targets.0,
            [
                Target {
                    host: "user".into(),
                    port: 50051
                },
                Target {
                    host: "127.0.0.1".into(),
                    port: 50052
                }
            ]
        );
        assert_eq!(targets.to_string(), "http://user:50051,http://127.0.0.1:50052");
        let v6: Targets = "http://[::1]:50051".parse().unwrap();
        assert_eq!(v6.to_string(), "http://[::1]:50051");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "names no URL"),
            ("https://user:50051", "must start with http://"),
            ("http://user", "has no port"),
            ("http://user:50051,nonsense", "must start with http://"),
        ] {
            let error = text.parse::<Targets>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
