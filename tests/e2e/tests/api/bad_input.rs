//! Bad input gets a 4xx problem document that names the problem, and the
//! database is unchanged.

use callchain_e2e::stack::{JWT_SECRET, Stack};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, signed_in_user, stack};

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
async fn malformed_json_is_400() {
    let stack = stack().await;
    let response = post_users(&stack, r#"{"email": "a@example.com", "name": "#).await;
    assert_problem(response, 400, "not valid JSON").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_field_is_400_and_named() {
    let stack = stack().await;
    let response = post_users(&stack, r#"{"email": "a@example.com", "name": "A"}"#).await;
    assert_problem(response, 400, "missing field `password`").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_type_is_400_and_named() {
    let stack = stack().await;
    let response = post_users(
        &stack,
        r#"{"email": "a@example.com", "name": 42, "password": "long enough pw"}"#,
    )
    .await;
    assert_problem(response, 400, "invalid type: integer `42`, expected a string").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_413() {
    let stack = stack().await;
    let body = json!({ "email": "big@example.com", "name": "x".repeat(64 * 1024), "password": PASSWORD });
    let response = post_users(&stack, body.to_string()).await;
    assert_problem(response, 413, "too large").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_json_is_415() {
    let stack = stack().await;
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .header("content-type", "text/plain")
        .body("email=a@example.com")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "must be JSON").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_email_is_400_naming_the_field() {
    let stack = stack().await;
    let response = post_users(
        &stack,
        json!({ "email": "not-an-email", "name": "A", "password": PASSWORD }).to_string(),
    )
    .await;
    let problem = assert_problem(response, 400, "email: must be an email address").await;
    assert_eq!(problem["field"], "email");
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_too_short_password_is_400_naming_the_field() {
    let stack = stack().await;
    let response = post_users(
        &stack,
        json!({ "email": email("short"), "name": "A", "password": "short" }).to_string(),
    )
    .await;
    let problem = assert_problem(response, 400, "password: must be at least 8 characters").await;
    assert_eq!(problem["field"], "password");
    assert_unchanged(&stack, 1).await;
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
async fn an_unknown_id_is_404_and_a_malformed_one_400() {
    let stack = stack().await;
    let admin = stack.admin_token().await;
    let unknown = uuid::Uuid::now_v7();
    let response = stack
        .http
        .get(stack.url(&format!("/v1/users/{unknown}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, &unknown.to_string()).await;

    let response = stack
        .http
        .patch(stack.url(&format!("/v1/users/{unknown}")))
        .bearer_auth(&admin)
        .json(&json!({ "name": "Nobody" }))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, &unknown.to_string()).await;

    let response = stack
        .http
        .get(stack.url("/v1/users/not-a-uuid"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "id: must be a UUID").await;
    assert_unchanged(&stack, 1).await;
}

async fn get_with_authorization(stack: &Stack, id: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = stack.http.get(stack.url(&format!("/v1/users/{id}")));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_is_401() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let response = get_with_authorization(&stack, user["id"].as_str().unwrap(), None).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "this needs a token").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_token_is_401() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let response = get_with_authorization(&stack, id, Some("Bearer not.a.jwt")).await;
    assert_problem(response, 401, "the token is malformed").await;
    let response = get_with_authorization(&stack, id, Some("Basic dXNlcjpwYXNz")).await;
    assert_problem(response, 401, "must be `Bearer <token>`").await;
}

fn token(secret: &str, sub: &str, role: &str, exp: u64) -> String {
    let claims = json!({ "sub": sub, "role": role, "iat": exp.saturating_sub(3600), "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_401() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let expired = token(JWT_SECRET, id, "USER", now() - 10);
    let response = get_with_authorization(&stack, id, Some(&format!("Bearer {expired}"))).await;
    assert_problem(response, 401, "the token has expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_signed_with_another_key_is_401() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    // Claims that would make it an administrator, if the signature were ours.
    let forged = token("some-other-secret-of-sufficient-length", id, "ADMIN", now() + 600);
    let response = stack
        .http
        .get(stack.url("/v1/users"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "signature is not valid").await;
    let response = get_with_authorization(&stack, id, Some(&format!("Bearer {forged}"))).await;
    assert_problem(response, 401, "signature is not valid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_may_not_list_delete_read_others_or_promote_itself() {
    let stack = stack().await;
    let (me, token) = signed_in_user(&stack).await;
    let (other, _) = signed_in_user(&stack).await;
    let my_id = me["id"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();

    let response = stack
        .http
        .get(stack.url("/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "only an administrator").await;

    let response = stack
        .http
        .delete(stack.url(&format!("/v1/users/{other_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "only an administrator").await;

    let response = get_with_authorization(&stack, other_id, Some(&format!("Bearer {token}"))).await;
    assert_problem(response, 403, "only act on itself").await;

    let response = stack
        .http
        .patch(stack.url(&format!("/v1/users/{my_id}")))
        .bearer_auth(&token)
        .json(&json!({ "role": "ADMIN" }))
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "only an administrator may change a role").await;

    assert_unchanged(&stack, 3).await;
    let me_now: Value = stack
        .http
        .get(stack.url(&format!("/v1/users/{my_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me_now["role"], "USER");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_may_not_list_or_delete() {
    let stack = stack().await;
    let response = stack.http.get(stack.url("/v1/users")).send().await.unwrap();
    assert_problem(response, 401, "this needs a token").await;
    let response = stack
        .http
        .delete(stack.url(&format!("/v1/users/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "this needs a token").await;
    assert_unchanged(&stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_route_is_a_404_problem() {
    let stack = stack().await;
    let response = stack.http.get(stack.url("/v1/nothing-here")).send().await.unwrap();
    assert_problem(response, 404, "no such resource").await;
}
