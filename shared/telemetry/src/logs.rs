//! The JSON log line: one object per event, with the ids of the trace it
//! belongs to, so `grep <trace-id>` over every service's log tells a request's
//! whole story. Span records ([`crate::records`]) are lines of this format
//! too.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer, time::FormatTime as _},
    registry::LookupSpan,
};

/// Formats events as single-line JSON objects with `timestamp`, `level`,
/// `target`, `message`, `service`, the event's own fields and, inside a span,
/// `trace_id` and `span_id`.
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

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;

        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("service".into(), self.service.clone().into());

        let mut fields = FieldVisitor(Map::new());
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_else(|| Value::from(""));
        line.insert("message".into(), message);

        // A span record's `span` object arrives as JSON text (an event field
        // cannot hold an object); it is written as the object it is, spliced
        // in as it came rather than parsed and printed again.
        let mut span_object = None;
        if meta.target() == crate::records::TARGET {
            // A span record names its own span, not the one current where it
            // ended: its ids are its fields.
            if let Some(Value::String(text)) = fields.0.get("span")
                && text.starts_with('{')
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            {
                span_object = fields.0.remove("span");
            }
        } else {
            // The OpenTelemetry layer activates the span's context on entry.
            let context = opentelemetry::Context::current();
            let span = context.span();
            let span_context = span.span_context();
            if span_context.is_valid() {
                line.insert("trace_id".into(), span_context.trace_id().to_string().into());
                line.insert("span_id".into(), span_context.span_id().to_string().into());
            }
        }
        for (key, value) in fields.0 {
            line.entry(key).or_insert(value);
        }

        let mut json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        if let Some(Value::String(object)) = span_object {
            json.pop(); // the closing brace
            json.push_str(",\"span\":");
            json.push_str(&object);
            json.push('}');
        }
        writeln!(writer, "{json}")
    }
}

struct FieldVisitor(Map<String, Value>);

impl tracing::field::Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole cause chain, once.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.0.insert(field.name().into(), text.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Buffer;

    #[test]
    fn log_line_inside_a_span_carries_trace_and_span_ids() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let config = crate::TelemetryConfig::new("unit", None);
        let (dispatch, _guard) = crate::build(&config, move || writer.clone()).unwrap();
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
}
