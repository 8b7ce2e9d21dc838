//! The tree as JSON (`--json`): the trace's figures and gaps, and its spans
//! nested under `children`, each with its events and whether it is on the
//! critical path. The nested spans come last in each object.
//!
//! ```json
//! {"complete": true, "duration_us": 19000, "gaps": [], "loose_events": [], "services": ["api", "user", "consumer"],
//!  "spans": 7, "start": "2026-11-25T10:00:00.000049Z", "trace_id": "...",
//!  "roots": [{"attributes": {...}, "critical": true, "duration_us": 18000, "events": [...], "kind": "server",
//!             "links": [], "name": "POST /v1/users", "parent_span_id": null, "service": "api", "span_id": "...",
//!             "start": "...", "status": "unset", "status_message": null, "children": [...]}]}
//! ```

use std::io::{self, Write};

use serde::{Serialize, Serializer as _};
use serde_json::{Map, Value, json, ser::Formatter};

use crate::{
    span::LogEvent,
    tree::{Node, Tree},
};

/// How many levels of nesting are indented (two spaces each, as
/// `serde_json`'s pretty printer does): a span takes two (its object and
/// its `children`). Deeper lines keep this indent, so the output grows with
/// the number of spans, not with their depth squared.
const INDENTED_LEVELS: usize = 32;

