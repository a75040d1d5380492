//! The Redis backend: one Lua script per operation over a deadpool-redis pool.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, ScriptInvocation, Value};

use crate::entry::{
    millis, validate_owner, EnqueueOptions, Enqueued, Entry, Popped, Priority, Queued, Score,
};
use crate::lua::SCRIPTS;
use crate::{BackendErrorKind, Keyspace, QueueBackend, QueueError, RedisConnection};

/// How to reach Redis and name the keys; [`RedisQueue::new`] builds a pool from it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisQueueConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Maximum number of pooled connections (each one multiplexes concurrent calls).
    pub pool_size: usize,
    /// Bound on every Redis call, including waiting for and creating a pooled connection.
    pub command_timeout: Duration,
    /// Key prefix (see [`Keyspace`]).
    pub key_prefix: String,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            pool_size: 16,
            command_timeout: Duration::from_secs(1),
            key_prefix: Keyspace::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl fmt::Debug for RedisQueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl RedisQueueConfig {
    /// A pool for `url` with `pool_size` connections whose wait, create and recycle steps, connection
    /// attempts and responses are all bounded by `command_timeout`. No connection is made yet.
    pub fn create_pool(&self) -> Result<Pool, QueueError> {
        create_pool(&self.url, self.pool_size, self.command_timeout)
    }

    /// The settings part of this config, for [`RedisQueue::from_pool`].
    pub fn settings(&self) -> Result<RedisQueueSettings, QueueError> {
        Ok(RedisQueueSettings {
            keyspace: Keyspace::new(self.key_prefix.clone())?,
            command_timeout: self.command_timeout,
        })
    }
}

/// A deadpool-redis pool with every step bounded by `timeout` (shareable with other Redis users).
pub fn create_pool(url: &str, pool_size: usize, timeout: Duration) -> Result<Pool, QueueError> {
    let config_error = |message: String| QueueError::backend(BackendErrorKind::Config, message);
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(url, connection)
        .map_err(|e| config_error(format!("invalid redis url {}: {e}", redact_url(url))))?;
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| config_error(format!("cannot build redis pool: {e}")))
}

/// Hides the password part of a Redis URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

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

/// [`QueueBackend`] on Redis: per group a sorted set plus owner leases, every operation one Lua script
/// (EVALSHA, reloaded on NOSCRIPT) bounded by the command timeout.
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
    /// A queue with its own pool built from `config` (connections are made lazily).
    pub fn new(config: &RedisQueueConfig) -> Result<Self, QueueError> {
        Ok(Self::from_pool(config.create_pool()?, config.settings()?))
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

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        self.connection.pool()
    }

    /// The key names in use.
    pub fn keyspace(&self) -> &Keyspace {
        &self.settings.keyspace
    }

    /// Runs one script invocation, all within the command timeout.
    async fn eval(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, QueueError> {
        self.connection.invoke(invocation).await
    }
}

#[async_trait]
impl QueueBackend for RedisQueue {
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
            .arg(millis(options.owner_lease));
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
