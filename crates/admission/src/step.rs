//! The contract of one atomic admission step: what it takes, what it answers, and the grant encoding.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Entry, Priority, Score};
use store::BackendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, CandidateOrder, LatencySample, Outcome, Reservation, SettleReport};

use crate::jobs::{Claim, Claimed, NewJob};

/// Prefix of the group passed to a wake-up callback when a job waits for a worker (the group follows).
pub const JOB_WAKE: &str = "~jobs|";

/// Tuning of admission, from the router settings.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Longest a poller sleeps between admission steps while it has waiters.
    pub polling_interval: Duration,
    /// `queue_lease`: how long after its heartbeat lapsed a replica's waiting requests keep their place
    /// (a replica that comes back within it puts them back where they were; later, at the back).
    pub queue_lease: Duration,
    /// `replica_heartbeat`: how often (at least) a replica with waiting or in-flight requests runs a step. Its
    /// liveness lapses after [`AdmissionSettings::liveness`]; after the store lost its state, admission
    /// pauses for [`AdmissionSettings::restore_pause`] while replicas restore.
    pub heartbeat: Duration,
    /// `inflight_lease`: the in-flight lease of a reservation granted from the queue.
    pub inflight_lease: Duration,
    /// Most entries waiting per group (0 = unbounded).
    pub max_queue_depth: u64,
    /// Most grants one admission step hands out.
    pub max_grants_per_step: u32,
}

impl AdmissionSettings {
    /// How long a replica is alive after its last step: three heartbeats. Its waiting entries stop being
    /// granted after that, and its uncollected grants are given back, so a crashed replica holds its group
    /// for less than a second with the default heartbeat.
    pub fn liveness(&self) -> Duration {
        self.heartbeat * 3
    }

    /// How long nothing is granted after the store lost its state: two heartbeats, time for every live
    /// replica to re-register its in-flight reservations and put its waiters back.
    pub fn restore_pause(&self) -> Duration {
        self.heartbeat * 2
    }
}

/// The group-wide arguments of every step.
#[derive(Debug)]
pub struct Step<'a> {
    /// The replica running the step.
    pub owner: &'a str,
    /// The model group.
    pub group: &'a str,
    /// The group's deployments in the strategy's order of preference.
    pub candidates: &'a [Candidate],
    /// How the candidates are walked.
    pub order: CandidateOrder,
    /// Leases and bounds.
    pub settings: &'a AdmissionSettings,
    /// The store generation this replica last saw for the group (`None`: it saw none yet).
    pub generation: Option<&'a str>,
}

/// A request asking for capacity: reserved at once (the fast path) or queued.
#[derive(Debug)]
pub struct Submit<'a> {
    /// The queue entry (its id names the reservation's in-flight lease).
    pub entry: &'a Entry,
    /// Its priority.
    pub priority: Priority,
    /// Always wait in the queue, even when capacity is free.
    pub force_queue: bool,
}

/// What a replica puts back after the store lost it (a new generation) or after its own heartbeat lapsed.
#[derive(Debug, Default)]
pub struct Restore<'a> {
    /// Its waiting entries and their places.
    pub waiters: Vec<(&'a Entry, Place)>,
    /// Its in-flight reservations, re-registered in the current window.
    pub reservations: Vec<&'a Reservation>,
}

/// Where a waiting entry goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Its original score.
    At(Score),
    /// The back of its priority (its place was held longer than `queue_lease`).
    Back(Priority),
}

/// What a restore step put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Waiting entries put back into the queue (those still queued or granted are left alone).
    pub waiters: u64,
    /// In-flight reservations re-registered.
    pub reservations: u64,
}

/// A finished (or abandoned) request's settlement.
#[derive(Debug, Clone)]
pub struct Release {
    /// Whether the request reached the upstream; one that never did gives its capacity back whole
    /// (request count, tokens and in-flight slot).
    pub sent: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// Tokens the upstream reported; `None` keeps the estimate.
    pub actual_tokens: Option<u64>,
    /// Latency sample for the deployment's EWMAs.
    pub latency: Option<LatencySample>,
}

