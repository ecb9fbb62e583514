//! Guarantees an outside user broke, each tried on both backends: keys of
//! distinct arguments never collide (the tenant leak), an eviction removes
//! exactly what it names, and "never expires" durations do not panic.

use std::sync::Arc;
use std::time::Duration;

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use cached_tests::{
    Backend, RedisServer, Source, SourceDown, on_both_backends, redis_cache, redis_cache_with,
};

on_both_backends!(
    a_tenant_never_reads_another_tenants_entry,
    a_key_part_holding_the_separator_is_not_a_template_key,
    nested_options_get_entries_of_their_own,
    a_key_given_by_hand_cannot_name_the_caches_own,
    a_pattern_eviction_removes_only_the_entity_it_names,
    a_prefix_eviction_removes_the_entry_of_a_function_without_key_parameters,
    duration_max_means_never_expires_and_never_panics,
    a_caller_waits_on_a_load_in_its_own_process_no_longer_than_wait,
    a_caller_waits_no_longer_than_wait_however_often_its_load_is_displaced,
    a_caller_joining_a_load_others_wait_on_longer_waits_only_its_own_wait,
    a_background_refresh_never_replaces_a_newer_write_through,
    a_pattern_eviction_stops_a_load_in_flight_from_storing_what_it_read_before,
    one_failure_costs_the_source_one_run_and_every_waiter_gets_the_error,
    a_cache_switched_off_runs_every_call_and_stores_nothing,
    a_float_comes_back_as_the_function_returned_it,
);

cached_tests::on_cluster!(
    a_tenant_never_reads_another_tenants_entry,
    a_key_part_holding_the_separator_is_not_a_template_key,
    a_pattern_eviction_removes_only_the_entity_it_names,
    a_prefix_eviction_removes_the_entry_of_a_function_without_key_parameters,
    a_background_refresh_never_replaces_a_newer_write_through,
    a_pattern_eviction_stops_a_load_in_flight_from_storing_what_it_read_before,
    one_failure_costs_the_source_one_run_and_every_waiter_gets_the_error,
);

struct Docs {
    cache: Cache,
    source: Source,
}

impl Docs {
    fn new(cache: Cache) -> Docs {
        Docs {
            cache,
            source: Source::new(),
        }
    }

    /// Whose document this is: the loader returns its own arguments.
    #[cached(prefix = "doc", ttl = "5m", key = (tenant, name))]
    async fn doc(&self, tenant: String, name: String) -> String {
        self.source.count_load();
        format!("{tenant}|{name}")
    }

    /// A filter where `None` is "any owner" and `Some(None)` "no owner".
    #[cached(prefix = "by_owner", ttl = "5m", key = owner)]
    async fn by_owner(&self, owner: Option<Option<String>>) -> String {
        self.source.count_load();
        format!("{owner:?}")
    }

    #[cached(prefix = "video", ttl = "5m", key = "{video_id}:placements")]
    async fn placements(&self, video_id: String) -> String {
        self.source.count_load();
        format!("placements of {video_id}")
    }

    #[cached(prefix = "video", ttl = "5m", key = video_id)]
    async fn video(&self, video_id: String) -> String {
        self.source.count_load();
        format!("video {video_id}")
    }

    #[cache_evict(patterns = ["video:{video_id}:*"])]
    async fn changed(&self, video_id: String) {
        let _ = video_id;
    }

    #[cached(prefix = "products", ttl = "1h")]
    async fn all_products(&self) -> Vec<u32> {
        self.source.count_load();
        vec![1, 2, 3]
    }

    #[cache_evict(prefixes = ["products"])]
    async fn products_changed(&self) {}

    /// The first load takes 3 s (a slow query); later ones are quick.
    #[cached(prefix = "slow", ttl = "5m", key = id, wait = "100ms")]
    async fn slow_first(&self, id: u32) -> u32 {
        self.first_load_slow(id).await
    }

