//! `GET /healthz` (the loop runs; with its counters) and `GET /readyz` (it
//! consumes: its client works, it has partitions, and it either makes
//! progress or has nothing waiting; and it can write to Postgres), on the
//! health listener.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use sqlx::PgPool;

/// How long `/readyz` waits for Postgres to answer `SELECT 1`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the consumer may go without consuming before `/readyz` says
/// so: without partitions (a rebalance takes a few seconds), with messages
/// waiting on a partition and none of it read, or with one batch in hand.
pub const READY_GRACE: Duration = Duration::from_secs(10);

/// What the pipeline reports as it goes.
#[derive(Debug, Default)]
pub struct Health {
    events_written: AtomicU64,
    dead_letters: AtomicU64,
    database_failing: AtomicBool,
    consumption: Mutex<Consumption>,
}

/// What the consumer knows of its own consuming, for `/readyz`.
#[derive(Debug)]
pub struct Consumption {
    /// The Kafka client failed (or is being replaced): nothing is read
    /// until a fresh one has joined the group.
    client_failed: bool,
    /// Each assigned partition, with its last sign of progress: its
    /// assignment, or a message of it read. Each partition is held to its
    /// own: a partition assigned, or another read, does not excuse one whose
    /// messages wait (a leader that does not answer, say).
    assigned: BTreeMap<i32, Instant>,
    /// The assigned partitions read to their end since their last message.
    at_end: BTreeSet<i32>,
    /// The last sign of progress of the member as a whole: a batch handled,
    /// a fresh client, a change of assignment (a member left without
    /// partitions gets [`READY_GRACE`] to be given some).
    progressed: Instant,
    /// Since when the batch in hand has been in hand.
    handling_since: Option<Instant>,
}

impl Default for Consumption {
    fn default() -> Self {
        Self {
            client_failed: false,
            assigned: BTreeMap::new(),
            at_end: BTreeSet::new(),
            progressed: Instant::now(),
            handling_since: None,
        }
    }
}

impl Consumption {
    /// `Ok` while the consumer consumes, or why it does not, as of `now`.
    pub fn readiness(&self, now: Instant) -> Result<(), &'static str> {
        let within_grace = |since: Instant| now.saturating_duration_since(since) <= READY_GRACE;
        if self.client_failed {
            return Err("the Kafka client failed; a fresh one is joining the group");
        }
        if self.handling_since.is_some_and(|since| !within_grace(since)) {
            return Err("one batch has been in hand for longer than the grace");
        }
        if self.assigned.is_empty() {
            return if within_grace(self.progressed) {
                Ok(())
            } else {
                Err("no partitions are assigned to this consumer")
            };
        }
        let waiting = self
            .assigned
            .iter()
            .any(|(partition, &since)| !self.at_end.contains(partition) && !within_grace(since));
        if waiting {
            return Err("messages wait on a partition and none of it was consumed within the grace");
        }
        Ok(())
    }
}

impl Health {
    /// A write committed `rows` new rows (replays add none).
    pub fn written(&self, rows: u64) {
        self.events_written.fetch_add(rows, Ordering::Relaxed);
        self.database_failing.store(false, Ordering::Relaxed);
    }

    /// Postgres answered, if only to refuse the rows.
    pub fn database_answered(&self) {
        self.database_failing.store(false, Ordering::Relaxed);
    }

    /// A write failed for want of Postgres.
    pub fn database_failed(&self) {
        self.database_failing.store(true, Ordering::Relaxed);
    }

