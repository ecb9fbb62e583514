//! The near tier (an L1 in process, kept by Redis's `CLIENT TRACKING`):
//! what one cache changes, another's L1 stops serving within milliseconds;
//! what a cache changes itself, it never serves old again, not even once;
//! and a cache whose invalidation channel is lost (stranded, cut, a frozen
//! server) stops trusting its L1 and never serves what it may have missed.
//!
//! Each cache here has an L1 and a tracking connection of its own, as a
//! process does; the last test runs a second OS process (this binary, its
//! ignored `near_reader_child`) against the same server. The consistency
//! checker's `near/*` cases (two worker processes, every kind of write,
//! faults) check the same across processes, and the `near_invalidation`
//! benchmark measures the delay.
//! Every test of the `on_both_backends!` suites also runs on the near tier
//! (`on_near`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, NearCache, cache_evict, cache_put, cached};
use cached_tests::{Proxy, RedisServer, redis_builder, redis_builder_at};

/// A cache with the near tier on `url`, its heartbeat every 20 ms.
fn near_at(url: &str) -> Cache {
    redis_builder_at(url)
        .near_cache(NearCache::new().heartbeat(Duration::from_millis(20)))
        .build()
        .expect("builds")
}

fn near(server: &RedisServer) -> Cache {
    near_at(&server.url())
}

