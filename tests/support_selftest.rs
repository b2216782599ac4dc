//! Tests the shared test harness (`tests/support`) itself, once, against real redis-server processes.

mod support;

use std::time::Duration;

use redis::Commands;
use support::RedisServer;

/// A sync connection whose handshake is done, with a read timeout for later commands.
fn connect(server: &RedisServer, read_timeout: Duration) -> redis::Connection {
    let con = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    con.set_read_timeout(Some(read_timeout))
        .expect("set read timeout");
    con
}

#[test]
fn start_gives_an_empty_answering_server() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );

    let mut con = connect(&server, Duration::from_secs(5));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(server.dbsize(), 0);

    let () = con.set("selftest:key", "value").unwrap();
    assert_eq!(server.dbsize(), 1);
    assert!(!server.log().is_empty(), "redis.log should be written");
}

#[test]
fn pause_makes_commands_time_out_and_resume_recovers() {
    let server = RedisServer::start();
    let mut con = connect(&server, Duration::from_millis(200));

    server.pause();
    let err = redis::cmd("PING")
        .query::<String>(&mut con)
        .expect_err("a paused server must not answer");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");

    server.resume();
    // The timed-out connection may be unusable; a fresh one must work.
    let mut con = connect(&server, Duration::from_secs(5));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(server.dbsize(), 0);
}

#[test]
fn kill_refuses_connections_and_restart_reuses_the_port_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    let mut con = connect(&server, Duration::from_secs(5));
    let () = con.set("selftest:key", "value").unwrap();
    assert_eq!(server.dbsize(), 1);

    server.kill();
    let Err(err) = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
    else {
        panic!("a killed server must refuse connections");
    };
    assert!(
        err.is_connection_refusal(),
        "expected connection refused, got {err:?}"
    );

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.dbsize(), 0, "a restarted server starts empty");
}

#[tokio::test]
async fn multiplexed_connection_works() {
    let server = RedisServer::start();
    let mut con = server.multiplexed().await;
    let () = redis::AsyncCommands::set(&mut con, "selftest:async", 42)
        .await
        .unwrap();
    let value: i64 = redis::AsyncCommands::get(&mut con, "selftest:async")
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(server.dbsize(), 1);
}

#[test]
fn parallel_servers_get_different_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(RedisServer::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(servers[0].port(), servers[1].port());
    for server in &servers {
        assert_eq!(server.dbsize(), 0);
    }
}
