//! The REST resources: users and logins. Bodies are parsed into domain types
//! here, before any call leaves the service, and the user service's answers
//! come back as domain types too.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use callchain_domain::{Change, Email, Invalid, PageSize, Password, Role, User, UserId, UserName};
use callchain_proto::user::v1::{
    self as pb, AuthenticateRequest, CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest,
    UpdateUserRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use callchain_events::EventType;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, Problem},
    events::event_of,
    extract::{Deadline, IdempotencyKey, Json, Path, Query},
};

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// Credentials to exchange for a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// Fields to change; those left out stay as they are. Only an administrator
/// may change a role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub email: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    /// `USER` or `ADMIN`.
    pub role: Option<String>,
}

/// A user. Never a password, never a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub email: String,
    pub name: String,
    /// `USER` or `ADMIN`.
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A bearer token and who it belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub user: UserBody,
}

/// A page of users, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<UserBody>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 100; default 20.
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl From<User> for UserBody {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.to_string(),
            name: user.name.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            created_at: rfc3339(user.created_at),
            updated_at: rfc3339(user.updated_at),
        }
    }
}

/// A part of the user service's answer, in domain types. One that is missing
/// or malformed is the user service's bug: a 500, never the caller's 400.
fn answered<P, T: TryFrom<P, Error = Invalid>>(part: Option<P>, what: &str) -> Result<T, ApiError> {
    let internal = |why: String| ApiError::Internal(anyhow::anyhow!("the user service answered {why}"));
    let part = part.ok_or_else(|| internal(format!("without a {what}")))?;
    T::try_from(part).map_err(|invalid| internal(format!("with a malformed {what}: {invalid}")))
}

impl AppState {
    /// Publishes the event of a write the user service made and hands back
    /// the user it answered with: a write answers 2xx only once the broker
    /// has acknowledged its event.
    async fn publish_write(
        &self,
        event_type: EventType,
        user: Option<pb::User>,
        change: Option<pb::Change>,
        deadline: &Deadline,
    ) -> Result<User, ApiError> {
        let user: User = answered(user, "user")?;
        let change: Change = answered(change, "change")?;
        self.events
            .publish(&event_of(event_type, &user, &change), deadline)
            .await?;
        Ok(user)
    }
}

/// Register a user (open to guests).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry apply once")),
    responses(
        (status = 201, description = "Registered", body = UserBody),
        (status = 400, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    deadline: Deadline,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = Email::parse(&body.email)?;
    let name = UserName::parse(&body.name)?;
    let password = Password::parse(&body.password)?;
    let request = deadline.grpc(CreateUserRequest {
        email: email.as_str().to_owned(),
        name: name.as_str().to_owned(),
        password: password.expose().to_owned(),
        idempotency_key: key.unwrap_or_default(),
    })?;
    let response = state.users.clone().create_user(request).await?.into_inner();
    let user = state
        .publish_write(EventType::UserCreated, response.user, response.change, &deadline)
        .await?;
    let location = format!("/v1/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(UserBody::from(user)),
    ))
}

/// Exchange email and password for a bearer token.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenBody),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    deadline: Deadline,
    Json(body): Json<LoginRequest>,
) -> Result<Json<TokenBody>, ApiError> {
    let request = deadline.grpc(AuthenticateRequest {
        email: body.email,
        password: body.password,
    })?;
    let response = state.users.clone().authenticate(request).await?.into_inner();
    let user: User = answered(response.user, "user")?;
    let (access_token, expires_in) = state.keys.issue(user.id, user.role)?;
    Ok(Json(TokenBody {
        access_token,
        token_type: "Bearer",
        expires_in,
        user: user.into(),
    }))
}

/// Read a user (itself, or anyone for an administrator).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yours to read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    Path(id): Path<String>,
) -> Result<Json<UserBody>, ApiError> {
    caller.signed_in()?;
    let id = UserId::parse(&id)?;
    caller.require_self_or_admin(id)?;
    let request = deadline.grpc(GetUserRequest { id: id.to_string() })?;
    let response = state.users.clone().get_user(request).await?.into_inner();
    let user: User = answered(response.user, "user")?;
    Ok(Json(user.into()))
}

/// Change a user's email, name, password or (administrators only) role.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry apply once")),
    request_body = UpdateRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = UserBody),
        (status = 400, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
    Json(body): Json<UpdateRequest>,
) -> Result<Json<UserBody>, ApiError> {
    caller.signed_in()?;
    let id = UserId::parse(&id)?;
    let caller_role = caller.require_self_or_admin(id)?;
    let email = body.email.as_deref().map(Email::parse).transpose()?;
    let name = body.name.as_deref().map(UserName::parse).transpose()?;
    let password = body.password.as_deref().map(Password::parse).transpose()?;
    let role = body.role.as_deref().map(Role::parse).transpose()?;
    if role.is_some() && caller_role != Role::Admin {
        return Err(ApiError::Forbidden("only an administrator may change a role".into()));
    }
    if email.is_none() && name.is_none() && password.is_none() && role.is_none() {
        return Err(ApiError::bad_request(
            "nothing to update: give email, name, password or role",
        ));
    }
    let request = deadline.grpc(UpdateUserRequest {
        id: id.to_string(),
        email: email.map(|e| e.as_str().to_owned()),
        name: name.map(|n| n.as_str().to_owned()),
        password: password.map(|p| p.expose().to_owned()),
        role: role.map_or(pb::Role::Unspecified, pb::Role::from).into(),
        idempotency_key: key.unwrap_or_default(),
    })?;
    let response = state.users.clone().update_user(request).await?.into_inner();
    let user = state
        .publish_write(EventType::UserUpdated, response.user, response.change, &deadline)
        .await?;
    Ok(Json(user.into()))
}

/// Delete a user (administrators only).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry apply once")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A dependency is down; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    IdempotencyKey(key): IdempotencyKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let id = UserId::parse(&id)?;
    let request = deadline.grpc(DeleteUserRequest {
        id: id.to_string(),
        idempotency_key: key.unwrap_or_default(),
    })?;
    let response = state.users.clone().delete_user(request).await?.into_inner();
    state
        .publish_write(EventType::UserDeleted, response.user, response.change, &deadline)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List users, a page at a time (administrators only).
#[utoipa::path(get, path = "/v1/users", tag = "users", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    Query(query): Query<ListQuery>,
) -> Result<Json<UserPage>, ApiError> {
    caller.require_admin()?;
    let page_size = query.page_size.map(PageSize::parse).transpose()?;
    let request = deadline.grpc(ListUsersRequest {
        page_size: page_size.map_or(0, PageSize::get),
        page_token: query.page_token.unwrap_or_default(),
    })?;
    let page = state.users.clone().list_users(request).await?.into_inner();
    let users = page
        .users
        .into_iter()
        .map(|user| answered::<_, User>(Some(user), "user").map(UserBody::from))
        .collect::<Result<_, _>>()?;
    Ok(Json(UserPage {
        users,
        next_page_token: Some(page.next_page_token).filter(|token| !token.is_empty()),
    }))
}
