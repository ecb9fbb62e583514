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
    // One id is not a batch: use the single-key form.
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn get_many(&self, id: u64) -> HashMap<u64, Item> {
        HashMap::new()
    }
}

fn main() {}
