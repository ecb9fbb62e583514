//! The local Redis Cluster the cluster backend's tests and benches run on
//! (`cached_tests::RedisCluster`): it forms with every slot served, keys
//! route by slot, and a killed primary's replica takes over; and the cache
//! on it: its key layout in slots, its configuration, and faults of one
//! primary under load (killed; frozen, within and past the node timeout;
//! refusing writes; pausing writes), and a cluster that speaks TLS alone.
//! (The suites' key cases run on a cluster through
//! `cached_tests::on_cluster!`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

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

/// A pattern invalidation while its entry's slot migrates: the source
/// holds 60,000 other keys, so each scan of it takes over a hundred round
/// trips, while the target's takes one. At a random point of the source's
/// scan for leases, the slot opens (importing on the target, migrating on
/// the source); at a random point of its scan for values, `MIGRATE` moves
/// the entry: it can leave the source before that scan reaches it, and
/// arrive on the target after that scan ended. The slot is handed over 400 ms later. The invalidation fails
/// while it finds the entry in the open slot, and must not return `Ok`
/// having found it on neither node. Run with the ACL rule, and with a rule
/// written before it needed `CLUSTER NODES` (every primary is then scanned
/// twice a pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_misses_no_entry_that_moves_while_it_scans() {
    let cluster = RedisCluster::start();
    let rule = cached_runtime::redis_acl_rule(NAMESPACE);
    for (user, refused) in [("full-rule", ""), ("older-rule", "+cluster|nodes")] {
        for node in cluster.nodes() {
            let mut setuser = vec!["ACL", "SETUSER", user, "on", ">mig-password"];
            setuser.extend(rule.split(' ').filter(|part| *part != refused));
            let () = node.cmd(&setuser);
        }
    }
    // Keys `mig:1}:{n}` share the slot of `mig:1` (the hash tag ends at
    // the first `}`), each at its own place in a node's scan.
    let (slot, home, away) = slot_and_another(&cluster, "mig:1}");
    fill(&cluster, home);
    // On a steady cluster, no primary is scanned again: one scan of each
    // for the leases, one for the values (each pass twice where the rule
    // refuses `CLUSTER NODES`).
    let cluster = Arc::new(cluster);
    let scans = |node: usize| scan_calls(&cluster, node);
    let others: Vec<usize> = cluster
        .primaries()
        .into_iter()
        .filter(|&p| p != home)
        .collect();
    for (user, steady_scans) in [("full-rule", 2), ("older-rule", 4)] {
        let cache = Cache::builder()
            .redis_cluster(cluster.urls())
            .redis_username(user)
            .redis_password("mig-password")
            .namespace(NAMESPACE)
            .build()
            .expect("builds");
        cache.invalidate_pattern("mig:*").await.expect("connects");
        let before: Vec<u64> = others.iter().map(|&p| scans(p)).collect();
        let home_before = scans(home);
        cache
            .set("mig:1}:steady", &0u32, Duration::from_secs(60))
            .await;
        assert_eq!(
            cache
                .invalidate_pattern("mig:*")
                .await
                .expect("invalidates"),
            1,
            "{user}: the entry, counted once"
        );
        for (&p, scanned) in others.iter().zip(before) {
            assert_eq!(
                scans(p) - scanned,
                steady_scans,
                "{user}: scans of primary {p}"
            );
        }
        // The source's `SCAN` calls in one scan of it: half the passes
        // scan for leases, then half for values.
        let per_scan = (scans(home) - home_before) / steady_scans;
        assert!(per_scan > 50, "{per_scan} round trips to scan the source");
        let values_from = per_scan * steady_scans / 2;
        let (mut missed, mut met) = (Vec::new(), 0);
        for round in 0..10u32 {
            let key = &format!("mig:1}}:{user}:{round}");
            // Stored once the last round's retries, which this process
            // sends in the background after an invalidation failed, have
            // settled.
            let storing = Instant::now();
            loop {
                cache.set(key, &round, Duration::from_secs(60)).await;
                if cache.get::<u32>(key).await == Some(round) {
                    break;
                }
                assert!(storing.elapsed() < Duration::from_secs(10), "not stored");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Paced by the source's scan: the slot opens while it is
            // scanned for leases, the entry moves early in its scan for
            // values, so most likely before that scan reaches it (where
            // it would be unlinked, wherever it has gone since).
            let mover = move_during_scan(
                &cluster,
                (slot, home, away),
                fastrand::u64(0..per_scan),
                values_from + fastrand::u64(0..per_scan / 4),
            );
            let attempts = invalidate_until_ok(&cache, user).await;
            let acknowledged_while_open = !mover.is_finished();
            let moved = mover.await.expect("the slot moves");
            met += usize::from(during(moved, &attempts));
            if cache.get::<u32>(key).await.is_some() {
                missed.push((round, acknowledged_while_open));
            }
            move_home(&cluster, slot, home).await;
        }
        eprintln!("{user}: {per_scan} round trips a scan; moved during one in {met} rounds of 10");
        assert!(
            missed.is_empty(),
            "{user}: (round, acknowledged while the slot was open) of each entry an acknowledged invalidation left: {missed:?}"
        );
        assert!(
            met >= 5,
            "{user}: the entry moved during an invalidation in {met} rounds of 10"
        );
    }
}

/// Puts 60,000 other keys on node `node` of `cluster`, in a slot of its
/// own that stays there: each scan of the node then takes over a hundred
/// round trips, long enough to move keys in the middle of it.
fn fill(cluster: &RedisCluster, node: usize) {
    let tag = (0..)
        .map(|i| format!("filler{i}"))
        .find(|tag| cluster.owner_of(&format!("{{{tag}}}")) == node)
        .expect("a filler tag on the node");
    for batch in 0..6 {
        let mut mset = vec!["MSET".to_owned()];
        for i in 0..10_000 {
            mset.push(format!("{{{tag}}}:{batch}:{i}"));
            mset.push("x".to_owned());
        }
        let args: Vec<&str> = mset.iter().map(String::as_str).collect();
        let () = cluster.nodes()[node].cmd(&args);
    }
}

/// From now on, a wait until node `node` has answered `calls` more
/// `SCAN`s (at most 10 s): steps paced by a scan of it.
fn paced(cluster: &RedisCluster, node: usize) -> impl Fn(u64) + '_ {
    let start = scan_calls(cluster, node);
    move |calls| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while scan_calls(cluster, node) < start + calls && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A load holds its entry's lease on one primary, having read the source
/// before a pattern invalidation began; the entry's slot opens and
/// `MIGRATE` moves the lease, at random points of the source's scan for
/// leases (60,000 other keys there: over a hundred round trips), so that
/// scan may miss it. Once the invalidation has returned `Ok` and the slot
/// has moved, the load ends: its write must be refused, the lease being
/// gone. Another process then reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_lease_moves_while_a_pattern_invalidation_scans_stores_nothing() {
    let cluster = RedisCluster::start();
    let (slot, home, away) = slot_and_another(&cluster, "mig:2}");
    fill(&cluster, home);
    let (cache, other) = (cluster_cache(&cluster), cluster_cache(&cluster));
    cache.invalidate_pattern("mig:*").await.expect("connects");
    let before = scan_calls(&cluster, home);
    cache
        .invalidate_pattern("mig:*")
        .await
        .expect("invalidates");
    let per_scan = (scan_calls(&cluster, home) - before) / 2;
    assert!(per_scan > 50, "{per_scan} round trips to scan the source");
    let cluster = Arc::new(cluster);
    let (mut stored, mut met) = (Vec::new(), 0);
    for round in 0..16u64 {
        // Sharing the slot of `mig:2`, each at its own place in a scan.
        let key = format!("mig:2}}:{round}");
        // Its source read, its lease held.
        let (load, end_tx) = cached_tests::load_in_flight(&cache, &key, round).await;
        let at = fastrand::u64(0..per_scan);
        let mover = move_during_scan(&cluster, (slot, home, away), at, at);
        let attempts = invalidate_until_ok(&cache, "the lease test").await;
        let moved = mover.await.expect("the slot moves");
        met += usize::from(during(moved, &attempts));
        // The load ends on the slot's new owner.
        let _ = end_tx.send(());
        assert_eq!(
            load.await.expect("joins"),
            Ok(round),
            "its caller gets what it read"
        );
        if let Some(got) = other.get::<u64>(&key).await {
            stored.push((round, got));
        }
        move_home(&cluster, slot, home).await;
    }
    eprintln!("{per_scan} round trips a scan; the lease moved during one in {met} rounds of 16");
    assert!(
        stored.is_empty(),
        "(round, value) of each load that stored what it read before an acknowledged invalidation: {stored:?}"
    );
    // Half the rounds, about: in the others the scan removed the lease
    // before the slot opened.
    assert!(
        met >= 3,
        "the lease moved during an invalidation in {met} rounds of 16"
    );
}

