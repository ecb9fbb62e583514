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

    // `get_by_id` takes a `u64`; this passes a name, and one argument too many.
    #[cache_evict(of = [Self::get_by_id(name), Self::get_by_id(id, id)])]
    async fn rename(&self, id: u64, name: String) -> Result<(), ()> {
        Ok(())
    }
}

fn main() {}
