#![allow(dead_code)]

use cached_runtime::{cache_evict, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // Compiled and removed nothing before; now an error.
    #[cache_evict(keys = [])]
    async fn a(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }

    #[cache_evict(keys = ["placement:{id}"], tags = [])]
    async fn b(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }
}

fn main() {}
