//! Injected faults, for chaos runs: extra latency before each
//! `user.v1.UserService` call (`FAULT_LATENCY_MS`) and a fraction of calls
//! answered `UNAVAILABLE` (`FAULT_ERROR_RATE`). A tower layer around the
//! server, so the handlers know nothing of it; health and reflection are
//! left alone, so a slowed service still reports itself serving, as a slow
//! one in production would.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

/// The calls faults apply to.
const FAULTY_PATH_PREFIX: &str = "/user.v1.UserService/";

/// Which faults are injected; none by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Waited before each call.
    pub latency: Duration,
    /// The fraction of calls, 0 to 1, answered `UNAVAILABLE` (after the
    /// latency) without reaching the handler.
    pub error_rate: f64,
}

impl Faults {
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero() || self.error_rate > 0.0
    }
}

/// Puts [`Faults`] around a gRPC server.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Arc<Faults>,
    calls: Arc<AtomicU64>,
}

impl FaultLayer {
    pub fn new(faults: Faults) -> Self {
        Self {
            faults: Arc::new(faults),
            calls: Arc::default(),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    layer: FaultLayer,
}

/// Whether the `n`th call (from 0) fails at `rate`: exactly `rate` of every
/// run of calls, evenly spread, so a test can count on the fraction.
fn fails(n: u64, rate: f64) -> bool {
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

impl<S, B, R> Service<Request<B>> for FaultService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let faults = &self.layer.faults;
        if !faults.is_active() || !request.uri().path().starts_with(FAULTY_PATH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let latency = faults.latency;
        let fail =
            faults.error_rate > 0.0 && fails(self.layer.calls.fetch_add(1, Ordering::Relaxed), faults.error_rate);
        // The clone that was made ready is the one that is called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if fail {
                return Ok(tonic::Status::unavailable("injected fault (FAULT_ERROR_RATE)").into_http());
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_rate_fails_exactly_that_fraction_of_calls() {
        for (rate, expected) in [(0.0, 0), (0.1, 100), (0.25, 250), (0.5, 500), (1.0, 1000)] {
            let failed = (0..1000).filter(|&n| fails(n, rate)).count();
            assert_eq!(failed, expected, "rate {rate}");
        }
    }

    #[test]
    fn no_fault_is_active_by_default() {
        assert!(!Faults::default().is_active());
        assert!(
            Faults {
                error_rate: 0.1,
                ..Faults::default()
            }
            .is_active()
        );
    }
}
