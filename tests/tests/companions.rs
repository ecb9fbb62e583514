//! The typed companions of a `#[cached]` function, on both backends:
//! `{name}_key`, `{name}_invalidate`, `{name}_prime`, `{name}_refresh`, and
//! `#[cache_evict(of = [Self::name(args)])]`, which names the entries to
//! remove by the function and its arguments instead of a key written out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use cached_tests::{Backend, on_both_backends};
use serde::{Deserialize, Serialize};

on_both_backends!(
    key_names_the_entry_the_function_stores,
    invalidate_removes_one_entry_and_refuses_a_load_in_flight,
    prime_stores_without_a_load,
    a_parameter_named_value_keeps_its_companions,
    a_refresh_that_read_before_an_eviction_does_not_store,
    refresh_reads_the_source_and_replaces_the_entry,
    evict_of_removes_exactly_the_named_calls,
    cache_if_and_unless_keep_values_out,
    run_time_ttls_decide_how_long_each_value_is_kept,
);

cached_tests::on_cluster!(
    invalidate_removes_one_entry_and_refuses_a_load_in_flight,
    evict_of_removes_exactly_the_named_calls,
    prime_stores_without_a_load,
    a_refresh_that_read_before_an_eviction_does_not_store,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct DbError;

#[derive(Clone)]
struct Store {
    cache: Cache,
    rows: Arc<Mutex<HashMap<u64, u64>>>,
    loads: Arc<AtomicU32>,
    delay: Arc<Mutex<Duration>>,
}

impl Store {
    /// A parameter named as `_prime`'s value parameter is.
    #[cached(prefix = "valued", ttl = "5m", key = id)]
    async fn valued(&self, id: u64, value: u64) -> u64 {
        let _ = id;
        self.loads.fetch_add(1, SeqCst);
        value
    }

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

    /// Each load reads its row, then takes `delay`.
    fn slow(&self, delay: Duration) {
        *self.delay.lock().expect("delay") = delay;
    }

    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.loads.fetch_add(1, SeqCst);
        let version = self.rows.lock().expect("rows").get(&id).copied();
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        Ok(version.map(|version| Item { id, version }))
    }

    /// `get` of the same entries, waiting at most 100 ms for another
    /// process's load of one.
    #[cached(prefix = "item", ttl = "5m", key = id, wait = "100ms")]
    async fn get_brief(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.get_uncached(id).await
    }

    #[cached(prefix = "pair", ttl = "5m", key = "{a}:x:{b}")]
    async fn pair(&self, a: u64, b: String) -> String {
        self.loads.fetch_add(1, SeqCst);
        format!("{a}/{b}")
    }

    #[cached(prefix = "query", ttl = "5m", key = (tenant, cached_runtime::hashed(&filter)))]
    async fn query(&self, tenant: String, filter: Vec<u64>) -> Vec<u64> {
        self.loads.fetch_add(1, SeqCst);
        filter.into_iter().map(|f| f * 10).collect()
    }

    #[cache_evict(of = [Self::get(id), Self::pair(id, label)])]
    async fn changed(&self, id: u64, label: String) -> Result<(), DbError> {
        Ok(())
    }
}

async fn key_names_the_entry_the_function_stores(backend: &Backend) {
    let s = Store::new(backend.cache());
    // The key text is the attribute's: stable, and what redis-cli shows.
    assert_eq!(Store::get_key(&7), "item:7");
    assert_eq!(Store::pair_key(&3, &"a:b".to_owned()), "pair:3:x:a\\:b");
    let filter = vec![1, 2];
    assert!(Store::query_key(&"t1".to_owned(), &filter).starts_with("query:t1:"));
    assert_ne!(
        Store::query_key(&"t1".to_owned(), &filter),
        Store::query_key(&"t2".to_owned(), &filter),
        "another tenant, another key"
    );
    s.get(7).await.expect("loads");
    s.pair(3, "a:b".into()).await;
    s.query("t1".into(), filter.clone()).await;
    assert_eq!(
        s.cache.get::<Item>(&Store::get_key(&7)).await,
        Some(Item { id: 7, version: 1 })
    );
    assert_eq!(
        s.cache
            .get::<String>(&Store::pair_key(&3, &"a:b".into()))
            .await,
        Some("3/a:b".to_owned())
    );
    assert_eq!(
        s.cache
            .get::<Vec<u64>>(&Store::query_key(&"t1".into(), &filter))
            .await,
        Some(vec![10, 20])
    );
}

