//! What the API refuses at its edge, checked in process: `router()` with
//! `oneshot`, no server, no Postgres, no broker (axum's `examples/testing`).
//!
//! The user service these routers point at does not exist (nothing listens
//! on its address), so a request that got past the edge would answer 503.
//! Every 4xx here therefore also proves that the request never reached the
//! only service that writes: it changed nothing. What needs real users (a
//! taken email, an unknown id) is checked against the real stack in
//! `tests/e2e/tests/api/bad_input.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use callchain_api::{AppState, Config, router};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const SECRET: &str = "callchain-rejections-test-secret-0123456789";
/// An address where no user service listens.
const NO_USER_SERVICE: &str = "http://127.0.0.1:1";
const PASSWORD: &str = "correct horse battery";

fn app() -> Router {
    let config = Config::for_tests(
        NO_USER_SERVICE.to_owned(),
        "127.0.0.1:1".to_owned(),
        "user-events".to_owned(),
        SECRET.to_owned(),
    );
    let state = AppState::new(&config).expect("the API's state");
    router(state, &config)
}

/// An answer: its status, headers and body as JSON.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(request: Request<Body>) -> Answer {
    let response = app().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

fn request(method: Method, path: &str, token: Option<&str>, body: Option<(&str, String)>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some((content_type, body)) => builder
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body)),
        None => builder.body(Body::empty()),
    }
    .expect("a request")
}

fn post_users(body: impl Into<String>) -> Request<Body> {
    request(Method::POST, "/v1/users", None, Some(("application/json", body.into())))
}

