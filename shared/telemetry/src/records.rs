//! Span records: one JSON log line per finished span, beside the event
//! lines, so a request's whole call chain can be rebuilt from the logs alone
//! (`tools/tracechain` does).
//!
//! A span record is a log line of target [`TARGET`] whose `trace_id` and
//! `span_id` are the span's own, and whose `span` object holds the rest:
//!
//! ```json
//! {"timestamp":"2026-11-25T10:00:00.018391Z","level":"INFO","target":"callchain::span",
//!  "service":"api","message":"span ended","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",
//!  "span_id":"00f067aa0ba902b7",
//!  "span":{"parent_span_id":null,"name":"POST /v1/users","kind":"server",
//!          "start":"2026-11-25T10:00:00.000049Z","duration_us":18342,"status":"unset",
//!          "links":[],"attributes":{"http.request.method":"POST","http.route":"/v1/users",
//!                                   "http.response.status_code":201}}}
//! ```
//!
//! `kind` is `server`, `client`, `producer`, `consumer` or `internal`;
//! `status` is `unset`, `ok` or `error` (with `status_message`); each link is
//! `{"trace_id":...,"span_id":...}`; attribute values keep their JSON type.
//! The attributes are exactly those the span exports, so a record says no
//! more than the span in Jaeger does (no password, hash or query value ever
//! is one).
//!
//! Every string attribute value (of the span, its events and its links) is
//! cut to the service's attribute value length limit, in characters, before
//! the record is written and the span is handed on for export: a client
//! cannot make a span (a 64 KB `url.path`) as large as it likes.
//!
//! Only sampled spans get a record, the spans a trace backend gets too. The
//! records follow `RUST_LOG` like any event: `RUST_LOG=info,callchain::span=off`
//! turns them off.
//!
//! Why a `SpanProcessor`, not a `tracing` layer: the processor is handed the
//! finished span as the exporter sees it (its ids, the parent the context
//! gave it, its kind, times, status, links and final attributes), so the
//! record cannot disagree with the exported span. A layer would have to
//! rebuild all of that from the OpenTelemetry layer's private state. The
//! processor runs where the span ends and writes one line straight to the
//! service's log: the `span` object is serialised once, straight from the
//! span's data, into a line of the event lines' format, with none of an
//! event's dispatching; nothing at all is done when `RUST_LOG` filters the
//! target out.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Array, KeyValue, StringValue, Value,
    trace::{SpanId, SpanKind, Status, TraceId},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanProcessor},
};
use serde::{Serialize, Serializer};
use tracing::Dispatch;

use crate::logs::{Line, LogWriter};

/// The `target` of span records, to filter them (`callchain::span=off`) and to
/// tell them from event lines.
pub const TARGET: &str = "callchain::span";

/// Writes a span record for every sampled span that ends, then hands the
/// span on to the next processor (the batch processor, when spans are
/// exported); see the module docs.
///
/// The provider holds this one processor, not the two side by side: with
/// two, the SDK copies every span's data (name, attributes, events, links)
/// for the first before handing it to the second; in a chain the span's
/// data moves.
#[derive(Debug)]
pub struct SpanRecords {
    sink: RecordSink,
    /// The longest a string attribute value may be, in characters.
    limit: usize,
    next: Option<Box<dyn SpanProcessor>>,
}

/// Where a [`SpanRecords`] writes, set once the service's log exists.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordSink(Arc<OnceLock<Sink>>);

#[derive(Debug)]
struct Sink {
    service: String,
    /// `None` when `RUST_LOG` turns the records off.
    writer: Option<LogWriter>,
}

impl SpanRecords {
    /// Records every span, its attribute values cut to `limit` characters.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            sink: RecordSink::default(),
            limit,
            next: None,
        }
    }

    /// Records every span, its attribute values cut to `limit` characters,
    /// then hands it, cut, to `next`.
    pub(crate) fn then(limit: usize, next: impl SpanProcessor + 'static) -> Self {
        Self {
            next: Some(Box::new(next)),
            ..Self::new(limit)
        }
    }

    /// Where the records will go: see [`RecordSink::write_to`].
    pub(crate) fn sink(&self) -> RecordSink {
        self.sink.clone()
    }
}

