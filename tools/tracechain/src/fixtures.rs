//! Spans the unit tests share: a registration's chain, with made-up ids and
//! times.

use std::collections::BTreeMap;

use crate::{
    logs::Logs,
    span::{Kind, Link, Span, Status},
    traces::Traces,
    tree::Tree,
};

pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A span of [`TRACE`]; `id` and `parent` are padded to 16 digits, `start`
/// is in µs from a fixed instant.
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

/// A registration's chain as ARCHITECTURE.md's chain of spans draws it, but
/// shorter: the request sends the message itself (no outbox hop). Made-up
/// ids and times (µs).
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

/// A chain `depth` spans deep, each the only child of the one before.
pub(crate) fn chain(depth: usize) -> Vec<Span> {
    (1..=depth)
        .map(|i| {
            let parent = (i > 1).then(|| format!("{:x}", i - 1));
            span(
                &format!("{i:x}"),
                parent.as_deref(),
                "api",
                "step",
                Kind::Internal,
                i as i64,
                1,
            )
        })
        .collect()
}
