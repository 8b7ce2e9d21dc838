//! The consumer against real parts: Apache Kafka (the run's shared broker,
//! with topics of each test's own), the machine's Postgres, and (for the
//! spans) the in-process OTLP receiver.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    time::Duration,
};

use callchain_events::{EventType, UserEvent, UserPayload, headers};
use callchain_testkit::{
    kafka::{Cluster, Kafka},
    otlp::OtlpReceiver,
    postgres::{TestDatabase, admin_url},
    process::{ServiceProcess, free_addr},
    service::{ServiceHandle, wait_until},
    spans::{SpanKind, Trace},
};
use chrono::Utc;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _, StreamConsumer},
    message::{Header, Headers as _, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::{Connection as _, Executor as _, PgConnection};
use uuid::Uuid;

/// How long any wait in these tests may last before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Topics and a database for one test, and a producer onto the topics.
struct Parts {
    db: TestDatabase,
    kafka: Kafka,
    producer: FutureProducer,
}

impl Parts {
    async fn start() -> Self {
        Self::on(Kafka::shared().await.expect("the test run's Kafka broker")).await
    }

    async fn on(kafka: Kafka) -> Self {
        let db = TestDatabase::create().await.expect("a test database");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            // A request a paused broker never answers is given up after 5 s,
            // its connection after 10 s (not librdkafka's 60 s), and the
            // message is sent to the partition's new leader within its 30 s.
            .set("request.timeout.ms", "5000")
            .set("socket.timeout.ms", "10000")
            .create()
            .expect("a producer");
        Self { db, kafka, producer }
    }

    /// Starts a consumer (the test's topic and group, batches of
    /// `batch_size`) and waits until it answers `/healthz`.
    async fn consumer(&self, batch_size: usize, otlp_endpoint: Option<String>) -> ServiceHandle {
        let mut config = callchain_consumer::Config::for_tests(
            self.db.url(),
            self.kafka.bootstrap(),
            &self.kafka.topic,
            &self.kafka.group,
        );
        config.batch_size = batch_size;
        let mut consumer = ServiceHandle::spawn("consumer", otlp_endpoint, move |listener, shutdown| {
            callchain_consumer::run(config, listener, async move {
                let _ = shutdown.await;
            })
        })
        .expect("the consumer starts");
        let addr = consumer.addr;
        wait_until(&mut consumer, || callchain_consumer::healthcheck(addr))
            .await
            .expect("the consumer is healthy");
        consumer
    }

    /// Produces one message to `topic`; returns its partition and offset.
    async fn produce(&self, key: &str, payload: &[u8], headers: OwnedHeaders) -> (i32, i64) {
        let topic = &self.kafka.topic;
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(error, _)| panic!("producing to {topic} failed: {error}"));
        (delivery.partition, delivery.offset)
    }

    /// Produces `event` as the API does: keyed by user, with its id, type and
    /// (when given) trace context in the headers.
    async fn produce_event(&self, event: &UserEvent, traceparent: Option<&str>) -> (i32, i64) {
        self.produce(&event.key(), &event.to_json(), event_headers(event, traceparent))
            .await
    }

    async fn row_count(&self) -> i64 {
        // Until the consumer has migrated, the table does not exist: none.
        sqlx::query_scalar("SELECT count(*) FROM user_events")
            .fetch_one(self.db.pool())
            .await
            .unwrap_or(0)
    }

    /// Waits until the row of `event_id` is there and returns its
    /// `(trace_id, kafka_partition, kafka_offset)`.
    async fn row_of(&self, event_id: Uuid) -> (Option<String>, i32, i64) {
        eventually(&format!("the row of event {event_id}"), || async {
            sqlx::query_as("SELECT trace_id, kafka_partition, kafka_offset FROM user_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(self.db.pool())
                .await
                .ok()
                .flatten()
        })
        .await
    }

    async fn rows_of(&self, event_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM user_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(self.db.pool())
            .await
            .expect("counting an event's rows")
    }

    /// The offset the consumer's group has committed on `partition` of
    /// the test's topic, if any: asked as the group, without joining it.
    async fn committed_offset(&self, partition: i32) -> Option<i64> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .set("group.id", &self.kafka.group)
            .create()
            .expect("an offset probe");
        let topic = self.kafka.topic.clone();
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, partition);
        let committed =
            tokio::task::spawn_blocking(move || probe.committed_offsets(partitions, Duration::from_secs(10)))
                .await
                .unwrap()
                .expect("reading the committed offsets");
        match committed.find_partition(&topic, partition)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    /// Waits for the first dead letter and returns it.
    async fn first_dead_letter(&self) -> OwnedMessage {
        let reader: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.kafka.bootstrap())
            .set("group.id", format!("dlq-reader-{}", Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a DLQ reader");
        let dlq = &self.kafka.dlq;
        reader.subscribe(&[dlq]).expect("subscribing to the DLQ");
        let message = tokio::time::timeout(PATIENCE, reader.recv())
            .await
            .unwrap_or_else(|_| panic!("no message on {dlq} within {PATIENCE:?}"))
            .expect("reading the DLQ");
        message.detach()
    }
}

/// The event of `user_id`'s write number `sequence` (1: its creation).
fn user_event(user_id: Uuid, sequence: u64) -> UserEvent {
    UserEvent::new(
        EventType::UserCreated,
        Uuid::now_v7(),
        Utc::now(),
        user_id,
        sequence,
        UserPayload {
            email: "ada@example.com".into(),
            name: "Ada".into(),
            role: "USER".into(),
        },
    )
}

fn event_headers(event: &UserEvent, traceparent: Option<&str>) -> OwnedHeaders {
    let event_id = event.event_id.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_ID,
            value: Some(&event_id),
        })
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(event.event_type.as_str()),
        });
    match traceparent {
        Some(traceparent) => headers.insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        }),
        None => headers,
    }
}

