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
    #[cached(prefix = "placement", ttl = "5m", key = id, name = "  ")]
    async fn get(&self, id: u64) -> Placement {
        Placement { id }
    }
}

fn main() {}
