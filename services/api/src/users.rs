//! Users and logins as REST resources: each handler takes a request's parts
//! as axum extracts them and calls the one implementation of its operation
//! (`operations`), which JSON-RPC's methods (`rpc`) call too. The handlers'
//! annotations are what the OpenAPI document (`openapi`) says of them.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use utoipa::IntoParams;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, Problem},
    extract::{ClientAddr, Deadline, IdempotencyKey, Json, Path, Query},
    operations,
    responses::{BodyRefused, EmailTakenOrInProgress, KeyReused, NoSuchUser, Unauthenticated, Unavailable},
    schema,
    wire::{ListQuery, LoginRequest, RegisterRequest, TokenBody, UpdateRequest, UserBody, UserPage},
};

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
        (status = 429, description = "Too many registrations from this client address; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    deadline: Deadline,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<RegisterRequest>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let user = operations::create(&state, address, &deadline, key, body.map(|Json(body)| body)).await?;
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
    operations::log_in(&state, address, &deadline, body.map(|Json(body)| body))
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
    operations::read(&state, caller, &deadline, path.map(|Path(id)| id))
        .await
        .map(Json)
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
    operations::update(
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
    operations::delete(&state, caller, &deadline, path.map(|Path(id)| id), key).await?;
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
    operations::list(&state, caller, &deadline, query.map(|Query(query)| query))
        .await
        .map(Json)
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
