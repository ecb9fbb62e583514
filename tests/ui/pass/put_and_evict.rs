#![deny(warnings, clippy::all)]

use cached_runtime::{Cache, cache_evict, cache_put, cached};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub id: u64,
    pub video_id: u64,
}

#[derive(Debug)]
pub struct DbError;

pub struct Service {
    cache: Cache,
}

impl Service {
    /// Read, tagged by video.
    #[cached(prefix = "placement", ttl = "5m", key = id, tags = ["video:{video_id}"])]
    pub async fn get(&self, id: u64, video_id: u64) -> Result<Option<Placement>, DbError> {
        Ok(Some(Placement { id, video_id }))
    }

    /// Write-through on every return shape.
    #[cache_put(prefix = "placement", ttl = "5m", key = id, tags = ["video:{video_id}"])]
    pub async fn update(&self, id: u64, video_id: u64) -> Result<Placement, DbError> {
        Ok(Placement { id, video_id })
    }

    /// `None` invalidates.
    #[cache_put(prefix = "placement", ttl = "5m", key = id, stale = "1h")]
    pub async fn maybe(&self, id: u64) -> Option<Placement> {
        (id > 0).then_some(Placement { id, video_id: 0 })
    }

    /// Every kind of eviction at once; `video_id` is used only by templates.
    #[cache_evict(
        keys = ["placement:{id}", "video:{video_id}:placements"],
        patterns = ["video:{video_id}:page:*"],
        prefixes = ["search"],
        tags = ["video:{video_id}"]
    )]
    pub async fn delete(&self, id: u64, video_id: u64) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }

    /// A plain function: always evicts.
    #[cache_evict(prefixes = ["placement"])]
    pub async fn clear(&self) {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = Service { cache: Cache::memory() };
    assert!(s.get(1, 2).await.is_ok());
    assert!(s.update(1, 2).await.is_ok());
    assert!(s.maybe(0).await.is_none());
    assert!(s.delete(1, 2).await.is_ok());
    s.clear().await;
    assert!(s.delete_uncached(1, 2).await.is_ok());
}
