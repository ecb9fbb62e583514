#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // One typo in `ttl`: the only error the user should see. The function
    // and its `_uncached` twin are still there for the callers below.
    #[cached(prefix = "placement", ttl = "5x", key = id)]
    async fn get_by_id(&self, id: u64) -> u64 {
        id
    }
}

async fn callers(s: &Service) -> u64 {
    s.get_by_id(1).await + s.get_by_id_uncached(2).await
}

fn main() {}
