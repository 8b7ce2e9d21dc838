//! The one implementation of each operation on users and logins, which the
//! REST handlers (`users`) and the JSON-RPC methods (`rpc`) both call.
//! Inputs are parsed into domain types here, before any call leaves the
//! service, and the user service's answers come back as domain types too.
//!
//! Each operation takes its inputs as they arrived, a rejected one as its
//! error, and looks at them in one order: the caller (401), its role (403),
//! then the input (400), so both protocols refuse the same request for the
//! same reason.

use std::net::IpAddr;

use callchain_domain::{Email, Invalid, PageSize, Password, Role, User, UserId, UserName};
use callchain_proto::user::v1::{
    self as pb, AuthenticateRequest, CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest,
    UpdateUserRequest,
};
use tonic::Code;

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    extract::{Deadline, IdempotencyKey},
    wire::{ListQuery, LoginRequest, RegisterRequest, TokenBody, UpdateRequest, UserBody, UserPage},
};

/// A part of the user service's answer, in domain types. One that is missing
/// or malformed is the user service's bug: a 500, never the caller's 400.
fn answered<P, T: TryFrom<P, Error = Invalid>>(part: Option<P>, what: &str) -> Result<T, ApiError> {
    let internal = |why: String| ApiError::Internal(anyhow::anyhow!("the user service answered {why}"));
    let part = part.ok_or_else(|| internal(format!("without a {what}")))?;
    T::try_from(part).map_err(|invalid| internal(format!("with a malformed {what}: {invalid}")))
}

/// Registers a user, throttled per client address: `user.create`,
/// `POST /v1/users`.
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
    let registration = state.registrations.begin(address)?;
    let response = state.users.clone().create_user(request).await;
    // No verdict: the user service was not reached, or not in time.
    let undecided = response.as_ref().is_err_and(|status| {
        matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        )
    });
    if undecided {
        state.registrations.undecided(registration);
    } else {
        state.registrations.decided(registration);
    }
    let response = response?.into_inner();
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
    // The answer itself is never kept as the user's role: it may be the
    // replay of an earlier write (see `roles`).
    state.roles.forget(id);
    let response = response?.into_inner();
    let user: User = answered(response.user, "user")?;
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
