//! Cache-aside for `async fn`s in one attribute, on memory or Redis.
//!
//! ```
//! use cached_runtime::{cached, Cache};
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Placement { id: u64 }
//! # #[derive(Debug)] struct DbError;
//!
//! struct PlacementService { cache: Cache }
//!
//! impl PlacementService {
//!     /// Loads a placement; cached for five minutes under `placement:{id}`.
//!     #[cached(prefix = "placement", ttl = "5m", key = placement_id)]
//!     async fn get_by_id(&self, placement_id: u64) -> Result<Option<Placement>, DbError> {
//!         Ok(Some(Placement { id: placement_id })) // the database query
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = PlacementService { cache: Cache::memory() };
//! let first = service.get_by_id(7).await.unwrap();   // a miss: runs the query
//! let again = service.get_by_id(7).await.unwrap();   // a hit
//! assert_eq!(first.map(|p| p.id), again.map(|p| p.id));
//! assert_eq!(service.cache.stats_for("placement").unwrap().hits, 1);
//! # }
//! ```
//!
//! What the attribute gives, and what this crate does behind it:
//!
//! - **Keys** `{namespace}:{prefix}:{key}`, built from typed [`KeyPart`]s;
//!   user text is escaped so it cannot widen a pattern. [`hashed`] turns a
//!   query struct into a stable 128-bit key part.
//! - **Return types**: `T` is cached; `Option<T>` caches `Some` (and `None`
//!   with `cache_none = "30s"`); `Result<T, E>` caches `Ok` and hands `Err`
//!   back unchanged; `Result<Option<T>, E>` combines both.
//! - **Backends**: memory (quick_cache, the default) and Redis (auto-reconnecting
//!   multiplexed connections). Chosen when the [`Cache`] is built, e.g. by
//!   [`Cache::from_env`] from `REDIS_URL`; annotated code does not change.
//! - **Failures never reach the caller**: every backend operation has a short
//!   timeout; an error or an unreadable entry is a miss, logged (rate-limited)
//!   and counted in [`Cache::stats`].
//!
//! See the attribute's own documentation, [`cached`], for every option.

#![deny(missing_docs)]

mod backend;
mod breaker;
mod cache;
mod canonical;
mod clock;
mod codec;
mod engine;
mod error;
mod glob;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod key;
mod redact;
mod scope;
mod stats;

#[doc(hidden)]
pub mod __private;

pub use backend::near::{
    DEFAULT_NEAR_HEARTBEAT, DEFAULT_NEAR_MAX_BYTES, DEFAULT_NEAR_MAX_TTL, NearCache, NearStats,
};
pub use backend::redis::redis_acl_rule;
pub use breaker::CircuitBreaker;
pub use cache::{
    Cache, CacheBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_NAMESPACE, DEFAULT_OP_TIMEOUT, DEFAULT_TTL_JITTER,
};
pub use codec::{Codec, Compression, EntryMeta};
pub use error::{BuildError, CacheError, LoadTimeout};
pub use key::{Hashed, KeyPart, hashed, push_escaped, push_key_text, push_pattern_part};
pub use scope::{CallMode, Outcome, with_mode, with_outcome};
pub use stats::{CacheStats, names as metric_names};

#[doc(inline)]
pub use cached_macros::{cache_evict, cache_put, cached};

/// Locks `mutex`, poisoned or not: every lock in this crate guards state
/// that each change leaves consistent (one insert, remove or assignment), so
/// a panic elsewhere while it was held leaves nothing half done.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a cached value must be: serializable (to be stored), deserializable
/// (to be read back), `Clone` (a memory hit and a shared load hand out copies)
/// and shareable across tasks.
///
/// Implemented for every type that meets those bounds; nothing to implement
/// by hand.
pub trait Cacheable:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}

impl<T> Cacheable for T where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
