//! Spans as the tests see them, whichever way they were collected (the
//! in-process OTLP receiver, or Jaeger's query API), and the checks on them.

use std::collections::BTreeMap;

/// A finished span, reduced to what the tests assert on.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// `service.name` of the process that emitted it.
    pub service: String,
    /// Attributes, their values rendered as strings (`200`, `true`, `grpc`).
    pub attributes: BTreeMap<String, String>,
    /// Span ids this span links to.
    pub links: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}
