//! Retries of the idempotent calls, within the retry budget and the deadline.
//!
//! `GetUser`, `ListUsers` and `Authenticate` are retried when the call never
//! reached a working server: UNAVAILABLE, or a connection that failed. A
//! write is retried only when its connection was refused, so it was never
//! sent (a replica killed a moment ago): any other failure may have come
//! after the write applied, and a second one could apply it twice. Never a
//! call that ran out of time, and never past the request's deadline. Each
//! attempt is a call of its own through the traced channel, so each has its
//! own client span, the retries carrying `rpc.grpc.retry.attempt`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use callchain_telemetry::grpc::RetryAttempt;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use tonic::{body::Body, codegen::Bytes};
use tower::{BoxError, Service, ServiceExt as _};

use super::{any_cause, budget::RetryBudget, grpc_timeout, set_grpc_timeout, timed_out};

/// The methods that may run twice with the same effect as once.
const IDEMPOTENT: &[&str] = &[
    "/user.v1.UserService/GetUser",
    "/user.v1.UserService/ListUsers",
    "/user.v1.UserService/Authenticate",
];

/// The first call and at most two retries.
const MAX_ATTEMPTS: u32 = 3;
/// The first retry waits up to this long; each next one up to twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(10);
/// No retry waits longer than this.
const BACKOFF_CAP: Duration = Duration::from_millis(200);

/// The pause before retry `retry` (1 for the first): "full jitter", a
/// uniform share `jitter` (in `[0, 1)`) of the capped exponential step, so
/// callers that failed together do not all come back together.
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    step.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Whether an attempt's outcome is worth another attempt, for a call that
/// is `idempotent` or not.
fn retryable(outcome: &Result<Response<Body>, BoxError>, idempotent: bool) -> bool {
    match outcome {
        Ok(response) => idempotent && super::grpc_status(response.headers()) == Some(tonic::Code::Unavailable),
        Err(error) if !idempotent => refused(&**error),
        // A status is this process's own answer (no replica serves): asking
        // again at once would find the same.
        Err(error) => !timed_out(&**error) && !error.is::<tonic::Status>(),
    }
}

/// Whether the request certainly never reached the user service: its
/// connection was refused, the connection closed before the request was
/// written (hyper's "canceled"), or the server refused the stream unread
/// (HTTP/2's REFUSED_STREAM, which promises no processing).
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(error, |cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            || cause
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
            || cause
                .downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// The retrying service, around the traced channel.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    budget: Arc<Mutex<RetryBudget>>,
}

impl<S> Retry<S> {
    pub fn new(inner: S, budget: RetryBudget) -> Self {
        Self {
            inner,
            budget: Arc::new(Mutex::new(budget)),
        }
    }
}

impl<S> Service<Request<Body>> for Retry<S>
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
        // The ready service goes with this call; a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let idempotent = IDEMPOTENT.contains(&request.uri().path());
        let budget = self.budget.clone();
        Box::pin(async move {
            let started = Instant::now();
            let deadline = grpc_timeout(request.headers()).map(|timeout| started + timeout);
            budget.lock().expect("retry budget").deposit(started);
            // A unary request's body is one small message: kept, it can be
            // sent again.
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let template = Request::from_parts(parts, ());
            let mut outcome = inner.call(copy(&template, &body)).await;
            for retry in 1..MAX_ATTEMPTS {
                if !retryable(&outcome, idempotent) {
                    break;
                }
                let pause = backoff(retry, fastrand::f64());
                let now = Instant::now();
                let remaining = match deadline {
                    Some(deadline) if deadline <= now + pause => break,
                    Some(deadline) => Some(deadline - now - pause),
                    None => None,
                };
                if !budget.lock().expect("retry budget").withdraw(now) {
                    tracing::debug!("no retry of the user service call: the retry budget is spent");
                    break;
                }
                tokio::time::sleep(pause).await;
                let mut request = copy(&template, &body);
                request.extensions_mut().insert(RetryAttempt(retry));
                callchain_telemetry::metrics::count_retry(request.uri().path());
                if let Some(remaining) = remaining {
                    set_grpc_timeout(request.headers_mut(), remaining);
                }
                tracing::info!(
                    rpc.method = request.uri().path(),
                    retry,
                    "retrying the user service call"
                );
                outcome = match inner.ready().await {
                    Ok(ready) => ready.call(request).await,
                    Err(error) => Err(error),
                };
            }
            outcome
        })
    }
}

