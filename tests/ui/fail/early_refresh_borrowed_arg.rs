#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

#[derive(Clone)]
struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "placement", ttl = "5m", key = name, early_refresh = true)]
    async fn by_name(&self, name: &str) -> Placement {
        Placement { id: name.len() as u64 }
    }
}

fn main() {}
