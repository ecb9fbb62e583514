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
    #[cached(prefix = "placement", ttl = "5m", key = name, audit = 0.01)]
    async fn by_name(&self, name: &str) -> Placement {
        Placement { id: 1 }
    }
}

fn main() {}
