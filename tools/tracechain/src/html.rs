//! The trace as one self-contained HTML page (`--html FILE`), for those
//! without Jaeger's UI: a waterfall with one row per span, indented under
//! its parent, its bar on the trace's time axis, its log events as ticks on
//! the bar. Hovering a row shows its service, kind, status and attributes;
//! clicking it opens them, with its links and events, below the row. No
//! server, no network: the styles and the few lines of script are inline.

use std::{collections::HashMap, fmt::Write as _};

use crate::{
    span::{LogEvent, Status},
    text::millis,
    tree::Tree,
};

/// The page.
pub fn render(tree: &Tree) -> String {
    let start = tree.start_us();
    let total = tree.duration_us().max(1) as f64;
    let at = |micros: i64| micros.saturating_sub(start) as f64 / total * 100.0;

    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>trace {id}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>trace <code>{id}</code></h1>\n",
        id = escape(&tree.trace_id)
    );
    let services = tree.services();
    let colors = Colors::of(&services);
    let _ = writeln!(
        out,
        "<p class=\"summary\">{} spans across {} services, {}, starting {} · <span class=\"{}\">{}</span></p>",
        tree.nodes.len(),
        services.len(),
        millis(tree.duration_us()),
        escape(&crate::json::rfc3339(start)),
        if tree.is_complete() { "complete" } else { "incomplete" },
        if tree.is_complete() {
            "complete".to_owned()
        } else {
            format!("{} gap{}", tree.gaps.len(), if tree.gaps.len() == 1 { "" } else { "s" })
        }
    );
    out.push_str("<p class=\"legend\">");
    for service in &services {
        let _ = write!(
            out,
            "<span class=\"svc\" style=\"background:{}\">{}</span> ",
            colors.of_service(service),
            escape(service)
        );
    }
    out.push_str(
        "<span class=\"hint\">★ critical path · hover a row for its attributes, click it for all</span></p>\n",
    );
    if !tree.is_complete() {
        out.push_str("<div class=\"gaps\"><strong>The chain has gaps:</strong><ul>");
        for gap in &tree.gaps {
            let _ = write!(out, "<li>{}</li>", escape(&gap.message));
        }
        out.push_str("</ul></div>\n");
    }

    out.push_str(
        "<div class=\"waterfall\">\n<div class=\"axis-row\"><div class=\"label\">span</div><div class=\"track axis\">",
    );
    for quarter in 0..=4 {
        let _ = write!(
            out,
            "<span style=\"left:{}%\">{}</span>",
            quarter * 25,
            millis((total * quarter as f64 / 4.0) as i64)
        );
    }
    out.push_str("</div><div class=\"dur\">duration</div></div>\n");

    for visit in tree.walk() {
        let node = &tree.nodes[visit.node];
        let span = &node.span;
        let status = match (&span.status, &span.status_message) {
            (Status::Error, Some(message)) => format!("error: {message}"),
            (status, _) => status.as_str().to_owned(),
        };
        let mut hover = format!("{} · {} · {}\n{}", span.service, span.kind.as_str(), status, span.name);
        for (key, value) in &span.attributes {
            let _ = write!(hover, "\n{key} = {value}");
        }
        let _ = write!(
            out,
            "<div class=\"span-row{crit}{err}\" data-span-id=\"{id}\" data-depth=\"{depth}\" title=\"{hover}\">\
             <div class=\"label\" style=\"padding-left:{indent}px\">{star}\
             <span class=\"svc\" style=\"background:{color}\">{service}</span> {name}</div>\
             <div class=\"track\"><div class=\"bar\" style=\"left:{left:.3}%;width:{width:.3}%;background:{color}\"></div>",
            crit = if node.critical { " critical" } else { "" },
            err = if span.status == Status::Error { " error" } else { "" },
            id = escape(&span.span_id),
            depth = visit.depth,
            hover = escape(&hover),
            indent = 4 + visit.depth * 18,
            star = if node.critical {
                "<b class=\"star\">★</b>"
            } else {
                "<b class=\"star\"></b>"
            },
            color = colors.of_service(&span.service),
            service = escape(&span.service),
            name = escape(&span.name),
            left = at(span.start_us),
            width = span.duration_us as f64 / total * 100.0,
        );
        for event in &node.events {
            let _ = write!(
                out,
                "<i class=\"tick\" style=\"left:{:.3}%\" title=\"{}\"></i>",
                at(event.timestamp_us),
                escape(&event_text(event))
            );
        }
        let _ = writeln!(out, "</div><div class=\"dur\">{}</div></div>", millis(span.duration_us));

        // The details row, opened by a click.
        let _ = write!(out, "<div class=\"details\" hidden><table>");
        let mut row = |key: &str, value: &str| {
            let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(key), escape(value));
        };
        row("service", &span.service);
        row("kind", span.kind.as_str());
        row("status", &status);
        row("span id", &span.span_id);
        row(
            "parent span id",
            span.parent_span_id.as_deref().unwrap_or("none (root)"),
        );
        row(
            "start",
            &format!(
                "+{} ({})",
                millis(span.start_us.saturating_sub(start)),
                crate::json::rfc3339(span.start_us)
            ),
        );
        row("duration", &millis(span.duration_us));
        for link in &span.links {
            row("link", &format!("{} / {}", link.trace_id, link.span_id));
        }
        for (key, value) in &span.attributes {
            row(key, value);
        }
        for event in &node.events {
            row("event", &event_text(event));
        }
        out.push_str("</table></div>\n");
    }
    out.push_str("</div>\n");
    let _ = write!(out, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    out
}

