//! Authentication (JWT bearer tokens) and the roles of ARCHITECTURE.md ("Roles").
//!
//! | role | may |
//! | --- | --- |
//! | guest (no token) | register, log in |
//! | `USER` | read and update itself |
//! | `ADMIN` | everything, including list and delete |
//!
//! A token is accepted only when it is signed with HS256 by this API's key
//! (no other algorithm, `none` least of all), names this API as its issuer
//! and audience, and is within its `nbf`..`exp` window. It then grants at
//! most the role it names, and only while the user still exists with that
//! role: the user service is asked (see `roles`), so a deleted user's token
//! stops working and a lowered role takes effect; a raised role needs a new
//! login.
//!
//! [`authenticate`] checks the token once per request, before the handler,
//! and makes a signed-in caller's id the request's `enduser.id` baggage; the
//! [`Caller`] extractor then asks for the user's current role. A token that
//! verified is remembered, by its exact text, until it expires: a client
//! sends the same token with every request, and checking its signature,
//! decoding and parsing it again each time cost more than the rest of the
//! API's work on a read.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, request::Parts},
    middleware::Next,
    response::Response,
};
use callchain_domain::{Role, UserId};
use callchain_telemetry::baggage;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use crate::{AppState, error::ApiError, extract::Deadline};

/// The `iss` of every token this API issues, and the only one it accepts.
pub const ISSUER: &str = "callchain-api";
/// The `aud` of every token this API issues, and the only one it accepts.
pub const AUDIENCE: &str = "callchain-api";

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// How many verified tokens [`Keys`] remembers; when full, the expired ones
/// go, and if none has, all of them.
const REMEMBERED_TOKENS: usize = 10_000;

/// Signs and checks tokens (HS256).
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    /// Tokens that verified, by their text: whom they name, with what role,
    /// and their `exp`.
    verified: Mutex<HashMap<Box<str>, (UserId, Role, u64)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Keys {
    pub fn new(secret: &SecretString, ttl: Duration) -> Self {
        let secret = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Whom a valid token names, and the role it was issued with; a `401`
    /// naming what is wrong otherwise. A token that verified before is
    /// answered from memory while its `exp` is ahead: the same text has the
    /// same signature, issuer, audience and `nbf`, so only time can change
    /// the answer.
    pub fn identify(&self, token: &str) -> Result<(UserId, Role), ApiError> {
        let now = unix_now();
        if let Some(&(id, role, exp)) = self.verified.lock().expect("tokens").get(token)
            && now < exp
        {
            return Ok((id, role));
        }
        let claims = self.verify(token)?;
        let id = UserId::parse(&claims.sub).map_err(|_| ApiError::Unauthenticated("the token is malformed".into()))?;
        let mut verified = self.verified.lock().expect("tokens");
        if verified.len() >= REMEMBERED_TOKENS {
            verified.retain(|_, &mut (_, _, exp)| now < exp);
            if verified.len() >= REMEMBERED_TOKENS {
                verified.clear();
            }
        }
        verified.insert(token.into(), (id, claims.role, claims.exp));
        Ok((id, claims.role))
    }

    /// A token for `id` with `role`, and the seconds it stays valid.
    pub fn issue(&self, id: UserId, role: Role) -> Result<(String, u64), ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: id.to_string(),
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| ApiError::Internal(error.into()))?;
        Ok((token, self.ttl.as_secs()))
    }

    /// The claims of a valid token; a `401` naming what is wrong otherwise.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        // One algorithm: a token that names another (`none`, RS256 with our
        // key read as a public key, HS512) is refused before its signature
        // is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "sub", "iss", "aud"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|error| {
                ApiError::Unauthenticated(
                    match error.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired; log in again",
                        ErrorKind::ImmatureSignature => "the token is not valid yet",
                        ErrorKind::InvalidSignature => "the token's signature is not valid",
                        ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                        ErrorKind::InvalidIssuer => "the token was not issued by this API",
                        ErrorKind::InvalidAudience => "the token is not meant for this API",
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

    /// The user `target` names, when the caller may act on it: `401` for a
    /// guest; `403` for a user acting on anyone but itself (whatever
    /// `target` holds, since it is not the caller's own id); `400` for an
    /// administrator naming a malformed id. Returns the caller's role too.
    pub fn may_act_on(&self, target: &str) -> Result<(UserId, Role), ApiError> {
        match (self.signed_in()?, UserId::parse(target)) {
            ((_, Role::Admin), parsed) => Ok((parsed?, Role::Admin)),
            ((me, role), Ok(target)) if target == me => Ok((me, role)),
            _ => Err(ApiError::Forbidden("a user may only act on itself".into())),
        }
    }
}

