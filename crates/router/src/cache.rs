//! Response cache: successful non-streaming responses keyed by a hash of the normalised request, in memory
//! (size-bounded) or in Redis.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::request::{AnswerSource, Endpoint};

/// Where cached responses live.
pub(crate) enum CacheStore {
    Memory(moka::sync::Cache<String, Arc<Entry>>),
    Redis {
        /// Every call bounded by the connection's timeout.
        connection: store::RedisConnection,
        keyspace: store::Keyspace,
    },
}

/// A cached response.
pub(crate) struct Entry {
    created_ms: u64,
    ttl: Duration,
    size: u32,
    body: Value,
}

struct EntryExpiry;

impl moka::Expiry<String, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The response cache.
pub(crate) struct ResponseCache {
    store: CacheStore,
    ttl: Duration,
}

impl ResponseCache {
    pub(crate) fn memory(ttl: Duration, max_size_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_size_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| {
                v.size
                    .saturating_add(u32::try_from(k.len()).unwrap_or(u32::MAX))
            })
            .expire_after(EntryExpiry)
            .build();
        Self {
            store: CacheStore::Memory(cache),
            ttl,
        }
    }

    pub(crate) fn redis(
        ttl: Duration,
        connection: store::RedisConnection,
        keyspace: store::Keyspace,
    ) -> Self {
        Self {
            store: CacheStore::Redis {
                connection,
                keyspace,
            },
            ttl,
        }
    }

    /// The cache key of a request: group + endpoint + body without router-only fields (already removed).
    pub(crate) fn key(group: &str, endpoint: Endpoint, body: &Map<String, Value>) -> String {
        let mut text = String::with_capacity(256);
        text.push_str(endpoint.path());
        text.push('\n');
        canonical_json(&Value::Object(body.clone()), &mut text);
        let digest = sha1_smol::Sha1::from(text.as_bytes()).digest().to_string();
        // The group leads so keys of a group stay together (and in its Redis hash slot).
        format!("{group}\u{0}{digest}")
    }

    /// A cached response not older than `max_age`.
    pub(crate) async fn get(&self, key: &str, max_age: Option<Duration>) -> Option<Value> {
        let fresh = |created_ms: u64| match max_age {
            None => true,
            Some(age) => {
                epoch_ms().saturating_sub(created_ms)
                    <= u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
            }
        };
        match &self.store {
            CacheStore::Memory(c) => c
                .get(key)
                .filter(|e| fresh(e.created_ms))
                .map(|e| e.body.clone()),
            CacheStore::Redis {
                connection,
                keyspace,
            } => {
                let rkey = redis_key(keyspace, key);
                let res = connection
                    .query::<Option<String>>(redis::cmd("GET").arg(&rkey))
                    .await;
                let text = match res {
                    Ok(v) => v?,
                    Err(e) => {
                        tracing::warn!(error = %e, "response cache read failed");
                        return None;
                    }
                };
                let mut v: Value = serde_json::from_str(&text).ok()?;
                let created = v.get("t")?.as_u64()?;
                if !fresh(created) {
                    return None;
                }
                Some(v.get_mut("v")?.take())
            }
        }
    }

    /// Stores a response for `ttl` (default: the configured TTL), when it came from a configured deployment:
    /// every later caller of the same request reads it, so a caller's own text (a `mock_response` of the
    /// body) must never get here whatever let it through.
    pub(crate) async fn put(
        &self,
        key: &str,
        body: &Value,
        source: AnswerSource,
        ttl: Option<Duration>,
    ) {
        let ttl = ttl.unwrap_or(self.ttl);
        if ttl.is_zero() || !source.is_cacheable() {
            return;
        }
        let created_ms = epoch_ms();
        match &self.store {
            CacheStore::Memory(c) => {
                let size = u32::try_from(serde_json::to_vec(body).map_or(0, |v| v.len()))
                    .unwrap_or(u32::MAX);
                c.insert(
                    key.to_owned(),
                    Arc::new(Entry {
                        created_ms,
                        ttl,
                        size,
                        body: body.clone(),
                    }),
                );
            }
            CacheStore::Redis {
                connection,
                keyspace,
            } => {
                let rkey = redis_key(keyspace, key);
                let text = serde_json::json!({"t": created_ms, "v": body}).to_string();
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                let res = connection
                    .query::<()>(redis::cmd("SET").arg(&rkey).arg(text).arg("PX").arg(ms))
                    .await;
                if let Err(e) = res {
                    tracing::warn!(error = %e, "response cache write failed");
                }
            }
        }
    }
}

/// `<prefix>{group}:c:<sha1>`: in the group's hash slot.
fn redis_key(keyspace: &store::Keyspace, key: &str) -> String {
    let (group, digest) = key.rsplit_once('\u{0}').unwrap_or(("", key));
    format!("{}:c:{digest}", keyspace.base(group))
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `v` as JSON with object keys sorted, so equal requests hash equally whatever their key order.
pub(crate) fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_ignore_field_order() {
        let a = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let b = json!({"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "g"});
        let (Value::Object(a), Value::Object(b)) = (a, b) else {
            unreachable!()
        };
        assert_eq!(
            ResponseCache::key("g", Endpoint::ChatCompletions, &a),
            ResponseCache::key("g", Endpoint::ChatCompletions, &b)
        );
        assert_ne!(
            ResponseCache::key("g", Endpoint::ChatCompletions, &a),
            ResponseCache::key("g", Endpoint::Completions, &a)
        );
    }

    #[tokio::test]
    async fn memory_cache_round_trip() {
        let c = ResponseCache::memory(Duration::from_secs(60), 1 << 20);
        assert!(c.get("g\u{0}k", None).await.is_none());
        c.put("g\u{0}k", &json!({"a": 1}), AnswerSource::Upstream, None)
            .await;
        assert_eq!(c.get("g\u{0}k", None).await, Some(json!({"a": 1})));
    }

    #[tokio::test]
    async fn answers_a_caller_wrote_are_never_stored() {
        let c = ResponseCache::memory(Duration::from_secs(60), 1 << 20);
        for source in [AnswerSource::RequestMock, AnswerSource::Cache] {
            c.put("g\u{0}k", &json!({"planted": true}), source, None)
                .await;
            assert!(c.get("g\u{0}k", None).await.is_none(), "{source:?}");
        }
        c.put(
            "g\u{0}k",
            &json!({"a": 1}),
            AnswerSource::DeploymentMock,
            None,
        )
        .await;
        assert_eq!(c.get("g\u{0}k", None).await, Some(json!({"a": 1})));
    }
}
