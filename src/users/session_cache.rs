//! A short-lived cache of authenticated sessions, so a busy client's requests do not each spend
//! a database round trip on the same session + user query (the W2 profile showed that query and
//! its pool checkout at about a quarter of `me`'s CPU).
//!
//! It never makes a revocation late on this server, and on other servers only by the time a
//! NOTIFY takes:
//! - it follows the revocation broadcast ([`Revocation`]): a logout, suspension, role or
//!   password change, or profile change is applied before the next lookup on this server
//!   (`AppState::revoke` broadcasts before the mutation answers), and on every other server as
//!   soon as its LISTEN connection hears the NOTIFY the database's triggers send at commit;
//! - while this server's LISTEN connection is down (announcements could be missed) it answers
//!   nothing and keeps nothing; when it is back, it starts empty (a connection that dies
//!   silently is noticed only when its socket errors: the lifetime bounds that case);
//! - a lookup that raced a revocation is not kept: every applied revocation bumps a generation,
//!   and an entry is stored only if no revocation was applied since its query began;
//! - an entry lives at most `AGENTRY_SESSION_CACHE_MS` (2 s by default; 0 turns the cache off),
//!   which bounds what a lost announcement could leave behind.
//!
//! The token itself (signature, expiry, issuer, audience) is still verified on every request.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast::{self, error::TryRecvError};
use uuid::Uuid;

use crate::{state::Revocation, users::model::UserRow};

/// Most sessions kept at once; past it, expired entries are dropped, and if none were, new
/// lookups are not kept until some expire (bounded memory, a few MiB).
const CAPACITY: usize = 10_000;

/// Sessions recently found live, with their users.
pub struct SessionCache {
    ttl: Duration,
    /// Whether announcements from other servers are heard: set by the hub's LISTEN connection
    /// (true once it listens, false as soon as it is lost), so a lost broadcast cannot leave
    /// the cache answering while deaf.
    hearing: Arc<AtomicBool>,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<Uuid, Entry>,
    /// Revocations applied so far (see [`Ticket`]).
    generation: u64,
    /// When expired entries were last dropped (at most once per lifetime when full).
    swept: Instant,
    revocations: broadcast::Receiver<Revocation>,
}

struct Entry {
    user: UserRow,
    until: Instant,
}

/// Taken before a session query: the generation it started at. A lookup whose ticket is older
/// than the latest applied revocation is not kept (it may have read the row before the change).
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

