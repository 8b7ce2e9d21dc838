//! The schemas of the domain's inputs, built from its own constants
//! (`callchain-domain`: limits and patterns), so the OpenAPI document states
//! exactly what the code enforces. A leaf: REST's types and the document's
//! root both read it.

use callchain_domain::{Email, IdempotencyKey, PageSize, Password, Role, UserId, UserName};
use utoipa::openapi::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

fn text(min: usize, max: usize, pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
}

/// `Email::parse`: at most 254 characters, one `@`, a dotted domain, no
/// white space or control character.
pub fn email() -> Object {
    text(1, Email::MAX_CHARS, Email::PATTERN)
        .description(Some(
            "An email address: one `@` between a local part and a domain of dot-separated labels, \
             no white space or control character. Unique whatever its case.",
        ))
        .examples(["ada@example.com"])
        .build()
}

/// `UserName::parse`.
pub fn name() -> Object {
    text(1, UserName::MAX_CHARS, UserName::PATTERN)
        .description(Some(
            "A display name: no control character, no white space at either end.",
        ))
        .examples(["Ada Lovelace"])
        .build()
}

/// `Password::parse`.
pub fn password() -> Object {
    text(Password::MIN_CHARS, Password::MAX_CHARS, Password::PATTERN)
        .description(Some(
            "A password: no control character. Never shown back, never logged.",
        ))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
        .write_only(true)
        .examples(["correct horse battery staple"])
        .build()
}

/// `Role::parse`.
pub fn role() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Role::ALL.map(Role::as_str)))
        .build()
}

/// `UserId::parse`: a UUID with hyphens.
pub fn user_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .pattern(Some(UserId::PATTERN))
        .build()
}

/// `PageSize::parse`.
pub fn page_size() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(PageSize::MIN))
        .maximum(Some(PageSize::MAX))
        .default(Some(PageSize::DEFAULT.get().into()))
        .build()
}

/// `IdempotencyKey::parse`.
pub fn idempotency_key() -> Object {
    text(1, IdempotencyKey::MAX_CHARS, IdempotencyKey::PATTERN)
        .examples(["0199a5c2-7b1e-7c3d-9f00-5e4d3c2b1a09"])
        .build()
}

/// The one token type.
pub fn bearer() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["Bearer"]))
        .build()
}