impl RecordSink {
    /// Sends the records to the log `writer` of `service`, whose events
    /// `dispatch` filters, whichever thread ends a span: in a test process
    /// several services share the threads of the test, and a span dropped on
    /// a foreign thread still belongs to the service that made it. Whether
    /// `RUST_LOG` lets records through is read here, once.
    pub(crate) fn write_to(&self, dispatch: &Dispatch, writer: LogWriter, service: &str) {
        let enabled =
            tracing::dispatcher::with_default(dispatch, || tracing::enabled!(target: TARGET, tracing::Level::INFO));
        let _ = self.0.set(Sink {
            service: service.to_owned(),
            writer: enabled.then_some(writer),
        });
    }

    /// Writes `span`'s record, when it is sampled and records are on.
    fn write(&self, span: &SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let Some(Sink {
            service,
            writer: Some(writer),
        }) = self.0.get()
        else {
            return;
        };
        // Written beside the event lines, not as an event: the line names
        // its own span, never one that happens to be current here, and needs
        // none of an event's dispatching.
        let mut line = Line::start(span.end_time.into(), "INFO", TARGET, service);
        line.str("message", "span ended");
        line.display("trace_id", span.span_context.trace_id());
        line.display("span_id", span.span_context.span_id());
        line.raw("span", record(span));
        writer.write_line(&line.finish());
    }
}

impl SpanProcessor for SpanRecords {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        if let Some(next) = &self.next {
            next.on_start(span, cx);
        }
    }

    fn on_end(&self, mut span: SpanData) {
        cut_attributes(&mut span, self.limit);
        self.sink.write(&span);
        if let Some(next) = &self.next {
            next.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.as_ref().map_or(Ok(()), |next| next.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next
            .as_ref()
            .map_or(Ok(()), |next| next.shutdown_with_timeout(timeout))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(next) = &mut self.next {
            next.set_resource(resource);
        }
    }
}

/// Cuts every string attribute value of `span` (its own, its events' and its
/// links') to at most `limit` characters, as OpenTelemetry's attribute value
/// length limit asks.
fn cut_attributes(span: &mut SpanData, limit: usize) {
    let attributes = span
        .attributes
        .iter_mut()
        .chain(
            span.events
                .events
                .iter_mut()
                .flat_map(|event| event.attributes.iter_mut()),
        )
        .chain(span.links.links.iter_mut().flat_map(|link| link.attributes.iter_mut()));
    for attribute in attributes {
        match &mut attribute.value {
            Value::String(text) => cut(text, limit),
            Value::Array(Array::String(texts)) => texts.iter_mut().for_each(|text| cut(text, limit)),
            _ => {}
        }
    }
}

/// `text` cut to its first `limit` characters: never inside a character.
fn cut(text: &mut StringValue, limit: usize) {
    // No more bytes than the limit is no more characters: most values cost
    // one comparison.
    if text.as_str().len() <= limit {
        return;
    }
    if let Some((end, _)) = text.as_str().char_indices().nth(limit) {
        *text = text.as_str()[..end].to_owned().into();
    }
}

/// The `span` object of a record, as JSON text. Serialised straight from
/// the span's data: no JSON tree is built on the way.
fn record(span: &SpanData) -> String {
    let (status, status_message) = match &span.status {
        Status::Unset => ("unset", None),
        Status::Ok => ("ok", None),
        Status::Error { description } => ("error", Some(description.as_ref()).filter(|d| !d.is_empty())),
    };
    let record = Record {
        parent_span_id: (span.parent_span_id != SpanId::INVALID).then_some(Hex(span.parent_span_id)),
        name: &span.name,
        kind: kind(&span.span_kind),
        start: rfc3339(span.start_time),
        duration_us: u64::try_from(
            span.end_time
                .duration_since(span.start_time)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX),
        status,
        status_message,
        links: Links(&span.links),
        attributes: Attributes(&span.attributes),
    };
    serde_json::to_string(&record).unwrap_or_default()
}

#[derive(Serialize)]
struct Record<'a> {
    parent_span_id: Option<Hex<SpanId>>,
    name: &'a str,
    kind: &'static str,
    start: String,
    duration_us: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<&'a str>,
    links: Links<'a>,
    attributes: Attributes<'a>,
}

/// An id as the lowercase hex its `Display` writes.
struct Hex<T>(T);

