//! Stampede protection against real `redis-server`s (and the memory backend
//! where the behaviour is per process): single flight, leases across
//! processes, bounded waits, cancellation and panics, stale-while-revalidate,
//! fail-safe, and early refresh.
//!
//! Several `Cache`s on one Redis behave as several processes do (each has
//! its own single-flight table); the multi-process tests use real child
//! processes of this test binary.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use cached_tests::RedisServer;

/// A service whose loads are slow, counted, and can be made to fail.
#[derive(Clone)]
struct Svc {
    cache: Cache,
    loads: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
    version: Arc<AtomicU64>,
    panic: Arc<AtomicBool>,
}

impl Svc {
    fn new(cache: Cache, delay: Duration) -> Svc {
        Svc {
            cache,
            loads: Arc::default(),
            delay_ms: Arc::new(AtomicU64::new(delay.as_millis() as u64)),
            fail: Arc::default(),
            version: Arc::new(AtomicU64::new(1)),
            panic: Arc::default(),
        }
    }

    /// The same "database" behind a different cache: another process.
    fn sharing_source_with(&self, cache: Cache) -> Svc {
        Svc {
            cache,
            ..self.clone()
        }
    }

    fn loads(&self) -> u32 {
        self.loads.load(SeqCst)
    }

    /// Reads the "row" when the load starts, then takes its time: the shape
    /// of a real query whose result can be overtaken by a write.
    async fn source(&self) -> Result<u64, String> {
        self.loads.fetch_add(1, SeqCst);
        let (version, fail, panic) = (
            self.version.load(SeqCst),
            self.fail.load(SeqCst),
            self.panic.load(SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(SeqCst))).await;
        assert!(!panic, "the loader panics, as asked");
        if fail {
            Err("source down".into())
        } else {
            Ok(version)
        }
    }

    #[cached(prefix = "slow", ttl = "10s", key = id)]
    async fn slow(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }

    #[cached(prefix = "nolock", ttl = "10s", key = id, lock = false)]
    async fn unlocked(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }

    #[cached(prefix = "lease", ttl = "10s", key = id, lease = "1s", wait = "10s")]
    async fn short_lease(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }

    #[cached(prefix = "bounded", ttl = "10s", key = id, wait = "300ms")]
    async fn bounded(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }

    #[cached(prefix = "swr", ttl = "300ms", stale = "1m", key = id)]
    async fn swr(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }

    #[cached(prefix = "early", ttl = "2s", early_refresh = true, key = id)]
    async fn early(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.source().await
    }
}

fn redis_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis(server.url())
        .namespace("t")
        .build()
        .expect("builds")
}

async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task completes"));
    }
    out
}

