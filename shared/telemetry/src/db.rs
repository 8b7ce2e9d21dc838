//! The client span of one database statement, with the OpenTelemetry
//! database attributes, and its `db.client.operation.duration`. The query
//! text is the parameterised statement; values never reach a span. The pool
//! itself is `callchain_runtime::db`.

use tracing::Span;

/// A `client` span named `OPERATION collection` (`INSERT users`).
///
/// ```
/// use tracing::Instrument as _;
/// # async fn run() {
/// let span = callchain_telemetry::db::span("INSERT", "users", "INSERT INTO users (id) VALUES ($1)");
/// async { /* execute the statement */ }.instrument(span).await;
/// # }
/// ```
pub fn span(operation: &'static str, collection: &'static str, query: &'static str) -> Span {
    tracing::info_span!(
        "db.statement",
        otel.name = %format_args!("{operation} {collection}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = collection,
        db.query.text = query,
        db.operation.batch.size = tracing::field::Empty,
    )
}

/// The span of one message's share in a multi-row statement: the same client
/// span as [`span`], a child of `parent` (the span of the message the row
/// came from), carrying how many rows the statement holds. Each message of a
/// batch so keeps its own trace.
///
/// `db.operation.batch.size` is recorded only for two rows or more, as the
/// OpenTelemetry conventions ask.
pub fn batch_span(
    parent: &Span,
    operation: &'static str,
    collection: &'static str,
    query: &'static str,
    batch_size: usize,
) -> Span {
    let span = parent.in_scope(|| span(operation, collection, query));
    if batch_size > 1 {
        span.record("db.operation.batch.size", batch_size);
    }
    span
}

/// Marks a statement's span as failed.
pub fn record_error(span: &Span, error: &dyn std::fmt::Display) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
}

/// Runs a statement inside its span ([`span`]), marks the span as failed
/// when the statement fails, and records its duration.
pub async fn traced<F, T, E>(
    operation: &'static str,
    collection: &'static str,
    query: &'static str,
    statement: F,
) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let span = span(operation, collection, query);
    let result = statement.instrument(span.clone()).await;
    if let Err(error) = &result {
        record_error(&span, error);
    }
    record_duration(started, operation, collection, result.is_err());
    result
}

/// Records one statement's `db.client.operation.duration`, from `started`
/// to now: once per statement, however many rows (and row spans) it holds.
pub fn record_duration(started: std::time::Instant, operation: &'static str, collection: &'static str, failed: bool) {
    crate::metrics::with(|metrics| {
        let mut attributes = vec![
            opentelemetry::KeyValue::new("db.system.name", "postgresql"),
            opentelemetry::KeyValue::new("db.operation.name", operation),
            opentelemetry::KeyValue::new("db.collection.name", collection),
        ];
        if failed {
            attributes.push(opentelemetry::KeyValue::new("error.type", "_OTHER"));
        }
        metrics
            .db_client_duration
            .record(started.elapsed().as_secs_f64(), &attributes);
    });
}
