//! The test support's Redis Cluster (issue 13): 3 primaries and 3 replicas converge, a redis-rs cluster client with bounded retries and timeouts reaches every slot through it, and `Key::slot` agrees with the cluster's own `CLUSTER KEYSLOT`.

mod support;

use std::time::Duration;

use support::cluster::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_converges_and_serves_every_slot() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    // redis-rs's cluster defaults (16 retries, no response timeout) are not what mdcache
    // will run with: bounded here as there.
    let client = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .retries(2)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut con = tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
        .await
        .expect("connected within 10 s")
        .unwrap();
    // Keys of 200 symbols land on slots of all three primaries (each symbol's hash tag
    // picks one).
    let cache = mdcache::Cache::builder().build().unwrap();
    let mut slots = std::collections::HashSet::new();
    for i in 0..200 {
        let typed = cache.key::<mdcache::Price>(&format!("SYM{i:04}")).unwrap();
        let key = typed.as_str().to_owned();
        let slot: u32 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(u32::from(typed.slot()), slot, "{key}");
        slots.insert(slot * 3 / 16_384);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
        let got: u32 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(got, i);
    }
    assert_eq!(slots.len(), 3, "the symbols' slots span the key space");
}