/// Moves `slot` from `home` to `away` on a blocking thread, paced by
/// `home`'s scan (see [`paced`]): the slot opens once `home` has answered
/// `open_at` more `SCAN`s, `MIGRATE` moves its keys once it has answered
/// `move_at`, and the slot is handed over 400 ms later. Answers when the
/// keys moved, or `None` if there were none left to move.
fn move_during_scan(
    cluster: &Arc<RedisCluster>,
    (slot, home, away): (usize, usize, usize),
    open_at: u64,
    move_at: u64,
) -> tokio::task::JoinHandle<Option<Instant>> {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let until = paced(&cluster, home);
        until(open_at);
        cluster.open_migration(slot, home, away);
        until(move_at);
        let moving = Instant::now();
        let moved = (cluster.migrate_keys(slot, home, away, 100) > 0).then_some(moving);
        std::thread::sleep(Duration::from_millis(400));
        cluster.finish_migration(slot, home, away);
        moved
    })
}

/// `cache.invalidate_pattern("mig:*")` until it returns `Ok` (within
/// 10 s), 5 ms apart. Answers each attempt's span.
async fn invalidate_until_ok(cache: &Cache, what: &str) -> Vec<(Instant, Instant)> {
    let mut attempts = Vec::new();
    loop {
        let began = Instant::now();
        let done = cache.invalidate_pattern("mig:*").await;
        attempts.push((began, Instant::now()));
        if done.is_ok() {
            return attempts;
        }
        assert!(
            attempts[0].0.elapsed() < Duration::from_secs(10),
            "{what}: the invalidation did not land: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the keys moved (`moved`) while one of `attempts` was under way.
fn during(moved: Option<Instant>, attempts: &[(Instant, Instant)]) -> bool {
    moved.is_some_and(|at| attempts.iter().any(|&(a, b)| a <= at && at <= b))
}

/// Moves `slot` back to `home`, for the next round.
async fn move_home(cluster: &Arc<RedisCluster>, slot: usize, home: usize) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || cluster.move_slots(&[slot], home))
        .await
        .expect("the slot moves back");
}

/// How many `SCAN`s node `node` of `cluster` has answered.
fn scan_calls(cluster: &RedisCluster, node: usize) -> u64 {
    let info: String = cluster.nodes()[node].cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
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

/// On a cluster, a tagged load checks that the versions it stored with are
/// still current before it hands its value to the callers who joined it.
/// When they are (no invalidation came), a joiner is served that value
/// (`Coalesced`), without a read of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_joining_a_tagged_load_is_served_its_value_while_its_tags_are_current() {
    let cluster = RedisCluster::start();
    let read = std::sync::Arc::new(tokio::sync::Notify::new());
    let docs = SlowDocs {
        cache: cluster_cache(&cluster),
        row: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        read: read.clone(),
    };
    let leader = tokio::spawn({
        let docs = docs.clone();
        async move { docs.get(7).await }
    });
    read.notified().await;
    let joiner = tokio::spawn({
        let docs = docs.clone();
        cached_runtime::with_outcome(async move { docs.get(7).await })
    });
    assert_eq!(leader.await.expect("joins"), 1);
    let (got, outcome) = joiner.await.expect("joins");
    assert_eq!(got, 1);
    assert_eq!(outcome, Some(cached_runtime::Outcome::Coalesced));
}

/// The operation timeout of the caches that meet one faulty primary.
const OP: Duration = Duration::from_millis(100);

/// The longest a call may take while a primary is frozen or refuses
/// writes: one operation timeout (then the loader, which takes no time),
/// and scheduling slack on a loaded 2-core machine. A backend operation
/// without a bound would wait out the whole freeze.
const CALL_BOUND: Duration = Duration::from_millis(500);

/// The longest a pattern invalidation may take: its steps (the slot map,
/// a scan of every primary, twice) are each bounded by the operation
/// timeout.
const PATTERN_BOUND: Duration = Duration::from_millis(1500);

/// `n` keys `{prefix}:{i}` whose entries (`{t:{prefix}:{i}}`) live on a
/// primary that `on` accepts.
fn keys_on(
    cluster: &RedisCluster,
    prefix: &str,
    on: impl Fn(usize) -> bool,
    n: usize,
) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .filter(|key| on(cluster.owner_of(&format!("{{{NAMESPACE}:{key}}}"))))
        .take(n)
        .collect()
}

/// A cache on `cluster` whose operations time out after [`OP`].
fn fault_cache(cluster: &RedisCluster) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .op_timeout(OP)
        .build()
        .expect("builds")
}

/// How a writer tells the cache about a row it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    WriteThrough,
    Evict,
    Pattern,
}

/// Rows of a source of truth, each a version that a writer bumps, read
/// through a cache with `get_or_load` (TTL one minute).
struct Table {
    keys: Vec<String>,
    /// The source: each row's current version.
    source: Vec<AtomicU64>,
    /// Each row's version as of its last change whose call returned
    /// (whether or not Redis took it: in the process that made it, a
    /// change counts from then on).
    committed: Vec<AtomicU64>,
    /// Loader runs, per row.
    loads: Vec<AtomicU64>,
    /// Each row's changes, for the message of a stale read: what, which
    /// version, and when it began and returned (ms since `t0`).
    history: Vec<std::sync::Mutex<Vec<String>>>,
    t0: Instant,
}

/// What readers saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    calls: u64,
    errors: u64,
    /// Reads older than their row's committed version when they began.
    stale: Vec<String>,
    slowest: Duration,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.stale.extend(other.stale);
        self.slowest = self.slowest.max(other.slowest);
    }
}

const ROW_TTL: Duration = Duration::from_secs(60);

impl Table {
    fn new(keys: Vec<String>) -> Arc<Table> {
        let zeros = || keys.iter().map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Arc::new(Table {
            source: keys.iter().map(|_| AtomicU64::new(1)).collect(),
            committed: keys.iter().map(|_| AtomicU64::new(1)).collect(),
            loads: zeros(),
            history: keys.iter().map(|_| Default::default()).collect(),
            t0: Instant::now(),
            keys,
        })
    }

    /// Row `i` through `cache`, checked against the version committed
    /// before the call began; recorded in `seen`.
    async fn read(&self, cache: &Cache, i: usize, seen: &mut Seen) -> Option<u64> {
        let floor = self.committed[i].load(SeqCst);
        let started = Instant::now();
        let got = cache
            .get_or_load(&self.keys[i], ROW_TTL, || async {
                self.loads[i].fetch_add(1, SeqCst);
                Ok::<u64, ()>(self.source[i].load(SeqCst))
            })
            .await;
        let took = started.elapsed();
        seen.calls += 1;
        seen.slowest = seen.slowest.max(took);
        match got {
            Ok(v) => {
                if v < floor && seen.stale.len() < 20 {
                    let history = self.history[i].lock().expect("history");
                    let recent = &history[history.len().saturating_sub(3)..];
                    seen.stale.push(format!(
                        "{}: read v{v} at {}..{} ms, after v{floor} was committed; its last \
                         changes: {recent:?}",
                        self.keys[i],
                        self.ms(started),
                        self.ms(Instant::now()),
                    ));
                }
                Some(v)
            }
            Err(()) => {
                seen.errors += 1;
                None
            }
        }
    }

