#![allow(dead_code, unused_imports)]

use std::time::Duration;

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // The expansion's own locals begin with `__cached`: this parameter
    // would be shadowed by one, and the body would see `None`.
    #[cached(prefix = "p", ttl = "1m", key = id)]
    async fn get(&self, id: u64, __cached_ttl: Option<Duration>) -> u64 {
        id
    }
}

fn main() {}
