#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // `max_ttl` bounds a run-time TTL; this one is a literal.
    #[cached(prefix = "placement", ttl = "5m", max_ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
