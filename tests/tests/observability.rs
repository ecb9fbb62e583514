//! Observability: the metrics recorded through the `metrics` facade (with a
//! test recorder) and the `stats()` arithmetic (`tracing_events.rs` has the
//! `tracing` events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cached_runtime::{
    Cache, CircuitBreaker, cache_evict, cache_put, cached, metric_names as names,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};

/// What the recorder saw, accumulated (a snapshot drains it, gauges
/// included, and tests run in parallel): counters summed, the highest value
/// of each gauge, histograms' samples.
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauge_max: HashMap<String, f64>,
    /// Each gauge's changes summed: its value, for a gauge only ever
    /// incremented and decremented (a snapshot drains a gauge to 0).
    gauge_sum: HashMap<String, f64>,
    samples: HashMap<String, Vec<f64>>,
}

struct Recorded {
    snapshotter: Snapshotter,
    seen: Mutex<Seen>,
}

/// Installs the test recorder once per test binary, before any cache is
/// used (handles made before a recorder exists record nothing).
fn recorder() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        Recorded {
            snapshotter,
            seen: Mutex::default(),
        }
    })
}

/// `name{k=v,...}`, labels sorted.
fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn collect() -> std::sync::MutexGuard<'static, Seen> {
    let r = recorder();
    let mut seen = r.seen.lock().expect("seen");
    for (key, _, _, value) in r.snapshotter.snapshot().into_vec() {
        let k = key.key();
        let labels: Vec<(&str, &str)> = k.labels().map(|l| (l.key(), l.value())).collect();
        let name = id(k.name(), &labels);
        match value {
            DebugValue::Counter(n) => *seen.counters.entry(name).or_default() += n,
            DebugValue::Gauge(g) => {
                let max = seen.gauge_max.entry(name.clone()).or_insert(f64::MIN);
                *max = max.max(g.into_inner());
                *seen.gauge_sum.entry(name).or_default() += g.into_inner();
            }
            DebugValue::Histogram(xs) => seen
                .samples
                .entry(name)
                .or_default()
                .extend(xs.into_iter().map(|x| x.into_inner())),
        }
    }
    seen
}

fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    collect()
        .counters
        .get(&id(name, labels))
        .copied()
        .unwrap_or(0)
}

fn samples(name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    collect()
        .samples
        .get(&id(name, labels))
        .cloned()
        .unwrap_or_default()
}

fn gauge_max(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    collect().gauge_max.get(&id(name, labels)).copied()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    secret: String,
}