/// Asserts a problem document with `status` whose detail mentions
/// `mentions`, and returns it.
fn assert_problem(answer: &Answer, status: u16, mentions: &str) -> Value {
    assert_eq!(answer.status.as_u16(), status, "status of {}", answer.body);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(answer.body["status"], status);
    let detail = answer.body["detail"].as_str().expect("a detail");
    assert!(detail.contains(mentions), "{detail:?} mentions {mentions:?}");
    answer.body.clone()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token for `sub` with `role`, signed with `secret`, expiring at `exp`.
fn token_with(secret: &str, sub: &str, role: &str, exp: u64) -> String {
    let claims = json!({ "sub": sub, "role": role, "iat": exp.saturating_sub(3600), "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token of this API for a new user id with `role`.
fn token(role: &str) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let token = token_with(SECRET, &id, role, now() + 600);
    (id, token)
}

#[tokio::test]
async fn malformed_json_is_400() {
    let answer = send(post_users(r#"{"email": "a@example.com", "name": "#)).await;
    assert_problem(&answer, 400, "not valid JSON");
}

#[tokio::test]
async fn a_missing_field_is_400_and_named() {
    let answer = send(post_users(r#"{"email": "a@example.com", "name": "A"}"#)).await;
    assert_problem(&answer, 400, "missing field `password`");
}

#[tokio::test]
async fn a_wrong_type_is_400_and_named() {
    let answer = send(post_users(
        r#"{"email": "a@example.com", "name": 42, "password": "long enough pw"}"#,
    ))
    .await;
    assert_problem(&answer, 400, "invalid type: integer `42`, expected a string");
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let body = json!({ "email": "big@example.com", "name": "x".repeat(64 * 1024), "password": PASSWORD });
    let answer = send(post_users(body.to_string())).await;
    assert_problem(&answer, 413, "too large");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let answer = send(request(
        Method::POST,
        "/v1/users",
        None,
        Some(("text/plain", "email=a@example.com".to_owned())),
    ))
    .await;
    assert_problem(&answer, 415, "must be JSON");
}

#[tokio::test]
async fn an_invalid_email_is_400_naming_the_field() {
    let answer = send(post_users(
        json!({ "email": "not-an-email", "name": "A", "password": PASSWORD }).to_string(),
    ))
    .await;
    let problem = assert_problem(&answer, 400, "email: must be an email address");
    assert_eq!(problem["field"], "email");
}

#[tokio::test]
async fn a_too_short_password_is_400_naming_the_field() {
    let answer = send(post_users(
        json!({ "email": "short@example.com", "name": "A", "password": "short" }).to_string(),
    ))
    .await;
    let problem = assert_problem(&answer, 400, "password: must be at least 8 characters");
    assert_eq!(problem["field"], "password");
}

#[tokio::test]
async fn a_malformed_id_is_400() {
    let (_, admin) = token("ADMIN");
    let answer = send(request(Method::GET, "/v1/users/not-a-uuid", Some(&admin), None)).await;
    assert_problem(&answer, 400, "id: must be a UUID");
}

#[tokio::test]
async fn a_missing_token_is_401() {
    let answer = send(request(
        Method::GET,
        &format!("/v1/users/{}", uuid::Uuid::now_v7()),
        None,
        None,
    ))
    .await;
    assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_problem(&answer, 401, "this needs a token");
}

#[tokio::test]
async fn a_malformed_token_is_401() {
    let path = format!("/v1/users/{}", uuid::Uuid::now_v7());
    let answer = send(request(Method::GET, &path, Some("not.a.jwt"), None)).await;
    assert_problem(&answer, 401, "the token is malformed");
    let basic = Request::get(&path)
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    assert_problem(&send(basic).await, 401, "must be `Bearer <token>`");
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    let expired = token_with(SECRET, &id, "USER", now() - 10);
    let answer = send(request(Method::GET, &format!("/v1/users/{id}"), Some(&expired), None)).await;
    assert_problem(&answer, 401, "the token has expired");
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    // Claims that would make it an administrator, if the signature were ours.
    let forged = token_with("some-other-secret-of-sufficient-length", &id, "ADMIN", now() + 600);
    let answer = send(request(Method::GET, "/v1/users", Some(&forged), None)).await;
    assert_problem(&answer, 401, "signature is not valid");
    let answer = send(request(Method::GET, &format!("/v1/users/{id}"), Some(&forged), None)).await;
    assert_problem(&answer, 401, "signature is not valid");
}

#[tokio::test]
async fn a_user_may_not_list_delete_read_others_or_promote_itself() {
    let (me, token) = token("USER");
    let other = uuid::Uuid::now_v7();
    let answer = send(request(Method::GET, "/v1/users", Some(&token), None)).await;
    assert_problem(&answer, 403, "only an administrator");
    let answer = send(request(
        Method::DELETE,
        &format!("/v1/users/{other}"),
        Some(&token),
        None,
    ))
    .await;
    assert_problem(&answer, 403, "only an administrator");
    let answer = send(request(Method::GET, &format!("/v1/users/{other}"), Some(&token), None)).await;
    assert_problem(&answer, 403, "only act on itself");
    let promote = request(
        Method::PATCH,
        &format!("/v1/users/{me}"),
        Some(&token),
        Some(("application/json", json!({ "role": "ADMIN" }).to_string())),
    );
    assert_problem(&send(promote).await, 403, "only an administrator may change a role");
}

#[tokio::test]
async fn a_guest_may_not_list_or_delete() {
    let answer = send(request(Method::GET, "/v1/users", None, None)).await;
    assert_problem(&answer, 401, "this needs a token");
    let answer = send(request(
        Method::DELETE,
        &format!("/v1/users/{}", uuid::Uuid::now_v7()),
        None,
        None,
    ))
    .await;
    assert_problem(&answer, 401, "this needs a token");
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let answer = send(request(Method::GET, "/v1/nothing-here", None, None)).await;
    assert_problem(&answer, 404, "no such resource");
}

/// The other side of every test above: a well-formed request does go on to
/// the user service, and without one answers 503 with `Retry-After`. Were the
/// edge to let bad input through, those tests would see this answer.
#[tokio::test]
async fn a_good_request_reaches_for_the_user_service_and_without_one_is_503() {
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        send(post_users(
            json!({ "email": "good@example.com", "name": "Good", "password": PASSWORD }).to_string(),
        )),
    )
    .await
    .expect("a fast answer");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
}
