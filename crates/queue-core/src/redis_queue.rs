//! The Redis backend: one Lua script per operation over the replica's kept connection.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::{ScriptInvocation, Value};
use store::{Keyspace, RedisConfig, RedisConnection};

use crate::entry::{
    millis, validate_owner, EnqueueOptions, Enqueued, Entry, Popped, Priority, Queued, Score,
};
use crate::lua::SCRIPTS;
use crate::{QueueBackend, QueueError, QueueOps};

/// Settings of a [`RedisQueue`] built on an existing pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisQueueSettings {
    /// Key names.
    pub keyspace: Keyspace,
    /// Bound on every Redis call, including waiting for a pooled connection.
    pub command_timeout: Duration,
}

impl Default for RedisQueueSettings {
    fn default() -> Self {
        Self {
            keyspace: Keyspace::default(),
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// [`QueueBackend`] and [`QueueOps`] on Redis: per group a sorted set plus owner leases, every operation
/// one Lua script (EVALSHA, reloaded on NOSCRIPT) bounded by the command timeout.
///
/// Scripts run over a [`RedisConnection`] (one kept multiplexed connection). Clones share
/// the pool and the connection.
#[derive(Clone)]
pub struct RedisQueue {
    connection: RedisConnection,
    settings: RedisQueueSettings,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("connection", &self.connection)
            .field("settings", &self.settings)
            .finish()
    }
}

impl RedisQueue {
    /// A queue with its own connection built from `config` (one server, Cluster or Sentinel; connections
    /// are made lazily).
    pub fn new(config: &RedisConfig) -> Result<Self, QueueError> {
        let settings = RedisQueueSettings {
            keyspace: config.keyspace()?,
            command_timeout: config.command_timeout,
        };
        Ok(Self::from_connection(
            RedisConnection::connect(config)?,
            settings,
        ))
    }

    /// A queue on an existing pool (for example shared with usage tracking).
    pub fn from_pool(pool: Pool, settings: RedisQueueSettings) -> Self {
        Self::from_connection(
            RedisConnection::new(pool, settings.command_timeout),
            settings,
        )
    }

    /// A queue on an existing connection (shared with usage tracking and admission).
    pub fn from_connection(connection: RedisConnection, settings: RedisQueueSettings) -> Self {
        Self {
            connection,
            settings,
        }
    }

    /// The connection pool (none on a Redis Cluster or behind Sentinels).
    pub fn pool(&self) -> Option<&Pool> {
        self.connection.pool()
    }

    /// The key names in use.
    pub fn keyspace(&self) -> &Keyspace {
        &self.settings.keyspace
    }

    /// Runs one script invocation, all within the command timeout.
    async fn eval(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, QueueError> {
        Ok(self.connection.invoke(invocation).await?)
    }
}

#[async_trait]
impl QueueBackend for RedisQueue {
    async fn depth_by_priority(&self, group: &str) -> Result<Vec<(Priority, u64)>, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.depth_by_priority.prepare_invoke();
        invocation.key(&keys.queue);
        // Reply: {priority, count, ...}
        let reply = array(self.eval(&invocation).await?)?;
        reply
            .chunks(2)
            .map(|pair| match pair {
                [priority, count] => {
                    let priority = u32::try_from(int(priority)?)
                        .ok()
                        .and_then(|p| Priority::new(p).ok())
                        .ok_or_else(|| unexpected("depth_by_priority", pair))?;
                    Ok((priority, int(count)?))
                }
                _ => Err(unexpected("depth_by_priority", pair)),
            })
            .collect()
    }
}

#[async_trait]
impl QueueOps for RedisQueue {
    async fn enqueue(
        &self,
        group: &str,
        priority: Priority,
        entry: &Entry,
        options: EnqueueOptions,
    ) -> Result<Enqueued, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.enqueue.prepare_invoke();
        invocation
            .key(&keys.queue)
            .key(&keys.seq)
            .key(&keys.owners)
            .arg(entry.member())
            .arg(priority.get())
            .arg(options.max_depth)
            .arg(entry.owner())
            .arg(millis(options.liveness));
        // Reply: {1, score, rank} | {0, depth}
        let reply = array(self.eval(&invocation).await?)?;
        match reply.as_slice() {
            [queued, score, rank] if int(queued)? == 1 => Ok(Enqueued {
                score: Score::from_raw(int(score)?),
                position: int(rank)?,
            }),
            [_, depth] => Err(QueueError::QueueFull { depth: int(depth)? }),
            _ => Err(unexpected("enqueue", &reply)),
        }
    }

    async fn cancel(&self, group: &str, entry: &Entry) -> Result<bool, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.cancel.prepare_invoke();
        invocation.key(&keys.queue).arg(entry.member());
        // Reply: 1 | 0
        Ok(int(&self.eval(&invocation).await?)? == 1)
    }

