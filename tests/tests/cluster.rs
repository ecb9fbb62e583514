//! The local Redis Cluster the cluster backend's tests and benches run on
//! (`cached_tests::RedisCluster`): it forms with every slot served, keys
//! route by slot, and a killed primary's replica takes over; and the cache
//! on it: its key layout in slots, its configuration, and a primary killed
//! under load. (The suites' key cases run on a cluster through
//! `cached_tests::on_cluster!`.)

use std::collections::HashMap;
use std::time::Duration;

use cached_runtime::Cache;
use cached_tests::cluster::{disrupt_under_load, failover_under_load};
use cached_tests::{NAMESPACE, RedisCluster};

#[test]
fn a_local_cluster_forms_routes_by_slot_and_fails_over() {
    let mut cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries");
    assert_eq!(cluster.urls().len(), 6, "and three replicas");
    let info: String = cluster.nodes()[0].cmd(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_known_nodes:6"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");

    // A key lives on the primary that serves its slot; another refuses it.
    let slot: i64 = cluster.nodes()[0].cmd(&["CLUSTER", "KEYSLOT", "{placement}:1"]);
    let owner = primaries
        .iter()
        .copied()
        .find(|&i| {
            let slots: Vec<Vec<redis::Value>> = cluster.nodes()[i].cmd(&["CLUSTER", "SLOTS"]);
            slots.iter().any(|range| {
                let bound = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n,
                    other => panic!("slot bound {other:?}"),
                };
                let port = match &range[2] {
                    redis::Value::Array(node) => bound(&node[1]),
                    other => panic!("node {other:?}"),
                };
                bound(&range[0]) <= slot
                    && slot <= bound(&range[1])
                    && port == i64::from(cluster.nodes()[i].port())
            })
        })
        .expect("a primary serves the slot");
    let () = cluster.nodes()[owner].cmd(&["SET", "{placement}:1", "v"]);
    let other = primaries
        .iter()
        .copied()
        .find(|&i| i != owner)
        .expect("another");
    let client = redis::Client::open(cluster.urls()[other].as_str()).expect("URL");
    let mut conn = client.get_connection().expect("connects");
    let refused: redis::RedisResult<String> =
        redis::cmd("GET").arg("{placement}:1").query(&mut conn);
    let err = refused.expect_err("another primary redirects");
    let moved = err.to_string();
    assert!(
        moved.to_uppercase().starts_with("MOVED")
            && moved.ends_with(&format!(":{}", cluster.nodes()[owner].port())),
        "redirected to the owner: {moved}"
    );

    // The owner dies: its replica takes its slots.
    let took = cluster.kill_primary(owner);
    assert!(took.as_secs() < 30, "{took:?}");
    let new_primaries = cluster.primaries();
    assert_eq!(new_primaries.len(), 3);
    assert!(!new_primaries.contains(&owner));
}

/// A cache on `cluster`, namespace [`NAMESPACE`].
fn cluster_cache(cluster: &RedisCluster) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .build()
        .expect("builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_its_lease_and_its_tags_live_in_one_slot_readable_by_name() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    assert_eq!(cache.backend_kind(), "redis-cluster");
    let loaded: Result<u32, ()> = cache
        .get_or_load("user:a}b:7", Duration::from_secs(60), || async { Ok(7) })
        .await;
    assert_eq!(loaded, Ok(7));
    assert_eq!(cache.get::<u32>("user:a}b:7").await, Some(7));
    // `{t:user:a}b:7}`: the hash tag ends at the first `}`, which the key
    // text holds; the value still shares its slot with everything beside it.
    let owner = cluster.owner_of("{t:user:a}b:7}");
    let node = &cluster.nodes()[owner];
    let stored: Option<Vec<u8>> = node.cmd(&["GET", "{t:user:a}b:7}"]);
    assert!(stored.is_some(), "the value is readable under its name");
    // A pattern invalidation writes nothing of its own: it removes the
    // entry and leaves no key behind (no epochs, no lease).
    cache
        .invalidate_pattern("user:*")
        .await
        .expect("invalidates");
    assert_eq!(cache.get::<u32>("user:a}b:7").await, None);
    let left: i64 = cluster
        .primaries()
        .into_iter()
        .map(|i| cluster.nodes()[i].cmd::<i64>(&["DBSIZE"]))
        .sum();
    assert_eq!(left, 0, "nothing left");
}

