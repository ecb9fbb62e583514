#![deny(warnings, clippy::all)]

use std::sync::LazyLock;

use cached_runtime::{Cache, cached};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub id: u64,
}

#[derive(Debug)]
pub struct DbError;

pub struct Service {
    cache: Cache,
}

impl Service {
    /// Plain value.
    #[cached(prefix = "plain", ttl = 300, key = id)]
    pub async fn plain(&self, id: u64) -> Placement {
        Placement { id }
    }

    /// Option, with negative caching.
    #[cached(prefix = "opt", ttl = "5m", key = id, cache_none = "30s")]
    pub async fn opt(&self, id: u64) -> Option<Placement> {
        (id > 0).then_some(Placement { id })
    }

    /// Result.
    #[cached(prefix = "res", ttl = "1h 30m", key = id)]
    pub async fn res(&self, id: u64) -> Result<Placement, DbError> {
        Ok(Placement { id })
    }

    /// Result of Option, with `?` and `return` in the body.
    #[cached(prefix = "res_opt", ttl = "90s", key = (tenant, id), name = "placements")]
    pub async fn res_opt(&self, tenant: &str, mut id: u64) -> Result<Option<Placement>, DbError> {
        id += 1;
        if tenant.is_empty() {
            return Err(DbError);
        }
        let found: Result<u64, DbError> = Ok(id);
        Ok(Some(Placement { id: found? }))
    }

    /// A key template over two parameters, and a parameter not in the key.
    #[cached(prefix = "list", ttl = "2m", key = "video:{video_id}:page:{page}")]
    pub async fn list(&self, video_id: u64, page: u32, trace: String) -> Vec<Placement> {
        let _ = trace;
        vec![Placement { id: video_id + u64::from(page) }]
    }

    /// Every parameter forms the key when none is given.
    #[cached(prefix = "all", ttl = "1m")]
    pub async fn all(&self, a: u64, b: String, c: uuid::Uuid) -> Vec<String> {
        vec![a.to_string(), b, c.to_string()]
    }

    /// No parameters at all.
    #[cached(prefix = "config", ttl = "1h")]
    pub async fn config(&self) -> Vec<String> {
        Vec::new()
    }
}

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::memory);

/// A free function with a static cache and a hashed query key.
#[cached(prefix = "search", ttl = "1m", key = hashed(&query), cache = CACHE)]
pub async fn search(query: Vec<(String, String)>) -> Vec<u64> {
    vec![query.len() as u64]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = Service { cache: Cache::memory() };
    assert_eq!(s.plain(1).await.id, 1);
    assert!(s.opt(0).await.is_none());
    assert_eq!(s.res(2).await.map(|p| p.id).ok(), Some(2));
    assert_eq!(s.res_opt("t", 3).await.ok().flatten().map(|p| p.id), Some(4));
    assert_eq!(s.list(5, 1, String::new()).await[0].id, 6);
    assert_eq!(s.all(1, "b".into(), uuid::Uuid::nil()).await.len(), 3);
    assert!(s.config().await.is_empty());
    assert_eq!(search(vec![("a".into(), "b".into())]).await, vec![1]);
    assert_eq!(s.plain_uncached(9).await.id, 9);
}
