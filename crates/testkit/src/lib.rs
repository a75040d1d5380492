//! Test fixtures: the Redis a test runs on and a mock OpenAI-compatible upstream.
//!
//! Layout:
//! - `redis_server`: [`RedisServer`], a `redis-server` process of the test's own (in a temp dir, killed on
//!   drop), or, when `TEST_REDIS_URL` is set, a key prefix of its own on that Redis (its keys deleted on
//!   drop); [`skip_on_external_redis`] for tests a shared Redis cannot serve.
//! - `redis_cluster`: [`RedisCluster`] (3 primaries + 3 replicas, one per test binary with
//!   [`RedisCluster::shared`]), [`RedisSentinel`] (a primary, a replica, 3 sentinels) and [`RedisTls`] (a
//!   `rediss://` server with a throwaway CA), all killed by pid on drop.
//! - `mock_upstream`: [`MockUpstream`], an OpenAI-compatible server (and Anthropic's Messages API at
//!   `/v1/messages`) with scripted behaviour and a recorder.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let redis = testkit::RedisServer::start().await?;
//! let client = redis::Client::open(redis.url())?;
//! // Every key of the test goes under its prefix, so tests can share one Redis.
//! let key_prefix = redis.prefix().to_owned();
//! # Ok(()) }
//! ```

mod redis_cluster;
mod redis_server;

pub use redis_cluster::{
    cluster_slot, RedisCluster, RedisSentinel, RedisTls, Shard, CLUSTER_NODE_TIMEOUT,
    SENTINEL_DOWN_AFTER, SENTINEL_SERVICE,
};

pub use redis_server::{skip_on_external_redis, RedisServer, TESTKIT_SKIP_LOG, TEST_REDIS_URL};
mod mock_upstream;

pub use mock_upstream::{
    Behavior, MockUpstream, MockUpstreamConfig, Outcome, RecordedRequest, DEFAULT_REPLY,
};
