//! Users and logins: the REST resources, and the one implementation of each
//! operation that they and the JSON-RPC methods (`rpc`) share. Inputs are
//! parsed into domain types here, before any call leaves the service, and
//! the user service's answers come back as domain types too.

use std::net::IpAddr;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use callchain_domain::{Email, Invalid, PageSize, Password, Role, User, UserId, UserName};
use callchain_proto::user::v1::{
    self as pb, AuthenticateRequest, CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest,
    UpdateUserRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, Problem},
    extract::{ClientAddr, Deadline, IdempotencyKey, Json, Path, Query},
    openapi::{
        responses::{BodyRefused, EmailTakenOrInProgress, KeyReused, NoSuchUser, Unauthenticated, Unavailable},
        schema,
    },
};

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::name)]
    pub name: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
}

/// Credentials to exchange for a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
}

/// Fields to change (at least one); those left out stay as they are. Only
/// an administrator may change a role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::email, required = false)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::name, required = false)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::password, required = false)]
    pub password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::role, required = false)]
    pub role: Option<String>,
}

/// A field that may be left out but, when given, holds a value: `null` is
/// refused like any other wrong type, rather than read as "left out".
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// A user. Never a password, never a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    #[schema(schema_with = schema::user_id)]
    pub id: String,
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::name)]
    pub name: String,
    #[schema(schema_with = schema::role)]
    pub role: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A bearer token and who it belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(schema_with = schema::bearer)]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    #[schema(minimum = 0)]
    pub expires_in: u64,
    pub user: UserBody,
}

/// A page of users, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    #[schema(max_items = 100)]
    pub users: Vec<UserBody>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::user_id, required = false)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(schema_with = schema::page_size)]
    pub page_size: Option<u32>,
    #[param(schema_with = schema::user_id)]
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

/// Register a user (open to guests).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterRequest,
    params(IdempotencyKeyParam), security(()),
    responses(
        (status = 201, description = "Registered", body = UserBody,
            headers(("Location" = String, description = "The new user's URL"))),
        (status = 400, description = "A field or the `Idempotency-Key` is invalid, or the body is not JSON of the schema", body = Problem, content_type = "application/problem+json"),
        EmailTakenOrInProgress,
        BodyRefused,
        KeyReused,
        Unavailable,
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    deadline: Deadline,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<RegisterRequest>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let user = create(&state, address, &deadline, key, body.map(|Json(body)| body)).await?;
    let location = format!("/v1/users/{}", user.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(user)))
}

/// Exchange email and password for a bearer token. Failed logins are
/// throttled per account and per client address: past the limit, `429`
/// until `Retry-After` has passed, whether or not the account exists.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses(
        (status = 200, description = "Logged in", body = TokenBody),
        (status = 400, description = "A field is invalid, or the body is not JSON of the schema", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        (status = 429, description = "Too many failed logins for this account or from this address; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    deadline: Deadline,
    body: Result<Json<LoginRequest>, ApiError>,
) -> Result<Json<TokenBody>, ApiError> {
    log_in(&state, address, &deadline, body.map(|Json(body)| body))
        .await
        .map(Json)
}

/// Read a user (itself, or anyone for an administrator).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(UserPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 403, description = "Not yours to read", body = Problem, content_type = "application/problem+json"),
        NoSuchUser,
        Unavailable,
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    path: Result<Path<String>, ApiError>,
) -> Result<Json<UserBody>, ApiError> {
    read(&state, caller, &deadline, path.map(|Path(id)| id)).await.map(Json)
}

/// Change a user's email, name, password or (administrators only) role.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(UserPath, IdempotencyKeyParam),
    request_body = UpdateRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated", body = UserBody),
        (status = 400, description = "The id, a field or the `Idempotency-Key` is invalid, or the body is not JSON of the schema", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 403, description = "Not yours to change, a role change by someone not an administrator, or an administrator lowering its own role", body = Problem, content_type = "application/problem+json"),
        NoSuchUser,
        EmailTakenOrInProgress,
        BodyRefused,
        KeyReused,
        Unavailable,
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    path: Result<Path<String>, ApiError>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<UpdateRequest>, ApiError>,
) -> Result<Json<UserBody>, ApiError> {
    update(
        &state,
        caller,
        &deadline,
        path.map(|Path(id)| id),
        key,
        body.map(|Json(body)| body),
    )
    .await
    .map(Json)
}

