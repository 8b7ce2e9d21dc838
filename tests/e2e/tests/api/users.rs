//! The user journey through the HTTP API: register, log in, read, update,
//! list, delete.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, signed_in_user, stack};

#[tokio::test(flavor = "multi_thread")]
async fn register_returns_201_with_the_user_and_never_the_password() {
    let stack = stack().await;
    let address = email("ada");
    let response = stack
        .http
        .post(stack.url("/v1/users"))
        .json(&json!({ "email": address, "name": "Ada Lovelace", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id_location = response.headers()["location"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains("argon2"), "{text}");
    let user: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(user["email"], address);
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["role"], "USER");
    assert_eq!(id_location, format!("/v1/users/{}", user["id"].as_str().unwrap()));
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    assert_eq!(stack.user_count().await, 2, "the admin and the new user");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_a_bearer_token_that_reads_the_user() {
    let stack = stack().await;
    let address = email("grace");
    let user = stack.register(&address, PASSWORD).await;

    let response = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": address.to_uppercase(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["user"]["id"], user["id"]);
    let token = body["access_token"].as_str().unwrap();

    let id = user["id"].as_str().unwrap();
    let response = stack.get_user(&id, token).await;
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read, user);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_a_wrong_password_is_401() {
    let stack = stack().await;
    let address = email("wrong");
    stack.register(&address, PASSWORD).await;
    let response = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": address, "password": "not the password" }))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "email or password is wrong").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_changes_the_name_and_the_password() {
    let stack = stack().await;
    let address = email("update");
    let (user, token) = {
        let user = stack.register(&address, PASSWORD).await;
        let token = stack.login(&address, PASSWORD).await;
        (user, token)
    };
    let id = user["id"].as_str().unwrap();
    let response = stack
        .patch_user(
            id,
            &token,
            &json!({ "name": "Renamed", "password": "a brand new password" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "Renamed");
    assert_eq!(updated["email"], address);
    assert_eq!(updated["created_at"], user["created_at"]);
    assert!(updated["updated_at"].as_str().unwrap() > user["updated_at"].as_str().unwrap());

    // The new password works, the old one no longer does.
    stack.login(&address, "a brand new password").await;
    let response = stack
        .http
        .post(stack.url("/v1/auth/login"))
        .json(&json!({ "email": address, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_users_a_page_at_a_time() {
    let stack = stack().await;
    for i in 0..3 {
        stack.register(&email(&format!("page{i}")), PASSWORD).await;
    }
    let admin = stack.admin_token().await;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = stack
            .http
            .get(stack.url("/v1/users"))
            .bearer_auth(&admin)
            .query(&[("page_size", "2")]);
        if let Some(token) = &token {
            request = request.query(&[("page_token", token)]);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "the admin and three users, each once: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_deletes_a_user_and_it_is_gone() {
    let stack = stack().await;
    let user = stack.register(&email("doomed"), PASSWORD).await;
    let id = user["id"].as_str().unwrap();
    let admin = stack.admin_token().await;

    let response = stack.delete_user(id, &admin).await;
    assert_eq!(response.status(), 204);
    assert_eq!(stack.user_count().await, 1);

    let response = stack.get_user(&id, &admin).await;
    assert_problem(response, 404, id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_may_promote_a_user() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let admin = stack.admin_token().await;
    let id = user["id"].as_str().unwrap();
    let response = stack.patch_user(id, &admin, &json!({ "role": "ADMIN" })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["role"], "ADMIN");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_openapi_are_served() {
    let stack = stack().await;
    assert_eq!(
        stack.http.get(stack.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(stack.http.get(stack.url("/readyz")).send().await.unwrap().status(), 200);
    let doc: Value = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/users", "/v1/users/{id}", "/v1/auth/login"] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["paths"]["/v1/users/{id}"].get("patch").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_when_the_user_service_is_down() {
    let mut stack = stack().await;
    stack.user.stop().await.unwrap();
    let (api, http) = (&stack.api, &stack.http);
    // Readiness is answered from the last health check, which is at most an
    // interval (0.5 s) old: within a few intervals it must say 503.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let response = loop {
        let response = http.get(format!("http://{}/readyz", api.addr)).send().await.unwrap();
        if response.status() == 503 || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        response.status(),
        503,
        "/readyz still ready 5 s after the user service stopped"
    );
    assert!(response.headers().contains_key("retry-after"));
    // And a call that needs it fails fast and clearly, not with a hang.
    let started = std::time::Instant::now();
    let response = http
        .post(format!("http://{}/v1/auth/login", api.addr))
        .json(&json!({ "email": "a@example.com", "password": "whatever-it-is" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