/// A new request with `template`'s head and `body`.
fn copy(template: &Request<()>, body: &Bytes) -> Request<Body> {
    let mut request = Request::new(Body::new(Full::new(body.clone())));
    *request.method_mut() = template.method().clone();
    *request.uri_mut() = template.uri().clone();
    *request.version_mut() = template.version();
    *request.headers_mut() = template.headers().clone();
    *request.extensions_mut() = template.extensions().clone();
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_jitters_below_its_step() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(10));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(20));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(40));
        assert_eq!(backoff(30, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(3, 0.5), Duration::from_millis(20));
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
    }

    fn answer(code: Option<i32>) -> Result<Response<Body>, BoxError> {
        let mut response = Response::new(Body::empty());
        if let Some(code) = code {
            response.headers_mut().insert("grpc-status", code.into());
        }
        Ok(response)
    }

    /// What a fake user service saw of each attempt: its retry number and
    /// its body.
    type Seen = Arc<Mutex<Vec<(Option<u32>, Bytes)>>>;

    /// A fake channel answering the `codes` in turn (0: success), then 0.
    fn fake(
        codes: &[i32],
    ) -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone + Send + 'static,
        Seen,
    ) {
        let seen = Seen::default();
        let codes = Arc::new(Mutex::new(codes.iter().copied().rev().collect::<Vec<_>>()));
        let service = tower::service_fn({
            let seen = seen.clone();
            move |request: Request<Body>| {
                let (seen, codes) = (seen.clone(), codes.clone());
                async move {
                    let attempt = request.extensions().get::<RetryAttempt>().map(|RetryAttempt(n)| *n);
                    let body = request.into_body().collect().await?.to_bytes();
                    seen.lock().unwrap().push((attempt, body));
                    let code = codes.lock().unwrap().pop().unwrap_or(0);
                    let mut response = Response::new(Body::empty());
                    if code != 0 {
                        response.headers_mut().insert("grpc-status", code.into());
                    }
                    Ok::<_, BoxError>(response)
                }
            }
        });
        (service, seen)
    }

    fn request(method: &str, timeout: &'static str) -> Request<Body> {
        Request::builder()
            .uri(format!("/user.v1.UserService/{method}"))
            .header("grpc-timeout", timeout)
            .body(Body::new(Full::new(Bytes::from_static(b"the message"))))
            .unwrap()
    }

    fn budget(min_per_second: f64) -> RetryBudget {
        let policy = super::super::budget::BudgetPolicy {
            min_per_second,
            ..Default::default()
        };
        RetryBudget::new(policy, Instant::now())
    }

    async fn call<S>(retry: &mut Retry<S>, request: Request<Body>) -> Option<tonic::Code>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let response = retry.ready().await.unwrap().call(request).await.unwrap();
        super::super::grpc_status(response.headers())
    }

    #[tokio::test]
    async fn a_read_that_met_unavailable_is_sent_again_whole_and_marked_as_a_retry() {
        let (service, seen) = fake(&[14]);
        let mut retry = Retry::new(service, budget(10.0));
        assert_eq!(call(&mut retry, request("GetUser", "5S")).await, None);
        let seen = seen.lock().unwrap().clone();
        let body = Bytes::from_static(b"the message");
        assert_eq!(seen, [(None, body.clone()), (Some(1), body)]);
    }

    #[tokio::test]
    async fn a_write_is_never_sent_twice() {
        let (service, seen) = fake(&[14]);
        let mut retry = Retry::new(service, budget(10.0));
        assert_eq!(
            call(&mut retry, request("CreateUser", "5S")).await,
            Some(tonic::Code::Unavailable)
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_limit_the_deadline_and_the_budget() {
        let (service, seen) = fake(&[14, 14, 14, 14]);
        let mut retry = Retry::new(service, budget(10.0));
        assert_eq!(
            call(&mut retry, request("ListUsers", "5S")).await,
            Some(tonic::Code::Unavailable)
        );
        assert_eq!(seen.lock().unwrap().len(), MAX_ATTEMPTS as usize);

        let (service, seen) = fake(&[14, 14]);
        let mut retry = Retry::new(service, budget(10.0));
        call(&mut retry, request("GetUser", "0u")).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "no time left for a retry");

        let (service, seen) = fake(&[14, 14]);
        let mut retry = Retry::new(service, budget(0.0));
        call(&mut retry, request("Authenticate", "5S")).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "one call earns a fifth of a retry");
    }

    #[test]
    fn only_unavailable_and_failed_connections_are_retried() {
        assert!(retryable(&answer(Some(14)), true));
        assert!(!retryable(&answer(None), true));
        assert!(!retryable(&answer(Some(5)), true));
        assert!(!retryable(&answer(Some(4)), true));
        assert!(retryable(&Err("connection refused".into()), true));
        assert!(!retryable(&Err(Box::new(tonic::TimeoutExpired(()))), true));
        assert!(!retryable(
            &Err(Box::new(tonic::Status::unavailable("no replica"))),
            true
        ));
    }

    #[test]
    fn a_write_is_retried_only_when_its_connection_was_refused() {
        let refused: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(retryable(&Err(refused), false));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!retryable(&Err(reset), false));
        assert!(!retryable(&answer(Some(14)), false));
        assert!(!retryable(&Err("connection closed".into()), false));
        let refused_stream: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(retryable(&Err(refused_stream), false));
        let cancelled: BoxError = Box::new(h2::Error::from(h2::Reason::CANCEL));
        assert!(!retryable(&Err(cancelled), false));
    }
}
