#![allow(dead_code)]

use cached_runtime::{cache_evict, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    async fn plain(&self, id: u64) -> u64 {
        id
    }

    // `plain` is not `#[cached]`: it has no entry, and no `plain_key`.
    #[cache_evict(of = [Self::plain(id)])]
    async fn a(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }
}

fn main() {}