/// What a grant hands a queue entry. Encoded (in Rust and in `admit_v2.lua`'s `s_payload`) as
/// `<deployment_id>|<window_start_ms>`, or `reject`; a job's also `expired` or `exhausted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantPayload {
    /// Capacity reserved on a deployment in the window starting at `window_start_ms`.
    Granted {
        /// The deployment.
        deployment_id: String,
        /// Start of the window whose counters were charged.
        window_start_ms: u64,
    },
    /// No deployment of the group can ever serve the entry.
    Reject,
    /// A job whose deadline passed while it waited (nothing reserved).
    Expired,
    /// A job whose `job_max_attempts` runs were started (nothing reserved).
    Exhausted,
}

impl GrantPayload {
    const REJECT: &'static str = "reject";
    const EXPIRED: &'static str = "expired";
    const EXHAUSTED: &'static str = "exhausted";

    /// The stored form.
    pub fn encode(&self) -> String {
        match self {
            GrantPayload::Granted {
                deployment_id,
                window_start_ms,
            } => format!("{deployment_id}|{window_start_ms}"),
            GrantPayload::Reject => Self::REJECT.to_owned(),
            GrantPayload::Expired => Self::EXPIRED.to_owned(),
            GrantPayload::Exhausted => Self::EXHAUSTED.to_owned(),
        }
    }

    /// Decodes the stored form.
    pub fn parse(payload: &str) -> Result<GrantPayload, BackendError> {
        match payload {
            Self::REJECT => return Ok(GrantPayload::Reject),
            Self::EXPIRED => return Ok(GrantPayload::Expired),
            Self::EXHAUSTED => return Ok(GrantPayload::Exhausted),
            _ => {}
        }
        let bad = || BackendError::reply(format!("bad grant payload {payload:?}"));
        let (deployment_id, window) = payload.rsplit_once('|').ok_or_else(bad)?;
        let window_start_ms = window.parse().map_err(|_| bad())?;
        Ok(GrantPayload::Granted {
            deployment_id: deployment_id.to_owned(),
            window_start_ms,
        })
    }

    /// The reservation a granted payload stands for (`None` for a reject or an unknown deployment).
    pub fn reservation(&self, candidates: &[Candidate], entry: &Entry) -> Option<Reservation> {
        let GrantPayload::Granted {
            deployment_id,
            window_start_ms,
        } = self
        else {
            return None;
        };
        reservation_on(candidates, entry, deployment_id, *window_start_ms)
    }
}

/// The id of `entry`'s reservation, its in-flight lease: `<entry id>|<owner>`, so the leases of a replica
/// found dead end with its liveness (`s_lease` and `u_end_leases_of` in Lua; `UsageState::end_leases_of`).
pub fn lease_id(entry: &Entry) -> String {
    format!("{}|{}", entry.id().simple(), entry.owner())
}

/// The in-flight lease id of a durable job's run on replica `runner`: `<entry id>|<runner>` (the job's
/// entry has no replica; its run's slot ends with the runner's liveness).
pub fn job_lease_id(entry: &Entry, runner: &str) -> String {
    format!("{}|{runner}", entry.id().simple())
}

/// The reservation of `entry` on deployment `deployment_id` of `candidates` in window `window_start_ms`.
pub(crate) fn reservation_on(
    candidates: &[Candidate],
    entry: &Entry,
    deployment_id: &str,
    window_start_ms: u64,
) -> Option<Reservation> {
    let index = candidates
        .iter()
        .position(|c| &*c.deployment.id == deployment_id)?;
    Some(Reservation {
        id: lease_id(entry),
        deployment: candidates[index].deployment.clone(),
        window_start_ms,
        est_tokens: entry.meta().est_tokens,
        candidate_index: index,
    })
}

/// One grant for this replica: the entry and what it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The granted queue entry.
    pub entry: Entry,
    /// What it was given.
    pub payload: GrantPayload,
}

/// What a submit step did with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The fast path: capacity reserved at once.
    Granted {
        /// The deployment.
        deployment_id: String,
        /// Start of the window whose counters were charged.
        window_start_ms: u64,
    },
    /// The request waits in the queue.
    Queued {
        /// 0-based rank after the step; `None` when the same step granted it already (the grant is in the
        /// reply's grants).
        position: Option<u64>,
        /// Epoch ms before which no deployment can take it (cooldowns, full windows); `None` if none ever can.
        not_before_ms: Option<u64>,
        /// Its place: put back there if the store loses it.
        score: Score,
    },
    /// The queue is full.
    Full,
}