    /// Every load takes 250 ms; a caller waits 300 ms for another's.
    #[cached(prefix = "displaced", ttl = "5m", key = id, wait = "300ms")]
    async fn displaced(&self, id: u32) -> u32 {
        self.source.count_load();
        tokio::time::sleep(Duration::from_millis(250)).await;
        id
    }

    /// The same entries, waiting up to 10 s for another's lease.
    #[cached(
        prefix = "displaced",
        ttl = "5m",
        key = id,
        wait = "10s",
        name = "displaced_patiently"
    )]
    async fn displaced_patiently(&self, id: u32) -> u32 {
        self.source.count_load();
        tokio::time::sleep(Duration::from_millis(250)).await;
        id
    }

    /// Two call sites of one key with different `wait`s (as a list page and
    /// a latency-bound endpoint might share an entry): the first load of
    /// either takes 3 s.
    #[cached(prefix = "shared_wait", ttl = "5m", key = id, wait = "5s")]
    async fn patient(&self, id: u32) -> u32 {
        self.first_load_slow(id).await
    }

    #[cached(prefix = "shared_wait", ttl = "5m", key = id, wait = "100ms")]
    async fn hurried(&self, id: u32) -> u32 {
        self.first_load_slow(id).await
    }

    /// The first load of the source takes 3 s (a slow query); later ones
    /// are quick.
    async fn first_load_slow(&self, id: u32) -> u32 {
        if self.source.count_load() == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        id
    }

    /// A source that is down: every load fails after 50 ms.
    #[cached(prefix = "flaky", ttl = "5m", key = id)]
    async fn flaky(&self, id: u32) -> Result<u32, SourceDown> {
        let _ = id;
        self.source.count_load();
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(SourceDown)
    }

    fn loads(&self) -> u32 {
        self.source.loads()
    }

    /// Scores the source computes: no rows give no average (NaN); a
    /// score may be missing (`None`).
    #[cached(prefix = "score", ttl = "5m", key = id)]
    async fn scores(&self, id: u32, value: f64) -> Vec<Option<f64>> {
        let _ = id;
        self.source.count_load();
        vec![Some(value), None]
    }
}

async fn a_tenant_never_reads_another_tenants_entry(backend: &Backend) {
    let cache = backend.cache();
    let docs = Docs::new(cache);
    // Under plain `:` joining these were one key, so the second caller
    // got the first tenant's document.
    assert_eq!(docs.doc("a:b".into(), "c".into()).await, "a:b|c");
    assert_eq!(docs.doc("a".into(), "b:c".into()).await, "a|b:c");
    assert_eq!(docs.doc("a\\".into(), ":c".into()).await, "a\\|:c");
    assert_eq!(docs.doc("a".into(), "\\:c".into()).await, "a|\\:c");
    assert_eq!(docs.loads(), 4, "four arguments, four entries");
    assert_eq!(docs.doc("a:b".into(), "c".into()).await, "a:b|c");
    assert_eq!(docs.loads(), 4, "and each is a hit afterwards");
}

async fn a_key_part_holding_the_separator_is_not_a_template_key(backend: &Backend) {
    let cache = backend.cache();
    let docs = Docs::new(cache);
    // `video` with key "7:placements" must not be the list of video 7.
    assert_eq!(
        docs.video("7:placements".into()).await,
        "video 7:placements"
    );
    assert_eq!(docs.placements("7".into()).await, "placements of 7");
    assert_eq!(docs.loads(), 2);
}

/// A cached float is the function's, to the bit: one that serde_json's
/// default parser read back one unit off, and NaN or an infinity, which
/// JSON cannot hold (written as `null`, `Some(NaN)` came back `None`): such
/// a value is not stored as JSON, so each call gets it from the function
/// (found by a review).
async fn a_float_comes_back_as_the_function_returned_it(backend: &Backend) {
    let docs = Docs::new(backend.cache());
    let values = [0.091_443_385_120_928_87, f64::NAN, f64::INFINITY, -0.0];
    for (id, value) in (0..).zip(values) {
        for call in 0..2 {
            let got = docs.scores(id, value).await;
            assert_eq!(
                got.iter().map(|f| f.map(f64::to_bits)).collect::<Vec<_>>(),
                [Some(value.to_bits()), None],
                "call {call} of {value:e} got {got:?}"
            );
        }
    }
    // Stored and served, but for the two JSON cannot hold on Redis.
    let loads = if backend.server().is_some() { 6 } else { 4 };
    assert_eq!(docs.loads(), loads);
}

