//! The span records the services' telemetry writes are what tracechain
//! reads: ids, parent, kind, status, links and attributes survive the trip.

use callchain_telemetry::TelemetryConfig;
use callchain_testkit::logs::LogBuffer;
use callchain_tracechain::{Kind, Logs, Status, Traces, logs::SPAN_TARGET};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[test]
fn tracechain_reads_the_records_the_telemetry_writes() {
    assert_eq!(SPAN_TARGET, callchain_telemetry::records::TARGET);
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let (dispatch, _guard) =
        callchain_telemetry::build(&TelemetryConfig::new("api", None), move || writer.clone()).unwrap();
    let trace_id = tracing::dispatcher::with_default(&dispatch, || {
        let server = tracing::info_span!(
            "request",
            otel.name = "POST /things",
            otel.kind = "server",
            http.response.status_code = 201
        );
        let _entered = server.enter();
        let send = tracing::info_span!(
            "send",
            otel.name = "send things",
            otel.kind = "producer",
            otel.status_code = "ERROR",
            otel.status_description = "broker down"
        );
        let process = tracing::info_span!(parent: None, "process", otel.kind = "consumer");
        process.add_link(send.context().span().span_context().clone());
        let _ = process.set_parent(send.context());
        process.in_scope(|| tracing::info!(offset = 41, "stored"));
        drop(process);
        drop(send);
        server.context().span().span_context().trace_id().to_string()
    });

    let text = buffer.text();
    let traces = Traces::new(Logs::parse(&text));
    let tree = traces.tree(&trace_id).expect("the trace");
    assert!(tree.is_complete(), "{}", callchain_tracechain::text::render(&tree));
    let spans: Vec<_> = tree
        .walk()
        .iter()
        .map(|v| (v.depth, tree.nodes[v.node].span.clone()))
        .collect();
    let (server, send, process) = (&spans[0].1, &spans[1].1, &spans[2].1);
    assert_eq!((spans[0].0, spans[1].0, spans[2].0), (0, 1, 2));
    assert_eq!(
        (server.name.as_str(), server.kind, server.service.as_str()),
        ("POST /things", Kind::Server, "api")
    );
    assert_eq!(server.attribute("http.response.status_code"), Some("201"));
    assert_eq!((send.kind, send.status), (Kind::Producer, Status::Error));
    assert_eq!(send.status_message.as_deref(), Some("broker down"));
    assert_eq!(process.kind, Kind::Consumer);
    assert_eq!(process.links[0].span_id, send.span_id);
    assert_eq!(tree.nodes[tree.walk()[2].node].events[0].message, "stored");
}
