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
    // The predicate takes the stored value: a `Placement`, not the `Option`.
    #[cached(prefix = "placement", ttl = "5m", key = id, unless = |p: &Option<Placement>| p.is_none())]
    async fn get(&self, id: u64) -> Option<Placement> {
        None
    }
}

fn main() {}
