//! The attributes on the methods of a trait impl (native `async fn` in
//! traits), with `#[cached]` on the impl block: the same semantics as on an
//! inherent impl, the twins callable, a generic caller served through the
//! trait, and a generic impl.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use cached_tests::{Backend, on_both_backends};
use serde::{Deserialize, Serialize};

on_both_backends!(
    a_trait_method_caches_and_its_twin_does_not,
    write_through_eviction_and_batch_through_the_trait,
    a_background_refresh_runs_through_the_trait,
    a_generic_impl_caches_per_type,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct DbError;

/// What a service is written against.
trait Repo {
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError>;
    async fn get_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError>;
    async fn update(&self, id: u64, version: u64) -> Result<Item, DbError>;
    async fn remove(&self, id: u64) -> Result<(), DbError>;
    async fn hot(&self, id: u64) -> Item;
}

#[derive(Clone)]
struct Store {
    cache: Cache,
    rows: Arc<Mutex<HashMap<u64, u64>>>,
    loads: Arc<AtomicU32>,
}

impl Store {
    fn new(cache: Cache) -> Store {
        Store {
            cache,
            rows: Arc::new(Mutex::new((1..=9).map(|id| (id, 1)).collect())),
            loads: Arc::default(),
        }
    }

    fn row(&self, id: u64) -> Option<Item> {
        self.loads.fetch_add(1, SeqCst);
        let version = *self.rows.lock().expect("rows").get(&id)?;
        Some(Item { id, version })
    }

    fn loads(&self) -> u32 {
        self.loads.load(SeqCst)
    }
}

#[cached]
impl Repo for Store {
    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError> {
        Ok(self.row(id))
    }

    #[cached(prefix = "item", ttl = "5m", key = ids, batch)]
    async fn get_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        Ok(ids
            .into_iter()
            .filter_map(|id| Some((id, self.row(id)?)))
            .collect())
    }

    #[cache_put(prefix = "item", ttl = "5m", key = id)]
    async fn update(&self, id: u64, version: u64) -> Result<Item, DbError> {
        self.rows.lock().expect("rows").insert(id, version);
        Ok(Item { id, version })
    }

    #[cache_evict(keys = ["item:{id}"])]
    async fn remove(&self, id: u64) -> Result<(), DbError> {
        self.rows.lock().expect("rows").remove(&id);
        Ok(())
    }

    /// Refreshed in the background once past its TTL.
    #[cached(prefix = "hot", ttl = "150ms", key = id, stale = "1m")]
    async fn hot(&self, id: u64) -> Item {
        let version = self.loads.fetch_add(1, SeqCst) as u64;
        Item { id, version }
    }
}

/// A caller that knows only the trait.
async fn through<R: Repo>(repo: &R, id: u64) -> Option<Item> {
    repo.get(id).await.expect("no source error")
}

async fn a_trait_method_caches_and_its_twin_does_not(backend: &Backend) {
    let s = Store::new(backend.cache());
    assert_eq!(through(&s, 3).await, Some(Item { id: 3, version: 1 }));
    assert_eq!(through(&s, 3).await, Some(Item { id: 3, version: 1 }));
    assert_eq!(s.loads(), 1, "the second call was a hit");
    assert_eq!(
        s.get_uncached(3).await,
        Ok(Some(Item { id: 3, version: 1 }))
    );
    assert_eq!(s.loads(), 2, "the twin reads the source");
    assert_eq!(
        s.cache.get::<Item>(&Store::get_key(&3)).await,
        Some(Item { id: 3, version: 1 }),
        "stored under the attribute's key"
    );
    // The companions, in the inherent impl like the twin.
    s.rows.lock().expect("rows").insert(3, 4);
    assert_eq!(s.get_refresh(3).await, Ok(Some(Item { id: 3, version: 4 })));
    assert_eq!(through(&s, 3).await, Some(Item { id: 3, version: 4 }));
    s.get_invalidate(&3).await;
    assert_eq!(s.cache.get::<Item>("item:3").await, None);
    s.get_prime(&3, &Item { id: 3, version: 9 }).await;
    assert_eq!(through(&s, 3).await, Some(Item { id: 3, version: 9 }));
}

async fn write_through_eviction_and_batch_through_the_trait(backend: &Backend) {
    let s = Store::new(backend.cache());
    through(&s, 1).await;
    s.update(1, 5).await.expect("writes");
    assert_eq!(through(&s, 1).await, Some(Item { id: 1, version: 5 }));
    assert_eq!(s.loads(), 1, "served from the write-through");
    let got = s.get_many(vec![1, 2]).await.expect("loads");
    assert_eq!(got.get(&1), Some(&Item { id: 1, version: 5 }));
    assert_eq!(s.loads(), 2, "only 2 was loaded");
    s.remove(2).await.expect("evicts");
    assert_eq!(
        through(&s, 2).await,
        None,
        "evicted, then gone at the source"
    );
    assert_eq!(
        s.update_uncached(7, 2).await,
        Ok(Item { id: 7, version: 2 })
    );
    assert_eq!(
        s.cache.get::<Item>("item:7").await,
        None,
        "the twin writes nothing"
    );
}

async fn a_background_refresh_runs_through_the_trait(backend: &Backend) {
    let s = Store::new(backend.cache_with(|b| b.ttl_jitter(0.0)));
    let first = s.hot(1).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Past its TTL: served stale at once, refreshed in the background.
    assert_eq!(s.hot(1).await, first);
    let mut refreshed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = s.hot(1).await;
        if now != first {
            refreshed = Some(now);
            break;
        }
    }
    assert!(
        refreshed.is_some_and(|r| r.version > first.version),
        "refreshed"
    );
}

/// A generic impl: the twins go to `impl<S> Generic<S>`.
trait Source: Send + Sync + 'static {
    fn version(&self) -> u64;
}

struct Fixed(u64);

impl Source for Fixed {
    fn version(&self) -> u64 {
        self.0
    }
}

struct Generic<S> {
    cache: Cache,
    source: S,
    loads: AtomicU32,
}

trait Reader {
    async fn read(&self, id: u64) -> Item;
}

#[cached]
impl<S: Source> Reader for Generic<S> {
    #[cached(prefix = "generic", ttl = "5m", key = id)]
    async fn read(&self, id: u64) -> Item {
        self.loads.fetch_add(1, SeqCst);
        Item {
            id,
            version: self.source.version(),
        }
    }
}

async fn a_generic_impl_caches_per_type(backend: &Backend) {
    let g = Generic {
        cache: backend.cache(),
        source: Fixed(4),
        loads: AtomicU32::new(0),
    };
    assert_eq!(g.read(1).await, Item { id: 1, version: 4 });
    assert_eq!(g.read(1).await, Item { id: 1, version: 4 });
    assert_eq!(g.loads.load(SeqCst), 1);
    assert_eq!(g.read_uncached(1).await, Item { id: 1, version: 4 });
    assert_eq!(g.loads.load(SeqCst), 2);
}