impl SessionCache {
    /// An empty cache keeping entries for `ttl` (zero: off), following `revocations`. It
    /// answers only while `hearing` is true (the LISTEN connection is up).
    pub fn new(
        ttl: Duration,
        revocations: broadcast::Receiver<Revocation>,
        hearing: Arc<AtomicBool>,
    ) -> Self {
        Self {
            ttl,
            hearing,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                generation: 0,
                swept: Instant::now(),
                revocations,
            }),
        }
    }

    fn hearing(&self) -> bool {
        self.hearing.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry that should be gone: the
        // revocations not yet applied are still in the receiver; clear to be safe.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.entries.clear();
            inner.generation += 1;
            inner
        })
    }

    /// The user of a live `session` of `user_id`, when it was found live within the cache's
    /// lifetime and nothing since revoked it; `None` means ask the database.
    pub fn get(&self, session: Uuid, user_id: Uuid) -> Option<UserRow> {
        if self.ttl.is_zero() {
            return None;
        }
        if !self.hearing() {
            return None;
        }
        let mut inner = self.lock();
        inner.apply_revocations();
        let entry = inner.entries.get(&session)?;
        (entry.until > Instant::now() && entry.user.id == user_id).then(|| entry.user.clone())
    }

    /// Call before querying the database for a session; hand the ticket to [`Self::keep`].
    pub fn ticket(&self) -> Ticket {
        if self.ttl.is_zero() {
            return Ticket(None);
        }
        if !self.hearing() {
            return Ticket(None);
        }
        let mut inner = self.lock();
        inner.apply_revocations();
        Ticket(Some(inner.generation))
    }

    /// Keeps what the database said about `session`, unless a revocation was applied since
    /// `ticket` was taken or announcements are not heard.
    pub fn keep(&self, ticket: Ticket, session: Uuid, user: &UserRow) {
        let Ticket(Some(generation)) = ticket else {
            return;
        };
        let mut inner = self.lock();
        inner.apply_revocations();
        if !self.hearing() || inner.generation != generation {
            return;
        }
        let now = Instant::now();
        if inner.entries.len() >= CAPACITY {
            // Full: drop what expired, at most once per lifetime (not on every miss).
            if now.duration_since(inner.swept) >= self.ttl {
                inner.entries.retain(|_, entry| entry.until > now);
                inner.swept = now;
            }
            if inner.entries.len() >= CAPACITY {
                return;
            }
        }
        inner.entries.insert(
            session,
            Entry {
                user: user.clone(),
                until: now + self.ttl,
            },
        );
    }

    /// How many sessions are kept (for tests and metrics).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.apply_revocations();
        inner.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Applies every revocation broadcast since the last call.
    fn apply_revocations(&mut self) {
        loop {
            match self.revocations.try_recv() {
                Ok(revocation) => self.apply(revocation),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
                // Some were missed: forget everything.
                Err(TryRecvError::Lagged(_)) => self.forget_all(),
            }
        }
    }

    fn apply(&mut self, revocation: Revocation) {
        self.generation += 1;
        match revocation {
            Revocation::Session(session) => {
                self.entries.remove(&session);
            }
            Revocation::User(user) | Revocation::Changed(user) => {
                self.entries.retain(|_, entry| entry.user.id != user);
            }
            // The LISTEN connection came back or was lost: whatever was kept may have missed
            // announcements (the `hearing` flag says whether to answer).
            Revocation::Recheck | Revocation::Unheard => self.forget_all(),
        }
    }

    fn forget_all(&mut self) {
        self.generation += 1;
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::model::{Role, UserStatus};

    fn user(id: Uuid) -> UserRow {
        UserRow {
            id,
            email: "a@example.com".into(),
            display_name: "A".into(),
            password_hash: None,
            role: Role::User,
            status: UserStatus::Active,
            suspended_reason: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            last_login_at: None,
        }
    }

    /// A cache that hears announcements, its broadcast and its hearing flag.
    fn cache(ttl_ms: u64) -> (SessionCache, broadcast::Sender<Revocation>, Arc<AtomicBool>) {
        let (tx, rx) = broadcast::channel(4);
        let hearing = Arc::new(AtomicBool::new(true));
        (
            SessionCache::new(Duration::from_millis(ttl_ms), rx, hearing.clone()),
            tx,
            hearing,
        )
    }

    #[test]
    fn keeps_nothing_until_announcements_are_heard_and_after_they_stop() {
        let (cache, tx, hearing) = cache(60_000);
        hearing.store(false, Ordering::Release);
        let (s, u) = (Uuid::now_v7(), Uuid::now_v7());
        cache.keep(cache.ticket(), s, &user(u));
        assert!(cache.get(s, u).is_none(), "kept before LISTEN was up");
        hearing.store(true, Ordering::Release);
        tx.send(Revocation::Recheck).unwrap();
        cache.keep(cache.ticket(), s, &user(u));
        assert_eq!(cache.get(s, u).map(|r| r.id), Some(u));
        assert!(cache.get(s, Uuid::now_v7()).is_none(), "another user id");
        // Deaf: nothing answered even before the broadcast says so (it may be lost).
        hearing.store(false, Ordering::Release);
        assert!(cache.get(s, u).is_none(), "answered while deaf");
        tx.send(Revocation::Unheard).unwrap();
        assert!(cache.is_empty());
        // A lookup that began while hearing and ends deaf is not kept.
        hearing.store(true, Ordering::Release);
        let ticket = cache.ticket();
        hearing.store(false, Ordering::Release);
        cache.keep(ticket, s, &user(u));
        hearing.store(true, Ordering::Release);
        assert!(cache.get(s, u).is_none(), "kept a lookup that ended deaf");
    }

    #[test]
    fn revocations_evict_and_a_racing_lookup_is_not_kept() {
        let (cache, tx, _) = cache(60_000);
        let (s1, s2, u) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        cache.keep(cache.ticket(), s1, &user(u));
        cache.keep(cache.ticket(), s2, &user(u));
        tx.send(Revocation::Session(s1)).unwrap();
        assert!(cache.get(s1, u).is_none());
        assert!(cache.get(s2, u).is_some());
        tx.send(Revocation::Changed(u)).unwrap();
        assert!(cache.get(s2, u).is_none());

        // A query that began before a revocation must not store what it read.
        let ticket = cache.ticket();
        tx.send(Revocation::User(Uuid::now_v7())).unwrap();
        cache.keep(ticket, s1, &user(u));
        assert!(
            cache.get(s1, u).is_none(),
            "a lookup older than a revocation was kept"
        );
    }

    #[test]
    fn a_lagged_receiver_forgets_everything_and_entries_expire() {
        let (cache, tx, _) = cache(30);
        let (s, u) = (Uuid::now_v7(), Uuid::now_v7());
        cache.keep(cache.ticket(), s, &user(u));
        for _ in 0..10 {
            tx.send(Revocation::Session(Uuid::now_v7())).unwrap();
        }
        assert!(cache.get(s, u).is_none(), "kept through missed revocations");
        cache.keep(cache.ticket(), s, &user(u));
        assert!(cache.get(s, u).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(s, u).is_none(), "outlived its lifetime");
    }

    #[test]
    fn zero_lifetime_turns_it_off() {
        let (cache, _, _) = cache(0);
        let (s, u) = (Uuid::now_v7(), Uuid::now_v7());
        cache.keep(cache.ticket(), s, &user(u));
        assert!(cache.get(s, u).is_none());
    }
}
