//! The `make dev` path of the spans: the services export OTLP to the
//! OpenTelemetry Collector, which forwards to Jaeger; the registration's
//! trace is read back from Jaeger's query API and judged as `make e2e-up`
//! judges `make up`'s Jaeger.

use callchain_e2e::journey::register_and_find_the_whole_trace_in_jaeger;
use callchain_e2e::stack::{JAEGER_VAR, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_exported_through_the_collector_is_whole_in_jaeger() {
    let stack = Stack::start_through_collector()
        .await
        .unwrap_or_else(|error| panic!("cannot start the test stack: {error:#}"));
    let jaeger = std::env::var(JAEGER_VAR)
        .unwrap_or_else(|_| panic!("no Jaeger for the tests ({JAEGER_VAR} is unset): run the tests with `make test`"));
    let api = format!("http://{}", stack.api.addr);
    register_and_find_the_whole_trace_in_jaeger(&api, &jaeger, &stack.kafka.topic).await;
    assert_eq!(
        stack.otlp.count(),
        0,
        "every span went to the collector, none to the in-test receiver"
    );
}
