//! The HTTP admin API (axum): [`router`] serves the [`admin`](super) calls and the Prometheus metrics under a bearer token compared in constant time, with body and time limits — for an engine to mount on its own server, or for `mdcache serve`.
//!
//! | method and path | token | what |
//! |---|---|---|
//! | `GET /api/cache/health` | no | [`health`](super::health) |
//! | `GET /metrics` | no | Prometheus exposition text (503 without a recorder handle) |
//! | `GET /api/cache/stats` | yes | counters, breaker and shards, dirty log, key counts (first 100,000 keys) |
//! | `GET /api/cache/keys?pattern=P&limit=N&cursor=C` | yes | [`keys`](super::keys) |
//! | `GET /api/cache/ttl/{kind}/{id}` | yes | [`ttl`](super::ttl); 404 when not cached |
//! | `POST /api/cache/clear` `{"kind": K}` or `{"pattern": P}`, `"dry_run": bool` | yes | [`clear`](super::clear) |
//! | `DELETE /api/cache/keys?pattern=P` | yes | [`clear`](super::clear), for real |
//!
//! Answers are JSON; an error is `{"error": "..."}` with 400 (bad pattern, kind, id, cursor
//! or body), 401 (no or wrong token; `WWW-Authenticate: Bearer`), 404, 413 (body over
//! [`MAX_BODY`]), 503 (Redis unavailable, or [`REQUEST_TIMEOUT`] passed).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mdcache::admin::http::{AdminToken, router};
//! let cache = mdcache::Cache::builder().redis_url("redis://127.0.0.1:6379").build()?;
//! let token = AdminToken::from_env()?; // CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE
//! let app = router(cache, token, None);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{KeyPattern, ScanCursor};
use crate::cache::Cache;
use crate::error::{Error, ErrorKind};
use crate::outcome::KeyTtl;
use crate::schema::Kind;

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 32;

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 4 * 1024;

/// Longest a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most keys one `GET /api/cache/keys` page may ask for.
pub const MAX_PAGE: usize = 10_000;

/// Keys `GET /api/cache/stats` counts at most.
const STATS_KEYS: u64 = 100_000;
/// `PING`s behind `/api/cache/stats`'s round-trip percentiles.
const STATS_PINGS: u32 = 20;

/// The admin API's bearer token. Only its SHA-256 digest is kept; `Debug` shows nothing of
/// it. A presented token is hashed and the two digests compared in constant time, so neither
/// its content nor its length shows in the time an answer takes.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// A token of at least [`MIN_TOKEN_LEN`] bytes; anything shorter is a configuration error
    /// naming `CACHE_ADMIN_TOKEN` (and never showing the token).
    pub fn new(secret: &str) -> crate::Result<Self> {
        if secret.len() < MIN_TOKEN_LEN {
            return Err(Error::config(
                "CACHE_ADMIN_TOKEN",
                format!(
                    "the admin token must be at least {MIN_TOKEN_LEN} bytes (got {})",
                    secret.len()
                ),
            ));
        }
        Ok(AdminToken {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// From `CACHE_ADMIN_TOKEN`, or the file `CACHE_ADMIN_TOKEN_FILE` names (one trailing
    /// newline ignored). Neither, both, an unreadable file or a short token: an error — the
    /// admin API does not run without a token.
    pub fn from_env() -> crate::Result<Self> {
        let inline = std::env::var("CACHE_ADMIN_TOKEN").ok();
        let file = std::env::var("CACHE_ADMIN_TOKEN_FILE").ok();
        match (inline, file) {
            (Some(_), Some(_)) => Err(Error::config(
                "CACHE_ADMIN_TOKEN_FILE",
                "set CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE, not both",
            )),
            (Some(t), None) => Self::new(&t),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::config("CACHE_ADMIN_TOKEN_FILE", format!("cannot read {path}: {e}"))
                })?;
                let t = text.strip_suffix('\n').unwrap_or(&text);
                let t = t.strip_suffix('\r').unwrap_or(t);
                Self::new(t)
            }
            (None, None) => Err(Error::config(
                "CACHE_ADMIN_TOKEN",
                "the admin API needs a bearer token: set CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE",
            )),
        }
    }

    /// True when `presented` is the token (constant time over the digests).
    pub fn verify(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    cache: Cache,
    token: Arc<AdminToken>,
    metrics: Option<PrometheusHandle>,
}

