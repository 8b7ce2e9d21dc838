//! One registration on the whole stack, and its services' logs.

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::OnceLock,
    time::{Duration, Instant},
};

use callchain_e2e::stack::Stack;
use callchain_tracechain::{Logs, Traces};
use serde_json::json;

/// The logs of a run, as each service wrote them.
#[derive(Clone)]
pub struct RunLogs {
    /// The registration's trace, from the API's `traceparent` answer.
    pub trace_id: String,
    /// The topic the events went to (the test's own).
    pub topic: String,
    /// `(service, its JSON log)`
    pub services: Vec<(&'static str, String)>,
}

impl RunLogs {
    /// Writes each service's log to `<folder>/<service>.log`, as `make dev`
    /// writes them to `.dev/logs`.
    pub fn write_to(&self, folder: &Path) {
        for (service, text) in &self.services {
            std::fs::write(folder.join(format!("{service}.log")), text).expect("writing a log");
        }
    }

    /// The same logs with `edit` applied to every line.
    pub fn edited(&self, mut edit: impl FnMut(&str, serde_json::Value) -> Option<serde_json::Value>) -> Self {
        let services = self
            .services
            .iter()
            .map(|(service, text)| {
                let lines: Vec<String> = text
                    .lines()
                    .filter_map(|line| {
                        let value = serde_json::from_str(line).expect("a JSON log line");
                        edit(service, value).map(|value| value.to_string())
                    })
                    .collect();
                (*service, lines.join("\n") + "\n")
            })
            .collect();
        Self {
            services,
            ..self.clone()
        }
    }
}

/// The logs of one registration, made once for every test of this binary.
pub fn registration() -> &'static RunLogs {
    static RUN: OnceLock<RunLogs> = OnceLock::new();
    RUN.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let stack = Stack::start()
                .await
                .unwrap_or_else(|error| panic!("cannot start the test stack: {error:#}"));
            register_and_wait_for_the_chain(&stack).await
        })
    })
}

/// Registers a user through the API, waits until the consumer has stored
/// its event and every service has written its spans' records, and returns
/// the logs.
pub async fn register_and_wait_for_the_chain(stack: &Stack) -> RunLogs {
    let email = format!("chain-{}@example.com", uuid::Uuid::new_v4().simple());
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": email, "name": "Ada Lovelace", "password": "correct horse battery staple" }))
        .send()
        .await
        .expect("POST /v1/users");
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    let trace_id = callchain_tracechain::parse_trace_id(&traceparent).unwrap();
    let user: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stack.events_of(user["id"].as_str().unwrap()).await.len(), 1);

    // The consumer's span ends, and writes its record, just after its row.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Traces::new(Logs::parse(&stack.all_logs())).spans_of(&trace_id).len() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    RunLogs {
        trace_id,
        topic: stack.kafka.topic.clone(),
        services: vec![
            ("api", stack.api.logs.text()),
            ("user", stack.user.logs.text()),
            ("consumer", stack.consumer.logs.text()),
        ],
    }
}

/// Runs the `tracechain` binary.
pub fn tracechain(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tracechain"))
        .args(args)
        .output()
        .expect("running tracechain")
}

/// Runs the `tracechain` binary with `stdin` as its input.
pub fn tracechain_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracechain"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running tracechain");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().expect("tracechain's output")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh folder holding `logs`.
pub fn folder_with(logs: &RunLogs) -> (tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().expect("a temp folder");
    logs.write_to(folder.path());
    let path = folder.path().to_owned();
    (folder, path)
}
