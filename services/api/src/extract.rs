//! Extractors whose rejections are the API's own problem documents, the
//! request's deadline, and the `Idempotency-Key` header.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// `axum::Json`, rejected as problem+json.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The bytes of a JSON body, for a handler that parses them itself (the
/// JSON-RPC endpoint): refused as [`Json`] refuses a body, `415` unless the
/// content type is JSON (`application/json`, or `application/*+json`) and
/// `413` past `MAX_BODY_BYTES`.
#[derive(Debug)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::body_not_json());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large()
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        Ok(Self(bytes))
    }
}

/// Whether the `Content-Type` names JSON, as `axum::Json` decides it.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let suffix = subtype.len().checked_sub(5).and_then(|at| subtype.get(at..));
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

/// `axum::extract::Path`, rejected as problem+json.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query`, rejected as problem+json.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// When the request's budget runs out. Every call the request makes is given
/// what remains of it (gRPC carries it as `grpc-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// A gRPC request that carries the remaining budget; `504` when none is left.
    pub fn grpc<T>(&self, message: T) -> Result<tonic::Request<T>, ApiError> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(ApiError::DeadlineExceeded("the request ran out of time".into()));
        }
        let mut request = tonic::Request::new(message);
        request.set_timeout(remaining);
        Ok(request)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Deadline {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Deadline>()
            .copied()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the deadline middleware is not installed")))
    }
}

/// Gives each request its deadline, and answers `504` if the handler is still
/// busy when it passes, so no client waits forever.
pub async fn deadline(budget: Duration, mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Deadline::after(budget));
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::DeadlineExceeded("the request took longer than its time budget".into()).into_response(),
    }
}

/// The optional `Idempotency-Key` header of a write: 1 to 200 visible ASCII
/// characters (the domain's [`callchain_domain::IdempotencyKey`]).
///
/// Handlers take it as `Result<IdempotencyKey, ApiError>` and look at it
/// only once the caller is known to be allowed, so a malformed key never
/// answers before a missing token (401) or a refused role (403) would.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<callchain_domain::IdempotencyKey>);

/// The header's name, as the API's problems and document give it.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl IdempotencyKey {
    /// Parses `text`, the key as a client gave it in `field` (a header, or
    /// a JSON-RPC param).
    pub fn parse(text: &str, field: &'static str) -> Result<Self, ApiError> {
        let key = callchain_domain::IdempotencyKey::parse(text).map_err(|invalid| invalid.named(field))?;
        Ok(Self(Some(key)))
    }

    /// The key as protobuf carries it: empty for none.
    pub fn into_wire(self) -> String {
        self.0.map(|key| key.as_str().to_owned()).unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        // Bytes that are not text become U+FFFD, which the domain refuses
        // with the same words as any other character out of range.
        Self::parse(&String::from_utf8_lossy(value.as_bytes()), IDEMPOTENCY_KEY)
    }
}

/// The address the request came from (the TCP peer; a proxy in front of the
/// API would be seen here, not its clients). `None` when the server was not
/// given the connection's address, as in tests that call the router directly.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_request_carries_the_remaining_budget_as_grpc_timeout() {
        let request = Deadline::after(Duration::from_secs(2)).grpc(()).unwrap();
        let timeout = request.metadata().get("grpc-timeout").expect("grpc-timeout is set");
        // tonic writes the budget in microseconds or milliseconds: at most 2 s.
        let text = timeout.to_str().unwrap();
        let (value, unit) = text.split_at(text.len() - 1);
        let micros: u64 = match unit {
            "u" => value.parse().unwrap(),
            "m" => value.parse::<u64>().unwrap() * 1_000,
            "S" => value.parse::<u64>().unwrap() * 1_000_000,
            other => panic!("unexpected unit {other} in {text}"),
        };
        assert!(micros > 1_000_000 && micros <= 2_000_000, "{text}");
    }

    #[test]
    fn json_content_types_are_told_from_others() {
        let of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(of("application/json"));
        assert!(of("Application/JSON; charset=utf-8"));
        assert!(of("application/problem+json"));
        assert!(!of("text/plain"));
        assert!(!of("application/x-json-not"));
        assert!(!of("json"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn a_spent_budget_is_a_504_before_any_call() {
        let deadline = Deadline::after(Duration::ZERO);
        let error = deadline.grpc(()).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::GATEWAY_TIMEOUT);
    }
}
