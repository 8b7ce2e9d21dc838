//! JSON-RPC 2.0 over HTTP: what the HTTP server span says of a JSON-RPC
//! request, and the span of each call in a batch.
//!
//! The request's server span (see [`crate::http`]) gets `rpc.system=jsonrpc`
//! and `rpc.jsonrpc.version`, and for a single call its `rpc.method`: a
//! single call is the request. A batch holds several calls, so each gets a
//! child span of its own, `jsonrpc <method>` (internal), which the calls it
//! makes (gRPC, Kafka) sit under. A failed call records
//! `rpc.jsonrpc.error_code` on its span.

use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The one version of the protocol.
pub const VERSION: &str = "2.0";

/// Marks `span`, an HTTP server span, as carrying a JSON-RPC request.
pub fn record_request(span: &Span) {
    span.set_attribute("rpc.system", "jsonrpc");
    span.set_attribute("rpc.jsonrpc.version", VERSION);
}

/// Records the method of the single call `span` (the server span) carries.
/// Only a method the service has: a name a client made up would make the
/// attribute unbounded.
pub fn record_method(span: &Span, method: &'static str) {
    span.set_attribute("rpc.method", method);
}

/// The span of one call of a batch, under the current (server) span.
pub fn call_span(method: &'static str) -> Span {
    tracing::info_span!(
        "jsonrpc",
        otel.name = %format_args!("jsonrpc {method}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        rpc.system = "jsonrpc",
        rpc.jsonrpc.version = VERSION,
        rpc.method = method,
        rpc.jsonrpc.error_code = Empty,
    )
}

/// Records that the call of `span` failed with `code`; `server_error` (the
/// service's fault, not the caller's) also marks the span as an error.
pub fn record_error(span: &Span, code: i64, server_error: bool) {
    span.set_attribute("rpc.jsonrpc.error_code", code);
    if server_error {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::service;

    #[test]
    fn the_server_span_and_a_call_span_carry_the_jsonrpc_attributes() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        tracing::dispatcher::with_default(&dispatch, || {
            let server = tracing::info_span!(
                "request",
                otel.name = "POST /rpc",
                otel.kind = "server",
                otel.status_code = Empty
            );
            record_request(&server);
            record_method(&server, "user.get");
            let _entered = server.enter();
            let call = call_span("user.update");
            record_error(&call, -32053, true);
        });
        let records: Vec<_> = buffer
            .lines()
            .into_iter()
            .filter(|line| line["target"] == crate::records::TARGET)
            .collect();
        assert_eq!(records.len(), 2);
        let (call, server) = (&records[0]["span"], &records[1]["span"]);
        assert_eq!(server["attributes"]["rpc.system"], "jsonrpc");
        assert_eq!(server["attributes"]["rpc.jsonrpc.version"], "2.0");
        assert_eq!(server["attributes"]["rpc.method"], "user.get");
        assert_eq!(call["name"], "jsonrpc user.update");
        assert_eq!(call["kind"], "internal");
        assert_eq!(call["parent_span_id"], records[1]["span_id"]);
        assert_eq!(call["attributes"]["rpc.method"], "user.update");
        assert_eq!(call["attributes"]["rpc.jsonrpc.error_code"], -32053);
        assert_eq!(call["status"], "error");
    }
}