async fn concurrent_callers_share_one_load(cache: Cache) {
    let svc = Svc::new(cache, Duration::from_millis(50));
    let tasks = (0..200)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move { s.slow(1).await })
        })
        .collect();
    let results = join_all(tasks).await;
    assert!(
        results.iter().all(|r| r == &Ok(1)),
        "every caller gets the one value"
    );
    assert_eq!(
        svc.loads(),
        1,
        "200 concurrent callers of a cold key load once"
    );
    assert!(svc.cache.stats_for("slow").expect("stats").coalesced >= 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_load_on_memory() {
    concurrent_callers_share_one_load(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_load_on_redis() {
    let server = RedisServer::start();
    concurrent_callers_share_one_load(redis_cache(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lock_every_caller_loads() {
    // The control for the test above: it can tell one load from many.
    let svc = Svc::new(Cache::memory(), Duration::from_millis(50));
    let tasks = (0..20)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move { s.unlocked(1).await })
        })
        .collect();
    join_all(tasks).await;
    assert_eq!(svc.loads(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_caches_on_one_redis_share_one_load_through_the_lease() {
    let server = RedisServer::start();
    let first = Svc::new(redis_cache(&server), Duration::from_millis(100));
    let services: Vec<Svc> = (0..4)
        .map(|_| first.sharing_source_with(redis_cache(&server)))
        .collect();
    let tasks = services
        .iter()
        .flat_map(|s| (0..25).map(move |_| s.clone()))
        .map(|s| tokio::spawn(async move { s.slow(7).await }))
        .collect();
    let results = join_all(tasks).await;
    assert!(results.iter().all(|r| r == &Ok(1)));
    assert_eq!(
        first.loads(),
        1,
        "four caches, one Redis: one load in total"
    );
}

// ---- child processes ------------------------------------------------------

const CHILD_ENV: &str = "CACHED_TEST_CHILD";

/// Runs in a child process (see `child_processes_share_one_load`): waits for
/// the parent's go, then 50 concurrent callers ask for one cold key.
#[test]
#[ignore = "a child process of child_processes_share_one_load"]
fn stampede_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let url = std::env::var("REDIS_URL").expect("the parent sets REDIS_URL");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = Cache::builder()
            .redis(url.as_str())
            .namespace("t")
            .build()
            .expect("builds");
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        while redis::cmd("GET")
            .arg("go")
            .query_async::<Option<String>>(&mut conn)
            .await
            .expect("GET")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, conn) = (cache.clone(), conn.clone());
                tokio::spawn(async move { counted_load(&cache, conn).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("joins"), 42);
        }
    });
    println!("child done");
}

/// A load that counts itself in Redis, so the parent sees every process's loads.
#[cached(prefix = "shared", ttl = "1m", key = "the-key", cache = cache)]
async fn counted_load(cache: &Cache, conn: redis::aio::MultiplexedConnection) -> u64 {
    let mut conn = conn;
    let _: i64 = redis::cmd("INCR")
        .arg("loads")
        .query_async(&mut conn)
        .await
        .expect("INCR");
    tokio::time::sleep(Duration::from_millis(100)).await;
    42
}

#[test]
fn child_processes_share_one_load() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("test binary path");
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "stampede_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, "1")
                .env("REDIS_URL", server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("child starts")
        })
        .collect();
    // Let every child connect and wait for the go, then start them together.
    std::thread::sleep(Duration::from_millis(500));
    server.cmd::<()>(&["SET", "go", "1"]);
    for child in children {
        let out = child.wait_with_output().expect("child exits");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child done"),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let loads: Option<i64> = server.cmd(&["GET", "loads"]);
    assert_eq!(
        loads,
        Some(1),
        "4 processes x 50 callers of a cold key: one load in total"
    );
}

// ---- leases ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaseholder_delays_others_only_until_its_lease_expires() {
    let server = RedisServer::start();
    let holder = Svc::new(redis_cache(&server), Duration::from_secs(60));
    // The holder takes the lease and then is gone for good, as a process
    // killed mid-load would be: its loader never returns and never releases.
    let stuck = tokio::spawn({
        let h = holder.clone();
        async move { h.short_lease(5).await }
    });
    let lease_key = "t:lease:5:~lease";
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.cmd::<Option<String>>(&["GET", lease_key]).is_none() {
        assert!(Instant::now() < deadline, "the holder never took the lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(stuck); // never polled to completion, never dropped

    let other = holder.sharing_source_with(redis_cache(&server));
    other.delay_ms.store(10, SeqCst);
    let started = Instant::now();
    assert_eq!(other.short_lease(5).await, Ok(1));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1600),
        "waited {waited:?} for a 1 s lease"
    );
    assert_eq!(
        other.loads(),
        2,
        "the stuck holder's load and the other's own"
    );
}

#[test]
fn a_leaseholder_killed_with_sigkill_holds_others_only_until_its_lease_expires() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(&exe)
        .args([
            "lease_holder_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("REDIS_URL", server.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .cmd::<Option<String>>(&["GET", "t:lease:9:~lease"])
        .is_none()
    {
        assert!(Instant::now() < deadline, "the child never took the lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let svc = Svc::new(redis_cache(&server), Duration::from_millis(10));
        let started = Instant::now();
        assert_eq!(svc.short_lease(9).await, Ok(1));
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(1600),
            "waited {waited:?} for a 1 s lease"
        );
        assert_eq!(svc.loads(), 1);
    });
}

