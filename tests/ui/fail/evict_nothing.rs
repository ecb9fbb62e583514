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
    #[cache_evict(cache = self.cache)]
    async fn delete(&self, id: u64) -> Result<(), std::io::Error> {
        let _ = id;
        Ok(())
    }
}

fn main() {}