    /// Bumps row `i` in the source, then tells `cache` as `how` says (the
    /// pattern naming the row alone); the new version counts as committed
    /// once that returns, whatever Redis did with it. Returns how long the
    /// cache took.
    async fn change(&self, cache: &Cache, i: usize, how: Change) -> Duration {
        let version = self.source[i].fetch_add(1, SeqCst) + 1;
        let started = Instant::now();
        let failed = match how {
            Change::WriteThrough => {
                cache.set(&self.keys[i], &version, ROW_TTL).await;
                None
            }
            Change::Evict => cache.invalidate(&self.keys[i]).await.err(),
            Change::Pattern => cache.invalidate_pattern(&self.keys[i]).await.err(),
        };
        let took = started.elapsed();
        self.committed[i].store(version, SeqCst);
        self.history[i].lock().expect("history").push(format!(
            "{how:?} v{version} at {}..{} ms{}",
            self.ms(started),
            self.ms(started + took),
            failed.map_or(String::new(), |e| format!(" ({e})"))
        ));
        took
    }

    /// Milliseconds from the table's making to `at`.
    fn ms(&self, at: Instant) -> u128 {
        at.duration_since(self.t0).as_millis()
    }

    fn loads_of(&self, rows: std::ops::Range<usize>) -> u64 {
        self.loads[rows].iter().map(|l| l.load(SeqCst)).sum()
    }

