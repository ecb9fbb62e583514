//! `#[cached(batch)]` on both backends: one read for every id, one call of
//! the function with the missing ids only, entries shared with the
//! single-key function of the same prefix, single flight and leases per id
//! (overlapping batches load each id once, in one process or two), absent
//! ids and `cache_none`, invalidations and write-throughs during a batch's
//! load, failures, cancellation, and hostile ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use cached_tests::{Backend, on_both_backends, unreachable_redis_builder};
use serde::{Deserialize, Serialize};

on_both_backends!(
    a_batch_loads_only_the_missing_ids_in_one_call,
    entries_are_shared_with_the_single_key_function_both_ways,
    absent_ids_are_left_out_and_cached_only_with_cache_none,
    each_id_is_asked_once_however_often_it_is_given,
    overlapping_concurrent_batches_load_each_id_once,
    an_eviction_during_a_batch_load_is_not_overwritten,
    a_write_through_during_a_batch_load_wins,
    a_failing_function_returns_its_error_and_stores_nothing,
    a_dropped_batch_leaves_no_key_waiting,
    hostile_ids_get_keys_of_their_own,
    an_empty_batch_calls_nothing,
    a_slice_of_ids_and_a_btree_map_work_alike,
    a_batch_waits_for_a_single_load_in_flight_and_counts_it_once,
    an_entry_inside_its_stale_window_is_a_hit_counted_as_stale,
    a_caller_waiting_on_a_batch_whose_key_was_evicted_reads_again,
    a_tag_invalidation_outdates_a_refreshing_batch_of_an_entry_it_reached,
    a_refreshing_batch_over_a_tagged_entry_stores_what_both_functions_hit,
    a_tag_invalidation_during_a_tagged_batch_load_of_an_empty_key_is_not_overwritten,
    a_tag_of_one_row_reaches_only_that_row_of_a_tagged_batch,
    a_tagged_batch_is_served_only_entries_its_tags_reach,
    a_tagged_batch_and_a_single_call_with_its_tags_share_entries,
    a_release_of_a_lease_an_eviction_removed_counts_no_lost_lease,
    hostile_ids_get_tags_of_their_own,
    ids_folded_into_one_key_are_each_answered,
);

cached_tests::on_cluster!(
    a_batch_loads_only_the_missing_ids_in_one_call,
    overlapping_concurrent_batches_load_each_id_once,
    an_eviction_during_a_batch_load_is_not_overwritten,
    a_write_through_during_a_batch_load_wins,
    a_dropped_batch_leaves_no_key_waiting,
    a_tag_invalidation_outdates_a_refreshing_batch_of_an_entry_it_reached,
    a_caller_joining_a_refreshing_batch_after_another_process_invalidated_its_tag_gets_the_new_row,
    a_refresh_whose_record_of_the_tags_it_took_over_is_lost_stores_nothing_served,
    a_refresh_whose_take_over_is_lost_stores_nothing_served,
    a_refreshing_batch_over_a_tagged_entry_stores_what_both_functions_hit,
    a_tag_invalidation_during_a_tagged_batch_load_of_an_empty_key_is_not_overwritten,
    a_tag_of_one_row_reaches_only_that_row_of_a_tagged_batch,
    a_tagged_batch_is_served_only_entries_its_tags_reach,
    a_tagged_batch_and_a_single_call_with_its_tags_share_entries,
    a_release_of_a_lease_an_eviction_removed_counts_no_lost_lease,
    hostile_ids_get_tags_of_their_own,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct DbError;

/// A table of items and the service in front of it, recording every call
/// of a function body.
#[derive(Clone)]
struct Catalog {
    cache: Cache,
    rows: Arc<Mutex<HashMap<u64, Item>>>,
    /// The ids each batch body was called with, sorted.
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
    /// The ids the single-key body was called with.
    singles: Arc<Mutex<Vec<u64>>>,
    delay: Arc<Mutex<Duration>>,
    failing: Arc<AtomicBool>,
}

impl Catalog {
    /// Items 1..=`n`, at version 1.
    fn new(cache: Cache, n: u64) -> Catalog {
        Catalog {
            cache,
            rows: Arc::new(Mutex::new(
                (1..=n).map(|id| (id, Item { id, version: 1 })).collect(),
            )),
            batches: Arc::default(),
            singles: Arc::default(),
            delay: Arc::default(),
            failing: Arc::default(),
        }
    }

    /// The same table and records, another cache (another process's).
    fn with_cache(&self, cache: Cache) -> Catalog {
        Catalog {
            cache,
            ..self.clone()
        }
    }

    /// Starts a forced refresh of id 1 by the batch (whose body takes
    /// `delay`) and returns once its body has read the row.
    async fn refresh_of_one_begun(
        &self,
        delay: Duration,
    ) -> tokio::task::JoinHandle<Result<HashMap<u64, Item>, DbError>> {
        self.slow(delay);
        let batches = self.batches().len();
        let refreshing = tokio::spawn({
            let c = self.clone();
            cached_runtime::with_mode(cached_runtime::CallMode::Refresh, async move {
                c.get_many(vec![1]).await
            })
        });
        let began = Instant::now();
        while self.batches().len() == batches {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "the refresh never loaded"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        refreshing
    }

    fn slow(&self, delay: Duration) {
        *self.delay.lock().expect("delay") = delay;
    }

    fn set_version(&self, id: u64, version: u64) {
        self.rows
            .lock()
            .expect("rows")
            .insert(id, Item { id, version });
    }

    fn batches(&self) -> Vec<Vec<u64>> {
        self.batches.lock().expect("batches").clone()
    }

    /// How many times each id was loaded, by batches and single calls.
    fn loads_per_id(&self) -> BTreeMap<u64, usize> {
        let mut per = BTreeMap::new();
        for id in self.batches().into_iter().flatten() {
            *per.entry(id).or_default() += 1;
        }
        for id in self.singles.lock().expect("singles").iter() {
            *per.entry(*id).or_default() += 1;
        }
        per
    }

    /// Reads the rows, then waits out the delay: what it returns is what
    /// the table held when the load began (or, `failing`, an error).
    async fn read_rows(
        &self,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<HashMap<u64, Item>, DbError> {
        let mut asked: Vec<u64> = ids.into_iter().collect();
        asked.sort_unstable();
        self.batches.lock().expect("batches").push(asked.clone());
        let found: HashMap<u64, Item> = {
            let rows = self.rows.lock().expect("rows");
            asked
                .iter()
                .filter_map(|id| rows.get(id).map(|item| (*id, item.clone())))
                .collect()
        };
        let delay = *self.delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        if self.failing.load(SeqCst) {
            return Err(DbError);
        }
        Ok(found)
    }

    /// The batch, tagged per id or not.
    async fn many(&self, tagged: bool, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        if tagged {
            self.get_many_tagged(ids).await
        } else {
            self.get_many(ids).await
        }
    }

    /// The single-key function with the same tags as [`Catalog::many`].
    async fn one(&self, tagged: bool, id: u64) -> Result<Option<Item>, DbError> {
        if tagged {
            self.get_row_tagged(id).await
        } else {
            self.get(id).await
        }
    }

    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.singles.lock().expect("singles").push(id);
        Ok(self.rows.lock().expect("rows").get(&id).cloned())
    }

    /// The same entries, under a tag.
    #[cached(prefix = "item", ttl = "5m", key = id, tags = ["items"], name = "item_tagged")]
    async fn get_tagged(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.singles.lock().expect("singles").push(id);
        Ok(self.rows.lock().expect("rows").get(&id).cloned())
    }

    /// The same entries, written with a stale window.
    #[cached(prefix = "item", ttl = "100ms", key = id, stale = "1m", name = "item_stale")]
    async fn get_stale(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.singles.lock().expect("singles").push(id);
        Ok(self.rows.lock().expect("rows").get(&id).cloned())
    }

    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn get_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        self.read_rows(ids).await
    }

    /// The same entries, waiting at most 100 ms for another's lease.
    #[cached(
        prefix = "item",
        ttl = "5m",
        batch,
        wait = "100ms",
        name = "item_many_impatient"
    )]
    async fn get_many_impatient(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        self.read_rows(ids).await
    }

    /// The same entries, each under `items` and a tag of its own row
    /// (`{ids}` stands for one id, as in a key).
    #[cached(
        prefix = "item",
        ttl = "5m",
        batch,
        tags = ["items", "row:{ids}"],
        name = "item_many_tagged"
    )]
    async fn get_many_tagged(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        self.read_rows(ids).await
    }

    /// One row, under the tags the tagged batch gives it.
    #[cached(
        prefix = "item",
        ttl = "5m",
        key = id,
        tags = ["items", "row:{id}"],
        name = "item_row_tagged"
    )]
    async fn get_row_tagged(&self, id: u64) -> Result<Option<Item>, DbError> {
        self.singles.lock().expect("singles").push(id);
        Ok(self.rows.lock().expect("rows").get(&id).cloned())
    }

    #[cached(
        prefix = "item",
        ttl = "5m",
        cache_none = "1m",
        batch,
        name = "item_none"
    )]
    async fn get_many_none(&self, ids: HashSet<u64>) -> Result<HashMap<u64, Item>, DbError> {
        self.read_rows(ids).await
    }

    #[cached(prefix = "item", ttl = "5m", batch = ids, name = "item_slice")]
    async fn get_slice(&self, ids: &[u64]) -> Result<BTreeMap<u64, Item>, DbError> {
        Ok(self
            .read_rows(ids.iter().copied())
            .await?
            .into_iter()
            .collect())
    }

    #[cache_put(prefix = "item", ttl = "5m", key = id)]
    async fn update(&self, id: u64, version: u64) -> Result<Item, DbError> {
        self.set_version(id, version);
        Ok(Item { id, version })
    }

    #[cache_evict(keys = ["item:{id}"])]
    async fn changed(&self, id: u64) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }
}

/// A cache for tests that count calls of a body: its operation timeout
/// leaves room for a busy machine, where a tagged batch's first calls on a
/// cluster (each id's tag versions, its lease, the scripts loaded on every
/// node) can outlast the default and load without storing.
fn counting_cache(backend: &Backend) -> Cache {
    backend.cache_with(|b| b.op_timeout(Duration::from_millis(500)))
}

fn items(ids: impl IntoIterator<Item = u64>, version: u64) -> HashMap<u64, Item> {
    ids.into_iter()
        .map(|id| (id, Item { id, version }))
        .collect()
}

