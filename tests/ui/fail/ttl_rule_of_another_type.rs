#![allow(dead_code, unused_variables)]

use std::time::Duration;

use cached_runtime::{cached, Cache};

struct Service {
    cache: Cache,
}

impl Service {
    // The function returns a `u64`; the rule reads a `String`.
    #[cached(prefix = "placement", ttl = |s: &String| Duration::from_secs(1), max_ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
