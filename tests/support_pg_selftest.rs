//! Tests the PostgreSQL test harness (`tests/support/pg.rs`) itself, once, against real postgres processes.

mod support;

use support::pg::{self, PgServer};
use tokio_postgres::{Client, NoTls};

/// Connects to `url`, driving the connection on a spawned task.
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(url: &str) -> i32 {
    let client = connect(url).await.expect("connect");
    client.query_one("SELECT 1", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn start_gives_an_answering_server_on_a_free_port() {
    let server = PgServer::start();
    assert_ne!(server.port(), 5432);
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    assert!(server.is_running());
    assert_eq!(select_one(&server.url()).await, 1);
    assert!(
        server
            .log()
            .contains("database system is ready to accept connections"),
        "postgres.log should be written:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn create_database_gives_an_isolated_database() {
    let server = PgServer::start();
    let url_a = server.create_database("selftest_a").await;
    let url_b = server.create_database("selftest_b").await;
    assert_eq!(
        url_a,
        format!("postgres://postgres@127.0.0.1:{}/selftest_a", server.port())
    );

    let a = connect(&url_a).await.unwrap();
    let b = connect(&url_b).await.unwrap();
    let name: String = a
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "selftest_a");
    a.batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    b.batch_execute("CREATE TABLE only_in_b (id int)")
        .await
        .unwrap();
    let tables = |client: Client| async move {
        client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(tables(a).await, ["only_in_a"]);
    assert_eq!(tables(b).await, ["only_in_b"]);
}

#[tokio::test]
async fn stop_refuses_connections_and_start_again_keeps_the_data() {
    let mut server = PgServer::start();
    let port = server.port();
    let client = connect(&server.url()).await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before stop')")
        .await
        .unwrap();

    server.stop();
    assert!(!server.is_running());
    let err = connect(&server.url())
        .await
        .expect_err("a stopped server must refuse connections");
    assert!(
        err.to_string().contains("connect") || err.to_string().contains("refused"),
        "expected a connection error, got {err}"
    );
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "an open connection must fail once the server stopped"
    );
    server.stop(); // stopping a stopped server does nothing

    server.start_again();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let client = connect(&server.url()).await.unwrap();
    let value: String = client
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "before stop");
}

#[tokio::test]
async fn drop_stops_the_server() {
    let server = PgServer::start();
    let url = server.url();
    assert_eq!(select_one(&url).await, 1);
    drop(server);
    assert!(
        connect(&url).await.is_err(),
        "a dropped server must be gone"
    );
}

#[tokio::test]
async fn parallel_servers_get_different_ports() {
    let servers: Vec<PgServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(PgServer::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(servers[0].port(), servers[1].port());
    for server in &servers {
        assert_eq!(select_one(&server.url()).await, 1);
    }
}

#[tokio::test]
async fn shared_returns_the_same_server_and_database_url_isolates() {
    let first = pg::shared();
    let second = pg::shared();
    assert!(std::ptr::eq(first, second));
    assert!(first.is_running());
    assert_eq!(select_one(&first.url()).await, 1);

    let url_a = pg::database_url();
    let url_b = pg::database_url();
    match std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        Some(url) => assert!(url_a == url && url_b == url),
        None => {
            assert_ne!(url_a, url_b);
            assert!(url_a.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", first.port())));
        }
    }
    assert_eq!(select_one(&url_a).await, 1);
    assert_eq!(select_one(&url_b).await, 1);
}
