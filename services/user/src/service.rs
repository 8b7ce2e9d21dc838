//! `user.v1.UserService`: parses each request into domain types, does the
//! work in one transaction, and answers with protobuf types. A write's event
//! goes into the outbox in that same transaction, so a committed change
//! always has its event; the relay publishes it.

use callchain_domain::{Change, Email, IdempotencyKey, Invalid, PageSize, Password, Role, User, UserId, UserName};
use callchain_events::{EventType, UserEvent};
use callchain_proto::user::v1::{
    AuthenticateRequest, AuthenticateResponse, CreateUserRequest, CreateUserResponse, DeleteUserRequest,
    DeleteUserResponse, GetUserRequest, GetUserResponse, ListUsersRequest, ListUsersResponse, UpdateUserRequest,
    UpdateUserResponse, user_service_server::UserService,
};
use chrono::Utc;
use prost::Message;
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::time::{Duration, Instant};
use tonic::{Request, Response, Status};

use crate::{
    error::UserError,
    password::Hasher,
    store::{self, Claim, NewUser, OutboxEvent, UserChanges},
};

#[derive(Clone)]
pub struct UserGrpc {
    pool: PgPool,
    /// Where the outbox relay publishes the events.
    topic: String,
    hasher: Hasher,
}

impl UserGrpc {
    pub(crate) fn new(pool: PgPool, topic: String, hasher: Hasher) -> Self {
        Self { pool, topic, hasher }
    }

    /// The one sequence of every write, in one transaction: claim the
    /// idempotency key (a replay answers with the stored response and
    /// changes nothing), apply the change, put its event into the outbox
    /// with the request's trace context, keep the response under the key,
    /// commit. So a committed change always has its event, and a retried
    /// write applies once and answers with the same event id.
    async fn write<M: Written>(&self, write: Write, claim: Option<&Claim>) -> Result<M, UserError> {
        let mut tx = self.pool.begin().await?;
        if let Some(claim) = claim
            && let Some(stored) = store::claim_key(&mut tx, claim).await?
        {
            return decode(&stored);
        }
        let (event_type, user, change, sequence) = write.apply(&mut tx).await?;
        let event = UserEvent::of(event_type, &user, &change, sequence);
        let row = OutboxEvent {
            event: &event,
            topic: &self.topic,
            trace: callchain_telemetry::propagation::fields(&tracing::Span::current()),
        };
        store::insert_outbox(&mut tx, &row).await?;
        let id = user.id;
        let response = M::of(user, change);
        if let Some(claim) = claim {
            store::complete_key(&mut tx, claim, &response.encode_to_vec()).await?;
        }
        tx.commit().await?;
        match event_type {
            EventType::UserCreated => tracing::info!(user_id = %id, "user created"),
            EventType::UserUpdated => tracing::info!(user_id = %id, "user updated"),
            EventType::UserDeleted => tracing::info!(user_id = %id, "user deleted"),
        }
        Ok(response)
    }

    /// The stored answer of a write done before under `claim`'s key: looked
    /// up before the password is hashed, so a retry costs no hash (and a key
    /// reused for another request is refused before one).
    async fn replayed<M: Written>(&self, claim: Option<&Claim>) -> Result<Option<M>, UserError> {
        let Some(claim) = claim else { return Ok(None) };
        let mut conn = self.pool.acquire().await?;
        store::find_key(&mut conn, claim)
            .await?
            .map(|stored| decode(&stored))
            .transpose()
    }

    async fn create(
        &self,
        request: CreateUserRequest,
        deadline: Option<Instant>,
    ) -> Result<CreateUserResponse, UserError> {
        let email = Email::parse(&request.email)?;
        let name = UserName::parse(&request.name)?;
        let password = Password::parse(&request.password)?;
        let claim = claim(&request.caller, CREATE, &request.idempotency_key, |digest| {
            digest
                .field(Some(&email.as_str().to_lowercase()))
                .field(Some(name.as_str()))
                .field(Some(password.expose()))
        })?;
        if let Some(replay) = self.replayed(claim.as_ref()).await? {
            return Ok(replay);
        }
        let password_hash = self.hasher.hash(password, deadline).await?;
        let user = NewUser {
            id: UserId::new(),
            email,
            name,
            password_hash,
            role: Role::User,
        };
        self.write(Write::Create(user), claim.as_ref()).await
    }

    async fn get(&self, request: GetUserRequest) -> Result<GetUserResponse, UserError> {
        let id = UserId::parse(&request.id)?;
        let mut conn = self.pool.acquire().await?;
        let user = store::get_user(&mut conn, id).await?;
        Ok(GetUserResponse {
            user: Some(user.into()),
        })
    }

