//! A read-only view of one group's queue for operators (`/queue/status`): depth by priority, the age of
//! each priority's oldest waiter, live replicas, grants not yet taken, durable jobs. Redis: one call of
//! `status_v1.lua`; memory: the same reads under the locks.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Entry, Priority};
use store::BackendError;

use crate::failover::FailoverAdmission;
use crate::lock;
use crate::memory::MemoryAdmission;
use crate::redis::RedisAdmission;

/// Priorities reported per group by default; more are counted in [`GroupStatus::depth`] only.
pub const STATUS_BANDS: usize = 64;

/// queue-core's fragment followed by the read-only status body.
static STATUS_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    let source = [
        queue_core::lua::QUEUE_FRAGMENT,
        include_str!("lua/status_v1.lua"),
    ]
    .join("\n");
    redis::Script::new(&source)
});

/// Requests waiting at one priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// The priority.
    pub priority: Priority,
    /// Entries queued at it (those of a crashed replica count until reaped at the head).
    pub waiting: u64,
    /// The member at its head: the oldest of the priority (FIFO within a priority).
    pub head: String,
}

impl Band {
    /// When the head entry was created (epoch ms), read from its version 7 id; `None` for other ids.
    pub fn head_enqueued_ms(&self) -> Option<u64> {
        let id = Entry::from_member(&self.head).ok()?.id();
        if id.get_version_num() != 7 {
            return None;
        }
        let (secs, nanos) = id.get_timestamp()?.to_unix();
        Some(secs * 1000 + u64::from(nanos / 1_000_000))
    }
}

/// One group's queue as `status_v1.lua` (or its memory twin) reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupStatus {
    /// The store's time of the read (epoch ms).
    pub now_ms: u64,
    /// Entries queued (all priorities).
    pub depth: u64,
    /// Priorities with queued entries, best first, at most the bands asked for.
    pub bands: Vec<Band>,
    /// True when more priorities wait than were reported.
    pub more_bands: bool,
    /// Replicas whose liveness runs at `now_ms` or later -> lease expiry (epoch ms).
    pub owners: Vec<(String, u64)>,
    /// Members granted capacity whose owner has not taken the grant yet, sorted.
    pub granted: Vec<String>,
    /// Durable jobs queued or running.
    pub jobs_live: u64,
    /// Durable jobs running (a runner holds their lease).
    pub jobs_running: u64,
}

impl GroupStatus {
    /// How long the oldest waiter has waited (over all reported priorities), when its id tells.
    pub fn oldest_wait(&self) -> Option<Duration> {
        self.bands.iter().filter_map(|b| self.wait_of(b)).max()
    }

    /// How long `band`'s head has waited.
    pub fn wait_of(&self, band: &Band) -> Option<Duration> {
        band.head_enqueued_ms()
            .map(|at| Duration::from_millis(self.now_ms.saturating_sub(at)))
    }

