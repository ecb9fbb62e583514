//! The systems measured side by side, each as a user would write it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cached::AsyncRedisCache;
use cached::macros::concurrent_cached;
use cached_runtime::{Cache, cached};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

use crate::fixture::Placement;

/// `this`: the framework, through the macro.
#[derive(Clone)]
pub struct This {
    pub cache: Cache,
    pub loads: std::sync::Arc<AtomicU64>,
    pub load_time: Duration,
}

impl This {
    pub fn new(cache: Cache, load_time: Duration) -> This {
        This {
            cache,
            loads: Default::default(),
            load_time,
        }
    }

    async fn load(&self, id: u64) -> Placement {
        self.loads.fetch_add(1, Ordering::Relaxed);
        if !self.load_time.is_zero() {
            tokio::time::sleep(self.load_time).await;
        }
        Placement::sample(id)
    }

    #[cached(prefix = "placement", ttl = "1h", key = id)]
    pub async fn get(&self, id: u64) -> Placement {
        self.load(id).await
    }

    /// `get` without single flight, so without shared reads: every call
    /// is its own GET (`concurrent_hit`'s `this_unshared`).
    #[cached(prefix = "placement", ttl = "1h", key = id, lock = false)]
    pub async fn get_unshared(&self, id: u64) -> Placement {
        self.load(id).await
    }

    #[cached(prefix = "hot", ttl = "1s", key = id, early_refresh = true)]
    pub async fn get_early(&self, id: u64) -> Placement {
        self.load(id).await
    }

    #[cached(prefix = "hot", ttl = "1s", key = id)]
    pub async fn get_hot(&self, id: u64) -> Placement {
        self.load(id).await
    }
}

/// `raw_redis`: redis-rs GET and a serde_json decode, nothing else.
pub async fn raw_get(conn: &mut ConnectionManager, key: &str) -> Option<Placement> {
    let bytes: Option<Vec<u8>> = conn.get(key).await.ok()?;
    serde_json::from_slice(&bytes?).ok()
}

/// `hand_written`: the seed guide's cache-aside, in Rust.
pub async fn hand_written_get<F, Fut>(
    conn: &mut ConnectionManager,
    key: &str,
    ttl_secs: u64,
    load: F,
) -> Placement
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Placement>,
{
    if let Ok(Some(bytes)) = conn.get::<_, Option<Vec<u8>>>(key).await
        && let Ok(p) = serde_json::from_slice(&bytes)
    {
        return p;
    }
    let placement = load().await;
    if let Ok(json) = serde_json::to_vec(&placement) {
        let _: Result<(), _> = conn.set_ex(key, json, ttl_secs).await;
    }
    placement
}

/// `seed_lock`: the guide's lock-based stampede prevention, bugs and all:
/// SET NX EX 10, a 100 ms sleep and a retry by recursion, and a release
/// without an owner check.
pub fn seed_lock_get<'a, F, Fut>(
    conn: &'a mut ConnectionManager,
    key: &'a str,
    load: F,
) -> std::pin::Pin<Box<dyn Future<Output = Placement> + Send + 'a>>
where
    F: Fn() -> Fut + Send + Sync + 'a,
    Fut: Future<Output = Placement> + Send,
{
    Box::pin(async move {
        if let Ok(Some(bytes)) = conn.get::<_, Option<Vec<u8>>>(key).await
            && let Ok(p) = serde_json::from_slice(&bytes)
        {
            return p;
        }
        let lock_key = format!("lock:{key}");
        let acquired: Option<String> = redis::cmd("SET")
            .arg(&lock_key)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(10)
            .query_async(conn)
            .await
            .unwrap_or(None);
        if acquired.is_some() {
            let placement = load().await;
            if let Ok(json) = serde_json::to_vec(&placement) {
                let _: Result<(), _> = conn.set_ex(key, json, 300).await;
            }
            let _: Result<(), _> = conn.del(&lock_key).await;
            placement
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seed_lock_get(conn, key, load).await
        }
    })
}

/// Where the `cached` crate's store connects.
pub static CACHED_CRATE_URL: OnceLock<String> = OnceLock::new();
/// Loads made through the `cached` crate's functions.
pub static CACHED_CRATE_LOADS: AtomicU64 = AtomicU64::new(0);
/// How long a `cached` crate load takes.
pub static CACHED_CRATE_LOAD_MS: AtomicU64 = AtomicU64::new(0);

/// The `cached` crate's functions must return a `Result` for its store errors.
#[derive(Debug, Clone)]
pub struct BenchError(#[allow(dead_code)] pub String);

/// `cached_crate`: the `cached` crate's Redis store, through its macro.
#[concurrent_cached(
    map_error = |e| BenchError(format!("{e:?}")),
    ty = "AsyncRedisCache<u64, Placement>",
    create = r##"{
        AsyncRedisCache::builder("cc-placement")
            .ttl(Duration::from_secs(3600))
            .connection_string(CACHED_CRATE_URL.get().map(String::as_str).unwrap_or("redis://127.0.0.1:6379"))
            .build()
            .await
            .expect("the cached crate's Redis store connects")
    }"##
)]
pub async fn cached_crate_get(id: u64) -> Result<Placement, BenchError> {
    CACHED_CRATE_LOADS.fetch_add(1, Ordering::Relaxed);
    let ms = CACHED_CRATE_LOAD_MS.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(Placement::sample(id))
}

/// Where the `cached` crate's store for `redis_frozen` connects: a server of
/// its own, frozen during the scenario.
pub static CACHED_CRATE_FROZEN_URL: OnceLock<String> = OnceLock::new();

/// `cached_crate` for `redis_frozen`: the same store, on its own server.
#[concurrent_cached(
    map_error = |e| BenchError(format!("{e:?}")),
    ty = "AsyncRedisCache<u64, Placement>",
    create = r##"{
        AsyncRedisCache::builder("cc-frozen")
            .ttl(Duration::from_secs(3600))
            .connection_string(CACHED_CRATE_FROZEN_URL.get().map(String::as_str).unwrap_or("redis://127.0.0.1:6379"))
            .build()
            .await
            .expect("the cached crate's Redis store connects")
    }"##
)]
pub async fn cached_crate_frozen_get(id: u64) -> Result<Placement, BenchError> {
    crate::scenarios::faults::load(id).await
}

/// Where the `cached` crate's store for `redis_killed` connects: a server
/// of its own, killed and restarted during the scenario.
pub static CACHED_CRATE_KILLED_URL: OnceLock<String> = OnceLock::new();

/// `cached_crate` for `redis_killed`: the same store, on its own server.
#[concurrent_cached(
    map_error = |e| BenchError(format!("{e:?}")),
    ty = "AsyncRedisCache<u64, Placement>",
    create = r##"{
        AsyncRedisCache::builder("cc-killed")
            .ttl(Duration::from_secs(3600))
            .connection_string(CACHED_CRATE_KILLED_URL.get().map(String::as_str).unwrap_or("redis://127.0.0.1:6379"))
            .build()
            .await
            .expect("the cached crate's Redis store connects")
    }"##
)]
pub async fn cached_crate_killed_get(id: u64) -> Result<Placement, BenchError> {
    crate::scenarios::faults::load(id).await
}