    /// Reads each of `rows` until a second read of it is served without a
    /// load (caching works for it), or panics after `limit`.
    async fn until_cached(
        &self,
        cache: &Cache,
        rows: std::ops::Range<usize>,
        limit: Duration,
    ) -> Duration {
        let started = Instant::now();
        let mut seen = Seen::default();
        for i in rows {
            loop {
                self.read(cache, i, &mut seen).await;
                let before = self.loads[i].load(SeqCst);
                self.read(cache, i, &mut seen).await;
                if self.loads[i].load(SeqCst) == before {
                    break;
                }
                assert!(
                    started.elapsed() < limit,
                    "{} is still loaded on every read {limit:?} after the fault ended: {:?}",
                    self.keys[i],
                    cache.stats()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(seen.errors, 0, "{seen:?}");
        assert!(seen.stale.is_empty(), "{seen:?}");
        started.elapsed()
    }

    /// Every row's entry, as another process reads it from the cluster
    /// (`other`, a cache with no pending changes of its own), is absent or
    /// the source's version. Returns the rows that are not.
    async fn diverged(&self, other: &Cache) -> Vec<String> {
        let mut wrong = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let want = self.source[i].load(SeqCst);
            if let Some(got) = other.get::<u64>(key).await
                && got != want
            {
                wrong.push(format!("{key}: cached v{got}, source v{want}"));
            }
        }
        wrong
    }
}

/// Twelve rows around one primary: six whose keys `victim` owns (named
/// `faulty`), six on the other primaries (`live`), all cached; a cache for
/// this process and one standing in for another.
async fn rows_around(
    cluster: &RedisCluster,
    victim: usize,
    faulty: &str,
) -> (Arc<Table>, Cache, Cache) {
    let mut keys = keys_on(cluster, faulty, |o| o == victim, 6);
    keys.extend(keys_on(cluster, "live", |o| o != victim, 6));
    let table = Table::new(keys);
    let cache = fault_cache(cluster);
    let other_process = fault_cache(cluster);
    table
        .until_cached(&cache, 0..12, Duration::from_secs(5))
        .await;
    (table, cache, other_process)
}

/// What every fault case under load requires of its readers and writer:
/// no error, no call past its bound, enough traffic to mean something,
/// nothing stale served, nothing stale left in Redis.
fn assert_unharmed(seen: &Seen, written: &Written, diverged: &[String]) {
    assert!(
        seen.calls > 100 && written.changes > 50,
        "{seen:?} {written:?}"
    );
    assert_eq!(seen.errors, 0, "{seen:?}");
    assert!(
        seen.slowest < CALL_BOUND,
        "a read waited on the faulty node: {seen:?}"
    );
    assert!(
        written.slowest_key < CALL_BOUND,
        "a change waited on the faulty node: {written:?}"
    );
    assert!(
        written.slowest_pattern < PATTERN_BOUND,
        "a pattern invalidation waited on the faulty node: {written:?}"
    );
    assert!(seen.stale.is_empty(), "{:#?}", seen.stale);
    assert!(diverged.is_empty(), "{diverged:#?}");
}

/// Readers over `rows` of `table` until `stop`; each returns what it saw.
fn spawn_readers(
    n: usize,
    cache: &Cache,
    table: &Arc<Table>,
    rows: std::ops::Range<usize>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let (cache, table, stop, rows) =
                (cache.clone(), table.clone(), stop.clone(), rows.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while !stop.load(SeqCst) {
                    let i = fastrand::usize(rows.clone());
                    table.read(&cache, i, &mut seen).await;
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect()
}

/// What a writer did: changes made, and the slowest of each kind.
#[derive(Debug, Default)]
struct Written {
    changes: u64,
    slowest_key: Duration,
    slowest_pattern: Duration,
}

/// A writer over `rows` of `table` until `stop`: a write-through, an
/// eviction, and (every third) a pattern invalidation naming the row, one
/// every 15 ms.
fn spawn_writer(
    cache: &Cache,
    table: &Arc<Table>,
    rows: std::ops::Range<usize>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Written> {
    spawn_writer_held(cache, table, rows, stop, &Arc::default())
}

/// A pause of a writer between two changes.
#[derive(Default)]
struct Hold {
    asked: AtomicBool,
    /// The writer has stopped, its last change returned.
    paused: AtomicBool,
}

impl Hold {
    /// Asks the writer to stop before its next change and waits (blocking)
    /// until it has.
    fn pause(&self) {
        self.asked.store(true, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.paused.load(SeqCst) {
            assert!(Instant::now() < deadline, "the writer did not pause");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn resume(&self) {
        self.asked.store(false, SeqCst);
    }
}

/// [`spawn_writer`], pausing while `hold` asks it to.
fn spawn_writer_held(
    cache: &Cache,
    table: &Arc<Table>,
    rows: std::ops::Range<usize>,
    stop: &Arc<AtomicBool>,
    hold: &Arc<Hold>,
) -> tokio::task::JoinHandle<Written> {
    let (cache, table, stop, hold) = (cache.clone(), table.clone(), stop.clone(), hold.clone());
    tokio::spawn(async move {
        let mut written = Written::default();
        while !stop.load(SeqCst) {
            if hold.asked.load(SeqCst) {
                hold.paused.store(true, SeqCst);
                while hold.asked.load(SeqCst) && !stop.load(SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                hold.paused.store(false, SeqCst);
                continue;
            }
            let i = fastrand::usize(rows.clone());
            let how = [Change::WriteThrough, Change::Evict, Change::Pattern]
                [(written.changes % 3) as usize];
            let took = table.change(&cache, i, how).await;
            if how == Change::Pattern {
                written.slowest_pattern = written.slowest_pattern.max(took);
            } else {
                written.slowest_key = written.slowest_key.max(took);
            }
            written.changes += 1;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        written
    })
}

async fn join_readers(readers: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut seen = Seen::default();
    for reader in readers {
        seen.add(reader.await.expect("a reader joins"));
    }
    seen
}

fn hits_of(cache: &Cache, name: &str) -> u64 {
    cache.stats_for(name).map_or(0, |s| s.hits)
}

/// One primary is frozen (SIGSTOP) for 2 s, below the cluster's node
/// timeout (raised to 5 s, so that no replica takes over: a stall, not a
/// failover), while 4 tasks read rows, some on that primary, and a writer
/// changes them and writes each through or evicts it (by key or pattern).
///
/// Broken runtimes this catches: an operation with no bound of its own
/// (the cluster connection's response timeout is an hour) waits out the
/// freeze (`slowest` reaches 2 s, over `CALL_BOUND`); an error of the
/// frozen node returned to a caller (`errors`); a change that timed out
/// and was forgotten, or a write that lands late when the node wakes over
/// a newer one, serves an older row (`stale`) or leaves one cached
/// (`diverged`); a cache that never uses the thawed node again fails
/// `until_cached`. (It failed now and then, `stale` holding a read right
/// after a change that timed out, until the engine's fix that
/// `a_caller_after_a_failed_change_is_not_handed_a_read_of_the_old_row`
/// checks step by step.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_fails_no_call_bounds_every_wait_and_serves_nothing_stale_after_the_thaw()
{
    let mut cluster = RedisCluster::start_with(&["--cluster-node-timeout", "5000"]);
    let victim = cluster.primaries()[0];
    let frozen_rows = 0..6;
    let (table, cache, other_process) = rows_around(&cluster, victim, "frozen").await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(4, &cache, &table, 0..12, &stop);
    let writer = spawn_writer(&cache, &table, 0..12, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let frozen = cluster.node_mut(victim).freeze_guarded();
    let frozen_at = table.ms(Instant::now());
    let (loads_before, errors_before) = (
        table.loads_of(frozen_rows.clone()),
        cache.stats_for("frozen").map_or(0, |s| s.errors),
    );
    let live_hits_before = hits_of(&cache, "live");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_while_frozen = table.loads_of(frozen_rows.clone()) - loads_before;
    let errors_while_frozen = cache.stats_for("frozen").map_or(0, |s| s.errors) - errors_before;
    let live_hits_while_frozen = hits_of(&cache, "live") - live_hits_before;
    frozen.thaw();
    let thawed_at = table.ms(Instant::now());

    // Changes made during the freeze land (or are retried) after it, under
    // load.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, SeqCst);
    let written = writer.await.expect("the writer joins");
    let seen = join_readers(readers).await;
    let resumed = table
        .until_cached(&cache, frozen_rows.clone(), Duration::from_secs(8))
        .await;
    let hits_after = hits_of(&cache, "frozen");
    table
        .until_cached(&cache, frozen_rows.clone(), Duration::from_secs(1))
        .await;
    let diverged = table.diverged(&other_process).await;
    eprintln!(
        "frozen at {frozen_at} ms, thawed at {thawed_at} ms: \
         {seen:?} {written:?}; while frozen: {loaded_while_frozen} loads of its rows, \
         {errors_while_frozen} errors, {live_hits_while_frozen} hits on the other primaries; \
         caching resumed {resumed:?} after the load stopped"
    );

    let first = &table.keys[0];
    assert_eq!(
        cluster.owner_of(&format!("{{{NAMESPACE}:{first}}}")),
        victim,
        "no failover"
    );
    assert_unharmed(&seen, &written, &diverged);
    assert!(
        loaded_while_frozen > 5 && errors_while_frozen > 0,
        "the frozen node's rows were not served by the loader: {loaded_while_frozen} loads, \
         {errors_while_frozen} errors"
    );
    assert!(
        hits_of(&cache, "frozen") >= hits_after + 6,
        "hits are counted again: {:?}",
        cache.stats()
    );
    // One frozen node does not stop the others' hits: the breaker's probe
    // goes to a random primary, and the cluster connection does not queue
    // other nodes' commands behind the frozen one's.
    assert!(
        live_hits_while_frozen > 20,
        "{live_hits_while_frozen} hits on the healthy primaries during the freeze"
    );
}

/// Whether `node` refuses a plain write with `-OOM`.
fn refuses_writes(node: &cached_tests::RedisServer) -> bool {
    let client = redis::Client::open(node.url()).expect("a URL");
    let mut conn = client.get_connection().expect("connects");
    let set: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg("x").query(&mut conn);
    set.is_err_and(|e| e.to_string().contains("OOM"))
}

/// One primary refuses every write (`maxmemory 1` with `noeviction`: its
/// writes fail with `-OOM`, its reads work) while its rows are changed,
/// written through and evicted, then takes writes again.
///
/// Broken runtimes this catches: a refused write-through or eviction that
/// is forgotten leaves the old row in Redis (checked: another process still
/// reads it there), and the next read serves it (`stale`, or the
/// `assert_eq!` on each row); a refused write returned to a caller as an
/// error (`errors`); an `-OOM` taken for an outage opens the breaker and
/// stops caching on the healthy primaries too (`live` rows loaded, or no
/// hits there); retries that never land, or keys left blocked once they
/// did, fail `until_cached`; a retry that lands on nothing leaves old rows
/// cached (`diverged`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_refusing_writes_serves_the_loader_and_nothing_stale_while_the_others_keep_caching()
 {
    let cluster = RedisCluster::start();
    let victim = cluster.primaries()[0];
    let node = &cluster.nodes()[victim];
    let (full_rows, live_rows) = (0..6, 6..12);
    let (table, cache, other_process) = rows_around(&cluster, victim, "full").await;

    let () = node.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let () = node.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    assert!(refuses_writes(node), "the primary still takes writes");

    // Each row changed once. A write-through is refused (a script that
    // writes); an eviction (`UNLINK`) is not, as Redis takes deletions
    // under `maxmemory`. This process must not serve the old row, not
    // even before its retry has removed it from Redis.
    let mut seen = Seen::default();
    let errors = cache.stats_for("full").map_or(0, |s| s.errors);
    for i in full_rows.clone() {
        let how = if i % 2 == 0 {
            Change::WriteThrough
        } else {
            Change::Evict
        };
        let took = table.change(&cache, i, how).await;
        assert!(took < CALL_BOUND, "{how:?} took {took:?}");
        assert_eq!(
            table.read(&cache, i, &mut seen).await,
            Some(2),
            "{}",
            table.keys[i]
        );
        assert_ne!(
            other_process.get::<u64>(&table.keys[i]).await,
            Some(2),
            "{how:?} of {} was stored: the fault did not happen",
            table.keys[i]
        );
        if how == Change::Evict {
            assert_eq!(
                other_process.get::<u64>(&table.keys[i]).await,
                None,
                "the eviction of {} was refused, not taken at once",
                table.keys[i]
            );
        }
    }
    let refused = cache.stats_for("full").map_or(0, |s| s.errors) - errors;
    assert!(
        refused >= 3,
        "{refused} refused writes counted: {:?}",
        cache.stats()
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        for i in full_rows.clone() {
            assert_eq!(
                table.read(&cache, i, &mut seen).await,
                Some(2),
                "{}",
                table.keys[i]
            );
            assert_ne!(
                cache.get::<u64>(&table.keys[i]).await,
                Some(1),
                "the typed API served it"
            );
        }
    }

    // Then under load: readers over every row, a writer over the full
    // primary's.
    let stop = Arc::new(AtomicBool::new(false));
    let (live_loads, live_hits) = (table.loads_of(live_rows.clone()), hits_of(&cache, "live"));
    let full_loads = table.loads_of(full_rows.clone());
    let readers = spawn_readers(4, &cache, &table, 0..12, &stop);
    let writer = spawn_writer(&cache, &table, full_rows.clone(), &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, SeqCst);
    let written = writer.await.expect("the writer joins");
    seen.add(join_readers(readers).await);
    let live_loaded = table.loads_of(live_rows.clone()) - live_loads;
    let live_hit = hits_of(&cache, "live") - live_hits;
    let full_loaded = table.loads_of(full_rows.clone()) - full_loads;
    assert!(refuses_writes(node), "the primary took writes again");

    let () = node.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    let full_hits = hits_of(&cache, "full");
    let resumed = table
        .until_cached(&cache, full_rows.clone(), Duration::from_secs(5))
        .await;
    let diverged = table.diverged(&other_process).await;
    eprintln!(
        "{seen:?} {written:?}; while refused: {full_loaded} loads of its rows, {live_loaded} loads \
         and {live_hit} hits of the others'; caching resumed after {resumed:?}"
    );

    assert!(
        seen.calls > 100 && written.changes > 30,
        "{seen:?} {written:?}"
    );
    assert_eq!(seen.errors, 0, "{seen:?}");
    assert!(seen.stale.is_empty(), "{:#?}", seen.stale);
    assert!(seen.slowest < CALL_BOUND, "{seen:?}");
    assert!(written.slowest_key < CALL_BOUND, "{written:?}");
    assert!(written.slowest_pattern < PATTERN_BOUND, "{written:?}");
    assert!(
        full_loaded > 10,
        "the refused primary's rows were not loaded: {full_loaded}"
    );
    assert_eq!(
        live_loaded,
        0,
        "rows on the healthy primaries stopped caching: {:?}",
        cache.stats()
    );
    assert!(
        live_hit > 100,
        "{live_hit} hits on the healthy primaries: {:?}",
        cache.stats()
    );
    assert!(!cache.breaker_open(), "-OOM opened the breaker");
    assert!(
        hits_of(&cache, "full") > full_hits,
        "no hit counted: {:?}",
        cache.stats()
    );
    assert!(diverged.is_empty(), "{diverged:#?}");
}

/// A cache on the TLS cluster's `rediss://` seeds, trusting `ca`. Patient,
/// as the single-node TLS tests are: handshakes on a loaded machine must
/// not turn a test of certificates into one of timeouts.
fn tls_cluster_builder(cluster: &RedisCluster, ca: &str) -> cached_runtime::CacheBuilder {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .redis_tls_ca(ca.to_owned())
        .op_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
}

/// Asserts that `cluster` formed over TLS alone: every node reports
/// `cluster_state:ok` and runs with no plain port and the cluster bus and
/// replication on TLS, and every replica's link to its primary is up.
fn assert_formed_over_tls(cluster: &RedisCluster) {
    for node in cluster.nodes() {
        let info: String = node.cmd(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:6"), "{info}");
        for (setting, want) in [
            ("port", "0"),
            ("tls-cluster", "yes"),
            ("tls-replication", "yes"),
        ] {
            let got: Vec<String> = node.cmd(&["CONFIG", "GET", setting]);
            assert_eq!(got.get(1).map(String::as_str), Some(want), "{setting}");
        }
        let replication: String = node.cmd(&["INFO", "replication"]);
        assert!(
            replication.contains("role:master") || replication.contains("master_link_status:up"),
            "{replication}"
        );
    }
    assert!(
        cluster.urls().iter().all(|u| u.starts_with("rediss://")),
        "{:?}",
        cluster.urls()
    );
}

/// How many values the cluster's primaries hold.
fn stored_entries(cluster: &RedisCluster) -> i64 {
    cluster
        .primaries()
        .into_iter()
        .map(|i| cluster.nodes()[i].cmd::<i64>(&["DBSIZE"]))
        .sum()
}

/// A row per primary, read through `cache` twice, then evicted and read
/// again: returns the loader's runs and each read's value.
async fn read_evict_read(cluster: &RedisCluster, cache: &Cache) -> (u64, Vec<u64>) {
    let loads = AtomicU64::new(0);
    let rows: Vec<String> = cluster
        .primaries()
        .into_iter()
        .flat_map(|p| keys_on(cluster, "tls", move |o| o == p, 1))
        .collect();
    assert_eq!(rows.len(), 3, "one row on each primary");
    let mut got = Vec::new();
    let read = |key: &str| {
        let loads = &loads;
        let key = key.to_owned();
        async move {
            let n = key.len() as u64;
            cache
                .get_or_load(&key, ROW_TTL, || async {
                    loads.fetch_add(1, SeqCst);
                    Ok::<u64, ()>(n)
                })
                .await
                .expect("no cache failure reaches the caller")
        }
    };
    for key in &rows {
        got.push(read(key).await);
        got.push(read(key).await);
    }
    for key in &rows {
        let evicted = cache.invalidate(key).await;
        if cache.ping().await.is_ok() {
            evicted.expect("the eviction reached the node");
        }
        got.push(read(key).await);
    }
    (loads.load(SeqCst), got)
}

/// A cluster that speaks TLS alone (clients, the cluster bus, replication;
/// no plain port) caches for a cache given its `rediss://` seeds and the
/// private CA: a row on each primary misses once, then hits, is evicted,
/// and loads again; with a CA that did not sign the nodes' certificates,
/// every call falls back to its loader without an error, stores nothing,
/// and `ping` fails.
///
/// Broken runtimes this catches: the CA not passed to the cluster client
/// (or TLS dropped for the nodes it discovers: they speak TLS alone) makes
/// every call load (`loads` 9 rather than 6) and `ping` fail; a node's
/// certificate not checked lets the wrong-CA cache store rows (`DBSIZE`)
/// or answer `ping`; a handshake failure returned to the caller fails the
/// `expect` in `read_evict_read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_caches_for_the_private_ca_and_refuses_another() {
    let pki = cached_tests::Pki::generate();
    let cluster = RedisCluster::start_tls(&pki, cached_tests::ClientAuth::Optional);
    assert_formed_over_tls(&cluster);

    let cache = tls_cluster_builder(&cluster, &pki.ca_pem)
        .build()
        .expect("builds");
    assert_eq!(cache.backend_kind(), "redis-cluster");
    cache.ping().await.expect("a TLS connection to the cluster");
    let (loads, got) = read_evict_read(&cluster, &cache).await;
    assert_eq!(
        loads, 6,
        "each row loaded once, then again after its eviction: {got:?}"
    );
    assert_eq!(got, [5, 5, 5, 5, 5, 5, 5, 5, 5], "the loader's values");
    assert_eq!(
        stored_entries(&cluster),
        3,
        "the rows loaded again are stored"
    );
    let stats = cache.stats_for("tls").expect("stats");
    assert_eq!((stats.hits, stats.errors), (3, 0), "{stats:?}");

    // A cache that trusts another CA: the nodes' certificates are refused.
    for p in cluster.primaries() {
        let () = cluster.nodes()[p].cmd(&["FLUSHALL"]);
    }
    let stranger = cached_tests::Pki::generate_named("another CA");
    let wrong = tls_cluster_builder(&cluster, &stranger.ca_pem)
        .build()
        .expect("builds: certificates are checked on connecting");
    let refused = wrong
        .ping()
        .await
        .expect_err("a node's certificate was trusted");
    eprintln!("ping with the wrong CA: {refused}");
    let started = Instant::now();
    let (loads, got) = read_evict_read(&cluster, &wrong).await;
    assert_eq!(got, [5, 5, 5, 5, 5, 5, 5, 5, 5], "the loader's values");
    assert_eq!(loads, 9, "nothing was cached");
    assert_eq!(stored_entries(&cluster), 0, "nothing was stored");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Mutual TLS on a TLS-only cluster: a cache without a client certificate
/// is turned away by every node (its calls fall back to their loaders, no
/// error, nothing stored, `ping` fails); one with the CA's client
/// certificate caches and evicts.
///
/// Broken runtimes this catches: the client certificate not presented to
/// the nodes (or to those discovered after the seeds) leaves the second
/// cache loading every call (`loads` 9, not 6); a refused handshake
/// returned to the caller fails the `expect` in `read_evict_read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_requiring_client_certificates_caches_only_for_a_client_with_one() {
    let pki = cached_tests::Pki::generate();
    let cluster = RedisCluster::start_tls(&pki, cached_tests::ClientAuth::Required);
    assert_formed_over_tls(&cluster);

    let anonymous = tls_cluster_builder(&cluster, &pki.ca_pem)
        .build()
        .expect("builds");
    let refused = anonymous
        .ping()
        .await
        .expect_err("connected without a certificate");
    let started = Instant::now();
    let (loads, got) = read_evict_read(&cluster, &anonymous).await;
    eprintln!(
        "ping without a client certificate: {refused}; 9 calls took {:?}",
        started.elapsed()
    );
    assert_eq!(got, [5, 5, 5, 5, 5, 5, 5, 5, 5], "the loader's values");
    assert_eq!(loads, 9, "nothing was cached");
    assert_eq!(stored_entries(&cluster), 0, "nothing was stored");

    let cache = tls_cluster_builder(&cluster, &pki.ca_pem)
        .redis_tls_client(pki.client_cert.clone(), pki.client_key.clone())
        .build()
        .expect("builds");
    cache.ping().await.expect("mutual TLS with every node");
    let (loads, got) = read_evict_read(&cluster, &cache).await;
    assert_eq!(
        loads, 6,
        "each row loaded once, then again after its eviction: {got:?}"
    );
    assert_eq!(stored_entries(&cluster), 3);
    let stats = cache.stats_for("tls").expect("stats");
    assert_eq!((stats.hits, stats.errors), (3, 0), "{stats:?}");
}

/// One primary is frozen (SIGSTOP) past the cluster's node timeout while
/// 4 tasks read rows, some on that primary, and a writer changes them:
/// its replica takes over while it sleeps, and when it is thawed it still
/// holds the commands that queued up on its sockets, and believes for a
/// moment that it serves its slots, until it learns otherwise and rejoins
/// as a replica.
///
/// Broken runtimes this catches: a call that waits on the frozen node
/// past its operation timeout, or until the slot map is refreshed
/// (`slowest`); an error returned (`errors`); a change made during the
/// freeze that only "landed" on the old primary (whose writes the new one
/// never sees) and so was not retried on the new one, after which this
/// process serves the row it replaced (`stale`) or leaves it cached
/// (`diverged`); caching that does not move to the promoted replica
/// (`until_cached`).
///
/// The writer pauses from the takeover until the old primary has rejoined:
/// a change still waiting on the frozen primary's socket when it wakes
/// (sent less than an operation timeout before) runs there and is
/// acknowledged before the node learns it was replaced, and is then lost
/// when it rejoins as a replica. No client can tell that change from one
/// that landed; it is the lost acknowledged write of a failover that
/// README.md's "Failover" paragraph documents (and that this test hit
/// about once in a hundred runs before the pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_frozen_past_its_failover_fails_no_call_and_serves_nothing_stale_after_it_wakes()
{
    let cluster = RedisCluster::start();
    let victim = cluster.primaries()[0];
    let frozen_rows = 0..6;
    let (table, cache, other_process) = rows_around(&cluster, victim, "frozen").await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(4, &cache, &table, 0..12, &stop);
    let hold = Arc::new(Hold::default());
    let writer = spawn_writer_held(&cache, &table, 0..12, &stop, &hold);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = Arc::clone(&hold);
    let (cluster, frozen_for) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let frozen_for = cluster.freeze_primary_until_failover_then(victim, || held.pause());
        (cluster, frozen_for)
    })
    .await
    .expect("the failover joins");
    hold.resume();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, SeqCst);
    let written = writer.await.expect("the writer joins");
    let seen = join_readers(readers).await;
    let resumed = table
        .until_cached(&cache, frozen_rows.clone(), Duration::from_secs(10))
        .await;
    let diverged = table.diverged(&other_process).await;
    eprintln!(
        "{seen:?} {written:?}; frozen for {frozen_for:?}, caching resumed {resumed:?} after the \
         load stopped"
    );

    let first = &table.keys[0];
    assert_ne!(
        cluster.owner_of(&format!("{{{NAMESPACE}:{first}}}")),
        victim,
        "a failover"
    );
    assert_unharmed(&seen, &written, &diverged);
}

/// One primary pauses its writers for 3 s (`CLIENT PAUSE 3000 WRITE`, as
/// a manual failover does): reads of what it holds are answered on any
/// connection but a blocked one, while each write-through or eviction
/// (and the cache's connection to that node, which a paused write blocks)
/// waits until the operation timeout gives up on it, and lands when the
/// pause ends. Rows are changed, written through and evicted, during it.
///
/// Broken runtimes this catches: a write-through or eviction that timed
/// out and was forgotten leaves the old row readable in Redis (checked:
/// another process reads it), and once the breaker's probe has moved
/// callers to a fresh connection (one that no paused write blocks) this
/// process serves that row (`assert_eq!` on each read, `stale`); a call
/// waiting on the blocked connection past its timeout (`slowest`); a
/// change that lands late over a newer one (`diverged`); caching that does
/// not resume once the writes have landed (`until_cached`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_pausing_writes_serves_nothing_its_timed_out_changes_replaced() {
    let cluster = RedisCluster::start();
    let victim = cluster.primaries()[0];
    let node = &cluster.nodes()[victim];
    let paused_rows = 0..6;
    let (table, cache, other_process) = rows_around(&cluster, victim, "paused").await;

    let () = node.cmd(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    let paused = Instant::now();
    let mut seen = Seen::default();
    for (i, how) in [(0, Change::WriteThrough), (1, Change::Evict)] {
        let took = table.change(&cache, i, how).await;
        assert!(took < CALL_BOUND, "{how:?} took {took:?}");
        assert_eq!(
            other_process.get::<u64>(&table.keys[i]).await,
            Some(1),
            "{how:?} of {} was not held back: the fault did not happen",
            table.keys[i]
        );
    }
    // Only the paused node's rows: its failures open the breaker, whose
    // probe gives callers a fresh connection that reads the old rows.
    while paused.elapsed() < Duration::from_millis(1200) {
        for i in paused_rows.clone() {
            let want = table.source[i].load(SeqCst);
            assert_eq!(
                table.read(&cache, i, &mut seen).await,
                Some(want),
                "{} after its change timed out",
                table.keys[i]
            );
        }
    }
    let opened = cache.stats_for("paused").map_or(0, |s| s.skipped);

    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(4, &cache, &table, 0..12, &stop);
    let writer = spawn_writer(&cache, &table, 0..12, &stop);
    tokio::time::sleep(Duration::from_millis(1800) + Duration::from_millis(1000)).await;
    stop.store(true, SeqCst);
    let written = writer.await.expect("the writer joins");
    seen.add(join_readers(readers).await);
    let resumed = table
        .until_cached(&cache, paused_rows.clone(), Duration::from_secs(8))
        .await;
    let diverged = table.diverged(&other_process).await;
    eprintln!(
        "{seen:?} {written:?}; {opened} calls skipped by the breaker before the load; caching \
         resumed {resumed:?} after the load stopped"
    );

    assert!(
        seen.calls > 100 && written.changes > 50,
        "{seen:?} {written:?}"
    );
    assert_eq!(seen.errors, 0, "{seen:?}");
    assert!(seen.stale.is_empty(), "{:#?}", seen.stale);
    assert!(seen.slowest < CALL_BOUND, "{seen:?}");
    assert!(written.slowest_key < CALL_BOUND, "{written:?}");
    assert!(written.slowest_pattern < PATTERN_BOUND, "{written:?}");
    assert!(diverged.is_empty(), "{diverged:#?}");
}

/// A caller that begins after a change of its row failed (so the change is
/// pending, and the row's old value may still be in Redis) must not be
/// handed a value read from Redis by another caller's read. Arranged step
/// by step: a pattern invalidation of a row fails (another primary is
/// frozen, so it times out before its second pass removes the value); a
/// caller who began before it was waiting on a read of the row (slowed
/// by `CLIENT PAUSE` on the row's primary) and, its read detached by the
/// invalidation, reads again; a caller who begins after the invalidation
/// returned joins that second read.
///
/// A correct runtime serves the later caller the loader's new row (the
/// change is pending: its calls go to the loader). A runtime whose
/// pending-blocked callers join the key's in-process flight and take its
/// hit serves the row the change replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_a_failed_change_is_not_handed_a_read_of_the_old_row() {
    let mut cluster = RedisCluster::start_with(&["--cluster-node-timeout", "10000"]);
    let primaries = cluster.primaries();
    let (home, frozen) = (primaries[0], primaries[1]);
    let key = keys_on(&cluster, "row", |o| o == home, 1).remove(0);
    let table = Table::new(vec![key]);
    // Patient: the row's reads are held up on purpose below.
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .op_timeout(Duration::from_millis(1000))
        .build()
        .expect("builds");
    table
        .until_cached(&cache, 0..1, Duration::from_secs(5))
        .await;

    let home_node = cluster.nodes()[home].url();
    let pause = move |ms: &str| {
        let client = redis::Client::open(home_node.as_str()).expect("a URL");
        let mut conn = client.get_connection().expect("connects");
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("ALL")
            .query(&mut conn)
            .expect("pauses");
    };
    let guard = cluster.node_mut(frozen).freeze_guarded();
    let table2 = table.clone();
    let cache2 = cache.clone();
    let change = tokio::spawn(async move {
        let started = Instant::now();
        table2.change(&cache2, 0, Change::Pattern).await;
        started.elapsed()
    });
    // The pattern's scan of the row's primary is done; its reads wait now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pause("1200");
    let spawn_read = |table: Arc<Table>, cache: Cache| {
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let got = table.read(&cache, 0, &mut seen).await;
            (got, seen)
        })
    };
    let first = spawn_read(table.clone(), cache.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn_read(table.clone(), cache.clone());
    let took = change.await.expect("the change joins");
    assert!(
        took >= Duration::from_millis(900),
        "the change did not time out: {took:?}"
    );
    // The second caller has read again by now; the third begins after the
    // change returned.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (third, seen) = spawn_read(table.clone(), cache.clone())
        .await
        .expect("joins");
    let (first, second) = (first.await.expect("joins"), second.await.expect("joins"));
    guard.thaw();
    eprintln!("first {first:?}, second {second:?}, third {third:?} {seen:?}");
    assert!(seen.stale.is_empty(), "{:#?}", seen.stale);
    assert_eq!(third, Some(2), "the row the failed change replaced");
}

/// A pattern invalidation on a cluster removes exactly what it removes on
/// one server (the memory backend's matcher, which is Redis's, see
/// `glob_parity.rs`): generated keys and patterns over the glob's
/// metacharacters, unclosed classes, trailing backslashes and dashes among
/// them, whose cluster form wraps the pattern in the value keys' braces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_removes_what_it_removes_on_one_server() {
    const ALPHABET: &[char] = &['a', 'b', ':', '*', '?', '[', ']', '^', '-', '\\', 'é'];
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let text = |rng: &mut fastrand::Rng, len: std::ops::RangeInclusive<usize>| -> String {
        let len = rng.usize(len);
        (0..len)
            .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
            .collect()
    };
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let mut keys: Vec<String> = (0..40)
        .map(|_| format!("g:{}", text(&mut rng, 1..=3)))
        .collect();
    keys.sort();
    keys.dedup();
    let mut patterns = vec![
        "g:a[b".to_owned(),
        "g:a\\".to_owned(),
        "g:[a-".to_owned(),
        "g:[ab-".to_owned(),
        "g:[^".to_owned(),
        "g:*\\".to_owned(),
    ];
    while patterns.len() < 40 {
        patterns.push(format!("g:{}", text(&mut rng, 1..=4)));
    }
    let full = |k: &str| format!("{NAMESPACE}:{k}");
    for pattern in &patterns {
        for key in &keys {
            cache.set(key, &1u8, Duration::from_secs(60)).await;
        }
        cache
            .invalidate_pattern(pattern)
            .await
            .expect("invalidates");
        for key in &keys {
            let removed = cached_runtime::__private::__glob_matches(&full(pattern), &full(key));
            assert_eq!(
                cache.get::<u8>(key).await.is_none(),
                removed,
                "seed {seed}: invalidate_pattern({pattern:?}) and {key:?}: removed on one server: {removed}"
            );
        }
    }
}

/// Entries in one slot (`part:1}:{n}`: the hash tag ends at the first `}`)
/// while that slot migrates, half of them moved: an invalidation of one of
/// them, of ten at once, or of a pattern, must land now, not once the
/// migration ends.
///
/// Broken runtimes this catches: one `UNLINK` of an entry's value, lease
/// and tag versions (some on each node, or some missing) meets `TRYAGAIN`,
/// which the cluster connection retries until the caller's timeout: every
/// invalidation failed, and another process read every old value, for as
/// long as the migration lasted (`failed`, `left`); redirected commands
/// sent at once lose their `ASKING` to each other (`changed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_entries_in_a_slot_mid_migration_land_at_once() {
    // As the ACL user (`redis_acl_rule`), whose rule must allow what a
    // migration asks of a client.
    let backend = cached_tests::Backend::cluster();
    let cluster = backend.redis_cluster().expect("a cluster");
    let cache = backend.builder().build().expect("builds");
    let other_process = backend.builder().build().expect("builds");
    let key = |n: usize| format!("part:1}}:{n}");
    store_each(&cache, 0..40, key).await;
    let migration = half_moved(cluster, &key(0), 20);

    let started = Instant::now();
    let failed = invalidate_each(&cache, 0..10, key).await;
    let changed = cache.invalidate_many((10..20).map(key)).await;
    let by_pattern = cache.invalidate_pattern("part:1}:3*").await;
    let took = started.elapsed();
    let left = held::<u64>(&other_process, 0..40, key).await;
    finish_moving(cluster, migration);
    eprintln!(
        "{took:?}; failed {failed:?}; left {left:?}; breaker open: {}",
        cache.breaker_open()
    );
    assert!(failed.is_empty(), "{failed:?}");
    changed.expect("10 entries in one call");
    assert!(by_pattern.is_ok(), "{by_pattern:?}");
    assert_eq!(
        left,
        (20..30).collect::<Vec<_>>(),
        "what another process still reads"
    );
    assert!(
        !cache.breaker_open(),
        "the migration was taken for an outage"
    );
    backend.assert_nothing_refused();
}

/// As [`changes_of_entries_in_a_slot_mid_migration_land_at_once`], the
/// slot moving to a node just added, the first step of scaling a cluster
/// out: that node serves no slot yet, so it is in no slot map
/// (`CLUSTER SLOTS`), and the half of the entries it received can only be
/// reached by following the source's `ASK`.
///
/// Broken runtimes this catches: an invalidation that looks for a moved
/// key only on the primaries of the slot map finds it nowhere, and fails
/// (every change of an entry in the slot failed, and another process read
/// the old value, for as long as the migration lasted); a pattern
/// invalidation that scans only the slot map's primaries misses the
/// entries moved there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_entries_in_a_slot_moving_to_a_node_just_added_land_at_once() {
    let mut backend = cached_tests::Backend::cluster();
    let added = backend
        .redis_cluster_mut()
        .expect("a cluster")
        .add_primary();
    let cluster = backend.redis_cluster().expect("a cluster");
    let cache = backend.builder().build().expect("builds");
    let other_process = backend.builder().build().expect("builds");
    let key = |n: usize| format!("part:1}}:{n}");
    store_each(&cache, 0..40, key).await;
    let migration = half_moved_to(cluster, &key(0), 20, added);
    let there: Vec<String> = cluster.nodes()[added].cmd(&["KEYS", "*part:1}:3*"]);
    assert!(
        there.iter().any(|k| !k.contains('~')),
        "the pattern below names entries on the added node: {there:?}"
    );

    let failed = invalidate_each(&cache, 0..10, key).await;
    let changed = cache.invalidate_many((10..20).map(key)).await;
    // From a cache whose connection no redirection has sent to the added
    // node yet.
    let by_pattern = backend
        .builder()
        .build()
        .expect("builds")
        .invalidate_pattern("part:1}:3*")
        .await;
    let left = held::<u64>(&other_process, 0..40, key).await;
    finish_moving(cluster, migration);
    let after = held::<u64>(&other_process, 0..40, key).await;
    assert!(failed.is_empty(), "{failed:?}");
    changed.expect("10 entries in one call");
    assert!(by_pattern.is_ok(), "{by_pattern:?}");
    let expected: Vec<usize> = (20..30).collect();
    assert_eq!(left, expected, "what another process still reads");
    assert_eq!(after, expected, "once the slot has moved");
    assert!(
        !cache.breaker_open(),
        "the migration was taken for an outage"
    );
    backend.assert_nothing_refused();
}

/// A value written by hand where a slot's epoch would be kept
/// (`{namespace}:~epoch:{n}`: the name is the cache's own, never written on
/// a cluster): text, or a list. The lease script of an entry of that slot
/// removes it, so the entry is stored and then served, as on one server.
///
/// Broken runtime this catches: the lease script read the epoch as a
/// number, and every lease of the slot failed (each call loaded, nothing
/// was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_where_a_slots_epoch_is_kept_is_removed() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let slot = cluster.slot_of(&format!("{NAMESPACE}:e:1"));
    // The slot's epoch: tagged by the first number that hashes to it.
    let owner = &cluster.nodes()[cluster.owner_of_slot(slot)];
    let mut conn = redis::Client::open(owner.url())
        .expect("url")
        .get_connection()
        .expect("connects");
    let mut pipe = redis::pipe();
    for n in 0..100_000u32 {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(n.to_string());
    }
    let slots: Vec<usize> = pipe.query(&mut conn).expect("KEYSLOT");
    let n = slots
        .iter()
        .position(|&s| s == slot)
        .expect("a number in the slot");
    let epoch = format!("{NAMESPACE}:~epoch:{{{n}}}");
    assert_eq!(cluster.slot_of(&epoch), slot);
    let loads = std::sync::atomic::AtomicU32::new(0);
    let load = || async {
        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<u64, ()>(1)
    };
    for foreign in [
        ["SET", epoch.as_str(), "not a number"],
        ["RPUSH", epoch.as_str(), "a"],
    ] {
        let _: redis::Value = owner.cmd(&["DEL", &epoch]);
        let _: redis::Value = owner.cmd(&foreign);
        let before = loads.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2 {
            let got = cache
                .get_or_load("e:1", Duration::from_secs(60), load)
                .await;
            assert_eq!(got, Ok(1));
        }
        assert_eq!(
            loads.load(std::sync::atomic::Ordering::SeqCst),
            before + 1,
            "{foreign:?}: stored by the first load, a hit after"
        );
        cache.invalidate("e:1").await.expect("invalidates");
    }
}

/// An invalidation by a process whose slot map is stale (the slot moved
/// since it last used it; its scripts declare no keys, so no `MOVED`
/// corrects the map) asks the slot's primary by the map as it is now, and
/// alone, before any other node: the stale node passes over every key,
/// and a node importing the slot, asked at the same time, could answer
/// "not here" before a `MIGRATE` brings the entry (found by a review).
/// Here the primary holds the entry's every key, so the importing node
/// is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_through_a_stale_slot_map_asks_the_slots_primary_first() {
    let cluster = RedisCluster::start();
    let cache = cluster_cache(&cluster);
    cache.set("e:1", &1u64, Duration::from_secs(600)).await;
    let value = format!("{{{NAMESPACE}:e:1}}");
    let slot = cluster.slot_of(&value);
    let first = cluster.owner_of_slot(slot);
    let mut others = cluster.primaries().into_iter().filter(|&p| p != first);
    let (primary, importing) = (
        others.next().expect("a primary"),
        others.next().expect("another"),
    );
    cluster.move_slots(&[slot], primary);
    let keys = [
        format!("{value}:~ltags"),
        format!("{value}:~lease"),
        format!("{value}:~tags"),
        value.clone(),
    ];
    let node = &cluster.nodes()[primary];
    for key in &keys[..3] {
        let () = node.cmd(&["SET", key, "x"]);
    }
    let moved: i64 = node.cmd(&["EXISTS", &value]);
    assert_eq!(moved, 1, "the entry moved with its slot");
    cluster.open_migration(slot, primary, importing);
    let () = cluster.nodes()[importing].cmd(&["CONFIG", "RESETSTAT"]);
    cache.invalidate("e:1").await.expect("invalidates");
    let info: String = cluster.nodes()[importing].cmd(&["INFO", "commandstats"]);
    assert!(
        !info.contains("cmdstat_asking"),
        "the importing node was asked before the slot's primary answered"
    );
    let left: i64 = node.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(left, 0, "removed from the slot's primary");
}

/// A cluster whose nodes refuse `EVAL` (as one whose servers predate
/// script flags refuses the script the cluster invalidations send): an
/// invalidation by key and one by pattern still remove what they name,
/// one key a command; and ten entries of a slot half moved, whose `ASK`
/// redirections, sent at once, take each other's `ASKING`, are removed
/// once those are sent again one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_land_on_a_cluster_that_refuses_their_script() {
    let cluster = RedisCluster::start_with(&["--rename-command", "EVAL", ""]);
    let cache = cluster_cache(&cluster);
    // Stored by loads (`set` writes through with `EVAL`).
    for n in 0..8u64 {
        let loaded = cache
            .get_or_load(
                &format!("plain:{n}"),
                Duration::from_secs(600),
                || async move { Ok::<_, ()>(n) },
            )
            .await;
        assert_eq!(loaded, Ok(n));
    }
    cache.invalidate("plain:0").await.expect("by key");
    cache
        .invalidate_many((1..3).map(|n| format!("plain:{n}")))
        .await
        .expect("by keys");
    let removed = cache.invalidate_pattern("plain:[3-5]").await;
    assert_eq!(removed.ok(), Some(3), "by pattern");
    let mut left = Vec::new();
    for n in 0..8 {
        if cache.get::<u64>(&format!("plain:{n}")).await.is_some() {
            left.push(n);
        }
    }
    assert_eq!(left, [6, 7]);

