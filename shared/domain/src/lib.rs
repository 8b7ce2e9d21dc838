//! The user domain, parsed at the edge: the API parses request bodies into
//! these types before calling the user service, the user service parses its
//! gRPC requests into them again (it is an API of its own), and the consumer
//! parses the events it reads.
//!
//! - [`Email`], [`UserName`], [`Password`], [`Role`], [`UserId`],
//!   [`IdempotencyKey`]: one input each, with a private field and a `parse`
//!   that is the only way in, so a value that exists is valid ("parse, don't
//!   validate").
//! - [`PageSize`]: how many users a page of a listing holds.
//! - [`User`]: a user as both sides of the hop see it, built of those.
//! - [`Change`]: what a write changed, to publish as its event.
//! - [`Invalid`]: why an input was refused, naming the field.
//!
//! No text field accepts a control character (U+0000–U+001F,
//! U+007F–U+009F): NUL among them, the one character Postgres refuses in
//! `text` and `jsonb`, so no input reaches the database as an error.
//!
//! Every limit is a constant here, and every rule on characters a
//! `PATTERN`, in the regular-expression dialect that ECMA-262 (JSON Schema),
//! Python and the `regex` crate share. The API's OpenAPI document is built
//! from them, and the tests below hold each pattern to its `parse`, so the
//! document and the code cannot drift.
//!
//! The conversions to and from the protobuf types live in `callchain-proto`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The control characters (Unicode category Cc, what [`char::is_control`]
/// matches), as the inside of a character class.
macro_rules! control {
    () => {
        r"\u0000-\u001f\u007f-\u009f"
    };
}

/// The white space of Unicode (what [`char::is_whitespace`] matches), as the
/// inside of a character class.
macro_rules! space {
    () => {
        r"\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}

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

    /// The same reason, for an input that goes by another name where it
    /// came in (a `page_token` that is a user id, a header).
    pub fn named(self, field: &'static str) -> Self {
        Self { field, ..self }
    }
}

fn has_control(input: &str) -> bool {
    input.chars().any(char::is_control)
}

fn control_characters(field: &'static str) -> Invalid {
    Invalid::new(field, "must not contain control characters")
}

/// An email address: at most 254 characters, one `@` between a non-empty
/// local part and a domain of two or more dot-separated labels, with no
/// white space and no control character anywhere. Taken as given, never
/// trimmed, so what is stored is what was sent. Compared case-insensitively
/// by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;
    pub const PATTERN: &'static str = concat!(
        "^[^@",
        control!(),
        space!(),
        "]+@[^@.",
        control!(),
        space!(),
        r"]+(\.[^@.",
        control!(),
        space!(),
        "]+)+$"
    );

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let invalid = |reason: &str| Invalid::new("email", reason);
        if input.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if input.chars().count() > Self::MAX_CHARS {
            return Err(invalid("must be at most 254 characters"));
        }
        if has_control(input) {
            return Err(control_characters("email"));
        }
        let Some((local, domain)) = input.split_once('@') else {
            return Err(invalid("must be an email address such as ada@example.com"));
        };
        let well_formed = !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty())
            && !input.chars().any(char::is_whitespace);
        if !well_formed {
            return Err(invalid("must be an email address such as ada@example.com"));
        }
        Ok(Self(input.to_owned()))
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

