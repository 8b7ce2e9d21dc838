//! `make doctor` (scripts/doctor.sh) against a running stack of the test's
//! own: the services in process, exporting to a collector, Jaeger and
//! VictoriaMetrics started by `scripts/parts.sh`. Once a request has gone
//! through, every hop passes; then each part is stopped in turn, and the
//! doctor must name that part with ✗ and its fix, while the hops before it
//! still pass.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use callchain_e2e::{
    compose::workspace_root,
    parts::{COLLECTOR, JAEGER, OwnParts, VICTORIAMETRICS},
    stack::Stack,
};
use callchain_telemetry::Export;
use serde_json::json;

/// Runs the doctor against `parts` and the stack's services, their logs
/// written to `logs` (as `make dev` writes them to .dev/logs).
fn doctor(parts: &OwnParts, stack: &Stack, logs: &std::path::Path) -> Output {
    for (name, service) in [
        ("api", &stack.api),
        ("user", &stack.user),
        ("consumer", &stack.consumer),
    ] {
        std::fs::write(logs.join(format!("{name}.log")), service.logs.text()).expect("a log file");
    }
    let mut command = Command::new(workspace_root().join("scripts/doctor.sh"));
    for (name, port) in parts.port_vars() {
        command.env(name, port.to_string());
    }
    command
        .env("API_PORT", stack.api.addr.port().to_string())
        .env("USER_PORT", stack.user.addr.port().to_string())
        .env("CONSUMER_PORT", stack.consumer.addr.port().to_string())
        .env("DOCTOR_LOGS", logs)
        .output()
        .expect("scripts/doctor.sh runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The doctor's line that starts with `mark` and `hop`.
fn line<'a>(report: &'a str, mark: &str, hop: &str) -> Option<&'a str> {
    report.lines().find(|line| line.starts_with(&format!("{mark} {hop}")))
}

/// The report after `part` stopped: a ✗ line for `hop` whose fix says
/// `fix`, a failing exit, and ✓ still for every hop in `still_fine`.
fn assert_names(output: &Output, hop: &str, fix: &str, still_fine: &[&str]) {
    let report = text(output);
    assert!(!output.status.success(), "the doctor fails:\n{report}");
    let bad = line(&report, "✗", hop).unwrap_or_else(|| panic!("a ✗ line for `{hop}`:\n{report}"));
    assert!(bad.contains("fix:") && bad.contains(fix), "its fix says {fix:?}: {bad}");
    for hop in still_fine {
        assert!(line(&report, "✓", hop).is_some(), "`{hop}` still passes:\n{report}");
    }
}

async fn register(stack: &Stack) {
    let response = stack
        .http
        .post(format!("http://{}/v1/users", stack.api.addr))
        .json(&json!({
            "email": format!("doctor-{}@example.com", uuid::Uuid::new_v4().simple()),
            "name": "Doctor",
            "password": "correct horse battery staple",
        }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_names_each_stopped_part_with_its_fix() {
    let parts = OwnParts::start().expect("the parts start");
    let mut stack = Stack::start_exporting(Export::Otlp(parts.otlp()))
        .await
        .expect("the stack starts");
    let logs = tempfile::tempdir().unwrap();

    // A request through the whole chain, then every hop passes: the
    // services' spans and metrics reach Jaeger and the store, the span
    // metrics reach Jaeger's Monitor.
    register(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let healthy = loop {
        let output = doctor(&parts, &stack, logs.path());
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let report = text(&healthy);
    assert!(
        healthy.status.success(),
        "every hop passes once a request went through:\n{report}"
    );
    assert!(!report.contains('✗'), "{report}");
    for hop in [
        "api: up",
        "user: up",
        "consumer: up",
        "collector: up",
        "collector: received",
        "collector → Jaeger",
        "collector → VictoriaMetrics",
        "Jaeger: holds traces of api, user, consumer",
        "VictoriaMetrics: holds series",
        "VictoriaMetrics: holds span metrics",
        "Jaeger Monitor",
        "logs: api's carry trace ids",
    ] {
        assert!(line(&report, "✓", hop).is_some(), "✓ {hop}:\n{report}");
    }

    // The consumer stops: its line fails; the others still pass.
    stack.consumer.kill();
    let output = doctor(&parts, &stack, logs.path());
    assert_names(
        &output,
        "consumer: not answering",
        "start it",
        &["api: up", "user: up", "collector: up"],
    );

    // The store stops.
    parts.kill(VICTORIAMETRICS).unwrap();
    let output = doctor(&parts, &stack, logs.path());
    assert_names(
        &output,
        "VictoriaMetrics: not answering",
        "start it",
        &["api: up", "collector: up", "Jaeger: holds traces"],
    );

    // Jaeger stops.
    parts.kill(JAEGER).unwrap();
    let output = doctor(&parts, &stack, logs.path());
    assert_names(
        &output,
        "Jaeger: not answering",
        "start it",
        &["api: up", "collector: up"],
    );

    // The collector stops: the services are up, their telemetry goes nowhere.
    parts.kill(COLLECTOR).unwrap();
    let output = doctor(&parts, &stack, logs.path());
    assert_names(
        &output,
        "collector: not answering",
        "the services' spans and metrics go nowhere",
        &["api: up", "user: up"],
    );

    // And the API.
    stack.api.kill();
    let output = doctor(&parts, &stack, logs.path());
    assert_names(&output, "api: not answering", "start it", &["user: up"]);
}

/// With `CONSUMER_REPLICAS=2`, the one event of a request is read by one of
/// the two consumers: the doctor finds its trace id in `consumer2.log`
/// rather than calling the consumers' logs untraced because `consumer.log`
/// has none. No part runs: the logs' lines come last, whatever else fails.
#[test]
fn a_trace_id_in_a_replicas_log_counts_for_its_service() {
    let logs = tempfile::tempdir().unwrap();
    let untraced = json!({ "level": "INFO", "message": "consumer started" }).to_string();
    let traced = json!({ "level": "INFO", "message": "event stored", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736" })
        .to_string();
    std::fs::write(logs.path().join("consumer.log"), format!("{untraced}\n")).unwrap();
    std::fs::write(logs.path().join("consumer2.log"), format!("{untraced}\n{traced}\n")).unwrap();
    let output = Command::new(workspace_root().join("scripts/doctor.sh"))
        .env("DOCTOR_LOGS", logs.path())
        // Nothing listens on these: every other hop fails at once.
        .env("DOCTOR_HOST", "127.0.0.1")
        .env("API_PORT", "1")
        .env("USER_PORT", "1")
        .env("CONSUMER_PORT", "1")
        .env("OTELCOL_HEALTH_PORT", "1")
        .env("OTELCOL_METRICS_PORT", "1")
        .env("JAEGER_QUERY_PORT", "1")
        .env("VICTORIAMETRICS_PORT", "1")
        .output()
        .expect("scripts/doctor.sh runs");
    let report = text(&output);
    let consumer = line(&report, "✓", "logs: consumer's carry trace ids")
        .unwrap_or_else(|| panic!("✓ for the consumers' logs:\n{report}"));
    assert!(consumer.contains("consumer2.log"), "{consumer}");
}
