//! The Redis usage store: one Lua script per operation, Redis `TIME` as the clock of every replica.
//! `renew` and `stats` serve the request path; `reserve` and `settle` the tests ([`UsageOps`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::{FromRedisValue, Script, ScriptInvocation};
use store::{BackendError, RedisConnection};

use crate::error::UsageError;
use crate::lua;
use crate::settings::UsageSettings;
use crate::store::{UsageOps, UsageStore};
use crate::types::{
    check_candidates, check_deployment_id, duration_ms, Candidate, DeploymentRef, DeploymentStats,
    LatencySample, Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport,
};

/// Largest number passed to the scripts: Lua numbers are doubles, exact up to 2^53.
const MAX_LUA_INT: u64 = 1 << 53;

/// [`UsageStore`] and [`UsageOps`] in Redis, shared by every replica using the same Redis and key prefix.
///
/// Every operation is one EVALSHA (the script is loaded again after a NOSCRIPT, e.g. after a Redis
/// restart) under [`UsageSettings::command_timeout`]. Clones share the pool.
#[derive(Debug, Clone)]
pub struct RedisUsage {
    connection: RedisConnection,
    settings: UsageSettings,
    scripts: Arc<Scripts>,
}

#[derive(Debug)]
struct Scripts {
    reserve: Script,
    settle: Script,
    renew: Script,
    stats: Script,
}

/// `-1` for "no limit", else the limit (clamped to the exact range of Lua numbers).
fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |v| v.min(MAX_LUA_INT) as i64)
}

fn tokens_arg(tokens: u64) -> u64 {
    tokens.min(MAX_LUA_INT)
}

fn bad_reply(what: &str) -> UsageError {
    UsageError::Backend(BackendError::reply(format!("unexpected reply to {what}")))
}

impl RedisUsage {
    /// A store on an existing pool (shared with the queue). The pool should have wait and create
    /// timeouts; calls are bounded by `settings.command_timeout` regardless.
    pub fn from_pool(pool: Pool, settings: UsageSettings) -> Result<RedisUsage, UsageError> {
        let connection = RedisConnection::new(pool, settings.command_timeout);
        RedisUsage::from_connection(connection, settings)
    }

    /// A store on an existing kept connection (shared with the queue and admission scripts of the same
    /// replica, so they all pipeline over one socket). Calls are bounded by the connection's timeout.
    pub fn from_connection(
        connection: RedisConnection,
        settings: UsageSettings,
    ) -> Result<RedisUsage, UsageError> {
        settings.validate()?;
        Ok(RedisUsage {
            connection,
            settings,
            scripts: Arc::new(Scripts {
                reserve: Script::new(lua::RESERVE_SCRIPT),
                settle: Script::new(lua::SETTLE_SCRIPT),
                renew: Script::new(lua::RENEW_SCRIPT),
                stats: Script::new(lua::STATS_SCRIPT),
            }),
        })
    }

    /// A store with its own pool for `url` (`redis://[:password@]host:port/db`): every step (connect,
    /// response, pool wait, create, recycle) bounded by `settings.command_timeout`. Connects lazily.
    pub fn from_url(url: &str, settings: UsageSettings) -> Result<RedisUsage, UsageError> {
        settings.validate()?;
        // Errors name neither the URL nor its password.
        let pool = store::create_pool(url, 16, settings.command_timeout)
            .map_err(|_| UsageError::InvalidSettings("redis url is not valid".to_owned()))?;
        RedisUsage::from_pool(pool, settings)
    }

    /// The pool this store uses (none on a Redis Cluster or behind Sentinels).
    pub fn pool(&self) -> Option<&Pool> {
        self.connection.pool()
    }

    /// The settings this store uses.
    pub fn settings(&self) -> &UsageSettings {
        &self.settings
    }

    async fn eval<T: FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, UsageError> {
        let value = self
            .connection
            .invoke(invocation)
            .await
            .map_err(|e| UsageError::Backend(e.context(what)))?;
        T::from_redis_value(value).map_err(|_| bad_reply(what))
    }

