//! No setting can make an `Instant + Duration` overflow (issue 9, item 5, configuration part):
//! every duration a builder or the environment accepts is at most `MAX_TTL`, and anything
//! larger is an error naming the setting at `build()`, never a panic on first use.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::price;
use mdcache::{
    AsideOptions, Cache, CacheAside, CacheConfig, ErrorKind, MAX_TTL, MemorySource, Position, Price,
};

const HUGE: Duration = Duration::from_millis(u64::MAX);

#[track_caller]
fn assert_config_error(err: mdcache::Error, setting: &str) {
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains(setting), "{setting}: {err}");
}

#[tokio::test]
async fn a_ttl_of_u64_max_ms_fails_at_build_naming_the_variable() {
    for (kind, var) in [
        ("price", "CACHE_TTL_PRICE_MS"),
        ("book", "CACHE_TTL_BOOK_MS"),
        ("book:ask", "CACHE_TTL_BOOK_ASK_MS"),
    ] {
        for ttl in [HUGE, MAX_TTL + Duration::from_millis(1), Duration::MAX] {
            let err = Cache::builder()
                .ttl_kind(kind, ttl)
                .build()
                .expect_err("a TTL above MAX_TTL must not build");
            assert_config_error(err, var);
        }
    }
    // The largest allowed TTL builds and writes without panicking.
    let cache = Cache::builder().ttl_kind("price", MAX_TTL).build().unwrap();
    let key = cache.key::<Price>("ES").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    assert!(cache.get(&key).await.unwrap().is_some());
}

#[test]
fn every_duration_setting_above_max_ttl_fails_at_build_naming_it() {
    type Setter = fn(Duration) -> mdcache::CacheBuilder;
    let cases: [(&str, Setter); 6] = [
        ("CACHE_OP_TIMEOUT_MS", |d| Cache::builder().op_timeout(d)),
        ("CACHE_CONNECT_TIMEOUT_MS", |d| {
            Cache::builder().connect_timeout(d)
        }),
        ("CACHE_PROBE_TIMEOUT_MS", |d| {
            Cache::builder().probe_timeout(d)
        }),
        ("CACHE_BREAKER_OPEN_MS", |d| {
            Cache::builder().breaker_open(d)
        }),
        ("CACHE_BREAKER_WINDOW_MS", |d| {
            Cache::builder().breaker_failure_rate(0.5, d)
        }),
        ("CACHE_TTL_POS_MS", |d| Cache::builder().ttl_kind("pos", d)),
    ];
    for (var, builder) in cases {
        for d in [HUGE, MAX_TTL + Duration::from_nanos(1)] {
            let err = builder(d).build().expect_err("above MAX_TTL");
            assert_config_error(err, var);
        }
        builder(MAX_TTL).build().unwrap();
    }
}

#[test]
fn env_values_of_any_size_are_errors_naming_the_variable_never_panics() {
    let vars = [
        "CACHE_TTL_PRICE_MS",
        "CACHE_TTL_BOOK_BID_MS",
        "CACHE_OP_TIMEOUT_MS",
        "CACHE_CONNECT_TIMEOUT_MS",
        "CACHE_PROBE_TIMEOUT_MS",
        "CACHE_BREAKER_OPEN_MS",
        "CACHE_BREAKER_WINDOW_MS",
    ];
    let above = (MAX_TTL.as_millis() + 1).to_string();
    for var in vars {
        for value in [
            "18446744073709551615",
            "18446744073709551616",
            above.as_str(),
            "99999999999999999999999999999999999999999",
            "-1",
            "0x10",
            "1e9",
            "nope",
            "",
        ] {
            // from_vars is from_env's parser, without touching the process environment.
            let err = CacheConfig::from_vars([(var, value)]).expect_err(value);
            assert_config_error(err, var);
        }
        let at_max = MAX_TTL.as_millis().to_string();
        CacheConfig::from_vars([(var, at_max.as_str())])
            .unwrap()
            .validate()
            .unwrap();
    }
}

fn aside_builder() -> mdcache::CacheAsideBuilder<MemorySource> {
    let cache = Cache::builder().build().unwrap();
    CacheAside::builder(cache, Arc::new(MemorySource::default()))
}

#[tokio::test]
async fn a_negative_ttl_or_stale_bound_above_max_ttl_is_refused_naming_it() {
    for d in [HUGE, MAX_TTL + Duration::from_nanos(1), Duration::MAX] {
        let err = aside_builder().negative_ttl(d).build().unwrap_err();
        assert_config_error(err, "negative_ttl");
        // Stale bounds belong to the cache: every `CacheAside` over it shares the fallback.
        let err = Cache::builder()
            .stale_bound_kind("price", d)
            .build()
            .unwrap_err();
        assert_config_error(err, "stale_bound(price)");
        let err = Cache::builder()
            .stale_bound_kind("pos", d)
            .build()
            .unwrap_err();
        assert_config_error(err, "stale_bound(pos)");
    }
    // At the maximum it builds, and a not-found read is remembered without panicking.
    let cache = Cache::builder()
        .stale_bound_kind("price", MAX_TTL)
        .build()
        .unwrap();
    let aside = CacheAside::builder(cache, Arc::new(MemorySource::default()))
        .negative_ttl(MAX_TTL)
        .build()
        .unwrap();
    let key = aside.cache().key::<Position>("GHOST").unwrap();
    assert!(aside.get(&key).await.unwrap().is_none());
    assert!(aside.get(&key).await.unwrap().is_none());
    assert_eq!(aside.cache().stats().total.negative_hits, 1);
}

#[test]
fn cache_aside_refuses_a_refresh_ahead_fraction_outside_zero_to_one() {
    for fraction in [
        f64::NAN,
        -f64::NAN,
        0.0,
        -0.0,
        1.0,
        -0.5,
        1.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let err = aside_builder()
            .refresh_ahead_kind("price", fraction)
            .build()
            .unwrap_err();
        assert_config_error(err, "refresh_ahead(price)");
    }
    for fraction in [f64::MIN_POSITIVE, 0.2, 0.999] {
        aside_builder()
            .refresh_ahead_kind("price", fraction)
            .build()
            .unwrap();
    }
}

#[test]
fn aside_options_validate_names_the_setting() {
    let mut opts = AsideOptions::default();
    opts.validate().unwrap();
    opts.negative_ttl = Some(HUGE);
    assert_config_error(opts.validate().unwrap_err(), "negative_ttl");
}
