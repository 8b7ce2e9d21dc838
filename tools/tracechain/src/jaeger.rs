//! A trace read from Jaeger's query API, as the same [`Span`]s and
//! [`LogEvent`]s the logs give.
//!
//! Jaeger answers `GET /api/traces/{traceID}` with its JSON model
//! (jaegertracing/jaeger `model/json`), wrapped in `{"data": [...], "errors": ...}`:
//!
//! ```json
//! {"data": [{"traceID": "...", "spans": [{"traceID": "...", "spanID": "...",
//!   "operationName": "...", "references": [{"refType": "CHILD_OF", "traceID": "...", "spanID": "..."}],
//!   "startTime": 1732545600000000, "duration": 18342,
//!   "tags": [{"key": "span.kind", "type": "string", "value": "server"}],
//!   "logs": [{"timestamp": 1732545600018000_i64, "fields": [{"key": "event", "type": "string", "value": "..."}]}],
//!   "processID": "p1"}],
//!   "processes": {"p1": {"serviceName": "api", "tags": []}}}]}
//! ```
//!
//! How OTLP spans appear there (the OpenTelemetry-to-Jaeger mapping): the
//! span kind is the tag `span.kind` (absent for internal spans), the status
//! the tags `otel.status_code` and `otel.status_description`, the parent is
//! the first reference (a `CHILD_OF`, or a `FOLLOWS_FROM` when the span also
//! links to its parent), span links are `FOLLOWS_FROM` references,
//! `service.name` is the process's `serviceName`, and span events (the
//! services' log events, which the OpenTelemetry layer adds to their span)
//! are `logs`, their name in the field `event`. Times are in microseconds.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    logs::Logs,
    span::{Kind, Link, LogEvent, Span, Status, hex_id, text_of},
};

/// Tags Jaeger derives from the span itself rather than from its
/// attributes; they become the span's kind and status, or are left out, so
/// a span read from Jaeger has the attributes its span record has.
const DERIVED_TAGS: &[&str] = &[
    "span.kind",
    "error",
    "internal.span.format",
    "otel.status_code",
    "otel.status_description",
    "otel.scope.name",
    "otel.scope.version",
    "otel.library.name",
    "otel.library.version",
];

