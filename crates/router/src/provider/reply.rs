//! [`Reply`]: what a successful upstream call (or a mock) answers with.

use futures::stream::BoxStream;
use serde_json::Value;

use super::sse::SseEvent;
use crate::error::RouterError;

/// A successful upstream answer.
pub(crate) enum Reply {
    Json(Value),
    /// The first event has arrived; the rest follow as the upstream sends them.
    Stream {
        first: SseEvent,
        rest: BoxStream<'static, Result<SseEvent, RouterError>>,
    },
}
