//! `hold-waiters`: opens N client connections to a proxy, sends one small chat request on each and holds them
//! open without reading, so the requests wait in the queue; for measuring what a waiting request costs.
//!
//! ```text
//! hold-waiters --addr 127.0.0.1:4000 --count 5000 --model hold --key sk-... [--hold-secs 600]
//! ```
//!
//! Prints `holding N` once every request is sent, then every second a line `answered M` while some of them
//! got an answer early (a refusal: a full queue, a wrong key, ...). Exits after `--hold-secs` or when killed;
//! the kernel then closes every connection, and the proxy drops their requests from the queue.
//!
//! Blocking std sockets on one thread: a connection costs this process a file descriptor and a few hundred
//! bytes, so one process holds thousands (raise `ulimit -n`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    addr: SocketAddr,
    count: usize,
    model: String,
    key: Option<String>,
    hold: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut count = 1_000;
    let mut model = "hold".to_owned();
    let mut key = None;
    let mut hold = Duration::from_secs(600);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let text = value()?;
                let parsed: SocketAddr = text
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|e| format!("--addr {text}: {e}"))?;
                if !parsed.ip().is_loopback() {
                    return Err(format!("--addr {text}: loopback addresses only"));
                }
                addr = Some(parsed);
            }
            "--count" => {
                count = value()?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?;
            }
            "--model" => model = value()?,
            "--key" => key = Some(value()?),
            "--hold-secs" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--hold-secs: {e}"))?;
                hold = Duration::try_from_secs_f64(secs)
                    .map_err(|e| format!("--hold-secs: {e}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: hold-waiters --addr HOST:PORT [--count N] [--model M] [--key K] [--hold-secs S]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    // The key may come from the environment so it is not in the process list.
    let key = key.or_else(|| std::env::var("LLM_SCHEDULER_KEY").ok());
    Ok(Args {
        addr,
        count,
        model,
        key,
        hold,
    })
}

fn request(args: &Args) -> Vec<u8> {
    let body = format!(
        "{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello.\"}}],\"max_tokens\":16}}",
        args.model.replace(['"', '\\'], "")
    );
    let auth = args
        .key
        .as_deref()
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{auth}\
         content-length: {}\r\n\r\n{body}",
        args.addr,
        body.len()
    )
    .into_bytes()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("hold-waiters: {message}");
            return ExitCode::from(2);
        }
    };
    let request = request(&args);
    let mut held = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let stream = match TcpStream::connect_timeout(&args.addr, Duration::from_secs(10)) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("hold-waiters: connection {i} failed: {e} (raise ulimit -n?)");
                return ExitCode::FAILURE;
            }
        };
        let sent = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
            .and_then(|()| (&stream).write_all(&request))
            .and_then(|()| stream.set_nonblocking(true));
        if let Err(e) = sent {
            eprintln!("hold-waiters: sending request {i} failed: {e}");
            return ExitCode::FAILURE;
        }
        held.push(Some(stream));
    }
    println!("holding {}", held.len());
    let started = Instant::now();
    let mut answered = 0usize;
    let mut first_answer = None;
    let mut buf = [0u8; 512];
    while started.elapsed() < args.hold {
        std::thread::sleep(Duration::from_secs(1));
        let before = answered;
        for slot in &mut held {
            let Some(stream) = slot else { continue };
            match stream.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Ok(n) => {
                    if first_answer.is_none() {
                        first_answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    answered += 1;
                    *slot = None;
                }
                Err(_) => {
                    answered += 1;
                    *slot = None;
                }
            }
        }
        if answered > before {
            println!("answered {answered}");
            if let Some(first) = first_answer.take() {
                let line = first.lines().next().unwrap_or("");
                println!("first answer: {line}");
            }
        }
    }
    ExitCode::SUCCESS
}
