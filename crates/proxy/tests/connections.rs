//! Connection hygiene of the HTTP server, through a real listener on 127.0.0.1 with short timeouts: silent
//! kept-alive connections, slow request heads and trickled bodies are cut; answers that stream for longer than
//! every timeout, and requests that wait in the queue for longer, are not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream, MockUpstreamConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A proxy served in-process by `proxy::run`; stopped (and awaited) on [`Server::stop`], aborted on drop.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), proxy::RunError>>,
}

impl Server {
    /// `general_settings` gets `timeouts` (YAML lines) added; `model_list` is `models`.
    async fn start(models: &str, timeouts: &str) -> Server {
        let config = proxy::Config::from_yaml_str(&format!(
            "model_list:\n{models}\ngeneral_settings:\n{timeouts}\n"
        ))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::run(listener, config, async {
            let _ = stopped.await;
        }));
        // The listener queues connections from the start; the clocks run from when the server accepts them.
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = format!("http://{addr}/health/liveliness");
        while reqwest::get(&probe).await.is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server did not stop")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MOCKED: &str =
    "  - model_name: m\n    litellm_params: { model: openai/gpt-4o, mock_response: \"hello\" }";

/// Reads one HTTP/1.1 response with a `Content-Length` body: (status, head, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a whole response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed inside a response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head[9..12].parse().unwrap();
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    (status, head, body)
}

/// Waits (at most `within`) until the peer closes `stream`: a read returns EOF or the connection is reset.
/// Returns when, or `None` if it stayed open. Bytes the server still sends are read and dropped.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Instant> {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

