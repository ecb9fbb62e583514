#![allow(dead_code)]

use cached_runtime::{cache_evict, cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "placement", ttl = "5m", key = id)]
    async fn get_by_id(&self, id: u64) -> Option<u64> {
        Some(id)
    }

    // The function, not a call of it.
    #[cache_evict(of = [Self::get_by_id])]
    async fn a(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }

    // Nothing to remove.
    #[cache_evict(of = [])]
    async fn b(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }

    // Not a list.
    #[cache_evict(of = Self::get_by_id(id))]
    async fn c(&self, id: u64) -> Result<(), ()> {
        Ok(())
    }
}

fn main() {}
