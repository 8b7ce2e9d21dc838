//! A trace as a tree: each span under its parent, its log events under it,
//! and the critical path marked.
//!
//! The critical path is the chain of spans from the root to the leaf that
//! ended last: what the whole chain waited on, through every hop (the
//! consumer's write, for a registration, ends after the API has answered).

use std::collections::{HashMap, HashSet};

use crate::{
    gap::Gap,
    span::{LogEvent, Span},
};

/// One trace's spans, arranged; see the module docs.
#[derive(Debug, Clone)]
pub struct Tree {
    pub trace_id: String,
    pub nodes: Vec<Node>,
    /// The root first, then any span whose parent never appears, by start.
    pub roots: Vec<usize>,
    /// Events of spans that are not in the trace.
    pub loose_events: Vec<LogEvent>,
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub span: Span,
    /// By start.
    pub children: Vec<usize>,
    /// By time.
    pub events: Vec<LogEvent>,
    /// Its parent's node; `None` for a root.
    pub parent: Option<usize>,
    pub critical: bool,
}

/// A node met walking the tree depth first.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    pub node: usize,
    /// 0 for a root.
    pub depth: usize,
}

impl Tree {
    /// Arranges `spans` (all of one trace) and their `events`.
    pub fn build(trace_id: &str, mut spans: Vec<Span>, mut events: Vec<LogEvent>, gaps: Vec<Gap>) -> Self {
        spans.sort_by(|a, b| (a.start_us, &a.name, &a.span_id).cmp(&(b.start_us, &b.name, &b.span_id)));
        events.sort_by_key(|event| event.timestamp_us);
        let index: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, span)| (span.span_id.as_str(), i))
            .collect();
        let parent_of: Vec<Option<usize>> = spans
            .iter()
            .map(|span| span.parent_span_id.as_deref().and_then(|p| index.get(p).copied()))
            .collect();

        let mut nodes: Vec<Node> = Vec::with_capacity(spans.len());
        let mut loose_events = Vec::new();
        let mut events_of: Vec<Vec<LogEvent>> = vec![Vec::new(); spans.len()];
        for event in events {
            match event.span_id.as_deref().and_then(|id| index.get(id)) {
                Some(&i) => events_of[i].push(event),
                None => loose_events.push(event),
            }
        }
        for (span, events) in spans.iter().zip(events_of) {
            nodes.push(Node {
                span: span.clone(),
                children: Vec::new(),
                events,
                parent: None,
                critical: false,
            });
        }
        let mut roots = Vec::new();
        for (i, parent) in parent_of.iter().enumerate() {
            match parent {
                Some(parent) => {
                    nodes[*parent].children.push(i);
                    nodes[i].parent = Some(*parent);
                }
                None => roots.push(i),
            }
        }
        // Spans in a parent loop hang from no root: show them as roots.
        let mut reached = vec![false; nodes.len()];
        let mut stack = roots.clone();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reached[i], true) {
                stack.extend(&nodes[i].children);
            }
        }
        for i in (0..nodes.len()).filter(|&i| !reached[i]) {
            nodes[i].parent = None;
            roots.push(i);
        }
        // A span with no parent at all is the root; it goes first.
        roots.sort_by_key(|&i| (nodes[i].span.parent_span_id.is_some(), nodes[i].span.start_us));

        let mut tree = Self {
            trace_id: trace_id.to_owned(),
            nodes,
            roots,
            loose_events,
            gaps,
        };
        tree.mark_critical_path();
        tree
    }

    fn mark_critical_path(&mut self) {
        let Some(&root) = self.roots.first() else {
            return;
        };
        // The leaf under the root that ended last.
        let mut last: Option<usize> = None;
        let mut stack = vec![root];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let node = &self.nodes[i];
            let later = last.is_none_or(|last| node.span.end_us() > self.nodes[last].span.end_us());
            if node.children.is_empty() && later {
                last = Some(i);
            }
            stack.extend(&node.children);
        }
        let mut at = last;
        while let Some(i) = at {
            if std::mem::replace(&mut self.nodes[i].critical, true) {
                break;
            }
            at = if i == root { None } else { self.nodes[i].parent };
        }
    }

    pub fn is_complete(&self) -> bool {
        self.gaps.is_empty()
    }

    /// The earliest start of a span, in µs since the Unix epoch.
    pub fn start_us(&self) -> i64 {
        self.nodes.iter().map(|n| n.span.start_us).min().unwrap_or_default()
    }

    /// The latest end of a span.
    pub fn end_us(&self) -> i64 {
        self.nodes.iter().map(|n| n.span.end_us()).max().unwrap_or_default()
    }

    /// From the earliest start to the latest end (saturating, as
    /// [`Span::end_us`]).
    pub fn duration_us(&self) -> i64 {
        self.end_us().saturating_sub(self.start_us())
    }

    /// The services of the trace, in the order their first span started.
    pub fn services(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.nodes
            .iter()
            .map(|node| node.span.service.as_str())
            .filter(|service| seen.insert(*service))
            .collect()
    }

    /// Every node, depth first, children by start.
    pub fn walk(&self) -> Vec<Visit> {
        let mut visits = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<Visit> = self.roots.iter().rev().map(|&node| Visit { node, depth: 0 }).collect();
        let mut seen = vec![false; self.nodes.len()];
        while let Some(visit) = stack.pop() {
            if std::mem::replace(&mut seen[visit.node], true) {
                continue;
            }
            visits.push(visit);
            stack.extend(self.nodes[visit.node].children.iter().rev().map(|&node| Visit {
                node,
                depth: visit.depth + 1,
            }));
        }
        visits
    }

    /// Whether `node` is the last child of its parent (or the last root).
    pub fn is_last_sibling(&self, node: usize) -> bool {
        let siblings = match self.parent(node) {
            Some(parent) => &self.nodes[parent].children,
            None => &self.roots,
        };
        siblings.last() == Some(&node)
    }

    /// The node's parent in the tree, if it is in the trace.
    pub fn parent(&self, node: usize) -> Option<usize> {
        self.nodes[node].parent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{TRACE, chain, registration, tree_of};

    fn tree(spans: Vec<Span>) -> Tree {
        Tree::build(TRACE, spans, Vec::new(), Vec::new())
    }

    fn names(tree: &Tree) -> Vec<(usize, &str, &str)> {
        tree.walk()
            .iter()
            .map(|v| {
                let span = &tree.nodes[v.node].span;
                (v.depth, span.service.as_str(), span.name.as_str())
            })
            .collect()
    }

    #[test]
    fn spans_hang_under_their_parents_by_start() {
        let mut spans = registration();
        spans.reverse();
        let tree = tree(spans);
        assert_eq!(
            names(&tree),
            [
                (0, "api", "POST /v1/users"),
                (1, "api", "user.v1.UserService/CreateUser"),
                (2, "user", "user.v1.UserService/CreateUser"),
                (3, "user", "INSERT users"),
                (1, "api", "send user-events"),
                (2, "consumer", "process user-events"),
                (3, "consumer", "INSERT user_events"),
            ]
        );
        assert_eq!(tree.services(), ["api", "user", "consumer"]);
        assert_eq!(tree.end_us() - tree.start_us(), 19_400);
    }

    #[test]
    fn the_critical_path_leads_to_the_leaf_that_ended_last() {
        let tree = tree(registration());
        let critical: Vec<&str> = tree
            .walk()
            .iter()
            .map(|v| &tree.nodes[v.node])
            .filter(|n| n.critical)
            .map(|n| n.span.name.as_str())
            .collect();
        assert_eq!(
            critical,
            [
                "POST /v1/users",
                "send user-events",
                "process user-events",
                "INSERT user_events"
            ]
        );
    }

    #[test]
    fn the_critical_path_stays_in_the_request_when_the_consumer_was_quick() {
        let mut spans = registration();
        spans[0].duration_us = 40_000;
        spans[1].duration_us = 38_000;
        spans[2].duration_us = 37_000;
        spans[3].duration_us = 36_000;
        let tree = tree(spans);
        let critical: Vec<&str> = tree
            .nodes
            .iter()
            .filter(|n| n.critical)
            .map(|n| n.span.service.as_str())
            .collect();
        assert_eq!(critical, ["api", "api", "user", "user"]);
    }

    #[test]
    fn a_span_whose_parent_is_missing_becomes_a_root_after_the_root() {
        let mut spans = registration();
        spans.remove(2);
        let tree = tree(spans);
        assert_eq!(tree.roots.len(), 2);
        assert_eq!(tree.nodes[tree.roots[0]].span.name, "POST /v1/users");
        assert_eq!(tree.nodes[tree.roots[1]].span.name, "INSERT users");
    }

    #[test]
    fn events_go_under_their_span_and_the_rest_aside() {
        let event = |span: Option<&str>, at: i64| LogEvent {
            timestamp_us: at,
            level: "INFO".into(),
            target: "t".into(),
            message: format!("at {at}"),
            service: "api".into(),
            trace_id: TRACE.into(),
            span_id: span.map(str::to_owned),
            fields: Default::default(),
        };
        let root = registration()[0].span_id.clone();
        let tree = Tree::build(
            TRACE,
            registration(),
            vec![event(Some(&root), 2), event(Some(&root), 1), event(None, 3)],
            Vec::new(),
        );
        let root = &tree.nodes[tree.roots[0]];
        let messages: Vec<&str> = root.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["at 1", "at 2"]);
        assert_eq!(tree.loose_events.len(), 1);
    }

    #[test]
    fn a_duration_past_the_end_of_time_saturates_instead_of_overflowing() {
        // What hostile logs may hold: `"duration_us": 9223372036854775807`,
        // and (from Jaeger, whose times are any i64) a start at the far end.
        let mut spans = registration();
        spans[6].duration_us = i64::MAX;
        spans[3].start_us = i64::MIN;
        spans[3].duration_us = i64::MIN;
        let tree = tree_of(spans);
        assert_eq!((tree.start_us(), tree.end_us()), (i64::MIN, i64::MAX));
        let text = crate::text::render(&tree);
        assert!(text.contains("INSERT user_events"), "{text}");
        let json = crate::json::render(&tree);
        assert!(json.contains(&i64::MAX.to_string()), "{json}");
        assert!(crate::html::render(&tree).contains("INSERT user_events"));
    }

    #[test]
    fn a_trace_with_a_service_per_span_lists_each_once() {
        let count = 200_000;
        let mut spans = chain(count);
        for (i, span) in spans.iter_mut().enumerate() {
            span.service = format!("service-{i}");
        }
        let tree = tree_of(spans);
        let services = tree.services();
        assert_eq!((services.len(), services[count - 1]), (count, "service-199999"));
        // The page colours each row by its service, looked up as often.
        let page = crate::html::render(&tree);
        assert_eq!(page.matches("class=\"span-row").count(), count);
    }
}
