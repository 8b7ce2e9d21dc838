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
        Kafka::shared()
            .await
            .expect("the run's Kafka (make test, or scripts/test-parts.sh up)"),
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
                201 => {
                    user = Some(
                        response.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    )
                }
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
        parts.query(r#"count by (__name__) ({service_name="api"})"#).await
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
                series["labels"].as_array().is_some_and(|labels| {
                    labels
                        .iter()
                        .any(|label| label["value"].as_str().is_some_and(|v| v.ends_with("GetUser")))
                })
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

/// Runs headless Chromium on vmui's `url` with `args`.
fn chromium(url: &str, args: &[&str]) -> std::process::Output {
    // vmui fetches the query's answer after it loads: time for it.
    let args: Vec<&str> = ["--virtual-time-budget=15000", "--window-size=1280,960"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    callchain_testkit::chromium::headless(url, &args, "the vmui test")
}

/// vmui, VictoriaMetrics' own UI, in headless Chromium: the API's request
/// rate drawn as one series. A picture of it is saved beside the test's
/// build (and to `VMUI_SCREENSHOT` when set: docs/images/vmui-request-rate.png
/// is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmui_draws_the_apis_request_rate_in_chromium() {
    let parts = OwnParts::start().expect("the parts start");
    let stack = Arc::new(stack_on(&parts, Options::default()).await);
    let (id, token) = registered(&stack).await;
    // Steady traffic, so the rate has samples to be drawn from.
    let traffic = {
        let (stack, id, token) = (stack.clone(), id.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                read(&stack, &id, &token).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let query = r#"sum by (http_route) (rate(http_server_request_duration_seconds_count{service_name="api"}[1m]))"#;
    let reads =
        r#"sum(rate(http_server_request_duration_seconds_count{service_name="api", http_route="/v1/users/{id}"}[1m]))"#;
    let rate = parts
        .wait_for_value(reads, Duration::from_secs(90), |rate| rate > 0.0)
        .await;
    traffic.abort();
    assert!(
        rate.is_ok(),
        "the store has a request rate of the API's reads: `{reads}` is {rate:?}"
    );

    let encoded: String = url_encode(query);
    let url = format!(
        "{}/vmui/?#/?g0.expr={encoded}&g0.range_input=1m&g0.tab=0",
        parts.store()
    );
    let dom = chromium(&url, &["--dump-dom"]);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The query as typed, and its series drawn with a legend: the route
    // and the last value, above zero.
    assert!(
        dom.contains("http_server_request_duration_seconds_count{service_name=\"api\"}")
            || dom.contains("http_server_request_duration_seconds_count{service_name=&quot;api&quot;}"),
        "the query is shown:\n{dom}"
    );
    assert!(
        dom.contains("class=\"vm-legend-item"),
        "a series is drawn with its legend:\n{dom}"
    );
    assert!(dom.contains("/v1/users/{id}"), "its legend names the route:\n{dom}");
    // Each series' `last:` value in its legend: the reads' is above 0.
    let lasts: Vec<f64> = dom
        .split("last:")
        .skip(1)
        .filter_map(|rest| {
            rest.split('>')
                .find_map(|piece| piece.split('<').next()?.trim().parse::<f64>().ok())
        })
        .collect();
    assert!(
        lasts.iter().any(|&last| last > 0.0),
        "a legend's last value is a rate above 0 ({lasts:?}):\n{dom}"
    );

    // And a picture of it.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmui-request-rate.png");
    let shot = chromium(&url, &[&format!("--screenshot={}", screenshot.display())]);
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "the screenshot has something drawn: {} bytes",
        png.len()
    );
    if let Ok(copy) = std::env::var("VMUI_SCREENSHOT") {
        std::fs::copy(&screenshot, copy).expect("the screenshot is copied");
    }
}

/// `text` as a URL's fragment may carry it: everything but letters, digits
/// and `-_.~` percent-encoded.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The outbox backlog (`callchain.outbox.backlog`, the user service's rows
/// not yet published) and the consumer's lag (`callchain.consumer.lag`, per
/// partition) as the store holds them: the backlog rises while the broker
/// is down, and both return to 0 once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_backlog_rises_while_the_broker_is_down_then_it_and_the_consumer_lag_return_to_zero() {
    let parts = OwnParts::start().expect("the parts start");
    let kafka = Kafka::own().await.expect("a Kafka broker of the test's own");
    let mut stack = Stack::start_exporting_on(kafka, Export::Otlp(parts.otlp()), Options::default())
        .await
        .expect("the stack starts");
    let backlog = r#"max(callchain_outbox_backlog{service_name="user"})"#;
    let lag = r#"max(callchain_consumer_lag{service_name="consumer"})"#;
    let patience = Duration::from_secs(90);

    // One registration through: both series are there, at 0.
    registered(&stack).await;
    assert_eq!(
        parts.wait_for_value(backlog, patience, |rows| rows == 0.0).await,
        Ok(0.0),
        "`{backlog}`"
    );
    assert_eq!(
        parts.wait_for_value(lag, patience, |messages| messages == 0.0).await,
        Ok(0.0),
        "`{lag}`"
    );

    // The broker goes down; a registration still commits, its event waits
    // in the outbox.
    stack.kafka.broker().kill();
    registered(&stack).await;
    let risen = parts.wait_for_value(backlog, patience, |rows| rows >= 1.0).await;
    assert!(
        risen.is_ok(),
        "the backlog rises while the broker is down: `{backlog}` is {risen:?}"
    );

    // It comes back: the relay publishes, the consumer reads.
    stack.kafka.broker().restart().expect("the broker restarts");
    assert_eq!(
        parts
            .wait_for_value(backlog, Duration::from_secs(120), |rows| rows == 0.0)
            .await,
        Ok(0.0),
        "the backlog returns to 0 once the broker is back: `{backlog}`"
    );
    assert_eq!(
        parts
            .wait_for_value(lag, Duration::from_secs(120), |messages| messages == 0.0)
            .await,
        Ok(0.0),
        "the consumer's lag returns to 0: `{lag}`"
    );
}

/// The exemplars of the span metrics' duration histogram, as the collector
/// sends them on their way to the store: `(span name, trace id)`.
type Exemplars = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// An OTLP/HTTP metrics endpoint between the collector and the store: it
/// keeps each exemplar's trace id, and passes every request on to the store
/// (set in `store` once it runs), answering as the store answers.
async fn tap(store: Arc<std::sync::OnceLock<String>>, exemplars: Exemplars) -> String {
    use axum::{body::Bytes, extract::OriginalUri, http::StatusCode};
    use opentelemetry_proto::tonic::{collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::metric::Data};
    use prost::Message as _;

    let http = reqwest::Client::new();
    let pass_on = move |OriginalUri(uri): OriginalUri, body: Bytes| {
        let (store, exemplars, http) = (store.clone(), exemplars.clone(), http.clone());
        async move {
            if let Ok(request) = ExportMetricsServiceRequest::decode(body.clone()) {
                let metrics = request
                    .resource_metrics
                    .iter()
                    .flat_map(|resource| &resource.scope_metrics)
                    .flat_map(|scope| &scope.metrics);
                for metric in metrics.filter(|metric| metric.name == "traces.span.metrics.duration") {
                    let Some(Data::Histogram(histogram)) = &metric.data else {
                        continue;
                    };
                    for point in &histogram.data_points {
                        let span_name = point
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "span.name")
                            .and_then(|kv| kv.value.as_ref())
                            .and_then(|value| match &value.value {
                                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(name)) => {
                                    Some(name.clone())
                                }
                                _ => None,
                            })
                            .unwrap_or_default();
                        for exemplar in &point.exemplars {
                            let trace_id: String = exemplar.trace_id.iter().map(|byte| format!("{byte:02x}")).collect();
                            exemplars.lock().unwrap().push((span_name.clone(), trace_id));
                        }
                    }
                }
            }
            let Some(base) = store.get() else {
                return (StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
            };
            let path = uri.path().trim_start_matches("/tap");
            let answer = http
                .post(format!("{base}/opentelemetry{path}"))
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await;
            match answer {
                Ok(answer) => (
                    StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                    answer.bytes().await.unwrap_or_default(),
                ),
                Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/tap/v1/metrics", axum::routing::post(pass_on));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/tap")
}

/// An exemplar of the span metrics (the store keeps none, so it is read on
/// the collector's way to it) leads to its trace: Jaeger returns it whole,
/// the API's server span and the user service's under it, every parent
/// present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exemplars_trace_id_is_a_trace_jaeger_returns_whole() {
    let store = Arc::new(std::sync::OnceLock::new());
    let exemplars = Exemplars::default();
    let endpoint = tap(store.clone(), exemplars.clone()).await;
    let parts = OwnParts::start_with_metrics_through(Some(&endpoint)).expect("the parts start");
    store.set(parts.store()).unwrap();
    let stack = stack_on(&parts, Options::default()).await;
    let (id, token) = registered(&stack).await;
    for _ in 0..5 {
        assert_eq!(read(&stack, &id, &token).await, 200);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let trace_id = loop {
        let found = exemplars
            .lock()
            .unwrap()
            .iter()
            .find(|(span, _)| span == "GET /v1/users/{id}")
            .map(|(_, trace)| trace.clone());
        if let Some(trace_id) = found {
            break trace_id;
        }
        assert!(
            Instant::now() < deadline,
            "an exemplar of GET /v1/users/{{id}} among {:?}",
            exemplars.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The store holds the histogram it came with.
    let stored = parts
        .wait_for_value(
            r#"sum(traces_span_metrics_duration_milliseconds_count{service_name="api", span_name="GET /v1/users/{id}"})"#,
            Duration::from_secs(60),
            |count| count >= 5.0,
        )
        .await;
    assert_eq!(stored, Ok(5.0), "the store counts the five reads' spans");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer: Value = stack
            .http
            .get(format!("{}/api/traces/{trace_id}", parts.jaeger()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let spans = callchain_e2e::jaeger::spans_from_jaeger(&answer).unwrap_or_default();
        let services: std::collections::BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
        let ids: std::collections::BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
        let orphans = spans
            .iter()
            .filter(|span| {
                span.parent_span_id
                    .as_deref()
                    .is_some_and(|parent| !ids.contains(parent))
            })
            .count();
        if services.contains("api") && services.contains("user") && orphans == 0 {
            assert!(spans.iter().all(|span| span.trace_id == trace_id));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger returns the exemplar's trace {trace_id} whole (api and user spans, no orphan): {spans:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
