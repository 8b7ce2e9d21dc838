//! Idempotency keys at the user service's gRPC boundary: each caller's keys
//! are its own, every field of a write (the password too) is in its
//! fingerprint, and a key stops replaying once its retention has passed.

use std::time::Duration;

use callchain_proto::user::v1::{AuthenticateRequest, CreateUserRequest, user_service_client::UserServiceClient};
use callchain_testkit::{kafka::Kafka, postgres::TestDatabase};
use tonic::{Code, transport::Channel};

/// The user service on a port-0 listener, on a database of its own.
struct Service {
    db: TestDatabase,
    client: UserServiceClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Service {
    let db = TestDatabase::create().await.expect("a test database");
    let kafka = Kafka::shared().await.expect("the test run's Kafka broker");
    let config = callchain_user::Config::for_tests(db.url(), None, kafka.bootstrap(), &kafka.topic);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(callchain_user::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while callchain_user::healthcheck(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the user service never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = UserServiceClient::connect(format!("http://{addr}")).await.unwrap();
    Service {
        db,
        client,
        _stop: stop,
    }
}

fn create(email: &str, password: &str, key: &str, caller: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        name: "Ada".into(),
        password: password.into(),
        idempotency_key: key.into(),
        caller: caller.into(),
    }
}

async fn count(db: &TestDatabase, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.pool()).await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_from_two_callers_makes_two_users() {
    let mut service = start().await;
    let first = service
        .client
        .create_user(create("ada@example.com", "correct horse one", "k-1", "user:a"))
        .await
        .expect("the first caller's write");
    let second = service
        .client
        .create_user(create("bob@example.com", "correct horse two", "k-1", "user:b"))
        .await
        .expect("the second caller's write, under its own key");
    assert_ne!(
        first.into_inner().user.unwrap().id,
        second.into_inner().user.unwrap().id
    );
    assert_eq!(count(&service.db, "SELECT count(*) FROM users").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_another_password_under_the_same_key_is_refused_and_keeps_the_first() {
    let mut service = start().await;
    service
        .client
        .create_user(create("ada@example.com", "correct horse one", "k-1", "guest:10.0.0.1"))
        .await
        .expect("the first write");
    let status = service
        .client
        .create_user(create("ada@example.com", "correct horse two", "k-1", "guest:10.0.0.1"))
        .await
        .expect_err("a key reused with another password");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let stored: (String,) = sqlx::query_as("SELECT fingerprint FROM idempotency_keys")
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert!(
        !stored.0.contains("correct horse"),
        "the password is stored: {}",
        stored.0
    );
    for (password, expected) in [("correct horse one", true), ("correct horse two", false)] {
        let answer = service
            .client
            .authenticate(AuthenticateRequest {
                email: "ada@example.com".into(),
                password: password.into(),
            })
            .await;
        assert_eq!(answer.is_ok(), expected, "{password}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_older_than_the_retention_no_longer_replays_and_is_pruned() {
    let mut service = start().await;
    service
        .client
        .create_user(create("ada@example.com", "correct horse one", "k-1", "user:a"))
        .await
        .expect("the first write");
    // Another caller's key, long expired: pruned by the next claim.
    service
        .client
        .create_user(create("cy@example.com", "correct horse one", "k-9", "user:c"))
        .await
        .expect("another caller's write");
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(service.db.pool())
        .await
        .unwrap();
    // Within the retention this is a key reused for another request (422);
    // past it, the key is new again.
    let answer = service
        .client
        .create_user(create("bob@example.com", "correct horse two", "k-1", "user:a"))
        .await;
    let user = answer.expect("an expired key claimed anew").into_inner().user.unwrap();
    assert_eq!(user.email, "bob@example.com");
    assert_eq!(
        count(
            &service.db,
            "SELECT count(*) FROM idempotency_keys WHERE created_at < now() - interval '24 hours'"
        )
        .await,
        0,
        "the expired keys were pruned"
    );
    assert_eq!(count(&service.db, "SELECT count(*) FROM idempotency_keys").await, 1);
}
