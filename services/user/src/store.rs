//! The users table, the idempotency keys and the outbox's writes, one traced
//! statement at a time. (The relay reads and clears the outbox itself.)

use std::{collections::HashMap, time::Duration};

use callchain_domain::{Email, IdempotencyKey, Invalid, Role, User, UserId, UserName};
use callchain_events::UserEvent;
use callchain_telemetry::db;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::UserError;

/// A user row, without its password hash.
#[derive(Debug, Clone, sqlx::FromRow)]
struct UserRow {
    id: uuid::Uuid,
    email: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl UserRow {
    /// The row in domain types. The table's constraints and the parsing
    /// before every write keep rows parseable, so one that is not is a bug
    /// of ours (an internal error), never the caller's invalid input.
    fn parse(self) -> Result<User, UserError> {
        let parsed = || -> Result<User, Invalid> {
            Ok(User {
                id: self.id.into(),
                email: Email::parse(&self.email)?,
                name: UserName::parse(&self.name)?,
                role: Role::parse(&self.role)?,
                created_at: self.created_at,
                updated_at: self.updated_at,
            })
        };
        parsed()
            .map_err(|invalid| UserError::Internal(anyhow::anyhow!("stored user {} is malformed: {invalid}", self.id)))
    }
}

/// A written user row and the version the write left it at.
#[derive(sqlx::FromRow)]
struct WrittenRow {
    #[sqlx(flatten)]
    user: UserRow,
    version: i64,
}

impl WrittenRow {
    fn parse(self) -> Result<Written, UserError> {
        let sequence = u64::try_from(self.version).map_err(|_| {
            UserError::Internal(anyhow::anyhow!(
                "stored user {} has version {}",
                self.user.id,
                self.version
            ))
        })?;
        Ok(Written {
            user: self.user.parse()?,
            sequence,
        })
    }
}

/// What a write left: the user (for a deletion, as it stood before), and the
/// user's version that write made, which its event carries as its
/// `sequence`: 1 for the creation, one more for each write after it.
///
/// The version is counted in the write's own statement, under the row's
/// lock, so one user's sequences follow the order its writes commit in.
pub struct Written {
    pub user: User,
    pub sequence: u64,
}

pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub name: UserName,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Default)]
pub struct UserChanges {
    pub email: Option<Email>,
    pub name: Option<UserName>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
}

const INSERT_USER: &str = "INSERT INTO users (id, email, name, password_hash, role, version) \
     VALUES ($1, $2, $3, $4, $5, 1) RETURNING id, email, name, role, created_at, updated_at, version";

pub async fn insert_user(conn: &mut PgConnection, user: &NewUser) -> Result<Written, UserError> {
    let query = sqlx::query_as::<_, WrittenRow>(INSERT_USER)
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .fetch_one(conn);
    db::traced("INSERT", "users", INSERT_USER, query).await?.parse()
}

const INSERT_ADMIN: &str = "INSERT INTO users (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT ((lower(email))) DO NOTHING";

/// Creates the configured administrator, with the role it is given, unless a
/// user with that email exists.
pub async fn ensure_admin(conn: &mut PgConnection, user: &NewUser) -> Result<bool, UserError> {
    let query = sqlx::query(INSERT_ADMIN)
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .execute(conn);
    Ok(db::traced("INSERT", "users", INSERT_ADMIN, query)
        .await?
        .rows_affected()
        == 1)
}

const SELECT_USER: &str = "SELECT id, email, name, role, created_at, updated_at FROM users WHERE id = $1";

pub async fn get_user(conn: &mut PgConnection, id: UserId) -> Result<User, UserError> {
    let query = sqlx::query_as::<_, UserRow>(SELECT_USER)
        .bind(id.as_uuid())
        .fetch_optional(conn);
    db::traced("SELECT", "users", SELECT_USER, query)
        .await?
        .ok_or(UserError::NotFound(id))?
        .parse()
}

const SELECT_CREDENTIALS: &str = "SELECT id, email, name, role, created_at, updated_at, password_hash FROM users \
     WHERE lower(email) = lower($1)";

