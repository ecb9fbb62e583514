//! The database: SQLite (a file the program creates) by default, PostgreSQL
//! when `DATABASE_URL` says so, through sqlx's `Any` driver so the queries
//! are written once. The program migrates and seeds it itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};

/// A video ad placement: where in a video an ad goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub id: i64,
    pub video_id: i64,
    pub name: String,
    /// Where in the video, in seconds.
    pub position_sec: i64,
    /// Bumped by every update; the HTTP layer's ETag.
    pub version: i64,
}

/// A change to a placement (`PUT /placements/{id}`): fields left out stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementUpdate {
    pub name: Option<String>,
    pub position_sec: Option<i64>,
}

/// `GET /placements?video_id=&limit=&offset=`, normalised: the cache key is a
/// hash of this, so equal queries share an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlacementQuery {
    pub video_id: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

/// A product of the public catalogue (`GET /public/products`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
}

/// A database failure: answered 503, never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError(e.to_string())
    }
}

/// How many videos and placements the sample data has.
pub const SAMPLE_VIDEOS: i64 = 20;
/// Placements per sample video (ids `1..=SAMPLE_VIDEOS * PER_VIDEO`).
pub const PER_VIDEO: i64 = 10;

/// A database transaction.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    kind: &'static str,
}

const COLUMNS: &str = "id, video_id, name, position_sec, version";

fn placement(row: &AnyRow) -> Result<Placement, sqlx::Error> {
    Ok(Placement {
        id: row.try_get("id")?,
        video_id: row.try_get("video_id")?,
        name: row.try_get("name")?,
        position_sec: row.try_get("position_sec")?,
        version: row.try_get("version")?,
    })
}

impl Db {
    /// Connects (creating a SQLite file if needed), migrates and seeds.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await?;
        let db = Db { pool, kind };
        db.migrate().await?;
        db.seed().await?;
        Ok(db)
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    async fn migrate(&self) -> Result<(), DbError> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS placements (
                id BIGINT PRIMARY KEY,
                video_id BIGINT NOT NULL,
                name TEXT NOT NULL,
                position_sec BIGINT NOT NULL,
                version BIGINT NOT NULL
            )",
            "CREATE INDEX IF NOT EXISTS placements_video ON placements (video_id, id)",
            "CREATE TABLE IF NOT EXISTS products (
                id BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                price_cents BIGINT NOT NULL
            )",
        ] {
            sqlx::query(ddl).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Sample data, into an empty database only. Rows deleted since stay
    /// deleted: put back at version 1 on the next start (as an insert of
    /// each missing row did), a row took again the versions, so the
    /// ETags, it had before: a client holding the old row's `"5"` got a 304
    /// for the new row's version 5, and an editor's `If-Match: "5"`
    /// overwrote a row it never saw (found by a review). Versions, and the
    /// ETags made of them, must never be reused for a row.
    async fn seed(&self) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let seeded: i64 = sqlx::query("SELECT COUNT(*) AS n FROM placements")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if seeded > 0 {
            return Ok(());
        }
        for video in 1..=SAMPLE_VIDEOS {
            for n in 0..PER_VIDEO {
                let id = (video - 1) * PER_VIDEO + n + 1;
                sqlx::query(
                    "INSERT INTO placements (id, video_id, name, position_sec, version)
                     VALUES ($1, $2, $3, $4, 1) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(video)
                .bind(format!("video {video} break {}", n + 1))
                .bind(n * 90)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (id, name, price) in [
            (1_i64, "Pre-roll, 15 s", 1_500_i64),
            (2, "Mid-roll, 30 s", 2_500),
            (3, "Post-roll, 15 s", 900),
            (4, "Overlay banner", 400),
        ] {
            sqlx::query(
                "INSERT INTO products (id, name, price_cents) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(price)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn placement(&self, id: i64) -> Result<Option<Placement>, DbError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM placements WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(placement).transpose()?)
    }

    /// A transaction, for a write that must hold its row's lock while the
    /// cache is told about it.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(self.pool.begin().await?)
    }

    /// Applies the update and bumps the version, inside `tx` (which then
    /// holds the row's lock until it ends). With `expected`, only if the row
    /// is still at that version (the one an HTTP precondition was checked
    /// against), in the same statement, so no write can come between.
    /// `None`: no such row, or not at `expected`.
    pub async fn update(
        tx: &mut Tx,
        id: i64,
        update: &PlacementUpdate,
        expected: Option<i64>,
    ) -> Result<Option<Placement>, DbError> {
        let row = sqlx::query(&format!(
            "UPDATE placements
             SET name = COALESCE($1, name),
                 position_sec = COALESCE($2, position_sec),
                 version = version + 1
             WHERE id = $3 AND ($4 < 0 OR version = $4)
             RETURNING {COLUMNS}"
        ))
        .bind(update.name.clone())
        .bind(update.position_sec)
        .bind(id)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.as_ref().map(placement).transpose()?)
    }

    /// Deletes the row (with `expected`, only at that version); returns its
    /// video, or `None` if there was no such row.
    pub async fn delete(&self, id: i64, expected: Option<i64>) -> Result<Option<i64>, DbError> {
        let row = sqlx::query(
            "DELETE FROM placements WHERE id = $1 AND ($2 < 0 OR version = $2) RETURNING video_id",
        )
        .bind(id)
        .bind(expected.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("video_id")).transpose()?)
    }

    /// The placements among `ids` that exist, in one query
    /// (`WHERE id IN (...)`); a batch of the cache's misses.
    pub async fn placements(&self, ids: &[i64]) -> Result<Vec<Placement>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params = (1..=ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT {COLUMNS} FROM placements WHERE id IN ({params})");
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(placement).collect::<Result<_, _>>()?)
    }

    /// The ids of a video's placements, in order.
    pub async fn ids_by_video(&self, video_id: i64) -> Result<Vec<i64>, DbError> {
        let rows = sqlx::query("SELECT id FROM placements WHERE video_id = $1 ORDER BY id")
            .bind(video_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    /// The ids a query selects, in order.
    pub async fn query_ids(&self, q: &PlacementQuery) -> Result<Vec<i64>, DbError> {
        let limit = i64::from(q.limit);
        let offset = i64::from(q.offset);
        let rows =
            match q.video_id {
                Some(video_id) => sqlx::query(
                    "SELECT id FROM placements WHERE video_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
                )
                .bind(video_id)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT id FROM placements ORDER BY id LIMIT $1 OFFSET $2")
                        .bind(limit)
                        .bind(offset)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    pub async fn products(&self) -> Result<Vec<Product>, DbError> {
        let rows = sqlx::query("SELECT id, name, price_cents FROM products ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Product {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    price_cents: r.try_get("price_cents")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool: every later query fails (for tests of the 503 path).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
