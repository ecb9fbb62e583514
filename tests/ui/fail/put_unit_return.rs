#![allow(dead_code, unused_imports)]

use cached_runtime::{cache_evict, cache_put, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cache_put(prefix = "placement", ttl = "5m", key = id)]
    async fn update(&self, id: u64) {
        let _ = id;
    }
}

fn main() {}
