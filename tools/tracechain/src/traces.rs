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
//!    context was lost on the way. Span ids are unique only within a trace,
//!    so a span whose own trace has its parent is that trace's child, not a
//!    lost one; and a span named parent by many lost ones is one gap.
//! 5. **No loop.** Parents never lead back to a span itself (`parent_loop`;
//!    only corrupted ids do that).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::{
    gap::{Gap, GapKind},
    logs::Logs,
    span::{Kind, LogEvent, Span},
    tree::Tree,
};

/// The attribute a gRPC client span carries when it is a retry: its number,
/// 1 for the first.
const RETRY_ATTEMPT: &str = "rpc.grpc.retry.attempt";

/// A gRPC client span's attempt number, when it says.
fn attempt(span: &Span) -> Option<u32> {
    span.attribute(RETRY_ATTEMPT).and_then(|n| n.parse().ok())
}

/// Every trace of a set of spans, indexed for the checks.
///
/// Span ids are only unique within a trace (and hostile or corrupted logs
/// repeat them across many), so a reference is resolved in its own trace
/// first: the checks of one trace then look at its own spans, and at most
/// a few of the others, and checking every trace stays linear.
pub struct Traces {
    spans: Vec<Span>,
    events: Vec<LogEvent>,
    /// Trace id to the indices of its spans.
    by_trace: BTreeMap<String, Vec<usize>>,
    /// For each span, the spans of its own trace whose parent or link it is.
    referrers: Vec<Vec<usize>>,
    /// Span id to the spans that name it (as parent or link) in whose own
    /// trace no span has it: where a context lost on the way shows.
    strays: HashMap<String, Strays>,
}

/// The spans that name one span id their own trace lacks.
#[derive(Default)]
struct Strays {
    /// Those whose parent it is.
    children: Vec<usize>,
    /// The first consumer span naming it: the answer rule 2 may find in
    /// another trace.
    consumer: Option<usize>,
    /// The first server span under it: rule 3's.
    server: Option<usize>,
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

/// One trace under check: its spans, and what the rules share about them.
struct Check<'a> {
    traces: &'a Traces,
    /// Indices of its spans in [`Traces::spans`].
    indices: &'a [usize],
    spans: Vec<&'a Span>,
    /// Spans without a parent, by start.
    roots: Vec<&'a Span>,
    /// Spans whose parent is not in the trace.
    orphans: Vec<&'a Span>,
}

