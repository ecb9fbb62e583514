#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
    ttl_secs: u64,
}

impl Service {
    // Seconds, not a `Duration`.
    #[cached(prefix = "placement", ttl = self.ttl_secs, max_ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