    async fn query<T: FromRedisValue>(
        &self,
        what: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, UsageError> {
        self.connection
            .pipeline(pipe)
            .await
            .map_err(|e| UsageError::Backend(e.context(what)))
    }
}

#[async_trait]
impl UsageStore for RedisUsage {
    async fn renew(
        &self,
        reservations: &[Reservation],
        lease: Duration,
    ) -> Result<Vec<bool>, UsageError> {
        for r in reservations {
            check_deployment_id(&r.deployment.id)?;
        }
        // Reservation indices per group, groups in first-seen order.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, r) in reservations.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| *g == &*r.deployment.group) {
                Some((_, members)) => members.push(i),
                None => groups.push((&r.deployment.group, vec![i])),
            }
        }
        let mut renewed = vec![false; reservations.len()];
        for (group, members) in groups {
            let keys = self.settings.keyspace.group(group);
            let mut inv = self.scripts.renew.prepare_invoke();
            inv.arg(duration_ms(lease));
            for &i in &members {
                let r = &reservations[i];
                inv.key(keys.deployment_inflight(&r.deployment.id))
                    .arg(&r.id);
            }
            let reply: Vec<i64> = self.eval("renew", &inv).await?;
            if reply.len() != members.len() {
                return Err(bad_reply("renew"));
            }
            for (&i, alive) in members.iter().zip(reply) {
                renewed[i] = alive == 1;
            }
        }
        Ok(renewed)
    }

    async fn cooldown(
        &self,
        deployment: &DeploymentRef,
        duration: Duration,
        reason: &str,
    ) -> Result<(), UsageError> {
        check_deployment_id(&deployment.id)?;
        let key = self
            .settings
            .keyspace
            .group(&deployment.group)
            .deployment_cooldown(&deployment.id);
        let ms = duration_ms(duration);
        let mut pipe = redis::pipe();
        if ms == 0 {
            pipe.cmd("DEL").arg(key).ignore();
        } else {
            pipe.cmd("SET")
                .arg(key)
                .arg(reason)
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        self.query::<()>("cooldown", &pipe).await
    }

    async fn stats(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<DeploymentStats>, UsageError> {
        if deployments.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.settings.keyspace.group(group);
        let mut inv = self.scripts.stats.prepare_invoke();
        for id in deployments {
            check_deployment_id(id)?;
            inv.key(keys.deployment(id))
                .key(keys.deployment_inflight(id))
                .key(keys.deployment_cooldown(id));
        }
        inv.arg(self.settings.window_spec());
        type Row = (u64, u64, u64, Option<String>, Option<String>, i64, u64, u64);
        let rows: Vec<Row> = self.eval("stats", &inv).await?;
        if rows.len() != deployments.len() {
            return Err(bad_reply("stats"));
        }
        Ok(deployments
            .iter()
            .zip(rows)
            .map(
                |(id, (rpm, tpm, in_flight, lat, ttft, cd, ok, fail))| DeploymentStats {
                    id: Arc::clone(id),
                    rpm_used: rpm,
                    tpm_used: tpm,
                    in_flight,
                    latency_ms_per_token: lat.and_then(|s| s.parse().ok()),
                    ttft_ms: ttft.and_then(|s| s.parse().ok()),
                    cooldown_remaining: cooldown_left(cd),
                    successes_in_window: ok,
                    failures_in_window: fail,
                },
            )
            .collect())
    }
}

#[async_trait]
impl UsageOps for RedisUsage {
    async fn reserve(
        &self,
        candidates: &[Candidate],
        request: &ReserveRequest,
    ) -> Result<ReserveOutcome, UsageError> {
        check_candidates(candidates)?;
        let Some(first) = candidates.first() else {
            return Ok(ReserveOutcome::Unavailable { retry_in: None });
        };
        let keys = self.settings.keyspace.group(&first.deployment.group);
        let mut inv = self.scripts.reserve.prepare_invoke();
        for c in candidates {
            let id = &*c.deployment.id;
            inv.key(keys.deployment(id))
                .key(keys.deployment_inflight(id))
                .key(keys.deployment_cooldown(id));
        }
        inv.arg(self.settings.window_spec())
            .arg(request.order.mode())
            .arg(tokens_arg(request.est_tokens))
            .arg(tokens_arg(request.prompt_tokens))
            .arg(&request.reservation_id)
            .arg(duration_ms(request.lease))
            .arg(candidates.len());
        for c in candidates {
            inv.arg(&*c.deployment.id)
                .arg(limit_arg(c.limits.rpm))
                .arg(limit_arg(c.limits.tpm))
                .arg(limit_arg(c.limits.max_parallel.map(u64::from)))
                .arg(limit_arg(c.limits.max_input_tokens))
                .arg(c.limits.tier);
        }
        let reply: Vec<i64> = self.eval("reserve", &inv).await?;
        match *reply.as_slice() {
            [1, index, window_start, _now] => {
                let index = usize::try_from(index - 1)
                    .ok()
                    .filter(|i| *i < candidates.len())
                    .ok_or_else(|| bad_reply("reserve"))?;
                let c = &candidates[index];
                Ok(ReserveOutcome::Reserved(Reservation {
                    id: request.reservation_id.clone(),
                    deployment: c.deployment.clone(),
                    window_start_ms: u64::try_from(window_start)
                        .map_err(|_| bad_reply("reserve"))?,
                    est_tokens: request.est_tokens,
                    candidate_index: index,
                }))
            }
            [0, next_ms, now] => Ok(ReserveOutcome::Unavailable {
                retry_in: (next_ms >= 0)
                    .then(|| Duration::from_millis(next_ms.saturating_sub(now).max(0) as u64)),
            }),
            _ => Err(bad_reply("reserve")),
        }
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
        outcome: Outcome,
        latency: Option<LatencySample>,
    ) -> Result<SettleReport, UsageError> {
        let d = &reservation.deployment;
        check_deployment_id(&d.id)?;
        let keys = self.settings.keyspace.group(&d.group);
        let outcome_code: u8 = match outcome {
            Outcome::Cancelled => 0,
            Outcome::Success => 1,
            Outcome::Failure(_) => 2,
        };
        let lat = latency
            .as_ref()
            .and_then(LatencySample::ms_per_token)
            .unwrap_or(-1.0);
        let ttft = latency
            .as_ref()
            .and_then(LatencySample::ttft_ms)
            .unwrap_or(-1.0);
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(keys.deployment(&d.id))
            .key(keys.deployment_inflight(&d.id))
            .arg(&reservation.id)
            .arg(reservation.window_start_ms)
            .arg(tokens_arg(reservation.est_tokens))
            .arg(actual_tokens.map_or(-1, |a| tokens_arg(a) as i64))
            .arg(outcome_code)
            .arg(self.settings.window_spec())
            .arg(lat)
            .arg(ttft)
            .arg(self.settings.latency_ewma_alpha);
        let (requests, failures): (u64, u64) = self.eval("settle", &inv).await?;
        Ok(SettleReport {
            requests_in_window: requests,
            failures_in_window: failures,
        })
    }

    async fn cooled_down(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Duration)>, UsageError> {
        if deployments.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.settings.keyspace.group(group);
        let mut pipe = redis::pipe();
        for id in deployments {
            check_deployment_id(id)?;
            pipe.cmd("PTTL").arg(keys.deployment_cooldown(id));
        }
        let ttls: Vec<i64> = self.query("cooled_down", &pipe).await?;
        if ttls.len() != deployments.len() {
            return Err(bad_reply("cooled_down"));
        }
        Ok(deployments
            .iter()
            .zip(ttls)
            .filter_map(|(id, ttl)| cooldown_left(ttl).map(|left| (Arc::clone(id), left)))
            .collect())
    }
}

/// Remaining cooldown from a PTTL reply: -2 (no key) and 0 mean none, -1 (no expiry) means indefinite.
fn cooldown_left(pttl: i64) -> Option<Duration> {
    match pttl {
        -1 => Some(Duration::MAX),
        ms if ms > 0 => Some(Duration::from_millis(ms as u64)),
        _ => None,
    }
}
