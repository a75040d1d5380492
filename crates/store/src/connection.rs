//! One multiplexed Redis connection kept from a pool (or a Cluster or Sentinel client), every call bounded
//! by a timeout.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::Pool;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, Pipeline,
    RedisFuture, ScriptInvocation, Value,
};

use crate::config::{RedisConfig, RedisTopology};
use crate::function::{self, FunctionSupport, Recovery, StepCall, StepFunction};
use crate::{redact_url, BackendError, BackendErrorKind};

/// Attempts the Cluster client makes for one call (MOVED and ASK redirections, a node that went away
/// during a failover); each attempt and the whole call stay within the call's timeout.
const CLUSTER_RETRIES: u32 = 3;

/// Calls multiplex over one connection taken from the pool and kept while it works; after a connection
/// failure or timeout the next call takes a fresh one from the pool, which health-checks it. This saves the
/// pool's per-checkout PING round trip on every call. Clones share the pool and the connection, so queue,
/// usage and admission scripts of one replica pipeline over one socket. Every failure is a
/// [`BackendError`], classified once (see [`crate::BackendErrorKind`]).
///
/// On a Redis Cluster ([`RedisTopology::Cluster`]) calls go through one Cluster client, which routes each
/// call to the primary of its slot and follows MOVED/ASK and failovers with [`CLUSTER_RETRIES`] bounded
/// attempts. Behind Sentinels ([`RedisTopology::Sentinel`]) the kept connection goes to the primary the
/// Sentinels name; after a failure (a dead primary, or `READONLY` from one that was demoted) the next call
/// asks them again.
#[derive(Clone)]
pub struct RedisConnection {
    source: Source,
    timeout: Duration,
    kept: Arc<Mutex<Option<Conn>>>,
    /// One connection attempt at a time: concurrent calls after a failure wait for it instead of each
    /// opening a connection of its own.
    connecting: Arc<tokio::sync::Mutex<()>>,
    functions: Arc<FunctionSupport>,
}

#[derive(Clone)]
enum Source {
    Pool(Pool),
    Cluster(Arc<redis::cluster::ClusterClient>),
    Sentinel(Arc<SentinelSource>),
}

/// How to reach the primary a group of Sentinels names.
pub(crate) struct SentinelSource {
    pub(crate) sentinels: Vec<ConnectionInfo>,
    pub(crate) service_name: String,
    /// Credentials, database and TLS of the primary; the address is replaced by the Sentinels' answer.
    pub(crate) primary: ConnectionInfo,
}