/// Asks the Jaeger query API at `base` (`http://localhost:16686`) for a trace.
pub async fn fetch(base: &str, trace_id: &str) -> anyhow::Result<Logs> {
    let url = format!("{}/api/traces/{trace_id}", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach Jaeger at {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("Jaeger's answer to {url} ({status}) is not JSON"))?;
    read(&body).with_context(|| format!("reading Jaeger's answer to {url}"))
}

/// The spans of Jaeger's answer to `GET /api/traces/{traceID}`, in the order
/// Jaeger lists them, and their events.
pub fn read(json: &Value) -> anyhow::Result<Logs> {
    let response = Response::deserialize(json).context("not a Jaeger query API response")?;
    let errors = response.errors.unwrap_or_default();
    if !errors.is_empty() {
        let messages: Vec<String> = errors
            .iter()
            .map(|error| match error.code {
                Some(code) => format!("{code}: {}", error.msg),
                None => error.msg.clone(),
            })
            .collect();
        bail!("Jaeger answered with errors: {}", messages.join("; "));
    }

    let mut logs = Logs::default();
    for trace in response.data.unwrap_or_default() {
        for span in &trace.spans {
            let read = span_of(span, &trace.processes)
                .with_context(|| format!("span {} ({})", span.span_id, span.operation_name))?;
            logs.events.extend(events_of(span, &read));
            logs.spans.push(read);
        }
    }
    Ok(logs)
}

fn span_of(span: &JaegerSpan, processes: &HashMap<String, Process>) -> anyhow::Result<Span> {
    let trace_id = hex_id(&span.trace_id, 32).context("bad traceID")?;
    let span_id = hex_id(&span.span_id, 16).context("bad spanID")?;

    // Jaeger's OTLP translator puts the parent first, as a CHILD_OF in the
    // same trace, and each link after it as a FOLLOWS_FROM. A link to the
    // parent itself (the consumer's `process` span links to the producer span
    // that is also its parent) is not added twice: the translator retypes the
    // parent's reference FOLLOWS_FROM instead. So a first reference into the
    // same trace is the parent whatever its type (a root span has a trace of
    // its own, so it cannot have one), and a FOLLOWS_FROM is also a link.
    let references = span.references.as_deref().unwrap_or_default();
    let mut parent = None;
    let mut links = Vec::new();
    for (index, reference) in references.iter().enumerate() {
        let id = hex_id(&reference.span_id, 16).context("bad reference spanID")?;
        let reference_trace = hex_id(&reference.trace_id, 32).context("bad reference traceID")?;
        let is_link = match reference.ref_type.as_str() {
            "CHILD_OF" => false,
            "FOLLOWS_FROM" => true,
            other => bail!("unknown reference type `{other}`"),
        };
        if index == 0 && reference_trace == trace_id {
            parent = Some(id.clone());
        }
        if is_link {
            links.push(Link {
                trace_id: reference_trace,
                span_id: id,
            });
        }
    }
    // Older answers may carry the parent only in the deprecated field.
    if parent.is_none()
        && let Some(legacy) = span
            .parent_span_id
            .as_deref()
            .filter(|id| !id.trim_start_matches('0').is_empty())
    {
        parent = Some(hex_id(legacy, 16).context("bad parentSpanID")?);
    }

    let tags = span.tags.as_deref().unwrap_or_default();
    let tag = |key: &str| tags.iter().find(|tag| tag.key == key).map(|tag| text_of(&tag.value));
    let kind = match tag("span.kind").as_deref() {
        None => Kind::Internal,
        Some(kind) => Kind::parse(kind).with_context(|| format!("unknown span.kind `{kind}`"))?,
    };
    let status = match tag("otel.status_code") {
        None => Status::Unset,
        Some(code) => Status::parse(&code).with_context(|| format!("unknown otel.status_code `{code}`"))?,
    };
    let attributes: BTreeMap<String, String> = tags
        .iter()
        .filter(|tag| !DERIVED_TAGS.contains(&tag.key.as_str()))
        .map(|tag| (tag.key.clone(), text_of(&tag.value)))
        .collect();

    let process = match (&span.process, &span.process_id) {
        (Some(process), _) => process,
        (None, Some(id)) => processes
            .get(id)
            .with_context(|| format!("processID `{id}` is not in the trace's processes"))?,
        (None, None) => bail!("the span has neither a process nor a processID"),
    };

    Ok(Span {
        trace_id,
        span_id,
        parent_span_id: parent,
        name: span.operation_name.clone(),
        kind,
        service: process.service_name.clone(),
        start_us: span.start_time,
        duration_us: span.duration,
        status,
        status_message: tag("otel.status_description"),
        links,
        attributes,
    })
}

/// The span's events, as the log lines they were written as.
fn events_of<'a>(span: &'a JaegerSpan, read: &'a Span) -> impl Iterator<Item = LogEvent> + 'a {
    span.logs.iter().flatten().map(|log| {
        let mut fields: BTreeMap<String, String> = log
            .fields
            .iter()
            .map(|field| (field.key.clone(), text_of(&field.value)))
            .collect();
        LogEvent {
            timestamp_us: log.timestamp,
            level: fields.remove("level").unwrap_or_default(),
            target: fields.remove("target").unwrap_or_default(),
            message: fields.remove("event").unwrap_or_default(),
            service: read.service.clone(),
            trace_id: read.trace_id.clone(),
            span_id: Some(read.span_id.clone()),
            fields,
        }
    })
}

// The parts of Jaeger's JSON model (`model/json/model.go`) used here.

#[derive(Deserialize)]
struct Response {
    data: Option<Vec<Trace>>,
    #[serde(default)]
    errors: Option<Vec<ApiError>>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    msg: String,
}

#[derive(Deserialize)]
struct Trace {
    spans: Vec<JaegerSpan>,
    #[serde(default)]
    processes: HashMap<String, Process>,
}

#[derive(Deserialize)]
struct JaegerSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(rename = "parentSpanID", default)]
    parent_span_id: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: String,
    #[serde(default)]
    references: Option<Vec<Reference>>,
    #[serde(rename = "startTime", default)]
    start_time: i64,
    #[serde(default)]
    duration: i64,
    #[serde(default)]
    tags: Option<Vec<KeyValue>>,
    #[serde(default)]
    logs: Option<Vec<Log>>,
    #[serde(rename = "processID", default)]
    process_id: Option<String>,
    #[serde(default)]
    process: Option<Process>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "refType")]
    ref_type: String,
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
struct Process {
    #[serde(rename = "serviceName")]
    service_name: String,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
struct Log {
    timestamp: i64,
    #[serde(default)]
    fields: Vec<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of the trace of one `POST /v1/users`, as Jaeger's query API
    /// returns it (format of jaegertracing/jaeger `model/json`, with the
    /// `structuredResponse` envelope of `cmd/query/app/http_handler.go`).
    const CREATE_USER_TRACE: &str = include_str!("../tests/fixtures/jaeger-create-user.json");

    fn spans() -> Vec<Span> {
        let json: Value = serde_json::from_str(CREATE_USER_TRACE).unwrap();
        read(&json).unwrap().spans
    }

    fn by_id(spans: &[Span], id: &str) -> Span {
        spans.iter().find(|span| span.span_id == id).cloned().unwrap()
    }

