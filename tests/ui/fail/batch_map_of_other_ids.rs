#![allow(dead_code, unused_imports, unused_variables)]

use std::collections::HashMap;

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    // Ids are `u64`, the map is keyed by `String`.
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn get_many(&self, ids: Vec<u64>) -> HashMap<String, Item> {
        HashMap::new()
    }
}

fn main() {}
