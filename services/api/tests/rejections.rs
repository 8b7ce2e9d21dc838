//! What the API refuses at its edge, checked in process: `router()` with
//! `oneshot`, no server, no Postgres, no broker (axum's `examples/testing`).
//!
//! The routers point at a stand-in user service (`StandIn`) that only knows
//! who the callers are: it answers `GetUser` (every id is a user with the
//! role `ADMIN`, so a token's own role is what counts, but for the ids it is
//! told are deleted or demoted) and `Authenticate` (one known account), and
//! refuses every write as UNAVAILABLE. A request that got past the edge to a
//! write would therefore answer 503, so every 4xx here also proves that the
//! request changed nothing. What needs real users (a taken email, an
//! unknown id, a deletion) is checked against the real stack in
//! `tests/e2e/tests/api`.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use callchain_api::{AppState, Config, router};
use callchain_domain::{Email, Role, User, UserId, UserName};
use callchain_proto::user::v1::{self as pb, user_service_server::UserService};
use serde_json::{Value, json};
use tonic::Status;
use tower::ServiceExt as _;

const SECRET: &str = "callchain-rejections-test-secret-0123456789";
const PASSWORD: &str = "correct horse battery";
/// The one account the stand-in knows the password of.
const KNOWN_EMAIL: &str = "known@example.com";

/// The user service as far as the edge needs one; see the module's docs.
#[derive(Clone, Default)]
struct StandIn {
    gone: Arc<Mutex<HashSet<String>>>,
    demoted: Arc<Mutex<HashSet<String>>>,
}

impl StandIn {
    fn user(id: &str, role: Role) -> pb::User {
        let now = chrono::Utc::now();
        pb::User::from(User {
            id: UserId::parse(id).unwrap_or_default(),
            email: Email::parse(KNOWN_EMAIL).unwrap(),
            name: UserName::parse("Stand In").unwrap(),
            role,
            created_at: now,
            updated_at: now,
        })
    }
}

fn refused<T>() -> Result<tonic::Response<T>, Status> {
    Err(Status::unavailable("the stand-in makes no writes"))
}

#[tonic::async_trait]
impl UserService for StandIn {
    async fn create_user(
        &self,
        _: tonic::Request<pb::CreateUserRequest>,
    ) -> Result<tonic::Response<pb::CreateUserResponse>, Status> {
        refused()
    }

    async fn get_user(
        &self,
        request: tonic::Request<pb::GetUserRequest>,
    ) -> Result<tonic::Response<pb::GetUserResponse>, Status> {
        let id = request.into_inner().id;
        if self.gone.lock().unwrap().contains(&id) {
            return Err(Status::not_found(format!("no user has id {id}")));
        }
        let role = if self.demoted.lock().unwrap().contains(&id) {
            Role::User
        } else {
            Role::Admin
        };
        Ok(tonic::Response::new(pb::GetUserResponse {
            user: Some(Self::user(&id, role)),
        }))
    }

    async fn update_user(
        &self,
        _: tonic::Request<pb::UpdateUserRequest>,
    ) -> Result<tonic::Response<pb::UpdateUserResponse>, Status> {
        refused()
    }

    async fn delete_user(
        &self,
        _: tonic::Request<pb::DeleteUserRequest>,
    ) -> Result<tonic::Response<pb::DeleteUserResponse>, Status> {
        refused()
    }

    async fn list_users(
        &self,
        _: tonic::Request<pb::ListUsersRequest>,
    ) -> Result<tonic::Response<pb::ListUsersResponse>, Status> {
        Err(Status::unavailable("the stand-in lists no one"))
    }

    async fn authenticate(
        &self,
        request: tonic::Request<pb::AuthenticateRequest>,
    ) -> Result<tonic::Response<pb::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        if request.email == KNOWN_EMAIL && request.password == PASSWORD {
            let id = uuid::Uuid::now_v7().to_string();
            return Ok(tonic::Response::new(pb::AuthenticateResponse {
                user: Some(Self::user(&id, Role::User)),
            }));
        }
        Err(Status::unauthenticated("email or password is wrong"))
    }
}

