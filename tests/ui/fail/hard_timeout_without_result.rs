#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // Nothing to return when the load runs out of time.
    #[cached(prefix = "placement", ttl = "5m", key = id, hard_timeout = "2s")]
    async fn get(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {}