/// The page shows values as they are: no quotes around blank ones.
fn event_text(event: &LogEvent) -> String {
    event.line(false)
}

/// Distinct colours, one per service of the trace, in the order they
/// appear.
const PALETTE: &[&str] = &[
    "#3b73b9", "#d9822b", "#2e9d6a", "#8e5cc4", "#c4455a", "#1f9bb0", "#8a7a2b", "#5b6770",
];

/// Each service's colour, looked up once per span.
struct Colors<'a>(HashMap<&'a str, &'static str>);

impl<'a> Colors<'a> {
    fn of(services: &[&'a str]) -> Self {
        Self(
            services
                .iter()
                .enumerate()
                .map(|(index, &service)| (service, PALETTE[index % PALETTE.len()]))
                .collect(),
        )
    }

    fn of_service(&self, service: &str) -> &'static str {
        self.0.get(service).copied().unwrap_or(PALETTE[0])
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:13px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:18px 22px;color:#1d2329;background:#fff}
h1{font-size:17px;font-weight:600;margin:0 0 4px}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
.summary{margin:0 0 6px;color:#444}
.complete{color:#1a7f37;font-weight:600}.incomplete{color:#c0362c;font-weight:600}
.legend{margin:0 0 12px}.hint{color:#777;margin-left:8px}
.svc{display:inline-block;color:#fff;border-radius:3px;padding:0 5px;font-size:11px;line-height:17px}
.gaps{background:#fdecea;border:1px solid #e5a19a;border-radius:4px;padding:6px 12px;margin:0 0 12px}
.gaps ul{margin:4px 0;padding-left:18px}
.waterfall{border:1px solid #d8dee4;border-radius:4px}
.axis-row,.span-row{display:flex;align-items:center;min-height:26px;border-bottom:1px solid #eef1f4}
.axis-row{font-weight:600;background:#f6f8fa;color:#555}
.span-row{cursor:pointer}.span-row:hover{background:#f3f7fc}
.label{flex:0 0 38%;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;box-sizing:border-box;padding-right:8px}
.track{flex:1 1 auto;position:relative;height:26px}
.axis span{position:absolute;top:5px;transform:translateX(-50%);font-size:11px;font-weight:400;white-space:nowrap}
.axis span:first-child{transform:none}.axis span:last-child{transform:translateX(-100%)}
.bar{position:absolute;top:7px;height:12px;min-width:2px;border-radius:2px;opacity:.85}
.critical .bar{opacity:1;box-shadow:0 0 0 2px #fff,0 0 0 3px #1d2329}
.error .bar{background-image:repeating-linear-gradient(45deg,transparent 0 4px,rgba(255,255,255,.45) 4px 8px)}
.error .label{color:#c0362c}
.tick{position:absolute;top:4px;width:2px;height:18px;background:#1d2329;opacity:.55}
.star{display:inline-block;width:15px;color:#1d2329}
.dur{flex:0 0 96px;text-align:right;padding-right:10px;font-variant-numeric:tabular-nums}
.details{background:#fafbfc;border-bottom:1px solid #eef1f4;padding:6px 12px 8px 40px}
.details table{border-collapse:collapse}
.details th{text-align:left;font-weight:500;color:#555;padding:1px 14px 1px 0;vertical-align:top;white-space:nowrap}
.details td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
";

const SCRIPT: &str = "
for (const row of document.querySelectorAll('.span-row')) {
  row.addEventListener('click', () => { const details = row.nextElementSibling; details.hidden = !details.hidden; });
}
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{registration, tree_of};

    #[test]
    fn one_row_per_span_with_its_bar_on_the_shared_axis() {
        let mut spans = registration();
        spans[0].attributes.insert("http.route".into(), "/v1/users<&>".into());
        let page = render(&tree_of(spans));
        assert_eq!(page.matches("class=\"span-row").count(), 7);
        assert_eq!(page.matches("class=\"details\" hidden").count(), 7);
        assert_eq!(page.matches(" critical\"").count(), 4);
        // The consumer's write starts 17.5 ms into a 19.4 ms trace.
        assert!(page.contains("left:90.206%;width:7.732%"), "{page}");
        assert!(page.contains("http.route = /v1/users&lt;&amp;&gt;"));
        assert!(!page.contains("http://") && !page.contains("https://"), "no network");
    }
}
