//! A throwaway database per test on the machine's Postgres server.

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};

/// The server the test databases are made on; `CALLCHAIN_TEST_DATABASE_URL`
/// overrides it (any database on the server, for the admin connection).
pub fn admin_url() -> String {
    std::env::var("CALLCHAIN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://callchain:callchain@127.0.0.1:5432/postgres".to_owned())
}

const HOW_TO_GET_POSTGRES: &str = "the tests need the machine's Postgres server with a `callchain` role: \
     run `make test`, or `scripts/ensure-postgres.sh` once (Debian: apt-get install -y postgresql)";

/// A database that exists for one test and is dropped after it.
pub struct TestDatabase {
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// Creates `test_<uuid>` on the server of [`admin_url`].
    pub async fn create() -> anyhow::Result<Self> {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("cannot reach Postgres at {}; {HOW_TO_GET_POSTGRES}", redact(&admin)))?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .with_context(|| format!("cannot create a test database; {HOW_TO_GET_POSTGRES}"))?;
        conn.close().await.ok();
        let url = replace_database(&admin, &name);
        let pool = PgPool::connect(&url).await?;
        Ok(Self { name, url, pool })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Drop runs inside the test's runtime, which may not block: drop the
        // database from a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                pool.close().await;
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => &base[..slash],
        _ => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_swapped_and_the_password_hidden() {
        assert_eq!(
            replace_database("postgres://u:p@localhost:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@localhost:5432/t1?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://u:p@localhost/postgres"),
            "postgres://***@localhost/postgres"
        );
    }
}
