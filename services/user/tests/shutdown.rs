//! SIGTERM to the user service binary while calls are in flight: each call
//! it accepted is answered in full, its event is sent to the run's broker
//! before the process exits, its spans reach the collector, and the process
//! exits 0 within `SHUTDOWN_TIMEOUT_SECONDS`.

use std::time::Duration;

use callchain_proto::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use callchain_testkit::{
    kafka::Kafka,
    otlp::OtlpReceiver,
    postgres::TestDatabase,
    process::{ServiceProcess, free_addr},
    spans::SpanKind,
};

/// Calls in flight when SIGTERM arrives.
const CALLS: usize = 12;
/// Long enough that every call is still waiting when the signal comes.
const FAULT_LATENCY_MS: u64 = 700;
const BOUND_SECONDS: u64 = 5;

/// The user service binary on a free port with `env`, once it serves.
async fn start(mut env: Vec<(&'static str, String)>) -> (ServiceProcess, std::net::SocketAddr) {
    let addr = free_addr().unwrap();
    env.push(("USER_LISTEN_ADDR", addr.to_string()));
    env.push(("SHUTDOWN_TIMEOUT_SECONDS", BOUND_SECONDS.to_string()));
    let mut user = ServiceProcess::spawn("user", env!("CARGO_BIN_EXE_user"), env).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while callchain_user::healthcheck(addr).await.is_err() {
        assert!(user.try_exit().is_none(), "the user service exited at start");
        assert!(tokio::time::Instant::now() < deadline, "the user service never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (user, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_call_flushes_its_spans_and_exits_0_within_the_bound() {
    let db = TestDatabase::create().await.expect("a test database");
    let kafka = Kafka::shared().await.expect("the test run's Kafka broker");
    let otlp = OtlpReceiver::start().await.expect("an OTLP receiver");
    let (mut user, addr) = start(vec![
        ("DATABASE_URL", db.url().to_owned()),
        ("KAFKA_BROKERS", kafka.bootstrap().to_owned()),
        ("KAFKA_TOPIC", kafka.topic.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
        // Nothing is exported on the way unless the exit flushes it.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
        ("FAULT_LATENCY_MS", FAULT_LATENCY_MS.to_string()),
    ])
    .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let mut client = UserServiceClient::new(channel.clone());
            tokio::spawn(async move {
                client
                    .create_user(CreateUserRequest {
                        email: format!("drain-{n}@example.com"),
                        name: format!("Drain {n}"),
                        password: "correct horse battery staple".into(),
                        idempotency_key: String::new(),
                        caller: String::new(),
                    })
                    .await
            })
        })
        .collect();
    // Every call is accepted, and waiting on the injected latency.
    tokio::time::sleep(Duration::from_millis(FAULT_LATENCY_MS / 3)).await;
    user.stop_within(Duration::from_secs(BOUND_SECONDS)).await.unwrap();

    for (n, call) in calls.into_iter().enumerate() {
        let answer = call.await.unwrap();
        assert!(answer.is_ok(), "call {n} was cut off by the shutdown: {answer:?}");
    }
    let (users,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(users, CALLS as i64, "every answered call's user is stored");
    let (waiting,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(waiting, 0, "the relay sent every committed event before it stopped");

    // The spans were flushed before the process exited: no waiting here.
    let served = otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Server && span.name == "user.v1.UserService/CreateUser")
        .count();
    assert_eq!(served, CALLS, "a server span for every answered call");
    let messages = user.messages();
    assert!(
        messages.iter().any(|message| message == "user service stopped"),
        "{messages:?}"
    );
}

/// With no broker to take the events, SIGTERM still stops the service within
/// its bound: the relay's round is given up, and the events stay in the
/// outbox for the next start; the relay's Kafka client says in the log why
/// it cannot publish.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_the_broker_unreachable_exits_within_the_bound_and_keeps_the_events() {
    let db = TestDatabase::create().await.expect("a test database");
    let (mut user, addr) = start(vec![
        ("DATABASE_URL", db.url().to_owned()),
        // Nothing listens there.
        ("KAFKA_BROKERS", "127.0.0.1:1".to_owned()),
        ("KAFKA_PUBLISH_TIMEOUT_MS", "30000".to_owned()),
    ])
    .await;
    let mut client = UserServiceClient::connect(format!("http://{addr}")).await.unwrap();
    client
        .create_user(CreateUserRequest {
            email: "kept@example.com".into(),
            name: "Kept".into(),
            password: "correct horse battery staple".into(),
            idempotency_key: String::new(),
            caller: String::new(),
        })
        .await
        .expect("the change commits without the broker");
    // The relay is now waiting on a broker that never answers.
    tokio::time::sleep(Duration::from_millis(300)).await;

    user.stop_within(Duration::from_secs(BOUND_SECONDS)).await.unwrap();
    let (waiting,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(waiting, 1, "the unsent event waits in the outbox");
    // librdkafka's own account of the broker it cannot reach is in the
    // service's JSON log, not lost in the `log` crate.
    let lines = user.log_lines();
    assert!(
        lines.iter().any(|line| line["target"] == "librdkafka"
            && line["message"].as_str().is_some_and(|m| m.contains("127.0.0.1:1"))),
        "a librdkafka line about the unreachable broker: {lines:?}"
    );
}