    let key = |n: usize| format!("part:1}}:{n}");
    for n in 0..20 {
        let loaded = cache
            .get_or_load(&key(n), Duration::from_secs(600), || async move {
                Ok::<_, ()>(n)
            })
            .await;
        assert_eq!(loaded, Ok(n));
    }
    // Patient: one command per key (value, lease, tag keys; some after
    // `ASK`), about 80, under one operation timeout, and this asks whether
    // they land, not how fast. Two seconds timed out once in CI; its
    // connections made before the clock starts, five.
    let patient = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .op_timeout(Duration::from_secs(5))
        .build()
        .expect("builds");
    assert_eq!(patient.get::<usize>(&key(1)).await, Some(1), "warmed");
    let migration = half_moved(&cluster, &key(0), 10);
    let removed = patient.invalidate_many((0..20).map(key)).await;
    let left = held::<usize>(&cache, 0..20, key).await;
    finish_moving(&cluster, migration);
    removed.expect("20 entries of a slot half moved");
    assert_eq!(left, [0usize; 0], "left by an acknowledged invalidation");
}

/// Opens the migration of `key`'s slot from its primary to another, and
/// moves `count` of the slot's keys there. Returns the slot, its primary
/// and the other.
fn half_moved(cluster: &RedisCluster, key: &str, count: usize) -> (usize, usize, usize) {
    let (_, _, away) = slot_and_another(cluster, key);
    half_moved_to(cluster, key, count, away)
}

