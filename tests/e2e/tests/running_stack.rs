//! End-to-end against an already running stack — `make up`, or any
//! deployment — given its URLs, with the trace read back from Jaeger's query
//! API. `make e2e-up` runs these; `make test` runs the same journey
//! (`callchain_e2e::journey`) against its own services, collector and Jaeger
//! in `tests/api/jaeger.rs`.
//!
//! - `CALLCHAIN_API_URL`: the API, e.g. `http://localhost:8080`
//! - `CALLCHAIN_JAEGER_URL`: Jaeger's query service, e.g. `http://localhost:16686`

use callchain_e2e::journey::register_and_find_the_whole_trace_in_jaeger;

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
    register_and_find_the_whole_trace_in_jaeger(
        &url("CALLCHAIN_API_URL"),
        &url("CALLCHAIN_JAEGER_URL"),
        callchain_events::TOPIC,
    )
    .await;
}