/// A kept connection: to one server, or the Cluster client's.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Pool(pool) => format!("{:?}", pool.status()),
            Source::Cluster(_) => "cluster".to_owned(),
            Source::Sentinel(s) => format!("sentinel {}", s.service_name),
        };
        f.debug_struct("RedisConnection")
            .field("source", &source)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConnection {
    /// A connection source over `pool`; every call (including getting a connection) is bounded by
    /// `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Self::with_source(Source::Pool(pool), timeout)
    }

    fn with_source(source: Source, timeout: Duration) -> Self {
        Self {
            source,
            timeout,
            kept: Arc::new(Mutex::new(None)),
            connecting: Arc::new(tokio::sync::Mutex::new(())),
            functions: Arc::new(FunctionSupport::default()),
        }
    }

    /// The connection `config` describes (one server through a pool of `pool_size`, a Cluster, or the
    /// Sentinels' primary), every call bounded by `command_timeout`. No connection is made yet; unusable
    /// settings are a [`BackendErrorKind::Config`] error without passwords.
    pub fn connect(config: &RedisConfig) -> Result<Self, BackendError> {
        let timeout = config.command_timeout;
        let source = match &config.topology {
            RedisTopology::Standalone => Source::Pool(config.create_pool()?),
            RedisTopology::Cluster { nodes } => {
                if nodes.is_empty() {
                    return Err(BackendError::config("a Redis Cluster needs startup nodes"));
                }
                let infos = nodes
                    .iter()
                    .map(|n| config.connection_info(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(certs) = config.tls_certificates()? {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| {
                    BackendError::config(format!(
                        "cannot build the Redis Cluster client for {}: {e}",
                        redact_url(&nodes[0])
                    ))
                })?;
                Source::Cluster(Arc::new(client))
            }
            RedisTopology::Sentinel {
                sentinels,
                service_name,
            } => Source::Sentinel(Arc::new(SentinelSource::new(
                config,
                sentinels,
                service_name,
            )?)),
        };
        Ok(Self::with_source(source, timeout))
    }

    /// The pool connections come from, when this reaches one server through a pool.
    pub fn pool(&self) -> Option<&Pool> {
        match &self.source {
            Source::Pool(pool) => Some(pool),
            _ => None,
        }
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The kept connection, or a fresh one from the pool (or the Cluster client, or the Sentinels'
    /// primary).
    async fn connection(&self) -> Result<Conn, BackendError> {
        if let Some(conn) = self.kept_connection() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.kept_connection() {
            return Ok(conn);
        }
        let conn = match &self.source {
            Source::Pool(pool) => {
                let pooled = pool.get().await.map_err(BackendError::from)?;
                Conn::Single(MultiplexedConnection::clone(&pooled))
            }
            Source::Cluster(client) => Conn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(BackendError::from)?,
            ),
            Source::Sentinel(sentinel) => Conn::Single(sentinel.primary(self.timeout).await?),
        };
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    fn kept_connection(&self) -> Option<Conn> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the kept connection so the next call takes a health-checked one from the pool (or asks the
    /// Sentinels again). The Cluster client is kept: it reconnects to nodes and refreshes its slot map
    /// itself.
    fn forget(&self) {
        if !matches!(self.source, Source::Cluster(_)) {
            self.kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
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

impl SentinelSource {
    pub(crate) fn new(
        config: &RedisConfig,
        sentinels: &[String],
        service_name: &str,
    ) -> Result<SentinelSource, BackendError> {
        if sentinels.is_empty() || service_name.is_empty() {
            return Err(BackendError::config(
                "Sentinel needs sentinel nodes and a service name",
            ));
        }
        Ok(SentinelSource {
            sentinels: sentinels
                .iter()
                .map(|s| config.connection_info(s))
                .collect::<Result<_, _>>()?,
            service_name: service_name.to_owned(),
            primary: config.connection_info(&config.url)?,
        })
    }

    /// The primary's connection parameters as the first Sentinel that answers names them.
    pub(crate) async fn primary_info(
        &self,
        timeout: Duration,
    ) -> Result<ConnectionInfo, BackendError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut last = None;
        for sentinel in &self.sentinels {
            let asked = async {
                let client = redis::Client::open(sentinel.clone())?;
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service_name)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match asked.await {
                Ok(Some((host, port))) => {
                    let addr = match self.primary.addr() {
                        ConnectionAddr::TcpTls {
                            insecure,
                            tls_params,
                            ..
                        } => ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: *insecure,
                            tls_params: tls_params.clone(),
                        },
                        _ => ConnectionAddr::Tcp(host, port),
                    };
                    return Ok(self.primary.clone().set_addr(addr));
                }
                Ok(None) => {
                    last = Some(BackendError::new(
                        BackendErrorKind::Connection,
                        format!("a sentinel knows no primary named {}", self.service_name),
                    ))
                }
                Err(e) => last = Some(BackendError::from(e).context("asking a sentinel")),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::config("no sentinel nodes")))
    }

    /// A connection to the primary the Sentinels name, checked to answer `ROLE` as a primary (a Sentinel
    /// may still name a demoted server for a moment after a failover).
    async fn primary(&self, timeout: Duration) -> Result<MultiplexedConnection, BackendError> {
        let info = self.primary_info(timeout).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let client = redis::Client::open(info).map_err(BackendError::from)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(BackendError::from)?;
        let role: Vec<Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(BackendError::from)?;
        match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(conn),
            _ => Err(BackendError::new(
                BackendErrorKind::Connection,
                "the server the sentinels name is not a primary (yet)",
            )),
        }
    }
}
