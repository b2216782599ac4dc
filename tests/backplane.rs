//! The backplane (issue 12, DESIGN §4 rule 5) against a real redis-server with two or three `Cache` instances: writes reach other instances' L1 without a TTL running out, older updates never win, a lost subscription or a sequence gap distrusts L1, and receiving never reads Redis.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::Duration;

use fixtures::OnTarget;
use fixtures::{book, pos, price, subscribed};
use mdcache::{Backend, BookBid, Cache, Position, Price, Tier};
use serde::Serialize;
use support::target::{Reach, Target, on_both};
use support::{RedisServer, TEST_OP_TIMEOUT, wait_for};

// Writes, deletes and flushes reach the other instances on one server and on a cluster
// (classic pub/sub, which a cluster forwards to every node).
on_both!(
    a_write_on_b_reaches_a_without_waiting_for_a_ttl,
    an_instance_without_l1_publishes_and_flush_waits_until_it_has,
);

/// A layered cache on `server` whose kinds live a minute: nothing here may depend on a TTL
/// running out.
fn instance(server: &impl Reach) -> Cache {
    Cache::builder()
        .on(server)
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(60))
        .ttl_kind("book", Duration::from_secs(60))
        .ttl_kind("pos", Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads `key` on `cache` until it returns `version` (bounded by `wait_for`'s generous limit).
async fn converges<S>(cache: &Cache, key: &mdcache::Key<S>, version: u64)
where
    S: mdcache::ValueSchema,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = cache.read(key).await.unwrap().map(|r| r.version);
        if seen == Some(version) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} still reads {seen:?}, not {version}",
            key.as_str()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `key` on `cache` until it is gone (bounded like [`converges`]).
async fn gone<S>(cache: &Cache, key: &mdcache::Key<S>)
where
    S: mdcache::ValueSchema,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cache.read(key).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} still holds the deleted key",
            key.as_str()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_write_on_b_reaches_a_without_waiting_for_a_ttl(server: Target) {
    let (a, b) = (instance(&server), instance(&server));
    subscribed(&[&a, &b]).await;

    // A synchronous write (a position: never conflated). A holds v1 in L1 for a minute.
    let (ka, kb) = (
        a.key::<Position>("ES").unwrap(),
        b.key::<Position>("ES").unwrap(),
    );
    b.set(&kb, pos(1.0), 1).await.unwrap();
    converges(&a, &ka, 1).await;
    assert_eq!(a.read(&ka).await.unwrap().unwrap().tier, Tier::L1);
    b.set(&kb, pos(2.0), 2).await.unwrap();
    // Without the backplane A would serve v1 from L1 for the next minute.
    converges(&a, &ka, 2).await;

    // Market data through B's writer: the value itself reaches A's L1.
    let (pa, pb) = (a.key::<Price>("ES").unwrap(), b.key::<Price>("ES").unwrap());
    b.set(&pb, price(1), 1).await.unwrap();
    converges(&a, &pa, 1).await;
    for v in 2..=50 {
        b.set(&pb, price(v), v).await.unwrap();
    }
    converges(&a, &pa, 50).await;
    let r = a.read(&pa).await.unwrap().unwrap();
    assert_eq!((r.tier, r.value.seq), (Tier::L1, 50));

    // A book side likewise, whole.
    let (ba, bb) = (
        a.key::<BookBid>("ES").unwrap(),
        b.key::<BookBid>("ES").unwrap(),
    );
    b.set_book(&bb, book([(99.0, 1.0), (100.0, 2.0)]), 7)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = a.read_book(&ba, 10).await.unwrap()
            && r.version == 7
        {
            // Sorted best first, as a caller's side is.
            assert_eq!(r.value.levels[0].price, 100.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the book never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A delete on B removes A's copy.
    b.delete(&kb).await.unwrap();
    gone(&a, &ka).await;
    let bp = a.stats().backplane.unwrap();
    assert!(bp.received > 0 && bp.applied > 0, "{bp:?}");
    assert_eq!((bp.gaps, bp.malformed), (0, 0), "{bp:?}");
}

/// The wire format, as a test publishes it by hand: the format byte (2), then publisher id,
/// sequence and canary time as big-endian `u64`s, then the items in compact MessagePack,
/// each `{"v": [k, v, e, x]}` (a value: key, version, envelope, expiry in Unix ms).
#[derive(Serialize)]
enum RawItem {
    #[serde(rename = "v")]
    Value {
        k: String,
        v: u64,
        #[serde(with = "serde_bytes")]
        e: Vec<u8>,
        x: u64,
    },
}

/// Publishes message `seq` of a publisher with id 42 that no instance has.
async fn publish_raw(server: &RedisServer, seq: u64, items: Vec<RawItem>) {
    let mut bytes = vec![2u8];
    for word in [42u64, seq, 0] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend_from_slice(&rmp_serde::to_vec(&items).unwrap());
    publish_bytes(server, bytes).await;
}

/// Publishes `bytes` on the namespace's channel.
async fn publish_bytes(server: &RedisServer, bytes: Vec<u8>) {
    let mut c = server.multiplexed().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("mdc:backplane")
        .arg(bytes)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// A price update from publisher 42, living a minute.
fn price_item(key: &mdcache::Key<Price>, v: u64) -> RawItem {
    price_item_expiring(key, v, |now_ms| now_ms + 60_000)
}

/// A price update from publisher 42 whose expiry (Unix ms) is `expiry` of now.
fn price_item_expiring(key: &mdcache::Key<Price>, v: u64, expiry: fn(u64) -> u64) -> RawItem {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    RawItem::Value {
        k: key.as_str().to_owned(),
        v,
        e: mdcache::codec::encode_with_ttl(v, Some(Duration::from_secs(60)), &price(v), 1 << 20)
            .unwrap(),
        x: expiry(now_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_update_never_replaces_a_newer_entry() {
    let server = RedisServer::start();
    let a = instance(&server);
    subscribed(&[&a]).await;
    let pa = a.key::<Price>("NQ").unwrap();
    a.set(&pa, price(5), 5).await.unwrap();
    // Older, then the same version: both ignored, L1 keeps version 5.
    publish_raw(&server, 1, vec![price_item(&pa, 3)]).await;
    publish_raw(&server, 2, vec![price_item(&pa, 5)]).await;
    wait_for("A to receive both", || {
        a.stats().backplane.is_some_and(|s| s.ignored_older >= 2)
    })
    .await;
    let r = a.read(&pa).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, 5, 5));
    // A newer one lands in L1, value and all, without a Redis read.
    publish_raw(&server, 3, vec![price_item(&pa, 9)]).await;
    wait_for("A to apply the newer one", || {
        a.stats().backplane.is_some_and(|s| s.applied >= 1)
    })
    .await;
    let r = a.read(&pa).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, 9, 9));
    let bp = a.stats().backplane.unwrap();
    assert_eq!((bp.gaps, bp.malformed), (0, 0), "{bp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_publishers_sequence_distrusts_l1() {
    let server = RedisServer::start();
    let a = instance(&server);
    subscribed(&[&a]).await;
    // Written by another program (no backplane); A reads it from Redis into L1. (A's own
    // writes stay trusted across an epoch bump: it knows of nothing newer.)
    let other = Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Redis)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(60))
        .no_conflation()
        .build()
        .unwrap();
    let po = other.key::<Price>("GAP").unwrap();
    other.set(&po, price(1), 1).await.unwrap();
    let pa = a.key::<Price>("GAP").unwrap();
    assert_eq!(a.read(&pa).await.unwrap().unwrap().tier, Tier::L2);
    assert_eq!(a.read(&pa).await.unwrap().unwrap().tier, Tier::L1);
    publish_raw(&server, 1, Vec::new()).await;
    wait_for("the first message", || {
        a.stats().backplane.is_some_and(|s| s.received >= 1)
    })
    .await;
    assert_eq!(a.stats().backplane.unwrap().gaps, 0);
    // Message 2 is lost.
    publish_raw(&server, 3, Vec::new()).await;
    wait_for("the gap", || {
        a.stats().backplane.is_some_and(|s| s.gaps == 1)
    })
    .await;
    let bp = a.stats().backplane.unwrap();
    assert_eq!(bp.epoch_bumps, 1, "{bp:?}");
    // What L1 held before the gap is not served again: the read goes to Redis.
    let r = a.read(&pa).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, 1));
    // A message seen already is a duplicate, not a gap.
    publish_raw(&server, 3, Vec::new()).await;
    wait_for("the duplicate", || {
        a.stats().backplane.is_some_and(|s| s.duplicates == 1)
    })
    .await;
    assert_eq!(a.stats().backplane.unwrap().gaps, 1);
    // A message of another format (an incompatible build): whatever it updated is unknown,
    // so L1 is distrusted as for a gap.
    assert_eq!(a.read(&pa).await.unwrap().unwrap().tier, Tier::L1);
    let mut other_format = vec![1u8];
    other_format.extend_from_slice(&[0; 40]);
    publish_bytes(&server, other_format).await;
    wait_for("the unreadable message", || {
        a.stats().backplane.is_some_and(|s| s.malformed == 1)
    })
    .await;
    assert_eq!(a.stats().backplane.unwrap().epoch_bumps, 2);
    assert_eq!(a.read(&pa).await.unwrap().unwrap().tier, Tier::L2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_distrusts_l1_resubscribes_and_converges() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server), instance(&server));
    subscribed(&[&a, &b]).await;
    let (ka, kb) = (
        a.key::<Position>("KILL").unwrap(),
        b.key::<Position>("KILL").unwrap(),
    );
    b.set(&kb, pos(1.0), 1).await.unwrap();
    converges(&a, &ka, 1).await;
    assert_eq!(a.read(&ka).await.unwrap().unwrap().tier, Tier::L1);

    let mut c = server.multiplexed().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(killed >= 2, "killed {killed} subscribers");
    wait_for("A to lose and regain its subscription", || {
        a.stats()
            .backplane
            .is_some_and(|s| s.subscription_losses >= 1 && s.subscribed && s.epoch_bumps >= 2)
    })
    .await;
    // Nothing cached before the loss is served from L1 again.
    let r = a.read(&ka).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, 1));
    subscribed(&[&a, &b]).await;
    b.set(&kb, pos(2.0), 2).await.unwrap();
    converges(&a, &ka, 2).await;
}

