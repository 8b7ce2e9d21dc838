//! Argon2id password hashing. Hashing costs milliseconds of CPU and megabytes
//! of memory on purpose, so it runs on the blocking pool, never on the async
//! workers, and only so many at once.

use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use callchain_domain::Password;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::error::UserError;

/// Hashes and checks passwords, at most a fixed number at once.
///
/// Each hash holds about 19 MiB and a core for tens of milliseconds, and the
/// blocking pool would run hundreds at once: one batch of writes or logins
/// could take all the memory and starve every other call. So a call first
/// takes one of the hasher's slots, waiting for at most its deadline; one
/// that gets none answers UNAVAILABLE, which the caller may retry.
///
/// New passwords (registrations, password changes) may hold all slots but
/// one, so a login never queues behind a flood of registrations: it waits at
/// most for one hash to finish (with a single slot, they share it).
#[derive(Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    /// The slots new passwords may hold at once.
    new_passwords: Arc<Semaphore>,
    gauge: Arc<Gauge>,
}

/// How many hashes run at once, and the most there ever were.
#[derive(Default)]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// Keeps one hash counted in the gauge while it runs.
struct Running(Arc<Gauge>);

impl Running {
    fn start(gauge: &Arc<Gauge>) -> Self {
        let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.peak.fetch_max(now, Ordering::SeqCst);
        Self(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a call whose caller set no deadline waits for a slot.
pub const MAX_SLOT_WAIT: Duration = Duration::from_secs(10);

impl Hasher {
    /// A hasher running at most `concurrency` hashes at once (at least one).
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            new_passwords: Arc::new(Semaphore::new((concurrency - 1).max(1))),
            gauge: Arc::default(),
        }
    }

    /// The PHC string (`$argon2id$v=19$...`) of a password, with a random salt.
    pub async fn hash(&self, password: Password, deadline: Option<Instant>) -> Result<String, UserError> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + MAX_SLOT_WAIT);
        let turn = take(&self.new_passwords, deadline).await?;
        self.run(Some(deadline), move || {
            let _turn = turn;
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|error| UserError::Internal(anyhow::anyhow!("hashing a password failed: {error}")))
        })
        .await
    }

    /// Whether `password` matches `hash`. With no hash (no such user) it
    /// still does the work of one check, so response time does not tell
    /// which emails are registered.
    pub async fn verify(
        &self,
        password: Password,
        hash: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<bool, UserError> {
        self.run(deadline, move || {
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
            let parsed = PasswordHash::new(&hash).map_err(|error| {
                UserError::Internal(anyhow::anyhow!("a stored password hash is unreadable: {error}"))
            })?;
            let matches = Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok();
            Ok(matches && hash != DUMMY_HASH)
        })
        .await
    }

    /// Runs `work` on the blocking pool once a slot is free, or answers
    /// [`UserError::HashingBusy`] when none frees before `deadline` (or
    /// [`MAX_SLOT_WAIT`]). The slot goes with the work, so a call given up
    /// on still holds it until its hash is done: the bound is on the work
    /// that runs, not on the calls that wait.
    async fn run<T: Send + 'static>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce() -> Result<T, UserError> + Send + 'static,
    ) -> Result<T, UserError> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + MAX_SLOT_WAIT);
        let slot = take(&self.slots, deadline).await?;
        let gauge = self.gauge.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _running = Running::start(&gauge);
            work()
        })
        .await
        .map_err(|error| UserError::Internal(error.into()))?
    }

    /// The most hashes that ever ran at once.
    #[cfg(test)]
    fn peak(&self) -> usize {
        self.gauge.peak.load(Ordering::SeqCst)
    }

    /// Takes a slot as a hash would, for tests that fill the hasher.
    #[cfg(test)]
    pub(crate) async fn occupy(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed")
    }
}

/// One of `slots`, or [`UserError::HashingBusy`] when none frees before
/// `deadline`.
async fn take(slots: &Arc<Semaphore>, deadline: Instant) -> Result<OwnedSemaphorePermit, UserError> {
    tokio::time::timeout_at(deadline, slots.clone().acquire_owned())
        .await
        .map_err(|_| UserError::HashingBusy)?
        .map_err(|error| UserError::Internal(error.into()))
}

/// The hash of a random password nobody knows, with default parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$9QbvItcgQi1QgSS4h0XN2DxCdw3rrwBGlxV3nA5zgUE";

#[cfg(test)]
mod tests {
    use super::*;

    fn password() -> Password {
        Password::parse("correct horse").unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = Hasher::new(2);
        let hash = hasher.hash(password(), None).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(hasher.verify(password(), Some(hash.clone()), None).await.unwrap());
        assert!(
            !hasher
                .verify(Password::parse("wrong horse!").unwrap(), Some(hash), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn no_user_never_verifies() {
        assert!(
            !Hasher::new(1)
                .verify(Password::parse("anything at all").unwrap(), None, None)
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_hashes_never_run_more_than_the_limit_at_once() {
        let hasher = Hasher::new(2);
        let calls: Vec<_> = (0..12)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(password(), None).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert!(hasher.peak() >= 1, "no hash was counted");
        assert!(
            hasher.peak() <= 2,
            "{} hashes ran at once; the limit is 2",
            hasher.peak()
        );
    }

    #[tokio::test]
    async fn a_call_that_gets_no_slot_before_its_deadline_is_unavailable() {
        let hasher = Hasher::new(1);
        let _held = hasher.occupy().await;
        let deadline = Instant::now() + Duration::from_millis(100);
        let answer = hasher.verify(password(), None, Some(deadline)).await;
        assert!(
            matches!(answer, Err(UserError::HashingBusy)),
            "expected HashingBusy, got {answer:?}"
        );
        assert!(
            Instant::now() < deadline + Duration::from_millis(50),
            "it waited past its deadline"
        );
        assert_eq!(
            tonic::Status::from(answer.unwrap_err()).code(),
            tonic::Code::Unavailable
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_login_does_not_queue_behind_a_flood_of_new_passwords() {
        let hasher = Hasher::new(2);
        let flood: Vec<_> = (0..60)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(password(), None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let deadline = Instant::now() + Duration::from_millis(500);
        let login = hasher.verify(password(), None, Some(deadline)).await;
        assert!(login.is_ok(), "the login waited out its deadline: {login:?}");
        for hash in flood {
            hash.abort();
        }
    }
}
