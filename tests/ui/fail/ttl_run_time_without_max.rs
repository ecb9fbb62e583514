#![allow(dead_code, unused_variables)]

use std::time::Duration;

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
    ttl: Duration,
}

impl Service {
    // A TTL computed per call, with nothing bounding it.
    #[cached(prefix = "placement", ttl = self.ttl, key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