/// Top-level read commands Redis has run: a value read is `MULTI GET PTTL EXEC`, a book read
/// an `EVALSHA` of the top script (counted in `cmdstat_zrevrange`/`zrange` inside it).
async fn redis_reads(server: &RedisServer) -> u64 {
    let mut c = server.multiplexed().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter(|l| {
            l.starts_with("cmdstat_multi:")
                || l.starts_with("cmdstat_zrange:")
                || l.starts_with("cmdstat_zrevrange:")
        })
        .filter_map(|l| {
            l.split(',')
                .next()?
                .split("calls=")
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ticks_causes_no_redis_reads_by_the_receivers() {
    let server = RedisServer::start();
    let feed = instance(&server);
    let (a, b) = (instance(&server), instance(&server));
    subscribed(&[&feed, &a, &b]).await;
    let symbols: Vec<String> = (0..100).map(|i| format!("B{i:03}")).collect();
    let fkeys: Vec<_> = symbols
        .iter()
        .map(|s| feed.key::<Price>(s).unwrap())
        .collect();
    // Every receiver holds every symbol (version 1) before the burst.
    for k in &fkeys {
        feed.set(k, price(1), 1).await.unwrap();
    }
    feed.flush().await.unwrap();
    let receivers: Vec<(&Cache, Vec<mdcache::Key<Price>>)> = [&a, &b]
        .into_iter()
        .map(|c| {
            (
                c,
                symbols.iter().map(|s| c.key::<Price>(s).unwrap()).collect(),
            )
        })
        .collect();
    for (c, keys) in &receivers {
        for k in keys {
            converges(c, k, 1).await;
        }
    }
    let before = redis_reads(&server).await;

    // 100,000 ticks: 1,000 versions of each of 100 symbols.
    for v in 2..=1_001u64 {
        for k in &fkeys {
            feed.set(k, price(v), v).await.unwrap();
        }
        if v % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    feed.flush().await.unwrap();
    for (c, keys) in &receivers {
        for k in keys {
            converges(c, k, 1_001).await;
        }
    }
    let after = redis_reads(&server).await;
    assert_eq!(after - before, 0, "the receivers read Redis");
    for (c, _) in &receivers {
        let bp = c.stats().backplane.unwrap();
        assert_eq!((bp.gaps, bp.epoch_bumps, bp.malformed), (0, 0, 0), "{bp:?}");
        assert!(bp.applied >= 100, "{bp:?}");
    }
    let fp = feed.stats().backplane.unwrap();
    assert!(
        fp.published < 100_000 / 10,
        "one message per batch, not per tick: {fp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_can_be_turned_off() {
    let server = RedisServer::start();
    let off = Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .backplane(false)
        .build()
        .unwrap();
    assert!(off.stats().backplane.is_none());
    let memory = Cache::builder().build().unwrap();
    assert!(memory.stats().backplane.is_none());
    let cfg = mdcache::CacheConfig::from_vars([("CACHE_BACKPLANE", "sometimes")]).unwrap_err();
    assert!(cfg.to_string().contains("CACHE_BACKPLANE"), "{cfg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_value_ages_from_its_write_and_expires_with_it() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server), instance(&server));
    subscribed(&[&a, &b]).await;
    let (pa, pb) = (
        a.key::<Price>("AGE").unwrap(),
        b.key::<Price>("AGE").unwrap(),
    );
    // A per-write TTL far from the kind's (a minute here): the receiver must use the writer's.
    b.set_with(
        &pb,
        price(1),
        1,
        mdcache::SetOptions::default().ttl(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    converges(&a, &pa, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = a.read(&pa).await.unwrap().unwrap();
    assert_eq!(r.tier, Tier::L1);
    assert!(
        r.age >= Duration::from_secs(1) && r.age < Duration::from_secs(10),
        "age {:?}",
        r.age
    );
    let left = r.ttl_remaining.unwrap();
    assert!(
        left <= Duration::from_millis(8_500),
        "{left:?} left of 10 s"
    );
}

async fn an_instance_without_l1_publishes_and_flush_waits_until_it_has(server: Target) {
    let a = instance(&server);
    // Like the command-line tool: Redis only, no L1 (so nothing to receive into), writes
    // synchronous.
    let w = Cache::builder()
        .on(&server)
        .backend(Backend::Redis)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("pos", Duration::from_secs(60))
        .no_conflation()
        .build()
        .unwrap();
    subscribed(&[&a]).await;
    let bp = w.stats().backplane.expect("it publishes");
    assert!(!bp.subscribed, "{bp:?}");
    let (ka, kw) = (
        a.key::<Position>("CLI").unwrap(),
        w.key::<Position>("CLI").unwrap(),
    );
    w.set(&kw, pos(1.0), 1).await.unwrap();
    converges(&a, &ka, 1).await;
    assert_eq!(a.read(&ka).await.unwrap().unwrap().tier, Tier::L1);
    // (A may have read version 1 from Redis before it was published: the outbox then holds
    // one item for the key, which version 2 replaces. Count from here.)
    let queued_at = w.stats().backplane.unwrap().published_items;
    w.set(&kw, pos(2.0), 2).await.unwrap();
    w.flush().await.unwrap();
    // `flush` returned: the invalidation is published, not merely queued.
    let before = w.stats().backplane.unwrap().published_items;
    assert!(
        before > queued_at,
        "{queued_at} then {before} items published"
    );
    converges(&a, &ka, 2).await;
    w.delete(&kw).await.unwrap();
    w.flush().await.unwrap();
    assert!(w.stats().backplane.unwrap().published_items > before);
    gone(&a, &ka).await;
}

/// The soak's finding (issue 16): an engine that writes nothing holds a tick it received, its
/// L1 is then distrusted (a gap), Redis hangs, and the source — which never sees the feed's
/// ticks — holds an older side. The older side must not be served (the engine saw a newer
/// one); the held one is, marked `Stale`, within the kind's stale bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distrusted_tick_is_served_stale_when_redis_fails_and_the_source_is_behind() {
    use mdcache::{CacheAside, MemorySource, Store};
    use std::sync::Arc;
    let server = RedisServer::start();
    let (feed, engine) = (instance(&server), instance(&server));
    subscribed(&[&feed, &engine]).await;
    let src = Arc::new(MemorySource::default());
    let (kf, ke) = (
        feed.key::<BookBid>("LAG").unwrap(),
        engine.key::<BookBid>("LAG").unwrap(),
    );
    let seeded = src.write(&ke, &book([(1.0, 1.0)])).await.unwrap();
    feed.set_book(&kf, book([(99.0, 1.0)]), seeded + 10)
        .await
        .unwrap();
    let aside = CacheAside::builder(engine.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = aside.read_book(&ke, 10).await.unwrap().unwrap();
        if r.version == seeded + 10 && r.tier == Tier::L1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tick never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish_raw(&server, 1, Vec::new()).await;
    publish_raw(&server, 3, Vec::new()).await;
    wait_for("the gap", || {
        engine.stats().backplane.is_some_and(|s| s.epoch_bumps >= 1)
    })
    .await;
    server.pause();
    let r = aside.read_book(&ke, 10).await;
    server.resume();
    let r = r.expect("the held tick, not an error").expect("a value");
    assert_eq!((r.tier, r.version), (Tier::Stale, seeded + 10));
}

/// A source of prices whose second load waits until the test lets it go, so the test can act
/// while a read's second flight is in the source.
struct GatedSource {
    inner: mdcache::MemorySource,
    loads: std::sync::atomic::AtomicU64,
    second_started: tokio::sync::Notify,
    go: tokio::sync::Semaphore,
}

impl mdcache::Source for GatedSource {
    type Error = <mdcache::MemorySource as mdcache::Source>::Error;
}

impl mdcache::Load<Price> for GatedSource {
    async fn load(
        &self,
        key: &mdcache::Key<Price>,
    ) -> Result<Option<mdcache::Loaded<Price>>, Self::Error> {
        if self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.second_started.notify_one();
            let _ = self.go.acquire().await;
        }
        mdcache::Load::load(&self.inner, key).await
    }
}

/// The soak's finding, the race behind its one failed read: the tick an engine held (and no
/// longer trusted) was removed by an invalidation while the read's second flight was in a
/// source behind it. The read serves the tick it held when that flight began, marked
/// `Stale`. (Before, the fail-safe read looked for a stale copy only after the flight: it
/// found none and failed with `BehindFloor`, or — as here, where the flight's older price
/// filled the emptied slot — served that older price marked `Stale`, a read going back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_tick_invalidated_during_the_load_is_still_served_stale() {
    use mdcache::{CacheAside, LoadError, Store};
    use std::sync::Arc;
    let server = RedisServer::start();
    let (feed, engine) = (instance(&server), instance(&server));
    subscribed(&[&feed, &engine]).await;
    let src = Arc::new(GatedSource {
        inner: mdcache::MemorySource::default(),
        loads: std::sync::atomic::AtomicU64::new(0),
        second_started: tokio::sync::Notify::new(),
        go: tokio::sync::Semaphore::new(0),
    });
    let (kf, ke) = (
        feed.key::<Price>("RACE").unwrap(),
        engine.key::<Price>("RACE").unwrap(),
    );
    let seeded = src.inner.write(&ke, &price(1)).await.unwrap();
    let tick = seeded + 10;
    feed.set(&kf, price(tick), tick).await.unwrap();
    feed.flush().await.unwrap();
    converges(&engine, &ke, tick).await;
    // Redis loses the tick (the engine's read misses there), and the engine stops trusting
    // its L1 (a gap in a publisher's sequence).
    let mut c = server.multiplexed().await;
    let _: i64 = redis::cmd("DEL")
        .arg(kf.as_str())
        .query_async(&mut c)
        .await
        .unwrap();
    publish_raw(&server, 1, Vec::new()).await;
    publish_raw(&server, 3, Vec::new()).await;
    wait_for("the gap", || {
        engine.stats().backplane.is_some_and(|s| s.epoch_bumps >= 1)
    })
    .await;
    let aside = CacheAside::builder(engine.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let reader = {
        let (aside, ke) = (aside.clone(), ke.clone());
        tokio::spawn(async move { aside.read(&ke).await })
    };
    // The first flight loaded the older price and was refused; the second is in the source.
    src.second_started.notified().await;
    let received = engine.stats().backplane.unwrap().received;
    // A newer tick that expired on its way (as after a hang) invalidates the held one.
    let expired = price_item_expiring(&ke, tick + 1, |now_ms| now_ms.saturating_sub(1_000));
    publish_raw(&server, 4, vec![expired]).await;
    wait_for("the invalidation", || {
        engine
            .stats()
            .backplane
            .is_some_and(|s| s.received > received)
    })
    .await;
    src.go.add_permits(1);
    let r = reader.await.unwrap();
    assert!(
        !matches!(r, Err(LoadError::BehindFloor { .. })),
        "the read failed though it held a newer tick: {r:?}"
    );
    let r = r.unwrap().expect("a value");
    assert_eq!((r.tier, r.version), (Tier::Stale, tick), "{r:?}");
    assert_eq!(src.loads.load(std::sync::atomic::Ordering::SeqCst), 2);
}