impl<'a> Check<'a> {
    fn new(traces: &'a Traces, trace_id: &'a str) -> Self {
        let indices = traces.by_trace.get(trace_id).map(Vec::as_slice).unwrap_or_default();
        let spans: Vec<&Span> = indices.iter().map(|&i| &traces.spans[i]).collect();
        let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
        let mut roots: Vec<&Span> = spans.iter().copied().filter(|s| s.parent_span_id.is_none()).collect();
        roots.sort_by_key(|span| span.start_us);
        let orphans = spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id.as_deref().is_some_and(|parent| !ids.contains(parent)))
            .collect();
        Self {
            traces,
            indices,
            spans,
            roots,
            orphans,
        }
    }

    /// Rule 1: one root.
    fn one_root(&self, gaps: &mut Vec<Gap>) {
        let continued = self.roots.is_empty() && self.orphans.len() == 1;
        if !continued {
            for span in &self.orphans {
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
        for span in self.roots.iter().skip(1) {
            gaps.push(Gap {
                kind: GapKind::ExtraRoot,
                span_id: span.span_id.clone(),
                message: format!(
                    "second root: {} has no parent, beside the root {}",
                    span.label(),
                    self.roots[0].label()
                ),
            });
        }
    }

    /// Rule 2: every message is consumed. A message sent more than once
    /// (the relay sends it again when an acknowledgement never came) has a
    /// producer span per attempt with the same `messaging.message.id`; the
    /// consumer stores a message once, so one attempt consumed is enough.
    fn every_message_consumed(&self, gaps: &mut Vec<Gap>) {
        let producers = || {
            self.indices
                .iter()
                .copied()
                .filter(|&index| self.traces.spans[index].kind == Kind::Producer)
        };
        // The ids of the messages one of whose sends was consumed, in one
        // pass, so a trace of many sends stays linear.
        let consumed: HashSet<&str> = producers()
            .filter(|&index| {
                self.traces.referrers[index]
                    .iter()
                    .any(|&other| self.traces.spans[other].kind == Kind::Consumer)
            })
            .filter_map(|index| self.traces.spans[index].attribute("messaging.message.id"))
            .collect();
        for index in producers() {
            let sent_again_and_consumed = self.traces.spans[index]
                .attribute("messaging.message.id")
                .is_some_and(|id| consumed.contains(id));
            if !sent_again_and_consumed {
                self.answered(index, Answer::CONSUMER, gaps);
            }
        }
    }

    /// Rule 3: every call of ours is answered, unless it was retried.
    fn every_call_answered(&self, gaps: &mut Vec<Gap>) {
        let grpc_calls = || {
            self.indices.iter().copied().filter(|&index| {
                let span = &self.traces.spans[index];
                span.kind == Kind::Client && span.attribute("rpc.system") == Some("grpc")
            })
        };
        // The attempts made: a call of the same name under the same parent
        // with the next number is a retry.
        let attempts: HashSet<(&str, Option<&str>, u32)> = grpc_calls()
            .map(|index| &self.traces.spans[index])
            .filter_map(|span| Some((span.name.as_str(), span.parent_span_id.as_deref(), attempt(span)?)))
            .collect();
        for index in grpc_calls() {
            let span = &self.traces.spans[index];
            // The last number there is has no retry after it.
            let next = attempt(span).unwrap_or(0).checked_add(1);
            let retried =
                next.is_some_and(|next| attempts.contains(&(span.name.as_str(), span.parent_span_id.as_deref(), next)));
            if !retried {
                self.answered(index, Answer::SERVER, gaps);
            }
        }
    }

    /// Whether the span at `index` has the span that `answer` wants, in this
    /// trace; a gap otherwise (rule 4's when the answer is found under
    /// another trace).
    fn answered(&self, index: usize, answer: Answer, gaps: &mut Vec<Gap>) {
        let Answer {
            wanted,
            name,
            caller,
            kind,
        } = answer;
        let span = &self.traces.spans[index];
        // A server answers the call it is a child of; a consumer may only
        // link to its producer.
        let answers = |other: &Span| {
            other.kind == wanted && (wanted == Kind::Consumer || other.parent_span_id.as_ref() == Some(&span.span_id))
        };
        if self.traces.referrers[index]
            .iter()
            .any(|&other| answers(&self.traces.spans[other]))
        {
            return;
        }
        let strays = self.traces.strays.get(&span.span_id);
        let elsewhere = strays.and_then(|strays| match wanted {
            Kind::Consumer => strays.consumer,
            _ => strays.server,
        });
        gaps.push(match elsewhere.map(|other| &self.traces.spans[other]) {
            Some(elsewhere) => Gap {
                kind: GapKind::OtherTrace,
                span_id: elsewhere.span_id.clone(),
                message: format!(
                    "span of another trace: the {name} span of {caller} {} is {}, of trace {}",
                    span.label(),
                    elsewhere.label(),
                    elsewhere.trace_id
                ),
            },
            None => Gap {
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
            },
        });
    }

    /// Rule 4: one trace id; children found under another trace, whose own
    /// trace lacks their parent (the answers rules 2 and 3 looked for are
    /// theirs to report). One gap per parent, however many such children
    /// name it.
    fn one_trace_id(&self, gaps: &mut Vec<Gap>) {
        let mut reported: HashSet<String> = gaps.iter().map(|gap| gap.span_id.clone()).collect();
        for span in &self.spans {
            let Some(strays) = self.traces.strays.get(&span.span_id) else {
                continue;
            };
            let mut children = strays.children.iter().map(|&other| &self.traces.spans[other]);
            let Some(other) = children.by_ref().find(|other| !reported.contains(&other.span_id)) else {
                continue;
            };
            reported.insert(other.span_id.clone());
            let more = children.count();
            let mut message = format!(
                "span of another trace: {} is a child of {} but carries trace id {}",
                other.label(),
                span.label(),
                other.trace_id
            );
            if more > 0 {
                message.push_str(&format!(
                    " ({more} more span{} of other traces name it as parent)",
                    if more == 1 { "" } else { "s" }
                ));
            }
            gaps.push(Gap {
                kind: GapKind::OtherTrace,
                span_id: other.span_id.clone(),
                message,
            });
        }
    }

    /// Rule 5: no loop; every span is reached from a root or an orphan.
    fn no_loop(&self, gaps: &mut Vec<Gap>) {
        let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
        for span in &self.spans {
            if let Some(parent) = span.parent_span_id.as_deref() {
                children.entry(parent).or_default().push(span);
            }
        }
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&Span> = self.roots.iter().chain(&self.orphans).copied().collect();
        while let Some(span) = stack.pop() {
            if reached.insert(&span.span_id) {
                stack.extend(children.get(span.span_id.as_str()).into_iter().flatten());
            }
        }
        for span in self
            .spans
            .iter()
            .filter(|span| !reached.contains(span.span_id.as_str()))
        {
            gaps.push(Gap {
                kind: GapKind::ParentLoop,
                span_id: span.span_id.clone(),
                message: format!(
                    "parent loop: following the parents of {} leads back to it",
                    span.label()
                ),
            });
        }
    }
}

/// The span rule 2 or 3 wants for a producer or a gRPC client, and how its
/// absence is named.
#[derive(Clone, Copy)]
struct Answer {
    wanted: Kind,
    name: &'static str,
    caller: &'static str,
    kind: GapKind,
}

impl Answer {
    const CONSUMER: Self = Self {
        wanted: Kind::Consumer,
        name: "consumer",
        caller: "producer",
        kind: GapKind::NoConsumer,
    };
    const SERVER: Self = Self {
        wanted: Kind::Server,
        name: "server",
        caller: "gRPC client",
        kind: GapKind::NoServer,
    };
}

impl Traces {
    pub fn new(logs: Logs) -> Self {
        let Logs { mut spans, events, .. } = logs;
        // A span given twice (Jaeger's answer is not deduplicated as the
        // logs are) is kept once.
        let mut seen = HashSet::new();
        spans.retain(|span| seen.insert((span.trace_id.clone(), span.span_id.clone())));

        let mut by_trace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(spans.len());
        for (i, span) in spans.iter().enumerate() {
            by_trace.entry(span.trace_id.clone()).or_default().push(i);
            index.insert((&span.trace_id, &span.span_id), i);
        }
        let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
        let mut strays: HashMap<String, Strays> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            let mut pointed: Vec<&str> = span.links.iter().map(|link| link.span_id.as_str()).collect();
            pointed.extend(span.parent_span_id.as_deref());
            pointed.sort_unstable();
            pointed.dedup();
            for id in pointed {
                if let Some(&target) = index.get(&(span.trace_id.as_str(), id)) {
                    referrers[target].push(i);
                    continue;
                }
                let strays = strays.entry(id.to_owned()).or_default();
                let child = span.parent_span_id.as_deref() == Some(id);
                if child {
                    strays.children.push(i);
                }
                match span.kind {
                    Kind::Consumer => {
                        strays.consumer.get_or_insert(i);
                    }
                    Kind::Server if child => {
                        strays.server.get_or_insert(i);
                    }
                    _ => {}
                }
            }
        }
        drop(index);
        Self {
            spans,
            events,
            by_trace,
            referrers,
            strays,
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

    /// The gaps of one trace, rule by rule; see the module docs.
    pub fn gaps(&self, trace_id: &str) -> Vec<Gap> {
        let check = Check::new(self, trace_id);
        let mut gaps = Vec::new();
        check.one_root(&mut gaps);
        check.every_message_consumed(&mut gaps);
        check.every_call_answered(&mut gaps);
        check.one_trace_id(&mut gaps);
        check.no_loop(&mut gaps);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{TRACE, registration, span};

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

    /// The relay sent one event twice (the first acknowledgement lost with
    /// a broker): the consumer read one of the two copies, and the trace is
    /// whole. Two different messages are each owed a consumer.
    #[test]
    fn a_message_sent_twice_needs_one_of_its_sends_consumed() {
        let mut spans = registration();
        let first = spans
            .iter()
            .position(|span| span.kind == Kind::Producer)
            .expect("the registration sends a message");
        spans[first]
            .attributes
            .insert("messaging.message.id".to_owned(), "event-1".to_owned());
        let mut again = spans[first].clone();
        again.span_id = format!("{:0>16}", "99");
        spans.push(again.clone());
        assert_eq!(gaps(spans.clone()), vec![], "one message, consumed once");

        let last = spans.len() - 1;
        spans[last]
            .attributes
            .insert("messaging.message.id".to_owned(), "event-2".to_owned());
        assert_eq!(
            kinds(&gaps(spans)),
            [GapKind::NoConsumer],
            "another message, never consumed"
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
    fn a_call_numbered_the_last_attempt_there_can_be_has_no_retry_after_it() {
        let mut spans = registration();
        spans[1].attributes.insert(RETRY_ATTEMPT.into(), u32::MAX.to_string());
        spans.remove(3);
        spans.remove(2);
        assert_eq!(kinds(&gaps(spans)), [GapKind::NoServer]);
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

    #[test]
    fn check_all_stays_linear_when_span_ids_repeat_across_traces() {
        // The same chain, ids and all, in 200 traces; and 200 spans naming
        // its root's id as their parent, each in a trace of its own (and each
        // its own span id).
        let copies = 200;
        let mut spans = Vec::new();
        for trace in 0..copies {
            for mut span in registration() {
                span.trace_id = format!("{trace:032x}");
                for link in &mut span.links {
                    link.trace_id = span.trace_id.clone();
                }
                spans.push(span);
            }
        }
        for trace in copies..2 * copies {
            let mut lost = span(&format!("{trace:x}"), Some("1"), "api", "lost", Kind::Internal, 0, 1);
            lost.trace_id = format!("{trace:032x}");
            spans.push(lost);
        }
        let count = spans.len();
        let summary = Traces::new(Logs {
            spans,
            ..Logs::default()
        })
        .check_all();
        assert_eq!(summary.traces, 2 * copies);
        let gaps: usize = summary.incomplete.iter().map(|trace| trace.gaps.len()).sum();
        assert!(gaps <= count, "{gaps} gaps for {count} spans");
        // Each copy is whole in itself; each names, once, the spans of other
        // traces that name its root as their parent.
        for trace in &summary.incomplete {
            assert_eq!(kinds(&trace.gaps), [GapKind::OtherTrace], "{trace:?}");
        }
    }
}
