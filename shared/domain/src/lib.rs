//! The user domain, parsed at the edge: the API parses request bodies into
//! these types before calling the user service, and the user service parses
//! its gRPC requests into them again (it is an API of its own).
//!
//! - [`Email`], [`UserName`], [`Password`], [`Role`], [`UserId`]: one input
//!   each, with a private field and a `parse` that is the only way in, so a
//!   value that exists is valid ("parse, don't validate").
//! - [`PageSize`]: how many users a page of a listing holds.
//! - [`User`]: a user as both sides of the hop see it, built of those.
//! - [`Change`]: what a write changed, to publish as its event.
//! - [`Invalid`]: why an input was refused, naming the field.
//!
//! The conversions to and from the protobuf types live in `callchain-proto`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why an input was refused: the field it names and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// An email address: trimmed, at most 254 characters, one `@` with a
/// non-empty local part and a dotted domain. Compared case-insensitively by
/// the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let email = input.trim();
        let invalid = |reason: &str| Invalid::new("email", reason);
        if email.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if email.chars().count() > 254 {
            return Err(invalid("must be at most 254 characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(invalid("must be an email address such as ada@example.com"));
        };
        let well_formed = !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(invalid("must be an email address such as ada@example.com"));
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let name = input.trim();
        if name.is_empty() {
            return Err(Invalid::new("name", "must not be empty"));
        }
        if name.chars().count() > 100 {
            return Err(Invalid::new("name", "must be at most 100 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid::new("name", "must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as the user typed it: 8 to 128 characters. Its `Debug` never
/// shows it, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let chars = input.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(Invalid::new(
                "password",
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if chars > Self::MAX_CHARS {
            return Err(Invalid::new(
                "password",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// The secret itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What a signed-in user may do (GUEST is the absence of a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Admin => "ADMIN",
        }
    }

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        match input {
            "USER" => Ok(Role::User),
            "ADMIN" => Ok(Role::Admin),
            _ => Err(Invalid::new("role", "must be USER or ADMIN")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user's id: a UUID (version 7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(uuid::Uuid);

impl UserId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        uuid::Uuid::parse_str(input)
            .map(Self)
            .map_err(|_| Invalid::new("id", "must be a UUID"))
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<uuid::Uuid> for UserId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many users one page of a listing holds: 1 to [`PageSize::MAX`];
/// [`PageSize::DEFAULT`] when the caller does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const MAX: u32 = 100;
    pub const DEFAULT: PageSize = PageSize(20);

    pub fn parse(input: u32) -> Result<Self, Invalid> {
        if (1..=Self::MAX).contains(&input) {
            Ok(Self(input))
        } else {
            Err(Invalid::new(
                "page_size",
                format!("must be between 1 and {}", Self::MAX),
            ))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for PageSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A user as it is stored: never a password, never a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: UserName,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The change a write made: the identity and time of its event. A write
/// repeated with the same idempotency key answers with the same change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub event_id: uuid::Uuid,
    pub occurred_at: DateTime<Utc>,
}

impl Change {
    /// A change made at `occurred_at`, with a new event id (a UUIDv7).
    pub fn new(occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7(),
            occurred_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_accepts_an_address_and_trims_it() {
        assert_eq!(Email::parse("  ada@example.com ").unwrap().as_str(), "ada@example.com");
    }

    #[test]
    fn email_rejects_what_is_not_an_address_and_names_the_field() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@example..com",
        ] {
            let error = Email::parse(bad).unwrap_err();
            assert_eq!(error.field, "email", "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn password_must_be_8_to_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert_eq!(
            Password::parse("short").unwrap_err().to_string(),
            "password: must be at least 8 characters"
        );
    }

    #[test]
    fn password_debug_hides_the_secret() {
        let password = Password::parse("correct horse battery").unwrap();
        assert_eq!(format!("{password:?}"), "Password(***)");
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(UserName::parse(" Ada ").unwrap().as_str(), "Ada");
        assert_eq!(UserName::parse("   ").unwrap_err().field, "name");
        assert!(UserName::parse(&"n".repeat(101)).is_err());
    }

    #[test]
    fn page_size_is_1_to_100_with_one_message() {
        assert_eq!(PageSize::parse(1).unwrap().get(), 1);
        assert_eq!(PageSize::parse(100).unwrap().get(), 100);
        assert_eq!(PageSize::default().get(), 20);
        for bad in [0, 101] {
            assert_eq!(
                PageSize::parse(bad).unwrap_err().to_string(),
                "page_size: must be between 1 and 100",
                "{bad}"
            );
        }
    }

    #[test]
    fn role_and_id_parse_strictly() {
        assert_eq!(Role::parse("ADMIN").unwrap(), Role::Admin);
        assert!(Role::parse("admin").is_err());
        assert!(UserId::parse("not-a-uuid").is_err());
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()).unwrap(), id);
    }
}
