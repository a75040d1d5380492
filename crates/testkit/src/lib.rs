//! Test fixtures: a real `redis-server` on a free loopback port and a mock OpenAI-compatible upstream.
//!
//! Layout:
//! - `redis_server`: [`RedisServer`], a `redis-server` process in a temp dir, killed on drop.
//! - `mock_upstream`: [`MockUpstream`], an OpenAI-compatible server with scripted behaviour and a recorder.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let redis = testkit::RedisServer::start().await?;
//! let client = redis::Client::open(redis.url())?;
//! # Ok(()) }
//! ```

mod redis_server;

pub use redis_server::RedisServer;
mod mock_upstream;

pub use mock_upstream::{
    Behavior, MockUpstream, MockUpstreamConfig, Outcome, RecordedRequest, DEFAULT_REPLY,
};
