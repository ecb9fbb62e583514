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
    #[cache_evict(keys = ["placement:{id}"], ttl = "5m")]
    async fn delete(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }
}

fn main() {}