/// A display name: 1 to 100 characters, no control character, and no white
/// space at either end (inside it, spaces are fine: "Ada Lovelace").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub const MAX_CHARS: usize = 100;
    pub const PATTERN: &'static str = concat!(
        "^[^",
        control!(),
        space!(),
        "]([^",
        control!(),
        "]*[^",
        control!(),
        space!(),
        "])?$"
    );

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        if input.is_empty() {
            return Err(Invalid::new("name", "must not be empty"));
        }
        if input.chars().count() > Self::MAX_CHARS {
            return Err(Invalid::new("name", "must be at most 100 characters"));
        }
        if has_control(input) {
            return Err(control_characters("name"));
        }
        if input.starts_with(char::is_whitespace) || input.ends_with(char::is_whitespace) {
            return Err(Invalid::new("name", "must not start or end with white space"));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as the user typed it: 8 to 128 characters, no control
/// character. Its `Debug` never shows it, so it cannot reach a log by
/// accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;
    pub const PATTERN: &'static str = concat!("^[^", control!(), "]*$");

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
        if has_control(input) {
            return Err(control_characters("password"));
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// Every role, least powerful first (so `min` is the lesser of two).
    pub const ALL: [Role; 2] = [Role::User, Role::Admin];

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

/// A user's id: a UUID (version 7, so ids sort by creation time), written
/// the one usual way, as 36 characters with hyphens (either case of hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(uuid::Uuid);

impl UserId {
    pub const PATTERN: &'static str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// `uuid` alone would also take the simple, braced and URN forms; an id
    /// has one spelling, the one this service writes.
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        if input.len() != 36 {
            return Err(Invalid::new("id", "must be a UUID"));
        }
        uuid::Uuid::try_parse(input)
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

/// The key a client gives a write so that a retry of it applies once: 1 to
/// 200 visible ASCII characters (`!` to `~`; a UUID is a good choice).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_CHARS: usize = 200;
    pub const PATTERN: &'static str = r"^[\u0021-\u007e]+$";

    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let invalid = || {
            Invalid::new(
                "idempotency_key",
                format!("must be 1 to {} visible ASCII characters", Self::MAX_CHARS),
            )
        };
        if input.is_empty() || input.len() > Self::MAX_CHARS || !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        Ok(Self(input.to_owned()))
    }

    /// A key as protobuf carries it, where the empty string means none.
    pub fn parse_optional(input: &str) -> Result<Option<Self>, Invalid> {
        match input {
            "" => Ok(None),
            key => Self::parse(key).map(Some),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many users one page of a listing holds: 1 to [`PageSize::MAX`];
/// [`PageSize::DEFAULT`] when the caller does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 100;
    pub const DEFAULT: PageSize = PageSize(20);

    pub fn parse(input: u32) -> Result<Self, Invalid> {
        if (Self::MIN..=Self::MAX).contains(&input) {
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

    /// Whether `pattern` matches `input`, in the `regex` crate's reading.
    fn matches(pattern: &str, input: &str) -> bool {
        regex::Regex::new(pattern)
            .unwrap_or_else(|error| panic!("{pattern}: {error}"))
            .is_match(input)
    }

    /// Holds `pattern` to `parse` on each input: within the length limits
    /// (which the document gives as minLength/maxLength), the pattern
    /// matches exactly what parses.
    fn assert_pattern_agrees<T, E>(pattern: &str, parse: impl Fn(&str) -> Result<T, E>, inputs: &[&str]) {
        for input in inputs {
            assert_eq!(
                matches(pattern, input),
                parse(input).is_ok(),
                "{input:?}: the pattern and parse disagree"
            );
        }
    }

    #[test]
    fn the_character_classes_are_exactly_control_and_white_space() {
        let control = regex::Regex::new(concat!("^[", control!(), "]$")).unwrap();
        let space = regex::Regex::new(concat!("^[", space!(), "]$")).unwrap();
        let mut buffer = [0; 4];
        for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
            let text = c.encode_utf8(&mut buffer);
            assert_eq!(control.is_match(text), c.is_control(), "{c:?} control");
            assert_eq!(space.is_match(text), c.is_whitespace(), "{c:?} white space");
        }
    }

    #[test]
    fn email_is_taken_as_given_and_names_the_field() {
        assert_eq!(Email::parse("ada@example.com").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@example..com",
            "ada@.example.com",
            "ada@example.com.",
            " ada@example.com",
            "ada@example.com\n",
            "ada\u{0}@example.com",
        ] {
            let error = Email::parse(bad).unwrap_err();
            assert_eq!(error.field, "email", "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
        assert_eq!(
            Email::parse("ada\u{0}@example.com").unwrap_err().to_string(),
            "email: must not contain control characters"
        );
    }

    #[test]
    fn email_pattern_agrees_with_parse() {
        assert_pattern_agrees(
            Email::PATTERN,
            Email::parse,
            &[
                "ada@example.com",
                "a.b+c@x.y.z",
                "é@ü.example",
                "ada@example",
                "ada@@example.com",
                "ada@example..com",
                "ada@.example.com",
                "ada@example.com.",
                "@example.com",
                " ada@example.com",
                "ada@exa mple.com",
                "ada@example.com\u{3000}",
                "ada\u{85}@example.com",
                "ada\u{0}@example.com",
                "ada\u{9f}@example.com",
                "ada\u{200b}@example.com",
            ],
        );
    }

    #[test]
    fn password_must_be_8_to_128_characters_without_control_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse("  spaces are fine  ").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert_eq!(
            Password::parse("short").unwrap_err().to_string(),
            "password: must be at least 8 characters"
        );
        assert_eq!(
            Password::parse("long enough\u{0}").unwrap_err().to_string(),
            "password: must not contain control characters"
        );
        assert_pattern_agrees(
            Password::PATTERN,
            Password::parse,
            &[
                "correct horse",
                "tab\there!",
                "nul\u{0}nul!",
                "del\u{7f}del!",
                " é 🦀 ü ok ",
            ],
        );
    }

    #[test]
    fn password_debug_hides_the_secret() {
        let password = Password::parse("correct horse battery").unwrap();
        assert_eq!(format!("{password:?}"), "Password(***)");
    }

    #[test]
    fn name_is_bounded_and_has_no_white_space_at_its_ends() {
        assert_eq!(UserName::parse("Ada Lovelace").unwrap().as_str(), "Ada Lovelace");
        assert_eq!(UserName::parse("   ").unwrap_err().field, "name");
        assert_eq!(
            UserName::parse(" Ada").unwrap_err().to_string(),
            "name: must not start or end with white space"
        );
        assert!(UserName::parse(&"n".repeat(100)).is_ok());
        assert!(UserName::parse(&"n".repeat(101)).is_err());
        assert_eq!(
            UserName::parse("Ada\u{0}").unwrap_err().to_string(),
            "name: must not contain control characters"
        );
        assert_pattern_agrees(
            UserName::PATTERN,
            UserName::parse,
            &[
                "A",
                "Ada Lovelace",
                "李 小龍",
                " ",
                " Ada",
                "Ada ",
                "Ada\u{a0}",
                "\u{2028}Ada",
                "Ada\nLovelace",
                "Ada\u{0}",
                "A\u{85}",
            ],
        );
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
        assert_eq!(Role::User.min(Role::Admin), Role::User);
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(UserId::parse(&id.to_string().to_uppercase()).unwrap(), id);
        let simple = id.as_uuid().simple().to_string();
        let urn = id.as_uuid().urn().to_string();
        let braced = id.as_uuid().braced().to_string();
        assert_pattern_agrees(
            UserId::PATTERN,
            UserId::parse,
            &[&id.to_string(), "not-a-uuid", &simple, &urn, &braced, "", "0"],
        );
        assert_eq!(
            UserId::parse("x").unwrap_err().named("page_token").to_string(),
            "page_token: must be a UUID"
        );
    }

    #[test]
    fn idempotency_keys_are_1_to_200_visible_ascii_characters() {
        assert_eq!(IdempotencyKey::parse_optional("").unwrap(), None);
        assert_eq!(IdempotencyKey::parse_optional("abc").unwrap().unwrap().as_str(), "abc");
        assert!(IdempotencyKey::parse(&"k".repeat(200)).is_ok());
        let too_long = IdempotencyKey::parse(&"k".repeat(201)).unwrap_err();
        assert_eq!(too_long.field, "idempotency_key");
        assert_pattern_agrees(
            IdempotencyKey::PATTERN,
            IdempotencyKey::parse,
            &["a", "!~", "0199-abc", "a b", " a", "a\u{0}", "é", "\u{7f}", ""],
        );
    }
}
