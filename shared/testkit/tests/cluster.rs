//! The three-node KRaft cluster (`scripts/kafka.sh` nodes, as
//! `KAFKA_NODES=3 make dev` runs them): a topic with three replicas and
//! `min.insync.replicas=2` keeps acknowledging `acks=all` writes while one
//! broker is down, loses none of them, and is fully replicated again once
//! the broker is back.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use callchain_testkit::kafka::{Cluster, Kafka};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{BaseConsumer, Consumer as _},
    producer::{FutureProducer, FutureRecord},
};

/// How long the cluster may take to notice a dead node or to catch one up.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_of_three_keeps_acknowledging_and_serving_with_one_broker_down_and_catches_it_up() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap()
        .expect("three Kafka nodes start");
    let kafka = Kafka::on_cluster(&cluster).await.expect("topics on the cluster");
    assert_eq!(
        cluster.bootstrap().split(',').count(),
        3,
        "the bootstrap list names every node"
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut sent = BTreeSet::new();
    send(&producer, &kafka.topic, 0..200, &mut sent).await;

    // A broker that is not the controller: the quorum keeps its leader, and
    // the partitions it led move to the other two.
    let controller = tokio::task::block_in_place(|| cluster.controller()).expect("the cluster names its controller");
    let victim = (1..=3).find(|&id| id != controller).unwrap();
    tokio::task::block_in_place(|| cluster.node(victim).kill());
    wait_until(
        || cluster.under_replicated().is_ok_and(|n| n > 0),
        "the killed broker's replicas to fall out of sync",
    );

    // Every write is still acknowledged (two replicas of three are in sync).
    send(&producer, &kafka.topic, 200..400, &mut sent).await;
    assert_eq!(
        read_all(&cluster.bootstrap(), &kafka.topic, sent.len()),
        sent,
        "a consumer reads every acknowledged write"
    );

    tokio::task::block_in_place(|| cluster.node(victim).restart()).expect("the killed broker restarts");
    wait_until(
        || cluster.under_replicated().is_ok_and(|n| n == 0),
        "every partition to be fully replicated again",
    );
    send(&producer, &kafka.topic, 400..450, &mut sent).await;
    assert_eq!(read_all(&cluster.bootstrap(), &kafka.topic, sent.len()), sent);
}

/// Produces one message per number in `range` (keys spread over the
/// partitions); each must be acknowledged.
async fn send(producer: &FutureProducer, topic: &str, range: std::ops::Range<u32>, sent: &mut BTreeSet<String>) {
    let deliveries: Vec<_> = range
        .map(|n| {
            let payload = format!("message-{n}");
            let key = format!("user-{}", n % 37);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(|_| payload)
                    .map_err(|(error, _)| error)
            }
        })
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        sent.insert(delivery.expect("an acks=all write is acknowledged with one broker of three down"));
    }
}

/// Every message of `topic` from the start, read by a fresh group until
/// `expected` have come (or `PATIENCE` passes).
fn read_all(bootstrap: &str, topic: &str, expected: usize) -> BTreeSet<String> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let mut read = BTreeSet::new();
    let mut count = 0;
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        while count < expected && started.elapsed() < PATIENCE {
            match reader.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => {
                    count += 1;
                    read.insert(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
                }
                // The dead node, named in the bootstrap list, cannot be
                // reached: librdkafka says so and carries on with the others.
                Some(Err(error)) => eprintln!("reading: {error}"),
                None => {}
            }
        }
    });
    assert_eq!(count, read.len(), "no message read twice");
    read
}

fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        while !condition() {
            assert!(started.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}
