#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

#[derive(Debug)]
struct Timeout;

impl From<cached_runtime::LoadTimeout> for Timeout {
    fn from(_: cached_runtime::LoadTimeout) -> Self {
        Timeout
    }
}

struct Service {
    cache: Cache,
}

impl Service {
    // The load is dropped at the hard timeout, before the soft one.
    #[cached(prefix = "placement", ttl = "5m", key = id, stale = "1h",
             hard_timeout = "1s", soft_timeout = "2s")]
    async fn get(&self, id: u64) -> Result<u64, Timeout> {
        Ok(id)
    }
}

fn main() {}
