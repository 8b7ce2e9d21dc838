//! One trace, two sources: the spans the services exported through the
//! collector into Jaeger, and the span records in their logs, make the same
//! tree, with the same log events under the same spans.

use std::time::{Duration, Instant};

use callchain_e2e::stack::{JAEGER_VAR, Stack};
use callchain_tracechain::{Logs, Span, Traces, Tree, jaeger, text};

use crate::run::register_and_wait_for_the_chain;

/// What both sources must agree on, span by span, in the tree's order.
fn summary(tree: &Tree) -> Vec<String> {
    tree.walk()
        .iter()
        .map(|visit| {
            let Span {
                span_id,
                parent_span_id,
                name,
                kind,
                service,
                status,
                links,
                attributes,
                ..
            } = &tree.nodes[visit.node].span;
            format!(
                "{depth} {span_id} <- {parent_span_id:?} {service} {name} {kind:?} {status:?} links {links:?} {attributes:?}",
                depth = visit.depth
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_trace_from_the_logs_and_from_jaeger_gives_the_same_tree() {
    let stack = Stack::start_through_collector()
        .await
        .unwrap_or_else(|error| panic!("cannot start the test stack: {error:#}"));
    let jaeger_url = std::env::var(JAEGER_VAR)
        .unwrap_or_else(|_| panic!("no Jaeger for the tests ({JAEGER_VAR} is unset): run the tests with `make test`"));
    let run = register_and_wait_for_the_chain(&stack).await;
    let from_logs = Traces::new(Logs::parse(&stack.all_logs()))
        .tree(&run.trace_id)
        .expect("the trace in the logs");
    assert!(from_logs.is_complete(), "{}", text::render(&from_logs));

    // The services batch, the collector batches, Jaeger indexes: wait for all.
    stack.flush().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let from_jaeger = loop {
        let tree = match jaeger::fetch(&jaeger_url, &run.trace_id).await {
            Ok(logs) => Traces::new(logs).tree(&run.trace_id),
            Err(_) => None,
        };
        match tree {
            Some(tree) if tree.nodes.len() >= from_logs.nodes.len() => break tree,
            _ if Instant::now() > deadline => panic!("Jaeger did not get the whole trace {} in 60 s", run.trace_id),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };

    assert_eq!(
        summary(&from_jaeger),
        summary(&from_logs),
        "from Jaeger:\n{}\nfrom the logs:\n{}",
        text::render(&from_jaeger),
        text::render(&from_logs)
    );
    assert!(from_jaeger.is_complete());
    // The same times, to the microsecond both keep (Jaeger rounds each
    // timestamp on its own, so a duration may differ by one).
    for (a, b) in from_jaeger.nodes.iter().zip(&from_logs.nodes) {
        assert_eq!(a.span.start_us, b.span.start_us, "start of {}", a.span.name);
        assert!(
            (a.span.duration_us - b.span.duration_us).abs() <= 1,
            "duration of {}",
            a.span.name
        );
    }
    // The services' log events too: Jaeger keeps them as span events.
    let events = |tree: &Tree| -> Vec<Vec<String>> {
        tree.nodes
            .iter()
            .map(|n| {
                n.events
                    .iter()
                    .map(|e| format!("{} {} {:?}", e.level, e.message, e.fields))
                    .collect()
            })
            .collect()
    };
    assert_eq!(events(&from_jaeger), events(&from_logs));
    let critical = |tree: &Tree| -> Vec<String> {
        tree.nodes
            .iter()
            .filter(|n| n.critical)
            .map(|n| n.span.span_id.clone())
            .collect()
    };
    assert_eq!(critical(&from_jaeger), critical(&from_logs));
}