async fn a_batch_loads_only_the_missing_ids_in_one_call(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 20);
    for id in 1..=5 {
        c.get(id).await.expect("loads");
    }
    let got = c.get_many((1..=10).collect()).await.expect("loads");
    assert_eq!(got, items(1..=10, 1));
    assert_eq!(
        c.batches(),
        vec![vec![6, 7, 8, 9, 10]],
        "one call, the missing ids only"
    );
    let stats = c.cache.stats_for("item").expect("stats");
    assert_eq!(
        (stats.hits, stats.misses),
        (5, 10),
        "5 single misses, then 5 hits and 5 misses"
    );
    assert_eq!(stats.loads, 6, "five single loads and one batch");
    // Warm now: no call at all.
    assert_eq!(
        c.get_many((1..=10).collect()).await.expect("hits"),
        items(1..=10, 1)
    );
    assert_eq!(c.batches().len(), 1, "every id was a hit");
}

async fn entries_are_shared_with_the_single_key_function_both_ways(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 20);
    // A batch's entries are the single-key function's hits ...
    c.get_many(vec![1, 2, 3]).await.expect("loads");
    for id in 1..=3 {
        assert_eq!(
            c.get(id).await.expect("hits"),
            Some(Item { id, version: 1 })
        );
    }
    assert!(
        c.singles.lock().expect("singles").is_empty(),
        "no single load"
    );
    // ... and the reverse, including a write-through's value.
    c.get(4).await.expect("loads");
    c.update(5, 7).await.expect("writes");
    let got = c.get_many(vec![3, 4, 5, 6]).await.expect("loads");
    assert_eq!(
        got.get(&5),
        Some(&Item { id: 5, version: 7 }),
        "the write-through's value"
    );
    assert_eq!(c.batches().last(), Some(&vec![6]), "only 6 was missing");
    // Stored under exactly the single-key function's key.
    assert_eq!(
        c.cache.get::<Item>("item:6").await,
        Some(Item { id: 6, version: 1 })
    );
}

async fn absent_ids_are_left_out_and_cached_only_with_cache_none(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 3);
    let got = c.get_many(vec![1, 2, 99]).await.expect("loads");
    assert_eq!(got, items([1, 2], 1), "99 is absent");
    c.get_many(vec![1, 2, 99]).await.expect("loads");
    assert_eq!(
        c.batches(),
        vec![vec![1, 2, 99], vec![99]],
        "an absence is not kept without cache_none"
    );

    let got = c
        .get_many_none([3, 98].into_iter().collect())
        .await
        .expect("loads");
    assert_eq!(got, items([3], 1));
    let got = c
        .get_many_none([3, 98].into_iter().collect())
        .await
        .expect("hits");
    assert_eq!(got, items([3], 1));
    assert_eq!(c.batches().len(), 3, "with cache_none the absence is a hit");
    // The single-key function reads the absence too.
    assert_eq!(c.get(98).await.expect("hits"), None);
    assert!(
        c.singles.lock().expect("singles").is_empty(),
        "no single load"
    );
}

async fn each_id_is_asked_once_however_often_it_is_given(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 9);
    let got = c.get_many(vec![4, 4, 5, 4, 5]).await.expect("loads");
    assert_eq!(got, items([4, 5], 1));
    assert_eq!(c.batches(), vec![vec![4, 5]]);
}

/// Two batches that overlap, and single calls inside the overlap, all at
/// once: each id is loaded once, and every caller gets every value.
async fn overlapping_concurrent_batches_load_each_id_once(backend: &Backend) {
    for tagged in [false, true] {
        let c = Catalog::new(counting_cache(backend), 30);
        c.slow(Duration::from_millis(150));
        // On Redis, the second batch runs on a cache of its own: another
        // process, which only the leases keep from loading the overlap again.
        let other = match backend.server() {
            Some(_) => c.with_cache(counting_cache(backend)),
            None => c.clone(),
        };
        for round in 0..3u64 {
            let base = round * 6;
            let first: Vec<u64> = (base + 1..=base + 6).collect();
            let second: Vec<u64> = (base + 4..=base + 9).collect();
            let (a, b, single) = tokio::join!(
                c.many(tagged, first.clone()),
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    other.many(tagged, second.clone()).await
                },
                async {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    c.one(tagged, base + 5).await
                },
            );
            assert_eq!(a.expect("first"), items(first, 1));
            assert_eq!(b.expect("second"), items(second, 1));
            assert_eq!(
                single.expect("single"),
                Some(Item {
                    id: base + 5,
                    version: 1
                })
            );
        }
        let per = c.loads_per_id();
        assert!(
            per.values().all(|n| *n == 1),
            "tagged {tagged}: every id loaded once: {per:?} (batches {:?})",
            c.batches()
        );
        assert_eq!(per.len(), 3 * 6 + 3);
    }
}

/// The stale-set race for a batch: its load reads version 1 of item 2, the
/// row changes to 2 and the key is evicted meanwhile; the batch must not
/// store version 1 afterwards.
async fn an_eviction_during_a_batch_load_is_not_overwritten(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    c.slow(Duration::from_millis(200));
    let loading = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![1, 2, 3]).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    c.set_version(2, 2);
    c.changed(2).await.expect("evicts");
    let got = loading.await.expect("joins").expect("loads");
    assert_eq!(
        got.get(&2).map(|i| i.version),
        Some(1),
        "read before the change"
    );
    assert_eq!(
        c.cache.get::<Item>("item:2").await,
        None,
        "the old row was not stored"
    );
    c.slow(Duration::ZERO);
    assert_eq!(c.get(2).await.expect("loads").map(|i| i.version), Some(2));
    // The other ids of the batch were stored.
    assert_eq!(
        c.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(1)
    );
    assert_eq!(
        c.cache.get::<Item>("item:3").await.map(|i| i.version),
        Some(1)
    );
}

/// A batch stores its entries under no tag of its own, but it shares them
/// with a tagged function. A forced refresh by the batch starts while the
/// entry is under `items`; the row changes and `items` is invalidated
/// before the refresh ends. That invalidation reached the key, so no read
/// that begins after it may be served what the refresh read before it.
async fn a_tag_invalidation_outdates_a_refreshing_batch_of_an_entry_it_reached(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 3);
    assert_eq!(
        c.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(1)
    );
    let refreshing = c.refresh_of_one_begun(Duration::from_millis(200)).await;
    c.set_version(1, 2);
    c.cache.invalidate_tag("items").await.expect("invalidates");
    let got = refreshing.await.expect("joins").expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(1), "read before");
    c.slow(Duration::ZERO);
    assert_ne!(
        c.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(1),
        "an untagged read after the invalidation was served the row it replaced"
    );
    let got = c.get_many(vec![1]).await.expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(2), "the batch");
    assert_eq!(
        c.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(2),
        "the tagged function"
    );
}

/// A tagged batch loads ids that hold no entry; while its body runs, one
/// row changes and its tag (first the row's own, then one all rows share,
/// in a second round) is invalidated. No read that begins after the
/// invalidation returned may be served what the load read before it:
/// neither the batch's own next call, nor an untagged read of the key.
async fn a_tag_invalidation_during_a_tagged_batch_load_of_an_empty_key_is_not_overwritten(
    backend: &Backend,
) {
    let c = Catalog::new(backend.cache(), 5);
    for (round, (id, tag)) in [(2, "row:2"), (4, "items")].into_iter().enumerate() {
        let version = round as u64 + 2;
        c.slow(Duration::from_millis(200));
        let batches = c.batches().len();
        let loading = tokio::spawn({
            let c = c.clone();
            async move { c.get_many_tagged(vec![id, id + 1]).await }
        });
        let began = Instant::now();
        while c.batches().len() == batches {
            assert!(began.elapsed() < Duration::from_secs(5), "never loaded");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        c.set_version(id, version);
        c.cache.invalidate_tag(tag).await.expect("invalidates");
        let got = loading.await.expect("joins").expect("loads");
        assert_eq!(
            got.get(&id).map(|i| i.version),
            Some(1),
            "{tag}: read before"
        );
        c.slow(Duration::ZERO);
        assert_ne!(
            c.cache.get::<Item>(&format!("item:{id}")).await,
            Some(Item { id, version: 1 }),
            "{tag}: an untagged read after the invalidation was served the row it replaced"
        );
        let got = c.get_many_tagged(vec![id]).await.expect("loads");
        assert_eq!(
            got.get(&id).map(|i| i.version),
            Some(version),
            "{tag}: the batch after the invalidation"
        );
    }
}

/// Each id's tags are its own: invalidating one row's tag reloads that row
/// only, and the tag all rows share reaches every one.
async fn a_tag_of_one_row_reaches_only_that_row_of_a_tagged_batch(backend: &Backend) {
    let c = Catalog::new(counting_cache(backend), 5);
    assert_eq!(
        c.get_many_tagged(vec![1, 2, 3]).await.expect("loads"),
        items(1..=3, 1)
    );
    c.set_version(2, 2);
    c.cache.invalidate_tag("row:2").await.expect("invalidates");
    // With an id never loaded: one call for both (on a cluster, row 2's
    // outdated entry is still there, and its lease is taken over it).
    let got = c.get_many_tagged(vec![1, 2, 3, 4]).await.expect("loads");
    assert_eq!(got.get(&2), Some(&Item { id: 2, version: 2 }));
    assert_eq!(
        c.batches().last(),
        Some(&vec![2, 4]),
        "only row 2 reloaded, with 4, in one call"
    );
    assert_eq!(c.batches().len(), 2);
    for id in [1, 3] {
        c.set_version(id, 3);
    }
    c.cache.invalidate_tag("items").await.expect("invalidates");
    let got = c.get_many_tagged(vec![1, 2, 3]).await.expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(3));
    assert_eq!(got.get(&3).map(|i| i.version), Some(3));
    assert_eq!(
        c.batches().last(),
        Some(&vec![1, 2, 3]),
        "every row reloaded"
    );
    let stats = c.cache.stats_for("item_many_tagged").expect("stats");
    assert_eq!((stats.hits, stats.misses), (2, 8));
}

/// An entry its tags do not list (stored by an untagged function) is not
/// served to a tagged batch, which loads it and stores it under its tags;
/// an untagged batch is served what the tagged one stored.
async fn a_tagged_batch_is_served_only_entries_its_tags_reach(backend: &Backend) {
    let c = Catalog::new(counting_cache(backend), 5);
    c.get(1).await.expect("loads");
    c.set_version(1, 2);
    let got = c.get_many_tagged(vec![1, 2]).await.expect("loads");
    assert_eq!(
        got,
        HashMap::from([
            (1, Item { id: 1, version: 2 }),
            (2, Item { id: 2, version: 1 })
        ])
    );
    assert_eq!(
        c.batches(),
        vec![vec![1, 2]],
        "the untagged entry was a miss"
    );
    // Now under its tags: a hit for both batches, and reached by them.
    assert_eq!(c.get_many_tagged(vec![1, 2]).await.expect("hits").len(), 2);
    assert_eq!(c.get_many(vec![1, 2]).await.expect("hits").len(), 2);
    assert_eq!(c.batches().len(), 1, "both hits");
    c.cache.invalidate_tag("row:1").await.expect("invalidates");
    c.get_many(vec![1, 2]).await.expect("loads");
    assert_eq!(
        c.batches().last(),
        Some(&vec![1]),
        "row 1's entry is gone for every reader"
    );
}

