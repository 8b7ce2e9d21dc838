//! The whole chain: API → user service and its outbox → Kafka → consumer →
//! Postgres, in one trace, and the guarantees of a write: a 2xx means the
//! change and its event are committed together, and the event reaches the
//! consumer exactly once, even through a broker outage; a retry with the
//! same `Idempotency-Key` applies once; one user's events are stored in the
//! order of its writes (their `sequence`), whatever fails in between.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

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

    // The retry answered from the stored response and put no second event
    // into the outbox: one message carried the event.
    let stored = stack
        .consumer
        .logs
        .lines()
        .iter()
        .filter(|line| line["message"] == "event stored" && line["event_id"] == event_id.to_string())
        .count();
    assert_eq!(stored, 1, "one message carried event {event_id}");

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
    let read = stack.get_user(&id, &admin).await;
    let read: Value = read.json().await.unwrap();
    assert_eq!(
        read["name"], "First",
        "neither the second update nor the delete happened"
    );
}

/// Idempotency keys are each caller's own: two users who happen to pick the
/// same key each get their own write.
#[tokio::test(flavor = "multi_thread")]
async fn two_users_sending_the_same_idempotency_key_each_get_their_own_write() {
    let stack = stack().await;
    for name in ["Ada", "Bob"] {
        let (user, token) = signed_in_user(&stack).await;
        let id = user["id"].as_str().unwrap();
        let response = stack
            .http
            .patch(stack.url(&format!("/v1/users/{id}")))
            .bearer_auth(&token)
            .header("idempotency-key", "shared-key")
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}: {}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["name"], name);
    }
}

/// The password is part of what a key stands for: a registration retried
/// under its key with another password is refused, and the first stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_retried_under_its_key_with_another_password_is_422_and_keeps_the_first() {
    let stack = stack().await;
    let address = email("new-password");
    let register = |password: &'static str| {
        stack
            .http
            .post(stack.url("/v1/users"))
            .header("idempotency-key", "register-new-password")
            .json(&json!({ "email": address, "name": "Ada", "password": password }))
            .send()
    };
    assert_eq!(register(PASSWORD).await.unwrap().status(), 201);
    assert_problem(
        register("another password entirely").await.unwrap(),
        422,
        "different request",
    )
    .await;
    let login = |password: &'static str| {
        stack
            .http
            .post(stack.url("/v1/auth/login"))
            .json(&json!({ "email": address, "password": password }))
            .send()
    };
    assert_eq!(login(PASSWORD).await.unwrap().status(), 200);
    assert_eq!(login("another password entirely").await.unwrap().status(), 401);
}

/// While a request holds its key (its transaction is open), a second request
/// with the same key is refused at once with 409 instead of waiting for it
/// or doing the write twice. The test holds the key the way an in-flight
/// request does, so the race is not left to timing.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_request_while_the_first_with_its_key_is_in_flight_is_409() {
    let stack = stack().await;
    let mut in_flight = stack.db.pool().begin().await.unwrap();
    // The lock the user service takes on a guest's key: its caller (the
    // client address), the method, the key.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('guest:127.0.0.1' || E'\\n' || 'CreateUser'), hashtext('in-flight-1'))",
    )
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

