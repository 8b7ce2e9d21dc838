//! The caller's id travels as W3C baggage (`enduser.id`) from the API over
//! gRPC to the user service and in the event's Kafka headers to the
//! consumer, and lands on their spans. Baggage from outside is bounded and
//! filtered: a client cannot claim to be someone else.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use callchain_e2e::stack::Stack;
use callchain_events::headers::EVENT_TYPE;
use callchain_testkit::spans::{SpanKind, SpanRecord, Trace};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::{Headers as _, Message as _},
};
use serde_json::json;

use crate::helpers::{PASSWORD, email, signed_in_user, stack, trace_id};

const ENDUSER_ID: &str = "enduser.id";

/// Renames `id` as the holder of `token`, sending `baggage` as the W3C
/// `baggage` header; returns the trace id of the `200` answer.
async fn rename(stack: &Stack, id: &str, token: &str, baggage: Option<&str>) -> String {
    let mut request = stack
        .http
        .patch(stack.url(&format!("/v1/users/{id}")))
        .bearer_auth(token)
        .json(&json!({ "name": "Renamed" }));
    if let Some(baggage) = baggage {
        request = request.header("baggage", baggage);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    trace_id(&response)
}

/// The spans of `trace_id` once the user service's server span named
/// `method` and the consumer's process span have arrived.
async fn trace_through_the_consumer(stack: &Stack, trace_id: &str, method: &str) -> Vec<SpanRecord> {
    stack.flush().await;
    let rpc = format!("user.v1.UserService/{method}");
    let process = format!("process {}", stack.kafka.topic);
    stack
        .otlp
        .wait_for_trace(trace_id, Duration::from_secs(15), |spans| {
            [rpc.as_str(), process.as_str()]
                .iter()
                .all(|name| spans.iter().any(|span| span.name == *name))
        })
        .await
}

/// The `enduser.id` attributes of the user service's server span and the
/// consumer's process span of a trace.
fn callers_seen<'a>(spans: &'a [SpanRecord], stack: &Stack, method: &str) -> [Option<&'a str>; 2] {
    let trace = Trace(spans);
    let server = trace.span("user", &format!("user.v1.UserService/{method}"), SpanKind::Server);
    let process = trace.span(
        "consumer",
        &format!("process {}", stack.kafka.topic),
        SpanKind::Consumer,
    );
    [server.attribute(ENDUSER_ID), process.attribute(ENDUSER_ID)]
}

/// The baggage in the headers of the event of type `event_type` about user
/// `key`, read back from the test's topic.
async fn baggage_of_event(stack: &Stack, key: &str, event_type: &str) -> BTreeMap<String, String> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.kafka.bootstrap())
        .set("group.id", format!("baggage-reader-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka reader");
    let (topic, key, event_type) = (stack.kafka.topic.clone(), key.to_owned(), event_type.to_owned());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let metadata = reader.fetch_metadata(Some(&topic), timeout).expect("topic metadata");
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions
                .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        reader.assign(&partitions).expect("assigning the topic's partitions");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("reading the topic");
            let headers: Vec<(String, String)> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let header = |name: &str| headers.iter().find(|(key, _)| key == name).map(|(_, v)| v.as_str());
            if message.key() == Some(key.as_bytes()) && header(EVENT_TYPE) == Some(event_type.as_str()) {
                return header("baggage")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|entry| entry.split_once('='))
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .collect();
            }
        }
        panic!("no {event_type} event about {key} in {topic}");
    })
    .await
    .unwrap()
}

fn baggage(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_callers_id_travels_as_baggage_to_the_user_service_and_the_consumer() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();

    let trace_id = rename(&stack, id, &token, None).await;

    let spans = trace_through_the_consumer(&stack, &trace_id, "UpdateUser").await;
    let http = Trace(&spans).span("api", "PATCH /v1/users/{id}", SpanKind::Server);
    assert_eq!(http.attribute(ENDUSER_ID), Some(id));
    assert_eq!(callers_seen(&spans, &stack, "UpdateUser"), [Some(id), Some(id)]);
    assert_eq!(
        baggage_of_event(&stack, id, "user.updated").await,
        baggage(&[(ENDUSER_ID, id)])
    );
    // The registration before was a guest's: it names no caller.
    assert_eq!(baggage_of_event(&stack, id, "user.created").await, baggage(&[]));
}

