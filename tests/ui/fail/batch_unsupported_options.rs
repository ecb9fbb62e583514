#![allow(dead_code, unused_imports, unused_variables)]

use std::collections::HashMap;

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

#[derive(Clone)]
struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "item", ttl = "5m", batch, stale = "1h", lock = false, audit = 0.01)]
    async fn get_many(&self, ids: Vec<u64>) -> HashMap<u64, Item> {
        HashMap::new()
    }
}

fn main() {}
