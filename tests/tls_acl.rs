//! TLS and ACL against real redis-server and PostgreSQL processes (issue 13): `rediss://` and PostgreSQL's `sslmode=verify-full` with a throwaway CA made by `openssl`, an ACL user fenced to the namespace with exactly the commands the README lists (on one server and on a cluster), and a wrong password as a clear error that never shows it.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fixtures::{book, pos, price, subscribed};
use mdcache::{
    Backend, BookBid, Cache, CacheAside, Load, MemorySource, Position, PostgresSource, Price,
    Store, Tier, WriteThrough,
};
use support::cli::mdcache;
use support::pg::PgServer;
use support::{RedisServer, TEST_OP_TIMEOUT, free_port, wait_for};

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a server certificate it signed, for `localhost` and 127.0.0.1.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=mdcache test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A redis-server with a TLS port (clients need no certificate of their own) beside its
/// plain one; returns it and the TLS port.
fn tls_server(certs: &Certs) -> (RedisServer, u16) {
    let tls_port = free_port();
    let arg = |p: PathBuf| p.to_string_lossy().into_owned();
    let server = RedisServer::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        arg(certs.path("server.pem")),
        "--tls-key-file".into(),
        arg(certs.path("server.key")),
        "--tls-ca-cert-file".into(),
        arg(certs.path("ca.pem")),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    (server, tls_port)
}

/// TLS handshakes are what these caches wait on first: a generous deadline, and a small pool
/// (each connection is a handshake) so a loaded test run does not turn them into timeouts.
const TLS_OP_TIMEOUT: Duration = Duration::from_secs(10);