/// Takes the lease on key 9 and hangs in its loader until killed.
#[test]
#[ignore = "a child process of a_leaseholder_killed_with_sigkill_..."]
fn lease_holder_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let url = std::env::var("REDIS_URL").expect("the parent sets REDIS_URL");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = Cache::builder()
            .redis(url.as_str())
            .namespace("t")
            .build()
            .expect("builds");
        let _ = Svc::new(cache, Duration::from_secs(3600))
            .short_lease(9)
            .await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_released_only_by_its_owner() {
    let server = RedisServer::start();
    // A's load outlives its 1 s lease; B takes the lease and loads slowly.
    let a = Svc::new(redis_cache(&server), Duration::from_millis(1300));
    let b = a.sharing_source_with(redis_cache(&server));
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { a.short_lease(3).await }
    });
    tokio::time::sleep(Duration::from_millis(1100)).await; // A's lease has expired
    a.version.store(2, SeqCst);
    b.delay_ms.store(600, SeqCst); // within its own 1 s lease
    let b_task = tokio::spawn({
        let b = b.clone();
        async move { b.short_lease(3).await }
    });
    // A finishes at ~1.3 s while B holds the lease: A must neither store its
    // value nor end B's lease.
    assert_eq!(a_task.await.expect("joins"), Ok(1));
    let holder: Option<String> = server.cmd(&["GET", "t:lease:3:~lease"]);
    assert!(holder.is_some(), "A's finish must leave B's lease in place");
    assert_eq!(
        a.cache.stats_for("lease").expect("stats").leases_lost,
        1,
        "A's write was refused"
    );

    // A third caller sees B's lease, waits, and gets B's value without loading.
    let c = a.sharing_source_with(redis_cache(&server));
    let before = c.loads();
    assert_eq!(c.short_lease(3).await, Ok(2));
    assert_eq!(
        c.loads(),
        before,
        "the third caller waited for B instead of loading"
    );
    assert_eq!(b_task.await.expect("joins"), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_stops_waiting_at_its_bound_and_loads_itself() {
    let server = RedisServer::start();
    let holder = Svc::new(redis_cache(&server), Duration::from_secs(60));
    tokio::spawn({
        let h = holder.clone();
        async move { h.bounded(4).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = holder.sharing_source_with(redis_cache(&server));
    waiter.delay_ms.store(10, SeqCst);
    let started = Instant::now();
    assert_eq!(waiter.bounded(4).await, Ok(1));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(290)..Duration::from_millis(1000)).contains(&waited),
        "a 300 ms bound, waited {waited:?}"
    );
    assert_eq!(
        waiter
            .cache
            .stats_for("bounded")
            .expect("stats")
            .wait_timeouts,
        1
    );
}

// ---- cancellation and panics --------------------------------------------

async fn a_cancelled_leader_wakes_its_waiters_and_releases_its_lease(cache: Cache) {
    let svc = Svc::new(cache, Duration::from_secs(60));
    let leader = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(11).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(11).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.delay_ms.store(10, SeqCst);
    leader.abort(); // the caller's future is dropped mid-load
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert!(
        matches!(got, Ok(Ok(Ok(1)))),
        "the waiter must go on without the leader: {got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "and not wait out the 10 s lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_wakes_its_waiters_and_releases_its_lease_on_memory() {
    a_cancelled_leader_wakes_its_waiters_and_releases_its_lease(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_wakes_its_waiters_and_releases_its_lease_on_redis() {
    let server = RedisServer::start();
    a_cancelled_leader_wakes_its_waiters_and_releases_its_lease(redis_cache(&server)).await;
    // And nothing is left holding the key.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.cmd::<Option<String>>(&["GET", "t:slow:11:~lease"]),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_leaves_no_lease_and_no_waiter_hanging() {
    let server = RedisServer::start();
    let svc = Svc::new(redis_cache(&server), Duration::from_millis(200));
    svc.panic.store(true, SeqCst);
    let leader = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(12).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(12).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.panic.store(false, SeqCst);
    assert!(
        leader.await.is_err(),
        "the panic reaches the caller that ran the loader"
    );
    let got = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert!(
        matches!(got, Ok(Ok(Ok(1)))),
        "the waiter must not hang: {got:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.cmd::<Option<String>>(&["GET", "t:slow:12:~lease"]),
        None
    );
}

// ---- stale-while-revalidate, fail-safe, early refresh ---------------------

async fn stale_is_served_while_one_caller_refreshes(cache: Cache) {
    let svc = Svc::new(cache, Duration::from_millis(200));
    assert_eq!(svc.swr(1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await; // past the 300 ms TTL (+10% jitter)
    svc.version.store(2, SeqCst);
    let tasks = (0..20)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (s.swr(1).await, t.elapsed())
            })
        })
        .collect();
    for (value, took) in join_all(tasks).await {
        assert_eq!(value, Ok(1), "the stale value is served at once");
        assert!(
            took < Duration::from_millis(100),
            "not after a 200 ms load: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        svc.swr(1).await,
        Ok(2),
        "the background refresh stored the new value"
    );
    assert_eq!(svc.loads(), 2, "one refresh for twenty stale reads");
    let stats = svc.cache.stats_for("swr").expect("stats");
    assert!(
        stats.stale_served >= 20 && stats.stale_refreshes == 1,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_while_one_caller_refreshes_on_memory() {
    stale_is_served_while_one_caller_refreshes(Cache::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_while_one_caller_refreshes_on_redis() {
    let server = RedisServer::start();
    stale_is_served_while_one_caller_refreshes(redis_cache(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_when_the_loader_fails() {
    let server = RedisServer::start();
    let svc = Svc::new(redis_cache(&server), Duration::from_millis(10));
    assert_eq!(svc.swr(2).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    svc.fail.store(true, SeqCst);
    for _ in 0..5 {
        assert_eq!(
            svc.swr(2).await,
            Ok(1),
            "the source is down: the stale value is served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.loads() >= 2, "refreshes were tried");
    assert!(svc.cache.stats_for("swr").expect("stats").load_errors >= 1);
    // Without `stale`, the same failure reaches the caller.
    assert_eq!(svc.slow(2).await, Err("source down".to_string()));
}

async fn early_refresh_fires_once_for_many_callers(cache: Cache) {
    let svc = Svc::new(cache, Duration::from_millis(200));
    assert_eq!(svc.early(1).await, Ok(1));
    svc.version.store(2, SeqCst);
    // 100 ms before expiry with 200 ms loads, XFetch (beta 1) fires for
    // about 60% of callers: one refresh must run, and nobody waits for it.
    let expires = Duration::from_millis(2000);
    tokio::time::sleep(expires - Duration::from_millis(100) - Duration::from_millis(200)).await;
    let tasks = (0..64)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let v = s.early(1).await;
                (v, t.elapsed())
            })
        })
        .collect();
    for (value, took) in join_all(tasks).await {
        assert_eq!(value, Ok(1));
        assert!(
            took < Duration::from_millis(100),
            "a hit, not a load: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(svc.early(1).await, Ok(2), "refreshed before it expired");
    let stats = svc.cache.stats_for("early").expect("stats");
    assert_eq!(stats.early_refreshes, 1, "{stats:?}");
    assert_eq!(svc.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_fires_once_for_many_callers_on_memory() {
    // No jitter, so the expiry this test aims at is exact.
    let cache = Cache::builder().ttl_jitter(0.0).build().expect("builds");
    early_refresh_fires_once_for_many_callers(cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_fires_once_for_many_callers_on_redis() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis(server.url())
        .namespace("t")
        .ttl_jitter(0.0)
        .build()
        .expect("builds");
    early_refresh_fires_once_for_many_callers(cache).await;
}

// ---- shared reads ----------------------------------------------------------

/// How many GETs the server has answered.
fn get_calls(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn patient_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis(server.url())
        .namespace("t")
        .op_timeout(Duration::from_secs(2))
        .build()
        .expect("builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_of_a_warm_key_share_one_read_on_redis() {
    let server = RedisServer::start();
    let svc = Svc::new(patient_cache(&server), Duration::ZERO);
    assert_eq!(svc.slow(7).await, Ok(1));
    assert_eq!(svc.unlocked(7).await, Ok(1));

    // The server holds every command back while 100 callers arrive: all
    // but the first find its read in flight and wait for it.
    let gets = paused_gets(&server, &svc, |s| async move { s.slow(7).await }).await;
    assert_eq!(gets, 1, "one GET for 100 callers");
    let stats = svc.cache.stats_for("slow").expect("stats");
    assert_eq!((stats.hits, stats.misses), (100, 1), "{stats:?}");
    assert_eq!(svc.loads(), 2);

    // The control: `lock = false` opts out of sharing, and each caller reads.
    let gets = paused_gets(&server, &svc, |s| async move { s.unlocked(7).await }).await;
    assert_eq!(gets, 100);
}

/// Starts 100 callers of `call` while the server holds every command back
/// for 300 ms; checks each got `Ok(1)` and returns how many GETs it served.
async fn paused_gets<F, Fut>(server: &RedisServer, svc: &Svc, call: F) -> u64
where
    F: Fn(Svc) -> Fut,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let before = get_calls(server);
    server.cmd::<()>(&["CLIENT", "PAUSE", "300", "ALL"]);
    let tasks = (0..100).map(|_| tokio::spawn(call(svc.clone()))).collect();
    for value in join_all(tasks).await {
        assert_eq!(value, Ok(1));
    }
    get_calls(server) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_an_invalidation_never_shares_a_read_from_before_it() {
    let server = RedisServer::start();
    let svc = Svc::new(patient_cache(&server), Duration::ZERO);
    assert_eq!(svc.slow(8).await, Ok(1));
    svc.version.store(2, SeqCst);

    // A read is held in flight; the invalidation queues behind it.
    server.cmd::<()>(&["CLIENT", "PAUSE", "300", "ALL"]);
    let early = {
        let s = svc.clone();
        tokio::spawn(async move { s.slow(8).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.cache.invalidate("slow:8").await.expect("invalidates");
    // Whether or not the early read has landed, this caller starts afresh.
    assert_eq!(svc.slow(8).await, Ok(2), "the value after the invalidation");
    assert_eq!(early.await.expect("completes"), Ok(1), "it began before");
}

static MIXED_LOADS: AtomicU32 = AtomicU32::new(0);

#[cached(prefix = "mixed", ttl = "1m", key = id, cache = cache)]
async fn mixed_value(cache: &Cache, id: u64) -> u64 {
    MIXED_LOADS.fetch_add(1, SeqCst);
    id
}

#[cached(prefix = "mixed", ttl = "1m", key = id, cache = cache)]
async fn mixed_option(cache: &Cache, id: u64) -> Option<u64> {
    MIXED_LOADS.fetch_add(1, SeqCst);
    Some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_two_return_types_on_one_key_each_get_a_hit() {
    let server = RedisServer::start();
    let cache = patient_cache(&server);
    assert_eq!(mixed_value(&cache, 3).await, 3);
    assert_eq!(MIXED_LOADS.load(SeqCst), 1);
    // A caller handed a hit it cannot use (the other return type) reads
    // the entry for itself: nobody goes to the source.
    server.cmd::<()>(&["CLIENT", "PAUSE", "200", "ALL"]);
    let tasks = (0..20)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    Some(mixed_value(&cache, 3).await)
                } else {
                    mixed_option(&cache, 3).await
                }
            })
        })
        .collect();
    for got in join_all(tasks).await {
        assert_eq!(got, Some(3));
    }
    assert_eq!(MIXED_LOADS.load(SeqCst), 1, "all hits");
}