/// A single-key function with the batch's tags reads what the batch stored
/// and the reverse, with no load.
async fn a_tagged_batch_and_a_single_call_with_its_tags_share_entries(backend: &Backend) {
    let c = Catalog::new(counting_cache(backend), 5);
    c.get_many_tagged(vec![1, 2]).await.expect("loads");
    assert_eq!(
        c.get_row_tagged(1).await.expect("hits").map(|i| i.id),
        Some(1)
    );
    assert_eq!(
        c.get_tagged(2).await.expect("hits").map(|i| i.id),
        Some(2),
        "one of its tags"
    );
    assert!(
        c.singles.lock().expect("singles").is_empty(),
        "no single load"
    );
    c.get_row_tagged(3).await.expect("loads");
    let got = c.get_many_tagged(vec![1, 2, 3]).await.expect("hits");
    assert_eq!(got, items(1..=3, 1));
    assert_eq!(c.batches().len(), 1, "3 was the single call's");
}

/// Two processes' caches (on a cluster, where a tag invalidation leaves
/// leases alone). In the first, a forced refresh by the batch of an entry
/// a tagged function stored reads version 1 of its row; the second changes
/// the row and invalidates the tag. A caller of the first process who
/// starts after that must not be handed what the refresh read, whether it
/// joins the refresh or reads what it stored.
async fn a_caller_joining_a_refreshing_batch_after_another_process_invalidated_its_tag_gets_the_new_row(
    backend: &Backend,
) {
    let here = Catalog::new(backend.cache(), 3);
    let there = here.with_cache(backend.cache());
    assert_eq!(
        here.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(1)
    );
    let refreshing = here.refresh_of_one_begun(Duration::from_millis(300)).await;
    here.set_version(1, 2);
    there
        .cache
        .invalidate_tag("items")
        .await
        .expect("the other process invalidates");
    let joiner = tokio::spawn({
        let here = here.clone();
        async move { here.get(1).await }
    });
    let got = refreshing.await.expect("joins").expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(1), "read before");
    assert_eq!(
        joiner
            .await
            .expect("joins")
            .expect("loads")
            .map(|i| i.version),
        Some(2),
        "a caller who began after the invalidation got the row it replaced"
    );
    assert_eq!(
        there.get(1).await.expect("loads").map(|i| i.version),
        Some(2)
    );
}

/// On a cluster: a batch's forced refresh of id 1 over the entry the
/// tagged function stored under `items`, which its lease takes over; once
/// the refresh has read the row, `tamper` is applied to the lease's record
/// of its tag versions (`~ltags`) on the node that owns it, then the row
/// changes and `items` is invalidated. Returns the catalog, with what the
/// refresh returned (version 1, read before).
async fn refresh_over_a_tagged_entry_with_its_record(
    backend: &Backend,
    tamper: impl FnOnce(&cached_tests::RedisServer, &str),
) -> Catalog {
    let cluster = backend.redis_cluster().expect("on a cluster");
    let c = Catalog::new(backend.cache(), 3);
    assert_eq!(
        c.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(1)
    );
    let refreshing = c.refresh_of_one_begun(Duration::from_millis(200)).await;
    let record = format!("{{{}:item:1}}:~ltags", cached_tests::NAMESPACE);
    tamper(&cluster.nodes()[cluster.owner_of(&record)], &record);
    c.set_version(1, 2);
    c.cache.invalidate_tag("items").await.expect("invalidates");
    let got = refreshing.await.expect("joins").expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(1), "read before");
    c.slow(Duration::ZERO);
    c
}

/// A refresh (as above) takes over `items`: its lease keeps the version
/// beside it (`~ltags`). If that record is lost while the lease holds
/// (Redis evicted it, or a failover lost it), the refresh must not store
/// what it read unreachable by the tag: the invalidation of `items` after
/// it read must still reach it.
async fn a_refresh_whose_record_of_the_tags_it_took_over_is_lost_stores_nothing_served(
    backend: &Backend,
) {
    let c = refresh_over_a_tagged_entry_with_its_record(backend, |owner, record| {
        assert_eq!(owner.cmd::<i64>(&["DEL", record]), 1, "it was there");
    })
    .await;
    assert_ne!(
        c.cache.get::<Item>("item:1").await.map(|i| i.version),
        Some(1),
        "stored unreachable by the tag"
    );
    let got = c.get_many(vec![1]).await.expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(2));
}

/// As above, but what is lost is the take-over alone: the lease's record
/// of its versions is back to what the lease script wrote (a failover to a
/// replica that had the lease but not the `TAKE_OVER` after it). That
/// record ends with a line that does not parse, so what the refresh stores
/// is served to no one, the tag invalidation after its read included; the
/// next read loads, and stores an entry served again.
async fn a_refresh_whose_take_over_is_lost_stores_nothing_served(backend: &Backend) {
    let c = refresh_over_a_tagged_entry_with_its_record(backend, |owner, record| {
        let taken_over: String = owner.cmd(&["GET", record]);
        assert!(taken_over.contains("items"), "taken over: {taken_over:?}");
        // The batch names no tag: the lease script kept only the line.
        assert_eq!(
            owner.cmd::<String>(&["SET", record, "~\n", "KEEPTTL"]),
            "OK"
        );
    })
    .await;
    assert_eq!(
        c.cache.get::<Item>("item:1").await,
        None,
        "stored with a take-over never done: served to no one"
    );
    let batches = c.batches().len();
    let got = c.get_many(vec![1]).await.expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(2));
    assert_eq!(c.batches().len(), batches + 1, "loaded");
    assert_eq!(
        c.get_tagged(1).await.expect("hits").map(|i| i.version),
        Some(2)
    );
    assert_eq!(
        c.get_many(vec![1])
            .await
            .expect("hits")
            .get(&1)
            .map(|i| i.version),
        Some(2)
    );
    assert_eq!(c.batches().len(), batches + 1, "served again");
}

/// What a batch's refresh stores over an entry a tagged function stored is
/// served to both (nothing made it unservable), and the tag it replaced
/// still reaches it.
async fn a_refreshing_batch_over_a_tagged_entry_stores_what_both_functions_hit(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 3);
    assert_eq!(
        c.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(1)
    );
    c.set_version(1, 2);
    let got = cached_runtime::with_mode(cached_runtime::CallMode::Refresh, c.get_many(vec![1]))
        .await
        .expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(2));
    let loads = c.loads_per_id();
    let got = c.get_many(vec![1]).await.expect("hits");
    assert_eq!(got.get(&1).map(|i| i.version), Some(2));
    assert_eq!(
        c.get_tagged(1).await.expect("hits").map(|i| i.version),
        Some(2)
    );
    assert_eq!(c.loads_per_id(), loads, "both hit what the refresh stored");
    c.set_version(1, 3);
    c.cache.invalidate_tag("items").await.expect("invalidates");
    assert_eq!(
        c.get_tagged(1).await.expect("loads").map(|i| i.version),
        Some(3),
        "the tag still reaches the entry"
    );
}

async fn a_write_through_during_a_batch_load_wins(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    c.slow(Duration::from_millis(200));
    let loading = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![1, 2, 3]).await }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    c.update(3, 9).await.expect("writes");
    loading.await.expect("joins").expect("loads");
    assert_eq!(
        c.cache.get::<Item>("item:3").await.map(|i| i.version),
        Some(9),
        "the write-through's value stays"
    );
    let got = c.get_many(vec![1, 2, 3]).await.expect("hits");
    assert_eq!(got.get(&3).map(|i| i.version), Some(9));
}

async fn a_failing_function_returns_its_error_and_stores_nothing(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    c.get(1).await.expect("loads");
    c.failing.store(true, SeqCst);
    assert_eq!(c.get_many(vec![1, 2, 3]).await, Err(DbError));
    assert_eq!(c.cache.get::<Item>("item:2").await, None);
    // Its leases were released: the next call loads at once rather than
    // wait for them to expire (the default wait is 5 s).
    c.failing.store(false, SeqCst);
    let started = Instant::now();
    let got = c.get_many(vec![1, 2, 3]).await.expect("loads");
    assert_eq!(got, items(1..=3, 1));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(c.batches(), vec![vec![2, 3], vec![2, 3]]);
}

/// A batch's value that is not kept (an absent id, without `cache_none`)
/// releases its lease. An eviction removed that lease during the load:
/// the release finds it gone, which loses nothing (no write was refused),
/// so it is not counted among `leases_lost`, as a single call's is not.
async fn a_release_of_a_lease_an_eviction_removed_counts_no_lost_lease(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 3);
    c.slow(Duration::from_millis(200));
    let loading = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![99, 1]).await }
    });
    let began = Instant::now();
    while c.batches().is_empty() {
        assert!(began.elapsed() < Duration::from_secs(5), "never loaded");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.changed(99).await.expect("evicts");
    let got = loading.await.expect("joins").expect("loads");
    assert_eq!(got, items([1], 1), "99 is absent");
    let stats = c.cache.stats_for("item").expect("stats");
    assert_eq!(stats.leases_lost, 0, "a release lost nothing");
    assert_eq!(
        c.cache.get::<Item>("item:1").await,
        Some(Item { id: 1, version: 1 }),
        "the other id was stored"
    );
}

/// A warm tagged batch reads each id as a single call with its tags does:
/// with the near tier, from L1 (once the pushes of its own fills settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_tagged_batch_is_served_from_the_near_tier() {
    let backend = Backend::near();
    let c = Catalog::new(backend.cache(), 5);
    c.get_many_tagged(vec![1, 2, 3]).await.expect("loads");
    let l1_hits = || c.cache.near_stats().expect("a near cache").l1_hits;
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let before = l1_hits();
        let got = c.get_many_tagged(vec![1, 2, 3]).await.expect("hits");
        assert_eq!(got, items(1..=3, 1));
        if l1_hits() == before + 3 {
            break;
        }
        assert!(Instant::now() < until, "L1 never served the whole batch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.batches().len(), 1, "loaded once");
}

/// A batch dropped mid-load (a request timeout) leaves neither a flight
/// nor a lease behind: the next caller of its ids loads at once.
async fn a_dropped_batch_leaves_no_key_waiting(backend: &Backend) {
    for tagged in [false, true] {
        let c = Catalog::new(backend.cache(), 5);
        c.slow(Duration::from_secs(30));
        let dropped =
            tokio::time::timeout(Duration::from_millis(100), c.many(tagged, vec![1, 2])).await;
        assert!(dropped.is_err(), "tagged {tagged}: timed out mid-load");
        c.slow(Duration::ZERO);
        // Another process's caller (on Redis, another cache) and this one's.
        let other = match backend.server() {
            Some(_) => c.with_cache(backend.cache()),
            None => c.clone(),
        };
        let started = Instant::now();
        assert_eq!(
            other.many(tagged, vec![1, 2]).await.expect("loads"),
            items([1, 2], 1)
        );
        assert_eq!(
            c.one(tagged, 1).await.expect("hits"),
            Some(Item { id: 1, version: 1 })
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "tagged {tagged}: took {:?}",
            started.elapsed()
        );
    }
}

