//! The whole chain: API → Kafka → consumer → Postgres, in one trace, and the
//! guarantees of a write: a 2xx means the event is in Kafka; a retry with the
//! same `Idempotency-Key` applies once.

use std::time::{Duration, Instant};

use callchain_testkit::spans::{SpanKind, Trace};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, signed_in_user, stack, trace_id};

#[tokio::test(flavor = "multi_thread")]
async fn update_and_delete_publish_their_events_each_in_its_own_trace() {
    let stack = stack().await;
    let user = stack.register(&email("lifecycle"), PASSWORD).await;
    let id = user["id"].as_str().unwrap();
    let admin = stack.admin_token().await;

    let updated = stack.patch_user(id, &admin, &json!({ "name": "Renamed" })).await;
    assert_eq!(updated.status(), 200);
    let update_trace = trace_id(&updated);

    let deleted = stack.delete_user(id, &admin).await;
    assert_eq!(deleted.status(), 204);
    let delete_trace = trace_id(&deleted);

    let rows = stack.events_of(id).await;
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["user.created", "user.updated", "user.deleted"]);
    assert_eq!(rows[1].1.as_deref(), Some(update_trace.as_str()));
    assert_eq!(rows[2].1.as_deref(), Some(delete_trace.as_str()));

    stack.flush().await;
    for (trace_id, route, method) in [
        (&update_trace, "PATCH /v1/users/{id}", "UpdateUser"),
        (&delete_trace, "DELETE /v1/users/{id}", "DeleteUser"),
    ] {
        let spans = stack
            .otlp
            .wait_for_trace(trace_id, Duration::from_secs(15), |spans| {
                spans.iter().any(|s| s.name == "INSERT user_events")
            })
            .await;
        let trace = Trace(&spans);
        let http = trace.span("api", route, SpanKind::Server);
        let server = trace.span("user", &format!("user.v1.UserService/{method}"), SpanKind::Server);
        let send = trace.span("user", &format!("send {}", stack.kafka.topic), SpanKind::Producer);
        let process = trace.span(
            "consumer",
            &format!("process {}", stack.kafka.topic),
            SpanKind::Consumer,
        );
        let write = trace.span("consumer", "INSERT user_events", SpanKind::Client);
        let client = trace.span("api", &format!("user.v1.UserService/{method}"), SpanKind::Client);
        trace.assert_parent(client, http);
        trace.assert_parent(server, client);
        // The relay publishes under the request's user-service span, whose
        // context the outbox row kept.
        trace.assert_parent(send, server);
        trace.assert_parent(process, send);
        trace.assert_parent(write, process);
        assert_eq!(send.attribute("messaging.kafka.message.key"), Some(id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_post_twice_with_one_idempotency_key_makes_one_user_one_event_and_the_same_answer() {
    let stack = stack().await;
    let body = json!({ "email": email("once"), "name": "Once", "password": PASSWORD });
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = stack
            .http
            .post(stack.url("/v1/users"))
            .header("idempotency-key", "register-once-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        answers.push((location, response.json::<Value>().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1], "the retry answers exactly as the first call");
    assert_eq!(stack.user_count().await, 2, "the admin and one user");

    let id = answers[0].1["id"].as_str().unwrap();
    assert_eq!(stack.events_of(id).await.len(), 1);
    let event_id: uuid::Uuid = sqlx::query_scalar("SELECT event_id FROM user_events WHERE user_id = $1::uuid")
        .bind(id)
        .fetch_one(stack.db.pool())
        .await
        .unwrap();

    // Both answers published the same event id, and the consumer stored
    // both messages: once as a new row, once as a replay of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = |stack: &callchain_e2e::stack::Stack| {
        stack
            .consumer
            .logs
            .lines()
            .iter()
            .filter(|line| line["message"] == "event stored" && line["event_id"] == event_id.to_string())
            .count()
    };
    while stored(&stack) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored(&stack), 2, "two messages carried event {event_id}");
    assert_eq!(
        stack.events_of(id).await.len(),
        1,
        "one event row, however often it was published"
    );

    // The same key with another body is refused with 422 (as the IETF
    // Idempotency-Key draft says), and changes nothing.
    let other = json!({ "email": email("other"), "name": "Other", "password": PASSWORD });
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .header("idempotency-key", "register-once-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "already used for a different request").await;
    assert_eq!(stack.user_count().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_reused_for_a_different_update_or_delete_is_422_and_changes_nothing() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let patch = |name: &'static str| {
        stack
            .http
            .patch(stack.url(&format!("/v1/users/{id}")))
            .bearer_auth(&token)
            .header("idempotency-key", "change-once")
            .json(&json!({ "name": name }))
            .send()
    };
    assert_eq!(patch("First").await.unwrap().status(), 200);
    assert_eq!(
        patch("First").await.unwrap().status(),
        200,
        "a retry answers as the first did"
    );
    assert_problem(patch("Second").await.unwrap(), 422, "different request").await;

    let admin = stack.admin_token().await;
    let other = stack.register(&email("other"), PASSWORD).await;
    let delete = |target: &str| {
        stack
            .http
            .delete(stack.url(&format!("/v1/users/{target}")))
            .bearer_auth(&admin)
            .header("idempotency-key", "delete-once")
            .send()
    };
    assert_eq!(delete(other["id"].as_str().unwrap()).await.unwrap().status(), 204);
    assert_problem(delete(id).await.unwrap(), 422, "different request").await;
    let read = stack
        .http
        .get(stack.url(&format!("/v1/users/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let read: Value = read.json().await.unwrap();
    assert_eq!(
        read["name"], "First",
        "neither the second update nor the delete happened"
    );
}

/// While a request holds its key (its transaction is open), a second request
/// with the same key is refused at once with 409 instead of waiting for it
/// or doing the write twice. The test holds the key the way an in-flight
/// request does, so the race is not left to timing.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_request_while_the_first_with_its_key_is_in_flight_is_409() {
    let stack = stack().await;
    let mut in_flight = stack.db.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('CreateUser'), hashtext('in-flight-1'))")
        .execute(&mut *in_flight)
        .await
        .unwrap();
    let body = json!({ "email": email("twice"), "name": "Twice", "password": PASSWORD });
    let post = || {
        stack
            .http
            .post(stack.url("/v1/users"))
            .header("idempotency-key", "in-flight-1")
            .json(&body)
            .send()
    };
    assert_problem(post().await.unwrap(), 409, "still in progress").await;
    assert_eq!(stack.user_count().await, 1, "nothing was written");

    in_flight.rollback().await.unwrap();
    assert_eq!(
        post().await.unwrap().status(),
        201,
        "once the first has ended, the key is free"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_requests_with_one_key_make_one_user() {
    let stack = stack().await;
    let body = json!({ "email": email("racing"), "name": "Racing", "password": PASSWORD });
    let post = || {
        stack
            .http
            .post(stack.url("/v1/users"))
            .header("idempotency-key", "racing-1")
            .json(&body)
            .send()
    };
    let (first, second) = tokio::join!(post(), post());
    let mut statuses = [first.unwrap().status().as_u16(), second.unwrap().status().as_u16()];
    statuses.sort();
    // The second is either refused while the first is in flight (409) or
    // answered with the first's stored answer (201), never written twice.
    assert!(
        statuses == [201, 409] || statuses == [201, 201],
        "statuses: {statuses:?}"
    );
    assert_eq!(stack.user_count().await, 2, "the admin and one new user");
}

/// A stack on a Kafka broker of the test's own, which it may kill and restart.
async fn stack_on_own_broker() -> callchain_e2e::stack::Stack {
    let kafka = callchain_testkit::kafka::Kafka::own()
        .await
        .expect("a Kafka broker of the test's own");
    callchain_e2e::stack::Stack::start_on(kafka)
        .await
        .expect("the test stack")
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_a_write_answers_503_fast_and_a_retry_with_its_key_ends_with_one_user_and_one_event() {
    let mut stack = stack_on_own_broker().await;
    stack.kafka.broker().kill();
    let body = json!({ "email": email("outage"), "name": "Outage", "password": PASSWORD });

    let started = Instant::now();
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .header("idempotency-key", "outage-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 503, "{:?}", response.text().await);
    assert!(
        took < Duration::from_secs(5),
        "the publish bound is 3 s in tests; took {took:?}"
    );

    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let user = loop {
        let response = stack
            .http
            .post(stack.url("/v1/users"))
            .header("idempotency-key", "outage-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 503, "only 503 while the broker comes back");
        assert!(
            Instant::now() < deadline,
            "the API did not recover within 30 s; its logs:\n{}",
            stack.api.logs.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stack.user_count().await, 2, "the admin and one user");
    let rows = stack.events_of(user["id"].as_str().unwrap()).await;
    assert_eq!(rows.len(), 1, "exactly one event row");
    assert_eq!(rows[0].0, "user.created");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_acknowledged_before_a_broker_kill_and_restart_reaches_the_consumer_exactly_once() {
    const WRITES: usize = 40;
    let mut stack = stack_on_own_broker().await;
    let admin = stack.admin_token().await;
    let user = stack.register(&email("restart"), PASSWORD).await;
    let id = user["id"].as_str().unwrap().to_owned();

    // Updates acknowledged (200) before the broker dies, and after it is back.
    let (http, url) = (stack.http.clone(), stack.url(&format!("/v1/users/{id}")));
    let rename = |n: usize| {
        http.patch(&url)
            .bearer_auth(&admin)
            .header("idempotency-key", format!("rename-{n}"))
            .json(&json!({ "name": format!("Name {n}") }))
            .send()
    };
    for n in 0..WRITES / 2 {
        assert_eq!(rename(n).await.unwrap().status(), 200);
    }
    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts after kill -9");
    let mut acknowledged = 1 + WRITES / 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = WRITES / 2;
    while n < WRITES {
        let response = rename(n).await.unwrap();
        match response.status().as_u16() {
            200 => {
                acknowledged += 1;
                n += 1;
            }
            503 => {
                // Not acknowledged: the client retries with the same key.
                assert!(Instant::now() < deadline, "the API did not recover within 30 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("a write answered {other}: {:?}", response.text().await),
        }
    }

    let rows = stack.events_of(&id).await;
    assert_eq!(
        rows.len(),
        acknowledged,
        "every acknowledged write has exactly one event row: the creation and {WRITES} updates"
    );
    assert_eq!(rows[0].0, "user.created");
    assert!(rows[1..].iter().all(|(kind, _)| kind == "user.updated"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_carries_retry_after() {
    let mut stack = stack_on_own_broker().await;
    stack.kafka.broker().kill();
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": email("retry"), "name": "Retry", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"));
    let ready = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}
