//! Synchronous in-memory queue state with the same semantics as the Lua fragment.

use std::collections::{BTreeMap, HashMap};

use crate::entry::{Enqueued, Entry, Grant, Popped, Priority, Queued, Score, JOB_OWNER};
use crate::QueueError;

/// All groups' queues, owner leases and grants of one process; the in-memory twin of the Redis keys.
///
/// Each method mirrors a function of [`crate::lua::QUEUE_FRAGMENT`] (named in its docs) or a queue
/// script, takes the time as `now_ms` (epoch ms) and never blocks, so a caller can compose several calls,
/// and the usage state of another crate, under its own locks into one atomic step, as the Redis scripts do.
/// [`crate::MemoryQueue`] wraps it in an `Arc<Mutex<_>>` behind [`crate::QueueBackend`].
///
/// ```
/// use queue_core::{Entry, EntryMeta, Priority, QueueState, Score};
///
/// let mut state = QueueState::new();
/// let entry = Entry::new(uuid::Uuid::new_v4(), "replica-a", EntryMeta::default())?;
/// state.enqueue("gpt-4o", Priority::new(3)?, &entry, 0)?;
/// state.heartbeat("gpt-4o", "replica-a", 2_000);
/// assert!(state.better_waiting("gpt-4o", Priority::new(3)?));
/// let popped = state.pop_head_if("gpt-4o", 1_000, Score::MAX);
/// assert_eq!(popped.head.map(|q| q.entry), Some(entry));
/// # Ok::<(), queue_core::QueueError>(())
/// ```
#[derive(Debug, Default)]
pub struct QueueState {
    groups: HashMap<String, GroupState>,
}

/// One group: the `:q`, `:seq`, `:owners` and `:grants` keys.
#[derive(Debug, Default)]
struct GroupState {
    /// Value of the `:seq` counter (INCR semantics: the first entry gets 1).
    seq: u64,
    /// Entries in `ZSET` order: by score, equal scores by member (a restore after the store was lost may put an
    /// entry back at a score a newer arrival took too).
    by_score: BTreeMap<(u64, String), Entry>,
    score_of: HashMap<String, u64>,
    owners: HashMap<String, u64>,
    grants: HashMap<String, Grant>,
}

impl GroupState {
    fn owner_alive(&self, owner: &str, now_ms: u64) -> bool {
        owner == JOB_OWNER
            || self
                .owners
                .get(owner)
                .is_some_and(|&expiry| expiry >= now_ms)
    }

    fn is_live(&self, entry: &Entry, now_ms: u64) -> bool {
        entry.is_job() || !entry.deadline_passed(now_ms) && self.owner_alive(entry.owner(), now_ms)
    }

    fn remove(&mut self, member: &str) -> Option<(u64, Entry)> {
        let score = self.score_of.remove(member)?;
        let entry = self.by_score.remove(&(score, member.to_owned()))?;
        Some((score, entry))
    }

    fn rank(&self, score: u64, member: &str) -> u64 {
        self.by_score.range(..(score, member.to_owned())).count() as u64
    }
}

/// Pairs an entry with its score (priorities are validated on the way in, so this cannot fail).
fn queued(entry: Entry, score: u64) -> Queued {
    let score = Score::from_raw(score);
    Queued {
        priority: score.priority().unwrap_or(Priority::MAX),
        entry,
        score,
    }
}

