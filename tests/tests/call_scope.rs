//! Per-call control on both backends: `with_mode(CallMode::Bypass | Refresh)`
//! around calls (single and batch), and `with_outcome` / the
//! `{name}_with_outcome` companion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_runtime::{Cache, CallMode, Outcome, cache_put, cached, with_mode, with_outcome};
use cached_tests::{Backend, on_both_backends};
use serde::{Deserialize, Serialize};

on_both_backends!(
    outcomes_name_what_each_call_did,
    bypass_neither_reads_nor_writes,
    refresh_reads_the_source_and_replaces_the_entry,
    a_write_through_during_a_refresh_wins,
    batches_follow_the_mode,
    a_refresh_waits_for_a_load_in_flight_then_replaces_its_value,
    a_load_past_its_hard_timeout_fails_its_callers_and_blocks_no_one,
    a_refresh_past_its_hard_timeout_is_counted,
    a_stale_value_waits_its_soft_timeout_for_the_refresh,
    a_soft_wait_never_takes_a_refresh_of_an_older_entry,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    version: u64,
}

#[derive(Clone)]
struct Store {
    cache: Cache,
    rows: Arc<Mutex<HashMap<u64, u64>>>,
    loads: Arc<AtomicU32>,
    delay: Arc<Mutex<Duration>>,
}

impl Store {
    fn new(cache: Cache) -> Store {
        Store {
            cache,
            rows: Arc::new(Mutex::new((1..=9).map(|id| (id, 1)).collect())),
            loads: Arc::default(),
            delay: Arc::default(),
        }
    }

    fn set(&self, id: u64, version: u64) {
        self.rows.lock().expect("rows").insert(id, version);
    }

    fn loads(&self) -> u32 {
        self.loads.load(SeqCst)
    }

    async fn read(&self, id: u64) -> Option<Item> {
        self.loads.fetch_add(1, SeqCst);
        let version = self.rows.lock().expect("rows").get(&id).copied();
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        version.map(|version| Item { id, version })
    }

    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Option<Item> {
        self.read(id).await
    }

    #[cached(prefix = "item", ttl = "5m", key = ids, batch)]
    async fn get_many(&self, ids: Vec<u64>) -> HashMap<u64, Item> {
        let mut out = HashMap::new();
        for id in ids {
            if let Some(item) = self.read(id).await {
                out.insert(id, item);
            }
        }
        out
    }

    #[cache_put(prefix = "item", ttl = "5m", key = id)]
    async fn update(&self, id: u64, version: u64) -> Item {
        self.set(id, version);
        Item { id, version }
    }
}

async fn outcomes_name_what_each_call_did(backend: &Backend) {
    let s = Store::new(backend.cache());
    assert_eq!(s.get_with_outcome(1).await.1, Some(Outcome::Loaded));
    assert_eq!(s.get_with_outcome(1).await.1, Some(Outcome::Hit));
    let (got, outcome) = with_outcome(s.get(1)).await;
    assert_eq!((got.map(|i| i.id), outcome), (Some(1), Some(Outcome::Hit)));
    // Two callers of a cold key: one loads, the other shares its load.
    *s.delay.lock().expect("delay") = Duration::from_millis(100);
    let (a, b) = tokio::join!(s.get_with_outcome(2), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.get_with_outcome(2).await
    });
    assert_eq!(
        (a.1, b.1),
        (Some(Outcome::Loaded), Some(Outcome::Coalesced))
    );
    // Outside a scope nothing is recorded, and nothing breaks.
    assert!(s.get(1).await.is_some());
    // A batch: every id a hit, or the body ran.
    assert_eq!(
        with_outcome(s.get_many(vec![1, 2])).await.1,
        Some(Outcome::Hit)
    );
    *s.delay.lock().expect("delay") = Duration::ZERO;
    assert_eq!(
        with_outcome(s.get_many(vec![1, 3])).await.1,
        Some(Outcome::Loaded)
    );
}

