#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

struct Other {
    store: std::collections::HashMap<u64, Placement>,
}

impl Other {
    #[cached(prefix = "placement", ttl = "5m", key = id, cache = self.store)]
    async fn get(&self, id: u64) -> Placement {
        Placement { id }
    }
}

fn main() {}