/// What a poll step saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Replicas alive in the group after this one's heartbeat.
    pub replicas: u64,
}

/// What a cancel step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The entry was waiting and is gone.
    Waiting,
    /// The entry had been granted concurrently; the grant was taken back and its capacity given back.
    Grant,
    /// A fast-path reservation of the request's racing submit was given back.
    FastPath,
    /// Nothing of the request was left.
    Absent,
}

impl CancelOutcome {
    /// The reply's name of the outcome.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CancelOutcome::Waiting => "waiting",
            CancelOutcome::Grant => "grant",
            CancelOutcome::FastPath => "fast_path",
            CancelOutcome::Absent => "absent",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<CancelOutcome> {
        [
            CancelOutcome::Waiting,
            CancelOutcome::Grant,
            CancelOutcome::FastPath,
            CancelOutcome::Absent,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }
}

/// Reply of one atomic step: the mode's own outcome, and what every step answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReply<T> {
    /// The mode's outcome ([`SubmitOutcome`], [`Polled`], [`Restored`], [`SettleReport`],
    /// [`CancelOutcome`]).
    pub outcome: T,
    /// Epoch ms when capacity may return for the head of the queue.
    pub next_capacity_ms: Option<u64>,
    /// Queue length after the step, where the step reads it (submits that queued or found the queue full,
    /// polls).
    pub depth: Option<u64>,
    /// This replica's grants.
    pub grants: Vec<Grant>,
    /// The store's generation (a replica that knew another one restores).
    pub generation: String,
    /// This replica's heartbeat had lapsed before the step renewed it: its waiting entries may be gone.
    pub lapsed: bool,
}

impl<T> StepReply<T> {
    /// A reply with no grants, depth or hint.
    pub(crate) fn bare(outcome: T, generation: String) -> StepReply<T> {
        StepReply {
            outcome,
            next_capacity_ms: None,
            depth: None,
            grants: Vec::new(),
            generation,
            lapsed: false,
        }
    }
}

/// One atomic admission step, implemented by Redis (one Lua script, `admit_v2.lua`) and in memory (one
/// lock): the two twins, compared step by step by the twin property test.
#[async_trait]
pub trait AdmissionBackend: Send + Sync + 'static {
    /// Fast path or enqueue, then admission from the head.
    async fn submit(
        &self,
        step: &Step<'_>,
        submit: &Submit<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError>;
    /// Heartbeat, then admission from the head.
    async fn poll(&self, step: &Step<'_>) -> Result<StepReply<Polled>, BackendError>;
    /// Settles a reservation, then admits into the freed capacity.
    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply<SettleReport>, BackendError>;
    /// Puts back what the store lost of this replica (waiting entries at their place, in-flight
    /// reservations), then admits.
    async fn restore(
        &self,
        step: &Step<'_>,
        restore: &Restore<'_>,
    ) -> Result<StepReply<Restored>, BackendError>;
    /// Removes an entry (or takes back its grant, or gives back a racing fast-path reservation), then
    /// admits.
    async fn cancel(
        &self,
        step: &Step<'_>,
        entry: &Entry,
    ) -> Result<StepReply<CancelOutcome>, BackendError>;
    /// Enqueues a durable job (always queued, never the fast path) with its record, in one step, then
    /// admits from the head (a job there waits for a claim step).
    async fn submit_job(
        &self,
        step: &Step<'_>,
        job: &NewJob<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError>;
    /// A replica with free job workers: puts lapsed runs back at their place, then admits from the head,
    /// granting jobs there to this replica (at most `claim.slots`).
    async fn claim(
        &self,
        step: &Step<'_>,
        claim: &Claim,
    ) -> Result<StepReply<Claimed>, BackendError>;
    /// Starts delivering wake-ups for this owner: `wake(group)` is called when another replica granted
    /// capacity to one of our entries, `wake(JOB_WAKE + group)` when a job waits for a worker. Memory
    /// needs none.
    fn start_wakeups(
        &self,
        owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>>;
    /// Epoch milliseconds on the backend's clock.
    fn now_ms(&self) -> u64;
}
