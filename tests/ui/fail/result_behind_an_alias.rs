#![allow(dead_code, unused_imports)]

use cached_runtime::{cache_put, cached, Cache};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Oops;

type Res<T> = Result<T, Oops>;
type Maybe<T> = Option<T>;

struct Service {
    cache: Cache,
}

impl Service {
    // Read as a plain value, `Err(Oops)` would be cached as one.
    #[cached(prefix = "res", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Res<u64> {
        Ok(id)
    }

    // `None` would be cached without `cache_none`.
    #[cached(prefix = "maybe", ttl = "5m", key = id)]
    async fn find(&self, id: u64) -> Maybe<u64> {
        Some(id)
    }

    // The value of a `Result`: `Ok(None)` cached.
    #[cached(prefix = "ok", ttl = "5m", key = id)]
    async fn lookup(&self, id: u64) -> Result<Maybe<u64>, Oops> {
        Ok(Some(id))
    }

    // A write-through would replace the entry with `Err(Oops)`.
    #[cache_put(prefix = "res", ttl = "5m", key = id)]
    async fn save(&self, id: u64) -> Res<u64> {
        Ok(id)
    }
}

fn main() {}