/// The tree as pretty-printed JSON; see the module docs.
pub fn render(tree: &Tree) -> String {
    let mut out = Vec::new();
    write(tree, &mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes [`render`]'s JSON to `out` as it goes. The spans are nested by
/// walking the tree with a stack of their own, never by recursion: a chain
/// however deep takes no more of the thread's stack than a short one.
pub fn write(tree: &Tree, out: &mut impl Write) -> io::Result<()> {
    let mut writer = Writer {
        out,
        indent: Indent::default(),
    };
    let head = json!({
        "trace_id": tree.trace_id,
        "complete": tree.is_complete(),
        "spans": tree.nodes.len(),
        "services": tree.services(),
        "start": rfc3339(tree.start_us()),
        "duration_us": tree.duration_us(),
        "gaps": tree.gaps,
        "loose_events": tree.loose_events.iter().map(event).collect::<Vec<_>>(),
    });
    writer.begin_object()?;
    writer.fields(&head, true)?;
    writer.key("roots", false)?;
    writer.spans(tree)?;
    writer.end_value()?;
    writer.end_object()
}

/// A span's own fields; its `children` are written after them.
fn fields(node: &Node) -> Value {
    let Node {
        span, events, critical, ..
    } = node;
    json!({
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "service": span.service,
        "name": span.name,
        "kind": span.kind,
        "start": rfc3339(span.start_us),
        "duration_us": span.duration_us,
        "status": span.status,
        "status_message": span.status_message,
        "critical": critical,
        "attributes": span.attributes,
        "links": span.links,
        "events": events.iter().map(event).collect::<Vec<_>>(),
    })
}

/// Where the JSON goes, and how deep it is.
struct Writer<'a, W> {
    out: &'a mut W,
    indent: Indent,
}

impl<W: Write> Writer<'_, W> {
    /// Every root and the spans under it, as an array of nested objects.
    fn spans(&mut self, tree: &Tree) -> io::Result<()> {
        // `seen` keeps a parent loop from going round forever, and writes
        // each span once, as the text's walk does.
        let mut seen = vec![false; tree.nodes.len()];
        // One frame per open array: the spans left for it, and whether one
        // was written.
        let mut stack = vec![(tree.roots.iter(), false)];
        Pretty(&mut self.indent).begin_array(self.out)?;
        while let Some((left, wrote)) = stack.last_mut() {
            let next = left.find(|&&node| !seen[node]).copied();
            let first = !std::mem::replace(wrote, next.is_some() || *wrote);
            match next {
                Some(node) => {
                    seen[node] = true;
                    Pretty(&mut self.indent).begin_array_value(self.out, first)?;
                    self.begin_object()?;
                    self.fields(&fields(&tree.nodes[node]), true)?;
                    self.key("children", false)?;
                    Pretty(&mut self.indent).begin_array(self.out)?;
                    stack.push((tree.nodes[node].children.iter(), false));
                }
                None => {
                    stack.pop();
                    Pretty(&mut self.indent).end_array(self.out)?;
                    if !stack.is_empty() {
                        // The span whose children these were is done.
                        self.end_value()?;
                        self.end_object()?;
                        Pretty(&mut self.indent).end_array_value(self.out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries of `object` (a flat one: its values nest a few levels at
    /// most), as fields of the object being written.
    fn fields(&mut self, object: &Value, mut first: bool) -> io::Result<()> {
        let empty = Map::new();
        for (key, value) in object.as_object().unwrap_or(&empty) {
            self.key(key, first)?;
            value.serialize(&mut self.serializer())?;
            self.end_value()?;
            first = false;
        }
        Ok(())
    }

    fn key(&mut self, key: &str, first: bool) -> io::Result<()> {
        Pretty(&mut self.indent).begin_object_key(self.out, first)?;
        self.serializer().serialize_str(key)?;
        Pretty(&mut self.indent).end_object_key(self.out)?;
        Pretty(&mut self.indent).begin_object_value(self.out)
    }

    fn end_value(&mut self) -> io::Result<()> {
        Pretty(&mut self.indent).end_object_value(self.out)
    }

    fn begin_object(&mut self) -> io::Result<()> {
        Pretty(&mut self.indent).begin_object(self.out)
    }

    fn end_object(&mut self) -> io::Result<()> {
        Pretty(&mut self.indent).end_object(self.out)
    }

    fn serializer(&mut self) -> serde_json::Serializer<&mut W, Pretty<'_>> {
        serde_json::Serializer::with_formatter(&mut *self.out, Pretty(&mut self.indent))
    }
}

/// The state of [`Pretty`], kept between the values written.
#[derive(Default)]
struct Indent {
    level: usize,
    has_value: bool,
}

/// `serde_json`'s pretty format, its indent at most [`INDENTED_LEVELS`].
struct Pretty<'a>(&'a mut Indent);

impl Pretty<'_> {
    fn indent<W: ?Sized + Write>(&self, out: &mut W) -> io::Result<()> {
        const SPACES: [u8; 2 * INDENTED_LEVELS] = [b' '; 2 * INDENTED_LEVELS];
        out.write_all(&SPACES[..2 * self.0.level.min(INDENTED_LEVELS)])
    }

    fn open<W: ?Sized + Write>(&mut self, out: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.0.level += 1;
        self.0.has_value = false;
        out.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, out: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.0.level -= 1;
        if self.0.has_value {
            out.write_all(b"\n")?;
            self.indent(out)?;
        }
        out.write_all(bracket)
    }

    fn item<W: ?Sized + Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        self.indent(out)
    }
}

impl Formatter for Pretty<'_> {
    fn begin_array<W: ?Sized + Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.open(out, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.close(out, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        self.item(out, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _out: &mut W) -> io::Result<()> {
        self.0.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.open(out, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, out: &mut W) -> io::Result<()> {
        self.close(out, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, out: &mut W, first: bool) -> io::Result<()> {
        self.item(out, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, out: &mut W) -> io::Result<()> {
        out.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _out: &mut W) -> io::Result<()> {
        self.0.has_value = true;
        Ok(())
    }
}

fn event(event: &LogEvent) -> Value {
    json!({
        "timestamp": rfc3339(event.timestamp_us),
        "level": event.level,
        "target": event.target,
        "service": event.service,
        "span_id": event.span_id,
        "message": event.message,
        "fields": event.fields,
    })
}

pub(crate) fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{chain, registration, tree_of};

    #[test]
    fn spans_nest_under_children_with_the_critical_path_marked() {
        let json: Value = serde_json::from_str(&render(&tree_of(registration()))).unwrap();
        assert_eq!(json["complete"], true);
        assert_eq!(json["spans"], 7);
        assert_eq!(json["services"], json!(["api", "user", "consumer"]));
        let root = &json["roots"][0];
        assert_eq!(root["name"], "POST /v1/users");
        assert_eq!(root["critical"], true);
        assert_eq!(root["start"], "2026-11-25T10:00:00.000000Z");
        let send = &root["children"][1];
        assert_eq!(
            (send["kind"].as_str(), send["critical"].as_bool()),
            (Some("producer"), Some(true))
        );
        assert_eq!(send["children"][0]["children"][0]["name"], "INSERT user_events");
        assert_eq!(root["children"][0]["critical"], false);
    }

    #[test]
    fn a_chain_fifty_thousand_spans_deep_renders_in_linear_size_without_recursing() {
        let depth = 50_000;
        let json = render(&tree_of(chain(depth)));
        assert_eq!(json.matches("\"span_id\"").count(), depth);
        assert!(json.len() <= 2_000 * depth, "{} bytes for {depth} spans", json.len());
    }
}
