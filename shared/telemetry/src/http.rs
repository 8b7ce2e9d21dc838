//! The HTTP server span: a tower layer that continues an incoming
//! `traceparent`, names the span `METHOD route`, records the status, and
//! answers every request with the `traceparent` of its span.
//!
//! HTTP is the edge where requests come from outside, so incoming baggage is
//! untrusted: by default none is kept, and a service names the keys it
//! accepts with [`HttpServerLayer::with_baggage`]. The span declares
//! `enduser.id`, for the service to record once it knows the caller.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use ::http::{Extensions, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::baggage::BaggagePolicy;

/// Finds the low-cardinality route template (`/v1/users/{id}`) of a request,
/// which the router puts in the request's extensions.
pub type RouteOf = fn(&Extensions) -> Option<String>;

/// Opens a server span around each request. See the module docs.
#[derive(Clone)]
pub struct HttpServerLayer {
    route_of: RouteOf,
    baggage: BaggagePolicy,
}

impl HttpServerLayer {
    /// A layer that keeps no incoming baggage.
    pub fn new(route_of: RouteOf) -> Self {
        Self {
            route_of,
            baggage: BaggagePolicy::untrusted(&[]),
        }
    }

    /// Keeps the incoming baggage `baggage` accepts.
    pub fn with_baggage(self, baggage: BaggagePolicy) -> Self {
        Self { baggage, ..self }
    }
}

impl<S> Layer<S> for HttpServerLayer {
    type Service = HttpServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpServer {
            inner,
            route_of: self.route_of,
            baggage: self.baggage,
        }
    }
}

/// The service made by [`HttpServerLayer`].
#[derive(Clone)]
pub struct HttpServer<S> {
    inner: S,
    route_of: RouteOf,
    baggage: BaggagePolicy,
}

impl<S, B, R> Service<Request<B>> for HttpServer<S>
where
    S: Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method().clone();
        let route = (self.route_of)(request.extensions());
        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        let span = tracing::info_span!(
            "http.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            http.route = route.as_deref(),
            url.path = request.uri().path(),
            http.response.status_code = Empty,
            enduser.id = Empty,
        );
        // An incoming `traceparent` makes this span a child of the caller's.
        let _ = span.set_parent(crate::propagation::extract_with(request.headers(), &self.baggage));

        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let span = tracing::Span::current();
                let mut response = future.await?;
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                if status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                if let Some(value) = crate::propagation::traceparent(&span).and_then(|v| HeaderValue::from_str(&v).ok())
                {
                    response.headers_mut().insert("traceparent", value);
                }
                tracing::info!(status = status.as_u16(), "request finished");
                Ok(response)
            }
            .instrument(span),
        )
    }
}