impl<T: std::fmt::Display> Serialize for Hex<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Links<'a>(&'a [opentelemetry::trace::Link]);

impl Serialize for Links<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Link {
            trace_id: Hex<TraceId>,
            span_id: Hex<SpanId>,
        }
        serializer.collect_seq(self.0.iter().map(|link| Link {
            trace_id: Hex(link.span_context.trace_id()),
            span_id: Hex(link.span_context.span_id()),
        }))
    }
}

struct Attributes<'a>(&'a [KeyValue]);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|kv| (kv.key.as_str(), AttributeValue(&kv.value))))
    }
}

/// An attribute value with its JSON type (numbers stay numbers).
struct AttributeValue<'a>(&'a Value);

impl Serialize for AttributeValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::I64(i) => serializer.serialize_i64(*i),
            Value::F64(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s.as_str()),
            // Arrays, non-finite numbers, and whatever later versions add,
            // as OpenTelemetry prints them.
            other => serializer.collect_str(other),
        }
    }
}

fn kind(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// RFC 3339 in UTC with microseconds, as the log lines' `timestamp`.
fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;
    use crate::test_support::{Buffer, service};

    trait Records {
        fn records(&self) -> Vec<Json>;
    }

    impl Records for Buffer {
        fn records(&self) -> Vec<Json> {
            self.lines()
                .into_iter()
                .filter(|line| line["target"] == TARGET)
                .collect()
        }
    }

    #[test]
    fn a_finished_span_writes_one_record_with_its_ids_parent_kind_and_attributes() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        tracing::dispatcher::with_default(&dispatch, || {
            let server = tracing::info_span!(
                "request",
                otel.name = "GET /things",
                otel.kind = "server",
                http.response.status_code = 200
            );
            let _entered = server.enter();
            let db = tracing::info_span!(
                "statement",
                otel.kind = "client",
                otel.status_code = "ERROR",
                otel.status_description = "refused",
                db.query.text = "SELECT 1"
            );
            db.in_scope(|| tracing::info!("inside"));
        });

        let lines = buffer.lines();
        let records = buffer.records();
        assert_eq!(records.len(), 2, "{lines:#?}");
        let (db, server) = (&records[0], &records[1]);
        for record in [db, server] {
            assert_eq!(record["service"], "unit");
            assert_eq!(record["level"], "INFO");
            assert_eq!(record["message"], "span ended");
            assert_eq!(record["trace_id"].as_str().unwrap().len(), 32);
            assert!(record["span"]["start"].as_str().unwrap().ends_with('Z'));
            assert!(record["span"]["duration_us"].is_u64());
        }
        assert_eq!(db["trace_id"], server["trace_id"]);
        assert_eq!(server["span"]["name"], "GET /things");
        assert_eq!(server["span"]["kind"], "server");
        assert_eq!(server["span"]["parent_span_id"], Json::Null);
        assert_eq!(server["span"]["status"], "unset");
        assert_eq!(server["span"]["attributes"]["http.response.status_code"], 200);
        assert_eq!(db["span"]["name"], "statement");
        assert_eq!(db["span"]["kind"], "client");
        assert_eq!(db["span"]["parent_span_id"], server["span_id"]);
        assert_eq!(db["span"]["status"], "error");
        assert_eq!(db["span"]["status_message"], "refused");
        assert_eq!(db["span"]["attributes"]["db.query.text"], "SELECT 1");

        // The event inside the statement names it; the record is not an
        // event of whatever span was current when the statement ended.
        let inside = lines.iter().find(|line| line["message"] == "inside").unwrap();
        assert_eq!(inside["span_id"], db["span_id"]);
    }

    /// Every span a [`SpanRecords`] hands on.
    #[derive(Debug, Clone, Default)]
    struct Handed(Arc<std::sync::Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Handed {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A sampled span whose every attribute holds `value`: its own, an
    /// event's and a link's, a string and an array of strings.
    fn span_holding(value: &str) -> SpanData {
        use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceState};
        let attributes = vec![
            KeyValue::new("url.path", value.to_owned()),
            KeyValue::new("tags", Value::Array(Array::String(vec![value.to_owned().into()]))),
            KeyValue::new("http.response.status_code", 404_i64),
        ];
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events
            .events
            .push(Event::new("exception", SystemTime::now(), attributes.clone(), 0));
        let mut links = opentelemetry_sdk::trace::SpanLinks::default();
        let context = |span: u64| {
            SpanContext::new(
                TraceId::from(7),
                SpanId::from(span),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            )
        };
        links.links.push(Link::new(context(9), attributes.clone(), 0));
        SpanData {
            span_context: context(8),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events,
            links,
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn strings(span: &SpanData) -> Vec<String> {
        let attributes = span
            .attributes
            .iter()
            .chain(span.events.events.iter().flat_map(|event| &event.attributes))
            .chain(span.links.links.iter().flat_map(|link| &link.attributes));
        attributes
            .filter(|attribute| !matches!(attribute.value, Value::I64(_)))
            .map(|attribute| match &attribute.value {
                Value::Array(Array::String(texts)) => texts[0].to_string(),
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_64_kb_attribute_is_handed_on_for_export_and_recorded_cut_to_the_limit() {
        let handed = Handed::default();
        let records = SpanRecords::then(1024, handed.clone());
        let buffer = crate::test_support::Buffer::default();
        let (dispatch, _guard, _) = service("unit", "info");
        let writer = buffer.clone();
        records
            .sink()
            .write_to(&dispatch, LogWriter::new(move || writer.clone()), "unit");
        let long = "x".repeat(64 * 1024);

        records.on_end(span_holding(&long));

        let handed = handed.0.lock().unwrap();
        let exported = strings(&handed[0]);
        assert_eq!(exported.len(), 6, "{exported:?}");
        for value in &exported {
            assert_eq!(value.as_str(), &long[..1024]);
        }
        assert_eq!(
            handed[0].attributes[2].value,
            Value::I64(404),
            "a number is no string to cut"
        );
        let record = &buffer.records()[0];
        assert_eq!(record["span"]["attributes"]["url.path"], long[..1024]);
    }

    #[test]
    fn a_value_is_cut_to_whole_characters_never_inside_one() {
        let mut text = StringValue::from("aé€😀z".to_owned());
        cut(&mut text, 4);
        assert_eq!(text.as_str(), "aé€😀");
        cut(&mut text, 2);
        assert_eq!(text.as_str(), "aé");

        let mut short = StringValue::from("short");
        cut(&mut short, 5);
        assert_eq!(short.as_str(), "short");
    }

    #[test]
    fn a_link_is_recorded_with_its_trace_and_span_ids() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        let (linked_trace, linked_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("process", otel.kind = "consumer");
            span.add_link(opentelemetry::trace::SpanContext::new(
                opentelemetry::trace::TraceId::from_hex(linked_trace).unwrap(),
                opentelemetry::trace::SpanId::from_hex(linked_span).unwrap(),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            ));
        });
        let records = buffer.records();
        assert_eq!(
            records[0]["span"]["links"],
            json!([{ "trace_id": linked_trace, "span_id": linked_span }])
        );
    }

    #[test]
    fn rust_log_turns_the_records_off() {
        let (dispatch, _guard, buffer) = service("unit", "info,callchain::span=off");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("work").in_scope(|| tracing::info!("still logged"));
        });
        let lines = buffer.lines();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(lines[0]["message"], "still logged");
    }

    #[test]
    fn a_span_not_sampled_has_no_record() {
        crate::install_propagator();
        let (dispatch, _guard, buffer) = service("unit", "info");
        let mut headers = ::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            ::http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            let _ = span.set_parent(crate::propagation::extract(&headers));
            span.in_scope(|| tracing::info!("inside"));
        });
        assert!(buffer.records().is_empty(), "{:#?}", buffer.lines());
    }

    #[test]
    fn a_span_ended_on_another_services_thread_is_recorded_by_its_own_service() {
        let (api, _api_guard, api_logs) = service("api", "info");
        let (user, _user_guard, user_logs) = service("user", "info");
        let span = tracing::dispatcher::with_default(&api, || tracing::info_span!("of the api"));
        tracing::dispatcher::with_default(&user, || drop(span));
        assert_eq!(api_logs.records().len(), 1);
        assert_eq!(api_logs.records()[0]["service"], "api");
        assert!(user_logs.lines().is_empty(), "{:#?}", user_logs.lines());
    }
}
