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
