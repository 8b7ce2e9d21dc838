//! A chain with a gap: tracechain exits non-zero and names it. Each test
//! breaks the logs of a real registration one way.

use serde_json::Value;

use crate::run::{RunLogs, folder_with, registration, stderr, stdout, tracechain};

/// Whether `line` is the span record of the run's span `name` of `kind`.
fn is_record_of(line: &Value, trace_id: &str, name: &str, kind: &str) -> bool {
    line["target"] == "callchain::span"
        && line["trace_id"] == trace_id
        && line["span"]["name"] == name
        && line["span"]["kind"] == kind
}

/// tracechain's answer on `logs`: exit code and what it printed.
fn check(logs: &RunLogs, trace_id: &str) -> (Option<i32>, String) {
    let (_folder, path) = folder_with(logs);
    let output = tracechain(&[trace_id, path.to_str().unwrap()]);
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
    (output.status.code(), stdout(&output))
}

fn check_all(logs: &RunLogs) -> (Option<i32>, String) {
    let (_folder, path) = folder_with(logs);
    let output = tracechain(&["--check-all", path.to_str().unwrap()]);
    (output.status.code(), stdout(&output))
}

#[test]
fn a_removed_span_leaves_its_child_without_parent_and_its_caller_without_answer() {
    let run = registration();
    let server = "user.v1.UserService/CreateUser";
    let broken = run.edited(|_, line| (!is_record_of(&line, &run.trace_id, server, "server")).then_some(line));

    let (code, out) = check(&broken, &run.trace_id);
    assert_eq!(code, Some(1), "{out}");
    // Its three children (the two statements and the outbox relay's send,
    // which continued its context) lose their parent.
    assert!(out.contains("INCOMPLETE: the chain has 4 gaps:"), "{out}");
    for orphan in [
        "`INSERT users` (user, client, ".to_owned(),
        "`INSERT outbox` (user, client, ".to_owned(),
        format!("`send {}` (user, producer, ", run.topic),
    ] {
        assert!(
            out.contains(&format!("✗ missing parent: {orphan}")),
            "the orphan {orphan} is named: {out}"
        );
    }
    assert!(
        out.contains(&format!("✗ chain ends early: gRPC client `{server}` (api, client, ")),
        "the call left unanswered is named: {out}"
    );

    let (code, out) = check_all(&broken);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("; 1 with a gap; 3 orphan spans\n"), "{out}");
    assert!(out.contains(&format!("  {}:\n", run.trace_id)), "{out}");
}

#[test]
fn a_corrupted_parent_id_is_named_with_the_parent_that_never_appears() {
    let run = registration();
    let broken = run.edited(|_, mut line| {
        if is_record_of(&line, &run.trace_id, "INSERT users", "client") {
            line["span"]["parent_span_id"] = "00000000deadbeef".into();
        }
        Some(line)
    });
    let (code, out) = check(&broken, &run.trace_id);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ missing parent: `INSERT users` (user, client, ")
            && out.contains("names parent 00000000deadbeef, which never appears"),
        "{out}"
    );
}

#[test]
fn a_dropped_hop_ends_the_chain_at_its_producer() {
    let run = registration();
    // The consumer never wrote anything about the request.
    let broken = run
        .edited(|service, line| (service != "consumer" || line["trace_id"] != run.trace_id.as_str()).then_some(line));
    let (code, out) = check(&broken, &run.trace_id);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "✗ chain ends early: producer `send {}` (user, producer, ",
            run.topic
        )) && out.contains("has no consumer span"),
        "{out}"
    );
}

#[test]
fn a_consumer_that_lost_the_context_is_a_span_of_another_trace() {
    let run = registration();
    let other = "0af7651916cd43dd8448eb211c80319c";
    // The consumer's spans started a trace of their own (their link to the
    // producer is kept, as a consumer that lost the parent would keep it).
    let broken = run.edited(|service, mut line| {
        if service == "consumer" && line["trace_id"] == run.trace_id.as_str() {
            line["trace_id"] = other.into();
        }
        Some(line)
    });
    let (code, out) = check(&broken, &run.trace_id);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "✗ span of another trace: the consumer span of producer `send {}`",
            run.topic
        )) && out.contains(&format!("of trace {other}")),
        "{out}"
    );
}

#[test]
fn a_trace_not_in_the_logs_is_an_error_of_its_own() {
    let run = registration();
    let (_folder, path) = folder_with(run);
    let output = tracechain(&["ffffffffffffffffffffffffffffffff", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no span of trace ffffffffffffffffffffffffffffffff in the logs"),
        "{}",
        stderr(&output)
    );
}
