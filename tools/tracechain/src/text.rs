//! The tree as indented text: one line per span (service, kind, start
//! offset, duration, status), its log events under it, `*` on the critical
//! path, and the gaps at the end.

use std::fmt::Write as _;

use crate::{
    span::{LogEvent, Status},
    traces::Summary,
    tree::Tree,
};

/// The whole trace, ready to print.
pub fn render(tree: &Tree) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}: {} spans across {}, {}: {}",
        tree.trace_id,
        tree.nodes.len(),
        tree.services().join(", "),
        millis(tree.duration_us()),
        if tree.is_complete() {
            "complete".to_owned()
        } else {
            format!("{} gap{}", tree.gaps.len(), plural(tree.gaps.len()))
        }
    );
    let _ = writeln!(
        out,
        "(* marks the critical path: from the root to the span that ended last)\n"
    );

    // The span column: the tree's branches, then the name.
    let visits = tree.walk();
    let mut leads: Vec<String> = vec![String::new(); tree.nodes.len()];
    let mut labels = Vec::with_capacity(visits.len());
    for visit in &visits {
        let (branch, below) = match tree.parent(visit.node) {
            None => (String::new(), String::new()),
            Some(parent) => {
                let last = tree.is_last_sibling(visit.node);
                let lead = &leads[parent];
                (
                    format!("{lead}{}", if last { "└─ " } else { "├─ " }),
                    format!("{lead}{}", if last { "   " } else { "│  " }),
                )
            }
        };
        leads[visit.node] = below;
        labels.push(format!("{branch}{}", tree.nodes[visit.node].span.name));
    }
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(4);
    let service_width = tree.services().iter().map(|s| s.len()).max().unwrap_or(0).max(7);

    let _ = writeln!(
        out,
        "  {:width$}  {:service_width$}  {:8}  {:>12}  {:>12}  STATUS",
        "SPAN", "SERVICE", "KIND", "START", "DURATION"
    );
    let start = tree.start_us();
    for (visit, label) in visits.iter().zip(&labels) {
        let node = &tree.nodes[visit.node];
        let span = &node.span;
        let status = match (span.status, &span.status_message) {
            (Status::Error, Some(message)) => format!("error: {message}"),
            (status, _) => status.as_str().to_owned(),
        };
        let pad = width - label.chars().count();
        let _ = writeln!(
            out,
            "{} {label}{:pad$}  {:service_width$}  {:8}  {:>12}  {:>12}  {status}",
            if node.critical { '*' } else { ' ' },
            "",
            span.service,
            span.kind.as_str(),
            format!("+{}", millis(span.start_us.saturating_sub(start))),
            millis(span.duration_us),
        );
        let lead = format!(
            "{}{}",
            leads[visit.node],
            if node.children.is_empty() { "   " } else { "│  " }
        );
        for event in &node.events {
            let _ = writeln!(out, "  {lead}· {}", event_line(event));
        }
    }
    if !tree.loose_events.is_empty() {
        let _ = writeln!(out, "\nevents of spans not in the trace:");
        for event in &tree.loose_events {
            let _ = writeln!(
                out,
                "  · {} [{} span {}]",
                event_line(event),
                event.service,
                event.span_id.as_deref().unwrap_or("-")
            );
        }
    }
    if !tree.is_complete() {
        let _ = writeln!(
            out,
            "\nINCOMPLETE: the chain has {} gap{}:",
            tree.gaps.len(),
            plural(tree.gaps.len())
        );
        for gap in &tree.gaps {
            let _ = writeln!(out, "  ✗ {}", gap.message);
        }
    }
    out
}

/// `--check-all`'s answer. Lists at most `limit` incomplete traces.
pub fn render_summary(summary: &Summary, limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} of {} traces complete; {} with a gap; {} orphan span{}",
        summary.complete,
        summary.traces,
        summary.incomplete.len(),
        summary.orphan_spans,
        plural(summary.orphan_spans)
    );
    for incomplete in summary.incomplete.iter().take(limit) {
        let _ = writeln!(out, "  {}:", incomplete.trace_id);
        for gap in &incomplete.gaps {
            let _ = writeln!(out, "    ✗ {}", gap.message);
        }
    }
    if summary.incomplete.len() > limit {
        let _ = writeln!(
            out,
            "  ... and {} more (--json lists them all)",
            summary.incomplete.len() - limit
        );
    }
    out
}

/// `10:00:00.018391 INFO request finished status="user created"`
fn event_line(event: &LogEvent) -> String {
    event.line(true)
}

/// Microseconds as milliseconds with three decimals: `18.342 ms`.
pub fn millis(micros: i64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{registration, tree_of};

    fn rendered(spans: Vec<crate::span::Span>) -> String {
        render(&tree_of(spans))
    }

    #[test]
    fn a_whole_chain_prints_as_an_indented_tree_with_its_critical_path() {
        let text = rendered(registration());
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736: 7 spans across api, user, consumer, 19.400 ms: complete
(* marks the critical path: from the root to the span that ended last)

  SPAN                                  SERVICE   KIND             START      DURATION  STATUS
* POST /v1/users                        api       server       +0.000 ms     18.000 ms  unset
  ├─ user.v1.UserService/CreateUser     api       client       +1.000 ms      9.000 ms  unset
  │  └─ user.v1.UserService/CreateUser  user      server       +1.400 ms      8.000 ms  unset
  │     └─ INSERT users                 user      client       +2.000 ms      1.200 ms  unset
* └─ send user-events                   api       producer    +10.500 ms      6.200 ms  unset
*    └─ process user-events             consumer  consumer    +17.000 ms      2.400 ms  unset
*       └─ INSERT user_events           consumer  client      +17.500 ms      1.500 ms  unset
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_chain_with_a_gap_says_so_and_names_it() {
        let mut spans = registration();
        spans.truncate(5);
        let text = rendered(spans);
        assert!(text.lines().next().unwrap().ends_with(": 1 gap"), "{text}");
        assert!(
            text.contains("INCOMPLETE: the chain has 1 gap:\n  ✗ chain ends early: producer `send user-events`"),
            "{text}"
        );
    }
}
