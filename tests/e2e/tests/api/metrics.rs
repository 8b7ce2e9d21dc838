//! The services' metrics, exported over OTLP to the receiver in the test:
//! the semantic conventions' durations, recorded by the shared hops, with
//! their attributes, and the project's own.

use std::time::Duration;

use callchain_e2e::stack::Stack;
use callchain_testkit::{
    otlp::{MetricPoint, PointValue},
    service::{ServiceHandle, wait_until},
};

use crate::helpers::{PASSWORD, email, stack};

/// The points of one service.
fn of<'a>(points: &'a [MetricPoint], service: &str) -> Vec<&'a MetricPoint> {
    points.iter().filter(|point| point.service == service).collect()
}

/// Flushes every service's metrics until the latest points of `name`
/// satisfy `done`, for up to 15 s; returns them either way.
async fn flushed_until(stack: &Stack, name: &str, done: impl Fn(&[MetricPoint]) -> bool) -> Vec<MetricPoint> {
    flushed_within(stack, name, Duration::from_secs(15), done).await
}

/// The same, for up to `patience`.
async fn flushed_within(
    stack: &Stack,
    name: &str,
    patience: Duration,
    done: impl Fn(&[MetricPoint]) -> bool,
) -> Vec<MetricPoint> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        stack.flush().await;
        let points = stack.otlp.latest_points(name);
        if done(&points) || tokio::time::Instant::now() >= deadline {
            return points;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_n_requests_the_request_duration_histogram_of_their_route_counts_n() {
    let stack = stack().await;
    let token = stack.admin_token().await;
    let user = stack.register(&email("counted"), PASSWORD).await;
    let id = user["id"].as_str().unwrap();
    const N: u64 = 7;
    for _ in 0..N {
        assert_eq!(stack.get_user(id, &token).await.status(), 200);
    }
    let missing = stack.get_user(uuid::Uuid::new_v4(), &token).await;
    assert_eq!(missing.status(), 404);

    stack.flush().await;
    let points = stack.otlp.latest_points("http.server.request.duration");
    let route = |status: &str| {
        of(&points, "api")
            .into_iter()
            .filter(|p| {
                p.attribute("http.route") == Some("/v1/users/{id}")
                    && p.attribute("http.request.method") == Some("GET")
                    && p.attribute("http.response.status_code") == Some(status)
            })
            .map(|p| p.value.clone())
            .collect::<Vec<_>>()
    };
    match route("200").as_slice() {
        [
            PointValue::Histogram {
                count,
                sum,
                bounds,
                cumulative,
                ..
            },
        ] => {
            assert_eq!(*count, N, "{points:#?}");
            assert!(*sum > 0.0);
            assert!(*cumulative, "Prometheus-compatible stores take cumulative values");
            assert_eq!(bounds, &callchain_telemetry::metrics::DURATION_BUCKETS);
        }
        other => panic!("one histogram of GET /v1/users/{{id}} 200 expected, not {other:?}; all: {points:#?}"),
    }
    assert!(
        matches!(route("404").as_slice(), [PointValue::Histogram { count: 1, .. }]),
        "{points:#?}"
    );
    assert!(
        points.iter().all(|p| p.unit == "s"),
        "durations are in seconds: {points:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rpc_db_and_messaging_instruments_carry_their_attributes() {
    let stack = stack().await;
    let user = stack.register(&email("measured"), PASSWORD).await;
    let id = user["id"].as_str().unwrap().to_owned();
    let rows = stack.events_of(&id).await;
    assert_eq!(rows.len(), 1, "the event reached the consumer");
    stack.flush().await;

    let rpc = |name: &str, service: &str| {
        let points = stack.otlp.latest_points(name);
        let found = of(&points, service).into_iter().any(|p| {
            p.attribute("rpc.system") == Some("grpc")
                && p.attribute("rpc.service") == Some("user.v1.UserService")
                && p.attribute("rpc.method") == Some("CreateUser")
                && p.attribute("rpc.grpc.status_code") == Some("0")
                && p.unit == "s"
                && p.number() >= 1.0
        });
        assert!(found, "{name} of {service}: {points:#?}");
    };
    rpc("rpc.client.call.duration", "api");
    rpc("rpc.server.call.duration", "user");

    let db = stack.otlp.latest_points("db.client.operation.duration");
    for (service, operation, collection) in [
        ("user", "INSERT", "users"),
        ("user", "INSERT", "outbox"),
        ("consumer", "INSERT", "user_events"),
    ] {
        let found = of(&db, service).into_iter().any(|p| {
            p.attribute("db.system.name") == Some("postgresql")
                && p.attribute("db.operation.name") == Some(operation)
                && p.attribute("db.collection.name") == Some(collection)
                && p.unit == "s"
        });
        assert!(found, "{operation} {collection} of {service}: {db:#?}");
    }

    let topic = stack.kafka.topic.as_str();
    let sent = stack.otlp.latest_points("messaging.client.sent.messages");
    let found = of(&sent, "user").into_iter().any(|p| {
        p.attribute("messaging.system") == Some("kafka")
            && p.attribute("messaging.operation.name") == Some("send")
            && p.attribute("messaging.destination.name") == Some(topic)
            && p.attribute("error.type").is_none()
            && p.unit == "{message}"
            && matches!(p.value, PointValue::Sum { value, cumulative: true } if value >= 1.0)
    });
    assert!(found, "{sent:#?}");

    // A message's processing ends once its offset is stored, after its row
    // is written.
    let processed = flushed_until(&stack, "messaging.process.duration", |points| {
        !of(points, "consumer").is_empty()
    })
    .await;
    let found = of(&processed, "consumer").into_iter().any(|p| {
        p.attribute("messaging.system") == Some("kafka")
            && p.attribute("messaging.operation.name") == Some("process")
            && p.attribute("messaging.destination.name") == Some(topic)
            && p.attribute("messaging.consumer.group.name") == Some(stack.kafka.group.as_str())
            && p.number() >= 1.0
    });
    assert!(found, "{processed:#?}");
}

/// The user service's value of a gauge without attributes.
fn gauge(points: &[MetricPoint], service: &str) -> Option<f64> {
    of(points, service).first().map(|point| point.number())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_backlog_rises_while_the_broker_is_down_and_returns_to_0_when_it_is_back() {
    let kafka = callchain_testkit::kafka::Kafka::own()
        .await
        .expect("a Kafka broker of the test's own");
    let mut stack = Stack::start_on(kafka).await.expect("the test stack");
    stack.wait_until_published(Duration::from_secs(30)).await.unwrap();
    let empty = flushed_until(&stack, "callchain.outbox.backlog", |p| gauge(p, "user") == Some(0.0)).await;
    assert_eq!(gauge(&empty, "user"), Some(0.0), "{empty:#?}");

    stack.kafka.broker().kill();
    for label in ["backlog-1", "backlog-2", "backlog-3"] {
        stack.register(&email(label), PASSWORD).await;
    }
    let waiting = flushed_until(&stack, "callchain.outbox.backlog", |p| gauge(p, "user") == Some(3.0)).await;
    assert_eq!(gauge(&waiting, "user"), Some(3.0), "three events wait: {waiting:#?}");
    assert_eq!(waiting[0].unit, "{row}");
    let age = flushed_until(&stack, "callchain.outbox.oldest_age", |p| {
        gauge(p, "user").is_some_and(|age| age > 0.0)
    })
    .await;
    assert!(gauge(&age, "user").is_some_and(|age| age > 0.0), "{age:#?}");

    tokio::task::block_in_place(|| stack.kafka.broker().restart()).expect("the broker restarts");
    let drained = flushed_within(&stack, "callchain.outbox.backlog", Duration::from_secs(60), |p| {
        gauge(p, "user") == Some(0.0)
    })
    .await;
    assert_eq!(gauge(&drained, "user"), Some(0.0), "{drained:#?}");
    let age = flushed_until(&stack, "callchain.outbox.oldest_age", |p| gauge(p, "user") == Some(0.0)).await;
    assert_eq!(gauge(&age, "user"), Some(0.0), "{age:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_lag_is_reported_per_partition_and_returns_to_0_once_the_events_are_written() {
    let stack = stack().await;
    let topic = stack.kafka.topic.clone();
    let lag_of = |points: &[MetricPoint]| -> Vec<(String, i64)> {
        let mut lag: Vec<(String, i64)> = of(points, "consumer")
            .into_iter()
            .filter(|p| p.attribute("messaging.destination.name") == Some(topic.as_str()))
            .map(|p| {
                let partition = p.attribute("messaging.destination.partition.id").unwrap_or_default();
                (partition.to_owned(), p.number() as i64)
            })
            .collect();
        lag.sort_by(|a, b| a.0.cmp(&b.0));
        lag
    };

    stack.kafka.wait_until_consumed(Duration::from_secs(30)).await.unwrap();
    // Holding the consumer's table locked, the consumer cannot write its
    // batch, so it commits no offset: the events it read wait, as lag.
    let mut lock = stack.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE user_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    for n in 0..6 {
        stack.register(&email(&format!("lagging-{n}")), PASSWORD).await;
    }
    stack.wait_until_published(Duration::from_secs(30)).await.unwrap();
    let behind = flushed_until(&stack, "callchain.consumer.lag", |points| {
        lag_of(points).iter().map(|(_, lag)| lag).sum::<i64>() >= 6
    })
    .await;
    let lag = lag_of(&behind);
    assert_eq!(
        lag.iter().map(|(_, lag)| lag).sum::<i64>(),
        6,
        "six events read and not committed: {behind:#?}"
    );
    assert_eq!(
        lag.iter().map(|(partition, _)| partition.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2"],
        "one series per partition of the topic: {behind:#?}"
    );
    assert!(behind.iter().all(|p| p.unit == "{message}"));

    lock.rollback().await.unwrap();
    let caught_up = flushed_within(&stack, "callchain.consumer.lag", Duration::from_secs(30), |points| {
        let lag = lag_of(points);
        lag.len() == 3 && lag.iter().all(|(_, lag)| *lag == 0)
    })
    .await;
    let lag = lag_of(&caught_up);
    assert!(lag.len() == 3 && lag.iter().all(|(_, lag)| *lag == 0), "{caught_up:#?}");
}

/// The API's value of a counter (or gauge) with exactly `attributes`.
fn api_value(points: &[MetricPoint], attributes: &[(&str, &str)]) -> Option<f64> {
    of(points, "api")
        .into_iter()
        .find(|p| {
            p.attributes.len() == attributes.len()
                && attributes.iter().all(|(key, value)| p.attribute(key) == Some(value))
        })
        .map(|p| p.number())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apis_throttled_shed_and_retried_calls_are_counted_and_its_breaker_state_reported() {
    let mut stack = Stack::start_with(callchain_e2e::stack::Options {
        api: Some(Box::new(|config| {
            config.max_in_flight = 2;
            config.breaker.min_calls = 5;
            config.breaker.open_for = Duration::from_secs(3);
        })),
        ..Default::default()
    })
    .await
    .expect("the test stack");
    let (user, token) = crate::helpers::signed_in_user(&stack).await;
    let address = user["email"].as_str().unwrap().to_owned();
    let login = |address: &str, password: &'static str| {
        let (http, url, address) = (stack.http.clone(), stack.url("/v1/auth/login"), address.to_owned());
        async move {
            http.post(url)
                .json(&serde_json::json!({ "email": address, "password": password }))
                .send()
                .await
                .expect("a login is answered")
                .status()
                .as_u16()
        }
    };

    // Throttled: the account's limit of failed logins (5 on the test stack),
    // then three more, one after the other.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(login(&address, "a wrong password").await);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);

    // Shed: logins of another account at once, past a limit of 2 in flight
    // (each hashes a password, so holds its place a while).
    let other = email("busy");
    stack.register(&other, PASSWORD).await;
    let logins: Vec<_> = (0..16).map(|_| tokio::spawn(login(&other, PASSWORD))).collect();
    let mut shed = 0;
    for login in logins {
        if login.await.unwrap() == 503 {
            shed += 1;
        }
    }
    assert!(shed > 0, "no login was shed past a limit of 2");

    // The breaker: closed, then open once the user service answers every
    // call UNAVAILABLE (each read retried first).
    let url = stack.url(&format!("/v1/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(
        stack.http.get(&url).bearer_auth(&token).send().await.unwrap().status(),
        200
    );
    let closed = flushed_until(&stack, "callchain.upstream.breaker.state", |p| {
        api_value(p, &[("callchain.breaker.state", "closed")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        api_value(&closed, &[("callchain.breaker.state", "open")]),
        Some(0.0),
        "{closed:#?}"
    );
    let addr = stack.user.addr;
    stack.user.stop().await.expect("the user service stops");
    let mut faulty = callchain_e2e::stack::user_config(&stack.db, &stack.kafka);
    faulty.faults.error_rate = 1.0;
    stack.user = ServiceHandle::spawn_at(addr, "user", stack.export.clone(), move |listener, shutdown| {
        callchain_user::run(faulty, listener, async move {
            let _ = shutdown.await;
        })
    })
    .expect("the faulty user service starts");
    wait_until(&mut stack.user, || callchain_user::healthcheck(addr))
        .await
        .unwrap();
    // Until the API has reconnected to the restarted service, its calls fail
    // in the API itself (no replica to send to), unretried, and may open the
    // breaker first; once open for its 3 s, a probe reaches the faulty
    // service, whose UNAVAILABLE is retried. So: until the breaker is open
    // and a read has been retried.
    let retried = |points: &[MetricPoint]| {
        api_value(
            points,
            &[("rpc.service", "user.v1.UserService"), ("rpc.method", "GetUser")],
        )
        .is_some_and(|retries| retries >= 1.0)
    };
    for _ in 0..200 {
        assert_eq!(
            stack.http.get(&url).bearer_auth(&token).send().await.unwrap().status(),
            503
        );
        stack.api.flush().await;
        let state = stack.otlp.latest_points("callchain.upstream.breaker.state");
        let retries = stack.otlp.latest_points("callchain.upstream.retries");
        if api_value(&state, &[("callchain.breaker.state", "open")]) == Some(1.0) && retried(&retries) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = stack.otlp.latest_points("callchain.upstream.breaker.state");
    assert_eq!(
        api_value(&state, &[("callchain.breaker.state", "open")]),
        Some(1.0),
        "{state:#?}"
    );
    assert_eq!(
        api_value(&state, &[("callchain.breaker.state", "closed")]),
        Some(0.0),
        "{state:#?}"
    );
    assert_eq!(
        api_value(&state, &[("callchain.breaker.state", "half_open")]),
        Some(0.0),
        "{state:#?}"
    );

    stack.api.flush().await;
    let throttled = stack.otlp.latest_points("callchain.throttled");
    assert_eq!(
        api_value(&throttled, &[("callchain.throttle", "login")]),
        Some(3.0),
        "{throttled:#?}"
    );
    let shed_points = stack.otlp.latest_points("callchain.http.shed");
    assert_eq!(api_value(&shed_points, &[]), Some(f64::from(shed)), "{shed_points:#?}");
    let retries = stack.otlp.latest_points("callchain.upstream.retries");
    assert!(
        api_value(
            &retries,
            &[("rpc.service", "user.v1.UserService"), ("rpc.method", "GetUser")]
        )
        .is_some_and(|retries| retries >= 1.0),
        "the reads the user service answered UNAVAILABLE were retried: {retries:#?}"
    );
}
