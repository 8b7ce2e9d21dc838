//! What `POST /rpc` refuses, checked in process: `router()` with `oneshot`,
//! no user service, no broker. Every call here fails before it would reach
//! either (a call that got further would answer `-32053`, the user service
//! being unreachable), so each refusal also proves the call changed nothing.
//! The methods at work, the roles and the trace are checked against the real
//! stack in `tests/e2e/tests/api/rpc.rs`.

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
};
use callchain_api::{AppState, Config, router};
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn app() -> Router {
    let config = Config::for_tests(
        "http://127.0.0.1:1".into(),
        "callchain-rpc-test-secret-0123456789abcdef".into(),
    );
    router(AppState::new(&config).expect("the API's state"), &config)
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Value,
    empty: bool,
}

async fn post_with(content_type: &str, body: impl Into<String>) -> Answer {
    let request = Request::post("/rpc")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.into()))
        .unwrap();
    let response = app().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Answer {
        status,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        empty: bytes.is_empty(),
    }
}

async fn post(body: impl Into<String>) -> Answer {
    post_with("application/json", body).await
}

/// Asserts `reply` is a JSON-RPC error with `code` and `id`, and returns
/// the error object.
fn assert_error(reply: &Value, code: i64, id: Value) -> &Value {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(reply["error"]["message"].is_string(), "{reply}");
    &reply["error"]
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_with_a_parse_error() {
    for body in [
        r#"{"jsonrpc":"2.0","method":"user.get","#,
        "[1,",
        "not json",
        r#"{"jsonrpc":"2.0","method":1} x"#,
    ] {
        let answer = post(body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_error(&answer.body, -32700, Value::Null);
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_request_object_is_400_with_an_invalid_request() {
    for body in [
        json!(1),
        json!("user.get"),
        json!({ "foo": "bar" }),
        json!({ "jsonrpc": "1.0", "method": "user.get", "id": 1 }),
        json!({ "jsonrpc": "2.0", "method": 1, "id": 1 }),
        json!({ "jsonrpc": "2.0", "method": "user.get", "id": true }),
        json!({ "jsonrpc": "2.0", "method": "user.get", "params": "x", "id": 1 }),
        json!({ "jsonrpc": "2.0", "method": "user.get", "id": 1, "extra": 1 }),
    ] {
        let answer = post(body.to_string()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&answer.body, -32600, Value::Null);
    }
}

#[tokio::test]
async fn an_empty_batch_is_one_invalid_request() {
    let answer = post("[]").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.is_object(), "one error, not an array: {}", answer.body);
    assert_error(&answer.body, -32600, Value::Null);
}

#[tokio::test]
async fn a_batch_of_more_than_100_calls_is_refused_whole() {
    let call = json!({ "jsonrpc": "2.0", "method": "user.nothing", "id": 1 });
    let answer = post(Value::Array(vec![call; 101]).to_string()).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_error(&answer.body, -32600, Value::Null);
}

#[tokio::test]
async fn an_unknown_method_is_200_with_method_not_found_and_the_id() {
    let answer = post(json!({ "jsonrpc": "2.0", "method": "user.nothing", "id": "a-1" }).to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_error(&answer.body, -32601, json!("a-1"));
}

#[tokio::test]
async fn params_that_do_not_fit_are_invalid_params_naming_the_field() {
    let cases = [
        (json!({ "email": "ada@example.com", "name": "Ada" }), "password"),
        (
            json!({ "email": "not an email", "name": "Ada", "password": "correct horse battery" }),
            "email",
        ),
        (
            json!({ "email": "ada@example.com", "name": 7, "password": "correct horse battery" }),
            "name",
        ),
        (
            json!({ "email": "ada@example.com", "name": "Ada", "password": "correct horse battery", "role": "ADMIN" }),
            "role",
        ),
        (
            json!({ "email": "ada@example.com", "name": "Ada", "password": "correct horse battery", "idempotency_key": "" }),
            "idempotency_key",
        ),
    ];
    for (params, field) in cases {
        let call = json!({ "jsonrpc": "2.0", "method": "user.create", "params": params, "id": 7 });
        let answer = post(call.to_string()).await;
        assert_eq!(answer.status, StatusCode::OK);
        let error = assert_error(&answer.body, -32602, json!(7));
        assert_eq!(error["data"]["field"], field, "{params}");
        assert_eq!(error["data"]["status"], 400);
    }
    let by_position = json!({ "jsonrpc": "2.0", "method": "auth.login", "params": ["ada@example.com", "x"], "id": 8 });
    assert_error(&post(by_position.to_string()).await.body, -32602, json!(8));
}

#[tokio::test]
async fn a_guest_calling_a_method_that_needs_a_token_gets_the_code_of_401() {
    let call = json!({ "jsonrpc": "2.0", "method": "user.get", "params": { "id": "0199a5c2-7b1e-7c3d-9f00-5e4d3c2b1a09" }, "id": 1 });
    let answer = post(call.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let error = assert_error(&answer.body, -32001, json!(1));
    assert_eq!(error["data"]["status"], 401);
}

#[tokio::test]
async fn notifications_are_run_and_not_answered() {
    let notification = json!({ "jsonrpc": "2.0", "method": "user.nothing" });
    let answer = post(notification.to_string()).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.empty);
    let answer = post(json!([notification, { "jsonrpc": "2.0", "method": "user.list" }]).to_string()).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.empty);
}

#[tokio::test]
async fn a_batch_answers_each_call_that_is_not_a_notification_in_order() {
    let batch = json!([
        { "jsonrpc": "2.0", "method": "user.nothing", "id": 1 },
        1,
        { "jsonrpc": "2.0", "method": "user.list" },
        { "jsonrpc": "2.0", "method": "auth.login", "params": { "email": "ada" , "password": "correct horse battery" }, "id": "two" },
        { "jsonrpc": "2.0", "method": "user.delete", "params": { "id": "x" }, "id": null },
    ]);
    let answer = post(batch.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let replies = answer.body.as_array().expect("an array");
    assert_eq!(replies.len(), 4, "{}", answer.body);
    assert_error(&replies[0], -32601, json!(1));
    assert_error(&replies[1], -32600, Value::Null);
    assert_eq!(
        assert_error(&replies[2], -32602, json!("two"))["data"]["field"],
        "email"
    );
    assert_error(&replies[3], -32001, Value::Null);
}

#[tokio::test]
async fn a_body_that_is_not_json_by_its_content_type_is_415_and_one_too_large_413() {
    let call = json!({ "jsonrpc": "2.0", "method": "user.list", "id": 1 }).to_string();
    let answer = post_with("text/plain", call).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
    let large = format!(r#"{{"jsonrpc":"2.0","method":"{}","id":1}}"#, "x".repeat(20_000));
    let answer = post(large).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
}
