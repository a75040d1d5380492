//! Priority admission across replicas: the one place requests take and give back deployment capacity.
//!
//! Every request for a model group asks for capacity in one atomic **step** on the shared store. Each
//! step (`submit`, `poll`, `release`, `cancel`, `restore`, `claim`) is one run of `admit_v2.lua` on Redis
//! (queue-core's and usage-tracker's Lua fragments followed by admission's body), or the same logic under
//! one lock in memory. The step:
//! - `submit`: the fast path reserves a deployment at once when nobody of equal or better priority waits and
//!   a deployment has headroom; otherwise the request is enqueued in the group's sorted set;
//! - every step but the fast path then takes this replica's grants, gives back grants of replicas whose
//!   queue lease lapsed, and grants from the *global head* of the queue while some deployment has headroom,
//!   recording grants for other replicas and waking them (pub/sub);
//! - `claim` (durable jobs): a replica with free job workers puts lapsed job runs back at their place, then
//!   admits as above, taking the jobs it reaches at the head; the other steps stop at a job at the head
//!   (the order is global) and wake the replicas' job workers.
//!
//! Invariants and the file that enforces each:
//! - **Global priority order** (no entry is granted while a better-scored entry of the group waits and some
//!   deployment could serve it): the admission loop and the fast path's head check in `src/lua/admit_v2.lua`
//!   (twin: `src/memory.rs`). The score `priority * 2^32 + seq` and FIFO within a priority: queue-core.
//! - **rpm/tpm/parallel exactness**: usage-tracker's `u_try_reserve` (twin `UsageState::try_reserve`),
//!   called only from the step.
//! - **Lease expiry**: `queue_lease` (an owner's heartbeat, renewed by its submit and poll steps; a dead
//!   owner's entries stop being granted: queue-core's `q_live`) and `inflight_lease` (a reservation's slot:
//!   usage-tracker).
//! - **Grants to other replicas** (recorded, woken, taken by their owner, given back when the owner died):
//!   the grants section of `admit_v2.lua` (twin: `MemoryAdmission::admit`), delivered to waiters by
//!   [`Scheduler`].
//!
//! The two twins are compared by `tests/twin.rs`: random sequences of steps from several replicas run on
//! both, every reply and the resulting queue and usage state compared after each step.
//!
//! # Layout
//! - `step`: the step contract: [`AdmissionBackend`], [`Step`], [`Submit`], [`Release`], [`StepReply`] with
//!   one outcome type per mode ([`SubmitOutcome`], [`CancelOutcome`], usage-tracker's `SettleReport`),
//!   [`Grant`] and [`GrantPayload`] (the one grant encoding), [`AdmissionSettings`].
//! - `redis`: [`RedisAdmission`], the script and its reply decoder.
//! - `memory`: [`MemoryAdmission`], the twin.
//! - `failover`: [`FailoverAdmission`], Redis with this replica's share of every limit in memory while Redis
//!   does not answer (`redis_failure_mode: open`).
//! - `scheduler`: [`Scheduler`], the replica's side: waiters, pollers, wake-ups, delivery of grants, give-back
//!   of grants nobody waits for; [`AdmitRequest`], [`SchedulerStats`].
//! - `jobs`: durable jobs' side of admission: [`JobId`] (embeds the group, so a job's keys share its hash
//!   tag), [`NewJob`] (a job's submit step, [`AdmissionBackend::submit_job`]), [`Claim`] / [`Claimed`] /
//!   [`JobGrant`] (a replica with free job workers takes the jobs at the head, [`AdmissionBackend::claim`]),
//!   and [`JobStore`], the steps on a job's record (`src/lua/job_v1.lua`; twin in `src/memory.rs`). A job's
//!   entry has the owner `queue_core::JOB_OWNER`: no replica's liveness ends it; only its run holds a
//!   runner lease, and a claim puts runs whose lease lapsed back at their place.
//! - `status`: [`QueueStatus`], a read-only view of a group's queue for operators ([`GroupStatus`]: depth
//!   and oldest waiter by priority, live replicas, grants not yet taken, jobs), one call of
//!   `src/lua/status_v1.lua` on Redis (twin: [`MemoryAdmission`]), never a walk over the entries.
//! - `error`: [`AdmissionError`]. A failed step is a `store::BackendError` (the store's one
//!   classification of failures, shared with queue-core, usage-tracker and the router).
//!
//! # Example
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use admission::{AdmissionSettings, AdmitRequest, MemoryAdmission, Scheduler};
//! use queue_core::{Priority, QueueState};
//! use store::Clock;
//! use usage_tracker::{Candidate, CandidateOrder, DeploymentRef, Limits, UsageState};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let candidates: Arc<[Candidate]> = Arc::new([Candidate {
//!     deployment: DeploymentRef::new("gpt-4o", "a1"),
//!     limits: Limits { rpm: Some(60), ..Limits::default() },
//! }]);
//! let backend = MemoryAdmission::new(
//!     Arc::new(Mutex::new(QueueState::new())),
//!     Arc::new(Mutex::new(UsageState::new(Duration::from_secs(60), 0.2))),
//!     Clock::new(),
//! );
//! let settings = AdmissionSettings {
//!     polling_interval: Duration::from_millis(30),
//!     queue_lease: Duration::from_secs(10),
//!     heartbeat: Duration::from_millis(250),
//!     inflight_lease: Duration::from_secs(30),
//!     max_queue_depth: 1000,
//!     max_grants_per_step: 64,
//! };
//! let group_candidates = candidates.clone();
//! let scheduler = Scheduler::new(
//!     "replica-a".into(),
//!     Arc::new(backend),
//!     settings,
//!     Arc::new(move |_group: &str| Some((group_candidates.clone(), CandidateOrder::AsGiven))),
//! );
//! let (reservation, waited) = scheduler
//!     .acquire(AdmitRequest {
//!         group: "gpt-4o".into(),
//!         candidates: candidates.to_vec(),
//!         order: CandidateOrder::AsGiven,
//!         est_tokens: 100,
//!         prompt_tokens: 20,
//!         priority: Priority::new(0)?,
//!         deadline: tokio::time::Instant::now() + Duration::from_secs(5),
//!         force_queue: false,
//!         retry: false,
//!     })
//!     .await?;
//! assert_eq!(&*reservation.deployment.id, "a1");
//! assert_eq!(waited, Duration::ZERO);
//! scheduler.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! ```

mod error;
mod failover;
mod jobs;
mod memory;
mod redis;
mod scheduler;
mod status;
mod step;

pub use error::AdmissionError;
pub use failover::FailoverAdmission;
pub use jobs::{
    Claim, Claimed, InvalidJobId, JobCancel, JobEnd, JobErrors, JobGrant, JobId, JobState,
    JobStore, JobView, NewJob,
};
pub use memory::MemoryAdmission;
pub use redis::RedisAdmission;
pub use scheduler::{AdmitRequest, GroupCandidates, GroupOrder, Scheduler, SchedulerStats};
pub use status::{Band, GroupStatus, QueueStatus, STATUS_BANDS};
pub use step::{
    job_lease_id, lease_id, AdmissionBackend, AdmissionSettings, CancelOutcome, Grant,
    GrantPayload, Place, Polled, Release, Restore, Restored, Step, StepReply, Submit,
    SubmitOutcome, JOB_WAKE,
};

/// Locks a mutex, ignoring poisoning (critical sections never leave state half-changed across a panic).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