async fn invalidate_removes_one_entry_and_refuses_a_load_in_flight(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(1).await.expect("loads");
    s.get(2).await.expect("loads");
    s.get_invalidate(&1).await;
    assert_eq!(s.cache.get::<Item>("item:1").await, None);
    assert!(
        s.cache.get::<Item>("item:2").await.is_some(),
        "only the one named"
    );
    // A load that read version 1 before the change does not store it.
    *s.delay.lock().expect("delay") = Duration::from_millis(200);
    let loading = tokio::spawn({
        let s = s.clone();
        async move { s.get(1).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.set(1, 2);
    s.get_invalidate(&1).await;
    loading.await.expect("joins").expect("loads");
    assert_eq!(s.cache.get::<Item>("item:1").await, None, "not stored");
}

async fn prime_stores_without_a_load(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get_prime(&4, &Item { id: 4, version: 9 }).await;
    assert_eq!(s.get(4).await, Ok(Some(Item { id: 4, version: 9 })));
    assert_eq!(s.loads(), 0, "served the primed value");
}

/// A function with a parameter named `value` has its companions: `_prime`
/// named its own value parameter so, and the function failed to compile
/// ("identifier `value` is bound more than once", at the attribute).
async fn a_parameter_named_value_keeps_its_companions(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.valued_prime(&1, &0, &7).await;
    assert_eq!(s.valued(1, 3).await, 7, "the primed value");
    assert_eq!(s.loads(), 0);
}

async fn refresh_reads_the_source_and_replaces_the_entry(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(5).await.expect("loads");
    s.set(5, 3);
    assert_eq!(
        s.get(5).await,
        Ok(Some(Item { id: 5, version: 1 })),
        "cached"
    );
    assert_eq!(s.get_refresh(5).await, Ok(Some(Item { id: 5, version: 3 })));
    assert_eq!(s.loads(), 2);
    assert_eq!(
        s.get(5).await,
        Ok(Some(Item { id: 5, version: 3 })),
        "replaced"
    );
    assert_eq!(s.loads(), 2, "a hit");
    // Gone at the source: the entry goes too.
    s.rows.lock().expect("rows").remove(&5);
    assert_eq!(s.get_refresh(5).await, Ok(None));
    assert_eq!(s.cache.get::<Item>("item:5").await, None);
}

/// A refresh that read the row before an eviction of it completed does
/// not store what it read: the companion called the function without the
/// cache, then wrote its result through, over the eviction (the stale-set
/// race; found by a review). It now loads under the key's lease, which
/// the eviction destroys.
async fn a_refresh_that_read_before_an_eviction_does_not_store(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(5).await.expect("loads");
    s.slow(Duration::from_millis(300));
    let refreshing = tokio::spawn({
        let s = s.clone();
        async move { s.get_refresh(5).await }
    });
    // Its load has read version 1.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.set(5, 2);
    s.get_invalidate(&5).await;
    assert_eq!(
        refreshing.await.expect("joins"),
        Ok(Some(Item { id: 5, version: 1 })),
        "the refresh returns what it read"
    );
    s.slow(Duration::ZERO);
    assert_eq!(
        s.get(5).await,
        Ok(Some(Item { id: 5, version: 2 })),
        "the eviction was overwritten by what the refresh read before it"
    );
}

/// A refresh made while the circuit breaker is open takes no lease and
/// stores nothing, and returns the source's newer value: the entry it was
/// to replace goes all the same (invalidations do not wait on the
/// breaker), so that once the breaker closes no caller is served the value
/// older than the one the refresh returned (found by a review: it stayed
/// for its TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_while_the_breaker_is_open_leaves_no_older_entry() {
    let (_server, proxy, builder) = cached_tests::behind_a_proxy(
        Duration::from_millis(200),
        1,
        Some(Duration::from_millis(300)),
    );
    let s = Store::new(builder.build().expect("builds"));
    s.get(5).await.expect("loads");
    s.set(5, 3);
    proxy.blackhole(true);
    s.get(6).await.expect("loads through the outage");
    proxy.blackhole(false);
    assert!(s.cache.breaker_open(), "one failure opened the breaker");
    assert_eq!(s.get_refresh(5).await, Ok(Some(Item { id: 5, version: 3 })));
    let began = std::time::Instant::now();
    while s.cache.breaker_open() {
        assert!(began.elapsed() < Duration::from_secs(5), "never closed");
        s.get(7).await.expect("loads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.get(5).await,
        Ok(Some(Item { id: 5, version: 3 })),
        "the entry older than the refresh's value was served"
    );
}

/// A refresh that could not store (another process's load holds the
/// key's lease past its `wait`) removes the entry it was to replace. Dropped
/// while that removal is under way, and the removal lost on its way (the
/// connections went silently dead), it leaves the removal pending, as a
/// dropped invalidation does: this process goes on loading the key from the
/// source until the removal lands, rather than serve, once connected again,
/// the entry older than the value its joiners were given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_dropped_while_removing_the_older_entry_leaves_it_pending() {
    let (server, proxy, builder) = cached_tests::behind_a_proxy(
        Duration::from_millis(500),
        3,
        Some(Duration::from_millis(200)),
    );
    let s = Store::new(builder.build().expect("builds"));
    let other = Store::new(
        cached_tests::redis_builder_at(server.url())
            .build()
            .expect("builds"),
    );
    assert_eq!(s.get(5).await, Ok(Some(Item { id: 5, version: 1 })));
    // Another process refreshes the key: its lease, held for its load.
    other.slow(Duration::from_secs(8));
    let holder = tokio::spawn({
        let other = other.clone();
        async move { other.get_refresh(5).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.set(5, 2);
    s.slow(Duration::from_millis(300));
    let refresh = tokio::spawn({
        let s = s.clone();
        async move {
            // Lease held (100 ms), load (300 ms), removal (lost): dropped
            // in the removal's round trip, well before its timeout.
            tokio::time::timeout(Duration::from_millis(650), s.get_brief_refresh(5)).await
        }
    });
    // Joins while the refresh waits for the lease, before its load began.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let joiner = tokio::spawn({
        let s = s.clone();
        async move { s.get_brief(5).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.strand();
    assert!(
        refresh.await.expect("joins").is_err(),
        "dropped before the removal answered"
    );
    assert_eq!(
        joiner.await.expect("joins"),
        Ok(Some(Item { id: 5, version: 2 })),
        "the joiner shares the refresh's value"
    );
    s.slow(Duration::ZERO);
    let began = std::time::Instant::now();
    loop {
        assert_eq!(
            s.get_brief(5).await,
            Ok(Some(Item { id: 5, version: 2 })),
            "the entry older than the refresh's value was served ({:?} after the drop)",
            began.elapsed()
        );
        if s.cache.get::<Item>("item:5").await == Some(Item { id: 5, version: 2 }) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "never cached again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.abort();
}

/// A refresh without the key's lease (another process's load holds it
/// past `wait`) cannot confirm that no change landed while it loaded: as a
/// load without a lease, it is shared only with callers who joined before
/// its load began (README, Guarantee 2). A caller that comes during the
/// load, after another process's eviction completed, starts afresh rather
/// than take the value read before the eviction (found by a review: it
/// joined the refresh and got the older value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_without_the_lease_is_not_shared_with_later_callers() {
    let server = cached_tests::RedisServer::start();
    let cache = || {
        cached_tests::redis_builder(&server)
            .build()
            .expect("builds")
    };
    let s = Store::new(cache());
    // Another process of the same service (the same source).
    let writer = Store {
        cache: cache(),
        ..s.clone()
    };
    // A third process, whose slow load holds the key's lease.
    let holder = Store::new(cache());
    assert_eq!(s.get(5).await, Ok(Some(Item { id: 5, version: 1 })));
    holder.slow(Duration::from_secs(8));
    let held = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get_refresh(5).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.slow(Duration::from_millis(400));
    // Lease held past its 100 ms `wait`: loads version 1 without it.
    let refresh = tokio::spawn({
        let s = s.clone();
        async move { s.get_brief_refresh(5).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    writer.set(5, 2);
    writer.get_invalidate(&5).await;
    // (With the default `wait`: it would wait out the refresh's load.)
    let later = s.get(5).await;
    assert_eq!(
        refresh.await.expect("joins"),
        Ok(Some(Item { id: 5, version: 1 })),
        "the refresh returns what it read"
    );
    assert_eq!(
        later,
        Ok(Some(Item { id: 5, version: 2 })),
        "a caller after the eviction got the value read before it"
    );
    held.abort();
}

async fn evict_of_removes_exactly_the_named_calls(backend: &Backend) {
    let s = Store::new(backend.cache());
    s.get(1).await.expect("loads");
    s.get(2).await.expect("loads");
    s.pair(1, "x".into()).await;
    s.pair(1, "y".into()).await;
    s.changed(1, "x".into()).await.expect("evicts");
    assert_eq!(s.cache.get::<Item>("item:1").await, None);
    assert!(s.cache.get::<Item>("item:2").await.is_some());
    assert_eq!(
        s.cache
            .get::<String>(&Store::pair_key(&1, &"x".into()))
            .await,
        None
    );
    assert!(
        s.cache
            .get::<String>(&Store::pair_key(&1, &"y".into()))
            .await
            .is_some(),
        "another label, another entry"
    );
}

/// Drafts are not cached (`unless`), nor are empty lists (`cache_if`),
/// whether loaded by a single call, a batch, or written by `_refresh`.
#[derive(Clone)]
struct Drafts {
    cache: Cache,
    loads: Arc<AtomicU32>,
    draft: Arc<Mutex<bool>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u64,
    draft: bool,
}

impl Doc {
    fn is_draft(&self) -> bool {
        self.draft
    }
}

impl Drafts {
    fn doc(&self, id: u64) -> Doc {
        self.loads.fetch_add(1, SeqCst);
        Doc {
            id,
            draft: *self.draft.lock().expect("draft"),
        }
    }

    #[cached(prefix = "doc", ttl = "5m", key = id, unless = Doc::is_draft)]
    async fn get(&self, id: u64) -> Doc {
        self.doc(id)
    }

    #[cached(prefix = "doc", ttl = "5m", key = ids, batch, unless = |d: &Doc| d.draft)]
    async fn get_many(&self, ids: Vec<u64>) -> HashMap<u64, Doc> {
        ids.into_iter().map(|id| (id, self.doc(id))).collect()
    }

    #[cached(prefix = "list", ttl = "5m", key = id, cache_if = |l: &Vec<u64>| !l.is_empty())]
    async fn list(&self, id: u64) -> Option<Vec<u64>> {
        self.loads.fetch_add(1, SeqCst);
        Some(if id == 0 { Vec::new() } else { vec![id] })
    }
}

async fn cache_if_and_unless_keep_values_out(backend: &Backend) {
    let d = Drafts {
        cache: backend.cache(),
        loads: Arc::default(),
        draft: Arc::new(Mutex::new(true)),
    };
    let loads = || d.loads.load(SeqCst);
    d.get(1).await;
    d.get(1).await;
    assert_eq!(loads(), 2, "a draft is loaded each time");
    d.get_many(vec![2, 3]).await;
    d.get_many(vec![2, 3]).await;
    assert_eq!(loads(), 6, "and in a batch");
    *d.draft.lock().expect("draft") = false;
    d.get(1).await;
    d.get(1).await;
    assert_eq!(loads(), 7, "published: cached");
    // A refresh that finds it a draft again removes the entry.
    *d.draft.lock().expect("draft") = true;
    assert!(d.get_refresh(1).await.draft);
    assert_eq!(d.cache.get::<Doc>("doc:1").await, None);
    // cache_if on an Option's value: an empty list is not kept.
    d.list(0).await;
    d.list(0).await;
    d.list(5).await;
    d.list(5).await;
    assert_eq!(loads(), 8 + 3);
}

/// A record whose TTL depends on it: archived records keep (cut to
/// `max_ttl`), live ones expire soon, record 0 is not kept at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u64,
    archived: bool,
}

const SHORT: Duration = Duration::from_millis(400);

fn rec_ttl(r: &Rec) -> Duration {
    if r.id == 0 {
        Duration::ZERO
    } else if r.archived {
        Duration::from_secs(7200)
    } else {
        SHORT
    }
}

#[derive(Clone)]
struct Ttls {
    cache: Cache,
    loads: Arc<AtomicU32>,
    per_call: Duration,
}

impl Ttls {
    fn rec(&self, id: u64) -> Rec {
        self.loads.fetch_add(1, SeqCst);
        Rec {
            id,
            archived: id >= 100,
        }
    }

    #[cached(prefix = "rt", ttl = |r: &Rec| rec_ttl(r), max_ttl = "1h", key = id)]
    async fn by_closure(&self, id: u64) -> Rec {
        self.rec(id)
    }

    #[cached(prefix = "rt_path", ttl = rec_ttl, max_ttl = "1h", key = id)]
    async fn by_path(&self, id: u64) -> Option<Rec> {
        Some(self.rec(id))
    }

    #[cached(prefix = "rt_const", ttl = SHORT, max_ttl = "1h", key = id)]
    async fn by_const(&self, id: u64) -> Rec {
        self.rec(id)
    }

    #[cached(prefix = "rt_field", ttl = self.per_call, max_ttl = "1h", key = id)]
    async fn by_field(&self, id: u64) -> Rec {
        self.rec(id)
    }

    #[cached(prefix = "rt_param", ttl = ttl, max_ttl = "1s", key = id)]
    async fn by_param(&self, id: u64, ttl: Duration) -> Result<Rec, DbError> {
        let _ = ttl; // used by the attribute only
        Ok(self.rec(id))
    }

    #[cached(prefix = "rt", ttl = rec_ttl, max_ttl = "1h", batch)]
    async fn many(&self, ids: Vec<u64>) -> HashMap<u64, Rec> {
        ids.into_iter().map(|id| (id, self.rec(id))).collect()
    }

    #[cache_put(prefix = "rt", ttl = rec_ttl, max_ttl = "1h", key = rec.id)]
    async fn save(&self, rec: Rec) -> Rec {
        rec
    }
}

async fn run_time_ttls_decide_how_long_each_value_is_kept(backend: &Backend) {
    let t = Ttls {
        cache: backend.cache_with(|b| b.ttl_jitter(0.0)),
        loads: Arc::default(),
        per_call: SHORT,
    };
    let loads = || t.loads.load(SeqCst);
    // Twice each: what is kept is loaded once.
    for _ in 0..2 {
        t.by_closure(1).await;
        t.by_closure(100).await;
        t.by_closure(0).await;
        t.by_path(2).await;
        t.by_path(102).await;
        t.by_const(3).await;
        t.by_field(4).await;
        t.by_param(5, SHORT).await.expect("ok");
        t.by_param(105, Duration::from_secs(60)).await.expect("ok");
    }
    assert_eq!(
        loads(),
        10,
        "each kept value loaded once; record 0 (TTL zero) twice"
    );
    t.many(vec![6, 106]).await;
    t.many(vec![6, 106, 1, 100]).await;
    assert_eq!(
        loads(),
        12,
        "the batch keeps its values, and shares by_closure's"
    );
    t.save(Rec {
        id: 7,
        archived: false,
    })
    .await;
    t.save(Rec {
        id: 107,
        archived: true,
    })
    .await;
    t.by_closure(7).await;
    t.by_closure(107).await;
    assert_eq!(loads(), 12, "written through, for the value's TTL");

    // On Redis the server's TTL shows the rule: a long one cut to max_ttl.
    if let Some(server) = backend.server() {
        let pttl = |key: &str| server.cmd::<i64>(&["PTTL", &t.cache.full_key(key)]);
        let hour = 3_600_000;
        for key in ["rt:100", "rt:106", "rt:107", "rt_path:102"] {
            let left = pttl(key);
            assert!(hour - 60_000 < left && left <= hour, "{key}: {left} ms");
        }
        for key in [
            "rt:1",
            "rt:6",
            "rt:7",
            "rt_path:2",
            "rt_const:3",
            "rt_field:4",
            "rt_param:5",
        ] {
            let left = pttl(key);
            assert!(0 < left && left <= 400, "{key}: {left} ms");
        }
        let left = pttl("rt_param:105");
        assert!(
            0 < left && left <= 1_000,
            "rt_param:105 cut to max_ttl: {left} ms"
        );
        assert_eq!(pttl("rt:0"), -2, "a zero TTL stores nothing");
    }

    // Past the short TTLs: those reload, the long ones are still there.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = loads();
    t.by_closure(1).await;
    t.by_path(2).await;
    t.by_const(3).await;
    t.by_field(4).await;
    t.by_param(5, SHORT).await.expect("ok");
    t.by_param(105, Duration::from_secs(60)).await.expect("ok");
    t.many(vec![6, 7]).await;
    assert_eq!(
        loads() - before,
        8,
        "every short TTL, and max_ttl's cut, expired"
    );
    let before = loads();
    t.by_closure(100).await;
    t.by_path(102).await;
    t.many(vec![106, 107]).await;
    assert_eq!(loads(), before, "the long TTLs kept");
}
