//! The call chain every registration must leave, as ARCHITECTURE.md draws it,
//! checked on spans from any source: the in-test OTLP receiver, or Jaeger's
//! query API (`make test` and `make e2e-up` alike).

use callchain_testkit::spans::{SpanKind, SpanRecord, Trace};

/// The spans of the request chain of ARCHITECTURE.md, for `POST /v1/users` with
/// events on `topic` (`user-events` in a real stack). The event goes through
/// the user service's outbox, so `send` sits one hop down, under the user
/// service's server span: the relay continues the context the outbox row kept.
fn chain(topic: &str) -> [(&'static str, String, SpanKind); 8] {
    [
        ("api", "POST /v1/users".to_owned(), SpanKind::Server),
        ("api", "user.v1.UserService/CreateUser".to_owned(), SpanKind::Client),
        ("user", "user.v1.UserService/CreateUser".to_owned(), SpanKind::Server),
        ("user", "INSERT users".to_owned(), SpanKind::Client),
        ("user", "INSERT outbox".to_owned(), SpanKind::Client),
        ("user", format!("send {topic}"), SpanKind::Producer),
        ("consumer", format!("process {topic}"), SpanKind::Consumer),
        ("consumer", "INSERT user_events".to_owned(), SpanKind::Client),
    ]
}

/// Whether every span of the registration chain has arrived (to wait on).
pub fn has_registration_chain(spans: &[SpanRecord], topic: &str) -> bool {
    chain(topic).iter().all(|(service, name, kind)| {
        spans
            .iter()
            .any(|s| s.service == *service && s.name == *name && s.kind == *kind)
    })
}

/// Checks the whole trace of one `POST /v1/users`, as ARCHITECTURE.md draws it:
/// eight spans across `api`, `user` and `consumer` under one trace id, with
/// the right parents, kinds and attributes. Used both on spans from the
/// in-test OTLP receiver and on spans read back from Jaeger.
pub fn assert_registration_chain(spans: &[SpanRecord], topic: &str) {
    let trace = Trace(spans);
    let [http, client, server, insert, outbox, send, process, write] =
        chain(topic).map(|(service, name, kind)| trace.span(service, &name, kind));

    let trace_ids: std::collections::BTreeSet<&str> = [http, client, server, insert, outbox, send, process, write]
        .iter()
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(
        trace_ids.len(),
        1,
        "one trace id for the whole chain:\n{}",
        trace.draw()
    );

    assert_eq!(http.parent_span_id, None, "the API span is the root:\n{}", trace.draw());
    trace.assert_parent(client, http);
    trace.assert_parent(server, client);
    trace.assert_parent(insert, server);
    trace.assert_parent(outbox, server);
    trace.assert_parent(send, server);
    trace.assert_parent(process, send);
    trace.assert_parent(write, process);
    assert!(
        process.links.contains(&send.span_id),
        "the process span links to its producer span: {:?}",
        process.links
    );

    let expect = |span: &SpanRecord, key: &str, value: &str| {
        assert_eq!(
            span.attribute(key),
            Some(value),
            "{key} of `{}` ({})",
            span.name,
            span.service
        );
    };
    expect(http, "http.request.method", "POST");
    expect(http, "http.route", "/v1/users");
    expect(http, "http.response.status_code", "201");
    for span in [client, server] {
        expect(span, "rpc.system", "grpc");
        expect(span, "rpc.service", "user.v1.UserService");
        expect(span, "rpc.method", "CreateUser");
        expect(span, "rpc.grpc.status_code", "0");
    }
    for (span, table) in [(insert, "users"), (outbox, "outbox"), (write, "user_events")] {
        expect(span, "db.system.name", "postgresql");
        expect(span, "db.operation.name", "INSERT");
        expect(span, "db.collection.name", table);
        let query = span.attribute("db.query.text").unwrap_or_default();
        assert!(
            query.starts_with(&format!("INSERT INTO {table}")) && query.contains("$1"),
            "the query text is the parameterised statement: {query}"
        );
    }
    for (span, operation) in [(send, "send"), (process, "process")] {
        expect(span, "messaging.system", "kafka");
        expect(span, "messaging.operation.type", operation);
        expect(span, "messaging.destination.name", topic);
        for key in [
            "messaging.kafka.message.key",
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
        ] {
            assert!(span.attribute(key).is_some(), "{key} missing on `{}`", span.name);
        }
    }
    expect(
        send,
        "messaging.kafka.offset",
        process.attribute("messaging.kafka.offset").unwrap_or_default(),
    );
}
