//! What the operations take and answer, as both protocols carry them: REST's
//! request bodies, query and response bodies, which JSON-RPC's methods take
//! as params and answer as results. Plain data, with their OpenAPI schemas;
//! the operations (`operations`) parse them into domain types.

use callchain_domain::User;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::schema;

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::name)]
    pub name: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
}

/// Credentials to exchange for a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
}

/// Fields to change (at least one); those left out stay as they are. Only
/// an administrator may change a role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::email, required = false)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::name, required = false)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::password, required = false)]
    pub password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = schema::role, required = false)]
    pub role: Option<String>,
}

/// A field that may be left out but, when given, holds a value: `null` is
/// refused like any other wrong type, rather than read as "left out".
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// A user. Never a password, never a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    #[schema(schema_with = schema::user_id)]
    pub id: String,
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::name)]
    pub name: String,
    #[schema(schema_with = schema::role)]
    pub role: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A bearer token and who it belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(schema_with = schema::bearer)]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    #[schema(minimum = 0)]
    pub expires_in: u64,
    pub user: UserBody,
}

/// A page of users, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    #[schema(max_items = 100)]
    pub users: Vec<UserBody>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::user_id, required = false)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(schema_with = schema::page_size)]
    pub page_size: Option<u32>,
    #[param(schema_with = schema::user_id)]
    pub page_token: Option<String>,
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl From<User> for UserBody {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.to_string(),
            name: user.name.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            created_at: rfc3339(user.created_at),
            updated_at: rfc3339(user.updated_at),
        }
    }
}
