//! The traces in a set of spans, and the checks that tell a whole call chain
//! from one with a gap.
//!
//! A trace is complete when none of these rules finds a gap:
//!
//! 1. **One root.** Exactly one span of the trace has no parent among the
//!    trace's spans: its root. That is a span with no parent, or, when the
//!    trace was continued from a caller outside the logs (an incoming
//!    `traceparent`), the one span whose parent is the caller's. Any other
//!    span whose parent never appears is a gap (`missing_parent`), and so is
//!    a second span without a parent (`extra_root`).
//! 2. **Every message is consumed.** A `producer` span needs a `consumer`
//!    span whose parent or link is it (`no_consumer`).
//! 3. **Every call of ours is answered.** A `client` span with
//!    `rpc.system=grpc` calls one of our services (the others are reached
//!    over HTTP or SQL, whose servers leave no span of ours), so it needs a
//!    `server` span under it (`no_server`). A call that never reached its
//!    server (the service was down) is such a gap too: the chain did end
//!    there, unless the call was retried: an attempt followed by its retry
//!    (the same call under the same parent, whose `rpc.grpc.retry.attempt`
//!    is one more) needs no server span, since the chain went on through the
//!    retry, which is held to the rule in its stead.
//! 4. **One trace id.** A span whose parent is a span of this trace, or a
//!    consumer or server span that rule 2 or 3 looks for, must carry this
//!    trace's id; found under another one it is a gap (`other_trace`): the
//!    context was lost on the way.
//! 5. **No loop.** Parents never lead back to a span itself (`parent_loop`;
//!    only corrupted ids do that).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::{
    logs::Logs,
    span::{Kind, LogEvent, Span},
    tree::Tree,
};

/// The attribute a gRPC client span carries when it is a retry: its number,
/// 1 for the first.
const RETRY_ATTEMPT: &str = "rpc.grpc.retry.attempt";

/// Whether the gRPC call `span` was retried: a span of the same call under
/// the same parent is its next attempt.
fn retried(span: &Span, spans: &[&Span]) -> bool {
    let attempt = |span: &Span| span.attribute(RETRY_ATTEMPT).and_then(|n| n.parse::<u32>().ok());
    let next = attempt(span).unwrap_or(0) + 1;
    spans.iter().any(|other| {
        other.kind == Kind::Client
            && other.name == span.name
            && other.parent_span_id == span.parent_span_id
            && attempt(other) == Some(next)
    })
}

/// What breaks a call chain; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    MissingParent,
    ExtraRoot,
    NoConsumer,
    NoServer,
    OtherTrace,
    ParentLoop,
}

/// One gap of a trace: which rule, the span it is found at, and a sentence
/// that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub kind: GapKind,
    pub span_id: String,
    pub message: String,
}

/// Every trace of a set of spans, indexed for the checks.
pub struct Traces {
    spans: Vec<Span>,
    events: Vec<LogEvent>,
    /// Trace id to the indices of its spans.
    by_trace: BTreeMap<String, Vec<usize>>,
    /// Span id to the spans whose parent or link it is.
    referrers: HashMap<String, Vec<usize>>,
}

/// The result of checking every trace.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub traces: usize,
    pub complete: usize,
    /// Spans whose parent never appears (rule 1).
    pub orphan_spans: usize,
    /// The traces with a gap, and their gaps.
    pub incomplete: Vec<Incomplete>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incomplete {
    pub trace_id: String,
    pub gaps: Vec<Gap>,
}