async fn nested_options_get_entries_of_their_own(backend: &Backend) {
    let docs = Docs::new(backend.cache());
    let filters = [
        None,
        Some(None),
        Some(Some(String::new())),
        Some(Some("~".to_owned())),
    ];
    for _ in 0..2 {
        for owner in &filters {
            assert_eq!(docs.by_owner(owner.clone()).await, format!("{owner:?}"));
        }
    }
    assert_eq!(docs.source.loads(), 4, "one load per filter, then hits");
}

/// The typed API takes keys by hand, perhaps built from user input
/// (`format!("doc:{tenant}:{name}")`). One whose segment starts with `~`
/// and a letter names what the cache keeps for itself (a lease, a tag
/// index, an epoch): it is refused, and nothing is written there. Written,
/// `doc:alice:x:~lease` would have been the lease of `doc("alice", "x")`:
/// every call of it would wait out `wait`, then load and store nothing.
async fn a_key_given_by_hand_cannot_name_the_caches_own(backend: &Backend) {
    let docs = Docs::new(backend.cache());
    let ttl = Duration::from_secs(60);
    let lease = "doc:alice:x:~lease";
    let loaded: Result<u8, ()> = docs.cache.get_or_load(lease, ttl, || async { Ok(7) }).await;
    assert_eq!(loaded, Ok(7), "loaded, not cached");
    docs.cache.set(lease, &1u8, ttl).await;
    docs.cache.set("~epoch", &1u8, ttl).await;
    assert_eq!(docs.cache.get::<u8>(lease).await, None);
    for refused in [
        docs.cache.invalidate("~tag:all").await,
        docs.cache.invalidate_many(["doc:a", "doc:b:~lease"]).await,
    ] {
        assert_eq!(refused.map_err(|e| e.kind()), Err("reserved_key"));
    }
    if let Some(server) = backend.server() {
        let full = |k: &str| format!("{}:{k}", cached_tests::NAMESPACE);
        for key in [lease, "~epoch"] {
            assert_eq!(
                server.cmd::<i64>(&["EXISTS", &full(key)]),
                0,
                "{key} written"
            );
        }
    }
    let started = std::time::Instant::now();
    for _ in 0..2 {
        assert_eq!(docs.doc("alice".into(), "x".into()).await, "alice|x");
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited {:?} behind a lease",
        started.elapsed()
    );
    assert_eq!(docs.source.loads(), 1, "stored, then a hit");
}

async fn a_pattern_eviction_removes_only_the_entity_it_names(backend: &Backend) {
    let cache = backend.cache();
    let docs = Docs::new(cache);
    docs.placements("7".into()).await;
    docs.placements("7:x".into()).await;
    docs.placements("*".into()).await;
    assert_eq!(docs.loads(), 3);
    docs.changed("7".into()).await;
    docs.placements("7:x".into()).await;
    docs.placements("*".into()).await;
    assert_eq!(docs.loads(), 3, "other videos' entries survive");
    docs.placements("7".into()).await;
    assert_eq!(docs.loads(), 4, "video 7's entry was removed");
    docs.changed("*".into()).await;
    docs.placements("7".into()).await;
    assert_eq!(docs.loads(), 4, "a `*` id is text, not a wildcard");
}

async fn a_prefix_eviction_removes_the_entry_of_a_function_without_key_parameters(
    backend: &Backend,
) {
    let cache = backend.cache();
    let docs = Docs::new(cache);
    docs.all_products().await;
    docs.all_products().await;
    assert_eq!(docs.loads(), 1);
    docs.products_changed().await;
    docs.all_products().await;
    assert_eq!(docs.loads(), 2, "the prefix's own key was evicted");
}

