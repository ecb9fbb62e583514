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
    #[cached(prefix = "pair", ttl = "5m")]
    async fn pair(&self, (a, b): (u64, u64)) -> Placement {
        Placement { id: a + b }
    }
}

fn main() {}