/// String ids holding the key separator, glob characters and the lease
/// suffix: each id is its own key, and the single-key function agrees.
async fn hostile_ids_get_keys_of_their_own(backend: &Backend) {
    let n = Names::new(backend.cache());
    let hostile = hostile_names();
    let got = n.many(hostile.clone()).await;
    assert_eq!(got.len(), hostile.len());
    for name in &hostile {
        assert_eq!(got.get(name), Some(&format!("<{name}>")), "{name:?}");
    }
    for name in &hostile {
        assert_eq!(n.one(name.clone()).await, format!("<{name}>"), "{name:?}");
    }
    assert_eq!(
        n.calls.lock().expect("calls").len(),
        1,
        "every single call hit"
    );
}

/// The same hostile ids, each tagged with a tag of its own: evicting one
/// id's tag reaches its entry and no other, whatever characters it holds.
async fn hostile_ids_get_tags_of_their_own(backend: &Backend) {
    let n = Names::new(counting_cache(backend));
    let mut hostile = hostile_names();
    hostile.push("a*".to_owned());
    assert_eq!(n.many_tagged(hostile.clone()).await.len(), hostile.len());
    for name in &hostile {
        n.forget(name.clone()).await;
        let got = n.many_tagged(hostile.clone()).await;
        assert_eq!(got.get(name), Some(&format!("<{name}>")), "{name:?}");
        assert_eq!(got.len(), hostile.len());
        assert_eq!(
            n.calls.lock().expect("calls").last(),
            Some(&vec![name.clone()]),
            "the tag of {name:?} reached its entry alone"
        );
    }
    assert_eq!(n.calls.lock().expect("calls").len(), hostile.len() + 1);
}

/// String ids holding the key separator, glob characters, the lease
/// suffix, an escape, and nothing at all.
fn hostile_names() -> Vec<String> {
    ["a:b", "a", "b", "*", "a:~lease", "", "a\\:b", "[ab]"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// A service keyed by names, recording every call of a body (sorted ids).
#[derive(Clone)]
struct Names {
    cache: Cache,
    calls: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Names {
    fn new(cache: Cache) -> Names {
        Names {
            cache,
            calls: Arc::default(),
        }
    }

    /// Each name's value, recording the call.
    fn values(&self, names: Vec<String>) -> HashMap<String, String> {
        let mut asked = names.clone();
        asked.sort();
        self.calls.lock().expect("calls").push(asked);
        names
            .into_iter()
            .map(|n| (n.clone(), format!("<{n}>")))
            .collect()
    }

    #[cached(prefix = "name", ttl = "5m", batch)]
    async fn many(&self, names: Vec<String>) -> HashMap<String, String> {
        self.values(names)
    }

    #[cached(prefix = "name", ttl = "5m", key = name)]
    async fn one(&self, name: String) -> String {
        self.calls.lock().expect("calls").push(vec![name.clone()]);
        format!("<{name}>")
    }

    #[cached(prefix = "tagged_name", ttl = "5m", batch, tags = ["by_name:{names}"])]
    async fn many_tagged(&self, names: Vec<String>) -> HashMap<String, String> {
        self.values(names)
    }

    #[cache_evict(tags = ["by_name:{name}"])]
    async fn forget(&self, name: String) {
        let _ = name;
    }

    /// Names folded to one key whatever their case (e-mail addresses, say).
    #[cached(prefix = "folded", ttl = "5m", key = names.to_lowercase(), batch)]
    async fn many_folded(&self, names: Vec<String>) -> HashMap<String, String> {
        self.values(names)
    }

    #[cached(prefix = "folded", ttl = "5m", key = name.to_lowercase())]
    async fn one_folded(&self, name: String) -> String {
        self.calls.lock().expect("calls").push(vec![name.clone()]);
        format!("<{name}>")
    }
}

/// Ids the key template folds into one key are one entry, and every one of
/// them is in the answer, as each alone gets it from the single-key
/// function: the batch kept only the first of them (found by a review).
async fn ids_folded_into_one_key_are_each_answered(backend: &Backend) {
    let n = Names::new(backend.cache());
    let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = n
        .many_folded(names(&["Bob@x", "bob@x", "Ann", "BOB@X"]))
        .await;
    let mut answered: Vec<&str> = got.keys().map(String::as_str).collect();
    answered.sort_unstable();
    assert_eq!(answered, ["Ann", "BOB@X", "Bob@x", "bob@x"], "{got:?}");
    // One entry, loaded once, for the first spelling given.
    assert_eq!(got["bob@x"], "<Bob@x>");
    assert_eq!(got["BOB@X"], "<Bob@x>");
    assert_eq!(
        *n.calls.lock().expect("calls"),
        vec![names(&["Ann", "Bob@x"])]
    );
    // Shared with the single-key function, either way round.
    assert_eq!(n.one_folded("BoB@x".into()).await, "<Bob@x>");
    let again = n.many_folded(names(&["ann", "bob@X"])).await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(n.calls.lock().expect("calls").len(), 1, "all hits");
}

async fn an_empty_batch_calls_nothing(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    assert!(c.get_many(Vec::new()).await.expect("nothing").is_empty());
    assert!(c.batches().is_empty());
}

async fn a_slice_of_ids_and_a_btree_map_work_alike(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    let got = c.get_slice(&[3, 1, 9]).await.expect("loads");
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(c.get_many(vec![1, 3]).await.expect("hits").len(), 2);
    assert_eq!(c.batches(), vec![vec![1, 3, 9]]);
}

/// Redis unreachable: every id comes from the function, in one call, and
/// the caller sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_every_id_from_the_function() {
    let cache = unreachable_redis_builder().build().expect("builds");
    let c = Catalog::new(cache, 5);
    for _ in 0..2 {
        assert_eq!(
            c.get_many(vec![1, 2, 3]).await.expect("loads"),
            items(1..=3, 1)
        );
    }
    assert_eq!(c.batches(), vec![vec![1, 2, 3], vec![1, 2, 3]]);
}

/// A cache switched off: the function runs with every id, every time.
#[tokio::test]
async fn a_disabled_cache_calls_the_function_with_every_id() {
    let cache = Cache::builder().enabled(false).build().expect("builds");
    let c = Catalog::new(cache, 5);
    c.get_many(vec![1, 2]).await.expect("loads");
    c.get_many(vec![1, 2]).await.expect("loads");
    assert_eq!(c.batches(), vec![vec![1, 2], vec![1, 2]]);
}

/// Foreign values under some of a batch's keys (garbage bytes, a Redis
/// list, a 256 MiB string): each is a miss, loaded and replaced, the huge
/// one read only up to the size limit, and the batch's other ids are hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_in_a_batch_are_misses_read_within_the_limit() {
    // Untagged (one pipeline of bounded reads), then tagged per id (one
    // script reading every id under its tags).
    for (tagged, stats_name) in [(false, "item"), (true, "item_many_tagged")] {
        let backend = Backend::redis();
        let server = backend.server().expect("redis");
        let c = Catalog::new(
            backend.cache_with(|b| {
                b.max_value_bytes(64 << 10)
                    .op_timeout(Duration::from_secs(5))
            }),
            9,
        );
        c.many(tagged, (1..=6).collect()).await.expect("loads");
        let key = |id: u64| format!("{}:item:{id}", cached_tests::NAMESPACE);
        server.set_raw(&key(2), b"\x00not an envelope");
        let _: () = server.cmd(&["DEL", &key(3)]);
        let _: i64 = server.cmd(&["RPUSH", &key(3), "a", "list"]);
        // 256 MiB, made on the server without sending it.
        let _: i64 = server.cmd(&["SETRANGE", &key(4), &((256 << 20) - 1).to_string(), "x"]);
        let sent = || server.bytes_sent();
        let before = sent();
        let got = c.many(tagged, (1..=6).collect()).await.expect("loads");
        assert!(
            sent() - before < 1 << 20,
            "tagged {tagged}: {} bytes sent for one batch",
            sent() - before
        );
        assert_eq!(got, items(1..=6, 1));
        assert_eq!(
            c.batches().last(),
            Some(&vec![2, 3, 4]),
            "tagged {tagged}: the foreign ones, loaded"
        );
        // Replaced: all hits now.
        c.many(tagged, (1..=6).collect()).await.expect("hits");
        assert_eq!(c.batches().len(), 2);
        let stats = c.cache.stats_for(stats_name).expect("stats");
        assert!(
            stats.errors >= 3,
            "tagged {tagged}: each unreadable entry counted: {stats:?}"
        );
        backend.assert_nothing_refused();
    }
}

/// A key without a TTL where a lease belongs (a list written there by hand,
/// or a lease someone PERSISTed) cannot be a lease: every lease expires.
/// It does not hold the key for good: a batch, tagged or not, and a single
/// call take the lease over it, load and store, so the next calls hit.
/// (Before, every call of such a key waited out `wait` for a holder that
/// never stores, then loaded without storing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_ttl_under_a_lease_name_holds_nothing() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(backend.cache(), 9);
    let lease = |id: u64| format!("{}:item:{id}:~lease", cached_tests::NAMESPACE);
    let _: i64 = server.cmd(&["RPUSH", &lease(1), "a", "list"]);
    let () = server.cmd(&["SET", &lease(2), "123"]);
    let _: i64 = server.cmd(&["RPUSH", &lease(3), "a", "list"]);
    let () = server.cmd(&["SET", &lease(4), "456"]);
    let _: i64 = server.cmd(&["RPUSH", &lease(5), "a", "list"]);
    for (tagged, ids) in [(false, vec![1, 2]), (true, vec![3, 4])] {
        let calls = c.batches().len();
        assert_eq!(
            c.many(tagged, ids.clone()).await,
            Ok(items(ids.clone(), 1)),
            "tagged {tagged}"
        );
        assert_eq!(
            c.many(tagged, ids.clone()).await,
            Ok(items(ids, 1)),
            "tagged {tagged}"
        );
        assert_eq!(c.batches().len(), calls + 1, "tagged {tagged}: stored");
    }
    assert_eq!(c.get(5).await, Ok(Some(Item { id: 5, version: 1 })));
    assert_eq!(c.get(5).await, Ok(Some(Item { id: 5, version: 1 })));
    assert_eq!(c.singles.lock().expect("singles").len(), 1, "stored");
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert!(leases.is_empty(), "leases left: {leases:?}");
}