/// Waits (at most 5 s) until `cache`'s L1 is trusted: its tracking
/// connection (started by the first use, a ping here) subscribed.
async fn trusted(cache: &Cache) {
    let _ = cache.ping().await;
    let until = Instant::now() + Duration::from_secs(5);
    while !cache.near_stats().expect("a near cache").trusted {
        assert!(
            Instant::now() < until,
            "the tracking connection never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn l1_hits(cache: &Cache) -> u64 {
    cache.near_stats().expect("a near cache").l1_hits
}

/// Reads `id` through `svc` until L1 answers (a fill can be undone by the
/// push of a change made just before it, so the first read after a change
/// may not stick, and after a fault the breaker may keep L1 aside until
/// the data connection is replaced): every read returns `version`, and
/// within 3 s one comes from L1.
async fn l1_serves(svc: &Svc, id: u64, version: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let before = l1_hits(&svc.cache);
        assert_eq!(svc.get(id).await, version, "{what}");
        if l1_hits(&svc.cache) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{what}: L1 never answered");
}

/// A service whose source is one counter per id: every load returns the
/// source's current version.
#[derive(Clone)]
struct Svc {
    cache: Cache,
    source: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
}

impl Svc {
    fn new(cache: Cache, source: &Arc<AtomicU64>) -> Svc {
        Svc {
            cache,
            source: Arc::clone(source),
            loads: Arc::default(),
        }
    }

    #[cached(prefix = "item", ttl = "1h", key = id, tags = ["items"])]
    async fn get(&self, id: u64) -> u64 {
        let _ = id;
        self.loads.fetch_add(1, SeqCst);
        self.source.load(SeqCst)
    }

    #[cache_put(prefix = "item", ttl = "1h", key = id)]
    async fn put(&self, id: u64, version: u64) -> u64 {
        let _ = id;
        self.source.store(version, SeqCst);
        version
    }

    #[cache_evict(keys = ["item:{id}"])]
    async fn evict(&self, id: u64, version: u64) {
        let _ = id;
        self.source.store(version, SeqCst);
    }

    #[cache_evict(patterns = ["item:*"])]
    async fn evict_pattern(&self, version: u64) {
        self.source.store(version, SeqCst);
    }

    #[cache_evict(tags = ["items"])]
    async fn evict_tag(&self, version: u64) {
        self.source.store(version, SeqCst);
    }

    /// Makes `version` the source's, through the change named (`put`,
    /// `evict`, `pattern` or `tag`) of item 1.
    async fn change(&self, change: &str, version: u64) {
        match change {
            "put" => {
                self.put(1, version).await;
            }
            "evict" => self.evict(1, version).await,
            "pattern" => self.evict_pattern(version).await,
            "tag" => self.evict_tag(version).await,
            other => panic!("no change {other}"),
        }
    }
}

/// Reads through `svc` until it returns `version` (at most `within`);
/// returns how long that took.
async fn until_served(svc: &Svc, id: u64, version: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = svc.get(id).await;
        if got == version {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still served v{got} {:?} after v{version} was written",
            started.elapsed()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_served_from_l1_after_the_first_read() {
    let server = RedisServer::start();
    let source = Arc::new(AtomicU64::new(1));
    let svc = Svc::new(near(&server), &source);
    trusted(&svc.cache).await;
    assert_eq!(svc.get(1).await, 1);
    // The first call's own write pushes an invalidation that may undo the
    // next read's fill: wait until L1 answers, then every read must.
    l1_serves(&svc, 1, 1, "after the first read").await;
    let before = svc.cache.near_stats().expect("near");
    for _ in 0..100 {
        assert_eq!(svc.get(1).await, 1);
    }
    assert_eq!(svc.loads.load(SeqCst), 1);
    let stats = svc.cache.near_stats().expect("near");
    assert_eq!(stats.l1_hits, before.l1_hits + 100, "{stats:?}");
    assert_eq!(stats.l2_hits, before.l2_hits, "{stats:?}");
    assert_eq!(svc.cache.backend_kind(), "redis+near");
    // Subscribed once, and kept: no flush since.
    assert_eq!(stats.subscriptions, 1, "{stats:?}");

    // Keys outside the namespace are not tracked: writing them costs this
    // tier no push and no entry.
    let ns = svc.cache.namespace().to_owned();
    let mut raw = redis::Client::open(server.url())
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for key in ["elsewhere:item:1".to_owned(), format!("{ns}x:item:1")] {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async(&mut raw)
            .await
            .expect("SET");
    }
    // A change in the namespace after them: once its push is in, theirs
    // would be too.
    svc.put(2, 2).await;
    let until = Instant::now() + Duration::from_secs(3);
    while svc.cache.near_stats().expect("near").invalidations_received
        == stats.invalidations_received
    {
        assert!(Instant::now() < until, "the namespace's push never came");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let after = svc.cache.near_stats().expect("near");
    assert!(
        after.invalidations_received <= stats.invalidations_received + 2,
        "pushes for keys outside the namespace: {stats:?} then {after:?}"
    );
    assert_eq!(after.flushes, stats.flushes, "{after:?}");
}

/// Every kind of change made through one cache (write-through, eviction by
/// key, pattern and tag, and a command sent to Redis by hand) stops the
/// other cache's L1 serving the old value within 100 ms (the benchmark
/// measures the real figure, a fraction of a millisecond); and the cache
/// that made it never serves the old value after the change returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_every_l1() {
    let server = RedisServer::start();
    let source = Arc::new(AtomicU64::new(1));
    let a = Svc::new(near(&server), &source);
    let b = Svc::new(near(&server), &source);
    trusted(&a.cache).await;
    trusted(&b.cache).await;
    let within = Duration::from_millis(100);
    let mut version = 1;
    for change in ["put", "evict", "pattern", "tag", "by hand"] {
        // Both L1s hold the current version.
        for svc in [&a, &b] {
            until_served(svc, 1, version, within).await;
            l1_serves(svc, 1, version, change).await;
        }
        version += 1;
        if change == "by hand" {
            source.store(version, SeqCst);
            server.cmd::<()>(&["DEL", "t:item:1"]);
        } else {
            a.change(change, version).await;
        }
        if change != "by hand" {
            // The writer's own L1: the new version at once, every time.
            for _ in 0..20 {
                assert_eq!(a.get(1).await, version, "{change}: the writer's L1");
            }
        }
        until_served(&b, 1, version, within).await;
        for _ in 0..20 {
            assert_eq!(b.get(1).await, version, "{change}: the other L1, after");
        }
    }
    let b_stats = b.cache.near_stats().expect("near");
    assert!(b_stats.invalidations_received >= 5, "{b_stats:?}");
}

/// A tracking connection that goes silent (stranded by the network) while
/// another cache writes: the push is lost for good. The heartbeat notices,
/// L1 stops serving, and after a new subscription it is emptied: the old
/// value is never served past the heartbeat's bound, nor after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_channel_never_serves_what_it_missed() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let source = Arc::new(AtomicU64::new(1));
    let writer = Svc::new(near(&server), &source);
    let reader = Svc::new(near_at(&proxy.url()), &source);
    trusted(&reader.cache).await;
    for fault in ["strand", "cut"] {
        let version = source.load(SeqCst);
        until_served(&reader, 1, version, Duration::from_millis(100)).await;
        l1_serves(&reader, 1, version, fault).await;
        let subscribed = reader.cache.near_stats().expect("near").subscriptions;
        match fault {
            "strand" => proxy.strand(),
            _ => proxy.cut(),
        }
        writer.put(1, version + 1).await;
        // Heartbeat (20 ms) + its timeout (the op timeout, 50 ms) + slack.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            assert_eq!(
                reader.get(1).await,
                version + 1,
                "{fault}: the old value served after the channel was lost"
            );
            let stats = reader.cache.near_stats().expect("near");
            if stats.trusted && stats.subscriptions > subscribed {
                break;
            }
            assert!(
                Instant::now() < until,
                "{fault}: never subscribed again: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Subscribed again: L1 works, and holds only the new value.
        for _ in 0..20 {
            assert_eq!(reader.get(1).await, version + 1, "{fault}: after");
        }
        assert!(reader.cache.near_stats().expect("near").flushes > 0);
    }
}

/// A frozen server answers nothing, the heartbeat included: L1 is distrusted
/// within the heartbeat's bound, calls go to their loaders, and after the
/// thaw L1 is trusted again, emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_not_trusted_until_it_answers() {
    let mut server = RedisServer::start();
    let source = Arc::new(AtomicU64::new(1));
    let svc = Svc::new(near(&server), &source);
    trusted(&svc.cache).await;
    assert_eq!(svc.get(1).await, 1);
    l1_serves(&svc, 1, 1, "before the freeze").await;
    server.freeze();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stats = svc.cache.near_stats().expect("near");
    assert!(
        !stats.trusted,
        "still trusted with the server frozen: {stats:?}"
    );
    let hits = stats.l1_hits;
    // The source changes behind the frozen cache; the call loads it.
    source.store(2, SeqCst);
    assert_eq!(svc.get(1).await, 2, "L1 served while distrusted");
    assert_eq!(l1_hits(&svc.cache), hits);
    server.thaw();
    trusted(&svc.cache).await;
}

/// The byte bound holds whatever the key space: 100,000 distinct keys read
/// through L1 from Redis, and it weighs no more than its bound (moka evicts
/// as it goes; `near_stats` settles its pending work first). The unit test
/// `l1_stays_within_its_byte_bound` fills it with a million.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_stays_within_its_byte_bound_under_many_keys() {
    const KEYS: u64 = 100_000;
    const BOUND: u64 = 256 << 10;
    let server = RedisServer::start();
    let cache = redis_builder(&server)
        .near_cache(NearCache::new().max_bytes(BOUND))
        .build()
        .expect("builds");
    trusted(&cache).await;
    // The entries, written straight to Redis in pipelines of 10,000.
    let bytes = {
        let writer = redis_builder(&server).build().expect("builds");
        writer.set("probe", &7u64, Duration::from_secs(3600)).await;
        let raw: Vec<u8> = server.cmd(&["GET", "t:probe"]);
        raw
    };
    let client = redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set(format!("t:k:{i}"), &bytes).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("pipeline");
    }
    // A million reads, each a miss of L1 and a fill, 64 at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..64u64 {
        let cache = cache.clone();
        tasks.spawn(async move {
            let mut i = lane;
            while i < KEYS {
                assert_eq!(cache.get::<u64>(&format!("k:{i}")).await, Some(7));
                i += 64;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("reader");
    }
    let stats = cache.near_stats().expect("near");
    assert!(stats.l1_bytes <= BOUND, "{stats:?}");
    assert!(stats.l1_evictions > 0, "{stats:?}");
    assert!(stats.l2_hits >= KEYS, "{stats:?}");
}

/// A process's own changes are never served old by it, even when every
/// byte to and from Redis takes 10 ms more: a keyed change removes its key
/// from L1 as it returns, a pattern or tag invalidation waits for the
/// tracking connection to catch up. (The pushes here come back about when
/// the change's reply does; the unit tests of `backend::near` check the
/// removal and the barrier's fallback without a server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_changes_are_never_served_old_even_when_pushes_are_slow() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let source = Arc::new(AtomicU64::new(1));
    let svc = Svc::new(
        redis_builder_at(proxy.url())
            .op_timeout(Duration::from_millis(200))
            .near_cache(NearCache::new().heartbeat(Duration::from_millis(20)))
            .build()
            .expect("builds"),
        &source,
    );
    trusted(&svc.cache).await;
    proxy.set_delay(Duration::from_millis(10));
    let mut version = 1;
    for change in ["put", "evict", "pattern", "tag"] {
        until_served(&svc, 1, version, Duration::from_secs(1)).await;
        l1_serves(&svc, 1, version, change).await;
        version += 1;
        svc.change(change, version).await;
        assert_eq!(
            svc.get(1).await,
            version,
            "{change}: served old right after"
        );
    }
}

/// A cache outlives the runtime that started its tracking connection (a
/// static cache shared by per-test runtimes, say): when that runtime shuts
/// down, L1 is distrusted at once, and the next use, in another runtime,
/// subscribes again.
#[test]
fn a_cache_outliving_its_tracking_runtime_distrusts_then_subscribes_again() {
    let server = RedisServer::start();
    let cache = near(&server);
    let first = tokio::runtime::Runtime::new().expect("runtime");
    first.block_on(trusted(&cache));
    drop(first);
    let stats = cache.near_stats().expect("near");
    assert!(!stats.trusted, "trusted with no tracking task: {stats:?}");
    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        trusted(&cache).await;
        let source = Arc::new(AtomicU64::new(1));
        let svc = Svc::new(cache.clone(), &source);
        l1_serves(&svc, 1, 1, "in the second runtime").await;
    });
}

