//! Whether a token's user still exists, and with what role: the user
//! service's word, asked on authenticated requests and kept for a moment.
//!
//! A token is signed for an hour, but its user can be deleted or demoted
//! within it. Asking the user service on every request would double the
//! gRPC calls of every read, so an answer is kept for a short time to live
//! (`AUTH_CACHE_TTL_MS`, default 1 s; 0 asks every time). Correctness comes
//! first where it can: the writes this process makes forget the user they
//! change at once, so through one API process a deletion or a demotion
//! takes effect on the very next request. Only another API process's write
//! can go unseen here, and for no longer than the time to live. A user who
//! is not found is never kept: the next request asks again.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use callchain_domain::{Role, User, UserId};
use callchain_proto::user::v1::GetUserRequest;
use tonic::Code;

use crate::{UserClient, error::ApiError, extract::Deadline};

/// How many users are remembered at most; past it, the expired ones go.
const MAX_ENTRIES: usize = 10_000;

pub struct Roles {
    ttl: Duration,
    entries: Mutex<HashMap<UserId, (Role, Instant)>>,
}

impl Roles {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The role `id` has now, or `None` when no such user exists.
    pub async fn current(&self, users: &UserClient, id: UserId, deadline: &Deadline) -> Result<Option<Role>, ApiError> {
        if let Some(role) = self.cached(id) {
            return Ok(Some(role));
        }
        let request = deadline.grpc(GetUserRequest { id: id.to_string() })?;
        match users.clone().get_user(request).await {
            Ok(response) => {
                let user = User::try_from(response.into_inner().user.unwrap_or_default())
                    .map_err(|invalid| ApiError::Internal(anyhow::anyhow!("the user service answered {invalid}")))?;
                self.remember(&user);
                Ok(Some(user.role))
            }
            Err(status) if status.code() == Code::NotFound => {
                self.forget(id);
                Ok(None)
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Keeps `user`'s role as a write of this process left it.
    pub fn remember(&self, user: &User) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("roles");
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(user.id, (user.role, Instant::now() + self.ttl));
    }

    /// Drops what is known of `id`, so the next request asks again.
    pub fn forget(&self, id: UserId) {
        self.entries.lock().expect("roles").remove(&id);
    }

    fn cached(&self, id: UserId) -> Option<Role> {
        let entries = self.entries.lock().expect("roles");
        entries
            .get(&id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(role, _)| *role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> User {
        User {
            id: UserId::new(),
            email: callchain_domain::Email::parse("ada@example.com").unwrap(),
            name: callchain_domain::UserName::parse("Ada").unwrap(),
            role,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_role_is_kept_until_it_expires_or_is_forgotten() {
        let roles = Roles::new(Duration::from_secs(60));
        let ada = user(Role::Admin);
        roles.remember(&ada);
        assert_eq!(roles.cached(ada.id), Some(Role::Admin));
        roles.forget(ada.id);
        assert_eq!(roles.cached(ada.id), None);
    }

    #[test]
    fn a_zero_time_to_live_keeps_nothing() {
        let roles = Roles::new(Duration::ZERO);
        let ada = user(Role::User);
        roles.remember(&ada);
        assert_eq!(roles.cached(ada.id), None);
    }
}
