//! The stack's secrets (the token signing key, the database URL with its
//! password, the administrator's password) never reach a log line or an
//! exported span, whatever the services do: start, serve, refuse, fail.

use callchain_e2e::stack::{ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET};
use serde_json::json;

use crate::helpers::{PASSWORD, email, signed_in_user, stack};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line_or_an_exported_span() {
    let stack = stack().await;
    // Some of everything: logins right and wrong, reads, a refused token,
    // bad input, a write of each kind.
    let admin = stack.admin_token().await;
    let wrong = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": ADMIN_EMAIL, "password": format!("{ADMIN_PASSWORD}!") }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    for (method, path, token) in [
        ("GET", "/v1/users".to_owned(), admin.as_str()),
        ("GET", format!("/v1/users/{id}"), token.as_str()),
        ("GET", "/v1/users".to_owned(), "not.a.token"),
    ] {
        let method = method.parse().unwrap();
        stack
            .http
            .request(method, stack.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    let bad = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": email("bad"), "name": " ", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let patched = stack
        .patch_user(id, &admin, &json!({ "password": "another good password" }))
        .await;
    assert_eq!(patched.status(), 200);
    let deleted = stack.delete_user(id, &admin).await;
    assert_eq!(deleted.status(), 204);
    stack.events_of(id).await;
    stack.flush().await;

    let database_url = stack.db.url().to_owned();
    let credentials = database_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(credentials, _)| format!("{credentials}@"))
        .expect("the test database URL carries a user and password");
    let secrets = [
        ("the token signing key", JWT_SECRET.to_owned()),
        ("the database URL", database_url),
        ("the database user and password", credentials),
        ("the administrator's password", ADMIN_PASSWORD.to_owned()),
    ];

    let logs = stack.all_logs();
    let lines = logs.lines().count();
    assert!(lines > 20, "the services logged: {lines} lines");
    let spans = stack.otlp.spans();
    assert!(spans.len() > 20, "the services exported spans: {}", spans.len());
    let exported: Vec<String> = spans.iter().map(|span| format!("{span:?}")).collect();
    for (what, secret) in &secrets {
        for line in logs.lines() {
            assert!(!line.contains(secret.as_str()), "{what} in a log line: {line}");
        }
        for span in &exported {
            assert!(!span.contains(secret.as_str()), "{what} in an exported span: {span}");
        }
    }
}
