//! One user's journey through a running system, judged by its trace in
//! Jaeger: register, log in, read yourself; then the registration's whole
//! call chain, read back from Jaeger's query API, must be ARCHITECTURE.md's eight
//! spans. `make e2e-up` runs it against `make up`'s stack, and `make test`
//! against the services exporting through the collector into Jaeger, so both
//! Jaegers are judged the same way.

use std::time::{Duration, Instant};

use crate::chain::{assert_registration_chain, has_registration_chain};
use serde_json::{Value, json};

use crate::jaeger::spans_from_jaeger;

/// Registers, logs in and reads the user through the API at `api`, then
/// waits (up to 60 s) for the registration's trace in the Jaeger at `jaeger`
/// and checks it, with events on `topic`. Returns the trace id.
pub async fn register_and_find_the_whole_trace_in_jaeger(api: &str, jaeger: &str, topic: &str) -> String {
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

    // The services batch, the collector batches, Jaeger indexes: poll until
    // the chain is whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let answer = http.get(format!("{jaeger}/api/traces/{trace_id}")).send().await;
        let spans = match answer {
            Ok(answer) if answer.status().is_success() => {
                spans_from_jaeger(&answer.json::<Value>().await.unwrap()).expect("Jaeger's trace JSON")
            }
            _ => Vec::new(),
        };
        if has_registration_chain(&spans, topic) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_registration_chain(&spans, topic);

    let services: Value = http
        .get(format!("{jaeger}/api/services"))
        .send()
        .await
        .expect("Jaeger's services")
        .json()
        .await
        .unwrap();
    for service in ["api", "user", "consumer"] {
        assert!(
            services["data"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n == service)),
            "Jaeger lists service `{service}`: {services}"
        );
    }
    trace_id
}
