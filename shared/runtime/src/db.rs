//! The Postgres pool every service that owns tables opens the same way:
//! patient while Postgres starts, fast to fail once it runs, migrated.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("running the migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// How long [`connect`] keeps trying while Postgres is not up yet.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

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
pub async fn connect(url: &str, max_connections: u32, mut migrator: Migrator) -> Result<PgPool, ConnectError> {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let pool = loop {
        match options.clone().connect(url).await {
            Ok(pool) => break pool,
            Err(error) if not_up_yet(&error) && started.elapsed() < CONNECT_PATIENCE => {
                tracing::warn!(error = %error, "Postgres is not up yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(ConnectError::Connect(error)),
        }
    };
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await.map_err(ConnectError::Migrate)?;
    Ok(pool)
}

/// A service's own pool, as [`connect`] opens it, on the secret `url`; a
/// failure names `database` (which one, and the setting it came from).
pub async fn open(
    url: &SecretString,
    max_connections: u32,
    migrator: Migrator,
    database: &'static str,
) -> anyhow::Result<PgPool> {
    connect(url.expose_secret(), max_connections, migrator)
        .await
        .context(database)
}

/// Whether `error` means the server is not (yet) accepting connections, as
/// opposed to refusing these credentials or this database.
fn not_up_yet(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03 cannot_connect_now: starting up, shutting down, recovering.
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// What a failed database call means for whoever made it: the one reading
/// of SQLSTATEs every service shares, so the user service and the consumer
/// never disagree on whether Postgres is down or a request is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Postgres is unreachable, restarting, out of connections or resources,
    /// or gave up on a transaction to resolve a conflict: the same call may
    /// succeed later. Callers answer "unavailable" or retry; never a bug.
    Transient,
    /// Postgres refused the data itself (SQLSTATE class 22, data exception;
    /// class 23, integrity constraint violation; or a value that cannot be
    /// encoded): the same call fails again.
    Refused,
    /// Anything else: a statement or schema that does not fit (a bug of ours).
    Other,
}

/// Reads `error` into a [`Failure`].
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        // The connection is gone or never came: a socket error, a pool with
        // no connection to give, one closed for shutdown, or a reply cut off
        // mid-message by a dying socket.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Transient,
        sqlx::Error::Database(db) => db.code().as_deref().map_or(Failure::Other, classify_sqlstate),
        sqlx::Error::Encode(_) => Failure::Refused,
        _ => Failure::Other,
    }
}

/// Whether `error` means "try again": [`Failure::Transient`].
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error) == Failure::Transient
}

/// Reads a SQLSTATE (five characters, its first two the class).
pub fn classify_sqlstate(code: &str) -> Failure {
    match code {
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now.
        "57P01" | "57P02" | "57P03" => Failure::Transient,
        // 40001 serialization_failure, 40P01 deadlock_detected: Postgres
        // rolled the transaction back to let another through.
        "40001" | "40P01" => Failure::Transient,
        // Class 08, connection exception; class 53, insufficient resources
        // (53300 too_many_connections, 53100 disk_full, 53200 out_of_memory).
        code if code.starts_with("08") || code.starts_with("53") => Failure::Transient,
        code if code.starts_with("22") || code.starts_with("23") => Failure::Refused,
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdowns_lost_connections_and_exhausted_resources_are_transient() {
        for code in [
            "57P01", "57P02", "57P03", "53300", "53100", "53200", "08000", "08003", "08006", "40001", "40P01",
        ] {
            assert_eq!(classify_sqlstate(code), Failure::Transient, "{code}");
        }
    }

    #[test]
    fn data_and_constraint_errors_are_refused() {
        for code in ["22021", "22P02", "22008", "23505", "23503", "23514"] {
            assert_eq!(classify_sqlstate(code), Failure::Refused, "{code}");
        }
    }

    #[test]
    fn statement_errors_are_neither() {
        // 42P01 undefined_table, 42703 undefined_column, 57014 query_canceled.
        for code in ["42P01", "42703", "42601", "57014", "XX000"] {
            assert_eq!(classify_sqlstate(code), Failure::Other, "{code}");
        }
    }

    #[test]
    fn a_lost_connection_is_transient() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_transient(&sqlx::Error::Io(reset)));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::PoolClosed));
        assert!(is_transient(&sqlx::Error::Protocol("unexpected end of message".into())));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert_eq!(classify(&sqlx::Error::ColumnNotFound("id".into())), Failure::Other);
    }
}
