//! Spans read back from Jaeger, so the tests against the running stack
//! (`make e2e-up`) assert on the same [`SpanRecord`]s as the tests that
//! collect spans with the in-process OTLP receiver.
//!
//! Jaeger's query API answers `GET /api/traces/{traceID}` with its JSON model
//! (jaegertracing/jaeger `model/json`), wrapped in `{"data": [...], "errors": ...}`:
//!
//! ```json
//! {"data": [{"traceID": "...", "spans": [{"traceID": "...", "spanID": "...",
//!   "operationName": "...", "references": [{"refType": "CHILD_OF", "traceID": "...", "spanID": "..."}],
//!   "tags": [{"key": "span.kind", "type": "string", "value": "server"}], "processID": "p1"}],
//!   "processes": {"p1": {"serviceName": "api", "tags": []}}}]}
//! ```
//!
//! How OTLP spans appear there (the OpenTelemetry-to-Jaeger mapping): the
//! span kind is the tag `span.kind` (absent for internal spans), the parent is
//! the first reference (a `CHILD_OF`, or a `FOLLOWS_FROM` when the span also
//! links to its parent), span links are `FOLLOWS_FROM` references, and
//! `service.name` is the process's `serviceName`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, bail, ensure};
use callchain_testkit::spans::{SpanKind, SpanRecord};
use serde::Deserialize;
use serde_json::Value;

/// Converts Jaeger's answer to `GET /api/traces/{traceID}` into span records,
/// in the order Jaeger lists them.
///
/// Attributes are the span's tags, values rendered as strings (`201`, `true`,
/// `grpc`); they include the tags Jaeger derives from the OTLP span, such as
/// `span.kind`, `otel.status_code` and `otel.scope.name`. Resource attributes
/// other than `service.name` are process tags in Jaeger and are not included.
pub fn spans_from_jaeger(json: &Value) -> anyhow::Result<Vec<SpanRecord>> {
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

    let mut records = Vec::new();
    for trace in response.data.unwrap_or_default() {
        for span in &trace.spans {
            records.push(
                span_record(span, &trace.processes)
                    .with_context(|| format!("span {} ({})", span.span_id, span.operation_name))?,
            );
        }
    }
    Ok(records)
}

