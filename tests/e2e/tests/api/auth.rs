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