async fn duration_max_means_never_expires_and_never_panics(backend: &Backend) {
    let cache = backend.cache();
    cache.set("forever", &7u32, Duration::MAX).await;
    assert_eq!(cache.get::<u32>("forever").await, Some(7));
    let loaded: Result<u32, ()> = cache
        .get_or_load("forever-loaded", Duration::MAX, || async { Ok(8) })
        .await;
    assert_eq!(loaded, Ok(8));
    assert_eq!(cache.get::<u32>("forever-loaded").await, Some(8));
}

async fn a_caller_waits_on_a_load_in_its_own_process_no_longer_than_wait(backend: &Backend) {
    let cache = backend.cache();
    let docs = Arc::new(Docs::new(cache));
    let first = tokio::spawn({
        let docs = Arc::clone(&docs);
        async move { docs.slow_first(1).await }
    });
    // Let the first caller lead the load.
    while docs.loads() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = std::time::Instant::now();
    assert_eq!(docs.slow_first(1).await, 1);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "waited {waited:?} on another caller's 3 s load; `wait` is 100 ms"
    );
    assert_eq!(docs.loads(), 2, "after its wait it loaded for itself");
    assert_eq!(
        docs.cache.stats_for("slow").map(|s| s.wait_timeouts),
        Some(1),
        "the wait that ran out is counted"
    );
    assert_eq!(first.await.expect("the leader finishes"), 1);
}

/// `wait` bounds a caller's whole wait, not each load it waits on: a load
/// displaced before it lands (by a forced refresh here, of a call site
/// that waits long for the lease; by a write or an eviction as well) sends
/// its waiters to the next one, and with a displacement every 50 ms, before
/// any 250 ms load could land, a caller that started its wait afresh each
/// time waited as long as they went on.
async fn a_caller_waits_no_longer_than_wait_however_often_its_load_is_displaced(backend: &Backend) {
    let docs = Arc::new(Docs::new(backend.cache()));
    let first = tokio::spawn({
        let docs = Arc::clone(&docs);
        async move { docs.displaced(1).await }
    });
    while docs.loads() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waiter = tokio::spawn({
        let docs = Arc::clone(&docs);
        async move {
            let started = std::time::Instant::now();
            let got = docs.displaced(1).await;
            (got, started.elapsed())
        }
    });
    let displacing = std::time::Instant::now();
    let mut refreshes = Vec::new();
    while displacing.elapsed() < Duration::from_millis(2000) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let docs = Arc::clone(&docs);
        refreshes.push(tokio::spawn(async move {
            let refresh = docs.displaced_patiently(1);
            cached_runtime::with_mode(cached_runtime::CallMode::Refresh, refresh).await
        }));
    }
    let (got, waited) = waiter.await.expect("the waiter finishes");
    for refresh in refreshes {
        refresh.abort();
    }
    assert_eq!(got, 1);
    // `wait` (300 ms), then a load of its own (250 ms), and slack.
    assert!(
        waited < Duration::from_millis(850),
        "waited {waited:?} with `wait` 300 ms and loads of 250 ms"
    );
    assert_eq!(first.await.expect("the first load finishes"), 1);
}

