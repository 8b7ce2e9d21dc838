//! The metrics pipeline on the real parts: the services export over OTLP to
//! the collector, which writes their metrics, and the RED metrics it makes
//! from their spans, into VictoriaMetrics, where Jaeger's Monitor reads them
//! back; and vmui, VictoriaMetrics' UI, draws a query of them in headless
//! Chromium. Each test has a collector, Jaeger and store of its own
//! (`callchain_e2e::parts`), so it can count every request the store holds.
//!
//! Without the pipeline each fails: without the collector's metrics pipeline
//! (or the store) the queries find no series; without the span metrics
//! connector, or Jaeger's metrics storage, `/api/metrics/errors` answers no
//! series, or an error.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use callchain_e2e::{
    parts::OwnParts,
    stack::{Options, Stack},
};
use callchain_telemetry::Export;
use callchain_testkit::kafka::Kafka;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// The services exporting to `parts`' collector, as `options` say.
async fn stack_on(parts: &OwnParts, options: Options) -> Stack {
    Stack::start_exporting_on(
        Kafka::shared().await.expect("the run's Kafka (make test, or scripts/test-parts.sh up)"),
        Export::Otlp(parts.otlp()),
        options,
    )
    .await
    .expect("the stack starts")
}

/// Registers a user (again while the API answers 5xx: with faults on, a
/// call may fail) and logs in: its id and token.
async fn registered(stack: &Stack) -> (String, String) {
    let api = format!("http://{}", stack.api.addr);
    let email = format!("metrics-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut user = None;
    let mut token = None;
    for _ in 0..20 {
        if user.is_none() {
            let response = stack
                .http
                .post(format!("{api}/v1/users"))
                .json(&json!({ "email": email, "name": "Metrics", "password": PASSWORD }))
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                201 => user = Some(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()),
                409 => user = Some(String::new()),
                status => assert!(status >= 500, "registration answers {status}"),
            }
        }
        if user.is_some() {
            let response = stack
                .http
                .post(format!("{api}/v1/auth/login"))
                .json(&json!({ "email": email, "password": PASSWORD }))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                let login: Value = response.json().await.unwrap();
                token = Some(login["access_token"].as_str().unwrap().to_owned());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = token.expect("registered and logged in");
    let mut id = user.unwrap();
    if id.is_empty() {
        let me: Value = stack
            .http
            .get(format!("{api}/v1/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        id = me["id"].as_str().unwrap().to_owned();
    }
    (id, token)
}

/// `GET /v1/users/{id}`: its status.
async fn read(stack: &Stack, id: &str, token: &str) -> u16 {
    stack
        .http
        .get(format!("http://{}/v1/users/{id}", stack.api.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_n_requests_the_store_counts_n_requests_of_their_route() {
    let parts = OwnParts::start().expect("the parts start");
    let stack = stack_on(&parts, Options::default()).await;
    let (id, token) = registered(&stack).await;

    const N: u32 = 13;
    for _ in 0..N {
        assert_eq!(read(&stack, &id, &token).await, 200);
    }

    // http.server.request.duration, in seconds, as the store names it.
    let count = r#"sum(http_server_request_duration_seconds_count{service_name="api", http_route="/v1/users/{id}", http_request_method="GET", http_response_status_code="200"})"#;
    let stored = parts
        .wait_for_value(count, Duration::from_secs(60), |value| value >= f64::from(N))
        .await;
    assert_eq!(
        stored,
        Ok(f64::from(N)),
        "the store counts exactly the {N} requests of GET /v1/users/{{id}}: `{count}`; its series: {:#?}",
        parts
            .query(r#"count by (__name__) ({service_name="api"})"#)
            .await
    );
    // The collector's RED metrics of the same requests: one server span each.
    let calls = r#"sum(traces_span_metrics_calls_total{service_name="api", span_kind="SPAN_KIND_SERVER", span_name="GET /v1/users/{id}"})"#;
    let spans = parts
        .wait_for_value(calls, Duration::from_secs(60), |value| value >= f64::from(N))
        .await;
    assert_eq!(spans, Ok(f64::from(N)), "`{calls}`");
}

/// Jaeger's Monitor: the error rate it reads from the store, of the user
/// service answering half its calls UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_half_the_user_calls_failing_jaegers_monitor_reads_an_error_rate_of_about_one_half() {
    let parts = OwnParts::start().expect("the parts start");
    let options = Options {
        user: Some(Arc::new(|config: &mut callchain_user::Config| {
            config.faults.error_rate = 0.5;
        })),
        // The breaker would stop calling a user service failing half its calls.
        api: Some(Box::new(|config: &mut callchain_api::Config| {
            config.breaker.failure_rate = 1.0;
        })),
        ..Options::default()
    };
    let stack = stack_on(&parts, options).await;
    let (id, token) = registered(&stack).await;
    for _ in 0..300 {
        read(&stack, &id, &token).await;
    }

    // The span metrics of GetUser, through Jaeger's metrics storage: the
    // fraction of its server spans in error.
    let jaeger = parts.jaeger();
    let deadline = Instant::now() + Duration::from_secs(90);
    let rate = loop {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let answer: Value = stack
            .http
            .get(format!("{jaeger}/api/metrics/errors"))
            .query(&[
                ("service", "user"),
                ("groupByOperation", "true"),
                ("spanKind", "server"),
                ("endTs", &end.to_string()),
                ("lookback", "600000"),
                ("step", "5000"),
                ("ratePer", "600000"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let get_user = answer["metrics"].as_array().and_then(|series| {
            series.iter().find(|series| {
                series["labels"]
                    .as_array()
                    .is_some_and(|labels| labels.iter().any(|label| label["value"].as_str().is_some_and(|v| v.ends_with("GetUser"))))
            })
        });
        let last = get_user
            .and_then(|series| series["metricPoints"].as_array())
            .and_then(|points| points.last())
            .and_then(|point| point["gaugeValue"]["doubleValue"].as_f64());
        if let Some(rate) = last
            && (0.3..=0.7).contains(&rate)
        {
            break rate;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger's /api/metrics/errors for user's GetUser reads about 0.5, not {last:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!((0.3..=0.7).contains(&rate), "{rate}");
}