    /// The broker acknowledged a dead letter.
    pub fn dead_lettered(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    fn is_database_failing(&self) -> bool {
        self.database_failing.load(Ordering::Relaxed)
    }

    fn consumption(&self) -> std::sync::MutexGuard<'_, Consumption> {
        // The state stays meaningful whatever panicked while holding it.
        self.consumption
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Kafka client failed and is being replaced.
    pub fn client_failed(&self) {
        self.consumption().client_failed = true;
    }

    /// A fresh client subscribed: it has yet to be given partitions.
    pub fn client_started(&self) {
        let mut consumption = self.consumption();
        *consumption = Consumption::default();
    }

    /// The group gave this member `partitions`, beside those it holds (the
    /// cooperative protocol assigns only what moves).
    pub fn assigned(&self, partitions: &[i32]) {
        let mut consumption = self.consumption();
        let now = Instant::now();
        for partition in partitions {
            consumption.assigned.insert(*partition, now);
            consumption.at_end.remove(partition);
        }
        consumption.progressed = now;
    }

    /// The group took `partitions` back; the others stay this member's.
    pub fn revoked(&self, partitions: &[i32]) {
        let mut consumption = self.consumption();
        for partition in partitions {
            consumption.assigned.remove(partition);
            consumption.at_end.remove(partition);
        }
        consumption.progressed = Instant::now();
    }

    /// A message of `partition` arrived: the partition is read, and the
    /// message may not be its last.
    pub fn received(&self, partition: i32) {
        let mut consumption = self.consumption();
        consumption.at_end.remove(&partition);
        if let Some(since) = consumption.assigned.get_mut(&partition) {
            *since = Instant::now();
        }
    }

    /// `partition` is read to its end.
    pub fn at_end(&self, partition: i32) {
        self.consumption().at_end.insert(partition);
    }

    /// A batch is in hand.
    pub fn handling(&self) {
        self.consumption().handling_since.get_or_insert_with(Instant::now);
    }

    /// The batch in hand is handled (stored, or left to be replayed).
    pub fn handled(&self) {
        let mut consumption = self.consumption();
        consumption.handling_since = None;
        consumption.progressed = Instant::now();
    }

    fn readiness(&self) -> Result<(), &'static str> {
        self.consumption().readiness(Instant::now())
    }
}

#[derive(Clone)]
struct Probe {
    health: Arc<Health>,
    pool: PgPool,
}

pub fn router(health: Arc<Health>, pool: PgPool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Probe { health, pool })
}

async fn healthz(State(probe): State<Probe>) -> Json<serde_json::Value> {
    let health = &probe.health;
    Json(json!({
        "status": "ok",
        "database": if health.is_database_failing() { "failing" } else { "ok" },
        "events_written": health.events_written.load(Ordering::Relaxed),
        "dead_letters": health.dead_letters.load(Ordering::Relaxed),
    }))
}