/// A fresh W3C trace context: `(traceparent, trace id, span id)`.
fn trace_context() -> (String, String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let span_id = trace_id[..16].to_owned();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Polls `probe` until it yields something, up to [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}, in vain"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn get_json(url: String) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_produced_event_is_written_once_with_its_trace_id() {
    let parts = Parts::start().await;
    let _consumer = parts.consumer(500, None).await;
    let user_id = Uuid::now_v7();
    let event = user_event(user_id, 1);
    let (traceparent, trace_id, _) = trace_context();

    let (partition, offset) = parts.produce_event(&event, Some(&traceparent)).await;
    let row = parts.row_of(event.event_id).await;
    assert_eq!(row, (Some(trace_id), partition, offset));

    // The same event again, then another of the same user (same partition,
    // so read after it): once that one is written, the replay was handled.
    parts.produce_event(&event, Some(&traceparent)).await;
    let next = user_event(user_id, 2);
    parts.produce_event(&next, None).await;
    let (next_trace_id, ..) = parts.row_of(next.event_id).await;

    assert_eq!(
        parts.rows_of(event.event_id).await,
        1,
        "a replayed event is written once"
    );
    assert_eq!(next_trace_id, None, "an event without trace context has no trace id");
    let (event_type, payload): (String, serde_json::Value) =
        sqlx::query_as("SELECT event_type, payload FROM user_events WHERE event_id = $1")
            .bind(event.event_id)
            .fetch_one(parts.db.pool())
            .await
            .unwrap();
    assert_eq!(event_type, "user.created");
    assert_eq!(
        payload,
        serde_json::json!({ "email": "ada@example.com", "name": "Ada", "role": "USER" })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_message_goes_to_the_dlq_with_its_headers_and_the_next_one_is_written() {
    let parts = Parts::start().await;
    let consumer = parts.consumer(500, None).await;
    let user_id = Uuid::now_v7();
    let key = user_id.to_string();
    let (traceparent, ..) = trace_context();
    let garbage_headers = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some(&traceparent),
        })
        .insert(Header {
            key: "x-custom",
            value: Some("kept as it was"),
        });

    let (partition, offset) = parts.produce(&key, b"{not json", garbage_headers).await;
    let good = user_event(user_id, 1);
    parts.produce_event(&good, None).await;

    let (_, good_partition, _) = parts.row_of(good.event_id).await;
    assert_eq!(good_partition, partition, "both messages share their key's partition");
    let dead = parts.first_dead_letter().await;
    assert_eq!(dead.key(), Some(key.as_bytes()));
    assert_eq!(dead.payload(), Some(&b"{not json"[..]));
    assert_eq!(header(&dead, "traceparent"), Some(traceparent));
    assert_eq!(header(&dead, "x-custom").as_deref(), Some("kept as it was"));
    let error = header(&dead, headers::ERROR).expect("an error header");
    assert!(error.contains("not a user event"), "error header: {error}");
    assert_eq!(
        header(&dead, headers::ORIGINAL_TOPIC).as_deref(),
        Some(parts.kafka.topic.as_str())
    );
    assert_eq!(header(&dead, headers::ORIGINAL_PARTITION), Some(partition.to_string()));
    assert_eq!(header(&dead, headers::ORIGINAL_OFFSET), Some(offset.to_string()));

    let (status, health) = get_json(format!("http://{}/healthz", consumer.addr))
        .await
        .expect("/healthz answers");
    assert_eq!(status, 200);
    assert_eq!(health["dead_letters"], 1, "{health}");
    assert_eq!(health["events_written"], 1, "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_schema_version_goes_to_the_dlq() {
    let parts = Parts::start().await;
    let _consumer = parts.consumer(500, None).await;
    let user_id = Uuid::now_v7();
    let future = user_event(user_id, 1);
    let mut json = serde_json::to_value(&future).unwrap();
    json["schema_version"] = 3.into();

    let (_, offset) = parts
        .produce(
            &future.key(),
            &serde_json::to_vec(&json).unwrap(),
            event_headers(&future, None),
        )
        .await;
    let next = user_event(user_id, 2);
    parts.produce_event(&next, None).await;
    parts.row_of(next.event_id).await;

    let dead = parts.first_dead_letter().await;
    let error = header(&dead, headers::ERROR).expect("an error header");
    assert!(error.contains("schema version 3"), "error header: {error}");
    assert_eq!(header(&dead, headers::EVENT_ID), Some(future.event_id.to_string()));
    assert_eq!(header(&dead, headers::ORIGINAL_OFFSET), Some(offset.to_string()));
    assert_eq!(
        parts.rows_of(future.event_id).await,
        0,
        "an unread event is not written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_postgres_refuses_goes_to_the_dlq_and_the_rest_of_its_batch_is_written() {
    let parts = Parts::start().await;
    let user_id = Uuid::now_v7();
    // A time chrono holds but Postgres's timestamptz does not (before 4713 BC).
    let before = user_event(user_id, 1);
    let mut poisoned = user_event(user_id, 2);
    poisoned.occurred_at = chrono::DateTime::from_timestamp(-220_000_000_000, 0).unwrap();
    let after = user_event(user_id, 3);
    for event in [&before, &poisoned, &after] {
        parts.produce_event(event, None).await;
    }

    // Started after producing, so the three most likely arrive in one batch.
    let _consumer = parts.consumer(500, None).await;
    parts.row_of(before.event_id).await;
    parts.row_of(after.event_id).await;

    let dead = parts.first_dead_letter().await;
    assert_eq!(header(&dead, headers::EVENT_ID), Some(poisoned.event_id.to_string()));
    let error = header(&dead, headers::ERROR).expect("an error header");
    assert!(error.contains("Postgres refused"), "error header: {error}");
    assert_eq!(parts.rows_of(poisoned.event_id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_with_a_nul_in_its_text_goes_to_the_dlq_naming_the_field_before_postgres_sees_it() {
    let parts = Parts::start().await;
    let user_id = Uuid::now_v7();
    // A NUL parses as JSON, but Postgres cannot store it in jsonb: the
    // domain's rules refuse it on reading, as the API and the user service do.
    let mut poisoned = user_event(user_id, 1);
    poisoned.payload.name = "Ada\u{0}".into();
    let after = user_event(user_id, 2);
    parts.produce_event(&poisoned, None).await;
    parts.produce_event(&after, None).await;

    let _consumer = parts.consumer(500, None).await;
    parts.row_of(after.event_id).await;
    let dead = parts.first_dead_letter().await;
    assert_eq!(header(&dead, headers::EVENT_ID), Some(poisoned.event_id.to_string()));
    let error = header(&dead, headers::ERROR).expect("an error header");
    assert!(
        error.contains("name: must not contain control characters"),
        "error header: {error}"
    );
    assert!(!error.contains("Postgres"), "refused before the database: {error}");
    assert_eq!(parts.rows_of(poisoned.event_id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_consumer_replays_and_every_users_events_are_stored_once_each_in_sequence_order() {
    const EVENTS: usize = 2_000;
    const USERS: usize = 97;
    let parts = Parts::start().await;
    // Event i is write number i / USERS + 1 of user i % USERS.
    let events: Vec<UserEvent> = (0..EVENTS)
        .map(|i| user_event(Uuid::from_u128((i % USERS) as u128 + 1), (i / USERS) as u64 + 1))
        .collect();
    let sends = events.iter().map(|event| parts.produce_event(event, None));
    futures::future::join_all(sends).await;

    // Small batches, so there is a middle of the stream to kill it in.
    let mut first = parts.consumer(10, None).await;
    let written_before_kill = eventually("some rows, from the first consumer", || async {
        let count = parts.row_count().await;
        (count > 0).then_some(count)
    })
    .await;
    first.kill();
    assert!(
        (written_before_kill as usize) < EVENTS,
        "the first consumer wrote all {EVENTS} rows before it could be killed"
    );

    let _second = parts.consumer(500, None).await;
    eventually(&format!("{EVENTS} rows"), || async {
        (parts.row_count().await as usize >= EVENTS).then_some(())
    })
    .await;

    // The primary key already forbids a second row of one event, so what
    // a replay could break is each user's order and count: every user's
    // rows, in the order they were stored, are its writes 1, 2, ... n.
    let stored: Vec<(Uuid, Uuid, i64)> =
        sqlx::query_as("SELECT user_id, event_id, sequence FROM user_events ORDER BY written_at, kafka_offset")
            .fetch_all(parts.db.pool())
            .await
            .unwrap();
    let mut per_user: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for (user_id, _, sequence) in &stored {
        per_user.entry(*user_id).or_default().push(*sequence);
    }
    assert_eq!(per_user.len(), USERS);
    for (n, (user_id, sequences)) in per_user.iter().enumerate() {
        let writes = (EVENTS - n).div_ceil(USERS) as i64;
        assert_eq!(
            sequences,
            &(1..=writes).collect::<Vec<_>>(),
            "user {user_id}: its events once each, in the order of its writes"
        );
    }
    let produced: BTreeSet<Uuid> = events.iter().map(|event| event.event_id).collect();
    assert_eq!(
        stored.iter().map(|(_, event_id, _)| *event_id).collect::<BTreeSet<_>>(),
        produced
    );
}

/// The topic may hold one user's events out of order (a producer that
/// retried a round after a later event was acknowledged): e2, e1, e2. The
/// consumer never stores an older event after a newer one of the same
/// user; it records the older one apart, once, and skips the duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_older_than_one_stored_for_its_user_is_recorded_apart_once_and_not_stored() {
    let parts = Parts::start().await;
    let user_id = Uuid::now_v7();
    let [first, second, third] = [1, 2, 3].map(|sequence| user_event(user_id, sequence));
    for event in [&second, &first, &second, &first, &third] {
        parts.produce_event(event, None).await;
    }
    // Started after producing, so the five most likely arrive in one batch;
    // the same events once more arrive in later batches.
    let _consumer = parts.consumer(500, None).await;
    parts.row_of(third.event_id).await;
    let marker = user_event(user_id, 4);
    for event in [&first, &second, &marker] {
        parts.produce_event(event, None).await;
    }
    parts.row_of(marker.event_id).await;

    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM user_events WHERE user_id = $1 ORDER BY written_at, kafka_offset")
            .bind(user_id)
            .fetch_all(parts.db.pool())
            .await
            .unwrap();
    assert_eq!(stored, [2, 3, 4], "never an older event after a newer one, never twice");
    let stale: Vec<(Uuid, i64, i64)> =
        sqlx::query_as("SELECT event_id, sequence, newer_sequence FROM stale_user_events WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(parts.db.pool())
            .await
            .unwrap();
    assert_eq!(
        stale,
        [(first.event_id, 1, 3)],
        "the late event is recorded once, beside its user's newest stored (of its batch)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgres_is_unreachable_nothing_is_committed_and_writing_resumes() {
    let parts = Parts::start().await;
    let consumer = parts.consumer(500, None).await;
    let readyz = format!("http://{}/readyz", consumer.addr);
    let (status, _) = get_json(readyz.clone()).await.expect("/readyz answers");
    assert_eq!(status, 200, "ready while Postgres answers");

    // Postgres refuses the consumer's database from now on.
    let database = parts.db.url().rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS false"#
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )))
        .await
        .unwrap();
    let response = eventually("/readyz to answer 503", || async {
        let response = reqwest::get(&readyz).await.ok()?;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert_eq!(response.headers()["retry-after"], "1");

    let user_id = Uuid::now_v7();
    let events: Vec<UserEvent> = (1..=20).map(|sequence| user_event(user_id, sequence)).collect();
    let mut produced = Vec::new();
    for event in &events {
        produced.push(parts.produce_event(event, None).await);
    }
    let (partition, first_offset) = produced[0];
    let (_, last_offset) = produced[produced.len() - 1];
    // The consumer tries, fails, and says so.
    eventually("a failed write in the consumer's logs", || async {
        consumer
            .logs
            .text()
            .contains("writing events to Postgres failed")
            .then_some(())
    })
    .await;
    let (_, health) = get_json(format!("http://{}/healthz", consumer.addr))
        .await
        .expect("/healthz answers while Postgres is down");
    assert_eq!(health["database"], "failing", "{health}");
    let committed = parts.committed_offset(partition).await;
    assert!(
        committed.is_none_or(|offset| offset <= first_offset),
        "nothing may be committed while Postgres is down, yet offset {committed:?} is (first event at {first_offset})"
    );

    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"ALTER DATABASE "{database}" ALLOW_CONNECTIONS true"#
        )))
        .await
        .unwrap();
    for event in &events {
        parts.row_of(event.event_id).await;
    }
    assert_eq!(parts.row_count().await, 20);
    eventually("the offsets to be committed after the rows", || async {
        (parts.committed_offset(partition).await == Some(last_offset + 1)).then_some(())
    })
    .await;
    eventually("/readyz to answer 200 again", || async {
        let (status, _) = get_json(readyz.clone()).await?;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_span_is_a_child_of_the_producer_context_and_links_to_it() {
    let parts = Parts::start().await;
    let otlp = OtlpReceiver::start().await.expect("an OTLP receiver");
    let consumer = parts.consumer(500, Some(otlp.endpoint())).await;
    let event = user_event(Uuid::now_v7(), 1);
    let (traceparent, trace_id, producer_span_id) = trace_context();

    let (partition, offset) = parts.produce_event(&event, Some(&traceparent)).await;
    parts.row_of(event.event_id).await;
    consumer.flush().await;
    let process_name = format!("process {}", parts.kafka.topic);
    let spans = otlp
        .wait_for_trace(&trace_id, PATIENCE, |spans| {
            spans.iter().any(|s| s.name == "INSERT user_events") && spans.iter().any(|s| s.name == process_name)
        })
        .await;

    let trace = Trace(&spans);
    let process = trace.span("consumer", &process_name, SpanKind::Consumer);
    assert_eq!(
        process.parent_span_id.as_deref(),
        Some(producer_span_id.as_str()),
        "the process span's parent is the producer's span:\n{}",
        trace.draw()
    );
    assert_eq!(
        process.links,
        [producer_span_id.as_str()],
        "the process span links to the producer's span"
    );
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", parts.kafka.topic.as_str()),
        ("messaging.destination.partition.id", &partition.to_string()),
        ("messaging.kafka.offset", &offset.to_string()),
        ("messaging.consumer.group.name", parts.kafka.group.as_str()),
    ] {
        assert_eq!(process.attribute(key), Some(value), "{key} on {process:?}");
    }

    let insert = trace.span("consumer", "INSERT user_events", SpanKind::Client);
    trace.assert_parent(insert, process);
    // Each span ends when its work does, wherever it is dropped: the
    // statement's within the process span, which ends once its event is
    // stored.
    assert!(
        process.start_us <= insert.start_us && insert.start_us <= insert.end_us && insert.end_us <= process.end_us,
        "the INSERT span ({}..{} µs) lies within the process span ({}..{} µs)",
        insert.start_us,
        insert.end_us,
        process.start_us,
        process.end_us
    );
    assert_eq!(insert.attribute("db.system.name"), Some("postgresql"));
    assert_eq!(insert.attribute("db.operation.name"), Some("INSERT"));
    assert_eq!(insert.attribute("db.collection.name"), Some("user_events"));
    let query = insert.attribute("db.query.text").expect("db.query.text");
    assert!(
        query.starts_with("INSERT INTO user_events") && !query.contains(&event.event_id.to_string()),
        "the parameterised statement, never values: {query}"
    );
}

/// The consumer binary in a process of its own, so a test can `kill -9` it:
/// a crash, with no clean leave from the group and no last commit.
struct ConsumerProcess {
    child: std::process::Child,
}

impl ConsumerProcess {
    /// Starts `target/.../consumer` on the test's topics, as the group member
    /// named `instance`, and waits until it is healthy.
    async fn start(parts: &Parts, instance: &str) -> Self {
        let health = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_consumer"))
            .env("DATABASE_URL", parts.db.url())
            .env("KAFKA_BROKERS", parts.kafka.bootstrap())
            .env("KAFKA_TOPIC", &parts.kafka.topic)
            .env("KAFKA_GROUP_ID", &parts.kafka.group)
            .env("KAFKA_GROUP_INSTANCE_ID", instance)
            .env("CONSUMER_HEALTH_ADDR", health.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the consumer binary starts");
        let mut process = Self { child };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while callchain_consumer::healthcheck(health).await.is_err() {
            if let Some(status) = process.child.try_wait().expect("its status") {
                panic!("the consumer process exited at start: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the consumer process is not healthy after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        process
    }

    /// `kill -9`.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_with_sigkill_and_restarted_gets_its_partitions_back_within_10_s() {
    let parts = Parts::start().await;
    let first = ConsumerProcess::start(&parts, "consumer-1").await;
    let before = user_event(Uuid::now_v7(), 1);
    parts.produce_event(&before, None).await;
    parts.row_of(before.event_id).await;

    first.kill();
    // One event on every partition while it is down.
    let mut during = Vec::new();
    while during
        .iter()
        .map(|(_, partition)| *partition)
        .collect::<BTreeSet<i32>>()
        .len()
        < 3
    {
        let event = user_event(Uuid::now_v7(), 1);
        let (partition, _) = parts.produce_event(&event, None).await;
        during.push((event, partition));
    }

    let restarted = tokio::time::Instant::now();
    let _second = ConsumerProcess::start(&parts, "consumer-1").await;
    for (event, _) in &during {
        parts.row_of(event.event_id).await;
    }
    let recovered = restarted.elapsed();
    assert!(
        recovered <= Duration::from_secs(10),
        "the restarted consumer took {recovered:?} to write the events of all 3 partitions"
    );
    for (event, _) in &during {
        assert_eq!(parts.rows_of(event.event_id).await, 1, "exactly one row per event");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_broker_kill_and_restart_the_consumer_goes_on_and_loses_nothing() {
    let mut parts = Parts::on(Kafka::own().await.expect("a Kafka broker of the test's own")).await;
    let _consumer = parts.consumer(500, None).await;
    let before: Vec<UserEvent> = (0..20).map(|_| user_event(Uuid::now_v7(), 1)).collect();
    for event in &before {
        parts.produce_event(event, None).await;
    }
    for event in &before {
        parts.row_of(event.event_id).await;
    }

    tokio::task::block_in_place(|| parts.kafka.broker().restart()).expect("the broker restarts after kill -9");
    let after: Vec<UserEvent> = (0..20).map(|_| user_event(Uuid::now_v7(), 1)).collect();
    for event in &after {
        parts.produce_event(event, None).await;
    }
    for event in before.iter().chain(&after) {
        parts.row_of(event.event_id).await;
        assert_eq!(parts.rows_of(event.event_id).await, 1, "exactly one row per event");
    }
    assert_eq!(parts.row_count().await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_finishes_the_batch_commits_what_is_written_flushes_its_spans_and_exits_0() {
    const EVENTS: usize = 300;
    const BOUND_SECONDS: u64 = 5;
    let parts = Parts::start().await;
    let otlp = OtlpReceiver::start().await.expect("an OTLP receiver");
    for _ in 0..EVENTS {
        parts.produce_event(&user_event(Uuid::now_v7(), 1), None).await;
    }
    let health = free_addr().unwrap();
    let mut consumer = ServiceProcess::spawn(
        "consumer",
        env!("CARGO_BIN_EXE_consumer"),
        [
            ("DATABASE_URL", parts.db.url().to_owned()),
            ("KAFKA_BROKERS", parts.kafka.bootstrap().to_owned()),
            ("KAFKA_TOPIC", parts.kafka.topic.clone()),
            ("KAFKA_GROUP_ID", parts.kafka.group.clone()),
            ("CONSUMER_HEALTH_ADDR", health.to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
            // Nothing is exported on the way unless the exit flushes it.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
            // Small, slow batches: there is a middle of the stream to stop in.
            ("CONSUMER_BATCH_SIZE", "20".to_owned()),
            ("FAULT_PROCESS_DELAY_MS", "5".to_owned()),
            ("SHUTDOWN_TIMEOUT_SECONDS", BOUND_SECONDS.to_string()),
        ],
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while parts.row_count().await < 40 {
        assert!(consumer.try_exit().is_none(), "the consumer exited");
        assert!(tokio::time::Instant::now() < deadline, "no rows after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    consumer.stop_within(Duration::from_secs(BOUND_SECONDS)).await.unwrap();

    let rows = parts.row_count().await;
    assert!(
        (rows as usize) < EVENTS,
        "it wrote all {rows} rows before the signal: nothing to drain"
    );
    // What is committed is exactly what is written: the batch in hand was
    // finished, and its offsets committed on the way out.
    let written: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, max(kafka_offset) + 1 FROM user_events GROUP BY kafka_partition")
            .fetch_all(parts.db.pool())
            .await
            .unwrap();
    for (partition, next) in written {
        assert_eq!(
            parts.committed_offset(partition).await,
            Some(next),
            "partition {partition}: committed offset against the rows written"
        );
    }
    let (events,): (i64,) = sqlx::query_as("SELECT count(DISTINCT event_id) FROM user_events")
        .fetch_one(parts.db.pool())
        .await
        .unwrap();
    assert_eq!(events, rows, "one row per event");
    // The spans of every written event were flushed before the exit.
    let process = format!("process {}", parts.kafka.topic);
    let spans = otlp
        .spans()
        .into_iter()
        .filter(|span| span.kind == SpanKind::Consumer && span.name == process)
        .count();
    assert!(spans as i64 >= rows, "{spans} process spans for {rows} rows written");
    assert!(
        consumer.messages().iter().any(|message| message == "offsets committed"),
        "{:?}",
        consumer.messages()
    );
}

/// The consumer binary in a process whose logs are kept, as the group
/// member named `instance`, with `extra` settings; waits until it is
/// healthy.
async fn logged_consumer(parts: &Parts, instance: &str, extra: &[(&str, &str)]) -> (ServiceProcess, String) {
    let health = free_addr().unwrap();
    let mut env = vec![
        ("DATABASE_URL", parts.db.url().to_owned()),
        ("KAFKA_BROKERS", parts.kafka.bootstrap().to_owned()),
        ("KAFKA_TOPIC", parts.kafka.topic.clone()),
        ("KAFKA_GROUP_ID", parts.kafka.group.clone()),
        ("KAFKA_GROUP_INSTANCE_ID", instance.to_owned()),
        ("CONSUMER_HEALTH_ADDR", health.to_string()),
        ("RUST_LOG", "info,callchain::span=off".to_owned()),
    ];
    env.extend(extra.iter().map(|&(name, value)| (name, value.to_owned())));
    let mut consumer = ServiceProcess::spawn("consumer", env!("CARGO_BIN_EXE_consumer"), env).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while callchain_consumer::healthcheck(health).await.is_err() {
        if let Some(status) = consumer.try_exit() {
            panic!(
                "the consumer exited at start ({status}): {}",
                consumer.log_text().join("\n")
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer is not healthy after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (consumer, format!("http://{health}/readyz"))
}

/// Waits until `/readyz` at `url` answers `status`; its body.
async fn readyz_becomes(url: &str, status: u16) -> serde_json::Value {
    eventually(&format!("{url} to answer {status}"), || async {
        let (answered, body) = get_json(url.to_owned()).await?;
        (answered == status).then_some(body)
    })
    .await
}

/// Produces `count` events, each of a user of its own; returns them.
async fn produce_events(parts: &Parts, count: usize) -> Vec<UserEvent> {
    let events: Vec<UserEvent> = (0..count).map(|_| user_event(Uuid::now_v7(), 1)).collect();
    futures::future::join_all(events.iter().map(|event| parts.produce_event(event, None))).await;
    events
}

/// Waits until every one of `events` has its row, and checks it has one.
async fn each_stored_once(parts: &Parts, events: &[UserEvent]) {
    for event in events {
        parts.row_of(event.event_id).await;
        assert_eq!(parts.rows_of(event.event_id).await, 1, "exactly one row per event");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_fenced_by_another_with_its_instance_id_starts_a_fresh_client_and_consumes_again() {
    let parts = Parts::start().await;
    let (mut consumer, readyz) = logged_consumer(&parts, "consumer-1", &[]).await;
    each_stored_once(&parts, &produce_events(&parts, 3).await).await;
    readyz_becomes(&readyz, 200).await;

    // A second member under the same instance id: the broker hands it the
    // identity, and the first one's next heartbeat is answered
    // FENCED_INSTANCE_ID, which librdkafka takes as fatal for its client.
    let intruder: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", parts.kafka.bootstrap())
        .set("group.id", &parts.kafka.group)
        .set("group.instance.id", "consumer-1")
        // The group's protocol: a member of another is refused, not let in.
        .set("partition.assignment.strategy", callchain_consumer::ASSIGNMENT_STRATEGY)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()
        .expect("an intruder");
    intruder
        .subscribe(&[&parts.kafka.topic])
        .expect("subscribing the intruder");
    let intruder = std::sync::Arc::new(intruder);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let (intruder, stop) = (intruder.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = intruder.poll(Duration::from_millis(100));
            }
        })
    };
    eventually("the consumer to be fenced", || async {
        consumer
            .log_text()
            .iter()
            .any(|line| line.contains("Static consumer fenced"))
            .then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    polling.join().unwrap();
    tokio::task::spawn_blocking(move || drop(intruder)).await.unwrap();

    let after = produce_events(&parts, 10).await;
    each_stored_once(&parts, &after).await;
    assert!(
        consumer.try_exit().is_none(),
        "it recovered in its process, without a restart"
    );
    readyz_becomes(&readyz, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_restarted_under_its_instance_id_then_a_broker_restart_loses_nothing_and_stays_ready() {
    let mut parts = Parts::on(Kafka::own().await.expect("a Kafka broker of the test's own")).await;
    let (mut first, _) = logged_consumer(&parts, "consumer-1", &[]).await;
    each_stored_once(&parts, &produce_events(&parts, 5).await).await;

    // Steady writes from here on, as the API makes them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let producer = parts.producer.clone();
        let topic = parts.kafka.topic.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let event = user_event(Uuid::now_v7(), 1);
                let (key, payload) = (event.key(), event.to_json());
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(event_headers(&event, None));
                if producer.send(record, Duration::from_secs(30)).await.is_ok() {
                    written.push(event);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };

    first.kill();
    let (consumer, readyz) = logged_consumer(&parts, "consumer-1", &[]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    tokio::task::block_in_place(|| parts.kafka.broker().restart()).expect("the broker restarts");
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written.len() > 100, "only {} events written", written.len());

    each_stored_once(&parts, &written).await;
    let mut consumer = consumer;
    assert!(
        consumer.try_exit().is_none(),
        "it went on in its process, without a restart"
    );
    let after = produce_events(&parts, 5).await;
    each_stored_once(&parts, &after).await;
    readyz_becomes(&readyz, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_answers_503_while_messages_wait_and_none_is_consumed() {
    let parts = Parts::start().await;
    // Each message takes two minutes: the first one wedges the loop.
    let (_consumer, readyz) = logged_consumer(&parts, "consumer-1", &[("FAULT_PROCESS_DELAY_MS", "120000")]).await;
    readyz_becomes(&readyz, 200).await;

    produce_events(&parts, 3).await;
    let body = readyz_becomes(&readyz, 503).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(parts.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_broker_is_down_exits_within_the_bound_and_the_uncommitted_events_replay() {
    const BOUND_SECONDS: u64 = 4;
    let mut parts = Parts::on(Kafka::own().await.expect("a Kafka broker of the test's own")).await;
    let bound = BOUND_SECONDS.to_string();
    // Slow on purpose: the batch is still in hand when the broker goes.
    let (mut consumer, _) = logged_consumer(
        &parts,
        "consumer-1",
        &[("FAULT_PROCESS_DELAY_MS", "150"), ("SHUTDOWN_TIMEOUT_SECONDS", &bound)],
    )
    .await;
    // Once the first is written, the consumer has its partitions.
    let first = produce_events(&parts, 1).await;
    each_stored_once(&parts, &first).await;
    let events = produce_events(&parts, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| parts.kafka.broker().kill());
    // The rows are written after the broker went: their offsets are stored,
    // and no commit can carry them.
    eventually("the 21 rows, written with the broker down", || async {
        (parts.row_count().await == 21).then_some(())
    })
    .await;

    let took = consumer.stop_within(Duration::from_secs(BOUND_SECONDS)).await;
    let logs = consumer.log_text().join("\n");
    took.unwrap_or_else(|error| panic!("{error:#}\n{logs}"));
    assert!(
        consumer.messages().iter().any(|m| m.contains("will be replayed")),
        "it says what it could not commit: {logs}"
    );

    // Nothing is lost: a consumer of the same group replays from the last
    // commit, and each event is still one row.
    tokio::task::block_in_place(|| parts.kafka.broker().restart()).expect("the broker restarts");
    let (_second, _) = logged_consumer(&parts, "consumer-1", &[]).await;
    let later = produce_events(&parts, 3).await;
    each_stored_once(&parts, &events).await;
    each_stored_once(&parts, &later).await;
    parts
        .kafka
        .wait_until_consumed(PATIENCE)
        .await
        .expect("the replay committed");
    assert_eq!(parts.row_count().await, 24);
}

/// A member's rebalances as its log tells them, in order: `(assigned?, partitions)`.
fn rebalances(member: &ServiceProcess) -> Vec<(bool, BTreeSet<i32>)> {
    member
        .log_lines()
        .iter()
        .filter_map(|line| {
            let assigned = match line["message"].as_str()? {
                "partitions assigned" => true,
                "partitions revoked" => false,
                _ => return None,
            };
            let partitions = line["partitions"]
                .as_str()?
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((assigned, partitions))
        })
        .collect()
}

/// The partitions a member holds now, replaying its rebalances.
fn holding(member: &ServiceProcess) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    for (assigned, partitions) in rebalances(member) {
        if assigned {
            held.extend(partitions);
        } else {
            held.retain(|p| !partitions.contains(p));
        }
    }
    held
}

/// Produces `count` events of fresh users (spread over the partitions).
async fn produce_users(parts: &Parts, count: usize) -> Vec<UserEvent> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let event = user_event(Uuid::now_v7(), 1);
        parts.produce_event(&event, None).await;
        events.push(event);
    }
    events
}

/// Cooperative rebalancing: of three consumers sharing `user-events`' 12
/// partitions, one is killed; its partitions move to the two others, which
/// keep every partition they had throughout (nothing of theirs is revoked:
/// the eager assignor would revoke all of them and assign anew), and every
/// event is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn when_one_of_three_consumers_dies_its_partitions_move_and_the_others_keep_theirs() {
    let parts = Parts::on(Kafka::shared_with(12).await.expect("the test run's Kafka broker")).await;
    let mut members = Vec::new();
    for instance in ["consumer-1", "consumer-2", "consumer-3"] {
        members.push(logged_consumer(&parts, instance, &[]).await.0);
    }
    let settled = |members: &[ServiceProcess]| {
        let held: Vec<BTreeSet<i32>> = members.iter().map(holding).collect();
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        (all.len() == 12 && held.iter().map(BTreeSet::len).sum::<usize>() == 12 && held.iter().all(|h| !h.is_empty()))
            .then_some(held)
    };
    let before = eventually("the three consumers to share the 12 partitions", || {
        std::future::ready(settled(&members))
    })
    .await;
    let mut events = produce_users(&parts, 120).await;

    let mut dead = members.pop().expect("the third consumer");
    dead.kill();
    let seen: Vec<usize> = members.iter().map(|m| rebalances(m).len()).collect();
    // Events keep coming while its partitions move.
    let moved = tokio::time::Instant::now();
    let after = loop {
        events.extend(produce_users(&parts, 10).await);
        if let Some(after) = settled(&members) {
            break after;
        }
        assert!(
            moved.elapsed() < PATIENCE,
            "the dead consumer's partitions did not move within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the dead consumer's partitions moved within {:?}", moved.elapsed());
    events.extend(produce_users(&parts, 60).await);

    for (i, member) in members.iter().enumerate() {
        let since_kill = &rebalances(member)[seen[i]..];
        let revoked: BTreeSet<i32> = since_kill
            .iter()
            .filter(|(assigned, _)| !assigned)
            .flat_map(|(_, partitions)| partitions.iter().copied())
            .collect();
        assert!(
            revoked.is_empty(),
            "consumer-{} kept consuming its partitions {:?}, yet {revoked:?} were revoked from it: {since_kill:?}",
            i + 1,
            before[i]
        );
        assert!(
            after[i].is_superset(&before[i]),
            "consumer-{} holds {:?}, not all it held before ({:?})",
            i + 1,
            after[i],
            before[i]
        );
    }
    assert_eq!(
        after.iter().flatten().copied().collect::<BTreeSet<i32>>(),
        (0..12).collect(),
        "the survivors hold every partition"
    );

    for event in &events {
        parts.row_of(event.event_id).await;
    }
    assert_eq!(
        parts.row_count().await,
        i64::try_from(events.len()).unwrap(),
        "every event stored once"
    );
}

/// A Kafka node paused (`SIGSTOP`: its connections stay open, and nothing
/// answers on them) loses its partitions' leadership to the two others once
/// its session times out; the consumer, whose fetch from it is never
/// answered, gives that request up and reads those partitions from their new
/// leaders, rather than waiting out librdkafka's 60 s socket timeout.
#[tokio::test(flavor = "multi_thread")]
async fn the_partitions_of_a_paused_kafka_node_are_read_from_their_new_leaders() {
    /// The node's session (9 s), the leaders' move, and the consumer's
    /// request timeout, with room to spare: well short of 60 s.
    const RECOVERY: Duration = Duration::from_secs(35);
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap()
        .expect("three Kafka nodes start");
    let parts = Parts::on(Kafka::on_cluster(&cluster).await.expect("topics on the cluster")).await;
    let (_consumer, _) = logged_consumer(&parts, "consumer-1", &[]).await;
    // Spread over the partitions, so the consumer fetches from every node.
    each_stored_once(&parts, &produce_events(&parts, 40).await).await;

    let controller = tokio::task::block_in_place(|| cluster.controller()).expect("the cluster names its controller");
    let victim = (1..=3).find(|&id| id != controller).unwrap();
    cluster.node(victim).pause().expect("the node pauses");
    let paused = tokio::time::Instant::now();
    let events = produce_events(&parts, 40).await;
    let stored = tokio::time::timeout(
        RECOVERY.saturating_sub(paused.elapsed()),
        each_stored_once(&parts, &events),
    )
    .await;
    cluster.node(victim).resume().expect("the node runs again");
    assert!(
        stored.is_ok(),
        "the events produced while node {victim} was paused were not all stored within {RECOVERY:?} of the pause"
    );
    eprintln!("every event stored {:?} after the pause", paused.elapsed());
}
