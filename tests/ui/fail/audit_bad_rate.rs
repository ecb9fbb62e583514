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
    // More than every hit, and a borrowed argument an audit cannot keep.
    #[cached(prefix = "placement", ttl = "5m", key = id, audit = 2.0)]
    async fn get(&self, id: u64) -> Placement {
        Placement { id }
    }

    #[cached(prefix = "placement", ttl = "5m", key = name, audit = 0.01)]
    async fn by_name(&self, name: &str) -> Placement {
        Placement { id: name.len() as u64 }
    }
}

fn main() {}
