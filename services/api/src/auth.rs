//! Authentication (JWT bearer tokens) and the roles of DESIGN.md.
//!
//! | role | may |
//! | --- | --- |
//! | guest (no token) | register, log in |
//! | `USER` | read and update itself |
//! | `ADMIN` | everything, including list and delete |
//!
//! [`authenticate`] checks the token once per request, before the handler,
//! and makes a signed-in caller's id the request's `enduser.id` baggage.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, request::Parts},
    middleware::Next,
    response::Response,
};
use callchain_domain::{Role, UserId};
use callchain_telemetry::baggage;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{AppState, error::ApiError};

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

/// Signs and checks tokens (HS256).
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl Keys {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    /// A token for `id` with `role`, and the seconds it stays valid.
    pub fn issue(&self, id: UserId, role: Role) -> Result<(String, u64), ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: id.to_string(),
            role,
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| ApiError::Internal(error.into()))?;
        Ok((token, self.ttl.as_secs()))
    }

    /// The claims of a valid token; a `401` naming what is wrong otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| {
                ApiError::Unauthenticated(
                    match error.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired; log in again",
                        ErrorKind::InvalidSignature => "the token's signature is not valid",
                        _ => "the token is malformed",
                    }
                    .into(),
                )
            })
    }
}

/// Who is calling: a guest, or a signed-in user with a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Guest,
    User { id: UserId, role: Role },
}

impl Caller {
    /// The signed-in user; `401` for a guest.
    pub fn signed_in(&self) -> Result<(UserId, Role), ApiError> {
        match *self {
            Caller::User { id, role } => Ok((id, role)),
            Caller::Guest => Err(ApiError::Unauthenticated(
                "this needs a token: log in and send `Authorization: Bearer <token>`".into(),
            )),
        }
    }

    /// `401` for a guest, `403` for anyone but an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.signed_in()? {
            (_, Role::Admin) => Ok(()),
            _ => Err(ApiError::Forbidden("only an administrator may do this".into())),
        }
    }

    /// `401` for a guest, `403` for a user acting on someone else. Returns the
    /// caller's role.
    pub fn require_self_or_admin(&self, target: UserId) -> Result<Role, ApiError> {
        match self.signed_in()? {
            (_, Role::Admin) => Ok(Role::Admin),
            (id, role) if id == target => Ok(role),
            _ => Err(ApiError::Forbidden("a user may only act on itself".into())),
        }
    }

    /// The caller a request's `Authorization` header names; a `401` naming
    /// what is wrong with a token that is there but not valid.
    fn from_headers(headers: &HeaderMap, keys: &Keys) -> Result<Self, ApiError> {
        let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(Caller::Guest);
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be `Bearer <token>`".into()))?;
        let claims = keys.verify(token)?;
        let id = UserId::parse(&claims.sub).map_err(|_| ApiError::Unauthenticated("the token is malformed".into()))?;
        Ok(Caller::User { id, role: claims.role })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // `authenticate` has checked the token already, unless it was refused:
        // then checking it again names what is wrong with it.
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(*caller),
            None => Caller::from_headers(&parts.headers, &state.keys),
        }
    }
}

/// Authenticates the caller before the handler runs, and makes a signed-in
/// caller's id (the token's `sub`) the `enduser.id` of the request's baggage,
/// which the gRPC call and the event carry on to the user service and the
/// consumer. Any `enduser.id` the request brought is removed first: only a
/// verified token names the caller. A token that is not valid makes the
/// caller nobody here; the handlers that need a caller answer `401`.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let caller = Caller::from_headers(request.headers(), &state.keys).ok();
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    let enduser = match caller {
        Some(Caller::User { id, .. }) => Some(id.to_string()),
        _ => None,
    };
    if let Some(id) = &enduser {
        tracing::Span::current().record(baggage::ENDUSER_ID, id.as_str());
    }
    baggage::with_enduser(enduser.as_deref(), next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"a-test-secret-that-is-long-enough!!", Duration::from_secs(60))
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let id = UserId::new();
        let (token, expires_in) = keys().issue(id, Role::Admin).unwrap();
        assert_eq!(expires_in, 60);
        let claims = keys().verify(&token).unwrap();
        assert_eq!(claims.sub, id.to_string());
        assert_eq!(claims.role, Role::Admin);
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let other = Keys::new(b"another-secret-that-is-long-enough!", Duration::from_secs(60));
        let (token, _) = other.issue(UserId::new(), Role::User).unwrap();
        let error = keys().verify(&token).unwrap_err();
        assert_eq!(error.to_string(), "the token's signature is not valid");
    }

    #[test]
    fn roles_decide_who_may_act_on_whom() {
        let me = UserId::new();
        let user = Caller::User {
            id: me,
            role: Role::User,
        };
        assert!(user.require_self_or_admin(me).is_ok());
        assert!(matches!(
            user.require_self_or_admin(UserId::new()),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(user.require_admin(), Err(ApiError::Forbidden(_))));
        assert!(matches!(
            Caller::Guest.require_admin(),
            Err(ApiError::Unauthenticated(_))
        ));
        let admin = Caller::User {
            id: me,
            role: Role::Admin,
        };
        assert!(admin.require_admin().is_ok());
        assert!(admin.require_self_or_admin(UserId::new()).is_ok());
    }
}
