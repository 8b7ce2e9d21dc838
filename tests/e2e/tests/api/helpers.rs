use callchain_e2e::stack::Stack;
use serde_json::Value;

pub const PASSWORD: &str = "correct horse battery";

/// A fresh stack; panics with the reason (and how to get a missing part).
pub async fn stack() -> Stack {
    match Stack::start().await {
        Ok(stack) => stack,
        Err(error) => panic!("cannot start the test stack: {error:#}"),
    }
}

/// A unique email, so tests never collide.
pub fn email(label: &str) -> String {
    format!("{label}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Asserts `response` is a problem document with `status` whose detail
/// mentions `mentions`, and returns it.
pub async fn assert_problem(response: reqwest::Response, status: u16, mentions: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("a problem body");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], "about:blank");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains(mentions),
        "the problem's detail should mention {mentions:?}: {detail:?}"
    );
    body
}

/// A user and its token.
pub async fn signed_in_user(stack: &Stack) -> (Value, String) {
    let email = email("member");
    let user = stack.register(&email, PASSWORD).await;
    let token = stack.login(&email, PASSWORD).await;
    (user, token)
}

/// The trace id inside a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
    parts[1].to_owned()
}

/// The trace id of the `traceparent` header every API answer carries.
pub fn trace_id(response: &reqwest::Response) -> String {
    trace_id_of(
        response.headers()["traceparent"]
            .to_str()
            .expect("a traceparent header"),
    )
}
