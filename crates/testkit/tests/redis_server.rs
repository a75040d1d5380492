//! `RedisServer`: start, answer, restart on the same port, die on drop and on kill.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use testkit::RedisServer;

async fn ping(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut conn).await
}

/// Polls until nothing accepts connections on `port`, within a bound.
async fn wait_port_closed(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn starts_and_answers() {
    let server = RedisServer::start().await.unwrap();
    assert!(server.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn restart_keeps_port_and_empties_data() {
    let mut server = RedisServer::start().await.unwrap();
    let port = server.port();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, None, "restart must come back with empty data");
}

#[tokio::test]
async fn stop_refuses_connections_until_restart() {
    let mut server = RedisServer::start().await.unwrap();
    server.stop().await;
    assert!(!server.is_running());
    assert!(wait_port_closed(server.port()).await);
    assert!(ping(&server.url()).await.is_err());
    server.restart().await.unwrap();
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn dies_on_drop() {
    let server = RedisServer::start().await.unwrap();
    let port = server.port();
    drop(server);
    assert!(
        wait_port_closed(port).await,
        "server still listening after drop"
    );
}

#[tokio::test]
async fn dies_on_kill() {
    let mut server = RedisServer::start().await.unwrap();
    server.kill();
    assert!(
        wait_port_closed(server.port()).await,
        "server still listening after kill"
    );
    assert!(ping(&server.url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_servers_get_distinct_ports() {
    let starts = (0..20).map(|_| tokio::spawn(RedisServer::start()));
    let servers: Vec<RedisServer> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
    let ports: HashSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 20);
    for server in &servers {
        assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
    }
}

/// With no binary to be found, the error names the setup script.
#[test]
fn missing_binary_names_setup_script() {
    // Runs the lookup in a child process so this process's environment stays untouched.
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args(["--exact", "missing_binary_probe", "--nocapture"])
        .env("LLMS_PROBE_MISSING_REDIS", "1")
        .env("PATH", "/nonexistent")
        .env_remove("REDIS_SERVER_BIN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("scripts/setup.sh"), "{text}");
}

/// Helper for `missing_binary_names_setup_script`; does nothing unless that test runs it.
#[tokio::test]
async fn missing_binary_probe() {
    if std::env::var_os("LLMS_PROBE_MISSING_REDIS").is_none() {
        return;
    }
    let err = RedisServer::start().await.unwrap_err();
    println!("{err:#}");
}
