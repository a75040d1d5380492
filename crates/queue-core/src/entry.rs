//! Queue entries: priority, score, the member encoding and the results of queue operations.

use std::fmt;
use std::time::Duration;

use uuid::Uuid;

use crate::QueueError;

/// Scores of one priority span `2^32` sequence numbers.
const SEQ_SPAN: u64 = 1 << 32;

/// The owner of a durable job's queue entry: it belongs to no replica, so it is always live (no heartbeat
/// keeps it); only a job's runner holds a lease, and only while it runs. Replica ids never take this name.
pub const JOB_OWNER: &str = "~jobs";

/// Longest accepted owner id.
const MAX_OWNER_LEN: usize = 128;

/// Request priority: `0..=Priority::MAX`, lower is served first.
///
/// ```
/// use queue_core::Priority;
///
/// assert_eq!(Priority::try_from(7_i64)?.get(), 7);
/// assert!(Priority::try_from(-1_i64).is_err());
/// assert!(Priority::try_from(i64::from(Priority::MAX.get()) + 1).is_err());
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u32);

impl Priority {
    /// The largest (least urgent) priority, `2^20`.
    pub const MAX: Priority = Priority(1 << 20);

    /// Validates `value`.
    pub fn new(value: u32) -> Result<Self, QueueError> {
        if value > Self::MAX.0 {
            return Err(QueueError::InvalidPriority {
                value: i64::from(value),
            });
        }
        Ok(Self(value))
    }

    /// The numeric priority.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Priority {
    type Error = QueueError;

    fn try_from(value: i64) -> Result<Self, QueueError> {
        u32::try_from(value)
            .map_err(|_| QueueError::InvalidPriority { value })
            .and_then(Self::new)
    }
}

impl TryFrom<u32> for Priority {
    type Error = QueueError;

    fn try_from(value: u32) -> Result<Self, QueueError> {
        Self::new(value)
    }
}

