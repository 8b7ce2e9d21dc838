//! A client cannot make a span as large as it likes: an attribute value is
//! cut to the telemetry's limit (`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`) in the
//! exported span and in its record alike, so one request cannot push a
//! whole export batch over the collector's message size limit.

use std::time::Duration;

use callchain_telemetry::{TelemetryConfig, records::TARGET};
use callchain_testkit::spans::SpanKind;

use crate::helpers::{stack, trace_id};

#[tokio::test(flavor = "multi_thread")]
async fn a_64_kb_url_path_is_exported_and_recorded_cut_to_the_attribute_limit() {
    let stack = stack().await;
    let path = format!("/v1/users/{}", "x".repeat(64_000));

    let response = stack.http.get(stack.url(&path)).send().await.unwrap();
    let trace_id = trace_id(&response);
    stack.flush().await;

    let spans = stack
        .otlp
        .wait_for_trace(&trace_id, Duration::from_secs(15), |spans| {
            spans.iter().any(|span| span.kind == SpanKind::Server)
        })
        .await;
    let server = spans
        .iter()
        .find(|span| span.service == "api" && span.kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span of the api in {spans:#?}"));
    // The limit the stack's services run with: the setting's default.
    let limit = TelemetryConfig::new("api", None::<String>).attribute_value_length_limit;
    let exported = server.attribute("url.path").expect("the server span's url.path");
    assert!(
        exported.len() <= limit,
        "the exported url.path has {} bytes",
        exported.len()
    );
    assert!(
        path.starts_with(exported),
        "the exported url.path is the request's, cut"
    );

    let records = stack.api.logs.lines_of_trace(&trace_id);
    let record = records
        .iter()
        .find(|line| line["target"] == TARGET && line["span"]["kind"] == "server")
        .unwrap_or_else(|| panic!("no record of the server span in {records:#?}"));
    let recorded = record["span"]["attributes"]["url.path"]
        .as_str()
        .expect("the record's url.path");
    assert!(
        recorded.len() <= limit,
        "the recorded url.path has {} bytes",
        recorded.len()
    );
    assert_eq!(recorded, exported, "the record says what the span exported");
}