impl Traces {
    pub fn new(logs: Logs) -> Self {
        let mut by_trace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut referrers: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, span) in logs.spans.iter().enumerate() {
            by_trace.entry(span.trace_id.clone()).or_default().push(index);
            let mut pointed: Vec<&str> = span.links.iter().map(|link| link.span_id.as_str()).collect();
            pointed.extend(span.parent_span_id.as_deref());
            pointed.sort_unstable();
            pointed.dedup();
            for id in pointed {
                referrers.entry(id.to_owned()).or_default().push(index);
            }
        }
        Self {
            spans: logs.spans,
            events: logs.events,
            by_trace,
            referrers,
        }
    }

    /// The ids of every trace with at least one span.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_trace.keys().map(String::as_str)
    }

    /// The trace that began last (by its earliest span).
    pub fn newest(&self) -> Option<&str> {
        self.by_trace
            .iter()
            .max_by_key(|(_, spans)| spans.iter().map(|&i| self.spans[i].start_us).min())
            .map(|(id, _)| id.as_str())
    }

    /// The spans of `trace_id`, in the order read.
    pub fn spans_of(&self, trace_id: &str) -> Vec<&Span> {
        self.by_trace
            .get(trace_id)
            .map(|spans| spans.iter().map(|&i| &self.spans[i]).collect())
            .unwrap_or_default()
    }

    /// The trace's tree, its events under their spans; `None` when no span
    /// of it was found.
    pub fn tree(&self, trace_id: &str) -> Option<Tree> {
        let spans: Vec<Span> = self.spans_of(trace_id).into_iter().cloned().collect();
        if spans.is_empty() {
            return None;
        }
        let events = self
            .events
            .iter()
            .filter(|event| event.trace_id == trace_id)
            .cloned()
            .collect();
        Some(Tree::build(trace_id, spans, events, self.gaps(trace_id)))
    }

    /// The gaps of one trace; see the module docs for the rules.
    pub fn gaps(&self, trace_id: &str) -> Vec<Gap> {
        let spans = self.spans_of(trace_id);
        let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
        let mut gaps = Vec::new();

        // 1. One root.
        let mut roots: Vec<&Span> = spans.iter().copied().filter(|s| s.parent_span_id.is_none()).collect();
        roots.sort_by_key(|span| span.start_us);
        let orphans: Vec<&Span> = spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id.as_deref().is_some_and(|parent| !ids.contains(parent)))
            .collect();
        let continued = roots.is_empty() && orphans.len() == 1;
        if !continued {
            for span in &orphans {
                gaps.push(Gap {
                    kind: GapKind::MissingParent,
                    span_id: span.span_id.clone(),
                    message: format!(
                        "missing parent: {} names parent {}, which never appears",
                        span.label(),
                        span.parent_span_id.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        for span in roots.iter().skip(1) {
            gaps.push(Gap {
                kind: GapKind::ExtraRoot,
                span_id: span.span_id.clone(),
                message: format!(
                    "second root: {} has no parent, beside the root {}",
                    span.label(),
                    roots[0].label()
                ),
            });
        }

        // 2 and 3. Every message consumed, every call of ours answered.
        for span in &spans {
            let (wanted, name, caller, kind) = match span.kind {
                Kind::Producer => (Kind::Consumer, "consumer", "producer", GapKind::NoConsumer),
                Kind::Client if span.attribute("rpc.system") == Some("grpc") => {
                    if retried(span, &spans) {
                        continue;
                    }
                    (Kind::Server, "server", "gRPC client", GapKind::NoServer)
                }
                _ => continue,
            };
            let found: Vec<&Span> = self
                .referrers_of(&span.span_id)
                .filter(|other| other.kind == wanted)
                // A server answers the call it is a child of; a consumer may
                // only link to its producer.
                .filter(|other| wanted == Kind::Consumer || other.parent_span_id.as_deref() == Some(&span.span_id))
                .collect();
            if found.iter().any(|other| other.trace_id == trace_id) {
                continue;
            }
            match found.first() {
                Some(elsewhere) => gaps.push(Gap {
                    kind: GapKind::OtherTrace,
                    span_id: elsewhere.span_id.clone(),
                    message: format!(
                        "span of another trace: the {name} span of {caller} {} is {}, of trace {}",
                        span.label(),
                        elsewhere.label(),
                        elsewhere.trace_id
                    ),
                }),
                None => gaps.push(Gap {
                    kind,
                    span_id: span.span_id.clone(),
                    message: match wanted {
                        Kind::Consumer => format!(
                            "chain ends early: {caller} {} has no consumer span (none has it as parent or link)",
                            span.label()
                        ),
                        _ => format!(
                            "chain ends early: {caller} {} has no server span under it",
                            span.label()
                        ),
                    },
                }),
            }
        }

        // 4. One trace id: children found under another trace.
        for span in &spans {
            for other in self.referrers_of(&span.span_id) {
                let child = other.parent_span_id.as_deref() == Some(&span.span_id);
                let reported = gaps.iter().any(|gap| gap.span_id == other.span_id);
                if child && other.trace_id != trace_id && !reported {
                    gaps.push(Gap {
                        kind: GapKind::OtherTrace,
                        span_id: other.span_id.clone(),
                        message: format!(
                            "span of another trace: {} is a child of {} but carries trace id {}",
                            other.label(),
                            span.label(),
                            other.trace_id
                        ),
                    });
                }
            }
        }

        // 5. No loop: every span is reached from a root or an orphan.
        let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
        for span in &spans {
            if let Some(parent) = span.parent_span_id.as_deref() {
                children.entry(parent).or_default().push(span);
            }
        }
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&Span> = roots.iter().chain(&orphans).copied().collect();
        while let Some(span) = stack.pop() {
            if reached.insert(&span.span_id) {
                stack.extend(children.get(span.span_id.as_str()).into_iter().flatten());
            }
        }
        for span in spans.iter().filter(|span| !reached.contains(span.span_id.as_str())) {
            gaps.push(Gap {
                kind: GapKind::ParentLoop,
                span_id: span.span_id.clone(),
                message: format!(
                    "parent loop: following the parents of {} leads back to it",
                    span.label()
                ),
            });
        }
        gaps
    }

    /// Checks every trace.
    pub fn check_all(&self) -> Summary {
        let mut summary = Summary {
            traces: 0,
            complete: 0,
            orphan_spans: 0,
            incomplete: Vec::new(),
        };
        for trace_id in self.ids() {
            summary.traces += 1;
            let gaps = self.gaps(trace_id);
            summary.orphan_spans += gaps.iter().filter(|gap| gap.kind == GapKind::MissingParent).count();
            if gaps.is_empty() {
                summary.complete += 1;
            } else {
                summary.incomplete.push(Incomplete {
                    trace_id: trace_id.to_owned(),
                    gaps,
                });
            }
        }
        summary
    }

    fn referrers_of(&self, span_id: &str) -> impl Iterator<Item = &Span> {
        self.referrers
            .get(span_id)
            .into_iter()
            .flatten()
            .map(|&index| &self.spans[index])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::span::{Link, Status};

    pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    pub(crate) fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        kind: Kind,
        start: i64,
        duration: i64,
    ) -> Span {
        Span {
            trace_id: TRACE.to_owned(),
            span_id: format!("{id:0>16}"),
            parent_span_id: parent.map(|p| format!("{p:0>16}")),
            name: name.to_owned(),
            kind,
            service: service.to_owned(),
            start_us: 1_795_600_800_000_000 + start,
            duration_us: duration,
            status: Status::Unset,
            status_message: None,
            links: Vec::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// The tree of [`TRACE`] in logs that hold these spans.
    pub(crate) fn tree_of(spans: Vec<Span>) -> Tree {
        Traces::new(Logs {
            spans,
            ..Logs::default()
        })
        .tree(TRACE)
        .unwrap()
    }

    /// ARCHITECTURE.md's registration chain, with made-up ids and times (µs).
    pub(crate) fn registration() -> Vec<Span> {
        let mut client = span(
            "2",
            Some("1"),
            "api",
            "user.v1.UserService/CreateUser",
            Kind::Client,
            1_000,
            9_000,
        );
        client.attributes.insert("rpc.system".into(), "grpc".into());
        let mut process = span(
            "6",
            Some("5"),
            "consumer",
            "process user-events",
            Kind::Consumer,
            17_000,
            2_400,
        );
        process.links.push(Link {
            trace_id: TRACE.to_owned(),
            span_id: format!("{:0>16}", "5"),
        });
        vec![
            span("1", None, "api", "POST /v1/users", Kind::Server, 0, 18_000),
            client,
            span(
                "3",
                Some("2"),
                "user",
                "user.v1.UserService/CreateUser",
                Kind::Server,
                1_400,
                8_000,
            ),
            span("4", Some("3"), "user", "INSERT users", Kind::Client, 2_000, 1_200),
            span("5", Some("1"), "api", "send user-events", Kind::Producer, 10_500, 6_200),
            process,
            span(
                "7",
                Some("6"),
                "consumer",
                "INSERT user_events",
                Kind::Client,
                17_500,
                1_500,
            ),
        ]
    }

    fn gaps(spans: Vec<Span>) -> Vec<Gap> {
        Traces::new(Logs {
            spans,
            ..Logs::default()
        })
        .gaps(TRACE)
    }

    fn kinds(gaps: &[Gap]) -> Vec<GapKind> {
        gaps.iter().map(|gap| gap.kind).collect()
    }

    #[test]
    fn the_registration_chain_is_complete() {
        assert_eq!(gaps(registration()), vec![]);
    }

    #[test]
    fn a_trace_continued_from_an_outside_caller_is_complete() {
        let mut spans = registration();
        spans[0].parent_span_id = Some("00f067aa0ba902b7".to_owned());
        assert_eq!(gaps(spans), vec![]);
    }

    #[test]
    fn a_removed_server_span_leaves_a_missing_parent_and_an_unanswered_call() {
        let mut spans = registration();
        spans.remove(2);
        let gaps = gaps(spans);
        assert_eq!(kinds(&gaps), [GapKind::MissingParent, GapKind::NoServer]);
        assert!(
            gaps[0]
                .message
                .contains("`INSERT users` (user, client, 0000000000000004)"),
            "{gaps:?}"
        );
        assert!(
            gaps[0].message.contains("0000000000000003, which never appears"),
            "{gaps:?}"
        );
    }

    #[test]
    fn a_removed_root_leaves_two_spans_without_their_parent() {
        let mut spans = registration();
        spans.remove(0);
        assert_eq!(kinds(&gaps(spans)), [GapKind::MissingParent, GapKind::MissingParent]);
    }

    #[test]
    fn a_corrupted_parent_id_is_a_missing_parent() {
        let mut spans = registration();
        spans[6].parent_span_id = Some("ffffffffffffffff".to_owned());
        let gaps = gaps(spans);
        assert_eq!(kinds(&gaps), [GapKind::MissingParent]);
        assert!(gaps[0].message.contains("ffffffffffffffff"));
    }

    #[test]
    fn a_producer_without_consumer_ends_the_chain_early() {
        let mut spans = registration();
        spans.truncate(5);
        let gaps = gaps(spans);
        assert_eq!(kinds(&gaps), [GapKind::NoConsumer]);
        assert!(gaps[0].message.contains("producer `send user-events`"), "{gaps:?}");
    }

    #[test]
    fn a_consumer_that_only_links_to_its_producer_consumes_it() {
        let mut spans = registration();
        spans[5].parent_span_id = Some(spans[0].span_id.clone());
        assert_eq!(gaps(spans), vec![]);
    }

    #[test]
    fn a_consumer_under_another_trace_id_is_a_span_of_another_trace() {
        let mut spans = registration();
        for span in &mut spans[5..] {
            span.trace_id = "0af7651916cd43dd8448eb211c80319c".to_owned();
        }
        let gaps = gaps(spans);
        assert_eq!(kinds(&gaps), [GapKind::OtherTrace]);
        assert!(
            gaps[0].message.contains("of trace 0af7651916cd43dd8448eb211c80319c"),
            "{gaps:?}"
        );
    }

    #[test]
    fn a_leaf_under_another_trace_id_is_a_span_of_another_trace() {
        let mut spans = registration();
        spans[6].trace_id = "0af7651916cd43dd8448eb211c80319c".to_owned();
        assert_eq!(kinds(&gaps(spans)), [GapKind::OtherTrace]);
    }

    #[test]
    fn a_call_outside_grpc_needs_no_server_span() {
        let mut spans = registration();
        spans.remove(3);
        spans[1].attributes.clear();
        spans.remove(2);
        // The INSERT users span went with its server; the client is HTTP now.
        assert_eq!(gaps(spans), vec![]);
    }

    #[test]
    fn a_call_retried_after_it_failed_to_reach_its_server_is_no_gap() {
        let mut spans = registration();
        let mut failed = spans[1].clone();
        failed.span_id = format!("{:0>16}", "9");
        spans.push(failed.clone());
        spans[1].attributes.insert(RETRY_ATTEMPT.into(), "1".into());
        assert_eq!(gaps(spans.clone()), vec![]);
        // A retry that failed too ends the chain, at the retry.
        spans.remove(3);
        spans.remove(2);
        let gaps = gaps(spans);
        assert_eq!(kinds(&gaps), [GapKind::NoServer], "{gaps:?}");
        assert_eq!(gaps[0].span_id, format!("{:0>16}", "2"));
    }

    #[test]
    fn two_roots_are_a_gap() {
        let mut spans = registration();
        spans[4].parent_span_id = None;
        assert_eq!(kinds(&gaps(spans)), [GapKind::ExtraRoot]);
    }

    #[test]
    fn a_parent_loop_is_a_gap() {
        let mut spans = registration();
        spans[3].parent_span_id = Some(spans[6].span_id.clone());
        spans[6].parent_span_id = Some(spans[3].span_id.clone());
        let kinds = kinds(&gaps(spans));
        assert_eq!(kinds, [GapKind::ParentLoop, GapKind::ParentLoop]);
    }

    #[test]
    fn check_all_counts_complete_traces_and_orphans() {
        let mut spans = registration();
        let mut broken = registration();
        for span in &mut broken {
            span.trace_id = "0af7651916cd43dd8448eb211c80319c".to_owned();
            span.span_id = format!("a{}", &span.span_id[1..]);
            span.parent_span_id = span.parent_span_id.as_ref().map(|p| format!("a{}", &p[1..]));
            for link in &mut span.links {
                link.trace_id = span.trace_id.clone();
                link.span_id = format!("a{}", &link.span_id[1..]);
            }
        }
        broken.remove(1);
        spans.extend(broken);
        let summary = Traces::new(Logs {
            spans,
            ..Logs::default()
        })
        .check_all();
        assert_eq!((summary.traces, summary.complete, summary.orphan_spans), (2, 1, 1));
        assert_eq!(summary.incomplete[0].trace_id, "0af7651916cd43dd8448eb211c80319c");
    }

    #[test]
    fn the_newest_trace_began_last() {
        let mut spans = registration();
        let mut later = span("9", None, "api", "GET /v1/users", Kind::Server, 50_000, 100);
        later.trace_id = "0af7651916cd43dd8448eb211c80319c".to_owned();
        spans.push(later);
        let traces = Traces::new(Logs {
            spans,
            ..Logs::default()
        });
        assert_eq!(traces.newest(), Some("0af7651916cd43dd8448eb211c80319c"));
    }
}