#[test]
fn a_cluster_cache_is_configured_from_the_builder_or_the_environment() {
    let vars = HashMap::from([(
        "REDIS_CLUSTER_URLS",
        "redis://127.0.0.1:7000, redis://127.0.0.1:7001,",
    )]);
    let cache = Cache::builder()
        .from_vars(|name| vars.get(name).map(|v| (*v).to_owned()))
        .build()
        .expect("builds");
    assert_eq!(cache.backend_kind(), "redis-cluster");

    let refused =
        |builder: cached_runtime::CacheBuilder| builder.build().expect_err("refused").to_string();
    let both = HashMap::from([
        ("REDIS_CLUSTER_URLS", "redis://127.0.0.1:7000"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ]);
    let e = refused(Cache::builder().from_vars(|n| both.get(n).map(|v| (*v).to_owned())));
    assert!(e.contains("both REDIS_URL and REDIS_CLUSTER_URLS"), "{e}");
    let e = refused(Cache::builder().redis_cluster(Vec::<String>::new()));
    assert!(e.contains("no seed node"), "{e}");
    let e = refused(Cache::builder().redis_cluster(["redis+unix:///tmp/r.sock"]));
    assert!(e.contains("over TCP"), "{e}");
    let e = refused(Cache::builder().redis_cluster(["redis://127.0.0.1:70000"]));
    assert!(
        e.starts_with("invalid Redis URL in CacheBuilder::redis_cluster"),
        "{e}"
    );
    for namespace in ["", "a{b", "a}b"] {
        let e = refused(
            Cache::builder()
                .redis_cluster(["redis://127.0.0.1:7000"])
                .namespace(namespace),
        );
        assert!(e.contains("namespace"), "{namespace:?}: {e}");
    }
    let e = refused(
        Cache::builder()
            .redis_cluster(["redis://127.0.0.1:7000"])
            .near_cache(cached_runtime::NearCache::new()),
    );
    assert!(e.contains("cannot sit in front of a Redis Cluster"), "{e}");
    // The last backend chosen wins.
    let cache = Cache::builder()
        .redis_cluster(["redis://127.0.0.1:7000"])
        .redis("redis://127.0.0.1:6379")
        .build()
        .expect("builds");
    assert_eq!(cache.backend_kind(), "redis");
}

/// A primary is killed while 8 tasks read 200 keys and a writer changes
/// rows (`cached_tests::cluster::failover_under_load`): no call fails,
/// caching resumes once a replica took over, and no read returns a version
/// older than one whose invalidation had returned before the read started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_no_call_and_serves_nothing_stale() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let (_cluster, seen) = failover_under_load(cluster, cache, 8, 200).await;
    eprintln!("{seen:?}");
    assert!(seen.writes > 10 && seen.calls > 100, "{seen:?}");
    assert_eq!(seen.errors, 0, "{seen:?}");
    assert_eq!(seen.stale_reads, 0, "{seen:?}");
    assert_eq!(seen.stale_after, 0, "{seen:?}");
}

