//! The readiness probe against a stand-in user service that counts the
//! health checks it is sent: `/readyz` needs no token and is never shed, so
//! it must not turn each probe into a check of every replica.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request};
use callchain_api::{AppState, Config, router};
use tonic_health::ServingStatus;
use tower::ServiceExt as _;

/// How often the API checks the replicas on its own (`CHECK_EVERY`).
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A stand-in serving only the health service, reporting the user service
/// as serving; and how many health checks it has answered.
async fn counted_health() -> (String, Arc<AtomicUsize>) {
    let checks = Arc::new(AtomicUsize::new(0));
    let counter = checks.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("user.v1.UserService", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counting = tower::ServiceBuilder::new().map_request(move |request: http::Request<_>| {
        if request.uri().path() == "/grpc.health.v1.Health/Check" {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        request
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(counting)
            .add_service(health_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), checks)
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_probes_cause_at_most_one_health_check_per_interval() {
    let (url, checks) = counted_health().await;
    let config = Config::for_tests(url, "a-test-secret-that-is-long-enough!!".to_owned());
    let state = AppState::new(&config).expect("the API's state");
    let deadline = Instant::now() + Duration::from_secs(10);
    while checks.load(Ordering::SeqCst) == 0 || state.user_service_replicas_serving() == 0 {
        assert!(Instant::now() < deadline, "the stand-in never passed its health check");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let app = router(state, &config);

    const BURSTS: usize = 5;
    const PROBES: usize = 40;
    let before = checks.load(Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..BURSTS {
        let probes = (0..PROBES).map(|_| {
            app.clone()
                .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        });
        for response in futures::future::join_all(probes).await {
            assert_eq!(response.expect("the router answers").status(), 200);
        }
    }
    let elapsed = started.elapsed();
    let made = checks.load(Ordering::SeqCst) - before;
    // The watcher checks once an interval on its own; the probes may add at
    // most one more an interval, whatever their number.
    let intervals = (elapsed.as_millis() / CHECK_EVERY.as_millis()) as usize + 1;
    assert!(
        made <= 2 * intervals,
        "{} readiness probes in {elapsed:?} caused {made} health checks, more than {} (twice {intervals} intervals)",
        BURSTS * PROBES,
        2 * intervals
    );
}
