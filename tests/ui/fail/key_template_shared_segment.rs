#![allow(dead_code, unused_imports)]

use cached_runtime::{cache_evict, cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // `user-{id}` with id "7" is the literal key `user-7`.
    #[cached(prefix = "users", ttl = "1m", key = "user-{id}")]
    async fn get(&self, id: String) -> String {
        id
    }

    // An empty segment, and a placeholder glued to a glob.
    #[cache_evict(keys = ["video::{id}"], patterns = ["video:{id}*"])]
    async fn evict(&self, id: String) {
        let _ = id;
    }
}

fn main() {}
