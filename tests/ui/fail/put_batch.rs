#![allow(dead_code, unused_imports, unused_variables)]

use cached_runtime::{cache_evict, cache_put, cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

#[derive(Clone)]
struct Service {
    cache: Cache,
}

impl Service {
    #[cache_put(prefix = "placement", ttl = "5m", batch)]
    async fn update_many(&self, ids: Vec<u64>) -> std::collections::HashMap<u64, Placement> {
        Default::default()
    }
}

fn main() {}
