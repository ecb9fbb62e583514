#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // `a:b` + key `c` would be `a` + key `(b, c)`.
    #[cached(prefix = "video:placements", ttl = "1m", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
