//! [`MemoryKeys`]: the key store of a single instance, the same semantics as Redis under one lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use serde_json::Value;
use store::Clock;

use crate::error::KeyError;
use crate::record::{KeyId, KeyRecord};
use crate::store::{KeyStore, KeyUsage, Release, Reservation, Reserve};

/// Keys in process memory; time from a [`Clock`] (tokio's, so tests can pause it).
#[derive(Debug)]
pub struct MemoryKeys {
    clock: Clock,
    window_ms: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<KeyId, KeyRecord>,
    /// Limits live apart from records (as in Redis): a request may settle after its key was deleted.
    usage: HashMap<KeyId, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Request id -> lease end (epoch ms).
    in_flight: HashMap<String, u64>,
    window: Option<u64>,
    rpm: u64,
    tpm: i64,
}

impl MemoryKeys {
    /// A store whose rate windows last `window_ms`.
    pub fn new(clock: Clock, window_ms: u64) -> Self {
        Self {
            clock,
            window_ms: window_ms.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl KeyStore for MemoryKeys {
    async fn create(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let id = record
            .token
            .clone()
            .ok_or_else(|| KeyError::invalid(None, "a record needs its token"))?;
        self.with(|state| {
            if state.records.contains_key(&id) {
                return Err(KeyError::Exists);
            }
            let mut record = record.clone();
            record.spend = 0.0;
            state.records.insert(id, record);
            Ok(())
        })
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, KeyError> {
        Ok(self.with(|state| state.records.get(id).cloned()))
    }

    async fn update(
        &self,
        id: &KeyId,
        record: &KeyRecord,
        fields: &[&str],
    ) -> Result<bool, KeyError> {
        let new =
            serde_json::to_value(record).map_err(|e| KeyError::invalid(None, e.to_string()))?;
        self.with(|state| {
            let Some(entry) = state.records.get_mut(id) else {
                return Ok(false);
            };
            let mut stored = serde_json::to_value(&*entry)
                .map_err(|e| KeyError::invalid(None, e.to_string()))?;
            if let (Value::Object(stored), Value::Object(new)) = (&mut stored, &new) {
                for field in fields {
                    stored.insert(
                        (*field).to_owned(),
                        new.get(*field).cloned().unwrap_or(Value::Null),
                    );
                }
            }
            *entry = serde_json::from_value(stored)
                .map_err(|e| KeyError::invalid(None, e.to_string()))?;
            Ok(true)
        })
    }

    async fn delete(&self, ids: &[KeyId]) -> Result<Vec<KeyId>, KeyError> {
        Ok(self.with(|state| {
            ids.iter()
                .filter(|id| {
                    state.usage.remove(*id);
                    state.records.remove(*id).is_some()
                })
                .cloned()
                .collect()
        }))
    }

    async fn list(&self) -> Result<Vec<KeyId>, KeyError> {
        Ok(self.with(|state| state.records.keys().cloned().collect()))
    }

    async fn reserve(&self, id: &KeyId, r: &Reservation) -> Result<Reserve, KeyError> {
        let now = self.clock.now_ms();
        let window = self.window_ms;
        let win = now - now % window;
        Ok(self.with(|state| {
            let entry = state.usage.entry(id.clone()).or_default();
            let (rpm, tpm) = if entry.window == Some(win) {
                (entry.rpm, entry.tpm)
            } else {
                (0, 0)
            };
            let retry_after_ms = win + window - now;
            if r.limits.rpm.is_some_and(|limit| rpm + 1 > limit) {
                return Reserve::RateLimited {
                    retry_after_ms,
                    tokens: false,
                };
            }
            let est = i64::try_from(r.estimated_tokens).unwrap_or(i64::MAX);
            if let Some(limit) = r.limits.tpm.map(|l| i64::try_from(l).unwrap_or(i64::MAX)) {
                if (tpm + est > limit && tpm > 0) || limit == 0 {
                    return Reserve::RateLimited {
                        retry_after_ms,
                        tokens: true,
                    };
                }
            }
            entry.in_flight.retain(|_, until| *until > now);
            if r.limits
                .parallel
                .is_some_and(|limit| entry.in_flight.len() as u64 >= limit)
            {
                return Reserve::Busy;
            }
            if entry.window != Some(win) {
                entry.window = Some(win);
                entry.rpm = 0;
                entry.tpm = 0;
            }
            entry.rpm += 1;
            entry.tpm += est;
            entry
                .in_flight
                .insert(r.request_id.clone(), now + r.lease_ms);
            Reserve::Granted { window_ms: win }
        }))
    }

    async fn release(&self, id: &KeyId, r: &Release) -> Result<(), KeyError> {
        self.with(|state| {
            if let Some(entry) = state.usage.get_mut(id) {
                entry.in_flight.remove(&r.request_id);
                if entry.window == Some(r.window_ms) {
                    let est = i64::try_from(r.estimated_tokens).unwrap_or(i64::MAX);
                    if r.give_back {
                        entry.rpm = entry.rpm.saturating_sub(1);
                        entry.tpm -= est;
                    } else if let Some(actual) = r.actual_tokens {
                        entry.tpm += i64::try_from(actual).unwrap_or(i64::MAX) - est;
                    }
                }
            }
        });
        Ok(())
    }

    async fn renew(&self, id: &KeyId, request_id: &str, lease_ms: u64) -> Result<(), KeyError> {
        let now = self.clock.now_ms();
        self.with(|state| {
            if let Some(until) = state
                .usage
                .get_mut(id)
                .and_then(|e| e.in_flight.get_mut(request_id))
            {
                *until = now + lease_ms;
            }
        });
        Ok(())
    }

    async fn add_spend(&self, id: &KeyId, usd: f64, now_ms: u64) -> Result<(), KeyError> {
        self.with(|state| {
            if let Some(record) = state.records.get_mut(id) {
                match (record.budget_reset_at_ms, record.budget_duration_secs) {
                    (Some(reset), Some(secs)) if secs > 0 && now_ms >= reset => {
                        let period = secs * 1000;
                        record.budget_reset_at_ms =
                            Some(reset + ((now_ms - reset) / period + 1) * period);
                        record.spend = usd;
                    }
                    _ => record.spend += usd,
                }
            }
        });
        Ok(())
    }

    async fn usage(&self, id: &KeyId) -> Result<KeyUsage, KeyError> {
        let now = self.clock.now_ms();
        let win = now - now % self.window_ms;
        Ok(self.with(|state| {
            state.usage.get(id).map_or_else(KeyUsage::default, |e| {
                let current = e.window == Some(win);
                KeyUsage {
                    in_flight: e.in_flight.values().filter(|until| **until > now).count() as u64,
                    rpm_used: if current { e.rpm } else { 0 },
                    tpm_used: if current {
                        u64::try_from(e.tpm).unwrap_or(0)
                    } else {
                        0
                    },
                }
            })
        }))
    }
}
