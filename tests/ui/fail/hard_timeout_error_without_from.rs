#![allow(dead_code, unused_variables)]

use cached_runtime::{cached, Cache};

#[derive(Debug, Clone)]
struct DbError;

struct Service {
    cache: Cache,
}

impl Service {
    // `DbError` has no `From<LoadTimeout>`.
    #[cached(prefix = "placement", ttl = "5m", key = id, hard_timeout = "2s")]
    async fn get(&self, id: u64) -> Result<u64, DbError> {
        Ok(id)
    }
}

fn main() {}