pub async fn get_credentials(conn: &mut PgConnection, email: &Email) -> Result<Option<(User, String)>, UserError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
    let query = sqlx::query_as::<_, Row>(SELECT_CREDENTIALS)
        .bind(email.as_str())
        .fetch_optional(conn);
    let row = db::traced("SELECT", "users", SELECT_CREDENTIALS, query).await?;
    row.map(|row| Ok((row.user.parse()?, row.password_hash))).transpose()
}

/// `clock_timestamp()`, not `now()`: `now()` is when the transaction began,
/// and a transaction that waited on the row's lock began before the one it
/// waited for wrote; the time read once the lock is held follows the order
/// the writes commit in, as the version does.
const UPDATE_USER: &str = "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), \
     password_hash = COALESCE($4, password_hash), role = COALESCE($5, role), updated_at = clock_timestamp(), \
     version = version + 1 \
     WHERE id = $1 RETURNING id, email, name, role, created_at, updated_at, version";

pub async fn update_user(conn: &mut PgConnection, id: UserId, changes: &UserChanges) -> Result<Written, UserError> {
    let query = sqlx::query_as::<_, WrittenRow>(UPDATE_USER)
        .bind(id.as_uuid())
        .bind(changes.email.as_ref().map(Email::as_str))
        .bind(changes.name.as_ref().map(UserName::as_str))
        .bind(changes.password_hash.as_deref())
        .bind(changes.role.map(Role::as_str))
        .fetch_optional(conn);
    db::traced("UPDATE", "users", UPDATE_USER, query)
        .await?
        .ok_or(UserError::NotFound(id))?
        .parse()
}

/// The deletion is one more write: its event's sequence follows the last
/// version the row had.
const DELETE_USER: &str = "DELETE FROM users WHERE id = $1 \
     RETURNING id, email, name, role, created_at, updated_at, version + 1 AS version";

pub async fn delete_user(conn: &mut PgConnection, id: UserId) -> Result<Written, UserError> {
    let query = sqlx::query_as::<_, WrittenRow>(DELETE_USER)
        .bind(id.as_uuid())
        .fetch_optional(conn);
    db::traced("DELETE", "users", DELETE_USER, query)
        .await?
        .ok_or(UserError::NotFound(id))?
        .parse()
}

const LIST_USERS: &str = "SELECT id, email, name, role, created_at, updated_at FROM users \
     WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2";