async fn bypass_neither_reads_nor_writes(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(1).await;
    s.set(1, 2);
    let (got, outcome) = with_outcome(with_mode(CallMode::Bypass, s.get(1))).await;
    assert_eq!(got.map(|i| i.version), Some(2), "the source, not the entry");
    assert_eq!(outcome, Some(Outcome::Bypassed));
    assert_eq!(
        s.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(1),
        "the entry untouched"
    );
    with_mode(CallMode::Bypass, s.get(4)).await;
    assert_eq!(s.cache.get::<Item>("item:4").await, None, "nothing stored");
    assert_eq!(s.loads(), 3);
    // Outside the scope, the cache again.
    assert_eq!(s.get(1).await.map(|i| i.version), Some(1));
    assert_eq!(s.loads(), 3);
    // Changes made inside the scope still reach the cache: no entry
    // outlives them.
    with_mode(CallMode::Bypass, async {
        s.cache
            .set(
                "item:5",
                &Item { id: 5, version: 7 },
                Duration::from_secs(60),
            )
            .await;
        s.cache.invalidate("item:1").await.expect("invalidates");
    })
    .await;
    assert_eq!(
        s.cache.get::<Item>("item:5").await.map(|i| i.version),
        Some(7),
        "a write-through inside the scope"
    );
    assert_eq!(
        s.cache.get::<Item>("item:1").await,
        None,
        "an eviction inside the scope"
    );
}

async fn refresh_reads_the_source_and_replaces_the_entry(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(1).await;
    s.set(1, 2);
    assert_eq!(s.get(1).await.map(|i| i.version), Some(1), "cached");
    let (got, outcome) = with_outcome(with_mode(CallMode::Refresh, s.get(1))).await;
    assert_eq!(got.map(|i| i.version), Some(2));
    assert_eq!(outcome, Some(Outcome::Refreshed));
    assert_eq!(
        s.get_with_outcome(1).await,
        (Some(Item { id: 1, version: 2 }), Some(Outcome::Hit))
    );
    // Gone at the source: refreshed to an absence (not cached without
    // `cache_none`), so the next call loads.
    s.rows.lock().expect("rows").remove(&1);
    assert_eq!(with_mode(CallMode::Refresh, s.get(1)).await, None);
    assert_eq!(s.get_with_outcome(1).await.1, Some(Outcome::Loaded));
}