    #[test]
    fn every_span_of_the_answer_becomes_a_span() {
        let spans = spans();
        assert_eq!(spans.len(), 6);
        assert!(spans.iter().all(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn the_root_server_span_has_no_parent_its_times_and_string_attributes() {
        let root = by_id(&spans(), "00f067aa0ba902b7");
        assert_eq!(root.name, "POST /v1/users");
        assert_eq!(root.kind, Kind::Server);
        assert_eq!(root.service, "api");
        assert_eq!(root.parent_span_id, None);
        assert_eq!((root.start_us, root.duration_us), (1732545600000000, 18342));
        assert_eq!(root.status, Status::Unset);
        assert_eq!(root.attribute("http.response.status_code"), Some("201"));
        assert_eq!(root.attribute("http.route"), Some("/v1/users"));
        assert!(root.links.is_empty());
    }

    #[test]
    fn tags_jaeger_derives_become_kind_and_status_not_attributes() {
        let spans = spans();
        let root = by_id(&spans, "00f067aa0ba902b7");
        for derived in ["span.kind", "otel.scope.name", "internal.span.format"] {
            assert_eq!(root.attribute(derived), None, "{derived}");
        }
        let process = by_id(&spans, "e457b5a2e4d86bd1");
        assert_eq!(process.status, Status::Ok);
        assert_eq!(process.attribute("otel.status_code"), None);
    }

    #[test]
    fn the_service_comes_from_the_process_and_the_parent_from_child_of() {
        let spans = spans();
        let server = by_id(&spans, "a2fb4a1d1a96d312");
        assert_eq!(server.service, "user");
        assert_eq!(server.kind, Kind::Server);
        assert_eq!(server.parent_span_id.as_deref(), Some("53995c3f42cd8ad8"));
        let client = by_id(&spans, "53995c3f42cd8ad8");
        assert_eq!(client.kind, Kind::Client);
        assert_eq!(client.attribute("rpc.grpc.status_code"), Some("0"));
    }

    #[test]
    /// As Jaeger 2.12 answers for a span whose link is also its parent: one
    /// FOLLOWS_FROM reference, first, standing for both.
    fn a_first_follows_from_in_the_trace_is_the_parent_and_a_link() {
        let spans = spans();
        assert_eq!(by_id(&spans, "7c2b1e8f3d4a5b6c").kind, Kind::Producer);
        let process = by_id(&spans, "e457b5a2e4d86bd1");
        assert_eq!(process.kind, Kind::Consumer);
        assert_eq!(process.service, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some("7c2b1e8f3d4a5b6c"));
        assert_eq!(
            process.links,
            vec![Link {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                span_id: "7c2b1e8f3d4a5b6c".to_owned()
            }]
        );
        assert_eq!(process.attribute("messaging.kafka.offset"), Some("41"));
        assert_eq!(process.attribute("sampled"), Some("true"));
        assert_eq!(process.attribute("load"), Some("0.5"));
    }

    #[test]
    fn a_span_without_span_kind_is_internal() {
        assert_eq!(by_id(&spans(), "0b3ad0e0c1f2a3b4").kind, Kind::Internal);
    }

    #[test]
    fn a_span_log_is_an_event_of_its_span() {
        let json = serde_json::json!({"data": [{
            "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spans": [{"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7",
                       "operationName": "POST /v1/users", "references": [], "tags": [],
                       "startTime": 1732545600000000_i64, "duration": 18342, "processID": "p1",
                       "logs": [{"timestamp": 1732545600018000_i64, "fields": [
                           {"key": "event", "type": "string", "value": "request finished"},
                           {"key": "level", "type": "string", "value": "INFO"},
                           {"key": "target", "type": "string", "value": "callchain_telemetry::http"},
                           {"key": "status", "type": "int64", "value": 201}]}]}],
            "processes": {"p1": {"serviceName": "api", "tags": []}}
        }]});
        let logs = read(&json).unwrap();
        let event = &logs.events[0];
        assert_eq!(event.message, "request finished");
        assert_eq!((event.level.as_str(), event.service.as_str()), ("INFO", "api"));
        assert_eq!(event.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(event.timestamp_us, 1732545600018000);
        assert_eq!(event.fields["status"], "201");
    }

    #[test]
    fn a_trace_id_printed_with_16_digits_is_padded_to_32() {
        let json = serde_json::json!({"data": [{
            "traceID": "a3ce929d0e0e4736",
            "spans": [{"traceID": "A3CE929D0E0E4736", "spanID": "00f067aa0ba902b7",
                       "operationName": "x", "references": [], "tags": [], "processID": "p1"}],
            "processes": {"p1": {"serviceName": "api", "tags": []}}
        }]});
        let spans = read(&json).unwrap().spans;
        assert_eq!(spans[0].trace_id, "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn an_answer_with_errors_is_an_error() {
        let json = serde_json::json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": 404, "msg": "trace not found"}]
        });
        let error = read(&json).unwrap_err().to_string();
        assert!(error.contains("404: trace not found"), "{error}");
    }
}