    /// Grants not yet taken, by the replica that owns them.
    pub fn grants_by_owner(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for member in &self.granted {
            if let Ok(entry) = Entry::from_member(member) {
                *out.entry(entry.owner().to_owned()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// Reads a group's queue status without changing anything. Implemented by the Redis and memory twins.
#[async_trait]
pub trait QueueStatus: Send + Sync + 'static {
    /// The status of `group`, reporting at most `max_bands` priorities.
    async fn group_status(
        &self,
        group: &str,
        max_bands: usize,
    ) -> Result<GroupStatus, BackendError>;
}

#[async_trait]
impl QueueStatus for RedisAdmission {
    async fn group_status(
        &self,
        group: &str,
        max_bands: usize,
    ) -> Result<GroupStatus, BackendError> {
        let keys = self.keyspace().group(group);
        let mut inv = STATUS_SCRIPT.prepare_invoke();
        inv.key(&keys.queue)
            .key(&keys.owners)
            .key(&keys.grants)
            .key(&keys.jobs)
            .key(&keys.job_runs)
            .arg(self.pinned_ms().map_or(-1, |now| now as i64))
            .arg(max_bands);
        decode(self.connection().invoke(&inv).await?)
    }
}

#[async_trait]
impl QueueStatus for MemoryAdmission {
    async fn group_status(
        &self,
        group: &str,
        max_bands: usize,
    ) -> Result<GroupStatus, BackendError> {
        Ok(self.status_of(group, max_bands))
    }
}

#[async_trait]
impl QueueStatus for FailoverAdmission {
    /// Redis's view while it answers; this replica's memory while admission runs there.
    async fn group_status(
        &self,
        group: &str,
        max_bands: usize,
    ) -> Result<GroupStatus, BackendError> {
        if self.is_down() {
            return self.memory().group_status(group, max_bands).await;
        }
        self.redis().group_status(group, max_bands).await
    }
}

impl MemoryAdmission {
    /// The twin of `status_v1.lua`.
    pub(crate) fn status_of(&self, group: &str, max_bands: usize) -> GroupStatus {
        let now_ms = crate::AdmissionBackend::now_ms(self);
        let queue = lock(self.queue_state());
        let (bands, more_bands) = queue.priority_bands(group, max_bands);
        let mut granted: Vec<String> = queue
            .grants(group)
            .into_iter()
            .map(|g| g.entry.member().to_owned())
            .collect();
        granted.sort();
        let (jobs_live, jobs_running) = self.job_counts(group);
        GroupStatus {
            now_ms,
            depth: queue.depth(group),
            bands: bands
                .into_iter()
                .map(|(priority, waiting, head)| Band {
                    priority,
                    waiting,
                    head,
                })
                .collect(),
            more_bands,
            owners: queue.live_owner_leases(group, now_ms),
            granted,
            jobs_live,
            jobs_running,
        }
    }
}

fn bad(what: &str) -> BackendError {
    BackendError::reply(format!("status_v1: {what}"))
}

/// Decodes `status_v1.lua`'s reply (see its header).
fn decode(value: redis::Value) -> Result<GroupStatus, BackendError> {
    let redis::Value::Array(items) = value else {
        return Err(bad("not an array"));
    };
    let mut items = items.into_iter();
    let mut next = || items.next().ok_or_else(|| bad("too short"));
    let int = |v: redis::Value| {
        redis::from_redis_value::<i64>(v)
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| bad("expected a non-negative integer"))
    };
    let text = |v: redis::Value| {
        redis::from_redis_value::<String>(v).map_err(|_| bad("expected a string"))
    };
    let count = |v: redis::Value| int(v).and_then(|n| usize::try_from(n).map_err(|_| bad("count")));
    let now_ms = int(next()?)?;
    let depth = int(next()?)?;
    let more_bands = int(next()?)? == 1;
    let nb = count(next()?)?;
    let mut bands = Vec::with_capacity(nb.min(1024));
    for _ in 0..nb {
        let priority = u32::try_from(int(next()?)?)
            .ok()
            .and_then(|p| Priority::new(p).ok())
            .ok_or_else(|| bad("priority out of range"))?;
        let waiting = int(next()?)?;
        let head = text(next()?)?;
        bands.push(Band {
            priority,
            waiting,
            head,
        });
    }
    let no = count(next()?)?;
    let mut owners = Vec::with_capacity(no.min(1024));
    for _ in 0..no {
        let owner = text(next()?)?;
        owners.push((owner, int(next()?)?));
    }
    let ng = count(next()?)?;
    let mut granted = Vec::with_capacity(ng.min(1024));
    for _ in 0..ng {
        granted.push(text(next()?)?);
    }
    let jobs_live = int(next()?)?;
    let jobs_running = int(next()?)?;
    Ok(GroupStatus {
        now_ms,
        depth,
        bands,
        more_bands,
        owners,
        granted,
        jobs_live,
        jobs_running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::EntryMeta;

    fn member(id: uuid::Uuid, owner: &str) -> String {
        Entry::new(id, owner, EntryMeta::default())
            .expect("entry")
            .member()
            .to_owned()
    }

    #[test]
    fn a_waiters_age_comes_from_its_version_7_id() {
        let at_ms = 1_796_000_000_123_u64;
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            at_ms / 1000,
            (at_ms % 1000) as u32 * 1_000_000,
        );
        let band = Band {
            priority: Priority::new(3).expect("priority"),
            waiting: 2,
            head: member(uuid::Uuid::new_v7(ts), "replica-a"),
        };
        assert_eq!(band.head_enqueued_ms(), Some(at_ms));
        let status = GroupStatus {
            now_ms: at_ms + 1_500,
            bands: vec![band],
            ..GroupStatus::default()
        };
        assert_eq!(status.oldest_wait(), Some(Duration::from_millis(1_500)));
        let old = Band {
            priority: Priority::new(0).expect("priority"),
            waiting: 1,
            head: member(uuid::Uuid::new_v4(), "replica-a"),
        };
        assert_eq!(old.head_enqueued_ms(), None, "a version 4 id tells no time");
    }

    #[test]
    fn grants_are_counted_by_their_owner() {
        let status = GroupStatus {
            granted: vec![
                member(uuid::Uuid::new_v4(), "replica-a"),
                member(uuid::Uuid::new_v4(), "replica-b"),
                member(uuid::Uuid::new_v4(), "replica-a"),
                "not a member".to_owned(),
            ],
            ..GroupStatus::default()
        };
        let by_owner = status.grants_by_owner();
        assert_eq!(by_owner.get("replica-a"), Some(&2));
        assert_eq!(by_owner.get("replica-b"), Some(&1));
        assert_eq!(by_owner.len(), 2);
    }
}
