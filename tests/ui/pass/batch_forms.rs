#![deny(warnings)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

#[derive(Debug, Clone)]
struct DbError;

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::memory);

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn from_vec(&self, ids: Vec<u64>) -> Result<HashMap<u64, Item>, DbError> {
        Ok(ids.into_iter().map(|id| (id, Item { id })).collect())
    }

    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn from_slice(&self, ids: &[u64]) -> BTreeMap<u64, Item> {
        ids.iter().map(|&id| (id, Item { id })).collect()
    }

    #[cached(prefix = "item", ttl = "5m", cache_none = "30s", batch)]
    async fn from_set(&self, ids: HashSet<u64>) -> HashMap<u64, Item> {
        ids.into_iter().map(|id| (id, Item { id })).collect()
    }

    #[cached(prefix = "item", ttl = "5m", batch, wait = "1s", lease = "5s", name = "items")]
    async fn from_btree_set(&self, ids: BTreeSet<u64>) -> anyhow_like::Result<HashMap<u64, Item>> {
        Ok(ids.into_iter().map(|id| (id, Item { id })).collect())
    }

    // Tenant-scoped: each id's key is `{tenant}:{id}`, as the single-key
    // function's `key = (tenant, id)`.
    #[cached(prefix = "tenant_item", ttl = "5m", batch = ids, key = (tenant, ids))]
    async fn by_tenant(&self, tenant: &str, ids: Vec<u64>) -> HashMap<u64, Item> {
        let _ = tenant;
        ids.into_iter().map(|id| (id, Item { id })).collect()
    }

    #[cached(prefix = "tenant_item", ttl = "5m", key = (tenant, id))]
    async fn one_by_tenant(&self, tenant: &str, id: u64) -> Option<Item> {
        let _ = tenant;
        Some(Item { id })
    }

    // Tags per id: `{ids}` stands for one id, as in the key; other
    // parameters as they are.
    #[cached(prefix = "tenant_item", ttl = "5m", batch = ids, key = (tenant, ids), tags = ["tenant:{tenant}", "item:{ids}"], name = "tagged")]
    async fn tagged_by_tenant(&self, tenant: &str, ids: Vec<u64>) -> HashMap<u64, Item> {
        let _ = tenant;
        ids.into_iter().map(|id| (id, Item { id })).collect()
    }

    // A template: `{ids}` stands for one id.
    #[cached(prefix = "row", ttl = "5m", batch = ids, key = "{ids}:row")]
    async fn rows(&self, ids: Vec<String>, verbose: bool) -> HashMap<String, Item> {
        let _ = verbose;
        ids.into_iter().map(|id| (id, Item { id: 1 })).collect()
    }
}

#[cached(prefix = "free_item", ttl = "5m", cache = CACHE, batch)]
async fn free(ids: Vec<u64>) -> HashMap<u64, Item> {
    ids.into_iter().map(|id| (id, Item { id })).collect()
}

mod anyhow_like {
    pub type Result<T> = std::result::Result<T, super::DbError>;
}

fn main() {
    let s = Service { cache: Cache::memory() };
    let _ = s.from_vec(vec![1]);
    let _ = s.from_slice(&[1]);
    let _ = s.from_set(HashSet::new());
    let _ = s.from_btree_set(BTreeSet::new());
    let _ = s.by_tenant("t", vec![1]);
    let _ = s.one_by_tenant("t", 1);
    let _ = s.tagged_by_tenant("t", vec![1]);
    let _ = s.rows(vec![String::new()], true);
    let _ = free(vec![1]);
}
