#![deny(warnings)]

// The runtime reached through another path, as a re-exporting crate would.
mod deps {
    pub use cached_runtime as cache_rt;
}

use deps::cache_rt::{Cache, cached};

struct Service {
    cache: std::sync::Arc<Cache>,
}

impl Service {
    #[cached(prefix = "n", ttl = "1m", key = id, crate = "crate::deps::cache_rt")]
    async fn double(&self, id: u64) -> u64 {
        id * 2
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = Service { cache: std::sync::Arc::new(Cache::memory()) };
    assert_eq!(s.double(21).await, 42);
}