const GET_LIVELINESS: &[u8] = b"GET /health/liveliness HTTP/1.1\r\nHost: proxy\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_kept_alive_connections_are_closed_after_the_keepalive_timeout() {
    let keepalive = Duration::from_secs(1);
    let server = Server::start(
        MOCKED,
        "  keepalive_timeout: 1\n  header_read_timeout: 30\n  body_read_timeout: 30",
    )
    .await;

    // 200 connections, each answered once and then silent.
    let mut connections = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(GET_LIVELINESS).await.unwrap();
        let (status, _, _) = read_response(&mut stream).await;
        assert_eq!(status, 200);
        connections.push((stream, Instant::now()));
    }
    let waits: Vec<_> = connections
        .into_iter()
        .map(|(mut stream, answered)| {
            tokio::spawn(async move {
                let closed = closed_within(&mut stream, Duration::from_secs(20)).await;
                closed.map(|at| at.duration_since(answered))
            })
        })
        .collect();
    let mut silences = Vec::new();
    for wait in waits {
        silences.push(
            wait.await
                .unwrap()
                .expect("a silent connection stayed open 20 s, past its keep-alive timeout of 1 s"),
        );
    }
    let shortest = silences.iter().min().unwrap();
    // The server's clock starts when it has sent the answer, a moment before this side read it.
    assert!(
        *shortest >= keepalive - Duration::from_millis(200),
        "a connection was closed {shortest:?} after its answer, before the keep-alive timeout"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"llm_scheduler_connection_timeouts_total{timeout="keepalive"} 200"#),
        "{metrics}"
    );
    // Only the scrape's own connection is left.
    assert!(
        metrics.contains("llm_scheduler_open_connections 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// Sends `bytes` one per `every` until the server closes the connection (or they run out); returns how long
/// after the first byte it closed and how many bytes went out, `None` if it stayed open `within` after the last.
async fn trickle(
    stream: TcpStream,
    bytes: &[u8],
    every: Duration,
    within: Duration,
) -> Option<(Duration, usize)> {
    let (mut read, mut write) = stream.into_split();
    let closed =
        tokio::spawn(async move { closed_within(&mut read, Duration::from_secs(120)).await });
    tokio::pin!(closed);
    let mut ticks = tokio::time::interval(every);
    let started = Instant::now();
    let mut sent = 0;
    for byte in bytes {
        tokio::select! {
            _ = ticks.tick() => {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            at = &mut closed => return at.unwrap().map(|at| (at.duration_since(started), sent)),
        }
    }
    match tokio::time::timeout(within, closed).await {
        Ok(at) => at.unwrap().map(|at| (at.duration_since(started), sent)),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_a_byte_a_second_is_cut_at_the_header_timeout() {
    let header = Duration::from_secs(2);
    let server = Server::start(
        MOCKED,
        "  header_read_timeout: 2\n  keepalive_timeout: 30\n  body_read_timeout: 30",
    )
    .await;
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\r\n";

    // A new connection: the head is due 2 s after the opening.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (after, sent) = trickle(stream, head, Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("a head sent a byte a second was not cut");
    assert!(
        after >= header - Duration::from_millis(200) && after < header + Duration::from_secs(3),
        "cut {after:?} after the first byte"
    );
    assert!(sent < head.len(), "the whole head went out ({sent} bytes)");

    // A kept-alive connection: the next head is due 2 s after its first byte, not after the last answer.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(GET_LIVELINESS).await.unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);
    let (after, _) = trickle(stream, head, Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("a second head sent a byte a second was not cut");
    assert!(
        after >= header - Duration::from_millis(200) && after < header + Duration::from_secs(3),
        "cut {after:?} after the first byte of the second head"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"llm_scheduler_connection_timeouts_total{timeout="header"} 2"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_answered_408_at_the_body_timeout_and_the_connection_closed() {
    let body_timeout = Duration::from_secs(1);
    let server = Server::start(
        MOCKED,
        "  body_read_timeout: 1\n  header_read_timeout: 30\n  keepalive_timeout: 30",
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "a".repeat(200)}]})
        .to_string();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    // The body at 20 bytes a second (about 12 s in all), each byte well within a second of the last.
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for byte in body.as_bytes() {
            ticks.tick().await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the trickled body was not cut");
    writer.abort();
    let after = closed.duration_since(started);
    assert!(
        after >= body_timeout - Duration::from_millis(200)
            && after < body_timeout + Duration::from_secs(4),
        "closed {after:?} after the head"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    let json: Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body_read_timeout"),
        "{json}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_streaming_longer_than_every_timeout_arrives_whole() {
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let reply = words.join(" ");
    let upstream = MockUpstream::start_with(MockUpstreamConfig {
        reply: reply.clone(),
        behavior: Behavior::ok().with_token_latency(Duration::from_millis(100)),
        ..MockUpstreamConfig::default()
    })
    .await
    .unwrap();
    let server = Server::start(
        &format!(
            "  - model_name: s\n    litellm_params: {{ model: openai/gpt-4o, api_base: \"{}\", api_key: sk-up }}",
            upstream.base_url()
        ),
        "  header_read_timeout: 1\n  keepalive_timeout: 1\n  body_read_timeout: 1",
    )
    .await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(
            &json!({"model": "s", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream broke")));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "the stream took {took:?}: not longer than the timeouts"
    );
    let mut content = String::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).unwrap();
        if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
    }
    assert_eq!(content, reply);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_longer_than_every_timeout_is_answered() {
    let server = Server::start(
        "  - model_name: held\n    litellm_params: { model: openai/gpt-4o, mock_response: \"done\", mock_delay: 2.5, \
         max_parallel_requests: 1 }",
        "  header_read_timeout: 1\n  keepalive_timeout: 1\n  body_read_timeout: 1",
    )
    .await;
    let http = reqwest::Client::new();
    let ask = |path: &'static str| {
        let http = http.clone();
        let url = server.url(path);
        async move {
            let response = http
                .post(url)
                .json(&json!({"model": "held", "messages": [{"role": "user", "content": "hi"}], "timeout": 30}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let waited: f64 = response
                .headers()
                .get(proxy::HEADER_QUEUE_WAIT_MS)
                .map_or(0.0, |v| v.to_str().unwrap().parse().unwrap());
            (status, waited)
        }
    };
    // The first request holds the only slot for 2.5 s; the second waits in the queue for it.
    let holder = tokio::spawn(ask("/v1/chat/completions"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .metrics()
        .await
        .contains("llm_scheduler_in_flight_requests 1")
    {
        assert!(Instant::now() < deadline, "the first request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The in-flight gauge counts a request from its arrival, before it holds the slot, so either of the
    // two may be the one that waits: the later one waits for the other's 2.5 s.
    let (status, waited) = ask("/queue/chat/completions").await;
    let (holder_status, holder_waited) = holder.await.unwrap();
    assert_eq!((status, holder_status), (200, 200));
    let waited = waited.max(holder_waited);
    assert!(
        waited > 1000.0,
        "the request waited {waited} ms: not longer than the timeouts"
    );
    server.stop().await;
}
