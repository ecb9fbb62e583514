//! On a local Redis Cluster (three primaries, three replicas, started by
//! `cached_tests::RedisCluster`): `cluster_failover`, `invalidate_tag`
//! (beside the single-node backend), and the cluster's
//! systems of `concurrent_hit_keys` (`this_cluster`, `raw_cluster`),
//! `stampede` and `stampede_processes` (`this_cluster`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use cached_tests::RedisCluster;
use cached_tests::cluster::failover_under_load;

use crate::fixture::Placement;
use crate::harness::{Redis, Row};
use crate::scenarios::hits::redis_cache;

/// A cache on the cluster at `urls` (its seed nodes), namespace `bench`.
pub fn cluster_cache_at<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Cache {
    Cache::builder()
        .redis_cluster(urls)
        .namespace("bench")
        .build()
        .expect("valid seed URLs")
}

/// A cache on `cluster`, namespace `bench`.
pub fn cluster_cache(cluster: &RedisCluster) -> Cache {
    cluster_cache_at(cluster.urls())
}

/// `raw_cluster`: redis-rs's cluster client, GET and a serde_json decode,
/// nothing else.
pub async fn raw_cluster_get(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> Option<Placement> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.ok()?;
    serde_json::from_slice(&bytes?).ok()
}

/// A primary killed under load: 16 tasks reading 1,000 rows and a writer
/// changing and invalidating rows (see
/// `cached_tests::cluster::failover_under_load`). `ok_calls` should be
/// every call, `errors` and `stale_reads` 0.
pub async fn cluster_failover(_redis: &Redis) -> Vec<Row> {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    // Warm the connections to every node, as a running service would be.
    let _ = cache.ping().await;
    let (_cluster, seen) = failover_under_load(cluster, cache, 16, 1_000).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    vec![
        Row::new("cluster_failover", "this_cluster")
            .with("calls", seen.calls)
            .with("ok_calls", seen.calls - seen.errors)
            .with("errors", seen.errors)
            .with("writes", seen.writes)
            .with("stale_reads", seen.stale_reads)
            .with("stale_after", seen.stale_after)
            .with("failover_ms", ms(seen.failover))
            .with("recovered_after_ms", ms(seen.recovered_after)),
    ]
}

/// Entries under one tag, and how often their loader ran.
#[derive(Clone)]
struct Tagged {
    cache: Cache,
    loads: Arc<AtomicU64>,
}

impl Tagged {
    #[cached(prefix = "tagged", ttl = "5m", key = id, tags = ["bench_tag"])]
    async fn read(&self, id: u64) -> u64 {
        self.loads.fetch_add(1, Relaxed);
        id
    }
}

/// Keys under the tag in `invalidate_tag`.
const TAGGED: u64 = 10_000;

/// `invalidate_tag` over 10,000 entries under one tag, each key its own
/// slot's on the cluster (so spread over every primary): how long the
/// invalidation takes, on the single node (`this`: the tag's set, its
/// members removed in batches) and on the cluster (`this_cluster`: the
/// tag's version replaced), and that every entry reloads afterwards.
pub async fn invalidate_tag(redis: &Redis) -> Vec<Row> {
    redis.cmd::<()>(&["FLUSHALL"]);
    let cluster = RedisCluster::start();
    let mut rows = Vec::new();
    for (system, cache) in [
        ("this", redis_cache(redis)),
        ("this_cluster", cluster_cache(&cluster)),
    ] {
        let tagged = Tagged {
            cache: cache.clone(),
            loads: Arc::new(AtomicU64::new(0)),
        };
        warm(&tagged).await;
        let warmed = tagged.loads.load(Relaxed);
        let started = Instant::now();
        let result = cache.invalidate_tag("bench_tag").await;
        let took = started.elapsed();
        // Every entry reads again once: each a miss, then a load.
        warm(&tagged).await;
        let reloaded = tagged.loads.load(Relaxed) - warmed;
        rows.push(
            Row::new("invalidate_tag", system)
                .with("keys", TAGGED)
                .with("ms", took.as_secs_f64() * 1e3)
                .with("ok", result.is_ok())
                .with("loads_before", warmed)
                .with("reloaded_after", reloaded),
        );
    }
    rows
}

/// Reads every tagged key, 64 tasks at a time.
async fn warm(tagged: &Tagged) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let tagged = tagged.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Relaxed);
                    if id >= TAGGED {
                        break;
                    }
                    tagged.read(id).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// `__profile_cluster SYSTEM N`: N sequential hits of one warm key on a
/// local cluster, for an instruction profiler: `this` (the framework),
/// `this_unshared` (without shared reads) or `raw` (`raw_cluster`).
pub async fn profile(system: &str, n: u32) {
    let cluster = RedisCluster::start();
    let this = crate::systems::This::new(cluster_cache(&cluster), Duration::ZERO);
    let mut raw = redis::cluster::ClusterClient::new(cluster.urls())
        .expect("valid seed URLs")
        .get_async_connection()
        .await
        .expect("connects");
    let json = serde_json::to_vec(&Placement::sample(1)).expect("serializes");
    let _: () = redis::cmd("SET")
        .arg("raw:placement:1")
        .arg(&json)
        .query_async(&mut raw)
        .await
        .expect("stores");
    this.get(1).await;
    for _ in 0..n {
        match system {
            "this" => drop(std::hint::black_box(this.get(1).await)),
            "this_unshared" => drop(std::hint::black_box(this.get_unshared(1).await)),
            _ => drop(std::hint::black_box(
                raw_cluster_get(&mut raw, "raw:placement:1").await,
            )),
        }
    }
}