#[tokio::test(flavor = "multi_thread")]
async fn incoming_baggage_cannot_name_another_caller_and_only_allowed_keys_pass() {
    let stack = stack().await;
    let (victim, _) = signed_in_user(&stack).await;
    let victim = victim["id"].as_str().unwrap();
    let (caller, token) = signed_in_user(&stack).await;
    let caller = caller["id"].as_str().unwrap();
    let forged = format!("{ENDUSER_ID}={victim},session.id=s-1,tenant=acme");

    // A signed-in caller is itself, whatever its baggage says.
    let renamed = rename(&stack, caller, &token, Some(&forged)).await;
    let spans = trace_through_the_consumer(&stack, &renamed, "UpdateUser").await;
    assert_eq!(callers_seen(&spans, &stack, "UpdateUser"), [Some(caller), Some(caller)]);
    assert_eq!(
        baggage_of_event(&stack, caller, "user.updated").await,
        baggage(&[(ENDUSER_ID, caller), ("session.id", "s-1")])
    );

    // A guest is nobody.
    let (callers, event_baggage) = register_as_guest(&stack, &forged).await;
    assert_eq!(callers, [None, None]);
    assert_eq!(event_baggage, baggage(&[("session.id", "s-1")]));
}

/// Registers a guest whose request carries `baggage`; what came of it: the
/// caller on the user service's and the consumer's span, and the baggage in
/// the event's Kafka headers.
async fn register_as_guest(stack: &Stack, baggage: &str) -> ([Option<String>; 2], BTreeMap<String, String>) {
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .header("baggage", baggage)
        .json(&json!({ "email": email("guest"), "name": "Guest", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let registration = trace_id(&response);
    let registered: serde_json::Value = response.json().await.unwrap();
    let registered = registered["id"].as_str().unwrap();
    let spans = trace_through_the_consumer(stack, &registration, "CreateUser").await;
    let callers = callers_seen(&spans, stack, "CreateUser").map(|caller| caller.map(str::to_owned));
    (callers, baggage_of_event(stack, registered, "user.created").await)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_incoming_baggage_is_dropped_and_the_request_still_succeeds() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let oversized = format!("session.id=s-1,padding={}", "x".repeat(20 * 1024));

    let trace_id = rename(&stack, id, &token, Some(&oversized)).await;

    let spans = trace_through_the_consumer(&stack, &trace_id, "UpdateUser").await;
    assert_eq!(callers_seen(&spans, &stack, "UpdateUser"), [Some(id), Some(id)]);
    // Dropped whole, allowed key and all; the caller's id is the API's own.
    assert_eq!(
        baggage_of_event(&stack, id, "user.updated").await,
        baggage(&[(ENDUSER_ID, id)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_forged_in_the_properties_of_allowed_baggage_reaches_no_span_and_no_event() {
    let stack = stack().await;
    let (victim, _) = signed_in_user(&stack).await;
    let victim = victim["id"].as_str().unwrap();
    // `enduser.id=<victim>` hidden in a property of an allowed entry: encoded
    // once, in lower-case hex, and twice (unwrapped one hop further on).
    let forgeries = [
        format!("session.id=s;%2C{ENDUSER_ID}%3D{victim}"),
        format!("session.id=s;%2c{ENDUSER_ID}%3d{victim}"),
        format!("session.id=s;%252C{ENDUSER_ID}%253D{victim}"),
    ];

    let mut leaks = Vec::new();
    for forged in &forgeries {
        let (callers, event_baggage) = register_as_guest(&stack, forged).await;
        if callers != [None, None] || event_baggage != baggage(&[("session.id", "s")]) {
            leaks.push(format!(
                "{forged:?}: callers on the user and consumer spans {callers:?}, event baggage {event_baggage:?}"
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "a guest's baggage named a caller:\n{}",
        leaks.join("\n")
    );
}