/// A caller's `wait` is its own, whoever joined the load before it: a
/// caller with a short `wait` that joins a load others wait on longer (a
/// call site of the same key with a longer `wait`) stops waiting at its
/// own bound, and a caller with a long `wait` is not cut short by theirs.
async fn a_caller_joining_a_load_others_wait_on_longer_waits_only_its_own_wait(backend: &Backend) {
    let cache = backend.cache();
    let docs = Arc::new(Docs::new(cache));
    let spawn_patient = |docs: &Arc<Docs>| {
        let docs = Arc::clone(docs);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (docs.patient(1).await, started.elapsed())
        })
    };
    let leader = spawn_patient(&docs);
    while docs.loads() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A caller that waits up to 5 s joins the load first.
    let patient = spawn_patient(&docs);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = std::time::Instant::now();
    assert_eq!(docs.hurried(1).await, 1);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "waited {waited:?} on another caller's 3 s load; its `wait` is 100 ms (the caller who \
         joined before it waits up to 5 s)"
    );
    assert_eq!(docs.loads(), 2, "after its wait it loaded for itself");

    // The patient caller was not sent away by the hurried one's bound: it
    // got the leader's value without a load of its own.
    let (value, _) = patient.await.expect("the patient caller finishes");
    assert_eq!(value, 1);
    assert_eq!(
        docs.loads(),
        2,
        "the caller waiting 5 s for a 3 s load loaded nothing itself"
    );
    assert_eq!(leader.await.expect("the leader finishes").0, 1);
}

/// A service whose writers write through while they hold the row (the
/// README's pattern): the cache holds the new version before the source
/// commits it.
#[derive(Clone)]
struct Articles {
    cache: Cache,
    committed: Source,
}

impl Articles {
    #[cached(prefix = "article", ttl = "300ms", stale = "1h", key = id)]
    async fn version(&self, id: u32) -> u64 {
        let _ = id;
        self.committed.version()
    }

    #[cache_put(prefix = "article", ttl = "300ms", stale = "1h", key = id)]
    async fn publish(&self, id: u32, version: u64) -> u64 {
        let _ = id;
        version
    }
}

