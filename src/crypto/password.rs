//! Passwords: the policy (length, zxcvbn strength) and bcrypt hashing off the async runtime.
//!
//! bcrypt reads at most 72 bytes. Rather than truncate silently (or refuse long passphrases),
//! the password is first condensed with HMAC-SHA-256 into 44 base64 bytes, which bcrypt then
//! hashes with `non_truncating_hash`: every byte of the password counts.
//!
//! Hashes run on threads of their own, one per core, under Linux's `SCHED_IDLE` policy (see
//! [`lower_priority`]). A hash at cost 12 is a quarter of a second of pure CPU; at the
//! workers' priority a burst of logins took the cores from every other request. Under
//! `SCHED_IDLE` any other thread that wakes takes the core from a hash at once, and a core
//! with nothing else to do still hashes at full speed (bench/README.md has the A/B: while
//! logins run, `me`'s p50 is what it is without them and its p99 about half what it was).

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, mpsc},
};

use anyhow::Context;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{AppError, AppResult};

/// Fewest characters a password may have.
pub const MIN_LEN: usize = 12;
/// Most characters a password may have.
pub const MAX_LEN: usize = 128;
/// Lowest acceptable zxcvbn score (0–4).
const MIN_SCORE: u8 = 3;

/// Where `SCHED_IDLE` cannot be set: how many nice(1) steps below the rest of the process
/// the hashing threads run (at 10 the scheduler weighs a hash against a worker about 1 to 9).
const HASHING_NICENESS: i32 = 10;

/// Work for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords at the configured cost, never on the async runtime.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// Bounds running and queued hashes to one per core: a flood of logins waits here, as
    /// futures holding no thread, rather than in the hashing threads' queue.
    permits: Arc<Semaphore>,
    /// The hashing threads' queue; they end when the last clone of the hasher is dropped.
    jobs: mpsc::Sender<Job>,
    /// A hash of a random password, verified against when an email is unknown, so that a failed
    /// login takes the same time whether or not the account exists.
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher with bcrypt `cost`, running at most one hash per CPU core at a time on its own
    /// lower-priority threads.
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            cost,
            permits: Arc::new(Semaphore::new(cores)),
            jobs: start_threads(cores),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    /// Hashes `password` for storage.
    pub async fn hash(&self, password: &SecretString) -> AppResult<String> {
        let input = condense(password)?;
        let cost = self.cost;
        self.blocking(move || {
            bcrypt::non_truncating_hash(input, cost).context("bcrypt hash failed")
        })
        .await
    }

    /// Checks `password` against a stored hash; `None` (no such account, or no password set)
    /// still spends one bcrypt verification so the answer takes the same time.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> AppResult<bool> {
        let (hash, real) = match stored {
            Some(hash) => (hash.to_owned(), true),
            None => (self.dummy_hash().await?, false),
        };
        let input = condense(password)?;
        let ok = self
            .blocking(move || {
                bcrypt::non_truncating_verify(input, &hash).context("bcrypt verify failed")
            })
            .await?;
        Ok(ok && real)
    }

    async fn dummy_hash(&self) -> AppResult<String> {
        let hasher = self.clone();
        self.dummy
            .get_or_try_init(|| async move {
                let random = SecretString::from(uuid::Uuid::new_v4().to_string());
                hasher.hash(&random).await
            })
            .await
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> AppResult<T> {
        // The permit travels with the job and is released when the hash ends, not when this
        // future does: a caller that goes away (a client that disconnects mid-login) must not
        // let another hash start while its own still runs.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("password hasher closed")?;
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = work();
            drop(permit);
            let _ = done.send(outcome);
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // No hashing thread could be started: the blocking pool, at normal priority.
            tokio::task::spawn_blocking(job)
                .await
                .context("password hashing task failed")?;
        }
        Ok(result.await.context("password hashing failed")??)
    }
}

/// Starts `count` hashing threads that take jobs from one queue, each at the lower priority.
/// A thread that cannot be started is logged; with none, the queue is closed and hashes fall
/// back to the blocking pool.
fn start_threads(count: usize) -> mpsc::Sender<Job> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..count {
        let queue = queue.clone();
        let started = std::thread::Builder::new()
            .name(format!("bcrypt-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    // The lock is held while waiting for a job, not while running it.
                    let next = queue
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .recv();
                    let Ok(job) = next else {
                        break; // the hasher was dropped
                    };
                    // A panicking hash fails its own request (its answer channel is dropped),
                    // not the thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "could not start a password-hashing thread");
        }
    }
    jobs
}

/// Lowers the calling thread's CPU priority: `SCHED_IDLE` (it runs when nothing else wants
/// the core, and yields it the moment something does; it still gets a sliver of a saturated
/// core, so logins slow down under full load but do not stop), else nice +[`HASHING_NICENESS`].
/// On Linux both belong to the thread, not the process. Where both fail, the thread keeps its
/// priority. Lowering a thread's own priority needs no privilege.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: gettid, sched_setscheduler, getpriority and setpriority take plain integers
        // and a pointer to a sched_param that lives across the call; they touch no other
        // memory of this process.
        let failed = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &idle) != 0 && {
                let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                let lower = (current + HASHING_NICENESS).min(19);
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, lower) != 0
            }
        };
        if failed {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the password-hashing threads' CPU priority"
            );
        }
    }
}

