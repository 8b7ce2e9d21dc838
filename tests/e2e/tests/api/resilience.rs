//! The API facing a failing user service: replicas that die, a user service
//! that is down and comes back, and more requests at once than it takes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use callchain_e2e::stack::{Options, Stack, spawn_user};
use callchain_testkit::spans::SpanKind;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, email, signed_in_user};

async fn stack_with(options: Options) -> Stack {
    match Stack::start_with(options).await {
        Ok(stack) => stack,
        Err(error) => panic!("cannot start the test stack: {error:#}"),
    }
}

/// The API's log lines whose message starts with `message`.
fn api_logs(stack: &Stack, message: &str) -> Vec<Value> {
    stack
        .api
        .logs
        .lines()
        .into_iter()
        .filter(|line| line["message"].as_str().is_some_and(|text| text.starts_with(message)))
        .collect()
}

/// Waits up to `within` for `check`, then asserts it with `what`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_fails_nothing_and_is_dropped_its_calls_retried_on_the_other() {
    let mut stack = stack_with(Options {
        more_replicas: 1,
        ..Options::default()
    })
    .await;
    let (user, token) = signed_in_user(&stack).await;
    let url = stack.url(&format!("/v1/users/{}", user["id"].as_str().unwrap()));
    let doomed = stack.replicas[0].addr.to_string();
    eventually(Duration::from_secs(10), "both replicas joined", || {
        api_logs(&stack, "user service replica joined").len() == 2
    })
    .await;

    // Four callers read without pause while one replica is killed.
    const CALLERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let readers = (0..CALLERS)
        .map(|_| {
            let (http, url, token, stop) = (stack.http.clone(), url.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = http.get(&url).bearer_auth(&token).send().await.expect("GET");
                    statuses.push(response.status().as_u16());
                }
                statuses
            })
        })
        .collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.replicas[0].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for reader in readers {
        statuses.extend(reader.await.expect("a reader"));
    }

    // Only calls in flight at the kill may fail, and the idempotent ones are
    // retried on the live replica, so in practice none does.
    let failed: Vec<_> = statuses.iter().filter(|status| **status != 200).collect();
    assert!(
        failed.len() <= CALLERS && failed.iter().all(|status| **status == 503),
        "{} of {} reads failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(statuses.len() > 50, "only {} reads in 3 s", statuses.len());
    let left = api_logs(&stack, "user service replica left");
    assert!(
        left.iter().any(|line| line["replica"] == doomed.as_str()),
        "the killed replica {doomed} was not dropped: {left:?}"
    );

    // The calls that met the dead replica were retried, each attempt its own
    // client span in the request's trace.
    stack.flush().await;
    let spans = stack.otlp.spans();
    let retry = spans
        .iter()
        .find(|span| span.kind == SpanKind::Client && span.attribute("rpc.grpc.retry.attempt") == Some("1"))
        .unwrap_or_else(|| panic!("no retried call among {} spans", spans.len()));
    let attempts: Vec<_> = spans
        .iter()
        .filter(|span| {
            span.trace_id == retry.trace_id
                && span.kind == SpanKind::Client
                && span.service == "api"
                && span.name == retry.name
                && span.parent_span_id == retry.parent_span_id
        })
        .collect();
    // The caller's role lookup is a `GetUser` of its own under the same
    // server span, when the request asked for it: a third span, which may
    // be the one retried. Each retried call met the dead replica once.
    assert!((2..=3).contains(&attempts.len()), "{attempts:#?}");
    let retried = attempts
        .iter()
        .filter(|span| span.attribute("rpc.grpc.retry.attempt").is_some())
        .count();
    let failed: Vec<_> = attempts
        .iter()
        .filter(|span| span.attribute("rpc.grpc.status_code") == Some("14"))
        .collect();
    assert_eq!(failed.len(), retried, "{attempts:#?}");
    for first in failed {
        assert_eq!(first.attribute("rpc.grpc.retry.attempt"), None, "{first:#?}");
    }
    assert_eq!(retry.attribute("rpc.grpc.status_code"), Some("0"), "{retry:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_while_the_user_service_is_down_answers_at_once_and_closes_once_it_is_back() {
    let mut stack = stack_with(Options {
        api: Some(Box::new(|config| {
            config.breaker.min_calls = 5;
            config.breaker.open_for = Duration::from_secs(3);
        })),
        ..Options::default()
    })
    .await;
    let (user, token) = signed_in_user(&stack).await;
    let url = stack.url(&format!("/v1/users/{}", user["id"].as_str().unwrap()));
    let get = || stack.http.get(&url).bearer_auth(&token).send();

    let addr = stack.user.addr;
    stack.user.stop().await.expect("the user service stops");
    // Calls fail until the failures trip the breaker.
    let mut opened = false;
    for _ in 0..50 {
        let response = get().await.expect("GET");
        assert_eq!(response.status(), 503, "with the user service down");
        if !api_logs(&stack, "user service circuit breaker opened").is_empty() {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker never opened:\n{}", stack.api.logs.text());

    // While open, the answer comes at once and says when to come back.
    for _ in 0..5 {
        let started = Instant::now();
        let response = get().await.expect("GET");
        let took = started.elapsed();
        assert_eq!(response.status(), 503);
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry_after), "Retry-After: {retry_after}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert!(
            took < Duration::from_millis(50),
            "an open breaker took {took:?} to answer"
        );
    }

    // Back where it was: after the cool-down a probe gets through, and then
    // every call.
    stack.user = spawn_user(&stack.db, &stack.kafka, addr, stack.export.clone())
        .await
        .expect("the user service starts again");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = get().await.expect("GET").status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the API did not recover within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        assert_eq!(get().await.expect("GET").status(), 200);
    }
    let changes: Vec<_> = api_logs(&stack, "user service circuit breaker")
        .into_iter()
        .map(|line| line["callchain.breaker.state"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(changes.first().map(String::as_str), Some("open"), "{changes:?}");
    assert_eq!(changes.last().map(String::as_str), Some("closed"), "{changes:?}");
    assert!(changes.iter().any(|state| state == "half_open"), "{changes:?}");
}

/// The time budget of a request on the test stack.
fn stack_budget() -> Duration {
    callchain_api::Config::for_tests("http://127.0.0.1:1".into(), String::new()).request_timeout
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_limit_of_requests_in_flight_the_api_answers_503_at_once_and_none_hang() {
    let stack = stack_with(Options {
        api: Some(Box::new(|config| config.max_in_flight = 2)),
        ..Options::default()
    })
    .await;
    let address = email("busy");
    stack.register(&address, PASSWORD).await;

    // Logins hash a password: each holds its place for a while.
    const LOGINS: usize = 24;
    let logins = (0..LOGINS).map(|_| {
        let (http, url, address) = (stack.http.clone(), stack.url("/v1/auth/login"), address.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .json(&json!({ "email": address, "password": PASSWORD }))
                .send()
                .await
                .expect("every login is answered");
            (response, started.elapsed())
        })
    });
    let mut answered = Vec::new();
    for login in logins.collect::<Vec<_>>() {
        answered.push(login.await.expect("a login"));
    }
    let (ok, shed): (Vec<_>, Vec<_>) = answered.iter().partition(|(response, _)| response.status() == 200);
    assert!(!ok.is_empty(), "no login got through");
    assert!(!shed.is_empty(), "all {LOGINS} logins got through a limit of 2");
    // "At once" is a bound a request that waited for a place would break:
    // a queued login waits for the hashing of those ahead of it, a hung one
    // for its whole budget (`REQUEST_TIMEOUT_MS`).
    let at_once = Duration::from_secs(2);
    assert!(stack_budget() > 2 * at_once);
    for (response, took) in shed {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert!(*took < at_once, "a shed login took {took:?} to be answered");
    }
    // The probes are never shed.
    let health = stack.http.get(stack.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
}
