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
    #[cached(prefix = "placement", ttl = "5m")]
    async fn get<K: std::fmt::Display>(&self, id: K) -> Placement {
        Placement { id: id.to_string().len() as u64 }
    }
}

fn main() {}