/// The tracking task runs on the runtime of the cache's first use. That
/// runtime kept but no longer polled (a `current_thread` runtime driven now
/// and then by `block_on`, say), invalidations and heartbeats wait unread
/// in the socket and nothing withdraws trust: L1 must still not be served
/// past the heartbeat's bound (heartbeat plus op timeout) after the last
/// answered heartbeat, and is served again once the task has caught up.
#[test]
fn l1_is_not_served_while_its_tracking_runtime_is_not_polled() {
    let server = RedisServer::start();
    let source = Arc::new(AtomicU64::new(1));
    let svc = Svc::new(near(&server), &source);
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    idle.block_on(async {
        trusted(&svc.cache).await;
        l1_serves(&svc, 1, 1, "warm").await;
    });
    // `idle` is kept, not polled. Another process changes the row.
    let other = tokio::runtime::Runtime::new().expect("runtime");
    other.block_on(async {
        let writer = Svc::new(cached_tests::redis_cache(&server), &source);
        writer.evict(1, 2).await;
        // Well past the heartbeat (20 ms) and the op timeout (50 ms).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            svc.get(1).await,
            2,
            "served from an L1 whose channel had not been heard for 300 ms"
        );
    });
    idle.block_on(async {
        trusted(&svc.cache).await;
        l1_serves(&svc, 1, 2, "once the tracking task runs again").await;
    });
}

