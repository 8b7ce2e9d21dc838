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
//!
//! Only what is read now is kept: the answer of a `GetUser` this module
//! sends. A write's answer is never kept, since it may be a replay (a write
//! repeated with its `Idempotency-Key` answers what the user was then, not
//! what it is). And an answer that was in flight when its user was
//! forgotten is not kept either: it may predate the change that made this
//! process forget. Each forgetting bumps a generation, and an answer is
//! kept only if its user's generation is the one it was asked under. The
//! generations are a fixed array a user's id hashes into, so they take no
//! memory per user; two users that share a slot only ever cost an answer
//! that is not kept.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

use callchain_domain::{Role, User, UserId};
use callchain_proto::user::v1::GetUserRequest;
use tonic::Code;

use crate::{UserClient, error::ApiError, extract::Deadline};

/// How many users are remembered at most; past it, the expired ones go.
const MAX_ENTRIES: usize = 10_000;

/// How many generations the users' ids hash into.
const GENERATIONS: usize = 1024;

pub struct Roles {
    ttl: Duration,
    known: Mutex<Known>,
    /// Which generation slot a user's id falls in.
    slots: RandomState,
}

struct Known {
    entries: HashMap<UserId, (Role, Instant)>,
    /// Bumped for every user of a slot that is forgotten.
    generations: Box<[u64; GENERATIONS]>,
}

/// A user's generation when its role was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Generation {
    slot: usize,
    value: u64,
}

impl Roles {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            known: Mutex::new(Known {
                entries: HashMap::new(),
                generations: Box::new([0; GENERATIONS]),
            }),
            slots: RandomState::new(),
        }
    }

    /// The role `id` has now, or `None` when no such user exists.
    pub async fn current(&self, users: &UserClient, id: UserId, deadline: &Deadline) -> Result<Option<Role>, ApiError> {
        let generation = match self.cached(id) {
            Ok(role) => return Ok(Some(role)),
            Err(generation) => generation,
        };
        let request = deadline.grpc(GetUserRequest { id: id.to_string() })?;
        match users.clone().get_user(request).await {
            Ok(response) => {
                let user = User::try_from(response.into_inner().user.unwrap_or_default())
                    .map_err(|invalid| ApiError::Internal(anyhow::anyhow!("the user service answered {invalid}")))?;
                self.remember(&user, generation);
                Ok(Some(user.role))
            }
            Err(status) if status.code() == Code::NotFound => {
                self.forget(id);
                Ok(None)
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Keeps `user`'s role as a read just answered it, unless the user was
    /// forgotten since `generation` was taken: then the answer may predate
    /// the change, and the next request asks again.
    fn remember(&self, user: &User, generation: Generation) {
        if self.ttl.is_zero() {
            return;
        }
        let mut known = self.known.lock().expect("roles");
        if known.generations[generation.slot] != generation.value {
            return;
        }
        let entries = &mut known.entries;
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(user.id, (user.role, Instant::now() + self.ttl));
    }

    /// Drops what is known of `id`, and whatever an answer in flight would
    /// keep of it, so the next request asks again.
    pub fn forget(&self, id: UserId) {
        let slot = self.slot(id);
        let mut known = self.known.lock().expect("roles");
        known.entries.remove(&id);
        known.generations[slot] += 1;
    }

    /// The role kept for `id`; or, when none is, `id`'s generation now, to
    /// keep the answer of the read about to be sent under.
    fn cached(&self, id: UserId) -> Result<Role, Generation> {
        let slot = self.slot(id);
        let known = self.known.lock().expect("roles");
        match known.entries.get(&id) {
            Some(&(role, expires)) if expires > Instant::now() => Ok(role),
            _ => Err(Generation {
                slot,
                value: known.generations[slot],
            }),
        }
    }

    fn slot(&self, id: UserId) -> usize {
        (self.slots.hash_one(id) % GENERATIONS as u64) as usize
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
        let generation = roles.cached(ada.id).unwrap_err();
        roles.remember(&ada, generation);
        assert_eq!(roles.cached(ada.id), Ok(Role::Admin));
        roles.forget(ada.id);
        assert!(roles.cached(ada.id).is_err());
    }

    #[test]
    fn an_answer_in_flight_when_its_user_is_forgotten_is_not_kept() {
        let roles = Roles::new(Duration::from_secs(60));
        let ada = user(Role::Admin);
        // Asked while an administrator; demoted (and forgotten) before the
        // answer came back.
        let generation = roles.cached(ada.id).unwrap_err();
        roles.forget(ada.id);
        roles.remember(&ada, generation);
        assert!(
            roles.cached(ada.id).is_err(),
            "a role read before the change outlived it"
        );
        // The next read, asked after the change, is kept.
        let generation = roles.cached(ada.id).unwrap_err();
        let demoted = User {
            role: Role::User,
            ..ada
        };
        roles.remember(&demoted, generation);
        assert_eq!(roles.cached(demoted.id), Ok(Role::User));
    }

    #[test]
    fn a_zero_time_to_live_keeps_nothing() {
        let roles = Roles::new(Duration::ZERO);
        let ada = user(Role::User);
        let generation = roles.cached(ada.id).unwrap_err();
        roles.remember(&ada, generation);
        assert!(roles.cached(ada.id).is_err());
    }
}
