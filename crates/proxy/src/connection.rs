//! One client connection: HTTP/1.1 served by hyper, cut when the client is silent too long.
//!
//! Three timeouts, and only the client's silence counts:
//! - header: a request head must arrive whole within `header_read_timeout`, counted from the connection's
//!   opening, or from the first byte of a later request on a kept-alive connection;
//! - keep-alive: a connection with no request in flight is closed after `keepalive_timeout` without a byte;
//! - body: a request body must arrive whole within `body_read_timeout` of its head ([`ReadDeadline`]), else
//!   the handler answers 408 and the connection closes.
//!
//! While a request is in flight (its body read, then waiting in the queue, then its answer streaming) the header
//! and keep-alive clocks stand still: that is the server's time. hyper's own `header_read_timeout` is not used:
//! it restarts when a response ends, so it would close kept-alive connections at the header timeout too.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ConnectionSettings;
use crate::metrics::ConnectionMetrics;

/// Serves one accepted connection until the client closes it, a timeout cuts it, or `shutdown` fires (then
/// the request in flight finishes and the connection closes). `slot` is this connection's place under
/// `max_connections`, given back when it ends.
pub(crate) async fn serve(
    stream: TcpStream,
    app: axum::Router,
    settings: ConnectionSettings,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let _slot = slot;
    metrics.opened();
    let _open = OnDrop(|| metrics.closed());
    let clock = Arc::new(SilenceClock::new(&settings));
    let io = TokioIo::new(WatchedStream {
        stream,
        clock: Arc::clone(&clock),
    });
    let service = ConnectionService {
        app,
        clock: Arc::clone(&clock),
        body_read_timeout: settings.body_read_timeout,
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timeout is the clock's (see the module docs).
    http.header_read_timeout(None);
    let connection = http.serve_connection(io, service);
    tokio::pin!(connection);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut armed = None;
    let mut draining = false;
    loop {
        let deadline = clock.deadline();
        if let Some(at) = deadline.filter(|at| armed != Some(*at)) {
            sleep.as_mut().reset(at);
            armed = Some(at);
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                return;
            }
            () = clock.changed.notified() => {}
            () = &mut sleep, if deadline.is_some() => {
                armed = None;
                if let Some(timeout) = clock.expired(Instant::now()) {
                    metrics.timed_out(timeout.label());
                    tracing::debug!(timeout = timeout.label(), "client connection cut: the client was silent too long");
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                // hyper closes an idle connection at once and a busy one after its response.
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Runs the closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Which timeout a waiting connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    /// A request head has begun (or the connection is new) and must end by the deadline.
    Header,
    /// No byte since the last response: the keep-alive timeout.
    KeepAlive,
}

impl Timeout {
    fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::KeepAlive => "keepalive",
        }
    }
}

/// Where the connection is between its requests.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request in flight: the client has until `deadline` to send a whole request head.
    Waiting { deadline: Instant, timeout: Timeout },
    /// Requests in flight (one on HTTP/1; counted so the order in which hyper drops a finished response and
    /// calls for the next request does not matter).
    Busy(usize),
}

/// The connection's phase and the deadline it implies; shared by the IO (reads), the service (requests) and
/// the connection task (which sleeps until the deadline and is woken when it moves).
#[derive(Debug)]
struct SilenceClock {
    phase: Mutex<Phase>,
    changed: Notify,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
}

impl SilenceClock {
    fn new(settings: &ConnectionSettings) -> Self {
        Self {
            phase: Mutex::new(Phase::Waiting {
                deadline: Instant::now() + settings.header_read_timeout,
                timeout: Timeout::Header,
            }),
            changed: Notify::new(),
            header_read_timeout: settings.header_read_timeout,
            keepalive_timeout: settings.keepalive_timeout,
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Every update is one assignment: a poisoned lock still holds a whole phase.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Waiting { deadline, .. } => Some(deadline),
            Phase::Busy(_) => None,
        }
    }

    /// The timeout that ran out, if the connection is still waiting past its deadline at `now`.
    fn expired(&self, now: Instant) -> Option<Timeout> {
        match *self.phase() {
            Phase::Waiting { deadline, timeout } if deadline <= now => Some(timeout),
            _ => None,
        }
    }

    /// Bytes arrived: on a silent kept-alive connection a request head has begun.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if let Phase::Waiting {
            timeout: Timeout::KeepAlive,
            ..
        } = *phase
        {
            *phase = Phase::Waiting {
                deadline: Instant::now() + self.header_read_timeout,
                timeout: Timeout::Header,
            };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request head arrived whole: the clocks stop until its response ends. The connection task is not
    /// woken: a timer it armed for the old deadline finds the connection busy and is not armed again.
    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Waiting { .. } => Phase::Busy(1),
            Phase::Busy(n) => Phase::Busy(n + 1),
        };
        drop(phase);
        InFlight(Arc::clone(self))
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        match *phase {
            Phase::Busy(n) if n > 1 => *phase = Phase::Busy(n - 1),
            _ => {
                *phase = Phase::Waiting {
                    deadline: Instant::now() + self.keepalive_timeout,
                    timeout: Timeout::KeepAlive,
                };
                drop(phase);
                self.changed.notify_one();
            }
        }
    }
}