// ---- across OS processes ----------------------------------------------------

/// Set in a child's environment: the ignored child test does nothing
/// without it (when `--ignored` runs it in the parent, say).
const CHILD_ENV: &str = "CACHED_TEST_NEAR_CHILD";

/// A service whose source is a key outside the cache's namespace (`source`,
/// read and written on a direct connection): what a database is to a
/// service, shared by every process.
#[derive(Clone)]
struct Shared2 {
    cache: Cache,
    source: redis::aio::MultiplexedConnection,
}

impl Shared2 {
    async fn new(cache: Cache, source_url: &str) -> Shared2 {
        let source = redis::Client::open(source_url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        Shared2 { cache, source }
    }

    #[cached(prefix = "x", ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        let _ = id;
        let mut source = self.source.clone();
        redis::cmd("GET")
            .arg("source")
            .query_async::<Option<u64>>(&mut source)
            .await
            .expect("the source answers")
            .unwrap_or(0)
    }

    #[cache_put(prefix = "x", ttl = "1h", key = id)]
    async fn put(&self, id: u64, version: u64) -> u64 {
        let _ = id;
        let mut source = self.source.clone();
        let () = redis::cmd("SET")
            .arg("source")
            .arg(version)
            .query_async(&mut source)
            .await
            .expect("the source answers");
        version
    }
}

