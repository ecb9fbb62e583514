#![allow(dead_code)]

use cached_runtime::{cache_put, Cache};

struct Service {
    cache: Cache,
}

trait Repo {
    async fn get(&self, id: u64) -> u64;
}

// Only `#[cached]` goes on an impl block.
#[cache_put]
impl Repo for Service {
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