/// Waits until `server` holds no lease, failing after `within`.
async fn until_no_lease(server: &cached_tests::RedisServer, within: Duration, what: &str) {
    let started = Instant::now();
    loop {
        let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
        if leases.is_empty() {
            return;
        }
        assert!(started.elapsed() < within, "{what}leases left: {leases:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A foreign value of another type under one id's tag index (SADD there
/// fails), on one server where the batch's requests go in one pipeline:
/// the index is the cache's own record, and the id's lease replaces it
/// with a set, so every id, that one too, is leased, loaded in the one
/// call and stored, and no lease is left behind. (Until the lease replaced
/// it, that id's lease request failed alone: loaded, never stored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_under_one_ids_tag_index_is_replaced_by_its_lease() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(backend.cache(), 9);
    c.many(true, vec![3]).await.expect("loads");
    let index: Vec<String> = server.cmd(&["KEYS", "*~tag*row:3"]);
    assert_eq!(index.len(), 1, "one index of tag row:3: {index:?}");
    let entry = format!("{}:item:3", cached_tests::NAMESPACE);
    let _: () = server.cmd(&["DEL", &entry, &index[0]]);
    let _: i64 = server.cmd(&["RPUSH", &index[0], "a", "list"]);
    let calls = c.batches().len();
    assert_eq!(c.many(true, vec![1, 2, 3, 4, 5]).await, Ok(items(1..=5, 1)));
    assert_eq!(
        c.batches()[calls..],
        [vec![1, 2, 3, 4, 5]],
        "one call of the body"
    );
    assert_eq!(
        c.many(true, vec![1, 2, 4, 5]).await,
        Ok(items([1, 2, 4, 5], 1))
    );
    assert_eq!(c.batches().len(), calls + 1, "the other ids were stored");
    until_no_lease(server, Duration::from_secs(2), "").await;
    assert_eq!(c.many(true, vec![3]).await, Ok(items([3], 1)));
    assert_eq!(c.batches().len(), calls + 1, "id 3 was stored too");
    assert_eq!(server.cmd::<String>(&["TYPE", &index[0]]), "set");
    backend.assert_nothing_refused();
}

/// As above, with the entry still there: one foreign index beside a
/// stored entry makes that id unreadable, not the whole batch's read (the
/// read is one script for every id), so the other ids are hits and id 3 is
/// loaded alone; its lease replaces the index, so it is stored, and the
/// next call is all hits. (Until the lease replaced it, id 3 was loaded
/// again on every call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_tag_index_beside_a_stored_entry_fails_only_that_id_once() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(backend.cache(), 9);
    assert_eq!(c.many(true, vec![1, 2, 3, 4, 5]).await, Ok(items(1..=5, 1)));
    let index: Vec<String> = server.cmd(&["KEYS", "*~tag*row:3"]);
    assert_eq!(index.len(), 1, "one index of tag row:3: {index:?}");
    let _: () = server.cmd(&["DEL", &index[0]]);
    let _: i64 = server.cmd(&["RPUSH", &index[0], "a", "list"]);
    let calls = c.batches().len();
    for round in 1..=2 {
        assert_eq!(c.many(true, vec![1, 2, 3, 4, 5]).await, Ok(items(1..=5, 1)));
        assert_eq!(
            c.batches()[calls..],
            [vec![3]],
            "the other ids were read, id 3 loaded alone, once (round {round})"
        );
        until_no_lease(server, Duration::from_secs(2), "").await;
    }
    assert_eq!(server.cmd::<String>(&["TYPE", &index[0]]), "set");
    backend.assert_nothing_refused();
}

/// A single call is loading id 5 when a batch asks for 4, 5 and 6: the
/// batch loads 4 and 6, takes 5 from the single call's load, and each
/// call counts its own miss once.
async fn a_batch_waits_for_a_single_load_in_flight_and_counts_it_once(backend: &Backend) {
    #[derive(Clone)]
    struct SlowOne(Catalog);
    impl SlowOne {
        fn cache(&self) -> &Cache {
            &self.0.cache
        }
        #[cached(prefix = "item", ttl = "5m", key = id, cache = self.cache())]
        async fn get(&self, id: u64) -> Result<Option<Item>, DbError> {
            self.0.singles.lock().expect("singles").push(id);
            let row = self.0.rows.lock().expect("rows").get(&id).cloned();
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(row)
        }
    }
    let c = Catalog::new(backend.cache(), 9);
    let slow = SlowOne(c.clone());
    let single = tokio::spawn(async move { slow.get(5).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = c.get_many(vec![4, 5, 6]).await.expect("loads");
    assert_eq!(got, items([4, 5, 6], 1));
    assert_eq!(
        single.await.expect("joins"),
        Ok(Some(Item { id: 5, version: 1 }))
    );
    assert_eq!(
        c.batches(),
        vec![vec![4, 6]],
        "5 was the single call's to load"
    );
    assert_eq!(c.loads_per_id().get(&5), Some(&1));
    let s = c.cache.stats_for("item").expect("stats");
    assert_eq!(
        (s.hits, s.misses, s.loads, s.coalesced),
        (0, 1 + 3, 2, 1),
        "one miss per id per call, one load each, the batch's 5 shared"
    );
}

/// An entry past its TTL but inside the stale window its writer gave it is
/// served to a batch as it is to a single call without `stale`: a hit,
/// counted as served stale.
async fn an_entry_inside_its_stale_window_is_a_hit_counted_as_stale(backend: &Backend) {
    let c = Catalog::new(backend.cache_with(|b| b.ttl_jitter(0.0)), 9);
    c.get_stale(1).await.expect("loads");
    c.set_version(1, 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let got = c.get_many(vec![1, 2]).await.expect("loads");
    assert_eq!(
        got.get(&1),
        Some(&Item { id: 1, version: 1 }),
        "served stale"
    );
    assert_eq!(c.batches(), vec![vec![2]], "only 2 loaded");
    let s = c.cache.stats_for("item").expect("stats");
    assert_eq!((s.hits, s.misses, s.stale_served), (1, 1, 1), "{s:?}");
}

/// A failed body's lease release that fails too (the connections go
/// silently dead while the body runs, so the release times out) is
/// retried, so once the cache is on a working connection again the next
/// caller of those ids loads and stores at once, instead of waiting out
/// `wait` for a lease nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_after_a_failed_body_is_retried() {
    let server = cached_tests::RedisServer::start();
    let proxy = cached_tests::Proxy::start(server.port());
    let cache = cached_tests::redis_builder_at(proxy.url())
        .op_timeout(Duration::from_millis(100))
        .build()
        .expect("builds");
    let c = Catalog::new(cache, 9);
    c.get_many(vec![5]).await.expect("warms both connections");
    c.slow(Duration::from_millis(200));
    c.failing.store(true, SeqCst);
    let failing = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![1, 2]).await }
    });
    tokio::time::sleep(Duration::from_millis(80)).await;
    proxy.strand();
    assert_eq!(failing.await.expect("joins"), Err(DbError));
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert_eq!(
        leases.len(),
        2,
        "the release did not reach the server: {leases:?}"
    );
    c.failing.store(false, SeqCst);
    c.slow(Duration::ZERO);
    // Back on working connections (the breaker's probe makes new ones).
    let back = Instant::now();
    while c.cache.get::<Item>("item:5").await.is_none() || c.cache.breaker_open() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the cache did not recover"
        );
        c.get_many(vec![6]).await.expect("loads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert!(leases.is_empty(), "released by a retry: {leases:?}");
    let started = Instant::now();
    assert_eq!(
        c.get_many(vec![1, 2]).await.expect("loads"),
        items([1, 2], 1)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a lease",
        started.elapsed()
    );
    assert_eq!(
        c.cache.get::<Item>("item:1").await,
        Some(Item { id: 1, version: 1 }),
        "stored"
    );
}

/// A batch step over many keys is given time for them (the operation
/// timeout, and 50 µs a key): held to one `op_timeout` however many keys
/// it had, a batch of a few thousand timed out on every call, read
/// nothing, stored nothing and counted a failure to the breaker each time
/// (found by a review). Here every round trip takes longer than the
/// operation timeout: a single read would time out, a read of 4,000 keys
/// does not. And it is still bounded: the same batch with every byte held
/// answers from the function within that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_step_is_given_time_for_its_keys() {
    const IDS: u64 = 4_000;
    let op_timeout = Duration::from_millis(30);
    let server = cached_tests::RedisServer::start();
    let proxy = cached_tests::Proxy::start(server.port());
    let cache = cached_tests::redis_builder_at(proxy.url())
        .op_timeout(op_timeout)
        .build()
        .expect("builds");
    let c = Catalog::new(cache, IDS);
    // Warmed by another process, straight to the server.
    let direct = c.with_cache(
        cached_tests::redis_builder_at(server.url())
            .op_timeout(Duration::from_secs(5))
            .build()
            .expect("builds"),
    );
    let all: Vec<u64> = (1..=IDS).collect();
    assert_eq!(
        direct.get_many(all.clone()).await.expect("loads").len(),
        4_000
    );
    c.batches.lock().expect("batches").clear();
    // Both of the cache's connections made before the delay.
    c.get_many(vec![1]).await.expect("hits");
    let round_trip = Duration::from_millis(40);
    proxy.set_delay(round_trip / 2);
    let read = Instant::now();
    assert_eq!(c.get_many(all.clone()).await.expect("hits").len(), 4_000);
    assert!(read.elapsed() > round_trip, "through the delay");
    assert_eq!(
        c.batches(),
        Vec::<Vec<u64>>::new(),
        "the read timed out: every id loaded"
    );
    assert!(!c.cache.breaker_open());
    // Bounded: the read's time, then the body.
    proxy.blackhole(true);
    let held = Instant::now();
    assert_eq!(c.get_many(all).await.expect("loads").len(), 4_000);
    let budget = op_timeout + Duration::from_micros(50) * 4_000;
    assert!(
        held.elapsed() < budget * 3,
        "{:?} with every byte held, {budget:?} allowed",
        held.elapsed()
    );
    assert_eq!(c.batches().len(), 1, "loaded once, by the body");
    proxy.blackhole(false);
}

/// A Redis server behind a proxy, and a catalog on a cache through it with
/// `op_timeout` and a breaker that three failures in a row open (the near
/// tier too if `near`), its connections made by a batch of id 9.
async fn behind_a_proxy(
    near: bool,
    tagged: bool,
    op_timeout: Duration,
) -> (cached_tests::RedisServer, cached_tests::Proxy, Catalog) {
    let (server, proxy, mut builder) = cached_tests::behind_a_proxy(op_timeout, 3, None);
    if near {
        builder = builder.near_cache(cached_runtime::NearCache::new());
    }
    let c = Catalog::new(builder.build().expect("builds"), 9);
    c.many(tagged, vec![9])
        .await
        .expect("warms both connections");
    (server, proxy, c)
}