#[derive(Debug)]
struct DbError;

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "obs_rows", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Result<Row, DbError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Row {
            id,
            secret: "do-not-log-me".into(),
        })
    }

    #[cached(prefix = "obs_timed", ttl = "5m", key = id)]
    async fn timed_row(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_stats", ttl = "5m", key = id)]
    async fn stats_row(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_down_rows", ttl = "5m", key = id)]
    async fn down_row(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_two_rows", ttl = "5m", key = id)]
    async fn two_row(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_per_cache", ttl = "5m", key = id)]
    async fn per_cache_row(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_named", name = "renamed", ttl = "5m", key = id)]
    async fn named(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "obs_fail", ttl = "5m", key = id)]
    async fn failing(&self, id: u64) -> Result<u64, DbError> {
        let _ = id;
        Err(DbError)
    }

    #[cached(prefix = "obs_slow", ttl = "5m", key = id)]
    async fn slow(&self, id: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        id
    }

    #[cache_evict(keys = ["obs_rows:{id}"])]
    async fn forget(&self, id: u64) {
        let _ = id;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_loads_and_latency_are_recorded_per_cache_name() {
    recorder();
    let s = Service {
        cache: Cache::memory(),
    };
    // Enough reads that timing one in 16, were memory reads timed, would
    // leave a sample: (15/16)^400 ~ 1e-11.
    for _ in 0..400 {
        s.get(1).await.expect("row");
    }
    let cache = [("cache", "obs_rows")];
    assert_eq!(counter(names::HITS, &cache), 399);
    assert_eq!(counter(names::MISSES, &cache), 1);
    assert_eq!(counter(names::LOADS, &cache), 1);
    let loads = samples(names::LOAD_SECONDS, &cache);
    assert_eq!(loads.len(), 1);
    assert!(loads[0] >= 0.005, "the load took 5 ms: {loads:?}");
    assert!(
        samples(names::LATENCY, &[("cache", "obs_rows"), ("op", "get")]).is_empty(),
        "memory reads are not timed"
    );
    assert!(
        samples(names::LATENCY, &[("cache", "obs_rows"), ("op", "lease")]).is_empty(),
        "memory leases are not timed"
    );

    // The `name` option labels a site instead of its prefix.
    s.named(1).await;
    s.named(1).await;
    assert_eq!(counter(names::HITS, &[("cache", "renamed")]), 1);
    assert_eq!(counter(names::MISSES, &[("cache", "obs_named")]), 0);

    s.forget(1).await;
    assert_eq!(counter(names::INVALIDATIONS, &cache), 1);
    assert!(
        samples(
            names::LATENCY,
            &[("cache", "obs_rows"), ("op", "invalidate")]
        )
        .is_empty(),
        "memory operations are not timed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_operations_are_timed_by_op() {
    recorder();
    let server = cached_tests::RedisServer::start();
    let s = Service {
        cache: cached_tests::redis_cache(&server),
    };
    // Reads are timed one in 16: 400 of them leave (15/16)^400 ~ 1e-11
    // chance of no sample at all.
    for _ in 0..400 {
        s.timed_row(1).await;
    }
    let op = |op| samples(names::LATENCY, &[("cache", "obs_timed"), ("op", op)]);
    let gets = op("get");
    // One in 16: about 25 of 400; more than 100 is not sampling (the
    // chance of it is below 1e-30).
    assert!(!gets.is_empty() && gets.len() <= 100, "{}", gets.len());
    assert!(gets.iter().all(|s| *s > 0.0 && *s < 1.0), "{gets:?}");
    assert_eq!(op("set").len(), 1, "one leased write");
    assert_eq!(op("lease").len(), 1, "one lease taken");
    assert_eq!(counter(names::HITS, &[("cache", "obs_timed")]), 399);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_and_coalesced_waiters_are_counted() {
    recorder();
    let s = Arc::new(Service {
        cache: Cache::memory(),
    });
    assert!(s.failing(1).await.is_err());
    assert_eq!(counter(names::LOAD_ERRORS, &[("cache", "obs_fail")]), 1);

    let calls: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.slow(1).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("no panic"), 1);
    }
    let slow = [("cache", "obs_slow")];
    assert_eq!(counter(names::LOADS, &slow), 1);
    assert_eq!(counter(names::COALESCED, &slow), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_by_kind_and_the_breaker_state_are_exported() {
    recorder();
    // Nothing listens there: connection errors, then the breaker opens.
    let cache = cached_tests::unreachable_redis_builder()
        .namespace("obs_down")
        .op_timeout(Duration::from_millis(50))
        .circuit_breaker(CircuitBreaker {
            failures: 2,
            ..CircuitBreaker::default()
        })
        .build()
        .expect("cache");
    let s = Service { cache };
    for _ in 0..6 {
        assert_eq!(s.down_row(2).await, 2, "the loader answers");
    }
    assert!(s.cache.breaker_open());
    let seen = collect();
    // Every series of the metric for this cache: each error once, by kind.
    let series: Vec<(String, u64)> = seen
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with(names::ERRORS) && k.contains("cache=obs_down_rows"))
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    drop(seen);
    assert!(
        series.iter().all(|(k, _)| k.contains("kind=")),
        "no series without a kind (it would count each error twice): {series:?}"
    );
    let errors: u64 = series.iter().map(|(_, n)| n).sum();
    let stats = s.cache.stats_for("obs_down_rows").expect("stats");
    assert_eq!(errors, stats.errors, "the metric and the stats agree");
    assert!(errors >= 2, "errors by kind were recorded");
    assert!(counter(names::SKIPPED, &[("cache", "obs_down_rows")]) >= 1);
    assert_eq!(
        gauge_max(names::BREAKER_STATE, &[("namespace", "obs_down")]),
        Some(1.0)
    );
    assert_eq!(
        counter(
            names::BREAKER_TRANSITIONS,
            &[("namespace", "obs_down"), ("to", "open")]
        ),
        1
    );
}

/// The breaker gauge counts the namespace's open breakers: a second cache
/// of the namespace, built while the first's is open, leaves it at 1 (it
/// was set to 0), and building a cache is no transition to `closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_built_beside_an_open_breaker_leaves_it_counted() {
    recorder();
    let build = || {
        cached_tests::unreachable_redis_builder()
            .namespace("obs_two")
            .op_timeout(Duration::from_millis(50))
            .circuit_breaker(CircuitBreaker {
                failures: 1,
                ..CircuitBreaker::default()
            })
            .build()
            .expect("cache")
    };
    let first = Service { cache: build() };
    assert_eq!(first.two_row(1).await, 1, "the loader answers");
    assert!(first.cache.breaker_open());
    let second = Service { cache: build() };
    let state = || {
        collect()
            .gauge_sum
            .get(&id(names::BREAKER_STATE, &[("namespace", "obs_two")]))
            .copied()
    };
    assert_eq!(state(), Some(1.0), "one breaker of the namespace is open");
    let closed = [("namespace", "obs_two"), ("to", "closed")];
    assert_eq!(counter(names::BREAKER_TRANSITIONS, &closed), 0);
    drop(first);
    let began = std::time::Instant::now();
    while state() != Some(0.0) {
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "the open breaker, dropped, is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!second.cache.breaker_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_a_snapshot_per_name_with_a_hit_rate() {
    let s = Service {
        cache: Cache::memory(),
    };
    assert!(s.cache.stats().is_empty(), "nothing before the first call");
    for id in [1, 1, 1, 2] {
        s.stats_row(id).await;
    }
    let stats = s.cache.stats_for("obs_stats").expect("stats");
    assert_eq!((stats.hits, stats.misses, stats.loads), (2, 2, 2));
    assert!((stats.hit_rate() - 0.5).abs() < 1e-12);
    assert_eq!(stats.errors, 0);
    s.named(3).await;
    let names: Vec<String> = s.cache.stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["obs_stats", "renamed"], "sorted by name");
}

/// One call site served by more caches than it keeps counters for: each
/// cache counts its own calls, none another's, whether its counters live on
/// the site or in its registry, and whichever cache comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cache_counts_its_own_calls_of_a_shared_call_site() {
    let services: Vec<Service> = (0..7)
        .map(|_| Service {
            cache: Cache::memory(),
        })
        .collect();
    // Cache `i` reads ids 0..=i twice (a miss, then a hit, each), the
    // caches taking turns, concurrently.
    let mut calls = tokio::task::JoinSet::new();
    let services = Arc::new(services);
    for _round in 0..2 {
        for i in 0..services.len() {
            let services = Arc::clone(&services);
            calls.spawn(async move {
                for id in 0..=i as u64 {
                    services[i].per_cache_row(id).await;
                }
            });
        }
        while let Some(done) = calls.join_next().await {
            done.expect("no panic");
        }
    }
    for (i, s) in services.iter().enumerate() {
        let stats = s.cache.stats_for("obs_per_cache").expect("stats");
        let n = i as u64 + 1;
        assert_eq!(
            (stats.hits, stats.misses, stats.loads),
            (n, n, n),
            "cache {i}"
        );
    }
}

// ---------------------------------------------------------------------------
// Auditing consistency: sampled hits compared with the source.

/// A service whose rows change underneath it: `set_row` is a writer that
/// bypasses the cache, `put` one that writes through.
#[derive(Clone)]
struct Audited {
    cache: Cache,
    rows: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Audited {
    fn new(cache: Cache) -> Audited {
        Audited {
            cache,
            rows: Arc::default(),
        }
    }

    fn row(&self, id: u64) -> u64 {
        *self.rows.lock().expect("rows").entry(id).or_insert(1)
    }

    fn set_row(&self, id: u64, version: u64) {
        self.rows.lock().expect("rows").insert(id, version);
    }

    #[cached(prefix = "audited", ttl = "5m", key = id, audit = 1.0)]
    async fn get(&self, id: u64) -> u64 {
        self.row(id)
    }

    #[cache_put(prefix = "audited", ttl = "5m", key = id)]
    async fn put(&self, id: u64, version: u64) -> u64 {
        self.set_row(id, version);
        version
    }

    /// No `audit` of its own: the builder's default applies.
    #[cached(prefix = "audited_default", ttl = "5m", key = id, stale = "1m")]
    async fn by_default(&self, id: u64) -> u64 {
        self.row(id)
    }

    /// A map, which serializes in the order its `HashMap` iterates: a
    /// different one for each map made.
    #[cached(prefix = "audited_map", ttl = "5m", key = id, audit = 1.0)]
    async fn map(&self, id: u64) -> HashMap<String, u64> {
        HashMap::from([("a".to_owned(), self.row(id)), ("b".to_owned(), 2)])
    }

    /// A slow source, for the bound on audits in flight.
    #[cached(prefix = "audited_slow", ttl = "5m", key = id, audit = 1.0)]
    async fn slow(&self, id: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.row(id)
    }
}

/// A cache on `backend` whose operations wait up to 2 s: an audit's second
/// look that timed out on a loaded machine would give no verdict.
fn patient(backend: &cached_tests::Backend) -> Cache {
    backend.cache_with(|b| b.op_timeout(Duration::from_secs(2)))
}

/// Waits until `name`'s stats satisfy `done` (audits run in the
/// background), at most 3 s.
async fn audited(
    cache: &Cache,
    name: &str,
    done: impl Fn(&cached_runtime::CacheStats) -> bool,
) -> cached_runtime::CacheStats {
    let started = std::time::Instant::now();
    loop {
        let stats = cache.stats_for(name).unwrap_or_default();
        if done(&stats) || started.elapsed() > Duration::from_secs(3) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_consistent_hit_is_one_audit_and_no_inconsistency(backend: &cached_tests::Backend) {
    recorder();
    let s = Audited::new(patient(backend));
    assert_eq!(s.get(1).await, 1);
    assert_eq!(s.get(1).await, 1, "a hit, audited in the background");
    let stats = audited(&s.cache, "audited", |s| s.audits >= 1).await;
    // Time for a recheck, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = s.cache.stats_for("audited").unwrap_or(stats);
    assert_eq!((stats.audits, stats.inconsistencies), (1, 0), "{stats:?}");
    assert_eq!(stats.consistency(), 1.0);
}

/// Equal maps are equal to an audit whatever order their `HashMap`s
/// iterate in: compared as JSON text, about one audit in four of an
/// unchanged two-key map was counted an inconsistency (the served map and
/// the source's first answer in different orders, its second answer in the
/// first's), and with `audit_repair` the good entry was removed.
async fn an_unchanged_map_is_never_an_inconsistency(backend: &cached_tests::Backend) {
    let s = Audited::new(backend.cache_with(|b| {
        b.op_timeout(Duration::from_secs(2))
            .max_audits_in_flight(64)
            .audit_repair(true)
    }));
    let want = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
    assert_eq!(s.map(4).await, want);
    for _ in 0..32 {
        assert_eq!(s.map(4).await, want);
    }
    let stats = audited(&s.cache, "audited_map", |s| s.audits >= 32).await;
    // Time for the rechecks, were there any.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = s.cache.stats_for("audited_map").unwrap_or(stats);
    assert!(stats.audits >= 32, "{stats:?}");
    assert_eq!(stats.inconsistencies, 0, "{stats:?}");
    assert_eq!(stats.misses, 1, "an entry was removed: {stats:?}");
}

async fn a_writer_that_bypasses_the_cache_is_an_inconsistency(backend: &cached_tests::Backend) {
    let s = Audited::new(patient(backend));
    assert_eq!(s.get(2).await, 1);
    // The row changes and nobody tells the cache.
    s.set_row(2, 2);
    assert_eq!(s.get(2).await, 1, "the old value is served");
    let stats = audited(&s.cache, "audited", |s| s.inconsistencies >= 1).await;
    assert_eq!((stats.audits, stats.inconsistencies), (1, 1), "{stats:?}");
    assert_eq!(stats.consistency(), 0.0);
    assert_eq!(s.get(2).await, 1, "counted, not repaired: still served");
}

async fn a_write_that_lands_after_the_hit_is_no_inconsistency(backend: &cached_tests::Backend) {
    let s = Audited::new(patient(backend));
    assert_eq!(s.get(3).await, 1);
    // The row is committed at version 2; its write-through comes 50 ms
    // after a hit that still finds version 1 (an honest race).
    s.set_row(3, 2);
    assert_eq!(s.get(3).await, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.put(3, 2).await, 2);
    let stats = audited(&s.cache, "audited", |s| s.audits >= 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = s.cache.stats_for("audited").unwrap_or(stats);
    assert_eq!((stats.audits, stats.inconsistencies), (1, 0), "{stats:?}");
}

async fn repair_removes_an_inconsistent_entry(backend: &cached_tests::Backend) {
    let s = Audited::new(
        backend.cache_with(|b| b.audit_repair(true).op_timeout(Duration::from_secs(2))),
    );
    assert_eq!(s.get(4).await, 1);
    s.set_row(4, 2);
    assert_eq!(s.get(4).await, 1);
    audited(&s.cache, "audited", |s| s.inconsistencies >= 1).await;
    // The invalidation follows the count.
    let started = std::time::Instant::now();
    while s.get(4).await != 2 {
        assert!(started.elapsed() < Duration::from_secs(2), "not repaired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Clone)]
struct Aging {
    cache: Cache,
}

impl Aging {
    #[cached(prefix = "aging", ttl = "100ms", stale = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

/// `Cache::get` of an entry past its TTL, in its stale window, answers
/// `None`: a miss, not a hit and a stale one (it counted both).
async fn a_stale_entry_read_by_hand_is_a_miss(backend: &cached_tests::Backend) {
    let s = Aging {
        cache: backend.cache(),
    };
    assert_eq!(s.get(1).await, 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = s.cache.stats_for("aging").expect("stats");
    assert_eq!(s.cache.get::<u64>("aging:1").await, None);
    let after = s.cache.stats_for("aging").expect("stats");
    assert_eq!(
        (
            after.hits - before.hits,
            after.misses - before.misses,
            after.stale_served - before.stale_served
        ),
        (0, 1, 0),
        "{after:?}"
    );
}

cached_tests::on_both_backends!(a_stale_entry_read_by_hand_is_a_miss);

cached_tests::on_both_backends!(
    a_consistent_hit_is_one_audit_and_no_inconsistency,
    an_unchanged_map_is_never_an_inconsistency,
    a_writer_that_bypasses_the_cache_is_an_inconsistency,
    a_write_that_lands_after_the_hit_is_no_inconsistency,
    repair_removes_an_inconsistent_entry,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_are_exported_and_the_builder_sets_a_default() {
    recorder();
    let s = Audited::new(Cache::builder().audit(1.0).build().expect("cache"));
    s.by_default(1).await;
    s.by_default(1).await;
    audited(&s.cache, "audited_default", |s| s.audits >= 1).await;
    s.set_row(1, 2);
    s.by_default(1).await;
    let stats = audited(&s.cache, "audited_default", |s| s.inconsistencies >= 1).await;
    assert_eq!((stats.audits, stats.inconsistencies), (2, 1), "{stats:?}");
    let labels = [("cache", "audited_default")];
    assert_eq!(counter(names::AUDITS, &labels), 2);
    assert_eq!(counter(names::INCONSISTENCIES, &labels), 1);

    // Off by default; a share must be a share.
    let off = Audited::new(Cache::memory());
    off.by_default(1).await;
    off.by_default(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        off.cache
            .stats_for("audited_default")
            .expect("stats")
            .audits,
        0
    );
    for bad in [-0.1, 1.5, f64::NAN] {
        let e = Cache::builder().audit(bad).build().expect_err("refused");
        assert!(
            e.to_string()
                .contains("audit must be a share of hits between 0 and 1"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_in_flight_are_bounded() {
    let s = Audited::new(
        Cache::builder()
            .max_audits_in_flight(1)
            .build()
            .expect("cache"),
    );
    s.slow(1).await;
    // Ten hits at once: one audit runs (a 300 ms source read), the others
    // find the bound taken and are not audited.
    let hits: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.slow(1).await })
        })
        .collect();
    for h in hits {
        assert_eq!(h.await.expect("no panic"), 1);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = s.cache.stats_for("audited_slow").expect("stats");
    assert_eq!((stats.hits, stats.audits), (10, 1), "{stats:?}");
    assert_eq!(
        stats.loads, 1,
        "audits run the body, not the cache's loader"
    );
}

/// A rate is a share of hits: a quarter of 400 hits audited, about 100
/// (binomial: 40 to 160 leaves no room for chance), neither all nor none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_rate_samples_that_share_of_hits() {
    let s = Audited::new(
        Cache::builder()
            .audit(0.25)
            .max_audits_in_flight(10_000)
            .build()
            .expect("cache"),
    );
    s.by_default(9).await;
    for _ in 0..400 {
        s.by_default(9).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = s.cache.stats_for("audited_default").expect("stats");
    assert_eq!(stats.hits, 400);
    assert!((40..=160).contains(&stats.audits), "{stats:?}");
    assert_eq!(stats.inconsistencies, 0);
}