/// The outbox: a write commits its change and its event together, so it
/// answers without waiting for Kafka, and the event follows once Kafka is back.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_writes_answer_2xx_and_their_events_reach_the_consumer_exactly_once_when_it_returns() {
    let mut stack = stack_on_own_broker().await;
    let admin = stack.admin_token().await;
    stack.kafka.broker().kill();

    let started = Instant::now();
    let user = stack.register(&email("outage"), PASSWORD).await;
    let id = user["id"].as_str().unwrap().to_owned();
    let renamed = stack.patch_user(&id, &admin, &json!({ "name": "Renamed" })).await;
    assert_eq!(renamed.status(), 200, "{:?}", renamed.text().await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the writes do not wait for the broker; took {took:?}"
    );
    assert_eq!(stack.outbox_len().await, 2, "both events wait in the outbox");

    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts");
    let rows = stack.events_of(&id).await;
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["user.created", "user.updated"],
        "each event exactly once, in order"
    );
    assert_eq!(stack.user_count().await, 2, "the admin and one user");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_without_an_idempotency_key_reach_the_consumer_exactly_once_across_a_broker_kill_and_restart() {
    const WRITES: usize = 40;
    let mut stack = stack_on_own_broker().await;
    let admin = stack.admin_token().await;
    let user = stack.register(&email("restart"), PASSWORD).await;
    let id = user["id"].as_str().unwrap().to_owned();

    let (http, url) = (stack.http.clone(), stack.url(&format!("/v1/users/{id}")));
    let rename = |n: usize| {
        http.patch(&url)
            .bearer_auth(&admin)
            .json(&json!({ "name": format!("Name {n}") }))
            .send()
    };
    for n in 0..WRITES / 2 {
        assert_eq!(rename(n).await.unwrap().status(), 200);
    }
    stack.kafka.broker().kill();
    for n in WRITES / 2..WRITES * 3 / 4 {
        assert_eq!(
            rename(n).await.unwrap().status(),
            200,
            "a write while the broker is down"
        );
    }
    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts after kill -9");
    for n in WRITES * 3 / 4..WRITES {
        assert_eq!(rename(n).await.unwrap().status(), 200);
    }

    let rows = stack.events_of(&id).await;
    assert_eq!(
        rows.len(),
        1 + WRITES,
        "every write has exactly one event row: the creation and {WRITES} updates"
    );
    assert_eq!(rows[0].0, "user.created");
    assert!(rows[1..].iter().all(|(kind, _)| kind == "user.updated"));
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'name' FROM user_events WHERE user_id = $1::uuid AND event_type = 'user.updated' \
         ORDER BY kafka_partition, kafka_offset",
    )
    .bind(&id)
    .fetch_all(stack.db.pool())
    .await
    .unwrap();
    let expected: Vec<String> = (0..WRITES).map(|n| format!("Name {n}")).collect();
    assert_eq!(
        names, expected,
        "one user's events reach Kafka in the order they were written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_of_a_restarted_user_service_publishes_what_the_stopped_one_left_in_the_outbox() {
    let mut stack = stack_on_own_broker().await;
    stack.kafka.broker().kill();
    let mut ids = Vec::new();
    for n in 0..3 {
        let user = stack.register(&email(&format!("left-{n}")), PASSWORD).await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    stack.user.stop().await.expect("the user service stops gracefully");
    assert_eq!(stack.outbox_len().await, 3, "nothing acknowledged, nothing removed");

    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts");
    stack.user = callchain_e2e::stack::spawn_user(
        &stack.db,
        &stack.kafka,
        ([127, 0, 0, 1], 0).into(),
        Some(stack.otlp.endpoint()),
    )
    .await
    .expect("the user service starts again");
    for id in &ids {
        let rows = stack.events_of(id).await;
        assert_eq!(rows.len(), 1, "user {id}: exactly one event row");
        assert_eq!(rows[0].0, "user.created");
    }
    assert_eq!(stack.outbox_len().await, 0);
}

/// A Postgres connection ended under a write (57P01, as when Postgres shuts
/// down or an operator terminates it) means "retry", not a bug: 503 with
/// `Retry-After`, and the write did not happen.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_connection_terminated_mid_write_answers_503_with_retry_after_and_changes_nothing() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap().to_owned();

    // Hold the user's row, so the update waits on it inside its transaction.
    let mut holder = stack.db.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let never = json!({ "name": "Never" });
    let update = stack.patch_user(&id, &token, &never);
    let terminate = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let terminated: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            )
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
            if !terminated.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "the update never waited on the row");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (response, ()) = tokio::join!(update, terminate);
    holder.rollback().await.unwrap();

    assert_eq!(
        response.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert_problem(response, 503, "unavailable").await;
    let events = stack.events_of(&id).await;
    assert_eq!(events.len(), 1, "only the creation: the update wrote no event");
    let read: Value = stack.get_user(&id, &token).await.json().await.unwrap();
    assert_eq!(read["name"], "Test User", "the update did not happen");
    assert!(
        stack.user.logs.text().contains("database unavailable"),
        "the user service logged it as unavailable, not as an internal error"
    );
}