fn span_record(span: &Span, processes: &HashMap<String, Process>) -> anyhow::Result<SpanRecord> {
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
        let same_trace = hex_id(&reference.trace_id, 32).ok().as_ref() == Some(&trace_id);
        let is_link = match reference.ref_type.as_str() {
            "CHILD_OF" => false,
            "FOLLOWS_FROM" => true,
            other => bail!("unknown reference type `{other}`"),
        };
        if index == 0 && same_trace {
            parent = Some(id.clone());
        }
        if is_link {
            links.push(id);
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
    let attributes: BTreeMap<String, String> = tags.iter().map(|tag| (tag.key.clone(), render(&tag.value))).collect();
    let kind = match attributes.get("span.kind").map(String::as_str) {
        None | Some("internal") => SpanKind::Internal,
        Some("server") => SpanKind::Server,
        Some("client") => SpanKind::Client,
        Some("producer") => SpanKind::Producer,
        Some("consumer") => SpanKind::Consumer,
        Some(other) => bail!("unknown span.kind `{other}`"),
    };

    let process = match (&span.process, &span.process_id) {
        (Some(process), _) => process,
        (None, Some(id)) => processes
            .get(id)
            .with_context(|| format!("processID `{id}` is not in the trace's processes"))?,
        (None, None) => bail!("the span has neither a process nor a processID"),
    };

    Ok(SpanRecord {
        trace_id,
        span_id,
        parent_span_id: parent,
        name: span.operation_name.clone(),
        kind,
        service: process.service_name.clone(),
        attributes,
        links,
    })
}

/// Lowercase hex, left-padded to `width` digits: Jaeger prints a 128-bit trace
/// id whose high half is zero with 16 digits only.
fn hex_id(id: &str, width: usize) -> anyhow::Result<String> {
    ensure!(
        !id.is_empty() && id.len() <= width && id.chars().all(|c| c.is_ascii_hexdigit()),
        "`{id}` is not an id of at most {width} hex digits"
    );
    Ok(format!("{:0>width$}", id.to_ascii_lowercase()))
}

/// A tag value as text: strings as they are, numbers and booleans as JSON
/// prints them (`201`, `0.5`, `true`).
fn render(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
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
    spans: Vec<Span>,
    #[serde(default)]
    processes: HashMap<String, Process>,
}

#[derive(Deserialize)]
struct Span {
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
    #[serde(default)]
    tags: Option<Vec<KeyValue>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of the trace of one `POST /v1/users`, as Jaeger's query API
    /// returns it (format of jaegertracing/jaeger `model/json`, with the
    /// `structuredResponse` envelope of `cmd/query/app/http_handler.go`).
    const CREATE_USER_TRACE: &str = r#"{
  "data": [
    {
      "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
      "spans": [
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "00f067aa0ba902b7",
          "operationName": "POST /v1/users",
          "references": [],
          "startTime": 1732545600000000,
          "duration": 18342,
          "tags": [
            {"key": "http.request.method", "type": "string", "value": "POST"},
            {"key": "http.route", "type": "string", "value": "/v1/users"},
            {"key": "http.response.status_code", "type": "int64", "value": 201},
            {"key": "otel.scope.name", "type": "string", "value": "callchain-telemetry"},
            {"key": "span.kind", "type": "string", "value": "server"},
            {"key": "internal.span.format", "type": "string", "value": "otlp"}
          ],
          "logs": [],
          "processID": "p1",
          "warnings": null
        },
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "53995c3f42cd8ad8",
          "operationName": "user.v1.UserService/CreateUser",
          "references": [
            {"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}
          ],
          "startTime": 1732545600001000,
          "duration": 9120,
          "tags": [
            {"key": "rpc.system", "type": "string", "value": "grpc"},
            {"key": "rpc.service", "type": "string", "value": "user.v1.UserService"},
            {"key": "rpc.method", "type": "string", "value": "CreateUser"},
            {"key": "rpc.grpc.status_code", "type": "int64", "value": 0},
            {"key": "span.kind", "type": "string", "value": "client"}
          ],
          "logs": [],
          "processID": "p1",
          "warnings": null
        },
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "a2fb4a1d1a96d312",
          "operationName": "user.v1.UserService/CreateUser",
          "references": [
            {"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "53995c3f42cd8ad8"}
          ],
          "startTime": 1732545600001400,
          "duration": 8011,
          "tags": [
            {"key": "rpc.system", "type": "string", "value": "grpc"},
            {"key": "span.kind", "type": "string", "value": "server"}
          ],
          "logs": [],
          "processID": "p2",
          "warnings": null
        },
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "7c2b1e8f3d4a5b6c",
          "operationName": "send user-events",
          "references": [
            {"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}
          ],
          "startTime": 1732545600010500,
          "duration": 6200,
          "tags": [
            {"key": "messaging.system", "type": "string", "value": "kafka"},
            {"key": "messaging.operation.type", "type": "string", "value": "send"},
            {"key": "messaging.destination.name", "type": "string", "value": "user-events"},
            {"key": "messaging.destination.partition.id", "type": "string", "value": "2"},
            {"key": "span.kind", "type": "string", "value": "producer"}
          ],
          "logs": [],
          "processID": "p1",
          "warnings": null
        },
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "e457b5a2e4d86bd1",
          "operationName": "process user-events",
          "references": [
            {"refType": "FOLLOWS_FROM", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "7c2b1e8f3d4a5b6c"}
          ],
          "startTime": 1732545600017000,
          "duration": 2400,
          "tags": [
            {"key": "messaging.system", "type": "string", "value": "kafka"},
            {"key": "messaging.operation.type", "type": "string", "value": "process"},
            {"key": "messaging.kafka.offset", "type": "int64", "value": 41},
            {"key": "otel.status_code", "type": "string", "value": "OK"},
            {"key": "sampled", "type": "bool", "value": true},
            {"key": "load", "type": "float64", "value": 0.5},
            {"key": "span.kind", "type": "string", "value": "consumer"}
          ],
          "logs": [],
          "processID": "p3",
          "warnings": null
        },
        {
          "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
          "spanID": "0b3ad0e0c1f2a3b4",
          "operationName": "decode envelope",
          "references": [
            {"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "e457b5a2e4d86bd1"}
          ],
          "startTime": 1732545600017100,
          "duration": 40,
          "tags": [],
          "logs": [],
          "processID": "p3",
          "warnings": null
        }
      ],
      "processes": {
        "p1": {"serviceName": "api", "tags": [{"key": "telemetry.sdk.language", "type": "string", "value": "rust"}]},
        "p2": {"serviceName": "user", "tags": []},
        "p3": {"serviceName": "consumer", "tags": []}
      },
      "warnings": null
    }
  ],
  "total": 0,
  "limit": 0,
  "offset": 0,
  "errors": null
}"#;

    fn spans() -> Vec<SpanRecord> {
        let json: Value = serde_json::from_str(CREATE_USER_TRACE).unwrap();
        spans_from_jaeger(&json).unwrap()
    }

    fn by_id(spans: &[SpanRecord], id: &str) -> SpanRecord {
        spans.iter().find(|span| span.span_id == id).cloned().unwrap()
    }

    #[test]
    fn every_span_of_the_answer_becomes_a_record() {
        let spans = spans();
        assert_eq!(spans.len(), 6);
        assert!(spans.iter().all(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn the_root_server_span_has_no_parent_and_string_attributes() {
        let root = by_id(&spans(), "00f067aa0ba902b7");
        assert_eq!(root.name, "POST /v1/users");
        assert_eq!(root.kind, SpanKind::Server);
        assert_eq!(root.service, "api");
        assert_eq!(root.parent_span_id, None);
        assert_eq!(root.attribute("http.response.status_code"), Some("201"));
        assert_eq!(root.attribute("http.route"), Some("/v1/users"));
        assert!(root.links.is_empty());
    }

    #[test]
    fn the_service_comes_from_the_process_and_the_parent_from_child_of() {
        let spans = spans();
        let server = by_id(&spans, "a2fb4a1d1a96d312");
        assert_eq!(server.service, "user");
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.parent_span_id.as_deref(), Some("53995c3f42cd8ad8"));
        let client = by_id(&spans, "53995c3f42cd8ad8");
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.attribute("rpc.grpc.status_code"), Some("0"));
    }

    #[test]
    /// As Jaeger 2.13 answers for a span whose link is also its parent: one
    /// FOLLOWS_FROM reference, first, standing for both.
    fn a_first_follows_from_in_the_trace_is_the_parent_and_a_link() {
        let spans = spans();
        assert_eq!(by_id(&spans, "7c2b1e8f3d4a5b6c").kind, SpanKind::Producer);
        let process = by_id(&spans, "e457b5a2e4d86bd1");
        assert_eq!(process.kind, SpanKind::Consumer);
        assert_eq!(process.service, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some("7c2b1e8f3d4a5b6c"));
        assert_eq!(process.links, vec!["7c2b1e8f3d4a5b6c".to_owned()]);
        assert_eq!(process.attribute("messaging.kafka.offset"), Some("41"));
        assert_eq!(process.attribute("sampled"), Some("true"));
        assert_eq!(process.attribute("load"), Some("0.5"));
    }

    #[test]
    fn a_span_without_span_kind_is_internal() {
        assert_eq!(by_id(&spans(), "0b3ad0e0c1f2a3b4").kind, SpanKind::Internal);
    }

    #[test]
    fn a_trace_id_printed_with_16_digits_is_padded_to_32() {
        let json = serde_json::json!({"data": [{
            "traceID": "a3ce929d0e0e4736",
            "spans": [{"traceID": "A3CE929D0E0E4736", "spanID": "00f067aa0ba902b7",
                       "operationName": "x", "references": [], "tags": [], "processID": "p1"}],
            "processes": {"p1": {"serviceName": "api", "tags": []}}
        }]});
        let spans = spans_from_jaeger(&json).unwrap();
        assert_eq!(spans[0].trace_id, "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn an_answer_with_errors_is_an_error() {
        let json = serde_json::json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": 404, "msg": "trace not found"}]
        });
        let error = spans_from_jaeger(&json).unwrap_err().to_string();
        assert!(error.contains("404: trace not found"), "{error}");
    }
}
