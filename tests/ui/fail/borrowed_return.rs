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
    #[cached(prefix = "name", ttl = "5m", key = id)]
    async fn name(&self, id: u64) -> &str {
        let _ = id;
        "name"
    }
}

fn main() {}