    async fn update(
        &self,
        request: UpdateUserRequest,
        deadline: Option<Instant>,
    ) -> Result<UpdateUserResponse, UserError> {
        let id = UserId::parse(&request.id)?;
        let mut changes = UserChanges {
            email: request.email.as_deref().map(Email::parse).transpose()?,
            name: request.name.as_deref().map(UserName::parse).transpose()?,
            role: request.new_role()?,
            password_hash: None,
        };
        let password = request.password.as_deref().map(Password::parse).transpose()?;
        let claim = claim(&request.caller, UPDATE, &request.idempotency_key, |digest| {
            digest
                .field(Some(&id.to_string()))
                .field(changes.email.as_ref().map(|e| e.as_str().to_lowercase()).as_deref())
                .field(changes.name.as_ref().map(UserName::as_str))
                .field(changes.role.map(Role::as_str))
                .field(password.as_ref().map(Password::expose))
        })?;
        if let Some(replay) = self.replayed(claim.as_ref()).await? {
            return Ok(replay);
        }
        if let Some(password) = password {
            changes.password_hash = Some(self.hasher.hash(password, deadline).await?);
        }
        self.write(Write::Update(id, changes), claim.as_ref()).await
    }

    async fn delete(&self, request: DeleteUserRequest) -> Result<DeleteUserResponse, UserError> {
        let id = UserId::parse(&request.id)?;
        let claim = claim(&request.caller, DELETE, &request.idempotency_key, |digest| {
            digest.field(Some(&id.to_string()))
        })?;
        self.write(Write::Delete(id), claim.as_ref()).await
    }

