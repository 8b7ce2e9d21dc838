//! A token is only as good as its user: once the user is deleted it is
//! refused (401), and once its role is lowered it loses the powers of the
//! old role (403), well before the token expires. (Every check on the token
//! itself, one case at a time, is in `services/api/tests/rejections.rs`.)

use serde_json::json;

use crate::helpers::{assert_problem, signed_in_user, stack};

#[tokio::test(flavor = "multi_thread")]
async fn a_token_of_a_deleted_user_is_401() {
    let stack = stack().await;
    let (user, token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let read = || {
        stack
            .http
            .get(stack.url(&format!("/v1/users/{id}")))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(read().await.unwrap().status(), 200);

    let admin = stack.admin_token().await;
    let deleted = stack.delete_user(id, &admin).await;
    assert_eq!(deleted.status(), 204);
    assert_problem(read().await.unwrap(), 401, "no longer exists").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_whose_admin_role_was_lowered_keeps_no_admin_powers() {
    let stack = stack().await;
    let admin = stack.admin_token().await;
    let (user, user_token) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let set_role = |token: String, role: &'static str| {
        stack
            .http
            .patch(stack.url(&format!("/v1/users/{id}")))
            .bearer_auth(token)
            .json(&json!({ "role": role }))
            .send()
    };
    assert_eq!(set_role(admin.clone(), "ADMIN").await.unwrap().status(), 200);
    // Logged in again as an administrator: this token says ADMIN.
    let email = user["email"].as_str().unwrap();
    let promoted = stack.login(email, crate::helpers::PASSWORD).await;
    let list = |token: &str| stack.http.get(stack.url("/v1/users")).bearer_auth(token).send();
    assert_eq!(list(&promoted).await.unwrap().status(), 200);
    // The old token said USER: a raised role needs a new login.
    assert_eq!(list(&user_token).await.unwrap().status(), 403);

    assert_eq!(set_role(admin, "USER").await.unwrap().status(), 200);
    assert_problem(list(&promoted).await.unwrap(), 403, "only an administrator").await;
    let other = stack
        .register(&crate::helpers::email("other"), crate::helpers::PASSWORD)
        .await;
    let read_other = stack
        .http
        .get(stack.url(&format!("/v1/users/{}", other["id"].as_str().unwrap())))
        .bearer_auth(&promoted)
        .send()
        .await
        .unwrap();
    assert_problem(read_other, 403, "only act on itself").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_administrator_replaying_an_old_write_does_not_get_its_role_back() {
    let stack = stack().await;
    let admin = stack.admin_token().await;
    let (user, _) = signed_in_user(&stack).await;
    let id = user["id"].as_str().unwrap();
    let promoted = stack.patch_user(id, &admin, &json!({ "role": "ADMIN" })).await;
    assert_eq!(promoted.status(), 200);
    let email = user["email"].as_str().unwrap();
    let token = stack.login(email, crate::helpers::PASSWORD).await;

    // Renamed under an idempotency key while an administrator: the user
    // service keeps that answer, which says ADMIN.
    let rename = || {
        stack
            .http
            .patch(stack.url(&format!("/v1/users/{id}")))
            .bearer_auth(&token)
            .header("Idempotency-Key", "rename-once")
            .json(&json!({ "name": "Renamed" }))
            .send()
    };
    let renamed = rename().await.unwrap();
    assert_eq!(renamed.status(), 200);
    let body: serde_json::Value = renamed.json().await.unwrap();
    assert_eq!(body["role"], "ADMIN");

    let demoted = stack.patch_user(id, &admin, &json!({ "role": "USER" })).await;
    assert_eq!(demoted.status(), 200);
    // The replay answers what was stored: that is history, not the role now.
    let replayed = rename().await.unwrap();
    assert_eq!(replayed.status(), 200);

    let regained = stack.patch_user(id, &token, &json!({ "role": "ADMIN" })).await;
    assert_problem(regained, 403, "only an administrator").await;
    let list = stack
        .http
        .get(stack.url("/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(list, 403, "only an administrator").await;
    let now: serde_json::Value = stack.get_user(id, &admin).await.json().await.unwrap();
    assert_eq!(now["role"], "USER", "{now}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_failed_logins_for_one_account_let_exactly_the_limit_through_then_429() {
    let stack = stack().await;
    let (user, _) = signed_in_user(&stack).await;
    let email = user["email"].as_str().unwrap().to_owned();
    // The test settings' limit per account (LOGIN_MAX_FAILURES_PER_ACCOUNT's default).
    const LIMIT: usize = 5;
    const LOGINS: usize = 40;
    let logins = (0..LOGINS).map(|_| {
        let (http, url, email) = (stack.http.clone(), stack.url("/v1/auth/login"), email.clone());
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({ "email": email, "password": "a wrong password" }))
                .send()
                .await
                .expect("every login is answered")
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for login in logins.collect::<Vec<_>>() {
        statuses.push(login.await.expect("a login"));
    }
    let wrong = statuses.iter().filter(|status| **status == 401).count();
    let throttled = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!((wrong, throttled), (LIMIT, LOGINS - LIMIT), "{statuses:?}");
}
