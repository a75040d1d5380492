//! [`RedisKeys`]: key records and limits in Redis, every key of one virtual key under its own hash tag.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use store::{BackendError, RedisConnection};

use crate::error::KeyError;
use crate::record::{KeyId, KeyRecord};
use crate::store::{KeyStore, KeyUsage, Release, Reservation, Reserve};

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/reserve_v1.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/release_v1.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/renew_v1.lua")));
static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/write_v1.lua")));
static SPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/spend_v1.lua")));

/// Keys in Redis. Names, under the configured prefix:
/// - `key:{<id>}`: the record, a hash of one JSON value per field (`spend` a plain number);
/// - `key:{<id>}:inflight`: the parallel slots, a sorted set of request ids scored by lease end;
/// - `key:{<id>}:usage`: the current rate window (`w`, `rpm`, `tpm`);
/// - `keys`: the set of ids, for `/key/list` (its own slot; written after the record).
#[derive(Debug, Clone)]
pub struct RedisKeys {
    conn: RedisConnection,
    prefix: String,
    window_ms: u64,
}

impl RedisKeys {
    /// A store on `conn` under `prefix` whose rate windows last `window_ms`.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>, window_ms: u64) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            window_ms: window_ms.max(1),
        }
    }

    fn record_key(&self, id: &KeyId) -> String {
        format!("{}key:{{{id}}}", self.prefix)
    }

    fn inflight_key(&self, id: &KeyId) -> String {
        format!("{}key:{{{id}}}:inflight", self.prefix)
    }

    fn usage_key(&self, id: &KeyId) -> String {
        format!("{}key:{{{id}}}:usage", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}keys", self.prefix)
    }

    async fn write(
        &self,
        id: &KeyId,
        mode: &str,
        record: &KeyRecord,
        only: Option<&[&str]>,
    ) -> Result<bool, KeyError> {
        let fields: HashMap<String, String> = record.fields().into_iter().collect();
        let mut invocation = WRITE.key(self.record_key(id));
        invocation.arg(mode);
        match only {
            None => {
                for (name, value) in &fields {
                    invocation.arg(name).arg(value);
                }
            }
            Some(names) => {
                for name in names {
                    invocation
                        .arg(*name)
                        .arg(fields.get(*name).map_or("", String::as_str));
                }
            }
        }
        let done: i64 = decode(self.conn.invoke(&invocation).await?)?;
        Ok(done == 1)
    }
}

fn decode<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, KeyError> {
    redis::from_redis_value(value)
        .map_err(|e| KeyError::Backend(BackendError::reply(format!("unexpected reply: {e}"))))
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

#[async_trait]
impl KeyStore for RedisKeys {
    async fn create(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let id = record
            .token
            .clone()
            .ok_or_else(|| KeyError::invalid(None, "a record needs its token"))?;
        if !self.write(&id, "create", record, None).await? {
            return Err(KeyError::Exists);
        }
        self.conn
            .query::<i64>(redis::cmd("SADD").arg(self.index_key()).arg(id.as_str()))
            .await?;
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, KeyError> {
        let fields: Vec<(String, String)> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.record_key(id)))
            .await?;
        Ok(KeyRecord::from_fields(id, fields))
    }

    async fn update(
        &self,
        id: &KeyId,
        record: &KeyRecord,
        fields: &[&str],
    ) -> Result<bool, KeyError> {
        self.write(id, "update", record, Some(fields)).await
    }

    async fn delete(&self, ids: &[KeyId]) -> Result<Vec<KeyId>, KeyError> {
        let mut deleted = Vec::new();
        for id in ids {
            // One key's names share a slot: one DEL per key works on Cluster too.
            let n: i64 = self
                .conn
                .query(
                    redis::cmd("DEL")
                        .arg(self.record_key(id))
                        .arg(self.inflight_key(id))
                        .arg(self.usage_key(id)),
                )
                .await?;
            self.conn
                .query::<i64>(redis::cmd("SREM").arg(self.index_key()).arg(id.as_str()))
                .await?;
            if n > 0 {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }

    async fn list(&self) -> Result<Vec<KeyId>, KeyError> {
        let members: Vec<String> = self
            .conn
            .query(redis::cmd("SMEMBERS").arg(self.index_key()))
            .await?;
        let mut ids: Vec<KeyId> = members.iter().filter_map(|m| KeyId::parse(m)).collect();
        ids.sort();
        Ok(ids)
    }

    async fn reserve(&self, id: &KeyId, r: &Reservation) -> Result<Reserve, KeyError> {
        let mut invocation = RESERVE.key(self.inflight_key(id));
        invocation
            .key(self.usage_key(id))
            .arg(self.window_ms)
            .arg(limit_arg(r.limits.rpm))
            .arg(limit_arg(r.limits.tpm))
            .arg(limit_arg(r.limits.parallel))
            .arg(&r.request_id)
            .arg(r.estimated_tokens)
            .arg(r.lease_ms.max(1));
        let (status, value): (i64, i64) = decode(self.conn.invoke(&invocation).await?)?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(match status {
            0 => Reserve::Granted { window_ms: value },
            1 | 2 => Reserve::RateLimited {
                retry_after_ms: value,
                tokens: status == 2,
            },
            _ => Reserve::Busy,
        })
    }

    async fn release(&self, id: &KeyId, r: &Release) -> Result<(), KeyError> {
        let mut invocation = RELEASE.key(self.inflight_key(id));
        invocation
            .key(self.usage_key(id))
            .arg(&r.request_id)
            .arg(r.window_ms)
            .arg(if r.give_back { "1" } else { "0" })
            .arg(r.estimated_tokens)
            .arg(limit_arg(r.actual_tokens));
        let _: i64 = decode(self.conn.invoke(&invocation).await?)?;
        Ok(())
    }

    async fn renew(&self, id: &KeyId, request_id: &str, lease_ms: u64) -> Result<(), KeyError> {
        let mut invocation = RENEW.key(self.inflight_key(id));
        invocation.arg(request_id).arg(lease_ms.max(1));
        let _: i64 = decode(self.conn.invoke(&invocation).await?)?;
        Ok(())
    }

    async fn add_spend(&self, id: &KeyId, usd: f64, now_ms: u64) -> Result<(), KeyError> {
        if !(usd.is_finite() && usd > 0.0) {
            return Ok(());
        }
        let mut invocation = SPEND.key(self.record_key(id));
        invocation.arg(format!("{usd:.12}")).arg(now_ms);
        let _: String = decode(self.conn.invoke(&invocation).await?)?;
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<KeyUsage, KeyError> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .cmd("ZRANGE")
            .arg(self.inflight_key(id))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("HMGET")
            .arg(self.usage_key(id))
            .arg("w")
            .arg("rpm")
            .arg("tpm");
        let ((secs, micros), slots, window): (
            (u64, u64),
            Vec<(String, f64)>,
            (Option<u64>, Option<u64>, Option<i64>),
        ) = self.conn.pipeline(&pipe).await?;
        let now = secs * 1000 + micros / 1000;
        let win = now - now % self.window_ms;
        let current = window.0 == Some(win);
        #[allow(clippy::cast_precision_loss)]
        let in_flight = slots
            .iter()
            .filter(|(_, until)| *until > now as f64)
            .count() as u64;
        Ok(KeyUsage {
            in_flight,
            rpm_used: if current { window.1.unwrap_or(0) } else { 0 },
            tpm_used: if current {
                u64::try_from(window.2.unwrap_or(0)).unwrap_or(0)
            } else {
                0
            },
        })
    }
}
