//! `PlacementService`: the seed guide's service, each cache pattern one
//! attribute. No cache code is written by hand here.

use std::collections::HashMap;
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

    /// Updates a placement: write-through (the lists read their members
    /// through the same entries, so they show it too).
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
        // The lists hold ids, which an update does not change; their
        // members are read through `get_many`, which sees this write.
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

    #[cache_evict(of = [Self::get_by_id(id)])]
    async fn forget(&self, id: i64) {
        let _ = id;
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

    #[cache_evict(of = [Self::get_by_id(id), Self::video_ids(video_id)], tags = ["placements"])]
    async fn evict_deleted(&self, id: i64, video_id: i64) {
        let _ = (id, video_id);
    }

    /// Placements by id: every id's entry read in one round trip, the
    /// misses loaded in one query, written back in one round trip. The
    /// entries are `get_by_id`'s (same prefix, same key), so a write-through
    /// shows here at once. Unknown ids are left out, and remembered 30 s.
    #[cached(prefix = "placement", ttl = "5m", key = ids, cache_none = "30s", batch)]
    pub async fn get_many(&self, ids: Vec<i64>) -> Result<HashMap<i64, Placement>, DbError> {
        let rows = self.db.placements(&ids).await?;
        Ok(rows.into_iter().map(|p| (p.id, p)).collect())
    }

    /// A video's placements, in id order: its ids cached 90 s (evicted
    /// when one of them is deleted), the placements from `get_many`.
    pub async fn by_video(&self, video_id: i64) -> Result<Vec<Placement>, DbError> {
        let ids = self.video_ids(video_id).await?;
        self.in_order(ids).await
    }

    #[cached(prefix = "video", ttl = "90s", key = "{video_id}:placement_ids")]
    async fn video_ids(&self, video_id: i64) -> Result<Vec<i64>, DbError> {
        self.db.ids_by_video(video_id).await
    }

    /// A query's placements: the ids it selects cached under a stable hash
    /// of its parameters (every delete evicts the `placements` tag, so no
    /// result lists a deleted row), the placements from `get_many`.
    pub async fn query(&self, query: PlacementQuery) -> Result<Vec<Placement>, DbError> {
        let ids = self.query_ids(query).await?;
        self.in_order(ids).await
    }

    #[cached(prefix = "placements_query", ttl = "1m", key = hashed(&query), tags = ["placements"])]
    async fn query_ids(&self, query: PlacementQuery) -> Result<Vec<i64>, DbError> {
        self.db.query_ids(&query).await
    }

    /// The placements of `ids` that exist, in the order of `ids`.
    async fn in_order(&self, ids: Vec<i64>) -> Result<Vec<Placement>, DbError> {
        let mut found = self.get_many(ids.clone()).await?;
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The public catalogue, cached for an hour.
    #[cached(prefix = "products", ttl = "1h", key = "all")]
    pub async fn products(&self) -> Result<Vec<Product>, DbError> {
        self.db.products().await
    }
}
