//! `RedisServer`: a spawned server starts, answers, restarts on the same port and dies on drop and on kill; on a
//! shared Redis each fixture owns a fresh prefix and deletes its keys, only those, on drop.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

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

/// Returns from the test when it cannot have a server of its own (`TEST_REDIS_URL` is set).
macro_rules! own_server {
    ($needs:expr) => {
        match RedisServer::start_own($needs).await.unwrap() {
            Some(server) => server,
            None => return,
        }
    };
}

#[tokio::test]
async fn starts_and_answers() {
    let server = own_server!("checks the spawned server's URL");
    assert!(server.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn restart_keeps_port_and_empties_data() {
    let mut server = own_server!("restarts it");
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
    let mut server = own_server!("stops and restarts it");
    server.stop().await;
    assert!(!server.is_running());
    assert!(wait_port_closed(server.port()).await);
    assert!(ping(&server.url()).await.is_err());
    server.restart().await.unwrap();
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn dies_on_drop() {
    let server = own_server!("checks that it dies on drop");
    let port = server.port();
    drop(server);
    assert!(
        wait_port_closed(port).await,
        "server still listening after drop"
    );
}

#[tokio::test]
async fn dies_on_kill() {
    let mut server = own_server!("kills it");
    server.kill();
    assert!(
        wait_port_closed(server.port()).await,
        "server still listening after kill"
    );
    assert!(ping(&server.url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_servers_get_distinct_ports() {
    if testkit::skip_on_external_redis("starts twenty redis-servers of its own") {
        return;
    }
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
        .env_remove(testkit::TEST_REDIS_URL)
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

/// The URL of a Redis to share: `TEST_REDIS_URL`'s, or a server of the test's own standing in for one.
async fn shared_url() -> (Option<RedisServer>, String) {
    match std::env::var(testkit::TEST_REDIS_URL) {
        Ok(url) if !url.trim().is_empty() => (None, url),
        _ => {
            let server = RedisServer::start_own("stands in for a shared Redis")
                .await
                .unwrap()
                .unwrap();
            let url = server.url();
            (Some(server), url)
        }
    }
}

#[tokio::test]
async fn on_a_shared_redis_each_fixture_deletes_its_own_keys_and_no_others() {
    let (_stand_in, url) = shared_url().await;
    let a = RedisServer::external(&url).await.unwrap();
    let b = RedisServer::external(&url).await.unwrap();
    assert!(a.is_external() && b.is_external());
    assert_ne!(a.prefix(), b.prefix());
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A key that is no fixture's: it starts like `a`'s keys without being under `a`'s prefix.
    let neighbour = a.prefix().trim_end_matches(':').to_owned();
    for key in [
        format!("{}one", a.prefix()),
        format!("{}{{g}}:two", a.prefix()),
        format!("{}one", b.prefix()),
        neighbour.clone(),
    ] {
        let () = conn.set(&key, "v").await.unwrap();
    }
    assert_eq!(
        a.keys().await.unwrap(),
        [
            format!("{}one", a.prefix()),
            format!("{}{{g}}:two", a.prefix())
        ]
    );

    let a_prefix = a.prefix().to_owned();
    drop(a);
    assert_eq!(
        conn.exists::<_, u64>(&[format!("{a_prefix}one"), format!("{a_prefix}{{g}}:two")])
            .await
            .unwrap(),
        0,
        "the fixture left its keys"
    );
    assert_eq!(b.keys().await.unwrap(), [format!("{}one", b.prefix())]);
    assert!(conn.exists::<_, bool>(&neighbour).await.unwrap());
    drop(b);
    let () = conn.del(&neighbour).await.unwrap();
}

#[tokio::test]
async fn a_shared_redis_that_does_not_answer_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisServer::external(&format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("does not answer"), "{err:#}");
}

/// A key outside the prefix on a spawned server fails the test when the fixture drops, so a test that
/// forgets the prefix fails where it has a server to itself, not only on a shared Redis.
#[test]
fn a_key_outside_the_prefix_fails_the_test() {
    if testkit::skip_on_external_redis("checks a spawned server's stray keys") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(RedisServer::start()).unwrap();
    rt.block_on(async {
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let () = conn
            .set(format!("{}mine", server.prefix()), "v")
            .await
            .unwrap();
        let () = conn.set("llms:{g}:q", "v").await.unwrap();
    });
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(server)));
    let message = dropped.expect_err("the stray key went unnoticed");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("llms:{g}:q") && message.contains("RedisServer::prefix()"),
        "{message}"
    );
}

/// Stopping, killing or restarting needs a server from `start_own`, also where `start` spawned one.
#[tokio::test]
#[should_panic(expected = "RedisServer::start_own")]
async fn faults_need_a_server_of_the_tests_own() {
    let mut server = RedisServer::start().await.unwrap();
    server.kill();
}
