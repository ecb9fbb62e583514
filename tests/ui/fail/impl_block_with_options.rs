#![allow(dead_code)]

use cached_runtime::{cached, Cache};

struct Store {
    cache: Cache,
}

trait Repo {
    async fn get(&self, id: u64) -> u64;
}

// The options go on each method, not on the block.
#[cached(prefix = "item", ttl = "5m")]
impl Repo for Store {
    #[cached(prefix = "item", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
