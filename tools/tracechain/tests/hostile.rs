//! tracechain on hostile input, generated: log lines for the reader (span
//! records and event lines whose every field may be missing, of the wrong
//! type, out of range or cut short), and spans for the tree builder (ids
//! repeated within and across traces, parent loops, missing parents, times
//! and durations at the ends of i64, retry numbers at the end of u32). None
//! may panic, and each rendering holds every span of its tree once.
//!
//! Each property runs [`CASES`] cases (`PROPTEST_CASES` sets another
//! number, as `make fuzz` does for a longer run), so it runs, bounded, in
//! every `cargo test`. A failing case is
//! shrunk and written under `proptest-regressions/`, and replayed first on
//! the next run.

use std::collections::BTreeMap;

use callchain_tracechain::{Kind, Logs, Span, Status, Traces, html, json, span::Link, text};
use proptest::{prelude::*, test_runner::TestCaseError};
use serde_json::{Map, Value};

/// Cases per property in a plain `cargo test`.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_reader_takes_any_lines_without_panicking(lines in prop::collection::vec(line(), 0..24)) {
        let logs = Logs::parse(&lines.join("\n"));
        for span in &logs.spans {
            prop_assert_eq!(span.trace_id.len(), 32);
            prop_assert_eq!(span.span_id.len(), 16);
        }
        every_tree_holds_its_spans_once(logs)?;
    }

    #[test]
    fn the_tree_builder_takes_any_spans_without_panicking(spans in prop::collection::vec(span(), 0..40)) {
        every_tree_holds_its_spans_once(Logs { spans, ..Logs::default() })?;
    }
}

/// Checks every trace, then draws each: every span once in the walk and in
/// the JSON, and nothing panics on the way.
fn every_tree_holds_its_spans_once(logs: Logs) -> Result<(), TestCaseError> {
    let traces = Traces::new(logs);
    let summary = traces.check_all();
    prop_assert_eq!(summary.traces, traces.ids().count());
    prop_assert_eq!(summary.traces, summary.complete + summary.incomplete.len());
    for id in traces.ids() {
        let tree = traces.tree(id).expect("a trace id has spans");
        let mut walked: Vec<usize> = tree.walk().iter().map(|visit| visit.node).collect();
        walked.sort_unstable();
        prop_assert_eq!(walked, (0..tree.nodes.len()).collect::<Vec<_>>());

        let drawn: Value = serde_json::from_str(&json::render(&tree)).expect("--json writes JSON");
        prop_assert_eq!(count_spans(&drawn["roots"]), tree.nodes.len());
        prop_assert_eq!(drawn["spans"].as_u64(), Some(tree.nodes.len() as u64));

        let text = text::render(&tree);
        prop_assert!(text.starts_with(&format!("trace {id}: ")), "{}", text);
        let page = html::render(&tree);
        prop_assert_eq!(page.matches("class=\"span-row").count(), tree.nodes.len());
    }
    Ok(())
}

/// The spans of a `roots` or `children` array, nested ones included.
fn count_spans(spans: &Value) -> usize {
    spans
        .as_array()
        .map(|spans| spans.iter().map(|span| 1 + count_spans(&span["children"])).sum())
        .unwrap_or(0)
}

// The reader's input.

/// One line of a log: a span record, an event line of a trace, or anything
/// at all that names `trace_id`; sometimes behind a prefix, sometimes cut
/// short.
fn line() -> BoxedStrategy<String> {
    let object = prop_oneof![4 => record(), 2 => event(), 1 => any_json()].boxed();
    let whole = (prop_oneof![3 => Just(String::new()), 1 => "[^{]{0,12}"], object)
        .prop_map(|(prefix, object)| format!("{prefix}{object}"))
        .boxed();
    prop_oneof![
        6 => whole.clone(),
        1 => (whole, any::<prop::sample::Index>()).prop_map(|(line, cut)| {
            let at = cut.index(line.len() + 1);
            let at = (0..=at).rev().find(|&at| line.is_char_boundary(at)).unwrap_or(0);
            line[..at].to_owned()
        }),
        1 => ".{0,40}".prop_map(|noise| format!("\"trace_id\"{noise}")),
    ]
    .boxed()
}

/// A span record, its keys sometimes dropped.
fn record() -> BoxedStrategy<Value> {
    let span = (
        prop::option::of(id(16)),
        text_or_any(".{0,10}"),
        text_or_any("internal|server|client|producer|consumer|sideways"),
        time(),
        number(),
        text_or_any("unset|ok|error|Error|maybe"),
        prop::option::of(text_or_any(".{0,10}")),
        prop_oneof![
            3 => prop::collection::vec((id(32), id(16)), 0..3).prop_map(|links| {
                Value::Array(links.into_iter().map(|(trace_id, span_id)| Value::Object(object([("trace_id", trace_id), ("span_id", span_id)]))).collect())
            }),
            1 => any_json(),
        ],
        prop_oneof![3 => attributes(), 1 => any_json()],
    )
        .prop_map(|(parent, name, kind, start, duration, status, message, links, attributes)| {
            let mut span = object([
                ("name", name),
                ("kind", kind),
                ("start", start),
                ("duration_us", duration),
                ("status", status),
                ("links", links),
                ("attributes", attributes),
            ]);
            if let Some(parent) = parent {
                span.insert("parent_span_id".into(), parent);
            }
            if let Some(message) = message {
                span.insert("status_message".into(), message);
            }
            span
        })
        .boxed();
    (id(32), id(16), text_or_any("api|user|consumer"), span, drops())
        .prop_map(|(trace_id, span_id, service, span, drops)| {
            let mut line = object([
                ("target", Value::from("callchain::span")),
                ("trace_id", trace_id),
                ("span_id", span_id),
                ("service", service),
                ("span", Value::Object(span)),
            ]);
            drop_keys(&mut line, drops);
            Value::Object(line)
        })
        .boxed()
}

