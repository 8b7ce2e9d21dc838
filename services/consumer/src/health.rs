//! `GET /healthz` (the loop runs; with its counters) and `GET /readyz` (it
//! can write to Postgres), on the health listener.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
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

/// What the pipeline reports as it goes.
#[derive(Debug, Default)]
pub struct Health {
    events_written: AtomicU64,
    dead_letters: AtomicU64,
    database_failing: AtomicBool,
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

/// Ready while writes succeed and Postgres answers a `SELECT 1`: the probe
/// notices an outage while no events flow, the flag spares a failing
/// database more connection attempts while the pipeline retries.
async fn readyz(State(probe): State<Probe>) -> Response {
    if probe.health.is_database_failing() {
        return unavailable();
    }
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&probe.pool)).await {
        Ok(Ok(_)) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(error)) => {
            tracing::debug!(error = %error, "readiness probe: Postgres refused");
            unavailable()
        }
        Err(_) => {
            tracing::debug!("readiness probe: Postgres did not answer in time");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({ "status": "unavailable", "reason": "the database is unreachable" })),
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
}