/// A router on a fresh stand-in, and the stand-in, with `configure` applied
/// to the test defaults.
async fn app_with(configure: impl FnOnce(&mut Config)) -> (Router, StandIn) {
    let stand_in = StandIn::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = pb::user_service_server::UserServiceServer::new(stand_in.clone());
    // The API sends calls only to a replica whose health check passes.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::user_service_server::UserServiceServer<StandIn>>()
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut config = Config::for_tests(format!("http://{addr}"), SECRET.to_owned());
    configure(&mut config);
    let state = AppState::new(&config).expect("the API's state");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.user_service_replicas_serving() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stand-in never passed its health check"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (router(state, &config), stand_in)
}

async fn app() -> Router {
    app_with(|_| {}).await.0
}

/// An answer: its status, headers and body as JSON.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send_to(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

async fn send(request: Request<Body>) -> Answer {
    send_to(&app().await, request).await
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

fn json_body(body: Value) -> Option<(&'static str, String)> {
    Some(("application/json", body.to_string()))
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

/// The claims of a valid token of this API for `sub` with `role`.
fn claims(sub: &str, role: &str) -> Value {
    let now = now();
    json!({
        "sub": sub, "role": role, "iss": "callchain-api", "aud": "callchain-api",
        "iat": now, "nbf": now, "exp": now + 600,
    })
}

/// `claims` signed with `secret` (HS256).
fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token of this API for a new user id with `role`.
fn token(role: &str) -> (String, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let token = sign(&claims(&id, role), SECRET);
    (id, token)
}

/// `token` with its header replaced by `header` (base64url) and signed
/// again with this API's key and `HS256`, whatever the header says.
fn with_header(token: &str, header: &str) -> String {
    let claims = token.split('.').nth(1).unwrap();
    let message = format!("{header}.{claims}");
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// GET of the caller's own record with `token`.
async fn read_self(id: &str, token: &str) -> Answer {
    send(request(Method::GET, &format!("/v1/users/{id}"), Some(token), None)).await
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

// The token checks, one case at a time. Each token is otherwise valid, so
// the one thing wrong with it is what is refused.

#[tokio::test]
async fn a_valid_token_reads_its_own_user() {
    let (id, token) = token("USER");
    let answer = read_self(&id, &token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["id"], id);
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    let mut expired = claims(&id, "USER");
    expired["exp"] = json!(now() - 10);
    assert_problem(
        &read_self(&id, &sign(&expired, SECRET)).await,
        401,
        "the token has expired",
    );
}

#[tokio::test]
async fn a_token_not_valid_yet_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    let mut early = claims(&id, "USER");
    early["nbf"] = json!(now() + 300);
    assert_problem(
        &read_self(&id, &sign(&early, SECRET)).await,
        401,
        "the token is not valid yet",
    );
}

#[tokio::test]
async fn a_token_of_another_issuer_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    let mut foreign = claims(&id, "USER");
    foreign["iss"] = json!("someone-else");
    assert_problem(
        &read_self(&id, &sign(&foreign, SECRET)).await,
        401,
        "not issued by this API",
    );
    foreign.as_object_mut().unwrap().remove("iss");
    assert_problem(
        &read_self(&id, &sign(&foreign, SECRET)).await,
        401,
        "the token is malformed",
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    let mut elsewhere = claims(&id, "USER");
    elsewhere["aud"] = json!("another-api");
    assert_problem(
        &read_self(&id, &sign(&elsewhere, SECRET)).await,
        401,
        "not meant for this API",
    );
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_401() {
    let (id, token) = token("ADMIN");
    // {"alg":"none","typ":"JWT"}, the claims as they were, no signature.
    let claims = token.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    assert_problem(&read_self(&id, &unsigned).await, 401, "the token is malformed");
    let answer = send(request(Method::GET, "/v1/users", Some(&unsigned), None)).await;
    assert_problem(&answer, 401, "the token is malformed");
}

#[tokio::test]
async fn an_rs256_header_over_an_hmac_signature_is_401() {
    // Algorithm confusion: the header claims RS256, the signature is an
    // HMAC with our key; a verifier that followed the header would accept.
    let (id, token) = token("ADMIN");
    let confused = with_header(&token, "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9");
    assert_problem(&read_self(&id, &confused).await, 401, "must be signed with HS256");
    // HS512 with the same key is refused too: one algorithm only.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(&id, "ADMIN"),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_problem(&read_self(&id, &hs512).await, 401, "must be signed with HS256");
}

#[tokio::test]
async fn a_tampered_token_is_401() {
    let (id, token) = token("USER");
    let admin_claims = sign(&claims(&id, "ADMIN"), "not-our-key-but-long-enough-0123456789");
    // Our header and signature around claims that say ADMIN.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = admin_claims.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    let answer = send(request(Method::GET, "/v1/users", Some(&tampered), None)).await;
    assert_problem(&answer, 401, "signature is not valid");
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_401() {
    let id = uuid::Uuid::now_v7().to_string();
    // Claims that would make it an administrator, if the signature were ours.
    let forged = sign(&claims(&id, "ADMIN"), "some-other-secret-of-sufficient-length");
    let answer = send(request(Method::GET, "/v1/users", Some(&forged), None)).await;
    assert_problem(&answer, 401, "signature is not valid");
    let answer = send(request(Method::GET, &format!("/v1/users/{id}"), Some(&forged), None)).await;
    assert_problem(&answer, 401, "signature is not valid");
}

#[tokio::test]
async fn a_token_whose_user_was_deleted_is_401() {
    let (app, stand_in) = app_with(|_| {}).await;
    let (id, token) = token("USER");
    stand_in.gone.lock().unwrap().insert(id.clone());
    let answer = send_to(
        &app,
        request(Method::GET, &format!("/v1/users/{id}"), Some(&token), None),
    )
    .await;
    assert_problem(&answer, 401, "no longer exists");
}

#[tokio::test]
async fn a_token_whose_role_was_lowered_has_no_admin_powers() {
    let (app, stand_in) = app_with(|_| {}).await;
    let (id, token) = token("ADMIN");
    stand_in.demoted.lock().unwrap().insert(id.clone());
    let answer = send_to(&app, request(Method::GET, "/v1/users", Some(&token), None)).await;
    assert_problem(&answer, 403, "only an administrator");
    let other = uuid::Uuid::now_v7();
    let answer = send_to(
        &app,
        request(Method::GET, &format!("/v1/users/{other}"), Some(&token), None),
    )
    .await;
    assert_problem(&answer, 403, "only act on itself");
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

#[tokio::test]
async fn an_administrator_may_not_delete_itself_or_lower_its_own_role() {
    let (me, admin) = token("ADMIN");
    let answer = send(request(Method::DELETE, &format!("/v1/users/{me}"), Some(&admin), None)).await;
    assert_problem(&answer, 403, "may not delete itself");
    let demote = request(
        Method::PATCH,
        &format!("/v1/users/{me}"),
        Some(&admin),
        json_body(json!({ "role": "USER" })),
    );
    assert_problem(&send(demote).await, 403, "may not lower its own role");
}

// The order of checks: authentication (401), then authorization (403),
// then input (400, 413, 415), whatever else is wrong with the request.

#[tokio::test]
async fn a_bad_idempotency_key_without_a_token_is_401() {
    let id = uuid::Uuid::now_v7();
    for method in [Method::PATCH, Method::DELETE] {
        let mut bad = request(
            method.clone(),
            &format!("/v1/users/{id}"),
            None,
            json_body(json!({ "name": "X" })),
        );
        bad.headers_mut()
            .insert("idempotency-key", "has spaces in it".parse().unwrap());
        assert_problem(&send(bad).await, 401, "this needs a token");
    }
}

#[tokio::test]
async fn a_bad_idempotency_key_on_someone_elses_user_is_403() {
    let (_, token) = token("USER");
    let other = uuid::Uuid::now_v7();
    for method in [Method::PATCH, Method::DELETE] {
        let mut bad = request(
            method.clone(),
            &format!("/v1/users/{other}"),
            Some(&token),
            json_body(json!({ "name": "X" })),
        );
        bad.headers_mut()
            .insert("idempotency-key", "has spaces in it".parse().unwrap());
        assert_eq!(send(bad).await.status, StatusCode::FORBIDDEN, "{method}");
    }
}

#[tokio::test]
async fn a_bad_idempotency_key_of_an_allowed_caller_is_400_naming_the_header() {
    let (me, token) = token("USER");
    let mut bad = request(
        Method::PATCH,
        &format!("/v1/users/{me}"),
        Some(&token),
        json_body(json!({ "name": "X" })),
    );
    bad.headers_mut()
        .insert("idempotency-key", "k".repeat(201).parse().unwrap());
    let problem = assert_problem(&send(bad).await, 400, "1 to 200 visible ASCII characters");
    assert_eq!(problem["field"], "Idempotency-Key");
}

#[tokio::test]
async fn a_bad_body_is_401_without_a_token_and_403_on_someone_else() {
    let other = uuid::Uuid::now_v7();
    let path = format!("/v1/users/{other}");
    let oversized = json!({ "name": "x".repeat(64 * 1024) }).to_string();
    let bodies = [
        ("application/json", "{ not json".to_owned()),
        ("text/plain", "name=X".to_owned()),
        ("application/json", oversized),
        ("application/json", json!({ "name": " padded " }).to_string()),
    ];
    let (_, user) = token("USER");
    for (content_type, body) in bodies {
        let guest = request(Method::PATCH, &path, None, Some((content_type, body.clone())));
        assert_eq!(send(guest).await.status, StatusCode::UNAUTHORIZED, "{content_type}");
        let stranger = request(Method::PATCH, &path, Some(&user), Some((content_type, body)));
        assert_eq!(send(stranger).await.status, StatusCode::FORBIDDEN, "{content_type}");
    }
    let list = request(Method::GET, "/v1/users?page_size=1000&nonsense=1", None, None);
    assert_eq!(send(list).await.status, StatusCode::UNAUTHORIZED);
    let list = request(Method::GET, "/v1/users?page_size=1000&nonsense=1", Some(&user), None);
    assert_eq!(send(list).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_user_naming_a_malformed_id_is_403_and_an_admin_400() {
    let (_, user) = token("USER");
    let answer = send(request(Method::GET, "/v1/users/not-a-uuid", Some(&user), None)).await;
    assert_problem(&answer, 403, "only act on itself");
    let (_, admin) = token("ADMIN");
    let answer = send(request(Method::DELETE, "/v1/users/not-a-uuid", Some(&admin), None)).await;
    assert_problem(&answer, 400, "id: must be a UUID");
}

// Text Postgres would refuse (NUL) or that the domain does not take
// (control characters) is a 400 naming its field, on every text field.

#[tokio::test]
async fn a_nul_in_any_field_of_a_registration_is_400_naming_it() {
    let good = json!({ "email": "nul@example.com", "name": "Nul", "password": PASSWORD });
    for (field, value) in [
        ("email", "nul\\u0000@example.com"),
        ("name", "N\\u0000l"),
        ("password", "correct\\u0000horse"),
    ] {
        let mut body = good.clone();
        body[field] = json!("PLACEHOLDER");
        let body = body.to_string().replace("PLACEHOLDER", value);
        let problem = assert_problem(
            &send(post_users(body)).await,
            400,
            "must not contain control characters",
        );
        assert_eq!(problem["field"], field);
    }
}

#[tokio::test]
async fn a_nul_in_a_login_is_400_naming_the_field() {
    for (field, body) in [
        (
            "email",
            r#"{"email": "ada\u0000@example.com", "password": "correct horse battery"}"#,
        ),
        (
            "password",
            r#"{"email": "ada@example.com", "password": "correct\u0000horse"}"#,
        ),
    ] {
        let login = request(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(("application/json", body.to_owned())),
        );
        let problem = assert_problem(&send(login).await, 400, "must not contain control characters");
        assert_eq!(problem["field"], field);
    }
}

#[tokio::test]
async fn a_nul_in_any_field_of_an_update_is_400_naming_it() {
    let (me, token) = token("ADMIN");
    for (field, value) in [
        ("email", "nul\\u0000@example.com"),
        ("name", "N\\u0000l"),
        ("password", "correct\\u0000horse"),
        ("role", "ADMIN\\u0000"),
    ] {
        let body = format!(r#"{{"{field}": "{value}"}}"#);
        let update = request(
            Method::PATCH,
            &format!("/v1/users/{me}"),
            Some(&token),
            Some(("application/json", body)),
        );
        let problem = assert_problem(&send(update).await, 400, field);
        assert_eq!(problem["field"], field);
    }
}

#[tokio::test]
async fn an_update_that_changes_nothing_or_sends_null_is_400() {
    let (me, token) = token("USER");
    let path = format!("/v1/users/{me}");
    let empty = request(Method::PATCH, &path, Some(&token), json_body(json!({})));
    assert_problem(&send(empty).await, 400, "nothing to update");
    let null = request(Method::PATCH, &path, Some(&token), json_body(json!({ "name": null })));
    assert_problem(&send(null).await, 400, "invalid type: null");
}

#[tokio::test]
async fn a_listing_past_its_limits_is_400_naming_the_parameter() {
    let (_, admin) = token("ADMIN");
    let answer = send(request(Method::GET, "/v1/users?page_size=101", Some(&admin), None)).await;
    assert_eq!(assert_problem(&answer, 400, "between 1 and 100")["field"], "page_size");
    let answer = send(request(Method::GET, "/v1/users?page_token=nope", Some(&admin), None)).await;
    assert_eq!(assert_problem(&answer, 400, "must be a UUID")["field"], "page_token");
}

#[tokio::test]
async fn a_method_a_path_does_not_answer_is_a_405_problem_with_allow() {
    let answer = send(request(Method::PUT, "/v1/auth/login", None, None)).await;
    assert_problem(&answer, 405, "does not answer that method");
    assert_eq!(answer.headers[header::ALLOW], "POST");
}

// Login throttling: per account and per client address.

fn login(email: &str, password: &str) -> Request<Body> {
    request(
        Method::POST,
        "/v1/auth/login",
        None,
        json_body(json!({ "email": email, "password": password })),
    )
}

fn login_from(address: [u8; 4], email: &str, password: &str) -> Request<Body> {
    let mut request = login(email, password);
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((address, 40_000))));
    request
}

#[tokio::test]
async fn thirty_wrong_passwords_for_one_account_are_throttled_after_five() {
    let app = app().await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(send_to(&app, login(KNOWN_EMAIL, "not the password")).await);
    }
    for answer in &statuses[..5] {
        assert_problem(answer, 401, "email or password is wrong");
    }
    for answer in &statuses[5..] {
        assert_problem(answer, 429, "too many failed logins");
        let retry_after: u64 = answer.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry_after), "Retry-After: {retry_after}");
    }
    // The right password does not get through either until the wait is over.
    assert_eq!(
        send_to(&app, login(KNOWN_EMAIL, PASSWORD)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_unknown_account_is_throttled_exactly_like_a_known_one() {
    let app = app().await;
    let mut answers = Vec::new();
    for email in [KNOWN_EMAIL, "nobody@example.com"] {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let answer = send_to(&app, login(email, "not the password")).await;
            statuses.push(answer.status.as_u16());
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                answers.push(answer.body.clone());
            }
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429], "{email}");
    }
    let detail = |body: &Value| body["detail"].as_str().unwrap().split(';').next().unwrap().to_owned();
    assert_eq!(detail(&answers[0]), detail(&answers[2]), "the same words for both");
}

#[tokio::test]
async fn a_successful_login_resets_its_accounts_count() {
    let app = app().await;
    for _ in 0..4 {
        assert_eq!(send_to(&app, login(KNOWN_EMAIL, "not the password")).await.status, 401);
    }
    assert_eq!(send_to(&app, login(KNOWN_EMAIL, PASSWORD)).await.status, 200);
    for _ in 0..4 {
        assert_eq!(send_to(&app, login(KNOWN_EMAIL, "not the password")).await.status, 401);
    }
    assert_eq!(send_to(&app, login(KNOWN_EMAIL, PASSWORD)).await.status, 200);
}

#[tokio::test]
async fn one_address_guessing_across_accounts_is_throttled() {
    let (app, _) = app_with(|config| config.login_limits.per_address = 8).await;
    for i in 0..8 {
        let answer = send_to(
            &app,
            login_from([192, 0, 2, 1], &format!("u{i}@example.com"), "guess-guess"),
        )
        .await;
        assert_eq!(answer.status, 401);
    }
    let answer = send_to(&app, login_from([192, 0, 2, 1], "fresh@example.com", "guess-guess")).await;
    assert_problem(&answer, 429, "too many failed logins");
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    // Another address is not held to this one's count.
    let answer = send_to(&app, login_from([192, 0, 2, 2], "fresh@example.com", "guess-guess")).await;
    assert_eq!(answer.status, 401);
}

/// The other side of every test above: a well-formed write does go on to
/// the user service, and as the stand-in refuses it, answers 503 with
/// `Retry-After`. Were the edge to let bad input through, those tests would
/// see this answer.
#[tokio::test]
async fn a_good_request_reaches_for_the_user_service_and_a_refused_write_is_503() {
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
