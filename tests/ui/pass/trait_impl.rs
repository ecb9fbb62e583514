#![deny(warnings)]

use std::collections::HashMap;

use cached_runtime::{cache_evict, cache_put, cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

#[derive(Debug, Clone)]
struct DbError;

trait Repo {
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError>;
    async fn many(&self, ids: Vec<u64>) -> HashMap<u64, Item>;
    async fn save(&self, id: u64) -> Result<Item, DbError>;
    async fn drop_one(&self, id: u64) -> Result<(), DbError>;
    async fn hot(&self, id: u64) -> Item;
    fn plain(&self) -> u64;
}

#[derive(Clone)]
struct Store {
    cache: Cache,
}

#[cached]
impl Repo for Store {
    /// Documented like any method.
    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Result<Option<Item>, DbError> {
        Ok(Some(Item { id }))
    }

    #[cached(prefix = "item", ttl = "5m", key = ids, batch)]
    async fn many(&self, ids: Vec<u64>) -> HashMap<u64, Item> {
        ids.into_iter().map(|id| (id, Item { id })).collect()
    }

    #[cache_put(prefix = "item", ttl = "5m", key = id)]
    async fn save(&self, id: u64) -> Result<Item, DbError> {
        Ok(Item { id })
    }

    #[cache_evict(keys = ["item:{id}"])]
    async fn drop_one(&self, id: u64) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }

    #[cached(prefix = "hot", ttl = "5m", key = id, stale = "1h", early_refresh = true)]
    async fn hot(&self, id: u64) -> Item {
        Item { id }
    }

    fn plain(&self) -> u64 {
        1
    }
}

struct Generic<T> {
    cache: Cache,
    inner: T,
}

trait Named {
    async fn name(&self, id: u64) -> String;
}

#[cached]
impl<T: std::fmt::Display + Send + Sync> Named for Generic<T> {
    #[cached(prefix = "name", ttl = "1m")]
    async fn name(&self, id: u64) -> String {
        format!("{}-{id}", self.inner)
    }
}

async fn through<R: Repo>(r: &R) -> Option<Item> {
    r.get(1).await.ok().flatten()
}

fn main() {
    let s = Store { cache: Cache::memory() };
    let _ = through(&s);
    let _ = s.get_uncached(1);
    let _ = s.many_uncached(vec![1]);
    let _ = s.save_uncached(1);
    let _ = s.drop_one_uncached(1);
    let _ = s.hot_uncached(1);
    let _ = s.plain();
    let g = Generic { cache: Cache::memory(), inner: 7 };
    let _ = g.name(1);
    let _ = g.name_uncached(1);
}