/// The slots of the rows under load that one primary serves are moved to
/// another while 8 tasks read 200 rows and a writer changes them and
/// invalidates each by key or by pattern: the client meets `ASK`,
/// `TRYAGAIN` and `MOVED`, pattern invalidations meet a slot map that
/// changes under them, and still no call fails and no read returns a
/// version older than one whose invalidation had returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharding_under_load_fails_no_call_and_serves_nothing_stale() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let mut slots: Vec<usize> = (0..200)
        .map(|k| cluster.slot_of(&format!("{{{NAMESPACE}:row:{k}}}")))
        .filter(|&s| cluster.owner_of_slot(s) == from)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    assert!(slots.len() > 20, "{} slots to move", slots.len());
    let moved = slots.clone();
    let (cluster, seen) = disrupt_under_load(cluster, cache, 8, 200, move |cluster| {
        cluster.move_slots(&moved, to)
    })
    .await;
    eprintln!("{} slots moved: {seen:?}", slots.len());
    // The clients met the resharding: redirections were answered.
    let redirected: u64 = cluster
        .nodes()
        .iter()
        .filter(|n| n.answers())
        .map(|n| {
            let info: String = n.cmd(&["INFO", "errorstats"]);
            info.lines()
                .filter(|l| l.starts_with("errorstat_MOVED") || l.starts_with("errorstat_ASK"))
                .filter_map(|l| {
                    l.split("count=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum();
    assert!(redirected > 0, "no MOVED or ASK was answered");
    for &slot in &slots {
        assert_eq!(cluster.owner_of_slot(slot), to, "slot {slot} moved");
    }
    assert!(seen.writes > 10 && seen.calls > 100, "{seen:?}");
    assert_eq!(seen.errors, 0, "{seen:?}");
    assert_eq!(seen.stale_reads, 0, "{seen:?}");
    assert_eq!(seen.stale_after, 0, "{seen:?}");
}

#[derive(Clone)]
struct Docs {
    cache: Cache,
    loads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Docs {
    #[cached_runtime::cached(prefix = "doc", ttl = "5m", key = id, tags = ["docs"])]
    async fn get(&self, id: u64) -> u64 {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        id
    }
}

/// An entry stored with tags is marked as such in its envelope, so that a
/// read checks its tag versions even when the call names no tag; if those
/// versions are gone (evicted apart from the value, deleted by hand), no
/// tag invalidation could reach the entry any more, and it is not served,
/// to tagged and untagged callers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_tag_versions_are_gone_is_served_to_no_one() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let docs = Docs {
        cache: cache.clone(),
        loads: Default::default(),
    };
    let loads = || docs.loads.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(docs.get(1).await, 1);
    assert_eq!(docs.get(1).await, 1);
    assert_eq!(loads(), 1, "a hit");
    assert_eq!(
        cache.get::<u64>("doc:1").await,
        Some(1),
        "untagged, current"
    );
    // The tag invalidated: outdated for an untagged reader too.
    cache.invalidate_tag("docs").await.expect("invalidates");
    assert_eq!(cache.get::<u64>("doc:1").await, None);
    assert_eq!(docs.get(1).await, 1);
    assert_eq!(loads(), 2, "loaded again after the tag's invalidation");
    // The versions stored beside the value disappear.
    let beside = format!("{{{NAMESPACE}:doc:1}}:~tags");
    let owner = &cluster.nodes()[cluster.owner_of(&beside)];
    assert_eq!(owner.cmd::<i64>(&["DEL", &beside]), 1, "they were there");
    assert_eq!(cache.get::<u64>("doc:1").await, None, "untagged reader");
    assert_eq!(docs.get(1).await, 1);
    assert_eq!(loads(), 3, "the tagged reader loads too");
}

/// A tagged function whose loader reads its row, says so, then takes
/// 300 ms: a load another process's change can overtake.
#[derive(Clone)]
struct SlowDocs {
    cache: Cache,
    row: std::sync::Arc<std::sync::atomic::AtomicU64>,
    read: std::sync::Arc<tokio::sync::Notify>,
}

impl SlowDocs {
    #[cached_runtime::cached(prefix = "slow", ttl = "5m", key = id, tags = ["slow_docs"])]
    async fn get(&self, id: u64) -> u64 {
        let _ = id;
        let version = self.row.load(std::sync::atomic::Ordering::SeqCst);
        self.read.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        version
    }
}

/// Two processes' caches on one cluster. In the first, a load of a tagged
/// entry reads version 1 of its row; the second changes the row and
/// invalidates the tag (which, on a cluster, replaces the tag's version and
/// leaves the load's lease alone). A caller of the first process who starts
/// after that invalidation returned joins the load still in flight, and
/// must not be handed what it read: the load's process learns, after
/// storing, that the versions it stored with are outdated, and its joiners
/// read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_joining_a_load_after_another_process_invalidated_its_tag_gets_the_new_row() {
    let cluster = RedisCluster::start();
    let (here, there) = (cluster_cache(&cluster), cluster_cache(&cluster));
    let row = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let read = std::sync::Arc::new(tokio::sync::Notify::new());
    let docs = SlowDocs {
        cache: here.clone(),
        row: row.clone(),
        read: read.clone(),
    };
    let leader = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(7).await }
    });
    read.notified().await;
    row.store(2, std::sync::atomic::Ordering::SeqCst);
    there
        .invalidate_tag("slow_docs")
        .await
        .expect("the other process invalidates");
    // Begun after the invalidation returned: joins the load in flight.
    let joiner = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(7).await }
    });
    assert_eq!(leader.await.expect("joins"), 1, "the leader began before");
    assert_eq!(
        joiner.await.expect("joins"),
        2,
        "a caller who began after the invalidation got the row it replaced"
    );
    assert_eq!(docs.get(7).await, 2);
    assert_eq!(there.get::<u64>("slow:7").await, Some(2));
}
