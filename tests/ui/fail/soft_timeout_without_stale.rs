#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // Nothing stale to serve after the soft timeout.
    #[cached(prefix = "placement", ttl = "5m", key = id, soft_timeout = "20ms")]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