/// Each user's stored event sequences, in the order they sit on the topic.
async fn sequences_of(stack: &callchain_e2e::stack::Stack, user_id: uuid::Uuid) -> Vec<i64> {
    sqlx::query_scalar("SELECT sequence FROM user_events WHERE user_id = $1 ORDER BY kafka_partition, kafka_offset")
        .bind(user_id)
        .fetch_all(stack.db.pool())
        .await
        .expect("reading user_events")
}

/// How many messages the test's topic holds (a fresh topic, written only by
/// the idempotent relay, so its offsets count its messages).
fn messages_on_topic(stack: &callchain_e2e::stack::Stack) -> i64 {
    messages_seen_by(&watermark_probe(stack), stack)
}

/// A client that reads the topic's watermarks; kept, it asks again
/// without connecting anew.
fn watermark_probe(stack: &callchain_e2e::stack::Stack) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.kafka.bootstrap())
        .create()
        .expect("a watermark probe")
}

/// How many messages `probe` finds on the topic's three partitions.
fn messages_seen_by(probe: &rdkafka::consumer::BaseConsumer, stack: &callchain_e2e::stack::Stack) -> i64 {
    use rdkafka::consumer::Consumer as _;
    (0..3)
        .map(|partition| {
            probe
                .fetch_watermarks(&stack.kafka.topic, partition, Duration::from_secs(5))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// An outbox row as the write path leaves one: `(event_id, topic, key,
/// event type, payload, sequence)`.
fn outbox_row(user_id: uuid::Uuid, sequence: u64, topic: &str) -> (uuid::Uuid, String, String, String, Vec<u8>, i64) {
    use callchain_events::{EventType, UserEvent, UserPayload};
    let event = UserEvent::new(
        EventType::UserUpdated,
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        user_id,
        sequence,
        UserPayload {
            email: format!("{user_id}@example.com"),
            name: format!("Version {sequence}"),
            role: "USER".into(),
        },
    );
    (
        event.event_id,
        topic.to_owned(),
        event.key(),
        event.event_type.as_str().to_owned(),
        event.to_json(),
        sequence as i64,
    )
}

/// A row Kafka will never take (its topic does not exist; a message larger
/// than the broker's limit) is parked in `outbox_dead_letters` with the
/// reason; the rows around it, of its user and of others, are published
/// once each (no round is sent again), and each user's stored events keep
/// the order of its writes, the parked one a visible gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_kafka_refuses_for_good_is_parked_with_its_reason_and_the_rest_is_published_once_in_order() {
    const WRITES: u64 = 6;
    let stack = stack().await;
    let users: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
    let gone_topic = format!("{}-gone", stack.kafka.topic);
    let mut rows = Vec::new();
    for sequence in 1..=WRITES {
        for (n, &user_id) in users.iter().enumerate() {
            let mut row = outbox_row(user_id, sequence, &stack.kafka.topic);
            if n == 1 && sequence == 3 {
                row.1 = gone_topic.clone();
            }
            if n == 2 && sequence == 4 {
                // Still a readable event (JSON allows trailing blanks), but
                // twice the broker's default limit of 1 MB.
                row.4.extend(std::iter::repeat_n(b' ', 2_000_000));
            }
            rows.push(row);
        }
    }
    // One transaction, so the relay's round holds them all at once.
    let mut tx = stack.db.pool().begin().await.unwrap();
    for (event_id, topic, key, event_type, payload, sequence) in &rows {
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, key, event_type, payload, sequence) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event_id)
        .bind(topic)
        .bind(key)
        .bind(event_type)
        .bind(payload)
        .bind(sequence)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    stack
        .wait_until_published(Duration::from_secs(30))
        .await
        .expect("the refused rows no longer hold up the outbox");
    let parked: Vec<(uuid::Uuid, String, String)> =
        sqlx::query_as("SELECT event_id, topic, reason FROM outbox_dead_letters ORDER BY id")
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].0, rows[4 * 2 + 1].0, "the row of the missing topic");
    assert_eq!(parked[0].1, gone_topic);
    assert!(
        parked[0].2.to_lowercase().contains("unknown topic"),
        "{:?}",
        parked[0].2
    );
    assert_eq!(parked[1].0, rows[4 * 3 + 2].0, "the row too large");
    assert!(parked[1].2.to_lowercase().contains("too large"), "{:?}", parked[1].2);

    stack
        .kafka
        .wait_until_consumed(Duration::from_secs(60))
        .await
        .expect("the consumer catches up");
    let all: Vec<i64> = (1..=WRITES as i64).collect();
    let without = |gap: i64| all.iter().copied().filter(|&s| s != gap).collect::<Vec<_>>();
    let expected = [all.clone(), without(3), without(4), all.clone()];
    for (user_id, expected) in users.iter().zip(expected) {
        assert_eq!(
            sequences_of(&stack, *user_id).await,
            expected,
            "user {user_id}: each event once, in the order of the writes"
        );
    }
    let published = tokio::task::block_in_place(|| messages_on_topic(&stack));
    assert_eq!(
        published,
        rows.len() as i64 - 2,
        "every row but the parked two went to the topic exactly once"
    );
}

