//! The HTTP server span: a tower layer that continues an incoming
//! `traceparent`, names the span `METHOD route`, records the status, and
//! answers every request with the `traceparent` of its span; it records the
//! request's `http.server.request.duration` too.
//!
//! HTTP is the edge where requests come from outside, so incoming baggage is
//! untrusted: by default none is kept, and a service names the keys it
//! accepts with [`HttpServerLayer::with_baggage`]. The span declares
//! `enduser.id`, for the service to record once it knows the caller.

use ::http::{Extensions, HeaderValue, Request, Response};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    baggage::BaggagePolicy,
    layer::{Hop, TracedLayer},
};

/// Finds the low-cardinality route template (`/v1/users/{id}`) of a request,
/// which the router puts in the request's extensions.
pub type RouteOf = fn(&Extensions) -> Option<String>;

/// An HTTP server's hop: a server span around each request. See the module
/// docs.
#[derive(Clone)]
pub struct HttpServer {
    route_of: RouteOf,
    baggage: BaggagePolicy,
}

/// Wraps an HTTP server in [`HttpServer`] spans.
pub type HttpServerLayer = TracedLayer<HttpServer>;

impl TracedLayer<HttpServer> {
    /// A layer that keeps no incoming baggage.
    pub fn new(route_of: RouteOf) -> Self {
        Self {
            hop: HttpServer {
                route_of,
                baggage: BaggagePolicy::untrusted(&[]),
            },
        }
    }

    /// Keeps the incoming baggage `baggage` accepts.
    pub fn with_baggage(self, baggage: BaggagePolicy) -> Self {
        Self {
            hop: HttpServer { baggage, ..self.hop },
        }
    }
}

/// What the duration metric of one request needs.
pub struct HttpCall {
    started: std::time::Instant,
    method: ::http::Method,
    route: Option<String>,
}

impl Hop for HttpServer {
    type Call = HttpCall;

    fn start<B>(&self, request: &mut Request<B>) -> (Span, HttpCall) {
        let started = std::time::Instant::now();
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
        (span, HttpCall { started, method, route })
    }

    fn finish<R, E>(&self, span: &Span, call: HttpCall, outcome: &mut Result<Response<R>, E>) {
        let Ok(response) = outcome else { return };
        let status = response.status();
        crate::metrics::http_server(
            call.started,
            call.method.as_str(),
            call.route.as_deref(),
            status.as_u16(),
        );
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        if let Some(value) = crate::propagation::traceparent(span).and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert("traceparent", value);
        }
        tracing::info!(status = status.as_u16(), "request finished");
    }
}
