//! Virtual keys: LiteLLM's `/key/generate` keys, kept in the same store as the queue.
//!
//! A key is named by the SHA-256 of its secret ([`KeyId`], LiteLLM's `token`); the secret is shown once, in
//! the generate answer, and stored nowhere. Its record ([`KeyRecord`]) carries the models it may call, its
//! rpm/tpm/parallel limits, its budget and spend, its expiry and the priorities it may claim.
//!
//! Invariants and where each is kept:
//! - **Limits are exact across replicas**: one atomic step per request on the key's own Redis Cluster slot
//!   (`lua/reserve_v1.lua`; `release_v1.lua` when it ends), never under a model group's tag, because a
//!   key's limits span groups. The caller reserves here first, then runs the group's admission step, and
//!   gives the key's reservation back when the group refuses ([`Permit::give_back`]).
//! - **A key at its parallel limit waits without blocking other keys**: [`Keys::acquire`] waits on a wake-up
//!   of its own key (a request of the key ending on this replica) or polls every [`SLOT_POLL`] for slots
//!   freed elsewhere, bounded by the request's deadline. Slots are leases ([`SLOT_LEASE`], renewed while the
//!   request runs), so a crashed replica's slots come back.
//! - **Changes reach every replica within [`CACHE_TTL`]**: [`Keys::lookup`] trusts a record that long;
//!   unknown keys are never cached.
//! - **The memory twin has the same semantics**: [`MemoryKeys`] runs the same steps under one lock.
//!
//! # Layout
//! - `record`: [`KeyId`], [`KeyRecord`], [`KeyLimits`], secrets and their printable names.
//! - `spec`: [`KeySpec`], reading `/key/generate` and `/key/update` bodies (400s name the field).
//! - `store`: the [`KeyStore`] trait and the reservation types.
//! - `memory`, `redis`: [`MemoryKeys`], [`RedisKeys`] (Lua scripts under `src/lua/`).
//! - `seal`: [`seal`], [`open`]: upstream secrets of a key's own deployments, encrypted with a salt key.
//! - `keys`: [`Keys`], the cache and [`Keys::acquire`] / [`Permit`].
//! - `error`: [`KeyError`].
//!
//! # Example
//! ```
//! use keys::{KeyId, KeyRecord, KeySpec, Keys};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let keys = Keys::memory();
//! let secret = keys::generate_secret();
//! let mut record = KeyRecord { token: Some(KeyId::of_secret(&secret)), ..KeyRecord::default() };
//! let spec = KeySpec::parse(&serde_json::json!({"duration": "30d", "rpm_limit": 5}), false)?;
//! spec.apply(&mut record, keys.now_ms())?;
//! keys.store().create(&record).await?;
//! let found = keys.lookup(&secret).await?.expect("the key is live");
//! assert_eq!(found.rpm_limit, Some(5));
//! # Ok::<(), keys::KeyError>(())
//! # }).unwrap();
//! ```

mod error;
#[allow(clippy::module_inception)]
mod keys;
mod memory;
mod record;
mod redis;
mod seal;
mod spec;
mod store;

pub use error::KeyError;
pub use keys::{Keys, Permit, Refusal, CACHE_TTL, SLOT_LEASE, SLOT_POLL, WINDOW};
pub use memory::MemoryKeys;
pub use record::{generate_secret, iso8601, key_name, KeyId, KeyLimits, KeyRecord};
pub use redis::RedisKeys;
pub use seal::{is_sealed, open, seal};
pub use spec::{parse_duration, KeySpec, MAX_PRIORITY};
pub use store::{KeyStore, KeyUsage, Release, Reservation, Reserve, UPDATABLE_FIELDS};
