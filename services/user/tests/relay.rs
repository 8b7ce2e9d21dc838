//! The outbox relay on a three-node Kafka cluster (`KAFKA_NODES=3`), with
//! one node paused (`SIGSTOP`): the node's connections stay open and nothing
//! answers on them, as when a machine hangs rather than dies. The cluster
//! moves that node's partitions to the two others once its session times
//! out; the relay must follow them there rather than wait on requests the
//! paused node will never answer.

use std::time::Duration;

use callchain_proto::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use callchain_testkit::{
    kafka::{Cluster, Kafka},
    postgres::TestDatabase,
    process::{ServiceProcess, free_addr},
};

/// Users created while the node is paused, each its own key, so the
/// paused node's partition surely has some of their events.
const USERS: usize = 24;
/// The node's session (9 s), its partitions' move, and the relay's
/// request timeout, with room to spare: well short of librdkafka's 60 s
/// socket timeout.
const DRAINED_WITHIN: Duration = Duration::from_secs(35);

async fn outbox_rows(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn create_users(client: &mut UserServiceClient<tonic::transport::Channel>, prefix: &str, count: usize) {
    for n in 0..count {
        client
            .create_user(CreateUserRequest {
                email: format!("{prefix}-{n}@example.com"),
                name: format!("{prefix} {n}"),
                password: "correct horse battery staple".into(),
                idempotency_key: String::new(),
                caller: String::new(),
            })
            .await
            .expect("the change commits, Kafka or not");
    }
}

/// Waits up to `patience` for the outbox to be empty; whether it was.
async fn drained(db: &TestDatabase, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if outbox_rows(db).await == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_drains_past_a_paused_kafka_node_to_its_partitions_new_leaders() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap()
        .expect("three Kafka nodes start");
    let kafka = Kafka::on_cluster(&cluster).await.expect("topics on the cluster");
    let db = TestDatabase::create().await.expect("a test database");
    let addr = free_addr().unwrap();
    let mut user = ServiceProcess::spawn(
        "user",
        env!("CARGO_BIN_EXE_user"),
        [
            ("DATABASE_URL", db.url().to_owned()),
            ("KAFKA_BROKERS", kafka.bootstrap().to_owned()),
            ("KAFKA_TOPIC", kafka.topic.clone()),
            ("USER_LISTEN_ADDR", addr.to_string()),
        ],
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while callchain_user::healthcheck(addr).await.is_err() {
        assert!(user.try_exit().is_none(), "the user service exited at start");
        assert!(tokio::time::Instant::now() < deadline, "the user service never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = UserServiceClient::connect(format!("http://{addr}")).await.unwrap();
    // The relay's producer knows every node before one is paused.
    create_users(&mut client, "before", USERS).await;
    assert!(
        drained(&db, Duration::from_secs(60)).await,
        "the outbox drains with every node up"
    );

    let controller = tokio::task::block_in_place(|| cluster.controller()).expect("the cluster names its controller");
    let victim = (1..=3).find(|&id| id != controller).unwrap();
    cluster.node(victim).pause().expect("the node pauses");
    let paused = tokio::time::Instant::now();
    create_users(&mut client, "paused", USERS).await;
    let flowed = drained(&db, DRAINED_WITHIN.saturating_sub(paused.elapsed())).await;
    let waiting = outbox_rows(&db).await;
    cluster.node(victim).resume().expect("the node runs again");
    assert!(
        flowed,
        "{waiting} events still wait in the outbox {DRAINED_WITHIN:?} after node {victim} was paused; the relay's log:\n{}",
        user.log_text().join("\n")
    );
    eprintln!("the outbox drained {:?} after the pause", paused.elapsed());
}
