#![allow(dead_code)]

use cached_runtime::cached;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

// No `cache` field, and no `cache = ...`.
struct Service {
    db: u32,
}

impl Service {
    #[cached(prefix = "placement", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Placement {
        Placement { id }
    }
}

fn main() {}