    async fn list(&self, request: ListUsersRequest) -> Result<ListUsersResponse, UserError> {
        // 0 is how proto3 says "not set".
        let page_size = match request.page_size {
            0 => PageSize::default(),
            n => PageSize::parse(n)?,
        };
        let page_size = page_size.get();
        let after = match request.page_token.as_str() {
            "" => None,
            token => {
                Some(UserId::parse(token).map_err(|_| Invalid::new("page_token", "is not a token this service gave"))?)
            }
        };
        let mut conn = self.pool.acquire().await?;
        // One more than asked tells whether another page follows.
        let mut users = store::list_users(&mut conn, after, page_size + 1).await?;
        let next_page_token = if users.len() > page_size as usize {
            users.truncate(page_size as usize);
            users.last().map(|user| user.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    async fn authenticate(
        &self,
        request: AuthenticateRequest,
        deadline: Option<Instant>,
    ) -> Result<AuthenticateResponse, UserError> {
        // Parsed like any input, so no text reaches Postgres that it would
        // refuse; a malformed email or password cannot belong to anyone.
        let email = Email::parse(&request.email)?;
        let password = Password::parse(&request.password)?;
        let mut conn = self.pool.acquire().await?;
        let found = store::get_credentials(&mut conn, &email).await?;
        drop(conn);
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        if !self.hasher.verify(password, hash, deadline).await? {
            return Err(UserError::BadCredentials);
        }
        let user = user.ok_or(UserError::BadCredentials)?;
        tracing::info!(user_id = %user.id, "user authenticated");
        Ok(AuthenticateResponse {
            user: Some(user.into()),
        })
    }
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<CreateUserResponse>, Status> {
        let deadline = deadline(&request);
        Ok(Response::new(self.create(request.into_inner(), deadline).await?))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn update_user(&self, request: Request<UpdateUserRequest>) -> Result<Response<UpdateUserResponse>, Status> {
        let deadline = deadline(&request);
        Ok(Response::new(self.update(request.into_inner(), deadline).await?))
    }

    async fn delete_user(&self, request: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        Ok(Response::new(self.delete(request.into_inner()).await?))
    }

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let deadline = deadline(&request);
        Ok(Response::new(self.authenticate(request.into_inner(), deadline).await?))
    }
}

// The names each method's idempotency keys are kept under.
const CREATE: &str = "CreateUser";
const UPDATE: &str = "UpdateUser";
const DELETE: &str = "DeleteUser";

/// The longest `caller` a request may name.
const MAX_CALLER_CHARS: usize = 200;

/// The claim of a write's idempotency key, or None when it has none.
///
/// The key is the caller's own (the request's `caller`, which the API fills
/// with the user it verified, or a guest's client address), as the IETF
/// `Idempotency-Key` draft recommends: two callers' equal keys never meet.
/// The fingerprint is a SHA-256 digest of the caller, the method, the key
/// and every field `fields` feeds it, the password too, so a retry with any
/// other field is refused; only the digest is stored, never a password, and
/// only for [`store::IDEMPOTENCY_KEY_RETENTION`].
fn claim(
    caller: &str,
    operation: &'static str,
    key: &str,
    fields: impl FnOnce(Digest) -> Digest,
) -> Result<Option<Claim>, UserError> {
    if caller.chars().count() > MAX_CALLER_CHARS || caller.chars().any(char::is_control) {
        return Err(Invalid::new(
            "caller",
            "must be at most 200 characters, none of them control characters",
        )
        .into());
    }
    let Some(key) = IdempotencyKey::parse_optional(key)? else {
        return Ok(None);
    };
    let digest = Digest(Sha256::new())
        .field(Some(caller))
        .field(Some(operation))
        .field(Some(key.as_str()));
    Ok(Some(Claim {
        caller: caller.to_owned(),
        operation,
        key,
        fingerprint: fields(digest).finish(),
    }))
}

/// A request's fields, digested one after another, each with its length (and
/// whether it is there at all), so no two requests digest alike.
struct Digest(Sha256);

impl Digest {
    fn field(mut self, value: Option<&str>) -> Self {
        match value {
            None => self.0.update([0]),
            Some(value) => {
                self.0.update([1]);
                self.0.update((value.len() as u64).to_le_bytes());
                self.0.update(value.as_bytes());
            }
        }
        self
    }

    fn finish(self) -> String {
        self.0.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// What a write does to the users table.
enum Write {
    Create(NewUser),
    Update(UserId, UserChanges),
    Delete(UserId),
}

impl Write {
    /// Applies it in `tx`: the event it makes, the user as it is now (as it
    /// was, for a delete), the change, and the user's version after it (the
    /// event's per-user sequence).
    async fn apply(self, tx: &mut PgConnection) -> Result<(EventType, User, Change, u64), UserError> {
        Ok(match self {
            Write::Create(user) => {
                let store::Written { user, sequence } = store::insert_user(tx, &user).await?;
                let change = Change::new(user.updated_at);
                (EventType::UserCreated, user, change, sequence)
            }
            Write::Update(id, changes) => {
                let store::Written { user, sequence } = store::update_user(tx, id, &changes).await?;
                let change = Change::new(user.updated_at);
                (EventType::UserUpdated, user, change, sequence)
            }
            Write::Delete(id) => {
                let store::Written { user, sequence } = store::delete_user(tx, id).await?;
                (EventType::UserDeleted, user, Change::new(Utc::now()), sequence)
            }
        })
    }
}

/// A write's answer: the user and the change, in the response type of its
/// method.
trait Written: Message + Default {
    fn of(user: User, change: Change) -> Self;
}

impl Written for CreateUserResponse {
    fn of(user: User, change: Change) -> Self {
        Self {
            user: Some(user.into()),
            change: Some(change.into()),
        }
    }
}

impl Written for UpdateUserResponse {
    fn of(user: User, change: Change) -> Self {
        Self {
            user: Some(user.into()),
            change: Some(change.into()),
        }
    }
}

impl Written for DeleteUserResponse {
    fn of(user: User, change: Change) -> Self {
        Self {
            user: Some(user.into()),
            change: Some(change.into()),
        }
    }
}

/// Kept back from the caller's deadline, so that a call still waiting for a
/// hashing slot answers UNAVAILABLE (retry) before the deadline cuts it off.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// When the request must have been answered, less [`DEADLINE_MARGIN`]: from
/// its `grpc-timeout` header, counted from now (it has just arrived). None
/// when the caller set no deadline or wrote one gRPC does not allow.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    // At most 8 digits, then one unit letter (gRPC over HTTP/2).
    let (value, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if value.is_empty() || value.len() > 8 {
        return None;
    }
    let value: u64 = value.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    Some(Instant::now() + timeout.saturating_sub(DEADLINE_MARGIN))
}

fn decode<M: Message + Default>(stored: &[u8]) -> Result<M, UserError> {
    M::decode(stored).map_err(|error| UserError::Internal(error.into()))
}

#[cfg(test)]
mod tests {
    use callchain_testkit::postgres::TestDatabase;

    use super::*;
    use crate::Config;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_replay_is_answered_without_waiting_for_a_hashing_slot() {
        let db = TestDatabase::create().await.expect("a test database");
        let config = Config::for_tests(db.url(), None, "127.0.0.1:1", "user-events");
        let pool = crate::connect(&config).await.unwrap();
        let hasher = Hasher::new(1);
        let service = UserGrpc::new(pool, config.kafka_topic, hasher.clone());
        let request = CreateUserRequest {
            email: "ada@example.com".into(),
            name: "Ada".into(),
            password: "correct horse battery".into(),
            idempotency_key: "k-1".into(),
            caller: "user:a".into(),
        };
        let first = service.create(request.clone(), None).await.unwrap();
        let _every_slot = hasher.occupy().await;
        let deadline = Instant::now() + Duration::from_millis(300);
        let replay = service.create(request, Some(deadline)).await;
        assert_eq!(replay.expect("the replay, with every hashing slot taken"), first);
    }
}