/// Runs `batch` (of ids 1 to 5, not yet polled) while `proxy` holds every
/// byte: the ids are loaded by one call of the body, and the breaker
/// (threshold 3) is still closed, looked at before the blip ends (a
/// release that succeeds would close it again).
async fn one_failure_through_a_blip(
    proxy: &cached_tests::Proxy,
    c: &Catalog,
    batch: impl std::future::Future<Output = Result<HashMap<u64, Item>, DbError>>,
    what: &str,
) {
    let calls = c.batches().len();
    proxy.blackhole(true);
    assert_eq!(batch.await, Ok(items(1..=5, 1)), "{what}");
    assert_eq!(c.batches().len(), calls + 1, "{what}: loaded");
    assert!(
        !c.cache.breaker_open(),
        "{what}: one batch's step opened the breaker"
    );
    proxy.blackhole(false);
}

/// On one server a batch's leased writes go in one round trip, tagged or
/// not, so a blip that times them out is one failure for the circuit
/// breaker, not one per id: a threshold of three is not reached by a batch
/// of five (five concurrent single calls would reach it). The breaker is
/// looked at as the batch returns, before the blip ends: the leases the
/// writes left are being released then, and a release that succeeds
/// closes the breaker again (so the blip must last until the look); they
/// are released once it ends, within their timeout, with no failure more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_that_times_out_a_batchs_writes_is_one_failure_for_the_breaker() {
    for tagged in [false, true] {
        let (server, proxy, c) = behind_a_proxy(false, tagged, Duration::from_millis(500)).await;
        let errors = || c.cache.stats().iter().map(|s| s.errors).sum::<u64>();
        let before = errors();
        c.slow(Duration::from_millis(200));
        let batch = tokio::spawn({
            let c = c.clone();
            async move { c.many(tagged, vec![1, 2, 3, 4, 5]).await }
        });
        tokio::time::sleep(Duration::from_millis(80)).await;
        proxy.blackhole(true);
        assert_eq!(
            batch.await.expect("joins"),
            Ok(items([1, 2, 3, 4, 5], 1)),
            "tagged: {tagged}"
        );
        assert!(
            !c.cache.breaker_open(),
            "tagged: {tagged}: one batch's writes opened the breaker"
        );
        proxy.blackhole(false);
        assert!(
            errors() > before,
            "tagged: {tagged}: the blip did not reach the writes"
        );
        until_no_lease(
            &server,
            Duration::from_secs(3),
            &format!("tagged: {tagged}: "),
        )
        .await;
        assert!(!c.cache.breaker_open(), "tagged: {tagged}: closed after");
    }
}

/// A tagged batch's reads are one round trip on one server, with the near
/// tier too (its ids not in L1 read in one script call), so a blip that
/// times them out is one failure for the circuit breaker, not one per id:
/// a threshold of three is not reached by a batch of five. The ids are
/// loaded all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_that_times_out_a_tagged_batchs_reads_is_one_failure_for_the_breaker() {
    for near in [false, true] {
        let (_server, proxy, c) = behind_a_proxy(near, true, Duration::from_millis(300)).await;
        let batch = c.many(true, vec![1, 2, 3, 4, 5]);
        one_failure_through_a_blip(&proxy, &c, batch, &format!("near: {near}: reads")).await;
    }
}

/// With the near tier, a batch whose read of Redis fails still serves
/// what L1 holds, as single calls of those ids would: only the ids L1 did
/// not hold go to the function (before, every id did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_behind_the_near_tier_keeps_l1s_hits() {
    let (_server, proxy, c) = behind_a_proxy(true, false, Duration::from_millis(300)).await;
    c.get_many(vec![1, 2, 3]).await.expect("loads");
    let l1_hits = || c.cache.near_stats().expect("a near cache").l1_hits;
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let before = l1_hits();
        assert_eq!(c.get_many(vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
        if l1_hits() == before + 3 {
            break;
        }
        assert!(Instant::now() < until, "L1 never served the whole batch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.blackhole(true);
    assert_eq!(c.get_many(vec![1, 2, 3, 4]).await, Ok(items(1..=4, 1)));
    proxy.blackhole(false);
    assert_eq!(
        c.batches().last(),
        Some(&vec![4]),
        "L1's hits were loaded again when Redis failed"
    );
}

/// A batch whose lease request the open circuit breaker skips loads
/// without a lease, and that load is shared only with those who joined
/// before it began, as a single call's is (README's windows): a caller
/// arriving during it, after another process's eviction, loads again
/// rather than get the value read before the eviction. (A forced refresh
/// reads nothing, so its lease request is the first the breaker skips.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_lease_the_breaker_skips_is_not_shared_with_later_callers() {
    let (server, proxy, builder) =
        cached_tests::behind_a_proxy(Duration::from_millis(200), 1, Some(Duration::from_secs(30)));
    let c = Catalog::new(builder.build().expect("builds"), 9);
    c.get_many(vec![9]).await.expect("warms both connections");
    // Another process of the same service, straight to the server.
    let writer = c.with_cache(
        cached_tests::redis_builder(&server)
            .build()
            .expect("builds"),
    );
    // One timeout opens the breaker (threshold one) for 30 s.
    proxy.blackhole(true);
    assert_eq!(c.get(8).await, Ok(Some(Item { id: 8, version: 1 })));
    proxy.blackhole(false);
    assert!(c.cache.breaker_open(), "the breaker did not open");
    let refresh = c.refresh_of_one_begun(Duration::from_millis(400)).await;
    c.slow(Duration::ZERO);
    writer.set_version(1, 2);
    writer.changed(1).await.expect("evicts");
    let later = c.get(1).await;
    assert_eq!(
        refresh.await.expect("joins"),
        Ok(items([1], 1)),
        "the refresh returns what it read"
    );
    assert_eq!(
        later,
        Ok(Some(Item { id: 1, version: 2 })),
        "a caller after the eviction got the value read before it"
    );
}

/// A single key's refresh whose lease request a blip times out loads, and
/// leaves the removal of the entry it could not replace to the retry of
/// pending changes: one failure for the circuit breaker (threshold two),
/// not a second one for a removal sent into the blip (which also held the
/// caller another op timeout). The breaker is looked at before the blip
/// ends (the lease's release, sent after, would add one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_refresh_through_a_blip_is_one_failure_for_the_breaker() {
    let (_server, proxy, builder) =
        cached_tests::behind_a_proxy(Duration::from_millis(300), 2, None);
    let c = Catalog::new(builder.build().expect("builds"), 9);
    assert_eq!(c.get(1).await, Ok(Some(Item { id: 1, version: 1 })));
    proxy.blackhole(true);
    let refreshed = cached_runtime::with_mode(cached_runtime::CallMode::Refresh, c.get(1)).await;
    assert_eq!(refreshed, Ok(Some(Item { id: 1, version: 1 })));
    assert!(
        !c.cache.breaker_open(),
        "the refresh's removal was sent into the blip"
    );
    proxy.blackhole(false);
}

/// A batch's lease requests go in one round trip on one server, tagged or
/// not, so a blip that times them out is one failure for the circuit
/// breaker, not one per id. A refreshing batch (`CallMode::Refresh`) reads
/// nothing, so the blip reaches its leases first. The breaker is looked at
/// before the blip ends (a release that succeeds closes it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_that_times_out_a_batchs_leases_is_one_failure_for_the_breaker() {
    for tagged in [false, true] {
        let (_server, proxy, c) = behind_a_proxy(false, tagged, Duration::from_millis(300)).await;
        let refresh = cached_runtime::with_mode(
            cached_runtime::CallMode::Refresh,
            c.many(tagged, vec![1, 2, 3, 4, 5]),
        );
        one_failure_through_a_blip(&proxy, &c, refresh, &format!("tagged: {tagged}: leases")).await;
    }
}

/// A server that answers every key of a batch's lease requests with an
/// outage (`-READONLY`: it became a replica) is unwell for the circuit
/// breaker, as it is when it answers a single call's lease request so,
/// though each key has an answer of its own: the ids are loaded all the
/// same, and a breaker of threshold one opens. (Seen in its metrics: the
/// leases' releases that follow succeed on a replica and close it again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answered_to_a_batchs_lease_requests_counts_for_the_breaker() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    // The only recorder of this binary, installed before the caches below
    // are built (handles made before it record nothing).
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    for tagged in [false, true] {
        let server = cached_tests::RedisServer::start();
        let namespace = format!("batch_outage_{tagged}");
        let cache = Cache::builder()
            .redis(server.url())
            .namespace(namespace.as_str())
            .circuit_breaker(cached_runtime::CircuitBreaker {
                failures: 1,
                min_backoff: Duration::from_secs(30),
                max_backoff: Duration::from_secs(30),
            })
            .build()
            .expect("builds");
        let c = Catalog::new(cache, 9);
        c.many(tagged, vec![9])
            .await
            .expect("warms both connections");
        // A replica of a master that is not there: reads work, writes are
        // refused with -READONLY.
        let nobody = cached_tests::free_port().to_string();
        let () = server.cmd(&["REPLICAOF", "127.0.0.1", &nobody]);
        assert_eq!(
            c.many(tagged, vec![9]).await,
            Ok(items([9], 1)),
            "tagged: {tagged}"
        );
        let opened = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter(|(key, _, _, _)| {
                    let key = key.key();
                    key.name() == cached_runtime::metric_names::BREAKER_TRANSITIONS
                        && key
                            .labels()
                            .any(|l| l.key() == "namespace" && l.value() == namespace)
                        && key.labels().any(|l| l.key() == "to" && l.value() == "open")
                })
                .map(|(_, _, _, value)| match value {
                    DebugValue::Counter(n) => n,
                    _ => 0,
                })
                .sum::<u64>()
        };
        assert_eq!(opened(), 0, "tagged: {tagged}: a read opened the breaker");
        let calls = c.batches().len();
        assert_eq!(
            c.many(tagged, vec![1, 2, 3]).await,
            Ok(items(1..=3, 1)),
            "tagged: {tagged}"
        );
        assert_eq!(c.batches().len(), calls + 1, "tagged: {tagged}: loaded");
        assert_eq!(
            opened(),
            1,
            "tagged: {tagged}: -READONLY to the leases is an outage"
        );
    }
}

