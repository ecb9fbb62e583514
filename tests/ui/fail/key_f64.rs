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
    // A float has no exact text: not a key part.
    #[cached(prefix = "placement", ttl = "5m", key = score)]
    async fn get(&self, score: f64) -> Placement {
        Placement { id: 1 }
    }
}

fn main() {}
