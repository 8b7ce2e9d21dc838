//! Spans as the tests see them, whichever way they were collected (the
//! in-process OTLP receiver, or Jaeger's query API), and a trace's tree to
//! check parents on and to draw in a failure message.

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
    /// When it started and ended, in microseconds since the Unix epoch.
    pub start_us: i64,
    pub end_us: i64,
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

/// The spans of a trace, with the lookups and checks tests make on them.
pub struct Trace<'a>(pub &'a [SpanRecord]);

impl<'a> Trace<'a> {
    /// The one span named `name` that `service` emitted with `kind`; panics
    /// with the whole trace drawn when there is none.
    pub fn span(&self, service: &str, name: &str, kind: SpanKind) -> &'a SpanRecord {
        self.0
            .iter()
            .find(|span| span.service == service && span.name == name && span.kind == kind)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} span `{name}` from `{service}` in the trace:\n{}",
                    self.draw()
                )
            })
    }

    /// Panics unless `child`'s parent is `parent`.
    pub fn assert_parent(&self, child: &SpanRecord, parent: &SpanRecord) {
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(parent.span_id.as_str()),
            "`{}` ({}) should be a child of `{}` ({}); the trace:\n{}",
            child.name,
            child.service,
            parent.name,
            parent.service,
            self.draw()
        );
    }

    /// The trace as an indented tree, for failure messages.
    pub fn draw(&self) -> String {
        fn walk(spans: &[SpanRecord], parent: Option<&str>, depth: usize, out: &mut String) {
            for span in spans.iter().filter(|s| s.parent_span_id.as_deref() == parent) {
                out.push_str(&format!(
                    "{}{} {} [{:?}] {}\n",
                    "  ".repeat(depth),
                    span.service,
                    span.name,
                    span.kind,
                    span.span_id
                ));
                walk(spans, Some(&span.span_id), depth + 1, out);
            }
        }
        let mut out = String::new();
        let ids: Vec<&str> = self.0.iter().map(|s| s.span_id.as_str()).collect();
        // Roots, and spans whose parent is not (yet) in the trace.
        for span in self
            .0
            .iter()
            .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(&p)))
        {
            out.push_str(&format!(
                "{} {} [{:?}] {}\n",
                span.service, span.name, span.kind, span.span_id
            ));
            walk(self.0, Some(&span.span_id), 1, &mut out);
        }
        out
    }
}
