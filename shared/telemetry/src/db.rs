//! The client span of one database statement, with the OpenTelemetry
//! database attributes. The query text is the parameterised statement; values
//! never reach a span.

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

/// Runs a statement inside its span and marks the span as failed when the
/// statement fails.
pub async fn traced<F, T, E>(span: Span, statement: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    use tracing::Instrument as _;
    let result = statement.instrument(span.clone()).await;
    if let Err(error) = &result {
        record_error(&span, error);
    }
    result
}

/// Why [`connect`] failed.
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("running the migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// How long [`connect`] keeps trying while Postgres is not up yet.
#[cfg(feature = "postgres")]
pub const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A pool on `url` with `migrator`'s migrations applied. Acquiring a
/// connection gives up after 3 s, so calls fail fast while Postgres is down
/// instead of hanging. Services may share one database, each with its own
/// migrations, so those of the others are ignored.
///
/// A service may start before its database does (a first `make up` on an
/// empty volume, a host reboot): while Postgres refuses connections or says
/// it is starting up, the first connection is retried for
/// [`CONNECT_PATIENCE`]. Any other error (a wrong password, no such
/// database) fails at once.
#[cfg(feature = "postgres")]
pub async fn connect(
    url: &str,
    max_connections: u32,
    mut migrator: sqlx::migrate::Migrator,
) -> Result<sqlx::PgPool, ConnectError> {
    let options = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(3));
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    let pool = loop {
        match options.clone().connect(url).await {
            Ok(pool) => break pool,
            Err(error) if not_up_yet(&error) && started.elapsed() < CONNECT_PATIENCE => {
                tracing::warn!(error = %error, "Postgres is not up yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(error) => return Err(ConnectError::Connect(error)),
        }
    };
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await.map_err(ConnectError::Migrate)?;
    Ok(pool)
}

/// Whether `error` means the server is not (yet) accepting connections, as
/// opposed to refusing these credentials or this database.
#[cfg(feature = "postgres")]
fn not_up_yet(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03 cannot_connect_now: starting up, shutting down, recovering.
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}