/// Delete a user (administrators only).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(UserPath, IdempotencyKeyParam),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id or the `Idempotency-Key` is invalid", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 403, description = "Not an administrator, or an administrator deleting itself", body = Problem, content_type = "application/problem+json"),
        NoSuchUser,
        (status = 409, description = "A request with this `Idempotency-Key` is still in progress", body = Problem, content_type = "application/problem+json"),
        KeyReused,
        Unavailable,
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    path: Result<Path<String>, ApiError>,
    key: Result<IdempotencyKey, ApiError>,
) -> Result<StatusCode, ApiError> {
    delete(&state, caller, &deadline, path.map(|Path(id)| id), key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List users, a page at a time (administrators only).
#[utoipa::path(get, path = "/v1/users", tag = "users", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "`page_size` or `page_token` is invalid, or the query has another parameter", body = Problem, content_type = "application/problem+json"),
        Unauthenticated,
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    query: Result<Query<ListQuery>, ApiError>,
) -> Result<Json<UserPage>, ApiError> {
    list(&state, caller, &deadline, query.map(|Query(query)| query))
        .await
        .map(Json)
}

// The operations themselves, one function each, which the REST handlers
// above and the JSON-RPC methods (`rpc`) both call. Each takes its inputs as
// they arrived, a rejected one as its error, and looks at them in one order:
// the caller (401), its role (403), then the input (400), so both protocols
// refuse the same request for the same reason.

/// Registers a user: `user.create`, `POST /v1/users`. A guest's idempotency
/// keys are its client address's (`address`, as this process sees it).
pub async fn create(
    state: &AppState,
    address: Option<IpAddr>,
    deadline: &Deadline,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<RegisterRequest, ApiError>,
) -> Result<UserBody, ApiError> {
    let key = key?;
    let body = body?;
    let email = Email::parse(&body.email)?;
    let name = UserName::parse(&body.name)?;
    let password = Password::parse(&body.password)?;
    let request = deadline.grpc(CreateUserRequest {
        email: email.as_str().to_owned(),
        name: name.as_str().to_owned(),
        password: password.expose().to_owned(),
        idempotency_key: key.into_wire(),
        caller: guest(address),
    })?;
    let response = state.users.clone().create_user(request).await?.into_inner();
    // The user service stored the event with the user, in its outbox.
    let user: User = answered(response.user, "user")?;
    Ok(user.into())
}

/// Exchanges credentials for a token, throttled: `auth.login`,
/// `POST /v1/auth/login`.
pub async fn log_in(
    state: &AppState,
    address: Option<IpAddr>,
    deadline: &Deadline,
    body: Result<LoginRequest, ApiError>,
) -> Result<TokenBody, ApiError> {
    let body = body?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    let attempt = state.throttle.begin(&email, address)?;
    let request = deadline.grpc(AuthenticateRequest {
        email: email.as_str().to_owned(),
        password: password.expose().to_owned(),
    });
    let answer = match request {
        Ok(request) => state.users.clone().authenticate(request).await.map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let response = match answer {
        Ok(response) => {
            state.throttle.succeeded(attempt);
            response.into_inner()
        }
        Err(error @ ApiError::Unauthenticated(_)) => {
            state.throttle.failed(attempt);
            return Err(error);
        }
        Err(error) => {
            state.throttle.undecided(attempt);
            return Err(error);
        }
    };
    let user: User = answered(response.user, "user")?;
    let (access_token, expires_in) = state.keys.issue(user.id, user.role)?;
    Ok(TokenBody {
        access_token,
        token_type: "Bearer",
        expires_in,
        user: user.into(),
    })
}

/// Reads a user: `user.get`, `GET /v1/users/{id}`.
pub async fn read(
    state: &AppState,
    caller: Caller,
    deadline: &Deadline,
    id: Result<String, ApiError>,
) -> Result<UserBody, ApiError> {
    caller.signed_in()?;
    let (id, _) = caller.may_act_on(&id?)?;
    let request = deadline.grpc(GetUserRequest { id: id.to_string() })?;
    let response = state.users.clone().get_user(request).await?.into_inner();
    let user: User = answered(response.user, "user")?;
    Ok(user.into())
}

/// Changes a user: `user.update`, `PATCH /v1/users/{id}`.
pub async fn update(
    state: &AppState,
    caller: Caller,
    deadline: &Deadline,
    id: Result<String, ApiError>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<UpdateRequest, ApiError>,
) -> Result<UserBody, ApiError> {
    caller.signed_in()?;
    let (id, caller_role) = caller.may_act_on(&id?)?;
    let body = body?;
    // Authorization before the fields: whatever role it names, only an
    // administrator may change one.
    if body.role.is_some() && caller_role != Role::Admin {
        return Err(ApiError::Forbidden("only an administrator may change a role".into()));
    }
    // So that the last administrator cannot lock everyone out: another
    // administrator may lower this one's role.
    if caller.signed_in()?.0 == id && caller_role == Role::Admin && body.role.as_deref() == Some(Role::User.as_str()) {
        return Err(ApiError::Forbidden(
            "an administrator may not lower its own role".into(),
        ));
    }
    let key = key?;
    let email = body.email.as_deref().map(Email::parse).transpose()?;
    let name = body.name.as_deref().map(UserName::parse).transpose()?;
    let password = body.password.as_deref().map(Password::parse).transpose()?;
    let role = body.role.as_deref().map(Role::parse).transpose()?;
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
        idempotency_key: key.into_wire(),
        caller: signed_in(&caller)?,
    })?;
    let response = state.users.clone().update_user(request).await;
    // Whatever the answer, what this process knew of the user may be stale.
    state.roles.forget(id);
    let response = response?.into_inner();
    let user: User = answered(response.user, "user")?;
    state.roles.remember(&user);
    Ok(user.into())
}

