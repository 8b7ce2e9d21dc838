//! gRPC spans and context propagation, as tower layers around tonic.
//!
//! - [`GrpcServerLayer`] wraps a tonic server: it continues the caller's trace
//!   from the request metadata and opens a `server` span per call.
//! - [`GrpcClientLayer`] wraps a tonic `Channel`: it opens a `client` span per
//!   call and writes its context into the request metadata.
//!
//! Both name the span after the full method (`user.v1.UserService/CreateUser`)
//! and record `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`, and record the call's duration in
//! `rpc.client.call.duration` or `rpc.server.call.duration` with the same
//! four attributes; a client call that is a retry also records
//! `rpc.grpc.retry.attempt` (1 for the first retry), from the
//! [`RetryAttempt`] its caller put in the request's extensions. The server trusts the baggage of its callers (our
//! own services), within the W3C limits, and records the caller's id in it
//! as `enduser.id`. Infrastructure services (`grpc.health.v1`,
//! reflection) get no span, so health probes do not flood the traces.

use ::http::{HeaderMap, Request, Response};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::layer::{Hop, TracedLayer};

/// `(service, method)` of a gRPC path such as `/user.v1.UserService/CreateUser`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

fn is_infrastructure(service: &str) -> bool {
    service.starts_with("grpc.")
}

fn rpc_span(kind: &'static str, service: &str, method: &str) -> Span {
    tracing::info_span!(
        "grpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = kind,
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        rpc.grpc.retry.attempt = Empty,
        enduser.id = Empty,
    )
}

/// Marks a client request as a retry: its number, 1 for the first. A retry
/// layer outside [`GrpcClientLayer`] sets it, so each attempt's span says
/// which one it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAttempt(pub u32);

/// The status code of a unary response: a failed call carries `grpc-status`
/// in its headers (trailers-only); a successful one only in its trailers.
fn status_code(headers: &HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn record_status(span: &Span, code: i32, server: bool) {
    span.record("rpc.grpc.status_code", code);
    // The semantic conventions count only these codes as errors of a server;
    // a client counts every non-OK code.
    let server_error = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    if (server && server_error) || (!server && code != 0) {
        span.record("otel.status_code", "ERROR");
    }
}

/// A tonic server's hop: a `server` span per call, continuing the caller's
/// trace; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct GrpcServer;

/// Wraps a tonic server in [`GrpcServer`] spans.
pub type GrpcServerLayer = TracedLayer<GrpcServer>;

/// What the duration metric of one call needs: when it started and the
/// path it called (`None` for a call neither traced nor measured).
pub struct RpcCall {
    started: std::time::Instant,
    path: Option<String>,
}

impl RpcCall {
    fn new(traced: bool, path: &str) -> Self {
        Self {
            started: std::time::Instant::now(),
            path: traced.then(|| path.to_owned()),
        }
    }

    fn record(&self, server: bool, code: i32) {
        if let Some((service, method)) = self.path.as_deref().and_then(split_path) {
            crate::metrics::rpc(self.started, server, service, method, code);
        }
    }
}

impl Hop for GrpcServer {
    type Call = RpcCall;

    fn start<B>(&self, request: &mut Request<B>) -> (Span, RpcCall) {
        let path = request.uri().path();
        let (span, traced) = match split_path(path) {
            Some((service, method)) if !is_infrastructure(service) => (rpc_span("server", service, method), true),
            _ => (Span::none(), false),
        };
        let call = RpcCall::new(traced, path);
        let parent = crate::propagation::extract(request.headers());
        crate::baggage::record_enduser(&span, &parent);
        let _ = span.set_parent(parent);
        (span, call)
    }

    fn finish<R, E>(&self, span: &Span, call: RpcCall, outcome: &mut Result<Response<R>, E>) {
        if let Ok(response) = outcome {
            let code = status_code(response.headers());
            record_status(span, code, true);
            call.record(true, code);
        }
    }
}

/// A tonic client's hop: a `client` span per call, whose context goes out in
/// the request metadata; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct GrpcClient;

/// Wraps a tonic `Channel` in [`GrpcClient`] spans.
pub type GrpcClientLayer = TracedLayer<GrpcClient>;

impl Hop for GrpcClient {
    type Call = RpcCall;

    fn start<B>(&self, request: &mut Request<B>) -> (Span, RpcCall) {
        let path = request.uri().path();
        let (span, traced) = match split_path(path) {
            Some((service, method)) => (rpc_span("client", service, method), true),
            None => (Span::none(), false),
        };
        let call = RpcCall::new(traced, path);
        if let Some(RetryAttempt(attempt)) = request.extensions().get::<RetryAttempt>() {
            span.record("rpc.grpc.retry.attempt", attempt);
        }
        crate::propagation::inject(&span.context(), request.headers_mut());
        (span, call)
    }

    fn finish<R, E>(&self, span: &Span, call: RpcCall, outcome: &mut Result<Response<R>, E>) {
        let code = match outcome {
            Ok(response) => status_code(response.headers()),
            // The call never got an answer: the server is unreachable.
            Err(_) => 14,
        };
        record_status(span, code, false);
        call.record(false, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/user.v1.UserService/CreateUser"),
            Some(("user.v1.UserService", "CreateUser"))
        );
        assert_eq!(split_path("/nothing"), None);
        assert_eq!(split_path("//Method"), None);
    }

    #[test]
    fn status_comes_from_headers_and_defaults_to_ok() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), 0);
        headers.insert("grpc-status", "6".parse().unwrap());
        assert_eq!(status_code(&headers), 6);
    }
}