impl From<Priority> for u32 {
    fn from(priority: Priority) -> u32 {
        priority.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Position key in a group's queue: `priority * 2^32 + sequence`; lower is served first.
///
/// Strict priority, FIFO within a priority. Scores stay below `2^53`, exact as Lua numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Score(u64);

impl Score {
    /// The largest score any entry can have: the last one of [`Priority::MAX`].
    pub const MAX: Score = Score::last_of(Priority::MAX);

    /// The score of sequence number `seq` at `priority`.
    pub const fn new(priority: Priority, seq: u32) -> Self {
        Self(priority.0 as u64 * SEQ_SPAN + seq as u64)
    }

    /// The smallest score of `priority`.
    pub const fn first_of(priority: Priority) -> Self {
        Self::new(priority, 0)
    }

    /// The largest score of `priority`: `pop_head_if(Score::last_of(p))` pops only entries of priority `p`
    /// or better.
    pub const fn last_of(priority: Priority) -> Self {
        Self::new(priority, u32::MAX)
    }

    /// A score from its numeric value.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The numeric value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The priority this score belongs to, if it is in range.
    pub fn priority(self) -> Option<Priority> {
        Priority::new(u32::try_from(self.0 / SEQ_SPAN).ok()?).ok()
    }

    /// The sequence part (arrival order within the priority, modulo `2^32`).
    pub const fn seq(self) -> u32 {
        (self.0 % SEQ_SPAN) as u32
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Small per-request data carried inside the queue member, for admission decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EntryMeta {
    /// Tokens to reserve from the deployment's TPM when admitted.
    pub est_tokens: u64,
    /// Prompt tokens, checked against a deployment's `max_input_tokens`.
    pub prompt_tokens: u64,
    /// Epoch ms after which the request no longer wants service; 0 = no deadline.
    pub deadline_ms: u64,
}

/// One waiting request: id, owning replica and metadata, encoded as the queue member
/// `<id>|<owner>|<est_tokens>|<prompt_tokens>|<deadline_ms>` (id as 32 lowercase hex digits).
///
/// ```
/// use queue_core::{Entry, EntryMeta};
///
/// let meta = EntryMeta { est_tokens: 900, prompt_tokens: 400, deadline_ms: 0 };
/// let entry = Entry::new(uuid::Uuid::nil(), "replica-a", meta)?;
/// assert_eq!(entry.member(), "00000000000000000000000000000000|replica-a|900|400|0");
/// assert_eq!(Entry::from_member(entry.member())?, entry);
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    id: Uuid,
    owner: String,
    meta: EntryMeta,
    member: String,
}

impl Entry {
    /// An entry of request `id` owned by replica `owner` (see [`validate_owner`]).
    pub fn new(id: Uuid, owner: impl Into<String>, meta: EntryMeta) -> Result<Self, QueueError> {
        let owner = owner.into();
        validate_owner(&owner)?;
        let member = format!(
            "{}|{owner}|{}|{}|{}",
            id.simple(),
            meta.est_tokens,
            meta.prompt_tokens,
            meta.deadline_ms
        );
        Ok(Self {
            id,
            owner,
            meta,
            member,
        })
    }

    /// Decodes a member string; only the canonical form [`Entry::member`] produces is accepted.
    pub fn from_member(member: &str) -> Result<Self, QueueError> {
        let invalid = || QueueError::InvalidMember {
            member: member.to_owned(),
        };
        let mut parts = member.split('|');
        let (Some(id), Some(owner), Some(est), Some(prompt), Some(deadline), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| invalid());
        let meta = EntryMeta {
            est_tokens: number(est)?,
            prompt_tokens: number(prompt)?,
            deadline_ms: number(deadline)?,
        };
        let id = Uuid::try_parse(id).map_err(|_| invalid())?;
        let entry = Self::new(id, owner, meta).map_err(|_| invalid())?;
        if entry.member != member {
            return Err(invalid());
        }
        Ok(entry)
    }

    /// The request id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The owning replica's id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Token estimates and deadline.
    pub fn meta(&self) -> EntryMeta {
        self.meta
    }

    /// The encoded queue member.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// True for a durable job's entry (owner [`JOB_OWNER`]).
    pub fn is_job(&self) -> bool {
        self.owner == JOB_OWNER
    }

    /// True if the entry has a deadline and it is before `now_ms`.
    pub fn deadline_passed(&self, now_ms: u64) -> bool {
        self.meta.deadline_ms != 0 && self.meta.deadline_ms < now_ms
    }
}

/// Checks an owner (replica) id: 1..=128 printable ASCII characters, no `|` (the member separator).
pub fn validate_owner(owner: &str) -> Result<(), QueueError> {
    let valid = !owner.is_empty()
        && owner.len() <= MAX_OWNER_LEN
        && owner.bytes().all(|b| b.is_ascii_graphic() && b != b'|');
    if valid {
        Ok(())
    } else {
        Err(QueueError::InvalidOwner {
            owner: owner.to_owned(),
        })
    }
}

/// An entry as it sits in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Queued {
    /// The waiting request.
    pub entry: Entry,
    /// Its priority.
    pub priority: Priority,
    /// Its score (priority and arrival order).
    pub score: Score,
}

impl Queued {
    /// Pairs a member with its score, checking the score's priority is in range.
    pub fn new(entry: Entry, score: Score) -> Result<Self, QueueError> {
        let priority = score.priority().ok_or_else(|| QueueError::InvalidMember {
            member: format!("{} (score {score})", entry.member()),
        })?;
        Ok(Self {
            entry,
            priority,
            score,
        })
    }
}

/// Result of a successful enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enqueued {
    /// The entry's score.
    pub score: Score,
    /// 0-based rank in the group's queue right after the enqueue (entries ahead of it).
    pub position: u64,
}

/// Result of [`crate::QueueOps::pop_head_if`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Popped {
    /// The popped live head entry, if there was one within the bound.
    pub head: Option<Queued>,
    /// Dead entries removed from the head on the way (owner lease expired or deadline passed).
    pub reaped: Vec<Queued>,
}

/// A grant recorded for a popped entry, waiting for its owner to pick it up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The granted request.
    pub entry: Entry,
    /// Router-defined payload: `<deployment_id>|<window_start_ms>`.
    pub payload: String,
}

/// Per-call enqueue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnqueueOptions {
    /// Refuse with [`QueueError::QueueFull`] when this many entries wait; 0 = unbounded.
    pub max_depth: u64,
    /// The owner's lease is extended to at least now + this, so the entry is alive from the start.
    pub liveness: Duration,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        Self {
            max_depth: 10_000,
            liveness: Duration::from_secs(30),
        }
    }
}

/// Milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
