//! Passwords never appear in `Debug` output or error messages (issue 9, item 11).
//!
//! No server is needed: every address here refuses connections (port 1), so the cache and the
//! source are built, tried and fail without ever sending a password anywhere.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::Duration;

use fixtures::price;
use mdcache::{Backend, Cache, CacheConfig, PostgresOptions, PostgresSource, Price};

const SECRET: &str = "s3cr3t-pw";

/// Panics, showing `what` with the secret masked, if `text` contains the secret (raw or
/// percent-encoded).
#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for needle in [SECRET, "s3cr3t%2Dpw"] {
        assert!(
            !text.contains(needle),
            "{what} shows the password: {}",
            text.replace(needle, "<SECRET>")
        );
    }
}

/// Every operation of a cache whose Redis refuses connections: the errors must not carry the
/// password either.
async fn failing_operations(cache: &Cache) -> Vec<String> {
    let key = cache.key::<Price>("ES").expect("valid key");
    let mut errors = Vec::new();
    if let Err(e) = cache.ttl(&key).await {
        errors.push(format!("{e} / {e:?}"));
    }
    if let Err(e) = cache.get(&key).await {
        errors.push(format!("{e} / {e:?}"));
    }
    if let Err(e) = cache.delete(&key).await {
        errors.push(format!("{e} / {e:?}"));
    }
    if let Err(e) = cache.set(&key, price(1), 1).await {
        errors.push(format!("{e} / {e:?}"));
    }
    errors
}

#[tokio::test]
async fn a_layered_cache_never_shows_the_redis_password() {
    let builder = Cache::builder()
        .redis_url(format!("redis://trader:{SECRET}@127.0.0.1:1/"))
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(100));
    assert_no_secret("CacheBuilder's Debug", &format!("{builder:?}"));
    let cache = builder.build().expect("builds without connecting");
    assert_no_secret("Cache's Debug", &format!("{cache:?}"));
    assert_no_secret("CacheConfig's Debug", &format!("{:?}", cache.config()));
    assert_no_secret(
        "CacheConfig's pretty Debug",
        &format!("{:#?}", cache.config()),
    );
    // Where it points is still shown: the redaction keeps user, host and port.
    let shown = format!("{:?}", cache.config());
    assert!(shown.contains("redis://trader:***@127.0.0.1:1/"), "{shown}");

    let errors = failing_operations(&cache).await;
    assert!(!errors.is_empty(), "Redis on port 1 must fail something");
    for e in &errors {
        assert_no_secret("an operation's error", e);
    }
    assert_no_secret("Cache's Debug after failures", &format!("{cache:?}"));

    // A URL that does not parse (the database number is not a number) is refused, naming the
    // variable, without showing the password.
    let err = Cache::builder()
        .redis_url(format!("redis://trader:{SECRET}@127.0.0.1:6379/not-a-db"))
        .build()
        .expect_err("invalid URL");
    assert!(err.to_string().contains("CACHE_REDIS_URL"), "{err}");
    assert_no_secret("the configuration error", &format!("{err} / {err:?}"));
}

#[tokio::test]
async fn a_config_from_the_environment_never_shows_its_passwords() {
    let cfg = CacheConfig::from_vars([
        ("CACHE_ADDRESS", "127.0.0.1"),
        ("CACHE_PORT", "1"),
        ("CACHE_PASSWORD", SECRET),
        ("CACHE_OP_TIMEOUT_MS", "200"),
        ("CACHE_CONNECT_TIMEOUT_MS", "100"),
        (
            "DATABASE_URL",
            &format!("postgres://trader:{SECRET}@127.0.0.1:1/trading"),
        ),
    ])
    .expect("valid variables");
    // CACHE_PASSWORD is held apart from the URL, as a `Password`, which the client is given.
    assert!(
        cfg.redis_url
            .as_deref()
            .is_some_and(|u| !u.contains(SECRET))
    );
    assert_eq!(
        cfg.redis_password.as_ref().map(|p| p.expose()),
        Some(SECRET)
    );
    assert_no_secret("CacheConfig's Debug", &format!("{cfg:?}"));
    assert_no_secret("CacheConfig's pretty Debug", &format!("{cfg:#?}"));

    let cache = Cache::builder()
        .config(cfg)
        .build()
        .expect("builds without connecting");
    assert_no_secret("Cache's Debug", &format!("{cache:?}"));
    assert_no_secret("CacheConfig's Debug", &format!("{:?}", cache.config()));
    for e in failing_operations(&cache).await {
        assert_no_secret("an operation's error", &e);
    }
}

fn pg_options() -> PostgresOptions {
    let mut opts = PostgresOptions::default();
    opts.connect_timeout = Duration::from_millis(500);
    opts.pool_size = 1;
    opts
}

#[tokio::test]
async fn the_database_password_never_shows_in_debug_or_errors() {
    let urls = [
        format!("postgres://trader:{SECRET}@127.0.0.1:1/trading"),
        format!("postgresql://:{SECRET}@127.0.0.1:1/trading?connect_timeout=1"),
        format!("host=127.0.0.1 port=1 user=trader password='{SECRET}' dbname=trading"),
        format!("host=127.0.0.1 port=1 user=trader password={SECRET} dbname=trading"),
    ];
    for url in &urls {
        let cfg = CacheConfig::from_vars([("DATABASE_URL", url.as_str())]).expect("valid");
        let shown = format!("{cfg:?}");
        assert_no_secret("CacheConfig's Debug", &shown);
        // Where it points is still shown.
        assert!(shown.contains("127.0.0.1"), "{shown}");

        let err = PostgresSource::connect_with(url, pg_options())
            .await
            .expect_err("nothing listens on port 1");
        assert!(err.is_unavailable(), "{err}");
        assert_no_secret("the connect error", &format!("{err} / {err:?}"));
    }
    for url in [
        // A quoted password that never ends.
        format!("host=127.0.0.1 port=1 password='{SECRET}"),
        // A port that is not a number.
        format!("postgres://trader:{SECRET}@127.0.0.1:port/trading"),
    ] {
        let err = PostgresSource::connect_with(&url, pg_options())
            .await
            .expect_err("does not parse");
        assert_no_secret("the configuration error", &format!("{err} / {err:?}"));
    }
}