/// One request in flight on the connection, from its head until its response body is dropped (sent whole,
/// or abandoned when the client went away).
#[derive(Debug)]
struct InFlight(Arc<SilenceClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The client's socket, telling the clock when bytes arrive.
struct WatchedStream {
    stream: TcpStream,
    clock: Arc<SilenceClock>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The app as hyper calls it on this connection: each request's body under its read deadline, each response
/// holding the request's [`InFlight`] until hyper drops it.
#[derive(Clone)]
struct ConnectionService {
    app: axum::Router,
    clock: Arc<SilenceClock>,
    body_read_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<InFlightBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.clock.request_started();
        let timeout = self.body_read_timeout;
        let request = request.map(|body| Body::new(ReadDeadline::new(body, timeout)));
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|body| InFlightBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it.
struct InFlightBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body did not arrive whole within `general_settings.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s (general_settings.body_read_timeout)", .0.as_secs_f64())]
pub(crate) struct BodyReadTimeout(Duration);

/// A request body that fails with [`BodyReadTimeout`] when it is not whole by its deadline. The timer is set
/// only when the body first has to wait for the client: a body already in the read buffer costs none.
struct ReadDeadline {
    body: Incoming,
    timeout: Duration,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ReadDeadline {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl hyper::body::Body for ReadDeadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(header: u64, keepalive: u64) -> Arc<SilenceClock> {
        Arc::new(SilenceClock::new(&ConnectionSettings {
            header_read_timeout: Duration::from_secs(header),
            keepalive_timeout: Duration::from_secs(keepalive),
            ..ConnectionSettings::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_is_under_the_header_timeout() {
        let clock = clock(10, 75);
        let start = Instant::now();
        assert_eq!(clock.deadline(), Some(start + Duration::from_secs(10)));
        // Bytes of the first head do not move the deadline: the whole head is due 10 s after the opening.
        tokio::time::advance(Duration::from_secs(4)).await;
        clock.bytes_read();
        assert_eq!(clock.deadline(), Some(start + Duration::from_secs(10)));
        assert_eq!(clock.expired(start + Duration::from_secs(9)), None);
        assert_eq!(
            clock.expired(start + Duration::from_secs(10)),
            Some(Timeout::Header)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_stop_the_clock_and_their_end_starts_the_keepalive_timeout() {
        let clock = clock(10, 75);
        let request = clock.request_started();
        assert_eq!(clock.deadline(), None);
        // Minutes in the queue or streaming are the server's time.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(clock.expired(Instant::now()), None);
        let ended = Instant::now();
        drop(request);
        assert_eq!(clock.deadline(), Some(ended + Duration::from_secs(75)));
        // The first byte of the next request starts its header timeout.
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.bytes_read();
        assert_eq!(
            clock.deadline(),
            Some(Instant::now() + Duration::from_secs(10))
        );
        assert_eq!(
            clock.expired(Instant::now() + Duration::from_secs(10)),
            Some(Timeout::Header)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_waits_for_every_request_in_flight() {
        let clock = clock(10, 75);
        let first = clock.request_started();
        let second = clock.request_started();
        drop(first);
        assert_eq!(clock.deadline(), None);
        drop(second);
        assert!(clock.deadline().is_some());
        tokio::time::advance(Duration::from_secs(75)).await;
        assert_eq!(clock.expired(Instant::now()), Some(Timeout::KeepAlive));
    }
}
