//! Spans read back from Jaeger, so the tests against the running stack
//! (`make e2e-up`) assert on the same [`SpanRecord`]s as the tests that
//! collect spans with the in-process OTLP receiver.
//!
//! Reading Jaeger's answer is tracechain's (`callchain_tracechain::jaeger`,
//! where the OpenTelemetry-to-Jaeger mapping is described): the tool and the
//! tests read Jaeger the one same way. [`span_record`] also turns the spans
//! tracechain reads from the JSON logs into records.

use callchain_testkit::spans::{SpanKind, SpanRecord};
use callchain_tracechain::{Kind, Span};
use serde_json::Value;

/// Converts Jaeger's answer to `GET /api/traces/{traceID}` into span records,
/// in the order Jaeger lists them.
///
/// Attributes are the span's tags, values rendered as strings (`201`, `true`,
/// `grpc`), less those Jaeger derives from the span itself (`span.kind`,
/// `otel.status_code`, `otel.scope.name`, ...). Resource attributes other
/// than `service.name` are process tags in Jaeger and are not included.
pub fn spans_from_jaeger(json: &Value) -> anyhow::Result<Vec<SpanRecord>> {
    Ok(callchain_tracechain::jaeger::read(json)?
        .spans
        .iter()
        .map(span_record)
        .collect())
}

/// A span tracechain read (from the logs or from Jaeger) as the tests'
/// record; links keep their span ids.
pub fn span_record(span: &Span) -> SpanRecord {
    SpanRecord {
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        parent_span_id: span.parent_span_id.clone(),
        name: span.name.clone(),
        kind: match span.kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Producer => SpanKind::Producer,
            Kind::Consumer => SpanKind::Consumer,
        },
        service: span.service.clone(),
        attributes: span.attributes.clone(),
        links: span.links.iter().map(|link| link.span_id.clone()).collect(),
        start_us: span.start_us,
        end_us: span.start_us + span.duration_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jaeger_answer_becomes_records_with_kind_parent_and_links() {
        let json = serde_json::json!({"data": [{
            "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spans": [{"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "e457b5a2e4d86bd1",
                       "operationName": "process user-events",
                       "references": [{"refType": "FOLLOWS_FROM", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
                                       "spanID": "7c2b1e8f3d4a5b6c"}],
                       "tags": [{"key": "span.kind", "type": "string", "value": "consumer"},
                                {"key": "messaging.kafka.offset", "type": "int64", "value": 41}],
                       "processID": "p1"}],
            "processes": {"p1": {"serviceName": "consumer", "tags": []}}
        }]});
        let records = spans_from_jaeger(&json).unwrap();
        let process = &records[0];
        assert_eq!(process.kind, SpanKind::Consumer);
        assert_eq!(process.service, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some("7c2b1e8f3d4a5b6c"));
        assert_eq!(process.links, ["7c2b1e8f3d4a5b6c"]);
        assert_eq!(process.attribute("messaging.kafka.offset"), Some("41"));
        assert_eq!(process.attribute("span.kind"), None);
    }
}
