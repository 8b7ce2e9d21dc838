//! tracechain: a request's call chain rebuilt from the services' JSON logs
//! alone (or from Jaeger), with its gaps named.
//!
//! - [`logs`]: reading span records and event lines from files, folders
//!   or stdin.
//! - [`jaeger`]: the same spans and events from Jaeger's query API.
//! - [`span`]: a span and a log event, whichever the source.
//! - [`gap`]: what breaks a chain: a gap, and which rule it breaks.
//! - [`traces`]: the traces of a set of spans, and the rules a whole chain
//!   keeps (its gaps otherwise), one function per rule.
//! - [`tree`]: one trace as a tree, events under their spans, the critical
//!   path marked.
//! - [`text`], [`json`], [`html`]: the tree printed, as data, or as a
//!   self-contained waterfall page.
//!
//! `src/main.rs` is the command line over these. The unit tests share the
//! spans of `fixtures`; Jaeger's answer they read is a file under
//! `tests/fixtures`.

#[cfg(test)]
mod fixtures;
pub mod gap;
pub mod html;
pub mod jaeger;
pub mod json;
pub mod logs;
pub mod span;
pub mod text;
pub mod traces;
pub mod tree;

pub use gap::{Gap, GapKind};
pub use logs::{Input, Logs};
pub use span::{Kind, LogEvent, Span, Status, parse_trace_id};
pub use traces::{Summary, Traces};
pub use tree::Tree;