/// The broker is killed while a relay round is in flight (many rows sent,
/// few acknowledged, none deleted yet) and comes back: every user's events
/// are stored once each, in the order of its writes, with no holes.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_mid_round_leaves_every_users_events_stored_once_each_in_order_without_holes() {
    // More rows than one round sends (500), so a round is still to come or
    // under way when the first message is seen, however late it is seen.
    const USERS: usize = 8;
    const UPDATES: usize = 70;
    let mut stack = stack_on_own_broker().await;
    let admin = stack.admin_token().await;
    stack.kafka.broker().kill();

    let mut ids = Vec::new();
    for n in 0..USERS {
        let user = stack.register(&email(&format!("mid-round-{n}")), PASSWORD).await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    for n in 0..UPDATES {
        for id in &ids {
            let renamed = stack
                .patch_user(id, &admin, &json!({ "name": format!("Name {n}") }))
                .await;
            assert_eq!(renamed.status(), 200);
        }
    }
    let written = (USERS * (1 + UPDATES)) as i64;
    assert_eq!(stack.outbox_len().await, written, "every event waits in the outbox");

    // Back, and killed again as soon as the first of the outstanding
    // messages reaches the topic: the round is in flight.
    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts");
    let probe = watermark_probe(&stack);
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::task::block_in_place(|| messages_seen_by(&probe, &stack)) == 0 {
        assert!(Instant::now() < deadline, "the relay never published after the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.kafka.broker().kill();
    let left = stack.outbox_len().await;
    assert!(left > 0, "the kill came after the round had finished");

    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts again");
    stack
        .wait_until_published(Duration::from_secs(90))
        .await
        .expect("the relay publishes the outbox");
    stack
        .kafka
        .wait_until_consumed(Duration::from_secs(90))
        .await
        .expect("the consumer catches up");
    let mut stored = BTreeMap::new();
    for id in &ids {
        let user_id: uuid::Uuid = id.parse().unwrap();
        stored.insert(id.clone(), sequences_of(&stack, user_id).await);
    }
    let expected: Vec<i64> = (1..=(1 + UPDATES) as i64).collect();
    for (id, sequences) in &stored {
        assert_eq!(sequences, &expected, "user {id}: once each, in order, no holes");
    }
    let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM stale_user_events")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    assert_eq!(stale, 0, "no event arrived after a newer one of its user");
}
