//! One multiplexed Redis connection kept from a pool, every call bounded by a timeout.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::Pool;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, ScriptInvocation, Value};

use crate::function::{self, FunctionSupport, Recovery, StepCall, StepFunction};
use crate::BackendError;

/// Calls multiplex over one connection taken from the pool and kept while it works; after a connection
/// failure or timeout the next call takes a fresh one from the pool, which health-checks it. This saves the
/// pool's per-checkout PING round trip on every call. Clones share the pool and the connection, so queue,
/// usage and admission scripts of one replica pipeline over one socket. Every failure is a
/// [`BackendError`], classified once (see [`crate::BackendErrorKind`]).
#[derive(Clone)]
pub struct RedisConnection {
    pool: Pool,
    timeout: Duration,
    kept: Arc<Mutex<Option<MultiplexedConnection>>>,
    functions: Arc<FunctionSupport>,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("pool", &self.pool.status())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConnection {
    /// A connection source over `pool`; every call (including getting a connection) is bounded by
    /// `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Self {
            pool,
            timeout,
            kept: Arc::new(Mutex::new(None)),
            functions: Arc::new(FunctionSupport::default()),
        }
    }

    /// The pool connections come from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The kept connection, or a fresh one from the pool.
    async fn connection(&self) -> Result<MultiplexedConnection, BackendError> {
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(conn) = kept {
            return Ok(conn);
        }
        let pooled = self.pool.get().await.map_err(BackendError::from)?;
        let conn = MultiplexedConnection::clone(&pooled);
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the kept connection so the next call takes a health-checked one from the pool.
    fn forget(&self) {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.functions.reset();
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(BackendError::timed_out(self.timeout)));
        if result.as_ref().is_err_and(BackendError::is_retryable) {
            self.forget();
        }
        result
    }

    /// Runs one script invocation (EVALSHA, reloading on NOSCRIPT), within the timeout.
    pub async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, BackendError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            invocation
                .invoke_async::<Value>(&mut conn)
                .await
                .map_err(BackendError::from)
        })
        .await
    }

    /// Runs one atomic step, within the timeout: `FCALL` where the server has Functions (loading the
    /// library when the server lacks it: first call, restart, flush), else `EVALSHA` (loading the script on
    /// `NOSCRIPT`). A load and its retry count against the same timeout.
    pub async fn call_step(
        &self,
        step: &StepFunction,
        call: &StepCall,
    ) -> Result<Value, BackendError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            if self.functions.try_functions() {
                match call.fcall(step).query_async::<Value>(&mut conn).await {
                    Ok(value) => {
                        self.functions.set(true);
                        return Ok(value);
                    }
                    Err(err) => match function::recovery(&err) {
                        Recovery::LoadLibrary => {
                            let loaded = function::load_library(step)
                                .query_async::<Value>(&mut conn)
                                .await;
                            match loaded {
                                Ok(_) => {
                                    self.functions.set(true);
                                    return call
                                        .fcall(step)
                                        .query_async::<Value>(&mut conn)
                                        .await
                                        .map_err(BackendError::from);
                                }
                                // Not allowed to load Functions (an ACL without FUNCTION): scripts.
                                Err(err) if err.is_io_error() || err.is_timeout() => {
                                    return Err(BackendError::from(err))
                                }
                                Err(_) => self.functions.set(false),
                            }
                        }
                        Recovery::UseScripts => self.functions.set(false),
                        Recovery::LoadScript | Recovery::None => {
                            return Err(BackendError::from(err))
                        }
                    },
                }
            }
            match call.evalsha(step).query_async::<Value>(&mut conn).await {
                Err(err) if matches!(function::recovery(&err), Recovery::LoadScript) => {
                    function::load_script(step)
                        .query_async::<Value>(&mut conn)
                        .await
                        .map_err(BackendError::from)?;
                    call.evalsha(step)
                        .query_async::<Value>(&mut conn)
                        .await
                        .map_err(BackendError::from)
                }
                result => result.map_err(BackendError::from),
            }
        })
        .await
    }

    /// Runs a pipeline within the timeout.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BackendError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            pipe.query_async::<T>(&mut conn)
                .await
                .map_err(BackendError::from)
        })
        .await
    }

    /// Runs one command within the timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackendError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(BackendError::from)
        })
        .await
    }
}
