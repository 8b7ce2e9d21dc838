//! JSON-RPC 2.0 on `POST /rpc` against the real stack: every method, a
//! batch of good and bad calls, the roles, the events and the trace.

use std::time::Duration;

use callchain_e2e::stack::{Options, Stack};
use callchain_testkit::spans::{SpanKind, Trace};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, email, signed_in_user, stack, trace_id};

/// Posts `body` to `/rpc` with `token`, and returns the response.
async fn rpc(stack: &Stack, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = stack.http.post(stack.url("/rpc")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Calls `method` with `params` as a single call of id 1; returns its reply.
async fn call(stack: &Stack, token: Option<&str>, method: &str, params: Value) -> Value {
    let response = rpc(
        stack,
        token,
        &json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 1 }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], 1);
    reply
}

/// The result of a call that must succeed.
async fn result(stack: &Stack, token: Option<&str>, method: &str, params: Value) -> Value {
    let reply = call(stack, token, method, params).await;
    assert!(reply.get("error").is_none(), "{method} failed: {reply}");
    reply["result"].clone()
}

/// The error of a call that must fail with `code` and, in its data, the
/// HTTP `status` REST answers.
async fn error(stack: &Stack, token: Option<&str>, method: &str, params: Value, code: i64, status: u16) -> Value {
    let reply = call(stack, token, method, params).await;
    assert!(reply.get("result").is_none(), "{method} should fail: {reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert_eq!(reply["error"]["data"]["status"], status, "{reply}");
    reply["error"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_answers_as_its_rest_resource_does() {
    let stack = stack().await;
    let address = email("rpc");

    let created = result(
        &stack,
        None,
        "user.create",
        json!({ "email": address, "name": "Ada", "password": PASSWORD }),
    )
    .await;
    assert_eq!(created["email"], address);
    assert_eq!(created["role"], "USER");
    assert!(created.get("password").is_none());
    let id = created["id"].as_str().unwrap().to_owned();

    let login = result(
        &stack,
        None,
        "auth.login",
        json!({ "email": address, "password": PASSWORD }),
    )
    .await;
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["user"]["id"], id.as_str());
    let token = login["access_token"].as_str().unwrap().to_owned();

    let read = result(&stack, Some(&token), "user.get", json!({ "id": id })).await;
    assert_eq!(read, created);

    let updated = result(
        &stack,
        Some(&token),
        "user.update",
        json!({ "id": id, "name": "Ada L." }),
    )
    .await;
    assert_eq!(updated["name"], "Ada L.");

    let admin = stack.admin_token().await;
    let page = result(&stack, Some(&admin), "user.list", json!({ "page_size": 100 })).await;
    let users = page["users"].as_array().unwrap();
    assert!(users.iter().any(|user| user["id"] == id.as_str()), "{page}");

    let deleted = result(&stack, Some(&admin), "user.delete", json!({ "id": id })).await;
    assert_eq!(deleted, Value::Null);
    let response = stack.get_user(&id, &admin).await;
    assert_eq!(response.status(), 404, "REST no longer finds the deleted user");
    error(&stack, Some(&admin), "user.get", json!({ "id": id }), -32004, 404).await;

    // One user and three events, each once.
    let events: Vec<String> = stack.events_of(&id).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(events, ["user.created", "user.updated", "user.deleted"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn application_errors_carry_the_code_of_rests_status_and_the_field() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let taken = user["email"].as_str().unwrap();

    error(
        &stack,
        None,
        "user.create",
        json!({ "email": taken, "name": "Again", "password": PASSWORD }),
        -32009,
        409,
    )
    .await;
    error(
        &stack,
        None,
        "auth.login",
        json!({ "email": taken, "password": "not the password" }),
        -32001,
        401,
    )
    .await;
    let invalid = error(
        &stack,
        Some(&token),
        "user.update",
        json!({ "id": user["id"], "email": "not an email" }),
        -32602,
        400,
    )
    .await;
    assert_eq!(invalid["data"]["field"], "email");
    assert_eq!(invalid["data"]["trace_id"].as_str().map(str::len), Some(32));
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_checked_as_rest_checks_them() {
    let stack = stack().await;
    let (me, token) = signed_in_user(&stack).await;
    let (other, _) = signed_in_user(&stack).await;

    // A user reads and changes itself, and no one else.
    result(&stack, Some(&token), "user.get", json!({ "id": me["id"] })).await;
    error(
        &stack,
        Some(&token),
        "user.get",
        json!({ "id": other["id"] }),
        -32003,
        403,
    )
    .await;
    error(
        &stack,
        Some(&token),
        "user.update",
        json!({ "id": other["id"], "name": "Mine" }),
        -32003,
        403,
    )
    .await;
    error(
        &stack,
        Some(&token),
        "user.update",
        json!({ "id": me["id"], "role": "ADMIN" }),
        -32003,
        403,
    )
    .await;
    // Listing and deleting are for administrators.
    error(&stack, Some(&token), "user.list", json!({}), -32003, 403).await;
    error(
        &stack,
        Some(&token),
        "user.delete",
        json!({ "id": other["id"] }),
        -32003,
        403,
    )
    .await;
    // A guest is asked for a token, even for a malformed id.
    error(&stack, None, "user.get", json!({ "id": "x" }), -32001, 401).await;
    let refused = rpc(
        &stack,
        Some("not-a-token"),
        &json!({ "jsonrpc": "2.0", "method": "user.get", "params": { "id": me["id"] }, "id": 1 }),
    )
    .await;
    assert_eq!(refused.status(), 200);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], -32001);

    assert_eq!(stack.user_count().await, 3, "nothing was deleted");
    let other_events = stack.events_of(other["id"].as_str().unwrap()).await;
    assert_eq!(other_events.len(), 1, "only its creation: {other_events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_good_and_bad_calls_each_in_its_place() {
    let stack = stack().await;
    let (me, token) = signed_in_user(&stack).await;
    let id = me["id"].as_str().unwrap();
    let batch = json!([
        { "jsonrpc": "2.0", "method": "user.get", "params": { "id": id }, "id": "read" },
        { "jsonrpc": "2.0", "method": "user.list", "id": "list" },
        { "jsonrpc": "2.0", "method": "user.nothing", "id": 3 },
        { "jsonrpc": "2.0", "method": "user.update", "params": { "id": id, "name": "Batched" } },
        { "jsonrpc": "2.0", "method": "user.get", "params": { "id": id, "extra": true }, "id": 5 },
        "not a call",
    ]);
    let response = rpc(&stack, Some(&token), &batch).await;
    assert_eq!(response.status(), 200);
    let replies: Vec<Value> = response.json().await.unwrap();
    assert_eq!(replies.len(), 5, "the notification is not answered: {replies:#?}");
    assert_eq!(replies[0]["id"], "read");
    assert_eq!(replies[0]["result"]["id"], id);
    assert_eq!(replies[1]["id"], "list");
    assert_eq!(replies[1]["error"]["code"], -32003);
    assert_eq!(replies[2]["id"], 3);
    assert_eq!(replies[2]["error"]["code"], -32601);
    assert_eq!(replies[3]["id"], 5);
    assert_eq!(replies[3]["error"]["code"], -32602);
    assert_eq!(replies[3]["error"]["data"]["field"], "extra");
    assert_eq!(replies[4]["id"], Value::Null);
    assert_eq!(replies[4]["error"]["code"], -32600);

    // The notification ran: its change and its event are there.
    let events: Vec<String> = stack.events_of(id).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(events, ["user.created", "user.updated"]);
    let read = result(&stack, Some(&token), "user.get", json!({ "id": id })).await;
    assert_eq!(read["name"], "Batched");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_is_stored_and_its_event_reaches_the_consumer_once_per_idempotency_key() {
    let stack = stack().await;
    let (me, token) = signed_in_user(&stack).await;
    let id = me["id"].as_str().unwrap();
    let params = json!({ "id": id, "name": "Once", "idempotency_key": "rpc-update-1" });
    let first = result(&stack, Some(&token), "user.update", params.clone()).await;
    let again = result(&stack, Some(&token), "user.update", params).await;
    assert_eq!(first, again);
    let events: Vec<String> = stack.events_of(id).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(events, ["user.created", "user.updated"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_is_traced_as_rest_is_with_the_jsonrpc_attributes_on_the_server_span() {
    let stack = stack().await;
    let response = rpc(
        &stack,
        None,
        &json!({ "jsonrpc": "2.0", "method": "user.create",
                 "params": { "email": email("traced"), "name": "Traced", "password": PASSWORD }, "id": 1 }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let trace = trace_id(&response);
    let reply: Value = response.json().await.unwrap();
    let rows = stack.events_of(reply["result"]["id"].as_str().unwrap()).await;
    assert_eq!(rows, vec![("user.created".to_owned(), Some(trace.clone()))]);

    stack.flush().await;
    let topic = format!("send {}", stack.kafka.topic);
    let spans = stack
        .otlp
        .wait_for_trace(&trace, Duration::from_secs(15), |spans| {
            spans.iter().any(|span| span.name == topic) && spans.iter().any(|span| span.service == "consumer")
        })
        .await;
    let tree = Trace(&spans);
    let http = tree.span("api", "POST /rpc", SpanKind::Server);
    assert_eq!(http.attribute("rpc.system"), Some("jsonrpc"));
    assert_eq!(http.attribute("rpc.jsonrpc.version"), Some("2.0"));
    assert_eq!(http.attribute("rpc.method"), Some("user.create"));
    let client = tree.span("api", "user.v1.UserService/CreateUser", SpanKind::Client);
    tree.assert_parent(client, http);
    let server = tree.span("user", "user.v1.UserService/CreateUser", SpanKind::Server);
    tree.assert_parent(server, client);
    // The outbox relay sends the event under the user service's span.
    let send = tree.span("user", &topic, SpanKind::Producer);
    tree.assert_parent(send, server);
    let process = tree.span(
        "consumer",
        &format!("process {}", stack.kafka.topic),
        SpanKind::Consumer,
    );
    tree.assert_parent(process, send);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_call_of_a_batch_has_a_span_its_grpc_call_sits_under() {
    let stack = stack().await;
    let (me, token) = signed_in_user(&stack).await;
    let batch = json!([
        { "jsonrpc": "2.0", "method": "user.get", "params": { "id": me["id"] }, "id": 1 },
        { "jsonrpc": "2.0", "method": "user.update", "params": { "id": me["id"], "name": "Spanned" }, "id": 2 },
    ]);
    let response = rpc(&stack, Some(&token), &batch).await;
    assert_eq!(response.status(), 200);
    let trace = trace_id(&response);

    stack.flush().await;
    let spans = stack
        .otlp
        .wait_for_trace(&trace, Duration::from_secs(15), |spans| {
            spans.iter().filter(|span| span.name.starts_with("jsonrpc ")).count() == 2
                && spans.iter().any(|span| span.name == "user.v1.UserService/UpdateUser")
        })
        .await;
    let tree = Trace(&spans);
    let http = tree.span("api", "POST /rpc", SpanKind::Server);
    assert_eq!(http.attribute("rpc.system"), Some("jsonrpc"));
    assert_eq!(http.attribute("rpc.method"), None, "a batch has no one method");
    for (method, grpc) in [("user.get", "GetUser"), ("user.update", "UpdateUser")] {
        let call = tree.span("api", &format!("jsonrpc {method}"), SpanKind::Internal);
        assert_eq!(call.attribute("rpc.method"), Some(method));
        tree.assert_parent(call, http);
        // (The caller's role may be asked with a `GetUser` of its own, under
        // the server span: the call's is the one under the call's span.)
        let grpc = format!("user.v1.UserService/{grpc}");
        assert!(
            spans.iter().any(|span| span.name == grpc
                && span.kind == SpanKind::Client
                && span.parent_span_id.as_deref() == Some(call.span_id.as_str())),
            "no `{grpc}` under `jsonrpc {method}`:\n{}",
            tree.draw()
        );
    }
}

async fn stack_with(options: Options) -> Stack {
    match Stack::start_with(options).await {
        Ok(stack) => stack,
        Err(error) => panic!("cannot start the test stack: {error:#}"),
    }
}

/// Posts a batch of `calls` and returns the replies' error codes, `0` for a
/// result, in the batch's order.
async fn batch_codes(stack: &Stack, token: Option<&str>, calls: Vec<Value>) -> Vec<i64> {
    let response = rpc(stack, token, &Value::Array(calls)).await;
    assert_eq!(response.status(), 200);
    let replies: Vec<Value> = response.json().await.unwrap();
    replies
        .iter()
        .map(|reply| match reply.get("error") {
            Some(error) => error["code"].as_i64().expect("an error code"),
            None => 0,
        })
        .collect()
}

fn count(codes: &[i64], code: i64) -> usize {
    codes.iter().filter(|each| **each == code).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_call_of_a_batch_counts_against_the_limit_of_requests_in_flight() {
    const LIMIT: usize = 4;
    let stack = stack_with(Options {
        api: Some(Box::new(|config| config.max_in_flight = LIMIT)),
        ..Options::default()
    })
    .await;
    let (me, token) = signed_in_user(&stack).await;
    const CALLS: usize = 20;
    let calls = (0..CALLS)
        .map(|i| json!({ "jsonrpc": "2.0", "method": "user.get", "params": { "id": me["id"] }, "id": i }))
        .collect();
    let codes = batch_codes(&stack, Some(&token), calls).await;
    // The calls all start at once: as many as the limit run, the rest are
    // shed as a request past the limit is.
    assert_eq!(
        (count(&codes, 0), count(&codes, -32053)),
        (LIMIT, CALLS - LIMIT),
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_login_of_a_batch_counts_against_the_login_throttle() {
    let stack = stack().await;
    let (me, _) = signed_in_user(&stack).await;
    // The test settings' limit per account (LOGIN_MAX_FAILURES_PER_ACCOUNT's default).
    const LIMIT: usize = 5;
    const CALLS: usize = 30;
    let calls = (0..CALLS)
        .map(|i| {
            json!({ "jsonrpc": "2.0", "method": "auth.login",
                    "params": { "email": me["email"], "password": "a wrong password" }, "id": i })
        })
        .collect();
    let codes = batch_codes(&stack, None, calls).await;
    assert_eq!(
        (count(&codes, -32001), count(&codes, -32029)),
        (LIMIT, CALLS - LIMIT),
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_throttled_per_client_address_in_a_batch_and_over_rest() {
    const LIMIT: usize = 3;
    let stack = stack_with(Options {
        api: Some(Box::new(|config| config.registration_limits.per_address = LIMIT)),
        ..Options::default()
    })
    .await;
    const CALLS: usize = 20;
    let calls = (0..CALLS)
        .map(|i| {
            json!({ "jsonrpc": "2.0", "method": "user.create",
                    "params": { "email": email("flood"), "name": "Flood", "password": PASSWORD }, "id": i })
        })
        .collect();
    let codes = batch_codes(&stack, None, calls).await;
    assert_eq!(
        (count(&codes, 0), count(&codes, -32029)),
        (LIMIT, CALLS - LIMIT),
        "{codes:?}"
    );
    // REST shares the count: the address has used its registrations up.
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": email("rest"), "name": "Rest", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // The admin the stack starts with, and the three.
    assert_eq!(stack.user_count().await, 1 + LIMIT as i64);
}