/// Ready while the consumer consumes ([`Consumption::readiness`]), writes
/// succeed and Postgres answers a `SELECT 1`: the probe notices an outage
/// while no events flow, the flag spares a failing database more connection
/// attempts while the pipeline retries.
async fn readyz(State(probe): State<Probe>) -> Response {
    const DATABASE: &str = "the database is unreachable";
    if probe.health.is_database_failing() {
        return unavailable(DATABASE);
    }
    if let Err(reason) = probe.health.readiness() {
        return unavailable(reason);
    }
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&probe.pool)).await {
        Ok(Ok(_)) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(error)) => {
            tracing::debug!(error = %error, "readiness probe: Postgres refused");
            unavailable(DATABASE)
        }
        Err(_) => {
            tracing::debug!("readiness probe: Postgres did not answer in time");
            unavailable(DATABASE)
        }
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    /// A pool that never connects: these answers must not need Postgres.
    fn unreachable_pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(100))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
    }

    async fn get(health: Arc<Health>, path: &str) -> (StatusCode, header::HeaderMap, serde_json::Value) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = router(health, unreachable_pool()).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn healthz_reports_the_counters_and_the_database_state() {
        let health = Arc::new(Health::default());
        health.written(3);
        health.written(0);
        health.dead_lettered();
        health.database_failed();

        let (status, _, body) = get(health, "/healthz").await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({ "status": "ok", "database": "failing", "events_written": 3, "dead_letters": 1 })
        );
    }

    #[tokio::test]
    async fn readyz_answers_503_with_retry_after_while_writes_fail() {
        let health = Arc::new(Health::default());
        health.database_failed();

        let (status, headers, body) = get(health, "/readyz").await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["status"], "unavailable");
    }

    #[tokio::test]
    async fn readyz_answers_503_when_postgres_does_not_answer_the_probe() {
        let (status, headers, _) = get(Arc::new(Health::default()), "/readyz").await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
    }

    /// A consumer whose last sign of progress is `ago` old, with
    /// partitions 0..3 assigned.
    fn assigned_since(now: Instant, ago: Duration) -> Consumption {
        Consumption {
            assigned: (0..3).map(|partition| (partition, now - ago)).collect(),
            progressed: now - ago,
            ..Consumption::default()
        }
    }

    #[test]
    fn a_consumer_that_progressed_within_the_grace_is_ready() {
        let now = Instant::now();
        assert_eq!(assigned_since(now, READY_GRACE).readiness(now), Ok(()));
    }

    #[test]
    fn a_consumer_whose_client_failed_is_not_ready_even_within_the_grace() {
        let now = Instant::now();
        let consumption = Consumption {
            client_failed: true,
            ..assigned_since(now, Duration::ZERO)
        };
        assert!(consumption.readiness(now).unwrap_err().contains("client failed"));
    }

    #[test]
    fn a_consumer_with_messages_waiting_and_no_progress_past_the_grace_is_not_ready() {
        let now = Instant::now();
        let mut consumption = assigned_since(now, READY_GRACE + Duration::from_millis(1));
        consumption.at_end = [0, 2].into();
        assert!(consumption.readiness(now).unwrap_err().contains("messages wait"));
    }

    /// A rebalance that gives the member another partition, or messages read
    /// from one partition, said nothing of a partition whose messages wait
    /// unread (its leader paused, say), yet each restarted the grace.
    #[test]
    fn a_partition_whose_messages_wait_is_not_excused_by_another_assigned_or_read() {
        let health = Health::default();
        health.assigned(&[0, 1, 2]);
        health.at_end(0);
        {
            let mut consumption = health.consumption();
            let long_ago = Instant::now() - READY_GRACE - Duration::from_millis(1);
            consumption.assigned.values_mut().for_each(|since| *since = long_ago);
            consumption.progressed = long_ago;
        }
        health.received(2);
        health.assigned(&[5]);
        health.handling();
        health.handled();

        let reason = health.readiness().unwrap_err();
        assert!(reason.contains("messages wait on a partition"), "{reason}");
    }

    #[test]
    fn a_consumer_read_to_the_end_of_every_partition_is_ready_however_long_it_idles() {
        let now = Instant::now();
        let mut consumption = assigned_since(now, Duration::from_secs(3600));
        consumption.at_end = (0..3).collect();
        assert_eq!(consumption.readiness(now), Ok(()));
    }

    #[test]
    fn a_consumer_without_partitions_past_the_grace_is_not_ready() {
        let now = Instant::now();
        let consumption = Consumption {
            progressed: now - READY_GRACE - Duration::from_millis(1),
            ..Consumption::default()
        };
        assert!(consumption.readiness(now).unwrap_err().contains("no partitions"));
    }

    #[test]
    fn a_batch_in_hand_past_the_grace_is_not_ready_though_the_last_progress_is_recent() {
        let now = Instant::now();
        let consumption = Consumption {
            handling_since: Some(now - READY_GRACE - Duration::from_millis(1)),
            ..assigned_since(now, Duration::ZERO)
        };
        assert!(consumption.readiness(now).unwrap_err().contains("in hand"));
    }

    #[tokio::test]
    async fn readyz_answers_503_with_the_reason_while_the_kafka_client_is_replaced() {
        let health = Arc::new(Health::default());
        health.client_failed();

        let (status, headers, body) = get(health, "/readyz").await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(body["reason"].as_str().unwrap().contains("client failed"), "{body}");
    }

    /// The cooperative protocol assigns and revokes only the partitions that
    /// move: the others stay this member's, with what is known of them.
    #[test]
    fn an_incremental_assignment_adds_partitions_and_a_partial_revoke_keeps_the_others() {
        let health = Health::default();
        health.assigned(&[0, 1, 2, 3]);
        health.at_end(1);
        health.assigned(&[8, 9]);
        health.revoked(&[0, 9]);

        let consumption = health.consumption();
        assert_eq!(
            consumption.assigned.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2, 3, 8])
        );
        assert_eq!(consumption.at_end, BTreeSet::from([1]));
    }
}
