//! One request, one trace: the spans exported over OTLP, the JSON log lines
//! of every service and the event row carry the same trace id.

use std::time::Duration;

use callchain_e2e::chain::{assert_registration_chain, has_registration_chain};
use callchain_testkit::spans::{SpanKind, Trace};
use serde_json::json;

use crate::helpers::{PASSWORD, email, stack, trace_id_of};

#[tokio::test(flavor = "multi_thread")]
async fn register_yields_one_trace_across_three_services_in_spans_logs_and_the_event_row() {
    let stack = stack().await;
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": email("traced"), "name": "Traced", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    let trace_id = trace_id_of(&traceparent);
    let user: serde_json::Value = response.json().await.unwrap();

    let rows = stack.events_of(user["id"].as_str().unwrap()).await;
    assert_eq!(rows, vec![("user.created".to_owned(), Some(trace_id.clone()))]);

    stack.flush().await;
    let spans = stack
        .otlp
        .wait_for_trace(&trace_id, Duration::from_secs(15), |spans| {
            has_registration_chain(spans, &stack.kafka.topic)
        })
        .await;
    assert_registration_chain(&spans, &stack.kafka.topic);
    // The response's traceparent names the API's server span.
    let http = Trace(&spans).span("api", "POST /v1/users", SpanKind::Server);
    assert!(
        traceparent.contains(&http.span_id),
        "{traceparent} names {}",
        http.span_id
    );

    // `grep <trace-id>` over every service's logs finds the request.
    for service in [&stack.api, &stack.user, &stack.consumer] {
        let lines = service.logs.lines_of_trace(&trace_id);
        assert!(
            !lines.is_empty(),
            "no log line of {} carries {trace_id}:\n{}",
            service.name,
            service.logs.text()
        );
        for line in &lines {
            assert_eq!(line["service"], service.name);
            for key in ["timestamp", "level", "target", "message", "span_id"] {
                assert!(line.get(key).is_some(), "{key} missing from {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_traceparent_is_continued() {
    let stack = stack().await;
    let parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .header("traceparent", format!("00-{parent_trace}-00f067aa0ba902b7-01"))
        .json(&json!({ "email": email("continued"), "name": "Continued", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap();
    assert_eq!(trace_id_of(traceparent), parent_trace);

    stack.flush().await;
    let spans = stack
        .otlp
        .wait_for_trace(parent_trace, Duration::from_secs(15), |spans| {
            has_registration_chain(spans, &stack.kafka.topic)
        })
        .await;
    let trace = Trace(&spans);
    let http = trace.span("api", "POST /v1/users", SpanKind::Server);
    assert_eq!(http.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    trace.span("user", "INSERT users", SpanKind::Client);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_call_is_traced_with_its_grpc_status() {
    let stack = stack().await;
    let address = email("twice");
    stack.register(&address, PASSWORD).await;
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": address, "name": "Twice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: serde_json::Value = response.json().await.unwrap();
    let trace_id = problem["trace_id"]
        .as_str()
        .expect("a problem names its trace")
        .to_owned();

    stack.flush().await;
    let spans = stack
        .otlp
        .wait_for_trace(&trace_id, Duration::from_secs(10), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "user.v1.UserService/CreateUser")
                .count()
                == 2
        })
        .await;
    let trace = Trace(&spans);
    let http = trace.span("api", "POST /v1/users", SpanKind::Server);
    assert_eq!(http.attribute("http.response.status_code"), Some("409"));
    let server = trace.span("user", "user.v1.UserService/CreateUser", SpanKind::Server);
    assert_eq!(server.attribute("rpc.grpc.status_code"), Some("6"), "ALREADY_EXISTS");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_or_hash_reaches_a_log_or_a_response() {
    let stack = stack().await;
    let address = email("secret");
    let secret = "a very secret passphrase 42";
    let created = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": address, "name": "Secret", "password": secret }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = stack.login(&address, secret).await;
    let login_again = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": address, "password": secret }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wrong = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": address, "password": format!("{secret}!") }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!token.is_empty());

    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind(&address)
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    // The consumer's part of the story is written once it has handled the
    // registration's event.
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .expect("the new user's id")
        .to_owned();
    assert_eq!(stack.events_of(&id).await.len(), 1, "the consumer stored the event");
    let logs = stack.all_logs();
    assert!(
        stack.consumer.logs.text().contains("event stored"),
        "the consumer's logs are read too"
    );
    for text in [&logs, &created, &login_again, &wrong] {
        assert!(!text.contains(secret), "the password leaked: {text}");
        assert!(!text.contains(&hash), "the hash leaked: {text}");
        assert!(!text.contains("$argon2"), "a hash leaked: {text}");
    }
}
