#![allow(dead_code, unused_imports, unused_variables)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
    draft: bool,
}

#[derive(Clone)]
struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "placement", ttl = "5m", key = id, unless = true)]
    async fn get(&self, id: u64) -> Placement {
        Placement { id, draft: false }
    }
}

fn main() {}
