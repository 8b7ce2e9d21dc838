//! The tree as JSON (`--json`): the trace's figures and gaps, and its spans
//! nested under `children`, each with its events and whether it is on the
//! critical path.
//!
//! ```json
//! {"trace_id": "...", "complete": true, "spans": 7, "services": ["api", "user", "consumer"],
//!  "start": "2026-11-25T10:00:00.000049Z", "duration_us": 19000, "gaps": [],
//!  "roots": [{"span_id": "...", "parent_span_id": null, "service": "api", "name": "POST /v1/users",
//!             "kind": "server", "start": "...", "duration_us": 18000, "status": "unset",
//!             "critical": true, "attributes": {...}, "links": [], "events": [...], "children": [...]}],
//!  "loose_events": []}
//! ```

use serde_json::{Value, json};

use crate::{
    span::LogEvent,
    tree::{Node, Tree},
};

pub fn render(tree: &Tree) -> Value {
    json!({
        "trace_id": tree.trace_id,
        "complete": tree.is_complete(),
        "spans": tree.nodes.len(),
        "services": tree.services(),
        "start": rfc3339(tree.start_us()),
        "duration_us": tree.duration_us(),
        "gaps": tree.gaps,
        "roots": tree.roots.iter().map(|&root| node(tree, root, &mut vec![false; tree.nodes.len()])).collect::<Vec<_>>(),
        "loose_events": tree.loose_events.iter().map(event).collect::<Vec<_>>(),
    })
}

fn node(tree: &Tree, index: usize, seen: &mut [bool]) -> Value {
    seen[index] = true;
    let Node {
        span,
        children,
        events,
        critical,
        ..
    } = &tree.nodes[index];
    // `seen` keeps a parent loop from recurring forever.
    let mut nested = Vec::with_capacity(children.len());
    for &child in children {
        if !seen[child] {
            nested.push(node(tree, child, seen));
        }
    }
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
        "children": nested,
    })
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
    use crate::fixtures::{registration, tree_of};

    #[test]
    fn spans_nest_under_children_with_the_critical_path_marked() {
        let json = render(&tree_of(registration()));
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
}