fn layered(url: &str) -> mdcache::CacheBuilder {
    Cache::builder()
        .redis_url(url)
        .backend(Backend::Layered)
        .pool_size(std::num::NonZeroU32::new(2).unwrap())
        .op_timeout(TLS_OP_TIMEOUT)
        .flush_timeout(TLS_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(60))
        .ttl_kind("book", Duration::from_secs(60))
        .ttl_kind("pos", Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_file_serves_and_publishes_and_without_it_is_refused() {
    let certs = Certs::make();
    let (_server, tls_port) = tls_server(&certs);
    let url = format!("rediss://localhost:{tls_port}/");
    let a = layered(&url)
        .tls_ca_file(certs.path("ca.pem"))
        .build()
        .unwrap();
    let b = layered(&url)
        .tls_ca_file(certs.path("ca.pem"))
        .build()
        .unwrap();
    subscribed(&[&a, &b]).await;

    // Values and books go through Redis over TLS: a fresh instance reads them from L2.
    let p = b.key::<Price>("TLS").unwrap();
    b.set(&p, price(3), 3).await.unwrap();
    let bid = b.key::<BookBid>("TLS").unwrap();
    b.set_book(&bid, book([(100.0, 1.0), (99.5, 2.0)]), 3)
        .await
        .unwrap();
    b.flush().await.unwrap();
    let fresh = layered(&url)
        .tls_ca_file(certs.path("ca.pem"))
        .backplane(false)
        .build()
        .unwrap();
    let r = fresh.read(&p).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, 3));
    let side = fresh.read_book(&bid, 5).await.unwrap().unwrap();
    assert_eq!((side.tier, side.value.levels.len()), (Tier::L2, 2));

    // The backplane runs over TLS too: A holds version 3 in L1, B writes 4, A sees it.
    let pa = a.key::<Price>("TLS").unwrap();
    wait_for("A to hear of version 3", || {
        a.stats().backplane.is_some_and(|s| s.applied >= 1)
    })
    .await;
    b.set(&p, price(4), 4).await.unwrap();
    b.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = a.read(&pa).await.unwrap().unwrap();
        if r.version == 4 {
            assert_eq!(r.tier, Tier::L1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A still reads {r:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Without the CA, the server's certificate chains to nothing the client trusts.
    let untrusting = Cache::builder()
        .redis_url(&url)
        .backend(Backend::Redis)
        .pool_size(std::num::NonZeroU32::MIN)
        .op_timeout(TLS_OP_TIMEOUT)
        .backplane(false)
        .build()
        .unwrap();
    let e = untrusting.read(&p).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A plain client on the TLS port gets nowhere either.
    let plain = Cache::builder()
        .redis_url(format!("redis://localhost:{tls_port}/"))
        .backend(Backend::Redis)
        .op_timeout(Duration::from_millis(500))
        .backplane(false)
        .build()
        .unwrap();
    assert!(plain.read(&p).await.is_err());
}

/// The ACL rule of a user fenced to the `mdc` namespace with the commands mdcache needs, as
/// the README's "TLS and ACL" gives it.
const ACL_RULE: &[&str] = &[
    "on",
    ">Engine-Pw-7c1f0e",
    "resetkeys",
    "~mdc:*",
    "resetchannels",
    "&mdc:*",
    "-@all",
    "+ping",
    "+get",
    "+set",
    "+mget",
    "+pttl",
    "+unlink",
    "+scan",
    "+multi",
    "+exec",
    "+evalsha",
    "+script|load",
    "+publish",
    "+subscribe",
    "+type",
    "+del",
    "+pexpire",
    "+pexpireat",
    "+zadd",
    "+zcard",
    "+zrange",
    "+zrevrange",
];

/// Runs `ACL SETUSER engine RULE…` on `server`, with `+client|setinfo` where the server has
/// that command (Redis 7.2 and later, Valkey: redis-rs sends it on connect).
async fn acl_user(server: &RedisServer) {
    acl_user_with(server, &[]).await;
}

/// [`acl_user`] with `more` rules.
async fn acl_user_with(server: &RedisServer, more: &[&str]) {
    let mut c = server.multiplexed().await;
    let setuser = |extra: Option<&'static str>| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg("engine")
            .arg(ACL_RULE)
            .arg(more)
            .arg(extra);
        cmd
    };
    if setuser(Some("+client|setinfo"))
        .query_async::<()>(&mut c)
        .await
        .is_err()
    {
        setuser(None).query_async::<()>(&mut c).await.unwrap();
    }
}

/// The entries of the server's `ACL LOG` (commands, keys or channels refused), as text.
async fn acl_log(server: &RedisServer) -> Vec<String> {
    let mut c = server.multiplexed().await;
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut c)
        .await
        .unwrap();
    log.into_iter().map(|e| format!("{e:?}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_fenced_to_the_namespace_can_do_everything_mdcache_does() {
    let server = RedisServer::start();
    acl_user(&server).await;
    let url = format!("redis://127.0.0.1:{}/", server.port());
    let as_engine = |b: mdcache::CacheBuilder| {
        b.redis_username("engine")
            .redis_password("Engine-Pw-7c1f0e")
    };
    let a = as_engine(layered(&url)).build().unwrap();
    // The same user in the URL instead of the setters.
    let b = layered(&format!(
        "redis://engine:Engine-Pw-7c1f0e@127.0.0.1:{}/",
        server.port()
    ))
    .build()
    .unwrap();
    subscribed(&[&a, &b]).await;

    // Market data through the writer (scripts), a book side, write-through of a position,
    // batches, TTLs, a delete, and the backplane between the two.
    let p = b.key::<Price>("ACL").unwrap();
    b.set(&p, price(1), 1).await.unwrap();
    let bid = b.key::<BookBid>("ACL").unwrap();
    b.set_book(&bid, book([(10.0, 1.0), (9.0, 2.0)]), 1)
        .await
        .unwrap();
    b.flush().await.unwrap();
    let src = Arc::new(MemorySource::default());
    let pk = b.key::<Position>("ACL").unwrap();
    WriteThrough::new(b.clone(), Arc::clone(&src))
        .write(&pk, pos(5.0))
        .await
        .unwrap();
    let keys: Vec<_> = (0..3)
        .map(|i| b.key::<Price>(&format!("M{i}")).unwrap())
        .collect();
    b.set_many(keys.iter().map(|k| (k, price(2), 2)))
        .await
        .unwrap();

    let fresh = as_engine(layered(&url)).backplane(false).build().unwrap();
    assert_eq!(fresh.read(&p).await.unwrap().unwrap().tier, Tier::L2);
    assert_eq!(
        fresh.read_book(&bid, 5).await.unwrap().unwrap().tier,
        Tier::L2
    );
    let many = fresh.get_many(&keys).await.unwrap();
    assert!(
        many.iter()
            .all(|r| r.as_ref().is_some_and(|r| r.version == 2))
    );
    let aside = CacheAside::builder(fresh.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    assert_eq!(aside.read(&pk).await.unwrap().unwrap().value.qty, 5.0);
    assert!(fresh.ttl(&p).await.is_ok());
    assert!(b.delete(&pk).await.unwrap());
    b.flush().await.unwrap();
    wait_for("A to hear of B's writes", || {
        a.stats().backplane.is_some_and(|s| s.applied >= 1)
    })
    .await;

    let refused = acl_log(&server).await;
    assert!(
        refused.is_empty(),
        "commands, keys or channels the ACL refused: {refused:#?}"
    );
    for c in [&a, &b, &fresh] {
        let s = c.stats();
        assert_eq!(s.total.errors, 0, "{s:?}");
    }

    // The fence holds: another namespace is refused.
    let outside = as_engine(layered(&url))
        .namespace("other")
        .backplane(false)
        .build()
        .unwrap();
    let e = outside
        .set(&outside.key::<Position>("X").unwrap(), pos(1.0), 1)
        .await;
    assert!(
        matches!(e, Ok(mdcache::WriteOutcome::LocalOnly) | Err(_)),
        "{e:?}"
    );
    assert!(!acl_log(&server).await.is_empty());
}

#[test]
fn a_wrong_password_exits_3_naming_the_cause_and_never_printing_it() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(acl_user(&server));
    let secret = "Wr0ng-Secret-91ab";
    let url = format!("redis://engine:{secret}@127.0.0.1:{}/", server.port());
    for (how, cmd) in [
        ("in the URL", {
            let mut c = mdcache();
            c.args(["--redis", &url, "get", "price", "X"]);
            c
        }),
        ("from CACHE_USERNAME/CACHE_PASSWORD", {
            let mut c = mdcache();
            c.env("CACHE_USERNAME", "engine")
                .env("CACHE_PASSWORD", secret)
                .args(["--redis", &server.url(), "get", "price", "X"]);
            c
        }),
    ] {
        let mut cmd = cmd;
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{how}: {stderr}");
        assert!(
            stderr.contains("WRONGPASS") || stderr.to_lowercase().contains("password"),
            "{how}: the cause is named: {stderr}"
        );
        assert!(!stderr.contains(secret), "{how}: {stderr}");
        assert!(out.stdout.is_empty(), "{how}");
    }
}

/// How many of the server's client backends use TLS, asked over a plain connection.
async fn tls_backends(pg: &PgServer) -> i64 {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_sslmode_verify_full_uses_verified_tls_and_plain_stays_plain() {
    let certs = Certs::make();
    let pg = PgServer::start_with_tls(&certs.path("server.pem"), &certs.path("server.key"));
    let ca = certs.path("ca.pem");
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    );
    let src = PostgresSource::connect(&verified).await.unwrap();
    let probe = Cache::builder().build().unwrap();
    let key = probe.key::<Position>("TLS").unwrap();
    let v = src.write(&key, &pos(7.0)).await.unwrap();
    let loaded = src.load(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.value.qty), (v, 7.0));
    assert!(
        tls_backends(&pg).await >= 1,
        "the source's connections use TLS"
    );
    drop(src);

    // `require` without a root file trusts only the system's roots: this CA is not one.
    let untrusted = format!("{}?sslmode=require", pg.url());
    let e = PostgresSource::connect(&untrusted)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );

    // No sslmode: plain TCP, as before (the server offers TLS; mdcache does not take it).
    let before = tls_backends(&pg).await;
    let plain = PostgresSource::connect(&pg.url()).await.unwrap();
    assert!(plain.load(&key).await.unwrap().is_some());
    assert_eq!(tls_backends(&pg).await, before);
}

/// On a cluster the same user needs one more command, `CLUSTER SLOTS` (the topology), as the
/// README says: every node runs the rule, and none logs a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_on_a_cluster_needs_cluster_slots_too() {
    let cluster = support::cluster::RedisCluster::start();
    for node in &cluster.nodes {
        acl_user_with(node, &["+cluster|slots"]).await;
    }
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let engine = || {
        mdcache::Cache::builder()
            .redis_cluster(seeds.clone())
            .redis_username("engine")
            .redis_password("Engine-Pw-7c1f0e")
            .op_timeout(TEST_OP_TIMEOUT)
            .ttl_kind("price", Duration::from_secs(60))
            .ttl_kind("book", Duration::from_secs(60))
    };
    let (a, b) = (engine().build().unwrap(), engine().build().unwrap());
    subscribed(&[&a, &b]).await;
    let keys: Vec<_> = (0..30)
        .map(|i| b.key::<Price>(&format!("C{i}")).unwrap())
        .collect();
    for k in &keys {
        b.set(k, price(1), 1).await.unwrap();
    }
    let bid = b.key::<BookBid>("C0").unwrap();
    b.set_book(&bid, book([(10.0, 1.0)]), 1).await.unwrap();
    b.flush().await.unwrap();
    b.set_many(keys.iter().map(|k| (k, price(2), 2)))
        .await
        .unwrap();
    let fresh = engine().backplane(false).build().unwrap();
    let many = fresh.get_many(&keys).await.unwrap();
    assert!(
        many.iter()
            .all(|r| r.as_ref().is_some_and(|r| r.version == 2))
    );
    assert_eq!(
        fresh.read_book(&bid, 1).await.unwrap().unwrap().tier,
        Tier::L2
    );
    assert!(fresh.ttl(&keys[0]).await.is_ok());
    assert!(b.delete(&keys[0]).await.unwrap());
    fresh.ping().await.unwrap();
    wait_for("A to hear of B's writes", || {
        a.stats().backplane.is_some_and(|s| s.applied >= 1)
    })
    .await;
    for node in &cluster.nodes {
        let refused = acl_log(node).await;
        assert!(
            refused.is_empty(),
            "node {}: commands, keys or channels the ACL refused: {refused:#?}",
            node.port()
        );
    }
    for c in [&a, &b, &fresh] {
        let s = c.stats();
        assert_eq!(s.total.errors, 0, "{s:?}");
    }
}