/// A single call waiting on a batch's load of id 2 when id 2 changes and is
/// evicted (on Redis by another process, whose eviction this process's
/// flights do not see): the batch's write is refused, and the waiter is not
/// handed the value read before the change; it reads again and gets the
/// new row.
async fn a_caller_waiting_on_a_batch_whose_key_was_evicted_reads_again(backend: &Backend) {
    let c = Catalog::new(backend.cache(), 5);
    let evictor = match backend.server() {
        Some(_) => c.with_cache(backend.cache()),
        None => c.clone(),
    };
    c.slow(Duration::from_millis(300));
    let batch = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![1, 2, 3]).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn({
        let c = c.clone();
        async move { c.get(2).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.set_version(2, 2);
    evictor.changed(2).await.expect("evicts");
    batch.await.expect("joins").expect("loads");
    assert_eq!(
        waiter
            .await
            .expect("joins")
            .expect("loads")
            .map(|i| i.version),
        Some(2),
        "the waiter read after the change"
    );
}

/// A batch whose lease requests time out after they reach the server (its
/// writes paused: `CLIENT PAUSE WRITE` holds scripts, not the batch's
/// reads) loads its ids without storing them, and releases the leases
/// the requests took once they run: the next caller loads and stores at
/// once instead of waiting out `wait` behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_whose_replies_are_lost_are_released() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(
        backend.cache_with(|b| b.op_timeout(Duration::from_millis(100))),
        9,
    );
    c.get_many(vec![9]).await.expect("warms both connections");
    let _: () = server.cmd(&["CLIENT", "PAUSE", "300", "WRITE"]);
    let paused = Instant::now();
    assert_eq!(c.get_many(vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
    assert!(
        paused.elapsed() < Duration::from_millis(300),
        "the lease requests were not cut short: {:?}",
        paused.elapsed()
    );
    let calls = c.batches().len();
    // The paused requests run (and take their leases), then the releases
    // queued behind them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let started = Instant::now();
    assert_eq!(c.get_many(vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited {:?} behind a lease",
        started.elapsed()
    );
    assert_eq!(
        c.batches().len(),
        calls + 1,
        "loaded again: nothing was stored"
    );
    c.get_many(vec![1, 2, 3]).await.expect("hits");
    assert_eq!(c.batches().len(), calls + 1, "stored by the second call");
}

/// A batch whose write-back fails (the connections go silently dead while
/// its body runs) leaves its leases to its guards, which release them once
/// the cache is on a working connection: the next caller loads and stores
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_failed_write_back_are_released_later() {
    let server = cached_tests::RedisServer::start();
    let proxy = cached_tests::Proxy::start(server.port());
    let cache = cached_tests::redis_builder_at(proxy.url())
        .op_timeout(Duration::from_millis(100))
        .build()
        .expect("builds");
    let c = Catalog::new(cache, 9);
    c.get_many(vec![5]).await.expect("warms both connections");
    c.slow(Duration::from_millis(200));
    let loading = tokio::spawn({
        let c = c.clone();
        async move { c.get_many(vec![1, 2]).await }
    });
    tokio::time::sleep(Duration::from_millis(80)).await;
    proxy.strand();
    assert_eq!(
        loading.await.expect("joins").expect("loads"),
        items([1, 2], 1)
    );
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert_eq!(
        leases.len(),
        2,
        "the write did not reach the server: {leases:?}"
    );
    c.slow(Duration::ZERO);
    let back = Instant::now();
    while c.cache.get::<Item>("item:5").await.is_none() || c.cache.breaker_open() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the cache did not recover"
        );
        c.get_many(vec![6]).await.expect("loads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leases: Vec<String> = server.cmd(&["KEYS", "*:~lease"]);
    assert!(
        leases.is_empty(),
        "released by the guards' retries: {leases:?}"
    );
    let started = Instant::now();
    assert_eq!(
        c.get_many(vec![1, 2]).await.expect("loads"),
        items([1, 2], 1)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        c.cache.get::<Item>("item:2").await,
        Some(Item { id: 2, version: 1 }),
        "stored"
    );
}

/// On a cluster, where each id's entry is read on its own: a list (anyone's
/// data) where one id's stored tag versions are kept (`beside`), or at the
/// version of its own tag (`row:3`), makes that id unreadable, not the
/// whole batch's read, tagged or not: the other ids are hits and id 3 is
/// loaded alone, on every call (its write cannot record its versions, so
/// it is not stored), and nothing counts as an outage of Redis.
async fn a_foreign_value_at_one_ids_versions_fails_only_that_id_on_a_cluster(
    beside: bool,
    tagged: bool,
) {
    let backend = Backend::cluster();
    let cluster = backend.redis_cluster().expect("a cluster");
    let c = Catalog::new(backend.cache(), 9);
    assert_eq!(c.many(true, vec![1, 2, 3, 4, 5]).await, Ok(items(1..=5, 1)));
    // Every id stored (on a busy machine a write can time out: its id is
    // loaded again by the next call).
    let mut stored = false;
    for _ in 0..20 {
        let calls = c.batches().len();
        assert_eq!(c.many(true, vec![1, 2, 3, 4, 5]).await, Ok(items(1..=5, 1)));
        stored = c.batches().len() == calls;
        if stored {
            break;
        }
    }
    assert!(stored, "the batch's entries were never all stored");
    let pattern = if beside { "*item:3}:~tags" } else { "*row:3}" };
    let mut found: Vec<String> = cluster
        .nodes()
        .iter()
        .flat_map(|node| node.cmd::<Vec<String>>(&["KEYS", pattern]))
        .collect();
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 1, "one key {pattern}: {found:?}");
    let key = &found[0];
    let owner = cluster.owner_of(key);
    let node = &cluster.nodes()[owner];
    let _: () = node.cmd(&["DEL", key]);
    let _: i64 = node.cmd(&["RPUSH", key, "a", "list"]);
    let calls = c.batches().len();
    let errors = || c.cache.stats().iter().map(|s| s.errors).sum::<u64>();
    let before = errors();
    for round in 1..=2 {
        assert_eq!(
            c.many(tagged, vec![1, 2, 3, 4, 5]).await,
            Ok(items(1..=5, 1))
        );
        assert_eq!(
            c.batches()[calls..],
            vec![vec![3]; round],
            "the other ids were read, id 3 loaded alone (round {round})"
        );
    }
    assert_eq!(c.one(tagged, 3).await, Ok(Some(Item { id: 3, version: 1 })));
    // The failed writes of id 3 are counted (one per call), not as
    // outages.
    assert!(
        errors() - before <= 3,
        "more than one failure per call: {}",
        errors() - before
    );
    assert!(!c.cache.breaker_open(), "taken for Redis failing");
    backend.assert_nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_foreign_value_beside_one_entry_fails_only_that_id_of_a_tagged_batch() {
    a_foreign_value_at_one_ids_versions_fails_only_that_id_on_a_cluster(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_foreign_value_beside_one_entry_fails_only_that_id_of_an_untagged_batch() {
    a_foreign_value_at_one_ids_versions_fails_only_that_id_on_a_cluster(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_foreign_value_at_one_ids_tag_version_fails_only_that_id_of_a_tagged_batch()
{
    a_foreign_value_at_one_ids_versions_fails_only_that_id_on_a_cluster(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_foreign_value_at_one_ids_tag_version_fails_only_that_id_of_an_untagged_batch()
 {
    a_foreign_value_at_one_ids_versions_fails_only_that_id_on_a_cluster(false, false).await;
}

/// On a cluster, a batch reads each id on the primary that owns it. One
/// primary frozen (for less than its failover takes): the ids it owns are
/// loaded, and only those; the others are served from their nodes, within
/// a bound of a few `op_timeout`s, and the breaker (one for every node)
/// stays closed. With every primary frozen, it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_frozen_primary_costs_a_batch_only_the_ids_it_owns() {
    let mut cluster = cached_tests::RedisCluster::start();
    let op_timeout = Duration::from_millis(100);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(cached_tests::NAMESPACE)
        .op_timeout(op_timeout)
        .build()
        .expect("builds");
    let ids: Vec<u64> = (1..=30).collect();
    let c = Catalog::new(cache, 30);
    let mut stored = false;
    for _ in 0..20 {
        let calls = c.batches().len();
        assert_eq!(c.get_many(ids.clone()).await, Ok(items(1..=30, 1)));
        stored = c.batches().len() == calls;
        if stored {
            break;
        }
    }
    assert!(stored, "the batch's entries were never all stored");
    let owner = |id: u64| cluster.owner_of(&format!("{{{}:item:{id}}}", cached_tests::NAMESPACE));
    let frozen = owner(1);
    let theirs: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| owner(id) == frozen)
        .collect();
    assert!(theirs.len() < ids.len(), "every id on one node: {theirs:?}");
    let calls = c.batches().len();
    let started = Instant::now();
    {
        let _frozen = cluster.node_mut(frozen).freeze_guarded();
        assert_eq!(c.get_many(ids.clone()).await, Ok(items(1..=30, 1)));
        // One node's failures are not a failure of every node.
        assert!(!c.cache.breaker_open(), "the breaker opened");
    }
    let took = started.elapsed();
    assert_eq!(
        c.batches()[calls..],
        [theirs],
        "only the frozen primary's ids were loaded"
    );
    assert!(took < op_timeout * 6, "the batch took {took:?}");
    // Every primary frozen: no node answers, each batch's reads are one
    // failure for the breaker (its ids are loaded without leases, so
    // nothing else is asked), and five of them open it.
    let primaries = cluster.primaries();
    for &i in &primaries {
        cluster.node_mut(i).freeze();
    }
    for _ in 0..5 {
        assert_eq!(c.get_many(ids.clone()).await, Ok(items(1..=30, 1)));
    }
    let open = c.cache.breaker_open();
    for &i in &primaries {
        cluster.node_mut(i).thaw();
    }
    assert!(
        open,
        "five batches found no node answering: the breaker stayed closed"
    );
}

/// Another process's load holds id 1's lease past the batch's `wait`, so
/// the batch loads id 1 without a lease, and nothing tells it of an
/// invalidation meanwhile. A single call that begins after another
/// process's invalidation returned must not share that load: it reads
/// afresh (the invalidation removed the other process's lease) and loads
/// the new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_joins_a_batch_load_without_a_lease_after_another_process_invalidated_gets_the_new_row()
 {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let here = Catalog::new(backend.cache(), 3);
    let there = here.with_cache(backend.cache());
    let lease = format!("{}:item:1:~lease", cached_tests::NAMESPACE);
    let _: () = server.cmd(&["SET", &lease, "1", "PX", "5000"]);
    here.slow(Duration::from_millis(300));
    let batch = tokio::spawn({
        let here = here.clone();
        async move { here.get_many_impatient(vec![1]).await }
    });
    let began = Instant::now();
    while here.batches().is_empty() {
        assert!(began.elapsed() < Duration::from_secs(3), "never loaded");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    here.set_version(1, 2);
    there.cache.invalidate("item:1").await.expect("invalidates");
    assert_eq!(
        here.get(1).await.expect("loads").map(|i| i.version),
        Some(2),
        "joined a load that predates the invalidation"
    );
    let got = batch.await.expect("joins").expect("loads");
    assert_eq!(got.get(&1).map(|i| i.version), Some(1), "read before");
}

/// On a cluster, as on one server: a value of another kind under an id's
/// entry (anyone's data) is a miss, loaded and overwritten, with the
/// batch's other ids read as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_foreign_value_under_one_entry_is_a_miss_and_overwritten() {
    let backend = Backend::cluster();
    let cluster = backend.redis_cluster().expect("a cluster");
    let c = Catalog::new(backend.cache(), 9);
    let mut stored = false;
    for _ in 0..20 {
        let calls = c.batches().len();
        assert_eq!(c.get_many(vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
        stored = c.batches().len() == calls;
        if stored {
            break;
        }
    }
    assert!(stored, "the batch's entries were never all stored");
    let entry = format!("{{{}:item:3}}", cached_tests::NAMESPACE);
    let node = &cluster.nodes()[cluster.owner_of(&entry)];
    let _: () = node.cmd(&["DEL", &entry]);
    let _: i64 = node.cmd(&["RPUSH", &entry, "a", "list"]);
    let calls = c.batches().len();
    for _ in 0..2 {
        assert_eq!(c.get_many(vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
    }
    assert_eq!(c.batches()[calls..], [vec![3]], "loaded once, then a hit");
    assert_eq!(
        node.cmd::<String>(&["TYPE", &entry]),
        "string",
        "overwritten"
    );
    backend.assert_nothing_refused();
}

/// A huge foreign value under one of a batch's keys, read under the default
/// operation timeout: the batch's read must not try to bring it back whole
/// (it would outlast the timeout, fail the read of every id, count for the
/// breaker, and leave the value in place for the next batch to do the
/// same). Read bounded, it is one miss among hits: loaded, replaced, and
/// the next batches are hits with the breaker closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_foreign_value_in_a_batch_is_replaced_under_the_default_timeout() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(backend.cache_with(|b| b.max_value_bytes(64 << 10)), 6);
    c.many(false, (1..=6).collect()).await.expect("loads");
    let key = format!("{}:item:4", cached_tests::NAMESPACE);
    let _: i64 = server.cmd(&["SETRANGE", &key, &((256 << 20) - 1).to_string(), "x"]);
    let before = server.bytes_sent();
    assert_eq!(c.many(false, (1..=6).collect()).await, Ok(items(1..=6, 1)));
    assert_eq!(
        c.batches(),
        vec![(1..=6).collect(), vec![4]],
        "only the foreign one loaded"
    );
    for _ in 0..5 {
        assert_eq!(c.many(false, (1..=6).collect()).await, Ok(items(1..=6, 1)));
    }
    assert_eq!(c.batches().len(), 2, "replaced: hits since");
    assert!(
        server.bytes_sent() - before < 1 << 20,
        "{} bytes sent",
        server.bytes_sent() - before
    );
    assert!(!c.cache.breaker_open(), "{:?}", c.cache.stats());
}

/// A server pausing writes (`CLIENT PAUSE WRITE`, as a failover does while
/// the replica catches up) still answers reads: a tagged hit, single or
/// batch, is a script that only reads, run as `EVALSHA_RO`, which the
/// pause does not hold. As `EVALSHA`, each call waited out the pause to its
/// operation timeout and loaded. Also once the server has lost its scripts
/// (`SCRIPT FLUSH`): the first call finds out at once, not at the pause's
/// end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_hits_are_served_while_the_server_pauses_writes() {
    for flushed in [false, true] {
        let backend = Backend::redis();
        let server = backend.server().expect("redis");
        let c = Catalog::new(
            backend.cache_with(|b| b.op_timeout(Duration::from_secs(2))),
            3,
        );
        c.many(true, vec![1, 2, 3]).await.expect("loads");
        if flushed {
            let () = server.cmd(&["SCRIPT", "FLUSH"]);
        }
        paused_hits(&c, server, &format!("flushed {flushed}")).await;
    }
}

/// Once caching again (a batch that loads nothing, within 10 s), warms a
/// single call, then [`paused_hits`].
async fn warm_then_paused_hits(c: &Catalog, server: &cached_tests::RedisServer, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = c.batches().len();
        c.many(true, vec![1, 2, 3]).await.expect("answers");
        if c.batches().len() == before {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", c.cache.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.one(true, 2).await.expect("warm");
    paused_hits(c, server, what).await;
}

/// A tagged single call and batch, warm, while `server` pauses writes for
/// 4 s: both are served from the cache within 1 s.
async fn paused_hits(c: &Catalog, server: &cached_tests::RedisServer, what: &str) {
    let loads = (c.batches().len(), c.singles.lock().expect("singles").len());
    let () = server.cmd(&["CLIENT", "PAUSE", "4000", "WRITE"]);
    let started = Instant::now();
    let one = c.one(true, 2).await;
    let many = c.many(true, vec![1, 2, 3]).await;
    let took = started.elapsed();
    let () = server.cmd(&["CLIENT", "UNPAUSE"]);
    assert_eq!(one, Ok(Some(Item { id: 2, version: 1 })), "{what}");
    assert_eq!(many, Ok(items(1..=3, 1)), "{what}");
    assert!(
        took < Duration::from_secs(1),
        "{what}: waited on the pause: {took:?}"
    );
    assert_eq!(
        (c.batches().len(), c.singles.lock().expect("singles").len()),
        loads,
        "{what}: hits, not loads: {:?}",
        c.cache.stats()
    );
}

/// How many `SCRIPT LOAD`s the server has run.
fn script_loads(server: &cached_tests::RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("cmdstat_script|load:calls=")?;
            rest.split(',').next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// A read script is loaded when the server answers that it lacks it, once:
/// not on every hit (two more round trips each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_scripts_are_loaded_once_not_per_hit() {
    let backend = Backend::redis();
    let server = backend.server().expect("redis");
    let c = Catalog::new(backend.cache(), 3);
    c.many(true, vec![1, 2, 3]).await.expect("loads");
    c.one(true, 2).await.expect("a hit");
    let loads = script_loads(server);
    for _ in 0..10 {
        assert_eq!(c.one(true, 2).await, Ok(Some(Item { id: 2, version: 1 })));
        assert_eq!(c.many(true, vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
    }
    assert_eq!(c.batches().len(), 1, "hits");
    assert_eq!(script_loads(server), loads, "no script loaded again");
}

/// A tagged read that fails because the server is down (an outage, not a
/// server or ACL rule that refuses `EVALSHA_RO`) keeps `EVALSHA_RO`, whether
/// it is the first read or a later one: once the server is back, its tagged
/// hits are still served while it pauses writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_read_failing_on_an_outage_keeps_the_read_only_scripts() {
    let mut server = cached_tests::RedisServer::start();
    let c = Catalog::new(
        cached_tests::redis_builder(&server)
            .op_timeout(Duration::from_secs(2))
            .build()
            .expect("builds"),
        3,
    );
    for warm in [false, true] {
        if warm {
            c.many(true, vec![1, 2, 3]).await.expect("answers");
        }
        server.kill();
        assert_eq!(c.one(true, 1).await, Ok(Some(Item { id: 1, version: 1 })));
        server.restart();
        warm_then_paused_hits(&c, &server, &format!("warm {warm}")).await;
    }
}

/// An ACL rule written before `+evalsha_ro` was in it: the refused command
/// turns the cache to `EVALSHA` (one warning), and tagged calls go on
/// being hits, not loads or errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_evalsha_ro_still_reads_tagged_entries() {
    let server = cached_tests::RedisServer::start();
    let mut setuser = vec!["ACL", "SETUSER", "older-rule", "on", ">older-password"];
    let rule = cached_runtime::redis_acl_rule(cached_tests::NAMESPACE);
    setuser.extend(rule.split(' ').filter(|part| *part != "+evalsha_ro"));
    let () = server.cmd(&setuser);
    let c = Catalog::new(
        cached_tests::redis_builder(&server)
            .redis_username("older-rule")
            .redis_password("older-password")
            .build()
            .expect("builds"),
        3,
    );
    tagged_reads_stay_hits(&c).await;
}

/// A tagged batch loaded once, then tagged single calls and batches of
/// the same ids: hits, not loads or errors.
async fn tagged_reads_stay_hits(c: &Catalog) {
    c.many(true, vec![1, 2, 3]).await.expect("loads");
    for _ in 0..3 {
        assert_eq!(c.one(true, 2).await, Ok(Some(Item { id: 2, version: 1 })));
        assert_eq!(c.many(true, vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
    }
    assert_eq!(c.batches().len(), 1, "hits: {:?}", c.cache.stats());
    assert!(
        c.singles.lock().expect("singles").is_empty(),
        "{:?}",
        c.cache.stats()
    );
}

/// A server without `EVALSHA_RO` (Redis before 7 answers "unknown
/// command"; here a Redis 7 with the command renamed away, which answers
/// the same): the cache turns to `EVALSHA`, and tagged calls go on being
/// hits, not loads or errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_evalsha_ro_still_reads_tagged_entries() {
    let server = cached_tests::RedisServer::start_with(&["--rename-command", "EVALSHA_RO", ""]);
    let mut conn = redis::Client::open(server.url().as_str())
        .expect("URL")
        .get_connection()
        .expect("connects");
    let refused = redis::cmd("EVALSHA_RO")
        .arg("0")
        .arg(0)
        .query::<redis::Value>(&mut conn)
        .expect_err("the server has no EVALSHA_RO");
    assert!(refused.to_string().contains("unknown command"), "{refused}");
    let c = Catalog::new(
        cached_tests::redis_builder(&server)
            .build()
            .expect("builds"),
        3,
    );
    tagged_reads_stay_hits(&c).await;
}

/// A refusal of `EVALSHA_RO` that `EVALSHA` meets too (a rule without
/// either, fixed later) says nothing of the server: reads keep to
/// `EVALSHA_RO`, and once the rule allows both, tagged hits are served
/// while the server pauses writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_evalsha_shares_keeps_reads_read_only() {
    let server = cached_tests::RedisServer::start();
    let mut setuser = vec!["ACL", "SETUSER", "no-scripts", "on", ">no-scripts-password"];
    let rule = cached_runtime::redis_acl_rule(cached_tests::NAMESPACE);
    setuser.extend(
        rule.split(' ')
            .filter(|part| *part != "+evalsha_ro" && *part != "+evalsha"),
    );
    let () = server.cmd(&setuser);
    let c = Catalog::new(
        cached_tests::redis_builder(&server)
            .redis_username("no-scripts")
            .redis_password("no-scripts-password")
            .op_timeout(Duration::from_secs(2))
            .build()
            .expect("builds"),
        3,
    );
    // Refused both ways: served from the loaders, nothing stored.
    for _ in 0..2 {
        assert_eq!(c.many(true, vec![1, 2, 3]).await, Ok(items(1..=3, 1)));
        assert_eq!(c.one(true, 2).await, Ok(Some(Item { id: 2, version: 1 })));
    }
    let () = server.cmd(&["ACL", "SETUSER", "no-scripts", "+evalsha", "+evalsha_ro"]);
    warm_then_paused_hits(&c, &server, "after a refusal both commands met").await;
}
