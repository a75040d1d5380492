//! Durable jobs' admission side: the job id, the claim of granted jobs by a replica's workers, and the steps
//! on a job's record ([`JobStore`], `job_v1.lua` on Redis, its twin in memory).
//!
//! A job's entry waits in its group's queue with the owner [`queue_core::JOB_OWNER`]: it belongs to no
//! replica and is always live. Only a `claim` step of a replica with free job workers grants it (in the
//! queue's one global order); the grant comes with a runner lease in the group's job runs zset, renewed while
//! the job runs. A claim step puts runs whose lease lapsed back at their place (same priority and sequence);
//! a job whose `job_max_attempts` runs were started is handed out as [`GrantPayload::Exhausted`], one whose
//! deadline passed while it waited as [`GrantPayload::Expired`], both to be finished with an error.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Entry, Priority};
use store::BackendError;

use crate::step::GrantPayload;

/// A job's id: a random part and its model group, so any replica finds the record (under the group's hash
/// tag) from the id alone. Written `<32 hex digits>.<the group name's UTF-8 bytes in hex>`.
///
/// ```
/// use admission::JobId;
///
/// let id = JobId::new("gpt-4o");
/// let parsed: JobId = id.to_string().parse()?;
/// assert_eq!(parsed, id);
/// assert_eq!(parsed.group(), "gpt-4o");
/// assert!("not-a-job".parse::<JobId>().is_err());
/// # Ok::<(), admission::InvalidJobId>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId {
    key: uuid::Uuid,
    group: String,
}

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed job id")]
pub struct InvalidJobId;

impl JobId {
    /// A fresh id in `group`.
    pub fn new(group: &str) -> JobId {
        JobId {
            // Version 7: the id carries its creation time (a queued job's age in /queue/status).
            key: uuid::Uuid::now_v7(),
            group: group.to_owned(),
        }
    }

    /// The id of the job whose queue entry is `entry`, in `group`.
    pub fn of_entry(entry: &Entry, group: &str) -> JobId {
        JobId {
            key: entry.id(),
            group: group.to_owned(),
        }
    }

    /// The random part: the queue entry's id and the record key's suffix.
    pub fn key(&self) -> uuid::Uuid {
        self.key
    }

    /// The model group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.", self.key.simple())?;
        for b in self.group.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(s: &str) -> Result<JobId, InvalidJobId> {
        let (key, group) = s.split_once('.').ok_or(InvalidJobId)?;
        if key.len() != 32 || !group.len().is_multiple_of(2) || group.len() > 2048 {
            return Err(InvalidJobId);
        }
        let key = uuid::Uuid::try_parse(key).map_err(|_| InvalidJobId)?;
        let bytes = (0..group.len())
            .step_by(2)
            .map(|i| {
                group
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or(InvalidJobId)?;
        let group = String::from_utf8(bytes).map_err(|_| InvalidJobId)?;
        let id = JobId { key, group };
        // Only the canonical spelling (lowercase hex) names a job.
        if id.to_string() != s {
            return Err(InvalidJobId);
        }
        Ok(id)
    }
}

/// A job to enqueue: its entry (owner [`queue_core::JOB_OWNER`]), priority and record.
#[derive(Debug)]
pub struct NewJob<'a> {
    /// The queue entry; its id is the job id's key.
    pub entry: &'a Entry,
    /// Its priority.
    pub priority: Priority,
    /// The record's fields (request, caller, times; `member` and `status` are added by the step).
    pub record: &'a [(&'a str, String)],
    /// How long the record lives unless it finishes first (then `job_ttl` from its end).
    pub ttl: Duration,
}

/// A claim step's arguments: what this replica can take.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// Free job workers of this replica: at most this many jobs are granted to it.
    pub slots: u32,
    /// The runner lease of a granted job (renewed while it runs).
    pub job_lease: Duration,
    /// Runs a job may start (`job_max_attempts`); a job with that many is handed out to be finished with
    /// an error.
    pub max_attempts: u32,
}

/// A job granted to this replica by a claim step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobGrant {
    /// The job's queue entry.
    pub entry: Entry,
    /// What it was given: a reservation, or why it ends now (`Reject`, `Expired`, `Exhausted`).
    pub payload: GrantPayload,
    /// Runs started so far, this one included.
    pub attempts: u32,
}

/// What a claim step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Runs whose runner's lease lapsed, put back at their place.
    pub requeued: u64,
    /// The jobs this replica now runs.
    pub jobs: Vec<JobGrant>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting in the queue with `position` entries (jobs and synchronous requests) ahead of it.
    Queued {
        /// 0-based rank in the group's queue.
        position: u64,
    },
    /// A runner holds it.
    Running,
    /// Ended with a result or an error.
    Finished,
}

/// A job's record and state, as a read answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// Where the job is.
    pub state: JobState,
    /// The record's fields.
    pub record: HashMap<String, String>,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCancel {
    /// The job was waiting (or running: `running`, its result is discarded) and is finished as cancelled.
    Cancelled {
        /// A runner held it.
        running: bool,
    },
    /// It had finished already.
    Finished,
    /// No such job.
    Absent,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobEnd<'a> {
    /// The HTTP status the synchronous route would have answered.
    pub status: u16,
    /// `true`: `body` is the result; `false`: the error body.
    pub ok: bool,
    /// The JSON body.
    pub body: &'a str,
}

/// The error bodies a read or cancel may finish a job with.
#[derive(Debug, Clone, Copy)]
pub struct JobErrors<'a> {
    /// A queued job whose deadline passed (408).
    pub timeout: &'a str,
    /// A job whose state the store lost (500).
    pub lost: &'a str,
}

/// The steps on one job's record (Redis: `job_v1.lua`; memory: the twin). Admission's steps (enqueue,
/// claim) are [`crate::AdmissionBackend::submit_job`] and [`crate::AdmissionBackend::claim`].
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Marks a granted job started (run `attempts`) and returns its record; `None` when it finished
    /// meanwhile (cancelled) or is gone.
    async fn start_job(
        &self,
        id: &JobId,
        entry: &Entry,
        attempts: u32,
    ) -> Result<Option<HashMap<String, String>>, BackendError>;
    /// The job's state and record (`None`: unknown id). A queued job whose deadline passed is finished with
    /// `errors.timeout`, one whose state the store lost with `errors.lost`, each kept for `ttl`.
    async fn read_job(
        &self,
        id: &JobId,
        errors: JobErrors<'_>,
        ttl: Duration,
    ) -> Result<Option<JobView>, BackendError>;
    /// Finishes the job with `end`, kept for `ttl`; false when it had finished already (the end is
    /// discarded).
    async fn finish_job(
        &self,
        id: &JobId,
        entry: &Entry,
        end: &JobEnd<'_>,
        ttl: Duration,
    ) -> Result<bool, BackendError>;
    /// Cancels a waiting or running job: finished with `error` (HTTP `status`), kept for `ttl`.
    async fn cancel_job(
        &self,
        id: &JobId,
        error: &str,
        status: u16,
        ttl: Duration,
    ) -> Result<JobCancel, BackendError>;
    /// Renews the runner lease of a running job until `expiry_ms`; false when the run is no longer held.
    async fn renew_job(
        &self,
        id: &JobId,
        entry: &Entry,
        expiry_ms: u64,
    ) -> Result<bool, BackendError>;
    /// Puts a running job back at its place (this replica stops; the run does not count as an attempt) and
    /// wakes the job workers; false when the run was no longer held.
    async fn hand_back_job(&self, id: &JobId, entry: &Entry) -> Result<bool, BackendError>;
}
