//! The one translation between the protobuf messages and the domain types.
//!
//! Into protobuf cannot fail; out of it is a `TryFrom` that parses every
//! field the way the domain does, so a value the wire carries but the domain
//! has no word for (an unknown role number, a malformed id) is refused with
//! the field it came in, never guessed at.

use callchain_domain::{Change, Email, Invalid, Role, User, UserId, UserName};
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::user::v1 as pb;

impl From<Role> for pb::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::User => pb::Role::User,
            Role::Admin => pb::Role::Admin,
        }
    }
}

/// ROLE_UNSPECIFIED is refused: a user always has a role.
impl TryFrom<pb::Role> for Role {
    type Error = Invalid;

    fn try_from(role: pb::Role) -> Result<Self, Invalid> {
        match role {
            pb::Role::User => Ok(Role::User),
            pb::Role::Admin => Ok(Role::Admin),
            pb::Role::Unspecified => Err(invalid_role()),
        }
    }
}

/// A role field as the message holds it (a number), refused when it is not
/// one `pb::Role` knows.
fn wire_role(value: i32) -> Result<pb::Role, Invalid> {
    pb::Role::try_from(value).map_err(|_| invalid_role())
}

fn invalid_role() -> Invalid {
    Invalid::new("role", "must be USER or ADMIN")
}

impl pb::UpdateUserRequest {
    /// The role to give the user: `None` (ROLE_UNSPECIFIED) leaves it as it
    /// is. Unlike the generated `role()`, which reads an unknown number as
    /// unspecified, a number no role has is refused.
    pub fn new_role(&self) -> Result<Option<Role>, Invalid> {
        match wire_role(self.role)? {
            pb::Role::Unspecified => Ok(None),
            role => Role::try_from(role).map(Some),
        }
    }
}

/// Protobuf's `Timestamp` and chrono's `DateTime` are both foreign here, so
/// this pair of functions stands in for the `From`/`TryFrom` the orphan rule
/// forbids; `User` and `Change` convert their times through them.
fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // At most 1_999_999_999 (inside a leap second), which fits an i32.
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn datetime(timestamp: Option<Timestamp>, field: &'static str) -> Result<DateTime<Utc>, Invalid> {
    let timestamp = timestamp.ok_or_else(|| Invalid::new(field, "is missing"))?;
    u32::try_from(timestamp.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .ok_or_else(|| Invalid::new(field, "is not a time chrono can hold"))
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        pb::User {
            id: user.id.to_string(),
            email: user.email.to_string(),
            name: user.name.as_str().to_owned(),
            role: pb::Role::from(user.role).into(),
            created_at: Some(timestamp(user.created_at)),
            updated_at: Some(timestamp(user.updated_at)),
        }
    }
}

impl TryFrom<pb::User> for User {
    type Error = Invalid;

    fn try_from(user: pb::User) -> Result<Self, Invalid> {
        Ok(User {
            id: UserId::parse(&user.id)?,
            email: Email::parse(&user.email)?,
            name: UserName::parse(&user.name)?,
            role: Role::try_from(wire_role(user.role)?)?,
            created_at: datetime(user.created_at, "created_at")?,
            updated_at: datetime(user.updated_at, "updated_at")?,
        })
    }
}

impl From<Change> for pb::Change {
    fn from(change: Change) -> Self {
        pb::Change {
            event_id: change.event_id.to_string(),
            occurred_at: Some(timestamp(change.occurred_at)),
        }
    }
}

impl TryFrom<pb::Change> for Change {
    type Error = Invalid;

    fn try_from(change: pb::Change) -> Result<Self, Invalid> {
        Ok(Change {
            event_id: uuid::Uuid::parse_str(&change.event_id)
                .map_err(|_| Invalid::new("event_id", "must be a UUID"))?,
            occurred_at: datetime(change.occurred_at, "occurred_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ada() -> User {
        User {
            id: UserId::new(),
            email: Email::parse("ada@example.com").unwrap(),
            name: UserName::parse("Ada Lovelace").unwrap(),
            role: Role::Admin,
            created_at: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            updated_at: DateTime::from_timestamp(1_700_000_001, 987_654_321).unwrap(),
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in [Role::User, Role::Admin] {
            assert_eq!(Role::try_from(pb::Role::from(role)).unwrap(), role);
        }
    }

    #[test]
    fn an_unspecified_role_is_no_role_of_a_user() {
        assert_eq!(Role::try_from(pb::Role::Unspecified).unwrap_err().field, "role");
    }

    #[test]
    fn an_update_reads_unspecified_as_unchanged_and_refuses_an_unknown_role() {
        let with_role = |role| pb::UpdateUserRequest {
            role,
            ..Default::default()
        };
        assert_eq!(with_role(pb::Role::Unspecified.into()).new_role().unwrap(), None);
        assert_eq!(with_role(pb::Role::User.into()).new_role().unwrap(), Some(Role::User));
        assert_eq!(with_role(pb::Role::Admin.into()).new_role().unwrap(), Some(Role::Admin));
        let unknown = with_role(9).new_role().unwrap_err();
        assert_eq!(unknown.to_string(), "role: must be USER or ADMIN");
    }

    #[test]
    fn users_round_trip_to_the_nanosecond() {
        let user = ada();
        assert_eq!(User::try_from(pb::User::from(user.clone())).unwrap(), user);
    }

    #[test]
    fn a_user_with_an_unknown_or_unspecified_role_is_refused() {
        for role in [9, pb::Role::Unspecified.into()] {
            let wire = pb::User {
                role,
                ..pb::User::from(ada())
            };
            assert_eq!(User::try_from(wire).unwrap_err().field, "role", "{role}");
        }
    }

    #[test]
    fn a_user_without_a_time_or_with_a_malformed_id_is_refused() {
        let wire = pb::User {
            created_at: None,
            ..pb::User::from(ada())
        };
        assert_eq!(User::try_from(wire).unwrap_err().field, "created_at");
        let wire = pb::User {
            updated_at: Some(Timestamp { seconds: 0, nanos: -1 }),
            ..pb::User::from(ada())
        };
        assert_eq!(User::try_from(wire).unwrap_err().field, "updated_at");
        let wire = pb::User {
            id: "not-a-uuid".into(),
            ..pb::User::from(ada())
        };
        assert_eq!(User::try_from(wire).unwrap_err().field, "id");
    }

    #[test]
    fn changes_round_trip_and_a_malformed_one_is_refused() {
        let change = Change::new(DateTime::from_timestamp(1_700_000_000, 5).unwrap());
        assert_eq!(Change::try_from(pb::Change::from(change)).unwrap(), change);
        let wire = pb::Change {
            event_id: "nope".into(),
            ..pb::Change::from(change)
        };
        assert_eq!(Change::try_from(wire).unwrap_err().field, "event_id");
        let wire = pb::Change {
            occurred_at: None,
            ..pb::Change::from(change)
        };
        assert_eq!(Change::try_from(wire).unwrap_err().field, "occurred_at");
    }
}