/// The child: a process with the near tier on `NEAR_CACHE_URL` (the
/// parent's proxy), reading key 1. Prints `ready` once L1 serves it; then
/// for each `expect V BOUND_MS` line on stdin reads it every ~100 µs for
/// BOUND_MS + 200 ms and prints `seen V LAG_US STALE`: how long after the
/// line (sent once V's write had returned) it first read V, and how many
/// reads begun after BOUND_MS still returned an older version.
#[test]
#[ignore = "a child process of a_change_in_one_process_reaches_another_and_a_lost_channel_never_serves_old"]
fn near_reader_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let cache_url = std::env::var("NEAR_CACHE_URL").expect("the parent sets it");
    let source_url = std::env::var("NEAR_SOURCE_URL").expect("the parent sets it");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let svc = Shared2::new(near_at(&cache_url), &source_url).await;
        trusted(&svc.cache).await;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let before = l1_hits(&svc.cache);
            svc.get(1).await;
            if l1_hits(&svc.cache) > before {
                break;
            }
            assert!(Instant::now() < until, "L1 never served");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("ready");
        let mut line = String::new();
        while {
            line.clear();
            std::io::stdin().read_line(&mut line).expect("stdin") > 0
        } {
            let mut words = line.split_whitespace().skip(1);
            let (Some(v), Some(bound)) = (words.next(), words.next()) else {
                return;
            };
            let version: u64 = v.parse().expect("a version");
            let bound = Duration::from_millis(bound.parse().expect("ms"));
            let asked = Instant::now();
            let (mut lag, mut stale) = (None, 0u64);
            while asked.elapsed() < bound + Duration::from_millis(200) {
                let started = asked.elapsed();
                let got = svc.get(1).await;
                if got >= version {
                    lag.get_or_insert(started);
                } else if started > bound {
                    stale += 1;
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            let lag = lag.map_or(u128::MAX, |l| l.as_micros());
            println!("seen {version} {lag} {stale}");
        }
    });
}

/// Two OS processes on one `redis-server`, each with the near tier: 20
/// write-throughs in this one each reach the child's L1 (it reads the new
/// version at once, and never the old one 20 ms after the write returned);
/// then the child's connections are stranded (silent for good) or cut
/// while this process writes: the child never serves the old value once
/// its heartbeat's bound has passed, nor after it subscribes again.
#[test]
fn a_change_in_one_process_reaches_another_and_a_lost_channel_never_serves_old() {
    use std::io::{BufRead as _, Write as _};
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    server.cmd::<()>(&["SET", "source", "1"]);
    let module = module_path!()
        .split_once("::")
        .map_or("", |(_crate, module)| module);
    let name = if module.is_empty() {
        "near_reader_child".to_owned()
    } else {
        format!("{module}::near_reader_child")
    };
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            &name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("NEAR_CACHE_URL", proxy.url())
        .env("NEAR_SOURCE_URL", server.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the child starts");
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_child = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let mut next_line = |line: &mut String| {
        loop {
            line.clear();
            let n = from_child.read_line(line).expect("the child's output");
            assert!(n > 0, "the child ended early");
            // The harness prints its own lines ("running 1 test"), and the
            // child's first line follows its "test near_reader_child ... ".
            if let Some(at) = line.find("ready").or_else(|| line.find("seen ")) {
                *line = line[at..].to_owned();
                return;
            }
        }
    };
    next_line(&mut line);
    assert_eq!(line.trim(), "ready");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let writer = rt.block_on(Shared2::new(near(&server), &server.url()));
    let mut version = 1;
    let mut ask = |version: u64, bound_ms: u64, line: &mut String| -> (u128, u64) {
        writeln!(to_child, "expect {version} {bound_ms}").expect("stdin");
        to_child.flush().expect("stdin");
        next_line(line);
        let mut words = line.split_whitespace().skip(1);
        let seen: u64 = words.next().expect("version").parse().expect("a number");
        assert_eq!(seen, version);
        let lag: u128 = words.next().expect("lag").parse().expect("a number");
        let stale: u64 = words.next().expect("stale").parse().expect("a number");
        (lag, stale)
    };
    for _ in 0..20 {
        version += 1;
        rt.block_on(writer.put(1, version));
        let (lag, stale) = ask(version, 20, &mut line);
        assert_eq!(
            stale, 0,
            "v{version}: the old value read 20 ms after the write returned"
        );
        assert!(lag < 20_000, "v{version}: first seen {lag} µs after");
    }
    for fault in ["strand", "cut"] {
        match fault {
            "strand" => proxy.strand(),
            _ => proxy.cut(),
        }
        version += 1;
        rt.block_on(writer.put(1, version));
        // The heartbeat (20 ms) and its timeout (50 ms), and slack.
        let (_, stale) = ask(version, 150, &mut line);
        assert_eq!(stale, 0, "{fault}: the old value served after the bound");
        // Subscribed again by now or soon: still never the old value.
        let (_, stale) = ask(version, 0, &mut line);
        assert_eq!(stale, 0, "{fault}: the old value served after reconnecting");
    }
    drop(to_child);
    let status = child.wait().expect("the child exits");
    assert!(status.success(), "the child failed: {status}");
}
