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

    // The span column: the tree's branches, then the name. `columns` holds,
    // for each level above the span met, whether its ancestor there was the
    // last of its siblings: one stack for the walk, not a lead per span.
    let visits = tree.walk();
    let mut columns: Vec<bool> = Vec::new();
    let mut labels = Vec::with_capacity(visits.len());
    // The lead of a span's event lines, for the spans that have events.
    let mut event_leads: Vec<Option<String>> = Vec::with_capacity(visits.len());
    for visit in &visits {
        let node = &tree.nodes[visit.node];
        columns.truncate(visit.depth.saturating_sub(1));
        let mut label = String::new();
        if visit.depth > 0 {
            let last = tree.is_last_sibling(visit.node);
            draw(&mut label, &columns);
            label.push_str(if last { "└─ " } else { "├─ " });
            if columns.len() > DRAWN_DEPTH {
                let _ = write!(label, "(depth {}) ", visit.depth);
            }
            columns.push(last);
        }
        label.push_str(&node.span.name);
        labels.push(label);
        event_leads.push((!node.events.is_empty()).then(|| {
            let mut lead = String::new();
            draw(&mut lead, &columns);
            lead.push_str(if node.children.is_empty() { "   " } else { "│  " });
            lead
        }));
    }
    // Columns as wide as their widest entry, up to a bound: a longer one
    // overflows its own line rather than widening every line.
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, SPAN_COLUMN_MAX);
    let service_width = tree
        .services()
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(7, SERVICE_COLUMN_MAX);

    let _ = writeln!(
        out,
        "  {:width$}  {:service_width$}  {:8}  {:>12}  {:>12}  STATUS",
        "SPAN", "SERVICE", "KIND", "START", "DURATION"
    );
    let start = tree.start_us();
    for ((visit, label), lead) in visits.iter().zip(&labels).zip(&event_leads) {
        let node = &tree.nodes[visit.node];
        let span = &node.span;
        let status = match (span.status, &span.status_message) {
            (Status::Error, Some(message)) => format!("error: {message}"),
            (status, _) => status.as_str().to_owned(),
        };
        let pad = width.saturating_sub(label.chars().count());
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
        for event in &node.events {
            let _ = writeln!(out, "  {}· {}", lead.as_deref().unwrap_or_default(), event_line(event));
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

/// The widest the span and service columns are padded to.
const SPAN_COLUMN_MAX: usize = 160;
const SERVICE_COLUMN_MAX: usize = 40;

/// How many levels of branches a line draws. A span deeper than that says
/// its depth instead, so each line stays short however deep the chain, and
/// the text grows with the number of spans, not with their depth squared.
const DRAWN_DEPTH: usize = 32;

/// The branches of the levels above a span (as many as [`DRAWN_DEPTH`]):
/// a line down where its ancestor there has siblings after it.
fn draw(out: &mut String, columns: &[bool]) {
    for &last in columns.iter().take(DRAWN_DEPTH) {
        out.push_str(if last { "   " } else { "│  " });
    }
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
    use crate::fixtures::{chain, registration, tree_of};

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

    #[test]
    fn one_long_name_does_not_pad_every_line_to_its_length() {
        let spans = 1_000;
        let mut chain = chain(spans);
        chain[0].name = "x".repeat(50_000);
        chain[1].service = "y".repeat(50_000);
        let text = rendered(chain);
        // The long ones are written once each, in the header and on their
        // own lines; the other lines are as short as ever.
        assert!(
            text.len() <= 400 * spans + 4 * 50_000,
            "{} bytes for {spans} spans",
            text.len()
        );
    }

    #[test]
    fn the_text_of_a_deep_chain_grows_linearly_with_its_depth() {
        let depth = 3_000;
        let text = rendered(chain(depth));
        assert_eq!(text.matches(" step ").count(), depth);
        // A line per span, its indent drawn to a bounded depth.
        assert!(text.len() <= 400 * depth, "{} bytes for {depth} spans", text.len());
    }
}
