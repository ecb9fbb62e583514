#![allow(dead_code, unused_imports, unused_variables)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    // A list does not say which id each value belongs to.
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn get_many(&self, ids: Vec<u64>) -> Vec<Item> {
        ids.into_iter().map(|id| Item { id }).collect()
    }

    // Nor does an `Option` of a map.
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn maybe_many(&self, ids: Vec<u64>) -> Option<std::collections::HashMap<u64, Item>> {
        None
    }
}

fn main() {}