/// The admin API over `cache` (see the module documentation), guarded by `token`; `/metrics`
/// renders `metrics` (e.g. from
/// [`install_prometheus_recorder`](crate::metrics::install_prometheus_recorder)).
pub fn router(cache: Cache, token: AdminToken, metrics: Option<PrometheusHandle>) -> Router {
    let state = AppState {
        cache,
        token: Arc::new(token),
        metrics,
    };
    let guarded = Router::new()
        .route("/api/cache/stats", get(stats))
        .route("/api/cache/keys", get(keys).delete(delete_keys))
        .route("/api/cache/ttl/{kind}/{id}", get(ttl))
        .route("/api/cache/clear", post(clear))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/api/cache/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(time_limit))
        .with_state(state)
}

/// 401 unless `Authorization: Bearer <token>` carries the token.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(t) if state.token.verify(t) => next.run(request).await,
        _ => {
            let mut r = failure(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// 503 for a request still running after [`REQUEST_TIMEOUT`].
async fn time_limit(request: Request<Body>, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => failure(StatusCode::SERVICE_UNAVAILABLE, "the request took too long"),
    }
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// An mdcache error as an answer: the caller's mistakes 400, the rest 503.
fn error_response(e: &Error) -> Response {
    let status = if e.is_invalid_input() || e.kind() == ErrorKind::Config {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    failure(status, &e.to_string())
}

fn answer(result: crate::Result<Value>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn health(State(state): State<AppState>) -> Response {
    let h = super::health(&state.cache).await;
    let body = json!({
        "redis_ok": h.redis_ok,
        "ping_us": h.ping.map(micros),
        "error": h.ping_error,
        "breaker": h.breaker.map(|b| b.state.as_str()),
        "shards": h.shards.iter().map(|s| json!({
            "first_slot": s.first_slot,
            "primary": s.primary,
            "state": s.breaker.state.as_str(),
        })).collect::<Vec<_>>(),
        "dirty_keys": h.dirty_keys,
        "backplane_lag_p99_us": h.backplane_lag_p99.map(micros),
    });
    let status = if h.redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            // Brings the striped L1 hit counters' exported values up to date first.
            state.cache.stats();
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                )],
                handle.render(),
            )
                .into_response()
        }
        None => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Prometheus recorder was given to the admin router",
        ),
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    let cache = &state.cache;
    let s = cache.stats();
    let t = &s.total;
    let counts = super::count_keys(cache, STATS_KEYS).await;
    let ping = super::ping_series(cache, STATS_PINGS).await.ok();
    let breaker = cache.breaker();
    answer(counts.map(|c| {
        json!({
            "l1_entries": s.l1_entries,
            "l1_bytes": s.l1_bytes,
            "l1_hits": t.l1_hits,
            "l2_hits": t.l2_hits,
            "l1_misses": t.l1_misses,
            "l2_misses": t.l2_misses,
            "source_loads": t.source_loads,
            "errors": t.errors,
            "timeouts": t.timeouts,
            "breaker": breaker.map(|b| json!({
                "state": b.state.as_str(),
                "opened": b.opened,
                "closed": b.closed,
                "rejected": b.rejected,
            })),
            "shards": cache.shard_breakers().iter().map(|s| json!({
                "first_slot": s.first_slot,
                "primary": s.primary,
                "state": s.breaker.state.as_str(),
                "opened": s.breaker.opened,
            })).collect::<Vec<_>>(),
            "dirty_keys": cache.dirty_log().len(),
            "keys": c.by_kind,
            "book_stamps": c.book_stamps,
            "other_keys": c.other,
            "keys_complete": c.complete,
            "ping": ping,
        })
    }))
}

