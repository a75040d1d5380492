//! Server-sent events: splitting an upstream byte stream into events as they arrive.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::error::{RouterError, UpstreamErrorKind};

/// One event's `data` (lines joined with `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) data: String,
}

impl SseEvent {
    pub(crate) fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }

    /// The event as sent to the client: `data: ...\n\n`.
    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(self.data.len() + 8);
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// Incremental SSE parser: feed bytes, take complete events.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buf: Vec<u8>,
}

impl SseDecoder {
    /// Adds bytes and returns the events they complete.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        // CRLF line endings become LF; JSON payloads never hold a raw CR.
        self.buf
            .extend(chunk.iter().copied().filter(|&b| b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(e) = parse_block(&block[..end]) {
                events.push(e);
            }
        }
        events
    }

    /// The last event when the stream ends without a blank line.
    pub(crate) fn finish(&mut self) -> Option<SseEvent> {
        let block = std::mem::take(&mut self.buf);
        parse_block(&block)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let Some(rest) = line.strip_prefix("data:") else {
            // Comments (`: ping`), `event:`, `id:`, `retry:` carry nothing the client needs from us.
            continue;
        };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(rest);
            }
            None => data = Some(rest.to_owned()),
        }
    }
    data.map(|data| SseEvent { data })
}

/// The events of an upstream SSE body, as they arrive. A transport error ends the stream with an error.
pub(crate) fn events<S>(
    body: S,
    deployment_id: String,
) -> BoxStream<'static, Result<SseEvent, RouterError>>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    struct State<S> {
        body: S,
        decoder: SseDecoder,
        ready: VecDeque<SseEvent>,
        ended: bool,
        deployment_id: String,
    }
    let state = State {
        body: Box::pin(body),
        decoder: SseDecoder::default(),
        ready: VecDeque::new(),
        ended: false,
        deployment_id,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.ready.pop_front() {
                return Some((Ok(e), st));
            }
            if st.ended {
                return None;
            }
            match st.body.next().await {
                Some(Ok(chunk)) => st.ready.extend(st.decoder.push(&chunk)),
                Some(Err(e)) => {
                    st.ended = true;
                    let err = RouterError::upstream(
                        UpstreamErrorKind::Connection,
                        &st.deployment_id,
                        None,
                        format!("stream broke: {}", without_url(&e)),
                        None,
                    );
                    return Some((Err(err), st));
                }
                None => {
                    st.ended = true;
                    st.ready.extend(st.decoder.finish());
                }
            }
        }
    })
    .boxed()
}

/// A reqwest error's text with its source chain, without the URL (an `api_base` may carry credentials).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<upstream>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"a\"").is_empty());
        let e = d.push(b":1}\r\n\r\n: ping\n\ndata: [DONE]\n\n");
        assert_eq!(
            e,
            vec![
                SseEvent {
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    data: "[DONE]".into()
                }
            ]
        );
        assert!(e[1].is_done());
        assert_eq!(e[0].to_bytes(), Bytes::from_static(b"data: {\"a\":1}\n\n"));
        assert!(d.push(b"data: tail").is_empty());
        assert_eq!(
            d.finish(),
            Some(SseEvent {
                data: "tail".into()
            })
        );
    }
}