async fn a_background_refresh_never_replaces_a_newer_write_through(backend: &Backend) {
    let cache = backend.cache();
    let a = Articles {
        cache,
        committed: Source::new(),
    };
    assert_eq!(a.version(1).await, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A stale hit, read on a runtime of its own that is then left idle:
    // its background refresh is spawned but not yet run.
    let side = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reader = a.clone();
    let (side, stale) = tokio::task::spawn_blocking(move || {
        let got = side.block_on(reader.version(1));
        (side, got)
    })
    .await
    .expect("the stale read");
    assert_eq!(stale, 1, "served stale");
    // The writer writes version 2 through, still holding the row: the
    // source says 1 until it commits.
    assert_eq!(a.publish(1, 2).await, 2);
    // Now the refresh runs: it reads the source (still 1).
    tokio::task::spawn_blocking(move || {
        side.block_on(tokio::time::sleep(Duration::from_millis(150)));
    })
    .await
    .expect("the refresh ran");
    a.committed.set_version(2);
    assert_eq!(
        a.version(1).await,
        2,
        "the refresh stored what it read before the write-through"
    );
}

/// Lists whose loads read the source, then take a while (a slow query).
struct Lists {
    cache: Cache,
    committed: Source,
}

impl Lists {
    #[cached(prefix = "video", ttl = "5m", key = "{id}:placements")]
    async fn placements(&self, id: u32) -> u64 {
        let _ = id;
        let read = self.committed.version();
        tokio::time::sleep(Duration::from_millis(200)).await;
        read
    }

    /// Commits a change to every video's list, then evicts them all.
    #[cache_evict(patterns = ["video:*:placements"])]
    async fn change_all(&self) {
        self.committed.bump_version();
    }
}

async fn a_pattern_eviction_stops_a_load_in_flight_from_storing_what_it_read_before(
    backend: &Backend,
) {
    let cache = backend.cache();
    let lists = Arc::new(Lists {
        cache,
        committed: Source::new(),
    });
    let reader = tokio::spawn({
        let lists = Arc::clone(&lists);
        async move { lists.placements(7).await }
    });
    // The load has read version 1 and holds its lease.
    tokio::time::sleep(Duration::from_millis(50)).await;
    lists.change_all().await;
    assert_eq!(
        reader.await.expect("the reader"),
        1,
        "it read before the change"
    );
    assert_eq!(
        lists.placements(7).await,
        2,
        "the load that read before the eviction stored its old list"
    );
}

async fn one_failure_costs_the_source_one_run_and_every_waiter_gets_the_error(backend: &Backend) {
    let cache = backend.cache();
    let docs = Arc::new(Docs::new(cache));
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let docs = Arc::clone(&docs);
            tokio::spawn(async move { docs.flaky(1).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("a caller"), Err(SourceDown));
    }
    assert!(
        docs.loads() <= 2,
        "100 callers of a failing source ran it {} times",
        docs.loads()
    );
}

struct Tagged {
    cache: Cache,
}

impl Tagged {
    #[cached(prefix = "short", ttl = "1s", key = id, tags = ["all"])]
    async fn short(&self, id: u32) -> u32 {
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_set_in_redis_does_not_grow_with_keys_that_expired() {
    let server = RedisServer::start();
    let t = Tagged {
        cache: redis_cache_with(&server, |b| b.ttl_jitter(0.0)),
    };
    for id in 0..2_000 {
        t.short(id).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for id in 2_000..4_000 {
        t.short(id).await;
    }
    let members: i64 = server.cmd(&["SCARD", "t:~tag:all"]);
    assert!(
        members < 3_000,
        "{members} members for 2,000 live entries: the expired ones were never dropped"
    );
    // Every live entry is still recorded.
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connects");
    for id in 2_000..4_000 {
        let key = format!("t:short:{id}");
        let live: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut conn)
            .expect("EXISTS");
        let recorded: bool = redis::cmd("SISMEMBER")
            .arg("t:~tag:all")
            .arg(&key)
            .query(&mut conn)
            .expect("SISMEMBER");
        assert!(
            !live || recorded,
            "{key} is live but was dropped from its tag"
        );
    }
}

/// One source, read through a service per process (here, per `Cache`).
struct Slow {
    cache: Cache,
    source: Source,
}

impl Slow {
    /// A server, the source, this process's service on it, and another
    /// process's cache.
    fn two_processes() -> (RedisServer, Source, Arc<Slow>, Cache) {
        let server = RedisServer::start();
        let source = Source::new();
        let here = Arc::new(Slow {
            cache: redis_cache(&server),
            source: source.clone(),
        });
        let elsewhere = redis_cache(&server);
        (server, source, here, elsewhere)
    }

    /// Another process commits version 2 of the row and invalidates it.
    async fn changed_elsewhere(source: &Source, elsewhere: &Cache) {
        source.set_version(2);
        elsewhere
            .invalidate("slow_row:1")
            .await
            .expect("invalidates");
    }

    /// Reads the source, then takes 200 ms.
    #[cached(prefix = "slow_row", ttl = "5m", key = id)]
    async fn row(&self, id: u32) -> u64 {
        let _ = id;
        let read = self.source.version();
        tokio::time::sleep(Duration::from_millis(200)).await;
        read
    }

    /// As [`Slow::row`], waiting at most 100 ms for another's lease; the
    /// load is counted once it has read the source.
    #[cached(
        prefix = "slow_row",
        ttl = "5m",
        key = id,
        wait = "100ms",
        name = "slow_row_impatient"
    )]
    async fn row_impatient(&self, id: u32) -> u64 {
        let _ = id;
        let read = self.source.version();
        self.source.count_load();
        tokio::time::sleep(Duration::from_millis(300)).await;
        read
    }
}

/// As below, when the load here holds no lease: another process's load
/// holds the key's lease past this caller's `wait`, so this process loads
/// without one, and nothing tells it of an invalidation meanwhile (no lease
/// of its own to lose). A call that begins after another process's
/// invalidation returned must not share that load: it reads afresh, and
/// the invalidation removed the other process's lease, so it loads the
/// new row. Those who joined before the load began share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_joins_a_load_without_a_lease_after_another_process_invalidated_gets_no_older_value()
 {
    let (server, source, here, elsewhere) = Slow::two_processes();
    let lease = format!("{}:slow_row:1:~lease", cached_tests::NAMESPACE);
    let _: () = server.cmd(&["SET", &lease, "1", "PX", "5000"]);
    let spawn = || {
        let here = Arc::clone(&here);
        tokio::spawn(async move { here.row_impatient(1).await })
    };
    let leader = spawn();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Joins before the load begins, from a call site that waits longer.
    let early = tokio::spawn({
        let here = Arc::clone(&here);
        async move { here.row(1).await }
    });
    let began = std::time::Instant::now();
    while source.loads() == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "the load never began"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Slow::changed_elsewhere(&source, &elsewhere).await;
    // (From the call site that waits longer: one that waits 100 ms stops
    // waiting for the load before it lands, and loads for itself.)
    assert_eq!(
        here.row(1).await,
        2,
        "joined a load that predates the invalidation"
    );
    assert_eq!(leader.await.expect("the leader"), 1, "began before it");
    assert_eq!(early.await.expect("joins"), 1, "joined before the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_joins_after_another_process_invalidated_gets_no_older_value() {
    let (_server, source, here, elsewhere) = Slow::two_processes();
    let leader = tokio::spawn({
        let here = Arc::clone(&here);
        async move { here.row(1).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    Slow::changed_elsewhere(&source, &elsewhere).await;
    // A call that begins after that must not get what the load in flight
    // read before it.
    assert_eq!(
        here.row(1).await,
        2,
        "joined a load that predates the invalidation"
    );
    assert_eq!(
        leader.await.expect("the leader"),
        1,
        "the leader began before it"
    );
}

async fn a_cache_switched_off_runs_every_call_and_stores_nothing(backend: &Backend) {
    let cache = backend.cache_with(|b| b.enabled(false));
    assert!(!cache.is_enabled());
    let docs = Docs::new(cache.clone());
    docs.video("1".into()).await;
    docs.video("1".into()).await;
    assert_eq!(docs.loads(), 2, "every call runs its function");
    cache
        .set("video:1", &"x".to_owned(), Duration::from_secs(60))
        .await;
    assert_eq!(cache.get::<String>("video:1").await, None);
    assert_eq!(cache.invalidate_pattern("*").await.expect("a no-op"), 0);
    if let Some(server) = backend.server() {
        let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
        assert!(keys.is_empty(), "nothing reached Redis: {keys:?}");
    }
}

/// One process's view of a key another process loads slowly.
#[derive(Clone)]
struct Leased {
    cache: Cache,
    slow: bool,
    loads: Arc<std::sync::atomic::AtomicU32>,
}

impl Leased {
    #[cached(prefix = "leased", ttl = "5m", key = id, wait = "600ms")]
    async fn get(&self, id: u32) -> u32 {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.slow {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        id
    }
}

/// `wait` bounds a caller's wait for loads here and for another process's
/// lease together: a caller that waited 450 ms on a load in its own
/// process, displaced then (a pattern invalidation detaches every flight),
/// leads and finds the key's lease held by another process's 3 s load; it
/// waits for that lease only the 150 ms left of its `wait` (600 ms), not
/// another 600 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_load_here_and_then_for_a_lease_is_one_wait() {
    let server = RedisServer::start();
    let holder = Leased {
        cache: redis_cache(&server),
        slow: true,
        loads: Arc::default(),
    };
    let here = Leased {
        cache: redis_cache(&server),
        slow: false,
        loads: Arc::default(),
    };
    let held = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get(1).await }
    });
    while holder.loads.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The first caller here waits for the other process's lease.
    let first = tokio::spawn({
        let here = here.clone();
        async move { here.get(1).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiter = tokio::spawn({
        let here = here.clone();
        async move {
            let started = std::time::Instant::now();
            (here.get(1).await, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(450)).await;
    here.cache
        .invalidate_pattern("other:*")
        .await
        .expect("invalidates");
    let (got, waited) = waiter.await.expect("the waiter finishes");
    assert_eq!(got, 1);
    assert!(
        waited < Duration::from_millis(850),
        "waited {waited:?} in all, `wait` 600 ms"
    );
    assert_eq!(first.await.expect("the first caller finishes"), 1);
    held.abort();
}