/// An event line of a trace, with fields of its own.
fn event() -> BoxedStrategy<Value> {
    (
        id(32),
        prop::option::of(id(16)),
        time(),
        text_or_any(".{0,10}"),
        attributes(),
        drops(),
    )
        .prop_map(|(trace_id, span_id, timestamp, message, fields, drops)| {
            let mut line = match fields {
                Value::Object(fields) => fields,
                _ => Map::new(),
            };
            line.extend(object([
                ("trace_id", trace_id),
                ("timestamp", timestamp),
                ("level", Value::from("INFO")),
                ("message", message),
            ]));
            if let Some(span_id) = span_id {
                line.insert("span_id".into(), span_id);
            }
            drop_keys(&mut line, drops);
            Value::Object(line)
        })
        .boxed()
}

/// An id as hostile logs give it: mostly one of a few (so ids repeat), or
/// any hex, or not hex, or not a string.
fn id(width: usize) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (0u8..6).prop_map(move |n| Value::from(format!("{n:0>width$x}"))),
        1 => "[0-9a-fA-F]{1,40}".prop_map(Value::from),
        1 => ".{0,8}".prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ]
    .boxed()
}

/// An RFC 3339 time, at the ends of what it can say, or not one.
fn time() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (0u32..60, 0u32..1_000_000).prop_map(|(s, us)| Value::from(format!("2026-11-25T10:00:{s:02}.{us:06}Z"))),
        1 => Just(Value::from("9999-12-31T23:59:59.999999+00:00")),
        1 => Just(Value::from("0000-01-01T00:00:00-23:59")),
        1 => ".{0,30}".prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ]
    .boxed()
}

/// A number as JSON may carry it, the ends of i64 and u64 included.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (0i64..100_000).prop_map(Value::from),
        1 => Just(Value::from(i64::MAX)),
        1 => Just(Value::from(i64::MIN)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => ".{0,6}".prop_map(Value::from),
    ]
    .boxed()
}

/// Attributes: what the services write, and a retry number that may be at
/// the end of u32.
fn attributes() -> BoxedStrategy<Value> {
    (
        any::<bool>(),
        prop::option::of(attempt()),
        prop::collection::btree_map("[a-z.]{1,8}", any_json(), 0..4),
    )
        .prop_map(|(grpc, attempt, extra)| {
            let mut attributes: Map<String, Value> = extra.into_iter().collect();
            if grpc {
                attributes.insert("rpc.system".into(), "grpc".into());
            }
            if let Some(attempt) = attempt {
                attributes.insert("rpc.grpc.retry.attempt".into(), attempt.into());
            }
            Value::Object(attributes)
        })
        .boxed()
}

fn attempt() -> BoxedStrategy<u32> {
    prop_oneof![3 => 0u32..4, 1 => Just(u32::MAX), 1 => any::<u32>()].boxed()
}

/// Text matching `pattern`, or now and then any JSON value instead.
fn text_or_any(pattern: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![6 => pattern.prop_map(Value::from), 1 => any_json()].boxed()
}

fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Which keys of a line to drop: each bit one key, most lines whole.
fn drops() -> BoxedStrategy<u8> {
    prop_oneof![4 => Just(0u8), 1 => any::<u8>()].boxed()
}

fn drop_keys(line: &mut Map<String, Value>, drops: u8) {
    let keys: Vec<String> = line.keys().cloned().collect();
    for (bit, key) in keys.iter().enumerate().take(8) {
        if drops & (1 << bit) != 0 {
            line.remove(key);
        }
    }
}

fn object<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

// The tree builder's input, as Jaeger's answer may give it (any i64 for a
// time) or as the reader makes it.

fn span() -> BoxedStrategy<Span> {
    (
        (
            0u8..3,
            0u8..10,
            prop::option::of(0u8..12),
            prop::option::of((0u8..3, 0u8..12)),
        ),
        kind(),
        (micros(), micros()),
        (any::<bool>(), prop::option::of(attempt())),
        (
            0u8..4,
            0u8..3,
            prop_oneof![Just(Status::Unset), Just(Status::Ok), Just(Status::Error)],
        ),
    )
        .prop_map(
            |((trace, id, parent, link), kind, (start_us, duration_us), (grpc, attempt), (service, name, status))| {
                let mut attributes = BTreeMap::new();
                if grpc {
                    attributes.insert("rpc.system".to_owned(), "grpc".to_owned());
                }
                if let Some(attempt) = attempt {
                    attributes.insert("rpc.grpc.retry.attempt".to_owned(), attempt.to_string());
                }
                Span {
                    trace_id: format!("{trace:032x}"),
                    span_id: format!("{id:016x}"),
                    // Ids 10 and 11 are never a span's: a parent that never appears.
                    parent_span_id: parent.map(|parent| format!("{parent:016x}")),
                    name: format!("op{name}"),
                    kind,
                    service: format!("svc{service}"),
                    start_us,
                    duration_us,
                    status,
                    status_message: None,
                    links: link
                        .map(|(trace, id)| Link {
                            trace_id: format!("{trace:032x}"),
                            span_id: format!("{id:016x}"),
                        })
                        .into_iter()
                        .collect(),
                    attributes,
                }
            },
        )
        .boxed()
}

fn kind() -> BoxedStrategy<Kind> {
    prop_oneof![
        Just(Kind::Internal),
        Just(Kind::Server),
        Just(Kind::Client),
        Just(Kind::Producer),
        Just(Kind::Consumer),
    ]
    .boxed()
}

fn micros() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => -1_000i64..1_000_000,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => any::<i64>(),
    ]
    .boxed()
}