/// The slot of entry `key` (the hash tag of its value key), the primary
/// that serves it, and another primary.
fn slot_and_another(cluster: &RedisCluster, key: &str) -> (usize, usize, usize) {
    let slot = cluster.slot_of(&format!("{{{NAMESPACE}:{key}"));
    let home = cluster.owner_of_slot(slot);
    let away = cluster
        .primaries()
        .into_iter()
        .find(|&p| p != home)
        .expect("another primary");
    (slot, home, away)
}

/// [`half_moved`] to primary `away`.
fn half_moved_to(
    cluster: &RedisCluster,
    key: &str,
    count: usize,
    away: usize,
) -> (usize, usize, usize) {
    let slot = cluster.slot_of(&format!("{{{NAMESPACE}:{key}"));
    let home = cluster.owner_of_slot(slot);
    cluster.open_migration(slot, home, away);
    assert_eq!(
        cluster.migrate_keys(slot, home, away, count),
        count,
        "keys moved"
    );
    (slot, home, away)
}

/// Moves the rest of a [`half_moved`] slot's keys, and ends its migration.
fn finish_moving(cluster: &RedisCluster, (slot, home, away): (usize, usize, usize)) {
    while cluster.migrate_keys(slot, home, away, 100) > 0 {}
    cluster.finish_migration(slot, home, away);
}

/// Stores `n` under `key(n)` for each of `ids`.
async fn store_each(cache: &Cache, ids: std::ops::Range<usize>, key: impl Fn(usize) -> String) {
    for n in ids {
        cache
            .set(&key(n), &(n as u64), Duration::from_secs(600))
            .await;
    }
}

/// Invalidates each of `ids` (`key(id)`), one call each; returns those
/// that failed, with their errors.
async fn invalidate_each(
    cache: &Cache,
    ids: std::ops::Range<usize>,
    key: impl Fn(usize) -> String,
) -> Vec<(usize, String)> {
    let mut failed = Vec::new();
    for n in ids {
        if let Err(e) = cache.invalidate(&key(n)).await {
            failed.push((n, e.to_string()));
        }
    }
    failed
}

/// Which of `ids` `cache` serves a `T` for (`key(id)`), without loading.
async fn held<T: cached_runtime::Cacheable>(
    cache: &Cache,
    ids: std::ops::Range<usize>,
    key: impl Fn(usize) -> String,
) -> Vec<usize> {
    let mut held = Vec::new();
    for id in ids {
        if cache.get::<T>(&key(id)).await.is_some() {
            held.push(id);
        }
    }
    held
}
