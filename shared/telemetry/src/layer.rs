//! One tower layer for every traced hop. A [`Hop`] says what happens around
//! one call (open the span and move the context before it, record the answer
//! and the call's duration after it); [`TracedLayer`] and [`Traced`] do the tower plumbing once, for
//! the HTTP server and the gRPC server and client alike.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use ::http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument as _, Span};

/// What a traced hop does around one call.
pub trait Hop: Clone + Send + 'static {
    /// What [`Hop::start`] keeps of the call for [`Hop::finish`]: when it
    /// started and the attributes of its duration metric.
    type Call: Send + 'static;

    /// Opens the call's span (or [`Span::none`] for a call it does not
    /// trace), moving the trace context in or out of `request`.
    fn start<B>(&self, request: &mut Request<B>) -> (Span, Self::Call);

    /// Records the outcome on `span`, the span [`Hop::start`] opened, and
    /// the call's duration; it may add to the response (the `traceparent`
    /// an HTTP server answers with).
    fn finish<R, E>(&self, span: &Span, call: Self::Call, outcome: &mut Result<Response<R>, E>);
}

/// Wraps a service so every call goes through `H`.
#[derive(Debug, Clone, Default)]
pub struct TracedLayer<H> {
    pub(crate) hop: H,
}

impl<S, H: Clone> Layer<S> for TracedLayer<H> {
    type Service = Traced<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            hop: self.hop.clone(),
        }
    }
}

/// The service made by [`TracedLayer`].
#[derive(Debug, Clone)]
pub struct Traced<S, H> {
    inner: S,
    hop: H,
}

impl<S, H, B, R> Service<Request<B>> for Traced<S, H>
where
    S: Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
    H: Hop,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let (span, call) = self.hop.start(&mut request);
        let future = span.in_scope(|| self.inner.call(request));
        let hop = self.hop.clone();
        Box::pin(
            async move {
                let mut outcome = future.await;
                hop.finish(&Span::current(), call, &mut outcome);
                outcome
            }
            .instrument(span),
        )
    }
}
