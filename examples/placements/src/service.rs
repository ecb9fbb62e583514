//! `PlacementService`: the seed guide's service, each cache pattern one
//! attribute. No cache code is written by hand here.

use std::sync::Arc;

use cached_runtime::{Cache, cache_evict, cache_put, cached};

use crate::db::{Db, DbError, Placement, PlacementQuery, PlacementUpdate, Product};

#[derive(Debug, Clone)]
pub struct PlacementService {
    pub cache: Cache,
    db: Arc<Db>,
}

impl PlacementService {
    pub fn new(cache: Cache, db: Db) -> PlacementService {
        PlacementService {
            cache,
            db: Arc::new(db),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Cache-aside, 5 minutes; an unknown id is remembered for 30 s
    /// (negative caching), so a scan of missing ids does not reach the
    /// database each time.
    #[cached(prefix = "placement", ttl = "5m", key = id, cache_none = "30s")]
    pub async fn get_by_id(&self, id: i64) -> Result<Option<Placement>, DbError> {
        self.db.placement(id).await
    }

    /// Updates a placement: write-through, then its video's list and every
    /// query result go.
    ///
    /// The cache is written while the transaction holds the row's lock, so
    /// two updates (or an update and a delete) reach the cache in the order
    /// they reach the database: written after the commit, a slower first
    /// update could overwrite a faster second one, or bring back a row just
    /// deleted. If the commit then fails, the entry is evicted.
    ///
    /// With `expected`, the update applies only to the row at that version
    /// (see `Db::update`); `None` then also means it was at another one.
    pub async fn update(
        &self,
        id: i64,
        update: PlacementUpdate,
        expected: Option<i64>,
    ) -> Result<Option<Placement>, DbError> {
        let mut tx = self.db.begin().await?;
        let row = Db::update(&mut tx, id, &update, expected).await?;
        let row = self.write_through(id, row).await;
        if let Err(e) = tx.commit().await {
            self.forget(id).await;
            return Err(e.into());
        }
        if let Some(p) = &row {
            self.lists_changed(p.video_id).await;
        }
        Ok(row)
    }

    /// Write-through: the updated row replaces the cached one (and ends any
    /// load in flight for it, so an older read cannot be stored after this);
    /// `None` (no such row) evicts it.
    #[cache_put(prefix = "placement", ttl = "5m", key = id)]
    async fn write_through(&self, id: i64, row: Option<Placement>) -> Option<Placement> {
        let _ = id;
        row
    }

    #[cache_evict(keys = ["placement:{id}"])]
    async fn forget(&self, id: i64) {
        let _ = id;
    }

    #[cache_evict(keys = ["video:{video_id}:placements"], tags = ["placements"])]
    async fn lists_changed(&self, video_id: i64) {
        let _ = video_id;
    }

    /// Deletes, then evicts: the row first, so that no reader can load the
    /// old row between the eviction and the delete (the seed guide reads
    /// the row after deleting it to find what to evict, and evicts first).
    /// `false`: there was no such placement (with `expected`: none at that
    /// version).
    pub async fn delete(&self, id: i64, expected: Option<i64>) -> Result<bool, DbError> {
        match self.db.delete(id, expected).await? {
            Some(video_id) => {
                self.evict_deleted(id, video_id).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    #[cache_evict(keys = ["placement:{id}", "video:{video_id}:placements"], tags = ["placements"])]
    async fn evict_deleted(&self, id: i64, video_id: i64) {
        let _ = (id, video_id);
    }

    /// A video's placements, cached 90 s, evicted by any write to one of
    /// them.
    #[cached(prefix = "video", ttl = "90s", key = "{video_id}:placements")]
    pub async fn by_video(&self, video_id: i64) -> Result<Vec<Placement>, DbError> {
        self.db.by_video(video_id).await
    }

    /// A query, cached under a stable hash of its parameters; every write
    /// evicts the `placements` tag, so no result outlives a change.
    #[cached(prefix = "placements_query", ttl = "1m", key = hashed(&query), tags = ["placements"])]
    pub async fn query(&self, query: PlacementQuery) -> Result<Vec<Placement>, DbError> {
        self.db.query(&query).await
    }

    /// The public catalogue, cached for an hour.
    #[cached(prefix = "products", ttl = "1h", key = "all")]
    pub async fn products(&self) -> Result<Vec<Product>, DbError> {
        self.db.products().await
    }
}