/// A refresh that read the row before a write-through does not replace
/// the write-through's value, nor remove it (its lease was lost to the
/// write-through, whose value the key is), single key and batch alike.
async fn a_write_through_during_a_refresh_wins(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(1).await;
    *s.delay.lock().expect("delay") = Duration::from_millis(200);
    let refreshing = tokio::spawn({
        let s = s.clone();
        async move { with_outcome(with_mode(CallMode::Refresh, s.get(1))).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.update(1, 5).await;
    let (got, outcome) = refreshing.await.expect("joins");
    assert_eq!(got.map(|i| i.version), Some(1), "read before the write");
    assert_eq!(outcome, Some(Outcome::Loaded), "loaded, not stored");
    assert_eq!(
        s.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(5)
    );

    *s.delay.lock().expect("delay") = Duration::ZERO;
    s.get(2).await;
    *s.delay.lock().expect("delay") = Duration::from_millis(200);
    let refreshing = tokio::spawn({
        let s = s.clone();
        async move { with_mode(CallMode::Refresh, s.get_many(vec![2])).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.update(2, 5).await;
    let got = refreshing.await.expect("joins");
    assert_eq!(
        got.get(&2).map(|i| i.version),
        Some(1),
        "batch: read before"
    );
    assert_eq!(
        s.cache.get::<Item>("item:2").await.map(|i| i.version),
        Some(5),
        "batch: the write-through's value was removed"
    );
}

async fn batches_follow_the_mode(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get_many(vec![1, 2]).await;
    s.set(1, 3);
    let before = s.loads();
    let got = with_mode(CallMode::Bypass, s.get_many(vec![1, 2])).await;
    assert_eq!(got.get(&1).map(|i| i.version), Some(3));
    assert_eq!(s.loads(), before + 2);
    assert_eq!(
        s.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(1),
        "untouched"
    );
    let got = with_mode(CallMode::Refresh, s.get_many(vec![1, 2])).await;
    assert_eq!(got.get(&1).map(|i| i.version), Some(3));
    assert_eq!(s.loads(), before + 4);
    assert_eq!(
        s.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(3),
        "replaced"
    );
    assert_eq!(s.get_many(vec![1, 2]).await.len(), 2);
    assert_eq!(s.loads(), before + 4, "hits again");
    // Gone at the source: a refresh removes its entry.
    s.rows.lock().expect("rows").remove(&2);
    let got = with_mode(CallMode::Refresh, s.get_many(vec![1, 2])).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        s.cache.get::<Item>("item:2").await,
        None,
        "the old entry went"
    );
}

/// A refresh while another caller's load holds the key's lease waits for
/// it (up to `wait`), then takes the lease and replaces what that load
/// stored: it neither gives up at once (its load would then store
/// nothing) nor reads the other's value (read before the refresh began).
async fn a_refresh_waits_for_a_load_in_flight_then_replaces_its_value(backend: &Backend) {
    let s = Store::new(backend.cache());
    *s.delay.lock().expect("delay") = Duration::from_millis(200);
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.get(1).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.set(1, 2);
    *s.delay.lock().expect("delay") = Duration::ZERO;
    let (got, outcome) = with_outcome(with_mode(CallMode::Refresh, s.get(1))).await;
    assert_eq!(got.map(|i| i.version), Some(2));
    assert_eq!(
        outcome,
        Some(Outcome::Refreshed),
        "stored under the lease it waited for"
    );
    assert_eq!(first.await.expect("joins").map(|i| i.version), Some(1));
    assert_eq!(
        s.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(2)
    );
}

/// A refresh whose write never reaches Redis (the connections go silently
/// dead during its load) leaves its lease to its guard, which releases it
/// once the cache is on a working connection: the next caller of the key
/// loads at once, and the key is cached again once the removal of the
/// entry the refresh could not replace has landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_write_fails_releases_its_lease_later() {
    let server = cached_tests::RedisServer::start();
    let proxy = cached_tests::Proxy::start(server.port());
    let cache = cached_tests::redis_builder_at(proxy.url())
        .op_timeout(Duration::from_millis(100))
        .build()
        .expect("builds");
    let s = Store::new(cache);
    s.get(5).await;
    *s.delay.lock().expect("delay") = Duration::from_millis(200);
    let refreshing = tokio::spawn({
        let s = s.clone();
        async move { with_outcome(with_mode(CallMode::Refresh, s.get(7))).await }
    });
    tokio::time::sleep(Duration::from_millis(80)).await;
    proxy.strand();
    let (got, outcome) = refreshing.await.expect("joins");
    assert_eq!(got.map(|i| i.id), Some(7));
    assert_eq!(outcome, Some(Outcome::Loaded), "not stored");
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert_eq!(
        leases.len(),
        1,
        "the write did not reach the server: {leases:?}"
    );
    *s.delay.lock().expect("delay") = Duration::ZERO;
    let back = std::time::Instant::now();
    while s.cache.get::<Item>("item:5").await.is_none() || s.cache.breaker_open() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the cache did not recover"
        );
        s.get(6).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(s.get(7).await.map(|i| i.id), Some(7));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    // The refresh did not store: the entry it was to replace is removed
    // by the retry of pending changes, after which the key is cached again.
    let back = std::time::Instant::now();
    while s.cache.get::<Item>("item:7").await.map(|i| i.id) != Some(7) {
        assert!(back.elapsed() < Duration::from_secs(4), "never stored");
        s.get(7).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone, PartialEq)]
enum SlowError {
    Timeout,
}

impl From<cached_runtime::LoadTimeout> for SlowError {
    fn from(_: cached_runtime::LoadTimeout) -> SlowError {
        SlowError::Timeout
    }
}

#[derive(Clone)]
struct Slow {
    cache: Cache,
    delay: Arc<Mutex<Duration>>,
}

impl Slow {
    #[cached(prefix = "slow", ttl = "5m", key = id, hard_timeout = "100ms")]
    async fn get(&self, id: u64) -> Result<Option<u64>, SlowError> {
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        Ok(Some(id))
    }

    #[cached(prefix = "slow_stale", ttl = "100ms", stale = "1h", key = id, hard_timeout = "100ms")]
    async fn aging(&self, id: u64) -> Result<Option<u64>, SlowError> {
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        Ok(Some(id))
    }
}

/// A background refresh stopped by `hard_timeout` is counted in
/// `load_timeouts`, as a call's load is (it was not), and the stale entry
/// stays.
async fn a_refresh_past_its_hard_timeout_is_counted(backend: &Backend) {
    let s = Slow {
        cache: backend.cache(),
        delay: Arc::default(),
    };
    assert_eq!(s.aging(1).await, Ok(Some(1)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    *s.delay.lock().expect("delay") = Duration::from_secs(30);
    assert_eq!(s.aging(1).await, Ok(Some(1)), "served stale");
    let started = std::time::Instant::now();
    loop {
        let stats = s.cache.stats_for("slow_stale").expect("stats");
        if stats.load_timeouts == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the refresh's timeout was not counted: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.aging(1).await, Ok(Some(1)), "still served stale");
}

/// A body that runs past `hard_timeout`: the caller, and the caller who
/// waited for its load, get the timeout error at once; nothing is stored;
/// the lease is released, so the next call (the source well again) loads
/// and stores without waiting.
async fn a_load_past_its_hard_timeout_fails_its_callers_and_blocks_no_one(backend: &Backend) {
    let s = Slow {
        cache: backend.cache(),
        delay: Arc::new(Mutex::new(Duration::from_secs(30))),
    };
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(s.get(1), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.get(1).await
    });
    assert_eq!((a, b), (Err(SlowError::Timeout), Err(SlowError::Timeout)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let stats = s.cache.stats_for("slow").expect("stats");
    assert_eq!(
        (stats.load_timeouts, stats.loads, stats.coalesced),
        (1, 1, 1),
        "one load, its error shared with the caller who waited: {stats:?}"
    );
    assert_eq!(s.cache.get::<u64>("slow:1").await, None);
    *s.delay.lock().expect("delay") = Duration::ZERO;
    let started = std::time::Instant::now();
    assert_eq!(s.get(1).await, Ok(Some(1)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(s.cache.get::<u64>("slow:1").await, Some(1));
}

/// A source whose answer, delay and failure the test sets.
#[derive(Clone)]
struct Soft {
    cache: Cache,
    version: Arc<AtomicU32>,
    delay: Arc<Mutex<Duration>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    loads: Arc<AtomicU32>,
}

impl Soft {
    /// At version 1, quick, on a cache without TTL jitter.
    fn new(backend: &Backend) -> Soft {
        Soft {
            cache: backend.cache_with(|b| b.ttl_jitter(0.0)),
            version: Arc::new(AtomicU32::new(1)),
            delay: Arc::default(),
            fail: Arc::default(),
            loads: Arc::default(),
        }
    }

    #[cached(prefix = "soft", ttl = "300ms", stale = "1h", soft_timeout = "60ms", key = id)]
    async fn get(&self, id: u64) -> Result<u32, SlowError> {
        self.loads.fetch_add(1, SeqCst);
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        if self.fail.load(SeqCst) {
            return Err(SlowError::Timeout);
        }
        let _ = id;
        Ok(self.version.load(SeqCst))
    }

    /// The same entries with a soft timeout longer than the test's
    /// refreshes take to start and end; the source read when the load
    /// begins.
    #[cached(prefix = "soft", ttl = "300ms", stale = "1h", soft_timeout = "900ms", key = id)]
    async fn get_patient(&self, id: u64) -> Result<u32, SlowError> {
        self.loads.fetch_add(1, SeqCst);
        let version = self.version.load(SeqCst);
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        let _ = id;
        Ok(version)
    }

    #[cache_put(prefix = "soft", ttl = "300ms", stale = "1h", key = id)]
    async fn put(&self, id: u64, version: u32) -> Result<u32, SlowError> {
        let _ = id;
        self.version.store(version, SeqCst);
        Ok(version)
    }

    /// 16 concurrent callers of a stale entry: what each got, and the
    /// longest any of them took.
    async fn sixteen(&self) -> (Vec<u32>, Duration) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let s = self.clone();
            calls.spawn(async move {
                let started = std::time::Instant::now();
                let got = s.get(1).await.expect("served");
                (got, started.elapsed())
            });
        }
        let answers = calls.join_all().await;
        let slowest = answers.iter().map(|(_, t)| *t).max().expect("16");
        (answers.into_iter().map(|(v, _)| v).collect(), slowest)
    }
}

/// `soft_timeout` with `stale`: callers of a stale entry wait for its
/// refresh up to the soft timeout. A slow refresh: every caller gets the
/// stale value just after it (not after the 600 ms load), each counted,
/// and the one refresh stores its value when it lands. A quick refresh:
/// every caller gets the new value. A failing one: the stale value, at
/// once.
async fn a_stale_value_waits_its_soft_timeout_for_the_refresh(backend: &Backend) {
    let s = Soft::new(backend);
    let stale = || tokio::time::sleep(Duration::from_millis(400));
    assert_eq!(s.get(1).await, Ok(1));
    // Fresh: callers sharing a read are served at once, as coalesced hits
    // (the soft timeout is for stale values only).
    let mut fresh = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let s = s.clone();
        fresh.spawn(with_outcome(async move { s.get(1).await }));
    }
    for (got, outcome) in fresh.join_all().await {
        assert_eq!(got, Ok(1));
        assert!(
            matches!(outcome, Some(Outcome::Hit | Outcome::Coalesced)),
            "{outcome:?}"
        );
    }
    stale().await;

    // Slow: 600 ms.
    s.version.store(2, SeqCst);
    *s.delay.lock().expect("delay") = Duration::from_millis(600);
    let (got, slowest) = s.sixteen().await;
    assert_eq!(got, vec![1; 16], "the stale value after the soft timeout");
    assert!(
        slowest >= Duration::from_millis(55) && slowest < Duration::from_millis(450),
        "waited the soft timeout, not the load: {slowest:?}"
    );
    let stats = s.cache.stats_for("soft").expect("stats");
    assert_eq!(
        (
            stats.soft_timeouts,
            stats.stale_served,
            s.loads.load(SeqCst)
        ),
        (16, 16, 2),
        "{stats:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    *s.delay.lock().expect("delay") = Duration::ZERO;
    assert_eq!(s.get(1).await, Ok(2), "the refresh stored its value");
    assert_eq!(s.loads.load(SeqCst), 2, "a hit");

    // Quick: 10 ms.
    stale().await;
    s.version.store(3, SeqCst);
    *s.delay.lock().expect("delay") = Duration::from_millis(10);
    let (got, _) = s.sixteen().await;
    assert_eq!(
        got,
        vec![3; 16],
        "the refreshed value, within the soft timeout"
    );
    assert_eq!(s.loads.load(SeqCst), 3, "one refresh");
    let stats = s.cache.stats_for("soft").expect("stats");
    assert_eq!(stats.soft_timeouts, 16, "none timed out");
    assert_eq!(
        stats.stale_served, 16,
        "the refreshed value was served, not a stale one"
    );

    // Failing: the stale value without waiting the soft timeout out.
    stale().await;
    s.fail.store(true, SeqCst);
    let (got, slowest) = s.sixteen().await;
    assert_eq!(got, vec![3; 16], "stale, the refresh having failed");
    assert!(slowest < Duration::from_millis(55), "{slowest:?}");
    let stats = s.cache.stats_for("soft").expect("stats");
    assert_eq!(stats.stale_served, 32, "16 more served stale");

    // Another process holds the key's lease (its refresh runs there): this
    // process's refresh gives way, and its callers do not wait for it.
    if let Some(server) = backend.server() {
        s.fail.store(false, SeqCst);
        s.version.store(4, SeqCst);
        let lease = format!("{}:~lease", s.cache.full_key("soft:1"));
        server.cmd::<()>(&["SET", &lease, "4242", "PX", "5000"]);
        let loads = s.loads.load(SeqCst);
        let (got, slowest) = s.sixteen().await;
        assert_eq!(got, vec![3; 16], "stale: the other process refreshes");
        assert!(slowest < Duration::from_millis(55), "{slowest:?}");
        assert_eq!(s.loads.load(SeqCst), loads, "no load here");
    }
}

/// A refresh that read the source before a write-through must not hand
/// its value to a caller that read the write-through's entry: that caller
/// began after the write completed, and the refresh's value is older. Here
/// the write-through's entry goes stale (300 ms TTL) while the older
/// refresh (1.2 s load) still runs; a caller of it must get the
/// write-through's value, not wait for the refresh.
async fn a_soft_wait_never_takes_a_refresh_of_an_older_entry(backend: &Backend) {
    let s = Soft::new(backend);
    assert_eq!(s.get_patient(1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await; // stale
    *s.delay.lock().expect("delay") = Duration::from_millis(1_200);
    // A caller of the stale entry starts the refresh, which reads 1.
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.get_patient(1).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s.put(1, 5).await,
        Ok(5),
        "written through during the refresh"
    );
    tokio::time::sleep(Duration::from_millis(400)).await; // 5 is stale now
    let started = std::time::Instant::now();
    assert_eq!(
        s.get_patient(1).await,
        Ok(5),
        "the write-through's value, not the older refresh's"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "did not wait for the older refresh: {:?}",
        started.elapsed()
    );
    assert_eq!(first.await.expect("joins"), Ok(1), "its own entry, stale");
}
