//! The tree tracechain rebuilds from a real registration's logs.

use callchain_e2e::{chain::assert_registration_chain, jaeger::span_record};
use callchain_tracechain::{Input, Kind, Logs, Traces, Tree, text};

use crate::run::{folder_with, registration, stderr, stdout, tracechain, tracechain_with_stdin};

/// ARCHITECTURE.md's chain as tracechain walks it: (depth, service, name, kind).
fn expected(topic: &str) -> Vec<(usize, &'static str, String, Kind)> {
    vec![
        (0, "api", "POST /v1/users".to_owned(), Kind::Server),
        (1, "api", "user.v1.UserService/CreateUser".to_owned(), Kind::Client),
        (2, "user", "user.v1.UserService/CreateUser".to_owned(), Kind::Server),
        (3, "user", "INSERT users".to_owned(), Kind::Client),
        (3, "user", "INSERT outbox".to_owned(), Kind::Client),
        (3, "user", format!("send {topic}"), Kind::Producer),
        (4, "consumer", format!("process {topic}"), Kind::Consumer),
        (5, "consumer", "INSERT user_events".to_owned(), Kind::Client),
    ]
}

fn shape(tree: &Tree) -> Vec<(usize, &'static str, String, Kind)> {
    tree.walk()
        .iter()
        .map(|visit| {
            let span = &tree.nodes[visit.node].span;
            let service = ["api", "user", "consumer"]
                .into_iter()
                .find(|s| *s == span.service)
                .unwrap_or("?");
            (visit.depth, service, span.name.clone(), span.kind)
        })
        .collect()
}

fn tree_of_the_run() -> Tree {
    let run = registration();
    let (_folder, path) = folder_with(run);
    let traces = Traces::new(Logs::read(&[Input::Path(path)]).unwrap());
    traces
        .tree(&run.trace_id)
        .unwrap_or_else(|| panic!("no span of {} in the logs", run.trace_id))
}

#[test]
fn the_logs_of_a_registration_rebuild_the_eight_span_chain() {
    let run = registration();
    let tree = tree_of_the_run();
    let drawn = text::render(&tree);
    assert!(tree.is_complete(), "{drawn}");
    assert_eq!(shape(&tree), expected(&run.topic), "{drawn}");

    // The records say what the exported spans say: the chain check of the
    // end-to-end tests holds on them, attributes included.
    let records: Vec<_> = tree.nodes.iter().map(|node| span_record(&node.span)).collect();
    assert_registration_chain(&records, &run.topic);
}

#[test]
fn the_critical_path_runs_from_the_request_to_the_consumers_write() {
    let run = registration();
    let tree = tree_of_the_run();
    let critical: Vec<String> = tree
        .walk()
        .iter()
        .map(|visit| &tree.nodes[visit.node])
        .filter(|node| node.critical)
        .map(|node| node.span.name.clone())
        .collect();
    // The API answers once the user service has committed; the relay's
    // send, under the user service's span, and the consumer's write end
    // after that.
    assert_eq!(
        critical,
        [
            "POST /v1/users".to_owned(),
            "user.v1.UserService/CreateUser".to_owned(),
            "user.v1.UserService/CreateUser".to_owned(),
            format!("send {}", run.topic),
            format!("process {}", run.topic),
            "INSERT user_events".to_owned()
        ],
        "{}",
        text::render(&tree)
    );
}

#[test]
fn each_services_log_events_hang_under_their_span() {
    let run = registration();
    let tree = tree_of_the_run();
    let events_of = |name: &str, kind: Kind| -> Vec<String> {
        let node = tree
            .nodes
            .iter()
            .find(|node| node.span.name == name && node.span.kind == kind)
            .unwrap_or_else(|| panic!("no {name}"));
        node.events.iter().map(|event| event.message.clone()).collect()
    };
    assert!(events_of("POST /v1/users", Kind::Server).contains(&"request finished".to_owned()));
    assert!(events_of("user.v1.UserService/CreateUser", Kind::Server).contains(&"user created".to_owned()));
    assert!(events_of(&format!("process {}", run.topic), Kind::Consumer).contains(&"event stored".to_owned()));
    assert!(tree.loose_events.is_empty(), "{:?}", tree.loose_events);
}

#[test]
fn the_binary_prints_the_tree_from_a_folder_files_or_stdin() {
    let run = registration();
    let (_folder, path) = folder_with(run);
    let expected = text::render(&tree_of_the_run());

    let from_folder = tracechain(&[&run.trace_id, path.to_str().unwrap()]);
    assert!(from_folder.status.success(), "{}", stderr(&from_folder));
    assert_eq!(stdout(&from_folder), expected);
    assert!(expected.contains(": complete\n"), "{expected}");
    assert!(expected.contains("\n* POST /v1/users "), "{expected}");
    assert!(expected.contains(" · "), "events under their spans: {expected}");

    let files: Vec<String> = ["api", "user", "consumer"]
        .iter()
        .map(|service| path.join(format!("{service}.log")).display().to_string())
        .collect();
    let traceparent = format!("00-{}-00f067aa0ba902b7-01", run.trace_id);
    let mut args = vec![traceparent.as_str()];
    args.extend(files.iter().map(String::as_str));
    let from_files = tracechain(&args);
    assert_eq!(stdout(&from_files), expected, "a traceparent names the trace too");

    let all: String = run.services.iter().map(|(_, text)| text.as_str()).collect();
    let from_stdin = tracechain_with_stdin(&[&run.trace_id, "-"], &all);
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    assert_eq!(stdout(&from_stdin), expected);
}

#[test]
fn json_output_nests_the_spans_with_their_events() {
    let run = registration();
    let (_folder, path) = folder_with(run);
    let output = tracechain(&[&run.trace_id, path.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let tree: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(tree["trace_id"], run.trace_id.as_str());
    assert_eq!(tree["complete"], true);
    assert_eq!(tree["spans"], 8);
    let root = &tree["roots"][0];
    assert_eq!(
        (root["name"].as_str(), root["kind"].as_str()),
        (Some("POST /v1/users"), Some("server"))
    );
    assert_eq!(root["attributes"]["http.response.status_code"], "201");
    assert!(root["events"].as_array().is_some_and(|events| !events.is_empty()));
    let user_server = &root["children"][0]["children"][0];
    assert_eq!(user_server["service"], "user");
    assert_eq!(user_server["children"][0]["name"], "INSERT users");
}

#[test]
fn last_takes_the_newest_trace_and_check_all_counts_the_complete_ones() {
    let run = registration();
    let (_folder, path) = folder_with(run);
    let folder = path.to_str().unwrap();

    let last = tracechain(&["--last", folder]);
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(
        stdout(&last).starts_with(&format!("trace {}:", run.trace_id)),
        "{}",
        stdout(&last)
    );

    let all = tracechain(&["--check-all", folder]);
    assert!(all.status.success(), "{}{}", stdout(&all), stderr(&all));
    let traces = Traces::new(Logs::read(&[callchain_tracechain::Input::Path(path.clone())]).unwrap());
    let count = traces.ids().count();
    assert!(count >= 1);
    assert!(
        stdout(&all).starts_with(&format!(
            "{count} of {count} traces complete; 0 with a gap; 0 orphan spans"
        )),
        "{}",
        stdout(&all)
    );
}
