//! The JSON log line: one object per event, with the ids of the trace it
//! belongs to, so `grep <trace-id>` over every service's log tells a request's
//! whole story. Span records ([`crate::records`]) are lines of this format
//! too.

use std::{
    fmt::{self, Write as _},
    io,
    sync::Arc,
};

use chrono::{Datelike as _, Timelike as _};
use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer, writer::BoxMakeWriter},
    registry::LookupSpan,
};

/// Formats events as single-line JSON objects with `timestamp`, `level`,
/// `target`, `service`, inside a span `trace_id` and `span_id`, `message`,
/// and the event's own fields.
///
/// Every request writes several lines, so the line is written straight
/// into one buffer, each value escaped on the way: no map of fields, no
/// JSON tree, no string per field.
#[derive(Debug, Clone)]
pub struct JsonFormat {
    service: String,
}

impl JsonFormat {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
        }
    }
}

/// The keys every line starts with; an event field of one of these names
/// is left out rather than written twice.
const RESERVED: &[&str] = &["timestamp", "level", "target", "service", "trace_id", "span_id"];

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Line::start(chrono::Utc::now(), meta.level().as_str(), meta.target(), &self.service);
        // The OpenTelemetry layer activates the span's context on entry.
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            line.display("trace_id", span_context.trace_id());
            line.display("span_id", span_context.span_id());
        }
        let mut fields = FieldWriter {
            line: &mut line,
            message: false,
        };
        event.record(&mut fields);
        if !fields.message {
            line.str("message", "");
        }
        writer.write_str(&line.finish())
    }
}

/// What the `fmt` layer writes of a span's fields when the span opens: nothing.
/// Left to itself it formats every span's fields into text (ANSI styles and
/// all) and keeps it for event formats that print their spans; ours prints
/// the span's ids, and the span's fields reach the span itself.
pub struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }
}

/// One JSON log line, written as it goes: `{"timestamp":..,"level":..,
/// "target":..,"service":..` first, then each field.
pub(crate) struct Line(String);

impl Line {
    pub(crate) fn start(at: chrono::DateTime<chrono::Utc>, level: &str, target: &str, service: &str) -> Self {
        let mut line = Line(String::with_capacity(512));
        line.0.push('{');
        line.key("timestamp");
        let (date, time) = (at.date_naive(), at.time());
        let _ = write!(
            line.0,
            "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\"",
            date.year(),
            date.month(),
            date.day(),
            time.hour(),
            time.minute(),
            time.second(),
            // A leap second's nanoseconds run past one second.
            (time.nanosecond() % 1_000_000_000) / 1_000
        );
        line.str("level", level);
        line.str("target", target);
        line.str("service", service);
        line
    }

    fn key(&mut self, key: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.0.push('"');
        let _ = Escaped(&mut self.0).write_str(key);
        self.0.push_str("\":");
    }

    /// `key` and a JSON string.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.display(key, value);
    }

    /// `key` and `value`'s text as a JSON string, escaped as it is written.
    pub(crate) fn display(&mut self, key: &str, value: impl fmt::Display) {
        self.key(key);
        self.0.push('"');
        let _ = write!(Escaped(&mut self.0), "{value}");
        self.0.push('"');
    }

    /// `key` and a value that is JSON already (a number, or an object made
    /// by `serde_json`).
    pub(crate) fn raw(&mut self, key: &str, json: impl fmt::Display) {
        self.key(key);
        let _ = write!(self.0, "{json}");
    }

    /// The line, closed and ended with a newline.
    pub(crate) fn finish(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

/// Writes text into a JSON string: quotes, backslashes and control
/// characters escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..at]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{byte:04x}");
            } else {
                self.0.push_str(escape);
            }
            plain = at + 1;
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

/// Writes an event's fields into its line, with their JSON types.
struct FieldWriter<'a> {
    line: &'a mut Line,
    message: bool,
}

impl FieldWriter<'_> {
    /// The key to write `field` under, or `None` to leave it out.
    fn name(&mut self, field: &Field) -> Option<&'static str> {
        let name = field.name();
        if name == "message" {
            self.message = true;
        }
        (!RESERVED.contains(&name)).then_some(name)
    }
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if let Some(name) = self.name(field) {
            if value.is_finite() {
                self.line.raw(name, value);
            } else {
                self.line.display(name, value);
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if let Some(name) = self.name(field) {
            self.line.raw(name, value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = self.name(field) {
            self.line.str(name, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if let Some(name) = self.name(field) {
            // The whole cause chain, once.
            self.line.display(name, Chain(value));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(name) = self.name(field) {
            self.line.display(name, format_args!("{value:?}"));
        }
    }
}

/// An error and its causes, `: `-separated.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Where a service's lines go, shared by its event lines and its span
/// records (which are written beside the events, not through them).
#[derive(Clone)]
pub(crate) struct LogWriter(Arc<BoxMakeWriter>);

impl LogWriter {
    pub(crate) fn new<W>(writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Self(Arc::new(BoxMakeWriter::new(writer)))
    }

    /// Writes one whole line at once, so lines of several threads never mix.
    pub(crate) fn write_line(&self, line: &str) {
        let _ = io::Write::write_all(&mut self.0.make_writer(), line.as_bytes());
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogWriter")
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Box<dyn io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::service;
    use serde_json::Value;

    #[test]
    fn log_line_inside_a_span_carries_trace_and_span_ids() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(user_id = 7, "outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::warn!(email_domain = "example.com", "inside");
        });

        // The event lines; the span's own record comes beside them.
        let lines: Vec<Value> = buffer
            .lines()
            .into_iter()
            .filter(|line| line["target"] != crate::records::TARGET)
            .collect();
        assert_eq!(lines.len(), 2);
        let outside = &lines[0];
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["level"], "INFO");
        assert_eq!(outside["service"], "unit");
        assert_eq!(outside["user_id"], 7);
        assert!(outside["timestamp"].as_str().unwrap().contains('T'));
        assert!(outside.get("trace_id").is_none());

        let inside = &lines[1];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["target"], module_path!());
        let trace_id = inside["trace_id"].as_str().expect("trace_id inside a span");
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "0".repeat(32));
        assert_eq!(inside["span_id"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn fields_keep_their_json_types_and_text_is_escaped() {
        let (dispatch, _guard, buffer) = service("unit", "info");
        let error = std::io::Error::other("disk \"full\"");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                ok = true,
                text = "a \"quote\", a \\ and\na newline\u{1}",
                shown = %"display",
                debugged = ?Some(1),
                error = &error as &dyn std::error::Error,
                service = "not the service",
                "hello \"world\""
            );
        });
        let lines = buffer.lines();
        let line = &lines[0];
        assert_eq!(line["message"], "hello \"world\"");
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["text"], "a \"quote\", a \\ and\na newline\u{1}");
        assert_eq!(line["shown"], "display");
        assert_eq!(line["debugged"], "Some(1)");
        assert_eq!(line["error"], "disk \"full\"");
        assert_eq!(line["service"], "unit", "a field never overwrites the line's own keys");
    }
}