    async fn position(&self, group: &str, entry: &Entry) -> Result<Option<u64>, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.position.prepare_invoke();
        invocation.key(&keys.queue).arg(entry.member());
        // Reply: rank | nil
        match self.eval(&invocation).await? {
            Value::Nil => Ok(None),
            rank => int(&rank).map(Some),
        }
    }

    async fn peek_head(&self, group: &str, n: usize) -> Result<Vec<Queued>, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.peek.prepare_invoke();
        invocation.key(&keys.queue).key(&keys.owners).arg(n);
        // Reply: {member, score, ...}
        queued_pairs(self.eval(&invocation).await?)
    }

    async fn pop_head_if(&self, group: &str, max_score: Score) -> Result<Popped, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.pop_head_if.prepare_invoke();
        invocation
            .key(&keys.queue)
            .key(&keys.owners)
            .arg(max_score.get());
        // Reply: {{reaped member, score, ...}, member, score} | {{reaped member, score, ...}}
        let mut reply = array(self.eval(&invocation).await?)?.into_iter();
        let reaped = removed_pairs(reply.next().unwrap_or(Value::Nil))?;
        let head = match (reply.next(), reply.next()) {
            (Some(member), Some(score)) => Some(decode_queued(member, &score)?),
            _ => None,
        };
        Ok(Popped { head, reaped })
    }

    async fn renew_lease(
        &self,
        group: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(), QueueError> {
        validate_owner(owner)?;
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.renew_lease.prepare_invoke();
        invocation.key(&keys.owners).arg(owner).arg(millis(lease));
        // Reply: new expiry (epoch ms)
        int(&self.eval(&invocation).await?).map(drop)
    }

    async fn expire_owner(&self, group: &str, owner: &str) -> Result<(), QueueError> {
        validate_owner(owner)?;
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.expire_owner.prepare_invoke();
        invocation.key(&keys.owners).arg(owner);
        // Reply: 1 | 0
        int(&self.eval(&invocation).await?).map(drop)
    }

    async fn reap_expired(&self, group: &str) -> Result<Vec<Queued>, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.reap.prepare_invoke();
        invocation.key(&keys.queue).key(&keys.owners);
        // Reply: {member, score, ...}
        removed_pairs(self.eval(&invocation).await?)
    }

    async fn depth(&self, group: &str) -> Result<u64, QueueError> {
        let keys = self.keyspace().group(group);
        let mut invocation = SCRIPTS.depth.prepare_invoke();
        invocation.key(&keys.queue);
        // Reply: count
        int(&self.eval(&invocation).await?)
    }
}

fn unexpected(script: &str, reply: &[Value]) -> QueueError {
    QueueError::reply(format!("unexpected {script} reply: {reply:?}"))
}

fn array(value: Value) -> Result<Vec<Value>, QueueError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::reply(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

fn int(value: &Value) -> Result<u64, QueueError> {
    let parsed = match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    parsed
        .ok_or_else(|| QueueError::reply(format!("expected a non-negative integer, got {value:?}")))
}

fn decode_queued(member: Value, score: &Value) -> Result<Queued, QueueError> {
    let member = match member {
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|e| QueueError::reply(format!("member is not UTF-8: {e}")))?,
        Value::SimpleString(s) => s,
        other => {
            return Err(QueueError::reply(format!(
                "expected a member, got {other:?}"
            )))
        }
    };
    let entry = Entry::from_member(&member).map_err(|e| QueueError::reply(e.to_string()))?;
    Queued::new(entry, Score::from_raw(int(score)?)).map_err(|e| QueueError::reply(e.to_string()))
}

/// Decodes a flat `{member, score, ...}` array.
fn queued_pairs(value: Value) -> Result<Vec<Queued>, QueueError> {
    let mut items = array(value)?.into_iter();
    let mut out = Vec::with_capacity(items.len() / 2);
    while let Some(member) = items.next() {
        let score = items
            .next()
            .ok_or_else(|| QueueError::reply("odd-length member/score array"))?;
        out.push(decode_queued(member, &score)?);
    }
    Ok(out)
}

/// Decodes the entries a script removed as dead: they are gone already, so one written by a foreign
/// client in another format is logged and skipped instead of failing the call that removed it.
fn removed_pairs(value: Value) -> Result<Vec<Queued>, QueueError> {
    let mut items = array(value)?.into_iter();
    let mut out = Vec::with_capacity(items.len() / 2);
    while let Some(member) = items.next() {
        let score = items
            .next()
            .ok_or_else(|| QueueError::reply("odd-length member/score array"))?;
        match decode_queued(member, &score) {
            Ok(queued) => out.push(queued),
            Err(error) => tracing::warn!(%error, "removed an undecodable queue member"),
        }
    }
    Ok(out)
}
