//! A span and a log event, as tracechain sees them whichever source they come
//! from (span records in the logs, or Jaeger's query API).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

/// A finished span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    /// `service.name` of the process that made it.
    pub service: String,
    /// Start, in microseconds since the Unix epoch.
    pub start_us: i64,
    pub duration_us: i64,
    pub status: Status,
    /// Why the span failed, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub links: Vec<Link>,
    /// Attribute values as text: strings as they are, numbers and booleans
    /// as JSON prints them (`201`, `true`).
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// End, in microseconds since the Unix epoch; the logs may say anything,
    /// so it saturates rather than overflows.
    pub fn end_us(&self) -> i64 {
        self.start_us.saturating_add(self.duration_us)
    }

    /// `name (service, kind, span_id)`, to name the span in a message.
    pub fn label(&self) -> String {
        format!(
            "`{}` ({}, {}, {})",
            self.name,
            self.service,
            self.kind.as_str(),
            self.span_id
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Kind {
    /// The OpenTelemetry name, as span records and Jaeger's `span.kind` write it.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "internal" => Self::Internal,
            "server" => Self::Server,
            "client" => Self::Client,
            "producer" => Self::Producer,
            "consumer" => Self::Consumer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unset,
    Ok,
    Error,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "unset" => Self::Unset,
            "ok" => Self::Ok,
            "error" => Self::Error,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "unset",
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// A span link: the span it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
}

/// A log event of a trace: a JSON log line that carries `trace_id`, or an
/// event Jaeger keeps on a span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEvent {
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
    pub level: String,
    pub target: String,
    pub message: String,
    pub service: String,
    pub trace_id: String,
    /// The span it was written in.
    pub span_id: Option<String>,
    /// The event's own fields, beside the standard ones.
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    /// The event on one line: `10:00:00.018391 INFO request finished
    /// status=201`. With `quote_values`, a value that is empty or holds
    /// white space is written quoted, so the line still splits into its
    /// fields.
    pub fn line(&self, quote_values: bool) -> String {
        let time = chrono::DateTime::from_timestamp_micros(self.timestamp_us)
            .map(|t| t.format("%H:%M:%S%.6f").to_string())
            .unwrap_or_default();
        let mut line = format!("{time} {} {}", self.level, self.message);
        for (key, value) in &self.fields {
            if quote_values && (value.contains(char::is_whitespace) || value.is_empty()) {
                let _ = write!(line, " {key}={value:?}");
            } else {
                let _ = write!(line, " {key}={value}");
            }
        }
        line
    }
}

/// A value as text: strings as they are, anything else as JSON prints it.
pub(crate) fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Lowercase hex of exactly `width` digits, left-padded with zeros (Jaeger
/// prints a 128-bit trace id whose high half is zero with 16 digits only).
pub(crate) fn hex_id(id: &str, width: usize) -> anyhow::Result<String> {
    anyhow::ensure!(
        !id.is_empty() && id.len() <= width && id.chars().all(|c| c.is_ascii_hexdigit()),
        "`{id}` is not an id of at most {width} hex digits"
    );
    Ok(format!("{:0>width$}", id.to_ascii_lowercase()))
}

/// A trace id given on the command line: 32 hex digits, or a whole
/// `traceparent` (`00-<trace id>-<span id>-01`, as the API answers).
pub fn parse_trace_id(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let id = match text.split('-').collect::<Vec<_>>().as_slice() {
        [_, id, _, _] => id.to_owned(),
        _ => text,
    };
    anyhow::ensure!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "`{text}` is neither a trace id (32 hex digits) nor a traceparent"
    );
    Ok(id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_taken_as_it_is_or_out_of_a_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(parse_trace_id(id).unwrap(), id);
        assert_eq!(parse_trace_id(&id.to_uppercase()).unwrap(), id);
        assert_eq!(parse_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")).unwrap(), id);
        assert!(parse_trace_id("4bf92f35").is_err());
        assert!(parse_trace_id("not-a-trace-id").is_err());
    }

    #[test]
    fn short_ids_are_padded() {
        assert_eq!(
            hex_id("A3CE929D0E0E4736", 32).unwrap(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(hex_id("xyz", 16).is_err());
    }
}
