#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

const TTL_SECS: u64 = 300;

struct Service {
    cache: Cache,
}

impl Service {
    // A constant of seconds, not a `Duration`.
    #[cached(prefix = "placement", ttl = TTL_SECS, max_ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
