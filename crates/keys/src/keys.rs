//! [`Keys`]: the store behind a bounded cache of live keys, and requests' places in their key's limits
//! ([`Keys::acquire`], [`Permit`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use store::{Clock, RedisConnection};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::KeyError;
use crate::memory::MemoryKeys;
use crate::record::{KeyId, KeyLimits, KeyRecord};
use crate::redis::RedisKeys;
use crate::store::{KeyStore, Release, Reservation, Reserve};

/// How long a replica trusts a key record it read: a key deleted or changed on another replica takes
/// effect here within this bound (plus one Redis round trip).
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Records held at most; past it the cache starts afresh (a scan of random keys cannot grow it).
const CACHE_CAPACITY: usize = 10_000;

/// How long a parallel slot lives without renewal; a crashed replica's slots come back after it.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);

/// How often a request waiting for a parallel slot looks again when nobody on this replica woke it (a
/// slot freed on another replica).
pub const SLOT_POLL: Duration = Duration::from_millis(25);

/// Rate windows of the key limits: LiteLLM's `rpm_limit` / `tpm_limit` are per minute.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Why a request did not get a place in its key's limits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Over `rpm_limit` (or `tpm_limit`) in this window.
    #[error("the key is over its {} limit; retry in {retry_after:?}", if *.tokens { "tpm" } else { "rpm" })]
    RateLimited {
        /// Until the next window.
        retry_after: Duration,
        /// The token limit refused it.
        tokens: bool,
    },
    /// Its deadline passed while every parallel slot of the key stayed taken.
    #[error(
        "the request's timeout passed while the key's max_parallel_requests slots stayed taken"
    )]
    TimedOut,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] KeyError),
}

/// Virtual keys of one replica: the store, a bounded cache of records, and local wake-ups of requests
/// waiting for a parallel slot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Keys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn KeyStore>,
    clock: Clock,
    cache: Mutex<HashMap<KeyId, (Instant, Arc<KeyRecord>)>>,
    wakers: Mutex<HashMap<KeyId, Arc<Notify>>>,
    next_request: AtomicU64,
    replica: String,
}

impl Keys {
    /// Keys in memory (one instance).
    pub fn memory() -> Self {
        let clock = Clock::new();
        Self::over(Arc::new(MemoryKeys::new(clock, millis(WINDOW))), clock)
    }

    /// Keys in Redis under `prefix`.
    pub fn redis(conn: RedisConnection, prefix: &str) -> Self {
        Self::over(
            Arc::new(RedisKeys::new(conn, prefix, millis(WINDOW))),
            Clock::new(),
        )
    }

    /// Keys in `store`, expiry read with `clock`.
    pub fn over(store: Arc<dyn KeyStore>, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                cache: Mutex::new(HashMap::new()),
                wakers: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(0),
                replica: format!("{:016x}", rand::random::<u64>()),
            }),
        }
    }

    /// The store (management routes read and write through it, then [`Keys::forget`]).
    pub fn store(&self) -> &dyn KeyStore {
        self.inner.store.as_ref()
    }

    /// Now, epoch ms (expiry and budget periods are read against it).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The record of the key whose secret is `secret`, at most [`CACHE_TTL`] old; `None` when unknown.
    /// Unknown keys are not cached, so a key generated on another replica works here at once.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<KeyRecord>>, KeyError> {
        let id = KeyId::of_secret(secret);
        let now = Instant::now();
        if let Some((at, record)) = self.lock_cache().get(&id) {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(Some(record.clone()));
            }
        }
        let Some(record) = self.inner.store.get(&id).await? else {
            self.lock_cache().remove(&id);
            return Ok(None);
        };
        let record = Arc::new(record);
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(id, (now, record.clone()));
        Ok(Some(record))
    }

    /// Drops `id` from this replica's cache (after changing it here).
    pub fn forget(&self, id: &KeyId) {
        self.lock_cache().remove(id);
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, (Instant, Arc<KeyRecord>)>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn waker(&self, id: &KeyId) -> Arc<Notify> {
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// A place in the key's limits for one request: at once, or after waiting for a parallel slot until
    /// `deadline` (woken when a request of the key ends on this replica, looking again every
    /// [`SLOT_POLL`] for slots freed elsewhere). Requests of other keys never wait for this one.
    pub async fn acquire(
        &self,
        id: &KeyId,
        limits: KeyLimits,
        estimated_tokens: u64,
        deadline: Instant,
    ) -> Result<Permit, Refusal> {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let reservation = Reservation {
            request_id: format!("{}-{n}", self.inner.replica),
            estimated_tokens,
            limits,
            lease_ms: millis(SLOT_LEASE),
        };
        let waker = self.waker(id);
        loop {
            let woken = waker.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.inner.store.reserve(id, &reservation).await? {
                Reserve::Granted { window_ms } => {
                    return Ok(Permit::new(
                        self.clone(),
                        id.clone(),
                        reservation,
                        window_ms,
                    ))
                }
                Reserve::RateLimited {
                    retry_after_ms,
                    tokens,
                } => {
                    return Err(Refusal::RateLimited {
                        retry_after: Duration::from_millis(retry_after_ms.max(1)),
                        tokens,
                    })
                }
                Reserve::Busy => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Refusal::TimedOut);
                    }
                    let until = deadline.min(now + SLOT_POLL);
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request's place in its key's limits, held until the request ends. Dropping it releases the place in
/// the background (settling the tokens given to [`Permit::settle`], or giving rpm and tpm back after
/// [`Permit::give_back`]) and wakes this replica's requests waiting for the key.
#[derive(Debug)]
pub struct Permit {
    keys: Keys,
    id: KeyId,
    reservation: Reservation,
    window_ms: u64,
    give_back: bool,
    actual_tokens: Option<u64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Permit {
    fn new(keys: Keys, id: KeyId, reservation: Reservation, window_ms: u64) -> Self {
        let renewer = {
            let store = keys.inner.store.clone();
            let id = id.clone();
            let request_id = reservation.request_id.clone();
            tokio::spawn(async move {
                let every = SLOT_LEASE / 3;
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(error) = store.renew(&id, &request_id, millis(SLOT_LEASE)).await {
                        tracing::debug!(%error, "could not renew a key's parallel slot");
                    }
                }
            })
        };
        Self {
            keys,
            id,
            reservation,
            window_ms,
            give_back: false,
            actual_tokens: None,
            renewer,
        }
    }

    /// The request never reached an upstream: its rpm and tpm come back with the release.
    pub fn give_back(&mut self) {
        self.give_back = true;
    }

    /// The tokens the upstream reported, settled against the reservation's estimate.
    pub fn settle(&mut self, actual_tokens: u64) {
        self.actual_tokens = Some(actual_tokens);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.renewer.abort();
        let release = Release {
            request_id: std::mem::take(&mut self.reservation.request_id),
            window_ms: self.window_ms,
            give_back: self.give_back,
            estimated_tokens: self.reservation.estimated_tokens,
            actual_tokens: self.actual_tokens,
        };
        let keys = self.keys.clone();
        let id = self.id.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = keys.inner.store.release(&id, &release).await {
                // The slot's lease ends it anyway.
                tracing::warn!(key = %id, %error, "could not release a key's parallel slot");
            }
            keys.waker(&id).notify_waiters();
        });
    }
}
