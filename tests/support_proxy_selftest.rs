//! Tests the fault-injecting proxy (`tests/support/proxy.rs`) itself, once, against a real redis-server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use support::RedisServer;
use support::proxy::{FaultProxy, MAX_CONNECTIONS};

/// Long enough that only a broken proxy hits it, even on a slow CI machine.
const GENEROUS: Duration = Duration::from_secs(5);

/// The timeout a test expects a black-holed command to run into.
const SHORT: Duration = Duration::from_millis(300);

/// A proxy in front of a fresh server. The server is returned too: it must
/// outlive the proxy's connections to it.
fn proxied_server() -> (RedisServer, FaultProxy) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    (server, proxy)
}

/// A sync connection through the proxy whose handshake is done.
fn connect_sync(
    proxy: &FaultProxy,
    read_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(proxy.url_for_redis())?;
    let con = client.get_connection_with_timeout(GENEROUS)?;
    con.set_read_timeout(Some(read_timeout))?;
    Ok(con)
}

/// A multiplexed connection through the proxy whose handshake, and each
/// later command, times out after `timeout`.
async fn connect_async(
    proxy: &FaultProxy,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    redis::Client::open(proxy.url_for_redis())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn ping_sync(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

async fn ping(con: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(con).await
}

/// Polls `proxy.connections()` until it equals `expected`; it lags a client's
/// own close by as long as the proxy thread takes to notice.
fn wait_for_connections(proxy: &FaultProxy, expected: usize) {
    let deadline = Instant::now() + GENEROUS;
    while proxy.connections() != expected {
        assert!(
            Instant::now() < deadline,
            "proxy has {} connections, expected {expected}",
            proxy.connections()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn relays_commands_from_a_sync_test() {
    let (server, proxy) = proxied_server();
    assert_ne!(proxy.addr().port(), server.port());
    assert_eq!(proxy.upstream(), server.addr());
    assert_eq!(
        proxy.url_for_redis(),
        format!("redis://127.0.0.1:{}/", proxy.addr().port())
    );
    assert_eq!(proxy.connections(), 0);

    let mut con = connect_sync(&proxy, GENEROUS).expect("connect through the proxy");
    assert_eq!(ping_sync(&mut con).unwrap(), "PONG");
    let () = redis::cmd("SET")
        .arg("proxy:key")
        .arg("value")
        .query(&mut con)
        .unwrap();
    assert_eq!(server.dbsize(), 1, "the write reached the real server");
    assert_eq!(proxy.connections(), 1);

    drop(con);
    wait_for_connections(&proxy, 0);
}

#[tokio::test]
async fn relays_commands_from_a_tokio_test() {
    let (server, proxy) = proxied_server();
    let mut con = connect_async(&proxy, GENEROUS).await.expect("connect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    let () = redis::AsyncCommands::set(&mut con, "proxy:async", 42)
        .await
        .unwrap();
    let value: i64 = redis::AsyncCommands::get(&mut con, "proxy:async")
        .await
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(server.dbsize(), 1);
}

#[tokio::test]
async fn latency_delays_every_round_trip() {
    let (_server, proxy) = proxied_server();
    let mut con = connect_async(&proxy, GENEROUS).await.expect("connect");

    proxy.set_latency(Duration::from_millis(50));
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
        // Both the request and the reply wait, so 100 ms is the real floor;
        // only the lower bound is asserted, a slow machine may take longer.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50), "PING took only {took:?}");
    }

    proxy.set_latency(Duration::ZERO);
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
}

#[tokio::test]
async fn blackhole_swallows_commands_until_switched_off() {
    let (_server, proxy) = proxied_server();
    let mut con = connect_async(&proxy, SHORT).await.expect("connect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");

    proxy.blackhole(true);
    let err = ping(&mut con)
        .await
        .expect_err("a black-holed command must not be answered");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");
    // New connections are accepted but never complete their handshake.
    let err = tokio::time::timeout(GENEROUS, connect_async(&proxy, SHORT))
        .await
        .expect("redis-rs gives up on its own")
        .expect_err("a black-holed handshake must not complete");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");

    proxy.blackhole(false);
    // The lost request broke the old connection's framing; a new one works.
    let mut con = connect_async(&proxy, GENEROUS).await.expect("reconnect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
}

#[test]
fn blackhole_times_out_sync_reads() {
    let (_server, proxy) = proxied_server();
    let mut con = connect_sync(&proxy, SHORT).expect("connect");

    proxy.blackhole(true);
    let started = Instant::now();
    let err = ping_sync(&mut con).expect_err("a black-holed command must not be answered");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");
    assert!(started.elapsed() >= SHORT);

    proxy.blackhole(false);
    let mut con = connect_sync(&proxy, GENEROUS).expect("reconnect");
    assert_eq!(ping_sync(&mut con).unwrap(), "PONG");
}

#[test]
fn blackhole_drops_data_and_an_open_connection_flows_again_after() {
    let (server, proxy) = proxied_server();
    // Raw inline commands, so the test sees exactly which bytes got through.
    let mut raw = TcpStream::connect(proxy.addr()).unwrap();
    raw.set_read_timeout(Some(SHORT)).unwrap();

    proxy.blackhole(true);
    raw.write_all(b"SET proxy:lost 1\r\n").unwrap();
    let err = raw
        .read(&mut [0; 16])
        .expect_err("nothing may come back while black-holed");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err:?}"
    );

    proxy.blackhole(false);
    raw.set_read_timeout(Some(GENEROUS)).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    let mut reply = [0; 7];
    raw.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+PONG\r\n", "only the PING's reply arrives");
    assert_eq!(server.dbsize(), 0, "the black-holed SET was dropped");
}

#[tokio::test]
async fn reset_all_breaks_open_connections_only() {
    let (_server, proxy) = proxied_server();
    let mut con = connect_async(&proxy, GENEROUS).await.expect("connect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    assert_eq!(proxy.connections(), 1);

    proxy.reset_all();
    assert_eq!(
        proxy.connections(),
        0,
        "reset_all returns once they are closed"
    );
    let err = ping(&mut con)
        .await
        .expect_err("a reset connection must fail");
    assert!(
        !err.is_timeout(),
        "expected a connection error, got {err:?}"
    );

    let mut con = connect_async(&proxy, GENEROUS).await.expect("reconnect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
}

#[test]
fn reset_all_sends_a_tcp_reset() {
    let (_server, proxy) = proxied_server();
    let mut raw = TcpStream::connect(proxy.addr()).unwrap();
    raw.set_read_timeout(Some(GENEROUS)).unwrap();
    wait_for_connections(&proxy, 1);

    proxy.reset_all();
    let err = raw
        .read(&mut [0; 16])
        .expect_err("a reset is an error, not a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
}

#[tokio::test]
async fn refuse_rejects_new_connections_until_switched_off() {
    let (_server, proxy) = proxied_server();
    let mut open = connect_async(&proxy, GENEROUS).await.expect("connect");

    proxy.refuse(true);
    let refused = async {
        let mut con = connect_async(&proxy, GENEROUS).await?;
        ping(&mut con).await
    };
    let err = tokio::time::timeout(GENEROUS, refused)
        .await
        .expect("a refused connection fails fast")
        .expect_err("a refused connection must fail");
    assert!(
        !err.is_timeout(),
        "expected a connection error, got {err:?}"
    );
    assert_eq!(
        ping(&mut open).await.unwrap(),
        "PONG",
        "open connections are not affected"
    );

    proxy.refuse(false);
    let mut con = connect_async(&proxy, GENEROUS).await.expect("connect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");
}

#[test]
fn refuse_rejects_new_connections_from_a_sync_test() {
    let (_server, proxy) = proxied_server();
    proxy.refuse(true);
    assert!(connect_sync(&proxy, GENEROUS).is_err());
    proxy.refuse(false);
    let mut con = connect_sync(&proxy, GENEROUS).expect("connect");
    assert_eq!(ping_sync(&mut con).unwrap(), "PONG");
}

#[test]
fn connections_beyond_the_cap_are_reset() {
    let (_server, proxy) = proxied_server();
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    wait_for_connections(&proxy, MAX_CONNECTIONS);

    let mut extra = TcpStream::connect(proxy.addr()).unwrap();
    extra.set_read_timeout(Some(GENEROUS)).unwrap();
    let err = extra
        .read(&mut [0; 16])
        .expect_err("a connection over the cap is reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
    assert_eq!(proxy.connections(), MAX_CONNECTIONS);

    drop(held);
    wait_for_connections(&proxy, 0);
}

#[tokio::test]
async fn drop_closes_connections_and_the_port() {
    let (_server, proxy) = proxied_server();
    let addr = proxy.addr();
    let mut con = connect_async(&proxy, GENEROUS).await.expect("connect");
    assert_eq!(ping(&mut con).await.unwrap(), "PONG");

    drop(proxy);
    assert!(
        ping(&mut con).await.is_err(),
        "the relayed connection is closed"
    );
    let err = TcpStream::connect(addr).expect_err("nothing listens any more");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err:?}");
}
