//! The answers several operations share, each written once, for the OpenAPI
//! document. An operation lists the sets that apply beside its own answers
//! (its success, and the `400` and `403` whose reasons are its own). A leaf:
//! REST, JSON-RPC and the document's root read it.
#![allow(
    dead_code,
    reason = "read by the OpenAPI document only; handlers answer with `ApiError`"
)]

use utoipa::IntoResponses;

use crate::error::Problem;

/// Every operation: a dependency down, or the deadline passed.
#[derive(IntoResponses)]
pub enum Unavailable {
    #[response(
        status = 503,
        description = "A dependency is down or failing (its circuit breaker is open), or the API is serving as many requests as it can; retry after `Retry-After`",
        content_type = "application/problem+json"
    )]
    Down(Problem),
    #[response(
        status = 504,
        description = "The request ran out of time",
        content_type = "application/problem+json"
    )]
    Timeout(Problem),
}

/// An operation with a JSON body: too large, or not JSON.
#[derive(IntoResponses)]
pub enum BodyRefused {
    #[response(
        status = 413,
        description = "The body is larger than the API takes",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "The body is not `application/json`",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// An operation that needs a token.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "No valid token, or its user no longer exists",
    content_type = "application/problem+json"
)]
pub struct Unauthenticated(Problem);

/// An operation on one user.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such user",
    content_type = "application/problem+json"
)]
pub struct NoSuchUser(Problem);

/// A write that sets an email and takes an `Idempotency-Key`.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "The email is taken, or a request with this `Idempotency-Key` is still in progress",
    content_type = "application/problem+json"
)]
pub struct EmailTakenOrInProgress(Problem);

/// A write that takes an `Idempotency-Key`.
#[derive(IntoResponses)]
#[response(
    status = 422,
    description = "The `Idempotency-Key` was used before for a different request",
    content_type = "application/problem+json"
)]
pub struct KeyReused(Problem);