impl QueueState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn group(&self, group: &str) -> Option<&GroupState> {
        self.groups.get(group)
    }

    fn group_mut(&mut self, group: &str) -> &mut GroupState {
        self.groups.entry(group.to_owned()).or_default()
    }

    /// `q_enqueue`: adds `entry` behind everyone of equal or better priority, or fails with
    /// [`QueueError::QueueFull`] when `max_depth` entries wait (0 = unbounded). Re-adding a queued entry
    /// moves it to the back of its priority. Does not touch the owner's lease (see [`Self::touch_owner`]).
    pub fn enqueue(
        &mut self,
        group: &str,
        priority: Priority,
        entry: &Entry,
        max_depth: u64,
    ) -> Result<Enqueued, QueueError> {
        let g = self.group_mut(group);
        let depth = g.by_score.len() as u64;
        if max_depth > 0 && depth >= max_depth {
            return Err(QueueError::QueueFull { depth });
        }
        g.seq += 1;
        let score = Score::new(priority, (g.seq % (1 << 32)) as u32).get();
        g.remove(entry.member());
        g.score_of.insert(entry.member().to_owned(), score);
        g.by_score
            .insert((score, entry.member().to_owned()), entry.clone());
        Ok(Enqueued {
            score: Score::from_raw(score),
            position: g.rank(score, entry.member()),
        })
    }

    /// `q_better_waiting`: true if an entry of `priority` or better waits (dead ones not yet reaped count).
    pub fn better_waiting(&self, group: &str, priority: Priority) -> bool {
        self.group(group)
            .and_then(|g| g.by_score.keys().next())
            .is_some_and(|(head, _)| *head <= Score::last_of(priority).get())
    }

    /// `q_head`: the first live entry, or `None`. Dead head entries (owner lease expired or deadline
    /// passed) are removed and appended to `removed`.
    pub fn head(&mut self, group: &str, now_ms: u64, removed: &mut Vec<Queued>) -> Option<Queued> {
        let g = self.groups.get_mut(group)?;
        loop {
            let (&(score, _), entry) = g.by_score.iter().next()?;
            if g.is_live(entry, now_ms) {
                return Some(queued(entry.clone(), score));
            }
            let member = entry.member().to_owned();
            if let Some((score, entry)) = g.remove(&member) {
                removed.push(queued(entry, score));
            }
        }
    }

    /// Pops the first live entry if its score is `<= max_score`, reaping dead head entries on the way.
    pub fn pop_head_if(&mut self, group: &str, now_ms: u64, max_score: Score) -> Popped {
        let mut reaped = Vec::new();
        let head = self
            .head(group, now_ms, &mut reaped)
            .filter(|q| q.score <= max_score);
        if let Some(q) = &head {
            self.remove(group, &q.entry);
        }
        Popped { head, reaped }
    }

    /// `q_remove`: removes `entry`; true if it was queued.
    pub fn remove(&mut self, group: &str, entry: &Entry) -> bool {
        self.groups
            .get_mut(group)
            .and_then(|g| g.remove(entry.member()))
            .is_some()
    }

    /// 0-based rank of `entry`, or `None` if it is not queued.
    pub fn position(&self, group: &str, entry: &Entry) -> Option<u64> {
        let g = self.group(group)?;
        g.score_of
            .get(entry.member())
            .map(|&score| g.rank(score, entry.member()))
    }

    /// The first `n` live entries in queue order (dead ones are skipped, not removed).
    pub fn peek(&self, group: &str, now_ms: u64, n: usize) -> Vec<Queued> {
        let Some(g) = self.group(group) else {
            return Vec::new();
        };
        g.by_score
            .iter()
            .filter(|(_, entry)| g.is_live(entry, now_ms))
            .take(n)
            .map(|(&(score, _), entry)| queued(entry.clone(), score))
            .collect()
    }

    /// True if `entry` is queued and alive at `now_ms`.
    pub fn is_live(&self, group: &str, entry: &Entry, now_ms: u64) -> bool {
        self.group(group)
            .is_some_and(|g| g.score_of.contains_key(entry.member()) && g.is_live(entry, now_ms))
    }

    /// `q_heartbeat`: sets `owner`'s lease expiry, renewing all its entries in the group at once.
    pub fn heartbeat(&mut self, group: &str, owner: &str, expiry_ms: u64) {
        self.group_mut(group)
            .owners
            .insert(owner.to_owned(), expiry_ms);
    }

    /// `q_touch_owner`: like [`Self::heartbeat`] but never shortens the lease.
    pub fn touch_owner(&mut self, group: &str, owner: &str, expiry_ms: u64) {
        let expiry = self
            .group_mut(group)
            .owners
            .entry(owner.to_owned())
            .or_insert(expiry_ms);
        *expiry = (*expiry).max(expiry_ms);
    }

    /// Drops `owner`'s lease: its entries are dead from now on. True if it had one.
    pub fn expire_owner(&mut self, group: &str, owner: &str) -> bool {
        self.groups
            .get_mut(group)
            .and_then(|g| g.owners.remove(owner))
            .is_some()
    }

    /// `q_reap`: removes every dead entry and returns them in queue order, then forgets expired owners.
    pub fn reap(&mut self, group: &str, now_ms: u64) -> Vec<Queued> {
        let Some(g) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        let dead: Vec<String> = g
            .by_score
            .values()
            .filter(|entry| !g.is_live(entry, now_ms))
            .map(|entry| entry.member().to_owned())
            .collect();
        let reaped = dead
            .iter()
            .filter_map(|member| g.remove(member))
            .map(|(score, entry)| queued(entry, score))
            .collect();
        g.owners.retain(|_, &mut expiry| expiry >= now_ms);
        reaped
    }

    /// Number of queued entries (dead ones not yet reaped included).
    pub fn depth(&self, group: &str) -> u64 {
        self.group(group).map_or(0, |g| g.by_score.len() as u64)
    }

    /// `(priority, count)` for each priority with queued entries, best priority first.
    pub fn depth_by_priority(&self, group: &str) -> Vec<(Priority, u64)> {
        let Some(g) = self.group(group) else {
            return Vec::new();
        };
        let mut out: Vec<(Priority, u64)> = Vec::new();
        for &(score, _) in g.by_score.keys() {
            let priority = Score::from_raw(score).priority().unwrap_or(Priority::MAX);
            match out.last_mut() {
                Some((p, count)) if *p == priority => *count += 1,
                _ => out.push((priority, 1)),
            }
        }
        out
    }

    /// The twin of `status_v1.lua`'s band walk: for each priority with queued entries (best first, at most
    /// `max_bands`) its count and its head's member, and whether more priorities wait beyond them. Costs a
    /// range lookup per band, as the script's `ZRANGEBYSCORE ... LIMIT 0 1` and `ZCOUNT` do.
    pub fn priority_bands(
        &self,
        group: &str,
        max_bands: usize,
    ) -> (Vec<(Priority, u64, String)>, bool) {
        let Some(g) = self.group(group) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let mut from = 0_u64;
        while let Some(((score, member), _)) = g.by_score.range((from, String::new())..).next() {
            if out.len() >= max_bands {
                return (out, true);
            }
            let priority = Score::from_raw(*score).priority().unwrap_or(Priority::MAX);
            let next = Score::last_of(priority).get() + 1;
            let count = g
                .by_score
                .range((Score::first_of(priority).get(), String::new())..(next, String::new()))
                .count() as u64;
            out.push((priority, count, member.clone()));
            from = next;
        }
        (out, false)
    }

    /// Owners whose lease runs at `now_ms` or later, with its expiry, sorted by owner (`ZRANGEBYSCORE
    /// owners now +inf`).
    pub fn live_owner_leases(&self, group: &str, now_ms: u64) -> Vec<(String, u64)> {
        let mut owners: Vec<(String, u64)> = self
            .group(group)
            .map(|g| {
                g.owners
                    .iter()
                    .filter(|(_, &expiry)| expiry >= now_ms)
                    .map(|(owner, &expiry)| (owner.clone(), expiry))
                    .collect()
            })
            .unwrap_or_default();
        owners.sort();
        owners
    }

    /// `q_record_grant`: records that `entry` was granted, with the router's `payload`.
    pub fn record_grant(&mut self, group: &str, entry: &Entry, payload: impl Into<String>) {
        self.group_mut(group).grants.insert(
            entry.member().to_owned(),
            Grant {
                entry: entry.clone(),
                payload: payload.into(),
            },
        );
    }

    /// `q_take_grants`: takes the grants of `owner`'s entries, in no particular order.
    pub fn take_grants(&mut self, group: &str, owner: &str) -> Vec<Grant> {
        let Some(g) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        let members: Vec<String> = g
            .grants
            .iter()
            .filter(|(_, grant)| grant.entry.owner() == owner)
            .map(|(member, _)| member.clone())
            .collect();
        members
            .iter()
            .filter_map(|member| g.grants.remove(member))
            .collect()
    }

    /// The heartbeat's clean-up of the owners set: forgets owners whose lease expired, and returns them.
    pub fn forget_expired_owners(&mut self, group: &str, now_ms: u64) -> Vec<String> {
        let mut expired = Vec::new();
        if let Some(g) = self.groups.get_mut(group) {
            g.owners.retain(|owner, &mut expiry| {
                let alive = expiry >= now_ms;
                if !alive {
                    expired.push(owner.clone());
                }
                alive
            });
        }
        expired
    }

    /// `ZADD` at a given score: puts `entry` back at its place (a restore after the store lost it).
    pub fn put_back(&mut self, group: &str, entry: &Entry, score: Score) {
        let g = self.group_mut(group);
        g.remove(entry.member());
        g.score_of.insert(entry.member().to_owned(), score.get());
        g.by_score
            .insert((score.get(), entry.member().to_owned()), entry.clone());
    }

    /// The `:seq` counter.
    pub fn seq(&self, group: &str) -> u64 {
        self.group(group).map_or(0, |g| g.seq)
    }

    /// Sets the `:seq` counter.
    pub fn set_seq(&mut self, group: &str, seq: u64) {
        self.group_mut(group).seq = seq;
    }

    /// True if `entry` is queued (alive or not).
    pub fn is_queued(&self, group: &str, entry: &Entry) -> bool {
        self.group(group)
            .is_some_and(|g| g.score_of.contains_key(entry.member()))
    }

    /// True if `entry` has a grant waiting to be taken.
    pub fn has_grant(&self, group: &str, entry: &Entry) -> bool {
        self.group(group)
            .is_some_and(|g| g.grants.contains_key(entry.member()))
    }

    /// Forgets everything, as a store that lost its state (tests of recovery).
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// The `ZCARD` of the owners: owners with a lease in `group` (expired ones not yet forgotten included).
    pub fn live_owners(&self, group: &str) -> u64 {
        self.group(group).map_or(0, |g| g.owners.len() as u64)
    }

    /// The grants recorded in `group` and not yet taken, in no particular order.
    pub fn grants(&self, group: &str) -> Vec<Grant> {
        self.group(group)
            .map(|g| g.grants.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `q_owner_alive`: true while `owner` holds a lease in `group` (expiry >= `now_ms`); always for
    /// [`JOB_OWNER`].
    pub fn owner_alive(&self, group: &str, owner: &str, now_ms: u64) -> bool {
        owner == JOB_OWNER
            || self
                .group(group)
                .is_some_and(|g| g.owner_alive(owner, now_ms))
    }

    /// The stored state of one group, in the form both twins can be read into (the twin property tests
    /// compare it with what Redis holds): entries by score, the sequence counter, owners alive at `now_ms`
    /// and the grants.
    pub fn snapshot(&self, group: &str, now_ms: u64) -> QueueSnapshot {
        let Some(g) = self.group(group) else {
            return QueueSnapshot::default();
        };
        QueueSnapshot {
            entries: g
                .by_score
                .iter()
                .map(|(&(score, _), entry)| (entry.member().to_owned(), score))
                .collect(),
            seq: g.seq,
            owners: g
                .owners
                .iter()
                .filter(|(_, &expiry)| expiry >= now_ms)
                .map(|(owner, &expiry)| (owner.clone(), expiry))
                .collect(),
            grants: g
                .grants
                .iter()
                .map(|(member, grant)| (member.clone(), grant.payload.clone()))
                .collect(),
        }
    }

    /// `q_take_grant`: takes the grant payload of one entry (for cancel), if it has one.
    pub fn take_grant(&mut self, group: &str, entry: &Entry) -> Option<String> {
        self.groups
            .get_mut(group)?
            .grants
            .remove(entry.member())
            .map(|grant| grant.payload)
    }
}

/// One group's stored queue state, as [`QueueState::snapshot`] reads it (and a test reads Redis's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// `:q`: members in score order, with their scores.
    pub entries: Vec<(String, u64)>,
    /// `:seq`: the sequence counter (0 when absent).
    pub seq: u64,
    /// `:owners`: owners alive at the snapshot's time -> lease expiry.
    pub owners: std::collections::BTreeMap<String, u64>,
    /// `:grants`: member -> payload.
    pub grants: std::collections::BTreeMap<String, String>,
}
