//! The [`Cache`] handle: what an application builds once and shares, and the
//! typed API that does by hand what the attributes generate.

mod builder;
mod connect;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

pub use builder::{
    CacheBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_NAMESPACE, DEFAULT_OP_TIMEOUT, DEFAULT_TTL_JITTER,
};

use crate::Cacheable;
use crate::backend::BackendError;
use crate::engine::Engine;
use crate::engine::policy::{Call, Keep, Policy};
use crate::error::{BuildError, CacheError};
use crate::key::{TAG_PREFIX, stats_name};
use crate::stats::CacheStats;

/// A cache: a backend, a namespace and the policies around them.
///
/// Cheap to clone (an `Arc`), `Send + Sync`; build one at startup and share it.
/// The `#[cached]` attribute finds it at `self.cache` unless told otherwise.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use cached_runtime::Cache;
///
/// let cache = Cache::memory();
/// cache.set("greeting:en", &"hello".to_string(), Duration::from_secs(60)).await;
/// assert_eq!(cache.get::<String>("greeting:en").await.as_deref(), Some("hello"));
/// # }
/// ```
#[derive(Clone)]
pub struct Cache {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.engine.backend)
            .field("namespace", &self.engine.namespace)
            .field("op_timeout", &self.engine.op_timeout)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A builder with the defaults: memory backend, namespace `cache`,
    /// 50 ms operation timeout.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// An in-process cache with the default settings.
    pub fn memory() -> Cache {
        CacheBuilder::default().build_memory()
    }

    /// Redis when `REDIS_URL` is set, memory otherwise, with the credentials
    /// and TLS settings of the other `REDIS_*` variables
    /// ([`CacheBuilder::from_env`] lists them); other settings default.
    ///
    /// Fails on a malformed `REDIS_URL` or TLS settings that cannot be used,
    /// naming the variable; an unreachable server is not an error (the cache
    /// falls through to the loaders until it is reachable).
    pub fn from_env() -> Result<Cache, BuildError> {
        Cache::builder().from_env().build()
    }

    /// The engine behind this handle: what generated code calls.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The namespace every key of this cache starts with.
    pub fn namespace(&self) -> &str {
        &self.engine.namespace
    }

    /// Whether the cache is on (see [`CacheBuilder::enabled`]).
    pub fn is_enabled(&self) -> bool {
        self.engine.enabled
    }

    /// The near tier's counters (see
    /// [`CacheBuilder::near_cache`]), or `None` without one.
    pub fn near_stats(&self) -> Option<crate::NearStats> {
        match &self.engine.backend {
            crate::backend::Backend::Near(near) => Some(near.stats()),
            _ => None,
        }
    }

    /// `"memory"`, `"redis"`, `"redis-cluster"`, or `"redis+near"` (Redis
    /// with the near tier).
    pub fn backend_kind(&self) -> &'static str {
        self.engine.backend.kind()
    }

    /// The full key stored for `key`: `{namespace}:{key}`.
    pub fn full_key(&self, key: &str) -> String {
        if self.engine.namespace.is_empty() {
            key.to_owned()
        } else {
            format!("{}:{key}", self.engine.namespace)
        }
    }

    /// Reads `key` (relative to the namespace). Absent, expired (stale ones
    /// too), unreadable and failed reads are all `None`, counted as misses;
    /// failures are logged and counted.
    ///
    /// Keys given by hand (here and in [`set`](Cache::set),
    /// [`invalidate`](Cache::invalidate) and [`get_or_load`](Cache::get_or_load))
    /// may not have a `:`-separated segment `~lease`, `~tag`, `~epoch`,
    /// `~tags` or `~ltags`: such names are the cache's own (leases, tag
    /// indexes). One is refused (`None` here, nothing written by `set`, a
    /// `reserved_key` error from `invalidate`, the loader alone in
    /// `get_or_load`), and counted and logged as a failure. No key the
    /// macros build has one.
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        let full = self.full_key(key);
        let counters = self.engine.stats.counters(stats_name(key));
        if self.refused(key, "get", &counters) {
            return None;
        }
        if !self.engine.enabled || self.engine.pending.blocks(&full) {
            // A change of the key has not reached the backend yet.
            counters.misses.add();
            return None;
        }
        // The near tier's in-process copy first, as every cached call does.
        let (fetched, took) = match self.engine.backend.l1_hit(&full, &[]) {
            Some(hit) => (Ok(hit), None),
            None => self.engine.fetch_timed(&full, &[], &counters).await,
        };
        let read = match self.engine.interpret::<T>(&full, &counters, fetched) {
            // Past its TTL, in its stale window: not served here (no
            // refresh would follow), so a miss, not a hit and a stale one.
            crate::engine::Read::Stale(..) => crate::engine::Read::Miss,
            read => read,
        };
        self.engine.count_read(&full, &counters, &read, took);
        match read {
            crate::engine::Read::Fresh(value, _) => value,
            _ => None,
        }
    }

    /// Writes `value` under `key` (relative to the namespace) for `ttl`
    /// (plus the cache's jitter): a write-through, so it also destroys any
    /// lease on the key and no load in flight can overwrite it with an older
    /// value. A failed write is logged and counted.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) {
        let full = self.full_key(key);
        let counters = self.engine.stats.counters(stats_name(key));
        if self.refused(key, "set", &counters) {
            return;
        }
        let keep = Keep {
            ttl,
            stale: Duration::ZERO,
            load_time: Duration::ZERO,
        };
        // Dropped before it finishes (a request timeout), the write is
        // retried as an invalidation rather than left half done.
        let keys = [full];
        let write = self
            .engine
            .write(&keys[0], Some(value), keep, &[], &counters);
        self.engine.guarded(&keys, &[], &[], write).await;
    }

    /// Whether `key` (given by hand) names one the cache keeps for itself
    /// (a lease, a tag index, an epoch: see `key::is_reserved`): if so the
    /// operation `op` is refused, counted and logged as a failure, and the
    /// backend is not asked.
    fn refused(&self, key: &str, op: &'static str, counters: &crate::stats::Counters) -> bool {
        let reserved = crate::key::is_reserved(key);
        if reserved {
            self.engine
                .backend_failed(key, op, &BackendError::ReservedKey, counters);
        }
        reserved
    }

    /// The full key of a tag's index: `{namespace}:~tag:{tag}`.
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        self.full_key(&format!("{TAG_PREFIX}:{tag}"))
    }

    /// Removes the entry under `key` (relative to the namespace) and
    /// destroys any lease on it, so a load already in flight cannot write the
    /// value it read before the change. Returns the backend's error, which
    /// is also logged and counted; cached calls never see it.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.invalidate_many([key]).await
    }

    /// [`invalidate`](Cache::invalidate) for several keys, in one round trip.
    pub async fn invalidate_many<I, K>(&self, keys: I) -> Result<(), CacheError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys: Vec<String> = keys
            .into_iter()
            .map(|k| {
                let k = k.as_ref();
                // (Counters looked up only for a key refused.)
                if crate::key::is_reserved(k) {
                    let counters = self.engine.stats.counters(stats_name(k));
                    self.refused(k, "invalidate", &counters);
                    return Err(CacheError(BackendError::ReservedKey));
                }
                Ok(self.full_key(k))
            })
            .collect::<Result<_, _>>()?;
        // Dropped before it finishes (a request timeout), the change is
        // retried, as a failed one is, rather than lost with the future.
        let invalidation = self.engine.invalidate_full(&keys);
        self.engine.guarded(&keys, &[], &[], invalidation).await
    }

    /// Removes every entry whose key (relative to the namespace) matches the
    /// glob `pattern` (Redis syntax: `*`, `?`, `[a-z]`, `\\x`), with SCAN and
    /// UNLINK in batches on Redis (never `KEYS`). Returns how many keys were
    /// removed. Text from users belongs in a key part (of a
    /// `#[cache_evict]` pattern template), or goes through
    /// [`push_pattern_part`](crate::push_pattern_part) for entries an
    /// attribute stored ([`push_escaped`](crate::push_escaped) for keys
    /// given by hand), never raw in a pattern.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let namespace = &self.engine.namespace;
        let mut full = String::with_capacity(namespace.len() + pattern.len() + 1);
        if !namespace.is_empty() {
            crate::push_escaped(&mut full, namespace);
            full.push(':');
        }
        full.push_str(pattern);
        // As `invalidate_many`: dropped, retried.
        let patterns = [full];
        let invalidation = self.engine.invalidate_pattern_full(&patterns[0]);
        self.engine.guarded(&[], &patterns, &[], invalidation).await
    }

    /// Removes every entry cached with `tag` (the `tags` option of
    /// `#[cached]`), including entries whose loads were in flight. Returns how
    /// many entries were removed.
    ///
    /// `tag` is the text the macro wrote, parts escaped as in keys: the tag
    /// `"video:{video_id}"` of `video_id = "a:b"` is `video:a\:b`. Build it
    /// with [`push_key_text`](crate::push_key_text) from user text.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        // As `invalidate_many`: dropped, retried.
        let tags = [self.tag_key(tag)];
        let invalidation = self.engine.invalidate_tag_full(&tags[0]);
        self.engine.guarded(&[], &[], &tags, invalidation).await
    }

    /// Returns the value under `key`, or runs `load`, caches its `Ok` value
    /// for `ttl` and returns it. A loader error is returned as is and nothing
    /// is cached. Concurrent callers of one key share one load, and across
    /// processes one caller holds a lease while the others wait for its
    /// value. This is what `#[cached]` does, without the macro.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cached_runtime::Cache;
    ///
    /// let cache = Cache::memory();
    /// let v: Result<u32, std::io::Error> =
    ///     cache.get_or_load("answer", Duration::from_secs(5), || async { Ok(42) }).await;
    /// assert_eq!(v.unwrap(), 42);
    /// # }
    /// ```
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, ttl: Duration, load: F) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let full = self.full_key(key);
        let counters = self.engine.stats.counters(stats_name(key));
        if self.refused(key, "get", &counters) {
            return load().await;
        }
        let policy = Policy::new(ttl);
        let call: Call<'_, T, T> = Call {
            key: full,
            counters: Cow::Borrowed(&counters),
            policy: std::borrow::Cow::Borrowed(&policy),
            tags: &[],
            shape: std::marker::PhantomData,
        };
        self.engine.load_through(call, load, None, None).await
    }

    /// Checks that the backend answers within the operation timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        self.engine
            .backend
            .ping(self.engine.op_timeout)
            .await
            .map_err(CacheError)
    }

    /// Whether the circuit breaker in front of the backend is open: calls
    /// are skipping the backend and going to their loaders. For health pages.
    pub fn breaker_open(&self) -> bool {
        self.engine.backend.breaker_open()
    }

    /// A snapshot of the counters of every cache name used so far, by name.
    pub fn stats(&self) -> Vec<CacheStats> {
        self.engine.stats.snapshot()
    }

    /// The counters of one cache name, if it has been used.
    pub fn stats_for(&self, name: &str) -> Option<CacheStats> {
        self.stats().into_iter().find(|s| s.name == name)
    }
}
