//! The API's side of the user service: how calls to it survive failures.
//!
//! Every call to the user service goes through one stack of tower services
//! around the replicas' channels, so the handlers only ever see a client:
//!
//! ```text
//! CircuitBreaker   fails at once while the user service is failing
//! └─ Retry         idempotent calls again on UNAVAILABLE, within a budget
//!    └─ Traced     one gRPC client span per attempt
//!       └─ Replicas  round-robin over the replicas that pass their health check
//! ```
//!
//! - [`balance`]: the replicas, their health checks, `USER_SERVICE_URL`.
//! - [`retry`]: which calls are retried, when, and how long it waits.
//! - [`budget`]: how many retries the traffic has earned.
//! - [`breaker`]: the circuit breaker's state machine.

pub mod balance;
mod breaker;
mod budget;
mod retry;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use callchain_telemetry::{
    grpc::{GrpcClient, GrpcClientLayer},
    layer::Traced,
};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{BoxError, Layer as _, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use balance::{Replicas, Targets};
pub use breaker::BreakerPolicy;
use breaker::{Admission, Breaker, State};
use budget::{BudgetPolicy, RetryBudget};
use retry::Retry;

/// The metadata key that carries how long the breaker stays open, in whole
/// seconds: the error mapping answers it as `Retry-After`.
pub const RETRY_AFTER: &str = "retry-after";

/// The attribute (on the request's span) and log field naming the breaker's
/// new state: `open`, `half_open` or `closed`.
const BREAKER_STATE: &str = "callchain.breaker.state";

/// The whole stack; see the module docs.
pub type Upstream = CircuitBreaker<Retry<Traced<Replicas, GrpcClient>>>;

/// Builds the stack over `targets`, and the replicas (for the readiness
/// probe). Starts the replicas' watcher on the current Tokio runtime.
pub fn upstream(targets: Targets, breaker: BreakerPolicy) -> (Upstream, Replicas) {
    let now = Instant::now();
    let replicas = Replicas::watch(targets);
    let traced = GrpcClientLayer::default().layer(replicas.clone());
    let retry = Retry::new(traced, RetryBudget::new(BudgetPolicy::default(), now));
    (CircuitBreaker::new(retry, Breaker::new(breaker)), replicas)
}

/// The request's time budget, from its `grpc-timeout` header.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (value, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = value.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Writes `timeout` as `grpc-timeout` (at most 8 digits, as gRPC allows).
fn set_grpc_timeout(headers: &mut HeaderMap, timeout: Duration) {
    let micros = timeout.as_micros();
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else {
        format!("{}m", timeout.as_millis().min(99_999_999))
    };
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert("grpc-timeout", value);
    }
}

/// The status of a failed unary call, which comes in its headers
/// (trailers-only); a successful call has none there.
fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// Whether the call's own deadline ended it.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(error, |cause| cause.is::<tonic::TimeoutExpired>())
}

/// Whether `error`, or any error in its chain of sources, is `what`.
fn any_cause(
    error: &(dyn std::error::Error + 'static),
    what: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    std::iter::successors(Some(error), |current| current.source()).any(what)
}

/// Whether an outcome counts against the user service: it was down, or
/// slower than the caller's deadline. A caller's own mistake (a 4xx) never
/// does.
fn failed(outcome: &Result<Response<Body>, BoxError>) -> bool {
    match outcome {
        Ok(response) => matches!(
            grpc_status(response.headers()),
            Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
        ),
        Err(_) => true,
    }
}

/// The circuit breaker as a tower service: see [`breaker`].
#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Arc<Mutex<Breaker>>,
}

impl<S> CircuitBreaker<S> {
    fn new(inner: S, breaker: Breaker) -> Self {
        let breaker = Arc::new(Mutex::new(breaker));
        report_state(&breaker);
        Self { inner, breaker }
    }
}

/// Reports the breaker's state as `callchain.upstream.breaker.state`: one
/// series per state, 1 for the state it is in and 0 for the others, read
/// at each metric export for as long as the breaker lives.
fn report_state(breaker: &Arc<Mutex<Breaker>>) {
    use callchain_telemetry::metrics::KeyValue;
    let Some(meter) = callchain_telemetry::metrics::meter() else {
        return;
    };
    let breaker = Arc::downgrade(breaker);
    meter
        .u64_observable_gauge("callchain.upstream.breaker.state")
        .with_unit("1")
        .with_description("The API's circuit breaker to the user service: 1 for the state it is in, 0 for the others.")
        .with_callback(move |gauge| {
            let Some(breaker) = breaker.upgrade() else { return };
            let now = breaker.lock().expect("breaker").state();
            for state in [State::Closed, State::Open, State::HalfOpen] {
                gauge.observe(u64::from(state == now), &[KeyValue::new(BREAKER_STATE, state.as_str())]);
            }
        })
        .build();
}

/// Logs a change of the breaker's state once, and records it on the
/// request's span, where Jaeger shows it.
fn announce(state: State) {
    let span = tracing::Span::current();
    span.set_attribute(BREAKER_STATE, state.as_str());
    match state {
        State::Open => tracing::warn!(
            callchain.breaker.state = state.as_str(),
            "user service circuit breaker opened: calls fail at once until a probe succeeds"
        ),
        State::HalfOpen => tracing::info!(
            callchain.breaker.state = state.as_str(),
            "user service circuit breaker half-open: one probe call goes through"
        ),
        State::Closed => tracing::info!(
            callchain.breaker.state = state.as_str(),
            "user service circuit breaker closed: calls go through again"
        ),
    }
}