/// HMAC-SHA-256 of the password under a fixed domain key, base64-encoded (44 bytes < 72).
fn condense(password: &SecretString) -> anyhow::Result<String> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(b"agentry password v1").context("HMAC key rejected")?;
    mac.update(password.expose_secret().as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks the password policy: 12–128 characters, no composition rules, and a zxcvbn score of
/// at least 3 given what the service knows about the user (email, display name). The error
/// carries zxcvbn's own feedback.
pub fn check_policy(field: &str, password: &SecretString, user_inputs: &[&str]) -> AppResult<()> {
    let plain = password.expose_secret();
    let chars = plain.chars().count();
    if chars < MIN_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at least {MIN_LEN} characters (got {chars})"),
        ));
    }
    if chars > MAX_LEN {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {MAX_LEN} characters (got {chars})"),
        ));
    }
    let mut inputs: Vec<&str> = user_inputs.to_vec();
    // The local part of an email is the part people build passwords from.
    for input in user_inputs {
        if let Some((local, _)) = input.split_once('@') {
            inputs.push(local);
        }
    }
    let estimate = zxcvbn::zxcvbn(plain, &inputs);
    if u8::from(estimate.score()) >= MIN_SCORE {
        return Ok(());
    }
    let mut message = String::from("is too easy to guess");
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            message.push_str(&format!(": {warning}"));
        }
        let tips: Vec<String> = feedback
            .suggestions()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !tips.is_empty() {
            message.push_str(&format!(". {}", tips.join(" ")));
        }
    }
    Err(AppError::bad_input(field, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn hash_verifies_only_the_same_password_even_past_72_bytes() {
        let hasher = PasswordHasher::new(4);
        let long = "correct horse battery staple ".repeat(4);
        let hash = hasher.hash(&secret(&long)).await.unwrap();
        assert!(hasher.verify(&secret(&long), Some(&hash)).await.unwrap());
        // Differs only after byte 72: bcrypt alone would accept it.
        let mut other = long.clone();
        other.push('!');
        assert!(!hasher.verify(&secret(&other), Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&secret(&long), None).await.unwrap());
    }

    /// This thread's scheduling policy (field 41 of /proc/thread-self/stat, counted after the
    /// name's ')').
    fn policy_here() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(38).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn hashes_run_on_their_own_threads_below_the_runtimes_priority() {
        let hasher = PasswordHasher::new(4);
        let (name, policy) = hasher
            .blocking(|| {
                let name = std::thread::current().name().map(str::to_owned);
                Ok((name, policy_here()))
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("bcrypt-"));
        assert_eq!(policy, libc::SCHED_IDLE as u32);
        assert_eq!(
            policy_here(),
            libc::SCHED_OTHER as u32,
            "the runtime keeps its policy"
        );
        // A panicking job fails its caller and leaves the threads serving.
        let err = hasher
            .blocking(|| -> anyhow::Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AppError::Internal(e) if e.to_string() == "password hashing failed"),
            "{err:?}"
        );
        // Every permit comes back, the panicking job's too (dropped as it unwinds, on the
        // hashing thread, so allow it a moment).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(permits_settle(&hasher, cores).await, cores);
        let hash = hasher
            .hash(&secret("violet-harbor-canoe-92"))
            .await
            .unwrap();
        assert!(
            hasher
                .verify(&secret("violet-harbor-canoe-92"), Some(&hash))
                .await
                .unwrap()
        );
    }

    /// Waits (up to a second) until `hasher` has `free` permits; returns how many it has.
    async fn permits_settle(hasher: &PasswordHasher, free: usize) -> usize {
        for _ in 0..100 {
            if hasher.permits.available_permits() == free {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        hasher.permits.available_permits()
    }

    #[tokio::test]
    async fn a_hash_whose_caller_went_away_keeps_its_permit_until_it_ends() {
        let hasher = PasswordHasher::new(4);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (release, gate) = mpsc::channel::<()>();
        let h = hasher.clone();
        let caller = tokio::spawn(async move {
            h.blocking(move || {
                let _ = gate.recv();
                Ok(())
            })
            .await
        });
        assert_eq!(permits_settle(&hasher, cores - 1).await, cores - 1);
        caller.abort();
        let _ = caller.await;
        // The hash still runs: its permit stays taken.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(hasher.permits.available_permits(), cores - 1);
        release.send(()).unwrap();
        assert_eq!(permits_settle(&hasher, cores).await, cores);
    }

    #[test]
    fn policy_refuses_short_long_and_guessable_passwords() {
        let err = check_policy("password", &secret("short"), &[]).unwrap_err();
        assert!(err.message().contains("at least 12"));
        let err = check_policy("password", &secret(&"x".repeat(129)), &[]).unwrap_err();
        assert!(err.message().contains("at most 128"));
        let err = check_policy("password", &secret("qwertyuiopasdf"), &[]).unwrap_err();
        assert!(
            err.message().contains("too easy to guess"),
            "{}",
            err.message()
        );
        let err = check_policy(
            "password",
            &secret("alice.liddell2024"),
            &["alice.liddell@example.com"],
        )
        .unwrap_err();
        assert!(
            err.message().contains("too easy to guess"),
            "{}",
            err.message()
        );
        check_policy("password", &secret("violet-harbor-canoe-92"), &[]).unwrap();
    }
}
