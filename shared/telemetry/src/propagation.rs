//! W3C TraceContext and Baggage across the wire.
//!
//! HTTP headers and gRPC metadata are both an [`http::HeaderMap`] on the wire,
//! so one pair of carriers serves both: `opentelemetry-http`'s
//! [`HeaderExtractor`] and [`HeaderInjector`]. Incoming baggage is held to a
//! [`BaggagePolicy`](crate::baggage::BaggagePolicy).

use std::collections::HashMap;

use ::http::HeaderMap;
use opentelemetry::{Context, trace::TraceContextExt as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::baggage::BaggagePolicy;

/// The remote context carried by `headers` (empty when there is none), from
/// one of our own services: baggage within the W3C limits, every key kept.
pub fn extract(headers: &HeaderMap) -> Context {
    extract_with(headers, &BaggagePolicy::TRUSTED)
}

/// The remote context carried by `headers`, its baggage held to `baggage`.
pub fn extract_with(headers: &HeaderMap, baggage: &BaggagePolicy) -> Context {
    baggage.extract(&HeaderExtractor(headers))
}

/// Writes `context` into `headers` as `traceparent`, `tracestate` and `baggage`.
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut HeaderInjector(headers))
    });
}

/// The context of `span` as its W3C fields (`traceparent`, and `tracestate`
/// and `baggage` when it has them), to keep beside work that is carried on
/// later, elsewhere: an outbox row the relay publishes after the request
/// has ended. Empty outside a trace.
pub fn fields(span: &tracing::Span) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&span.context(), &mut fields)
    });
    fields
}

/// The context kept by [`fields`], written by one of our own services:
/// baggage within the W3C limits, every key kept.
pub fn extract_fields(fields: &HashMap<String, String>) -> Context {
    BaggagePolicy::TRUSTED.extract(fields)
}

/// The `traceparent` value of a span, for answering clients.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The trace id of a span, as 32 hex digits (`None` outside a trace).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use ::http::HeaderValue;

    use super::*;

    #[test]
    fn a_traceparent_survives_a_round_trip_through_headers() {
        crate::install_propagator();
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        incoming.insert("baggage", HeaderValue::from_static("tenant=acme"));
        let context = extract(&incoming);
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut outgoing = HeaderMap::new();
        inject(&context, &mut outgoing);
        assert_eq!(
            outgoing["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(outgoing["baggage"], "tenant=acme");
    }

    #[test]
    fn a_context_kept_as_fields_is_extracted_from_them() {
        crate::install_propagator();
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        incoming.insert("baggage", HeaderValue::from_static("enduser.id=u1"));
        let mut kept = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&extract(&incoming), &mut kept)
        });
        assert_eq!(
            kept["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let context = extract_fields(&kept);
        let span_context = context.span().span_context().clone();
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(crate::baggage::enduser_id(&context), Some("u1"));
    }

    #[test]
    fn headers_without_context_extract_to_an_invalid_span() {
        crate::install_propagator();
        let context = extract(&HeaderMap::new());
        assert!(!context.span().span_context().is_valid());
    }
}
