#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "placement", ttl = 0, key = id)]
    async fn get(&self, id: u64) -> Placement {
        Placement { id }
    }
}

fn main() {}
