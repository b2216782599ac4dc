//! The HTTP admin API (`mdcache::admin::http`, issue 14) over a real socket with a real HTTP client against a real redis-server: bearer-token checks (none, wrong, a prefix of the right one), open `/health` and `/metrics`, patterns refused before any `SCAN`, dry runs, `DELETE`, TTLs, body limits, and a 100 k-key clear while other requests are answered.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::{Duration, Instant};

use fixtures::price;
use mdcache::admin::http::{AdminToken, router};
use mdcache::{Backend, Cache, Price};
use reqwest::StatusCode;
use serde_json::Value;
use support::RedisServer;

const TOKEN: &str = "test-token-0123456789abcdef0123456789";

/// The router on a free port; its base URL.
async fn serve(cache: Cache, metrics: bool) -> String {
    let handle = metrics.then(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle()
    });
    let app = router(cache, AdminToken::new(TOKEN).unwrap(), handle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Redis)
        .no_conflation()
        .op_timeout(Duration::from_secs(2))
        .ttl_kind("price", Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `DELETE /api/cache/keys?pattern=PATTERN` (already URL-encoded) with the token: its answer.
async fn delete(http: &reqwest::Client, base: &str, pattern: &str) -> Value {
    http.delete(format!("{base}/api/cache/keys?pattern={pattern}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Calls of `SCAN` the server has answered (`INFO commandstats`).
fn scans(server: &RedisServer) -> u64 {
    let mut c = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_but_health_and_metrics_needs_the_token() {
    let server = RedisServer::start();
    let base = serve(cache(&server), true).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/cache/keys?pattern=*");
    let status = |r: reqwest::Response| r.status();
    // No token, a wrong one, a prefix of the right one, the right one as Basic: 401.
    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    for auth in [
        format!("Bearer {}", "x".repeat(TOKEN.len())),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let r = http
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), StatusCode::UNAUTHORIZED, "{auth}");
    }
    for path in ["/api/cache/stats", "/api/cache/ttl/price/AAPL"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(status(r), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = http
        .post(format!("{base}/api/cache/clear"))
        .json(&serde_json::json!({"kind": "price"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), StatusCode::UNAUTHORIZED);
    let r = http.delete(&url).send().await.unwrap();
    assert_eq!(status(r), StatusCode::UNAUTHORIZED);
    // The right token: 200.
    let ok = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["keys"], serde_json::json!([]));
    // Open: health and metrics.
    let h = http
        .get(format!("{base}/api/cache/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), StatusCode::OK);
    let h: Value = h.json().await.unwrap();
    assert_eq!(h["redis_ok"], true);
    let m = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(m.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_ttl_and_clear_over_http() {
    let server = RedisServer::start();
    let c = cache(&server);
    for i in 0..20u64 {
        let k = c.key::<Price>(&format!("H{i}")).unwrap();
        c.set(&k, price(1), 1).await.unwrap();
    }
    let base = serve(c.clone(), false).await;
    let http = reqwest::Client::new();
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(TOKEN).send();

    // A bad pattern is 400, and nothing was scanned.
    let before = scans(&server);
    for bad in ["price%20*", "price%0A*", &"x".repeat(300)] {
        let r = get(format!("/api/cache/keys?pattern={bad}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("pattern"),
            "{body}"
        );
    }
    let r = get("/api/cache/keys?pattern=*&cursor=garbage".into())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(scans(&server), before, "a refused pattern scans nothing");

    let page: Value = get("/api/cache/keys?pattern=price:*&limit=1000".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"].as_array().unwrap().len(), 20);
    assert_eq!(page["next"], Value::Null);

    let t: Value = get("/api/cache/ttl/price/H1".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t["ttl_ms"].as_u64().unwrap() > 60_000, "{t}");
    for (path, status) in [
        ("/api/cache/ttl/price/NOPE", StatusCode::NOT_FOUND),
        ("/api/cache/ttl/nokind/H1", StatusCode::BAD_REQUEST),
        ("/api/cache/ttl/price/a%20b", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(get(path.into()).await.unwrap().status(), status, "{path}");
    }

    let stats: Value = get("/api/cache/stats".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["keys"]["price"], 20, "{stats}");
    assert_eq!(stats["ping"]["samples"], 20, "{stats}");
    assert!(stats["ping"]["p99_us"].as_u64().is_some(), "{stats}");

    // A dry run removes nothing.
    let clear = |body: Value| {
        http.post(format!("{base}/api/cache/clear"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let dry: Value = clear(serde_json::json!({"kind": "price", "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (dry["matched"].as_u64(), dry["removed"].as_u64()),
        (Some(20), Some(0))
    );
    assert_eq!(server.dbsize(), 20);
    // Both or neither of kind and pattern, an unknown field, a body over the limit: refused.
    for body in [
        serde_json::json!({"kind": "price", "pattern": "*"}),
        serde_json::json!({}),
        serde_json::json!({"kind": "price", "everything": true}),
    ] {
        let r = clear(body.clone()).await.unwrap();
        assert!(r.status().is_client_error(), "{body}: {}", r.status());
    }
    let huge = serde_json::json!({"pattern": "x".repeat(8 * 1024)});
    assert_eq!(
        clear(huge).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(server.dbsize(), 20, "nothing removed by refused calls");
    // DELETE removes.
    let gone = delete(&http, &base, "price:%7BH1*").await;
    // H1 and H10..H19.
    assert_eq!(gone["removed"], 11, "{gone}");
    assert_eq!(server.dbsize(), 9);
}

/// `DELETE` of 100,000 keys over HTTP while another client keeps asking `/api/cache/health`:
/// every key removed, every other request answered. The other requests' latency is printed,
/// not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_key_clear_over_http_leaves_room_for_other_requests() {
    let server = RedisServer::start();
    support::fill_keys(&server, 100_000, |i| format!("mdc:price:{{Q{i}}}")).await;
    let base = serve(cache(&server), false).await;
    let http = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = http.get(format!("{base}/api/cache/health")).send().await;
                worst = worst.max(t.elapsed());
                n += 1;
                assert_eq!(r.map(|r| r.status()).ok(), Some(StatusCode::OK));
            }
            (n, worst)
        })
    };
    let started = Instant::now();
    let gone = delete(&http, &base, "price:*").await;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, worst) = prober.await.unwrap();
    assert_eq!(gone["removed"], 100_000, "{gone}");
    assert_eq!(server.dbsize(), 0);
    assert!(n > 0, "the other client was answered during the clear");
    println!(
        "DELETE of 100k keys over HTTP: {took:?} ({:.0} keys/s); /health meanwhile: {n} answers, slowest {worst:?}",
        100_000.0 / took.as_secs_f64()
    );
}

#[test]
fn the_token_comes_from_the_environment_or_a_file_and_is_never_shown() {
    let short = AdminToken::new("short").unwrap_err();
    assert_eq!(short.kind(), mdcache::ErrorKind::Config);
    assert!(!format!("{short}{short:?}").contains("short\""));
    let t = AdminToken::new(TOKEN).unwrap();
    assert!(!format!("{t:?}").contains(TOKEN));
    assert!(t.verify(TOKEN.as_bytes()) && !t.verify(&TOKEN.as_bytes()[1..]));
}
