//! Argon2id password hashing. Hashing costs milliseconds of CPU on purpose,
//! so it runs on the blocking pool, never on the async workers.

use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use callchain_domain::Password;

use crate::error::UserError;

/// The PHC string (`$argon2id$v=19$...`) of a password, with a random salt.
pub async fn hash(password: Password) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| UserError::Internal(anyhow::anyhow!("hashing a password failed: {error}")))
    })
    .await
    .map_err(|error| UserError::Internal(error.into()))?
}

/// Whether `password` matches `hash`. With no hash (no such user) it still
/// does the work of one check, so response time does not tell which emails
/// are registered.
pub async fn verify(password: Password, hash: Option<String>) -> Result<bool, UserError> {
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let parsed = PasswordHash::new(&hash)
            .map_err(|error| UserError::Internal(anyhow::anyhow!("a stored password hash is unreadable: {error}")))?;
        let matches = Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok();
        Ok(matches && hash != DUMMY_HASH)
    })
    .await
    .map_err(|error| UserError::Internal(error.into()))?
}

/// The hash of a random password nobody knows, with default parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$9QbvItcgQi1QgSS4h0XN2DxCdw3rrwBGlxV3nA5zgUE";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash(Password::parse("correct horse").unwrap()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(
            verify(Password::parse("correct horse").unwrap(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify(Password::parse("wrong horse!").unwrap(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn no_user_never_verifies() {
        assert!(!verify(Password::parse("anything at all").unwrap(), None).await.unwrap());
    }
}