/// The answer of a call the open breaker refuses.
fn refused(retry_after: Duration) -> tonic::Status {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut status = tonic::Status::unavailable("the user service's circuit breaker is open");
    status.metadata_mut().insert(RETRY_AFTER, seconds.max(1).into());
    status
}

/// Reports an admitted call's outcome to the breaker when the call ends,
/// even when its caller stops waiting first: a call dropped after its
/// deadline counts as a failure (the user service was too slow), one
/// dropped before it counts for nothing.
struct Report {
    breaker: Arc<Mutex<Breaker>>,
    admission: Admission,
    deadline: Option<Instant>,
    failed: Option<bool>,
}

impl Drop for Report {
    fn drop(&mut self) {
        let now = Instant::now();
        let failed = match self.failed {
            Some(failed) => failed,
            None if self.deadline.is_some_and(|deadline| deadline <= now) => true,
            None => return,
        };
        let change = self
            .breaker
            .lock()
            .expect("breaker")
            .record(self.admission, failed, now);
        if let Some(state) = change {
            announce(state);
        }
    }
}

impl<S> Service<Request<Body>> for CircuitBreaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let now = Instant::now();
        let (admission, change) = self.breaker.lock().expect("breaker").admit(now);
        if let Some(state) = change {
            announce(state);
        }
        if let Admission::Refused { retry_after } = admission {
            tracing::Span::current().set_attribute(BREAKER_STATE, State::Open.as_str());
            return Box::pin(async move { Err(Box::new(refused(retry_after)) as BoxError) });
        }
        let mut report = Report {
            breaker: self.breaker.clone(),
            admission,
            deadline: grpc_timeout(request.headers()).map(|timeout| now + timeout),
            failed: None,
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let outcome = future.await;
            report.failed = Some(failed(&outcome));
            drop(report);
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_what_it_writes() {
        let mut headers = HeaderMap::new();
        for timeout in [Duration::from_millis(1500), Duration::from_secs(3600), Duration::ZERO] {
            set_grpc_timeout(&mut headers, timeout);
            assert_eq!(grpc_timeout(&headers), Some(timeout));
        }
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_secs(2)));
        headers.insert("grpc-timeout", HeaderValue::from_static("soon"));
        assert_eq!(grpc_timeout(&headers), None);
    }

    #[test]
    fn a_refusal_says_when_to_come_back_in_whole_seconds() {
        let status = refused(Duration::from_millis(2100));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "3");
        assert_eq!(
            refused(Duration::from_millis(10)).metadata().get(RETRY_AFTER).unwrap(),
            "1"
        );
    }

    /// A breaker that opens on two failures in two calls, for an hour, around
    /// a fake channel answering `code` (or never, for `None`); and how many
    /// calls reached the fake.
    fn breaker_around(
        code: Option<&'static str>,
    ) -> (
        CircuitBreaker<impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reached.clone();
        let fake = tower::service_fn(move |_: Request<Body>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let Some(code) = code else {
                    return futures::future::pending().await;
                };
                let mut response = Response::new(Body::empty());
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(code));
                Ok::<_, BoxError>(response)
            }
        });
        let policy = BreakerPolicy {
            failure_rate: 0.5,
            min_calls: 2,
            open_for: Duration::from_secs(3600),
            window: BreakerPolicy::WINDOW,
        };
        (CircuitBreaker::new(fake, Breaker::new(policy)), reached)
    }

    fn request(timeout: &'static str) -> Request<Body> {
        Request::builder()
            .uri("/user.v1.UserService/GetUser")
            .header("grpc-timeout", timeout)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn once_open_the_breaker_answers_unavailable_itself_without_a_call() {
        use tower::ServiceExt as _;
        let (mut breaker, reached) = breaker_around(Some("14"));
        for _ in 0..2 {
            let response = breaker.ready().await.unwrap().call(request("5S")).await.unwrap();
            assert_eq!(grpc_status(response.headers()), Some(tonic::Code::Unavailable));
        }
        let error = breaker.ready().await.unwrap().call(request("5S")).await.unwrap_err();
        let status = error.downcast::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "3600");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn calls_given_up_after_their_deadline_count_as_failures_and_before_it_not() {
        use tower::ServiceExt as _;
        let (mut breaker, reached) = breaker_around(None);
        // Abandoned with time left: no outcome.
        for _ in 0..3 {
            drop(breaker.ready().await.unwrap().call(request("5S")));
        }
        assert!(matches!(
            breaker.breaker.lock().unwrap().admit(Instant::now()).0,
            Admission::Call
        ));
        // Abandoned past their deadline: the user service was too slow.
        for _ in 0..2 {
            drop(breaker.ready().await.unwrap().call(request("0u")));
        }
        assert!(matches!(
            breaker.breaker.lock().unwrap().admit(Instant::now()).0,
            Admission::Refused { .. }
        ));
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[test]
    fn only_unavailability_and_slowness_count_as_failures() {
        let answer = |code: &'static str| {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static(code));
            Ok(response)
        };
        assert!(failed(&answer("14")));
        assert!(failed(&answer("4")));
        assert!(!failed(&answer("5")));
        assert!(!failed(&answer("3")));
        assert!(!failed(&Ok(Response::new(Body::empty()))));
        assert!(failed(&Err("connection refused".into())));
    }
}