/// A page of users in id order (ids are UUIDv7, so: creation order), after `after`.
pub async fn list_users(conn: &mut PgConnection, after: Option<UserId>, limit: u32) -> Result<Vec<User>, UserError> {
    let query = sqlx::query_as::<_, UserRow>(LIST_USERS)
        .bind(after.map(|id| id.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(conn);
    db::traced("SELECT", "users", LIST_USERS, query)
        .await?
        .into_iter()
        .map(UserRow::parse)
        .collect()
}

/// How long a write's answer is kept under its idempotency key: a retry
/// within it replays; past it the key is new again, and its row is pruned.
pub const IDEMPOTENCY_KEY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// At most this many expired keys are deleted by one claim: more than one,
/// so pruning outpaces the claims, and few, so no claim waits on it.
const PRUNE_BATCH: i64 = 100;

/// A write's idempotency key, as its caller sent it.
pub struct Claim {
    /// Whose key it is: keys are each caller's own.
    pub caller: String,
    /// The method (`CreateUser`, ...): one key may serve one per method.
    pub operation: &'static str,
    pub key: IdempotencyKey,
    /// A digest of every field of the request, to tell a retry from another
    /// request under the same key.
    pub fingerprint: String,
}

const LOCK_KEY: &str = "SELECT pg_try_advisory_xact_lock(hashtext($1 || E'\\n' || $2), hashtext($3))";
// An expired row is taken over as a new claim; a live one is left alone.
const CLAIM_KEY: &str = "INSERT INTO idempotency_keys (caller, scope, key, fingerprint) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (caller, scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, response = NULL, \
     created_at = now() WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)";
const SELECT_KEY: &str = "SELECT fingerprint, response FROM idempotency_keys \
     WHERE caller = $1 AND scope = $2 AND key = $3 AND created_at >= now() - make_interval(secs => $4)";
const COMPLETE_KEY: &str = "UPDATE idempotency_keys SET response = $4 WHERE caller = $1 AND scope = $2 AND key = $3";
// SKIP LOCKED: rows another claim is pruning are left to it.
const PRUNE_KEYS: &str = "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
     WHERE created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

fn retention_secs() -> f64 {
    IDEMPOTENCY_KEY_RETENTION.as_secs_f64()
}

/// The stored answer under `claim`'s key, if it is within its retention:
/// `Ok(Some(response))` replays it, `Ok(None)` means the key is new (or
/// its write is still in flight, which the claim will tell). Read before
/// any costly work, so that a replay costs one lookup.
pub async fn find_key(conn: &mut PgConnection, claim: &Claim) -> Result<Option<Vec<u8>>, UserError> {
    let select = sqlx::query_as::<_, (String, Option<Vec<u8>>)>(SELECT_KEY)
        .bind(&claim.caller)
        .bind(claim.operation)
        .bind(claim.key.as_str())
        .bind(retention_secs())
        .fetch_optional(&mut *conn);
    match db::traced("SELECT", "idempotency_keys", SELECT_KEY, select).await? {
        None | Some((_, None)) => Ok(None),
        Some((fingerprint, _)) if fingerprint != claim.fingerprint => Err(UserError::IdempotencyKeyReused),
        Some((_, Some(response))) => Ok(Some(response)),
    }
}

/// Claims an idempotency key inside the caller's transaction. `Ok(None)`: the
/// key is new (or expired) and the write should go ahead. `Ok(Some(response))`:
/// the write was done before; answer with its stored response.
///
/// The claim first takes a transaction-scoped advisory lock on the key, so
/// a request whose key another transaction holds (the same write, still in
/// flight) is refused at once with [`UserError::IdempotencyKeyInFlight`]
/// instead of waiting for it; the lock ends with the transaction, even one
/// that crashed. Two different keys whose hashes collide only refuse each
/// other while both are in flight, and a retry succeeds. A new claim also
/// prunes a batch of keys past [`IDEMPOTENCY_KEY_RETENTION`].
pub async fn claim_key(conn: &mut PgConnection, claim: &Claim) -> Result<Option<Vec<u8>>, UserError> {
    let lock = sqlx::query_scalar::<_, bool>(LOCK_KEY)
        .bind(&claim.caller)
        .bind(claim.operation)
        .bind(claim.key.as_str())
        .fetch_one(&mut *conn);
    if !db::traced("SELECT", "idempotency_keys", LOCK_KEY, lock).await? {
        return Err(UserError::IdempotencyKeyInFlight);
    }
    let insert = sqlx::query(CLAIM_KEY)
        .bind(&claim.caller)
        .bind(claim.operation)
        .bind(claim.key.as_str())
        .bind(&claim.fingerprint)
        .bind(retention_secs())
        .execute(&mut *conn);
    if db::traced("INSERT", "idempotency_keys", CLAIM_KEY, insert)
        .await?
        .rows_affected()
        == 1
    {
        let prune = sqlx::query(PRUNE_KEYS)
            .bind(retention_secs())
            .bind(PRUNE_BATCH)
            .execute(&mut *conn);
        db::traced("DELETE", "idempotency_keys", PRUNE_KEYS, prune).await?;
        return Ok(None);
    }
    // A claimed key is completed in the same transaction, so a visible one
    // always has its response.
    find_key(conn, claim).await?.map(Some).ok_or_else(|| {
        UserError::Internal(anyhow::anyhow!(
            "idempotency key {}/{}/{} has no response",
            claim.caller,
            claim.operation,
            claim.key.as_str()
        ))
    })
}

/// Stores the response of a write under its key, in the write's transaction.
pub async fn complete_key(conn: &mut PgConnection, claim: &Claim, response: &[u8]) -> Result<(), UserError> {
    let query = sqlx::query(COMPLETE_KEY)
        .bind(&claim.caller)
        .bind(claim.operation)
        .bind(claim.key.as_str())
        .bind(response)
        .execute(conn);
    db::traced("UPDATE", "idempotency_keys", COMPLETE_KEY, query).await?;
    Ok(())
}

/// An event to publish, as the outbox keeps it.
pub struct OutboxEvent<'a> {
    pub event: &'a UserEvent,
    pub topic: &'a str,
    /// The writing request's trace context (`traceparent`, `tracestate`,
    /// `baggage`), so the relay's publish joins that request's trace.
    pub trace: HashMap<String, String>,
}

const INSERT_OUTBOX: &str = "INSERT INTO outbox \
     (event_id, topic, key, event_type, payload, traceparent, tracestate, baggage, sequence) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Adds an event to the outbox, in the write's transaction: it commits with
/// the change or not at all, and its commit wakes the relay (the table's
/// trigger notifies `outbox`).
pub async fn insert_outbox(conn: &mut PgConnection, row: &OutboxEvent<'_>) -> Result<(), UserError> {
    let field = |name: &str| row.trace.get(name).map(String::as_str);
    let sequence = i64::try_from(row.event.sequence)
        .map_err(|_| UserError::Internal(anyhow::anyhow!("event sequence {} is out of range", row.event.sequence)))?;
    let query = sqlx::query(INSERT_OUTBOX)
        .bind(row.event.event_id)
        .bind(row.topic)
        .bind(row.event.key())
        .bind(row.event.event_type.as_str())
        .bind(row.event.to_json())
        .bind(field("traceparent"))
        .bind(field("tracestate"))
        .bind(field("baggage"))
        .bind(sequence)
        .execute(conn);
    db::traced("INSERT", "outbox", INSERT_OUTBOX, query).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use callchain_testkit::postgres::TestDatabase;

    use super::*;

    async fn database() -> TestDatabase {
        let db = TestDatabase::create().await.expect("a test database");
        sqlx::migrate!("./migrations")
            .run(db.pool())
            .await
            .expect("the user service's migrations");
        db
    }

    async fn created(db: &TestDatabase) -> Written {
        let mut conn = db.pool().acquire().await.unwrap();
        let user = NewUser {
            id: UserId::new(),
            email: Email::parse("ada@example.com").unwrap(),
            name: UserName::parse("Ada").unwrap(),
            password_hash: "not a real hash".into(),
            role: Role::User,
        };
        insert_user(&mut conn, &user).await.unwrap()
    }

    fn renamed(name: &str) -> UserChanges {
        UserChanges {
            name: Some(UserName::parse(name).unwrap()),
            ..UserChanges::default()
        }
    }

    /// Waits until a statement of the test database waits on a lock.
    async fn until_one_waits_on_a_lock(db: &TestDatabase) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the second update never waited on the row's lock");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_write_of_a_user_counts_one_more_version_the_deletion_included() {
        let db = database().await;
        let first = created(&db).await;
        let id = first.user.id;
        let mut conn = db.pool().acquire().await.unwrap();
        let second = update_user(&mut conn, id, &renamed("Bea")).await.unwrap();
        let third = update_user(&mut conn, id, &renamed("Cy")).await.unwrap();
        let deleted = delete_user(&mut conn, id).await.unwrap();
        assert_eq!(
            [first.sequence, second.sequence, third.sequence, deleted.sequence],
            [1, 2, 3, 4]
        );
    }

    /// The second transaction begins first, then waits on the row the first
    /// one updated; once the first commits, the second's update must be
    /// stamped after it, as its version is counted after it.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_update_that_waited_on_the_row_lock_is_stamped_after_the_update_it_waited_for() {
        let db = database().await;
        let id = created(&db).await.user.id;

        let mut waiting = db.pool().begin().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *waiting).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        let mut holder = db.pool().begin().await.unwrap();
        let first = update_user(&mut holder, id, &renamed("First")).await.unwrap();
        let second = tokio::spawn(async move {
            let written = update_user(&mut waiting, id, &renamed("Second")).await.unwrap();
            waiting.commit().await.unwrap();
            written
        });
        until_one_waits_on_a_lock(&db).await;
        holder.commit().await.unwrap();
        let second = second.await.unwrap();

        assert_eq!(second.user.name.as_str(), "Second");
        assert_eq!(second.sequence, first.sequence + 1, "versions follow the commit order");
        assert!(
            second.user.updated_at > first.user.updated_at,
            "the update committed second is stamped {}, before the one it waited for ({})",
            second.user.updated_at,
            first.user.updated_at
        );
    }
}