/// Who a request's `Authorization` header names, by the token alone: the
/// user and the role it was issued with; `None` for no header; a `401`
/// naming what is wrong with a token that is there but not valid.
fn token_of(headers: &HeaderMap, keys: &Keys) -> Result<Option<(UserId, Role)>, ApiError> {
    let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be `Bearer <token>`".into()))?;
    keys.identify(token).map(Some)
}

/// A token [`authenticate`] has verified, for the [`Caller`] extractor.
#[derive(Clone, Copy)]
struct Verified(UserId, Role);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // `authenticate` has checked the token already, unless it was refused:
        // then checking it again names what is wrong with it.
        let token = match parts.extensions.get::<Verified>() {
            Some(&Verified(id, role)) => Some((id, role)),
            None => token_of(&parts.headers, &state.keys)?,
        };
        let Some((id, role)) = token else {
            return Ok(Caller::Guest);
        };
        let deadline = Deadline::from_request_parts(parts, state).await?;
        let current = state
            .roles
            .current(&state.users, id, &deadline)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("the token's user no longer exists".into()))?;
        Ok(Caller::User {
            id,
            role: role.min(current),
        })
    }
}

/// Verifies the token before the handler runs, and makes a signed-in
/// caller's id (the token's `sub`) the `enduser.id` of the request's baggage,
/// which the gRPC calls and the event carry on to the user service and the
/// consumer. Any `enduser.id` the request brought is removed first: only a
/// verified token names the caller. A token that is not valid makes the
/// caller nobody here; the handlers that need a caller answer `401`.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let enduser = match token_of(request.headers(), &state.keys) {
        Ok(Some((id, role))) => {
            request.extensions_mut().insert(Verified(id, role));
            Some(id.to_string())
        }
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
        Keys::new(&"a-test-secret-that-is-long-enough!!".into(), Duration::from_secs(60))
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
    fn a_remembered_token_still_expires() {
        let keys = Keys::new(&"a-test-secret-that-is-long-enough!!".into(), Duration::from_secs(1));
        let id = UserId::new();
        let (token, _) = keys.issue(id, Role::User).unwrap();
        assert_eq!(keys.identify(&token).unwrap(), (id, Role::User));
        assert_eq!(keys.identify(&token).unwrap(), (id, Role::User));
        // `exp` is a whole second: past it, the token is checked again, and refused.
        std::thread::sleep(Duration::from_millis(2100));
        let error = keys.identify(&token).unwrap_err();
        assert_eq!(error.to_string(), "the token has expired; log in again");
    }

    #[test]
    fn only_the_exact_text_of_a_verified_token_is_remembered() {
        let keys = keys();
        let (token, _) = keys.issue(UserId::new(), Role::User).unwrap();
        keys.identify(&token).unwrap();
        // The same claims under a changed signature.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{signed}.{first}{}", &signature[1..]);
        let error = keys.identify(&forged).unwrap_err();
        assert_eq!(error.to_string(), "the token's signature is not valid");
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let other = Keys::new(&"another-secret-that-is-long-enough!".into(), Duration::from_secs(60));
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
        assert_eq!(user.may_act_on(&me.to_string()).unwrap(), (me, Role::User));
        assert!(matches!(
            user.may_act_on(&UserId::new().to_string()),
            Err(ApiError::Forbidden(_))
        ));
        // Not its own id, so not its business what is wrong with it.
        assert!(matches!(user.may_act_on("not-a-uuid"), Err(ApiError::Forbidden(_))));
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
        assert!(admin.may_act_on(&UserId::new().to_string()).is_ok());
        assert!(matches!(
            admin.may_act_on("not-a-uuid"),
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            Caller::Guest.may_act_on("not-a-uuid"),
            Err(ApiError::Unauthenticated(_))
        ));
    }
}
