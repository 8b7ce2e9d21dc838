//! Bad input that only the real stack can judge: a taken email, an unknown
//! id. It gets a 4xx problem document that names the problem, and the
//! database is unchanged. Everything the API refuses at its edge (malformed
//! JSON, a wrong type, size, content type, field validation, tokens, roles)
//! is checked in process, without Postgres or Kafka, in
//! `services/api/tests/rejections.rs`.

use callchain_e2e::stack::Stack;
use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem, email, stack};

/// Sends a raw body to `POST /v1/users`.
async fn post_users(stack: &Stack, body: impl Into<reqwest::Body>) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/v1/users"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn assert_unchanged(stack: &Stack, users_before: i64) {
    assert_eq!(stack.user_count().await, users_before, "the database changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_email_is_409_whatever_its_case() {
    let stack = stack().await;
    let address = email("dup");
    stack.register(&address, PASSWORD).await;
    let response = post_users(
        &stack,
        json!({ "email": address.to_uppercase(), "name": "Again", "password": PASSWORD }).to_string(),
    )
    .await;
    assert_problem(response, 409, "email is already registered").await;
    assert_unchanged(&stack, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_id_is_404_on_read_and_update() {
    let stack = stack().await;
    let admin = stack.admin_token().await;
    let unknown = uuid::Uuid::now_v7();
    let response = stack.get_user(&unknown, &admin).await;
    assert_problem(response, 404, &unknown.to_string()).await;

    let response = stack.patch_user(unknown, &admin, &json!({ "name": "Nobody" })).await;
    assert_problem(response, 404, &unknown.to_string()).await;

    assert_unchanged(&stack, 1).await;
}
