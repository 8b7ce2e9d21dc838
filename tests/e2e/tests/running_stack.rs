//! End-to-end against an already running stack — `make up`, or any
//! deployment — given its URLs, with the trace read back from Jaeger's query
//! API. `make e2e-up` runs these; `make test` leaves them out (they need the
//! stack) and covers the same chain with its own in-test parts.
//!
//! - `CALLCHAIN_API_URL`: the API, e.g. `http://localhost:8080`
//! - `CALLCHAIN_JAEGER_URL`: Jaeger's query service, e.g. `http://localhost:16686`

use std::time::{Duration, Instant};

use callchain_e2e::jaeger::spans_from_jaeger;
use callchain_testkit::spans::{assert_registration_chain, has_registration_chain};
use serde_json::{Value, json};

fn url(name: &str) -> String {
    std::env::var(name)
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| {
            panic!("{name} is not set: these tests target a running stack; run `make up`, then `make e2e-up`")
        })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a running stack: `make up`, then `make e2e-up`"]
async fn running_stack_register_login_read_and_find_the_whole_trace_in_jaeger() {
    let api = url("CALLCHAIN_API_URL");
    let jaeger = url("CALLCHAIN_JAEGER_URL");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let email = format!("e2e-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple";

    let response = http
        .post(format!("{api}/v1/users"))
        .json(&json!({ "email": email, "name": "E2E", "password": password }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    let trace_id = traceparent.split('-').nth(1).expect("a traceparent").to_owned();
    let user: Value = response.json().await.unwrap();

    let login: Value = http
        .post(format!("{api}/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("a token");
    let read = http
        .get(format!("{api}/v1/users/{}", user["id"].as_str().unwrap()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // The collector batches, Jaeger indexes: poll until the chain is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let answer = http.get(format!("{jaeger}/api/traces/{trace_id}")).send().await;
        let spans = match answer {
            Ok(answer) if answer.status().is_success() => {
                spans_from_jaeger(&answer.json::<Value>().await.unwrap()).expect("Jaeger's trace JSON")
            }
            _ => Vec::new(),
        };
        if has_registration_chain(&spans) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_registration_chain(&spans);
}