/// Deletes a user: `user.delete`, `DELETE /v1/users/{id}`.
pub async fn delete(
    state: &AppState,
    caller: Caller,
    deadline: &Deadline,
    id: Result<String, ApiError>,
    key: Result<IdempotencyKey, ApiError>,
) -> Result<(), ApiError> {
    caller.require_admin()?;
    let id = UserId::parse(&id?)?;
    // So that the last administrator cannot lock everyone out.
    if caller.signed_in()?.0 == id {
        return Err(ApiError::Forbidden("an administrator may not delete itself".into()));
    }
    let key = key?;
    let request = deadline.grpc(DeleteUserRequest {
        id: id.to_string(),
        idempotency_key: key.into_wire(),
        caller: signed_in(&caller)?,
    })?;
    let response = state.users.clone().delete_user(request).await;
    state.roles.forget(id);
    response?;
    Ok(())
}

/// Lists users: `user.list`, `GET /v1/users`.
pub async fn list(
    state: &AppState,
    caller: Caller,
    deadline: &Deadline,
    query: Result<ListQuery, ApiError>,
) -> Result<UserPage, ApiError> {
    caller.require_admin()?;
    let query = query?;
    let page_size = query.page_size.map(PageSize::parse).transpose()?;
    let page_token = query
        .page_token
        .as_deref()
        .map(|token| UserId::parse(token).map_err(|invalid| invalid.named("page_token")))
        .transpose()?;
    let request = deadline.grpc(ListUsersRequest {
        page_size: page_size.map_or(0, PageSize::get),
        page_token: page_token.map(|token| token.to_string()).unwrap_or_default(),
    })?;
    let page = state.users.clone().list_users(request).await?.into_inner();
    let users = page
        .users
        .into_iter()
        .map(|user| answered::<_, User>(Some(user), "user").map(UserBody::from))
        .collect::<Result<_, _>>()?;
    Ok(UserPage {
        users,
        next_page_token: Some(page.next_page_token).filter(|token| !token.is_empty()),
    })
}

/// The `{id}` of a user's URL. (The parameters' descriptions, and that a
/// path parameter is required, are added in `openapi`: with `schema_with`,
/// utoipa leaves both out.)
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "read by the OpenAPI document only; handlers take the raw text")]
pub struct UserPath {
    #[param(schema_with = schema::user_id)]
    id: String,
}

/// Who a signed-in caller's idempotency keys belong to (the user service
/// keeps each caller's keys apart): its verified user id.
fn signed_in(caller: &Caller) -> Result<String, ApiError> {
    Ok(format!("user:{}", caller.signed_in()?.0))
}

/// Who a guest's (a registration's) idempotency keys belong to: its client
/// address as this process sees it, or one shared guest when it is unknown.
fn guest(address: Option<IpAddr>) -> String {
    address.map_or_else(|| "guest".to_owned(), |address| format!("guest:{address}"))
}

/// The optional `Idempotency-Key` header of a write.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(
    dead_code,
    reason = "read by the OpenAPI document only; the extractor parses the header"
)]
pub struct IdempotencyKeyParam {
    #[param(rename = "Idempotency-Key", schema_with = schema::idempotency_key)]
    idempotency_key: Option<String>,
}