/// `?pattern=&limit=&cursor=`.
#[derive(Deserialize)]
struct KeysQuery {
    pattern: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn keys(State(state): State<AppState>, Query(q): Query<KeysQuery>) -> Response {
    let result = async {
        let pattern = KeyPattern::new(&state.cache, &q.pattern)?;
        let from = q
            .cursor
            .as_deref()
            .map(str::parse::<ScanCursor>)
            .transpose()?;
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let page = super::keys(&state.cache, &pattern, from, limit).await?;
        Ok(json!({
            "pattern": pattern.as_str(),
            "keys": page.keys,
            "next": page.next.map(|c| c.to_string()),
        }))
    }
    .await;
    answer(result)
}

/// `?pattern=`.
#[derive(Deserialize)]
struct PatternQuery {
    pattern: String,
}

async fn delete_keys(State(state): State<AppState>, Query(q): Query<PatternQuery>) -> Response {
    let result = async {
        let pattern = KeyPattern::new(&state.cache, &q.pattern)?;
        clear_with(&state.cache, &pattern, false).await
    }
    .await;
    answer(result)
}

/// `{"kind": K}` or `{"pattern": P}`, and `"dry_run"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    kind: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn clear(State(state): State<AppState>, body: Option<Json<ClearBody>>) -> Response {
    let Some(Json(body)) = body else {
        return failure(
            StatusCode::BAD_REQUEST,
            "expected a JSON body: {\"kind\": K} or {\"pattern\": P}, and \"dry_run\"",
        );
    };
    let result = async {
        let pattern = match (&body.kind, &body.pattern) {
            (Some(k), None) => KeyPattern::for_kind(&state.cache, k.parse::<Kind>()?),
            (None, Some(p)) => KeyPattern::new(&state.cache, p)?,
            _ => {
                return Err(Error::InvalidValue {
                    reason: "give exactly one of \"kind\" and \"pattern\"".to_owned(),
                });
            }
        };
        clear_with(&state.cache, &pattern, body.dry_run).await
    }
    .await;
    answer(result)
}

async fn clear_with(cache: &Cache, pattern: &KeyPattern, dry_run: bool) -> crate::Result<Value> {
    let r = super::clear(cache, pattern, dry_run).await?;
    Ok(json!({
        "pattern": pattern.as_str(),
        "matched": r.matched,
        "removed": r.removed,
        "dry_run": r.dry_run,
        "elapsed_ms": u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
    }))
}

async fn ttl(State(state): State<AppState>, Path((kind, id)): Path<(String, String)>) -> Response {
    let result = async {
        let kind = kind.parse::<Kind>()?;
        super::ttl(&state.cache, kind, &id).await
    }
    .await;
    match result {
        Ok((key, KeyTtl::Missing)) => failure(StatusCode::NOT_FOUND, &format!("{key} not cached")),
        Ok((key, KeyTtl::Persistent)) => {
            Json(json!({ "key": key, "ttl_ms": null })).into_response()
        }
        Ok((key, KeyTtl::Expires(d))) => Json(json!({
            "key": key,
            "ttl_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }))
        .into_response(),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_checked_whole_and_never_shown() {
        let secret = "0123456789abcdef0123456789abcdef-extra";
        let t = AdminToken::new(secret).unwrap();
        assert!(t.verify(secret.as_bytes()));
        // A prefix, a longer string, another of the same length: refused.
        assert!(!t.verify(&secret.as_bytes()[..32]));
        assert!(!t.verify(format!("{secret}x").as_bytes()));
        assert!(!t.verify("0123456789abcdef0123456789abcdef-extrA".as_bytes()));
        assert!(!t.verify(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(***)");
        let short = AdminToken::new("too-short").unwrap_err();
        assert!(short.to_string().contains("CACHE_ADMIN_TOKEN"), "{short}");
        assert!(!short.to_string().contains("too-short"), "{short}");
    }
}
