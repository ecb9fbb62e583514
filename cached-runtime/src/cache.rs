//! The [`Cache`] handle, its builder, and get-or-load.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Cacheable;
use crate::backend::{
    Backend, BackendError, Fetched, Lookup, memory::MemoryBackend, redis::RedisBackend,
};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::codec::EntryMeta;
use crate::error::{BuildError, CacheError};
use crate::load::{Call, Flights, Policy, Read};

use crate::stats::{CacheStats, Counters, LogLimiter, Registry};

/// The default time one backend operation may take before the cache gives up
/// on it and the caller falls through to its loader.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(50);
/// The default time to establish a backend connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// The default namespace: the first segment of every key.
pub const DEFAULT_NAMESPACE: &str = "cache";
/// The default bound on the number of entries of the memory backend.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// The default TTL jitter: up to this fraction of the TTL is added at random.
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// One Redis read in this many is timed for `cache_latency_seconds{op="get"}`.
pub(crate) const LATENCY_SAMPLE: u32 = 16;
/// The default size limit of one stored value (its encoded form), 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

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
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique for the process's lifetime (an address could be reused).
    id: u64,
    backend: Backend,
    namespace: String,
    op_timeout: Duration,
    ttl_jitter: f64,
    strict: bool,
    stats: Registry,
    warnings: LogLimiter,
    flights: Flights,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend)
            .field("namespace", &self.inner.namespace)
            .field("op_timeout", &self.inner.op_timeout)
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
        // The default settings are valid, so this cannot fail.
        Cache::from_parts(
            Backend::Memory(MemoryBackend::new(DEFAULT_MAX_ENTRIES)),
            CacheBuilder::default(),
        )
    }

    /// Redis when `REDIS_URL` is set, memory otherwise; other settings default.
    ///
    /// Fails only on a malformed `REDIS_URL`; an unreachable server is not an
    /// error (the cache falls through to the loaders until it is reachable).
    pub fn from_env() -> Result<Cache, BuildError> {
        Cache::builder().from_env().build()
    }

    fn from_parts(backend: Backend, b: CacheBuilder) -> Cache {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Cache {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                backend,
                namespace: b.namespace,
                op_timeout: b.op_timeout,
                ttl_jitter: b.ttl_jitter,
                strict: b.strict,
                stats: Registry::default(),
                warnings: LogLimiter::default(),
                flights: Flights::default(),
            }),
        }
    }

    /// The namespace every key of this cache starts with.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// `"memory"` or `"redis"`.
    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    /// The full key stored for `key`: `{namespace}:{key}`.
    pub fn full_key(&self, key: &str) -> String {
        if self.inner.namespace.is_empty() {
            key.to_owned()
        } else {
            format!("{}:{key}", self.inner.namespace)
        }
    }

    /// Reads `key` (relative to the namespace). Absent, expired, unreadable
    /// and failed reads are all `None`; failures are logged and counted.
    pub async fn get<T: Cacheable>(&self, key: &str) -> Option<T> {
        let full = self.full_key(key);
        let counters = self.inner.stats.counters(name_of(key));
        let (fetched, took) = self.fetch_timed(&full, &counters).await;
        let read = self.interpret::<T>(&full, &counters, fetched);
        self.count_read(&full, &counters, &read, took);
        match read {
            Read::Fresh(value, _) => value,
            Read::Stale(_) | Read::Miss | Read::Failed => None,
        }
    }

    /// Writes `value` under `key` (relative to the namespace) for `ttl`
    /// (plus the cache's jitter): a write-through, so it also destroys any
    /// lease on the key and no load in flight can overwrite it with an older
    /// value. A failed write is logged and counted.
    pub async fn set<T: Cacheable>(&self, key: &str, value: &T, ttl: Duration) {
        let full = self.full_key(key);
        let counters = self.inner.stats.counters(name_of(key));
        let keep = Keep {
            ttl,
            stale: Duration::ZERO,
            load_time: Duration::ZERO,
        };
        self.write(&full, Some(value), keep, &[], &counters).await;
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
            .map(|k| self.full_key(k.as_ref()))
            .collect();
        self.invalidate_full(&keys).await
    }

    /// Removes every entry whose key (relative to the namespace) matches the
    /// glob `pattern` (Redis syntax: `*`, `?`, `[a-z]`, `\\x`), with SCAN and
    /// UNLINK in batches on Redis (never `KEYS`). Returns how many keys were
    /// removed. Text from users belongs in a key part or
    /// [`push_escaped`](crate::push_escaped), never raw in a pattern.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let mut full = String::with_capacity(self.inner.namespace.len() + pattern.len() + 1);
        if !self.inner.namespace.is_empty() {
            crate::push_escaped(&mut full, &self.inner.namespace);
            full.push(':');
        }
        full.push_str(pattern);
        self.invalidate_pattern_full(&full).await
    }

    /// Removes every entry cached with `tag` (the `tags` option of
    /// `#[cached]`), including entries whose loads were in flight. Returns how
    /// many entries were removed.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        self.invalidate_tag_full(&self.tag_key(tag)).await
    }

    pub(crate) async fn invalidate_full(&self, keys: &[String]) -> Result<(), CacheError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let started = Instant::now();
        let result = self
            .inner
            .backend
            .invalidate(keys, self.inner.op_timeout)
            .await;
        // After the backend has answered: a read begun before then may have
        // seen the old value, and no caller from now on may share it.
        self.flights().detach(keys);
        self.invalidated(
            first,
            "invalidate",
            started,
            result.map(|()| keys.len() as u64),
        )
        .map(drop)
    }

    pub(crate) async fn invalidate_pattern_full(&self, pattern: &str) -> Result<u64, CacheError> {
        let started = Instant::now();
        let result = self
            .inner
            .backend
            .invalidate_pattern(pattern, self.inner.op_timeout)
            .await;
        self.flights().detach_all();
        self.invalidated(pattern, "invalidate_pattern", started, result)
    }

    pub(crate) async fn invalidate_tag_full(&self, tag: &str) -> Result<u64, CacheError> {
        let started = Instant::now();
        let result = self
            .inner
            .backend
            .invalidate_tag(tag, self.inner.op_timeout)
            .await;
        self.flights().detach_all();
        self.invalidated(tag, "invalidate_tag", started, result)
    }

    fn invalidated(
        &self,
        key: &str,
        op: &'static str,
        started: Instant,
        result: Result<u64, BackendError>,
    ) -> Result<u64, CacheError> {
        let took = started.elapsed();
        let relative = key
            .strip_prefix(self.inner.namespace.as_str())
            .and_then(|k| k.strip_prefix(':'))
            .unwrap_or(key);
        // A tag's invalidations count under the tag's first segment.
        let relative = relative
            .strip_prefix(TAG_PREFIX)
            .and_then(|t| t.strip_prefix(':'))
            .unwrap_or(relative);
        let counters = self.inner.stats.counters(name_of(relative));
        if self.inner.backend.is_remote() {
            counters.latency_invalidate.record(took);
        }
        tracing::debug!(cache_key = %key, op, latency_ms = took.as_secs_f64() * 1e3, ok = result.is_ok(), "cache invalidation");
        match result {
            Ok(n) => {
                counters.invalidations.add();
                Ok(n)
            }
            Err(e) => {
                self.backend_failed(key, op, &e, &counters);
                Err(CacheError(e))
            }
        }
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
        let counters = self.inner.stats.counters(name_of(key));
        let policy = Policy::new(ttl);
        let call: Call<'_, T, T> = Call {
            key: full,
            counters: std::borrow::Cow::Borrowed(&counters),
            policy: &policy,
            tags: &[],
            shape: std::marker::PhantomData,
        };
        self.load_through(call, load, None).await
    }

    /// Checks that the backend answers within the operation timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        self.inner
            .backend
            .ping(self.inner.op_timeout)
            .await
            .map_err(CacheError)
    }

    /// Whether the circuit breaker in front of the backend is open: calls
    /// are skipping the backend and going to their loaders. For health pages.
    pub fn breaker_open(&self) -> bool {
        self.inner.backend.breaker_open()
    }

    /// A snapshot of the counters of every cache name used so far, by name.
    pub fn stats(&self) -> Vec<CacheStats> {
        self.inner.stats.snapshot()
    }

    /// The counters of one cache name, if it has been used.
    pub fn stats_for(&self, name: &str) -> Option<CacheStats> {
        self.stats().into_iter().find(|s| s.name == name)
    }

    pub(crate) fn counters(&self, name: &str) -> Arc<Counters> {
        self.inner.stats.counters(name)
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub(crate) fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    pub(crate) fn warnings(&self) -> &LogLimiter {
        &self.inner.warnings
    }

    /// Reads the entry under `key`, undecoded, and how long the backend took
    /// (recorded as latency). Reads of the memory backend are not timed: they take a fraction of a
    /// microsecond, and the two clock reads would add a fifth to a hit.
    /// Redis reads are timed one in [`LATENCY_SAMPLE`] (every one while debug
    /// events are on): the distribution needs no more, and a hit's CPU time
    /// is what 64 concurrent callers share.
    pub(crate) async fn fetch_timed(
        &self,
        key: &str,
        counters: &Counters,
    ) -> (Result<Fetched, BackendError>, Option<Duration>) {
        let timed = self.inner.backend.is_remote()
            && (fastrand::u32(..LATENCY_SAMPLE) == 0 || tracing::enabled!(tracing::Level::DEBUG));
        let started = timed.then(Instant::now);
        let fetched = self.inner.backend.fetch(key, self.inner.op_timeout).await;
        let took = started.map(|s| s.elapsed());
        if let Some(took) = took {
            counters.latency_get.record(took);
        }
        (fetched, took)
    }

    /// What an entry [`Cache::fetch_timed`] brought back means now (`None`
    /// inside a hit: an absence marker).
    #[inline(always)]
    pub(crate) fn interpret<T: Cacheable>(
        &self,
        key: &str,
        counters: &Counters,
        fetched: Result<Fetched, BackendError>,
    ) -> Read<Option<T>> {
        match fetched.map(Fetched::open::<T>) {
            Ok(Lookup::Found(value, meta)) => {
                let now = now_ms();
                if !meta.is_expired(now) {
                    Read::Fresh(value, meta)
                } else if now < meta.stale_until_ms {
                    Read::Stale(value)
                } else {
                    Read::Miss
                }
            }
            Ok(Lookup::Absent) => Read::Miss,
            Ok(Lookup::Unreadable(why)) => {
                counters.errors.add();
                metrics_error(counters, "unreadable");
                if self.inner.strict {
                    panic!(
                        "cache entry {key:?} is unreadable ({why}); strict mode surfaces what is otherwise a logged miss"
                    );
                }
                if let Some(held_back) = self.inner.warnings.allow(now_ms()) {
                    tracing::warn!(cache_key = %key, reason = %why, held_back, "unreadable cache entry treated as a miss; it will be overwritten");
                }
                Read::Miss
            }
            Err(e) => {
                self.backend_failed(key, "get", &e, counters);
                Read::Failed
            }
        }
    }

    pub(crate) fn count_read<V>(
        &self,
        key: &str,
        counters: &Counters,
        read: &Read<V>,
        took: Option<Duration>,
    ) {
        let hit = matches!(read, Read::Fresh(..) | Read::Stale(..));
        if hit {
            counters.hits.add();
        } else {
            counters.misses.add();
        }
        if matches!(read, Read::Stale(..)) {
            counters.stale_served.add();
        }
        match took {
            Some(took) => {
                tracing::debug!(cache_key = %key, hit, latency_ms = took.as_secs_f64() * 1e3, "cache get");
            }
            None => tracing::debug!(cache_key = %key, hit, "cache get"),
        }
    }

    fn entry_meta(&self, keep: Keep) -> (EntryMeta, Duration) {
        let ttl = self.jittered(keep.ttl);
        let now = now_ms();
        let expires_ms = now.saturating_add(duration_ms(ttl));
        let meta = EntryMeta {
            created_ms: now,
            load_us: u32::try_from(keep.load_time.as_micros()).unwrap_or(u32::MAX),
            expires_ms,
            stale_until_ms: expires_ms.saturating_add(duration_ms(keep.stale)),
        };
        (meta, ttl + keep.stale)
    }

    /// A write-through: stores the value and destroys the key's lease.
    pub(crate) async fn write<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        keep: Keep,
        tags: &[String],
        counters: &Counters,
    ) {
        let (meta, keep_for) = self.entry_meta(keep);
        let timeout = self.inner.op_timeout;
        let started = Instant::now();
        let result = self
            .inner
            .backend
            .put(key, value, &meta, keep_for, tags, timeout)
            .await;
        // As for an invalidation: callers from now on read the new value.
        self.flights().detach(&[key]);
        self.wrote(key, counters, started, "cache set");
        if let Err(e) = result {
            self.backend_failed(key, "set", &e, counters);
        }
    }

    /// A write that lands only while `token` holds the key's lease.
    pub(crate) async fn write_leased<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        keep: Keep,
        token: u64,
        tags: &[String],
        counters: &Counters,
    ) {
        let (meta, keep_for) = self.entry_meta(keep);
        let timeout = self.inner.op_timeout;
        let started = Instant::now();
        let result = self
            .inner
            .backend
            .set_if_leased(key, value, &meta, keep_for, token, tags, timeout)
            .await;
        self.wrote(key, counters, started, "cache set (leased)");
        match result {
            Ok(true) => {}
            Ok(false) => {
                counters.leases_lost.add();
                tracing::debug!(cache_key = %key, "lease lost (invalidated or expired) before the write; not stored");
            }
            Err(e) => self.backend_failed(key, "set", &e, counters),
        }
    }

    fn wrote(&self, key: &str, counters: &Counters, started: Instant, what: &'static str) {
        let took = started.elapsed();
        if self.inner.backend.is_remote() {
            counters.latency_set.record(took);
        }
        tracing::debug!(cache_key = %key, latency_ms = took.as_secs_f64() * 1e3, "{what}");
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        if self.inner.ttl_jitter <= 0.0 {
            return ttl;
        }
        ttl + ttl.mul_f64(self.inner.ttl_jitter * fastrand::f64())
    }

    pub(crate) fn backend_failed(
        &self,
        key: &str,
        op: &'static str,
        e: &BackendError,
        counters: &Counters,
    ) {
        match e {
            // The breaker logged its opening; each skip is only counted.
            BackendError::Skipped => {
                counters.skipped.add();
                return;
            }
            BackendError::TooLarge(_) => counters.oversize.add(),
            _ => counters.errors.add(),
        }
        metrics_error(counters, e.kind());
        if self.inner.strict {
            panic!(
                "cache backend failed on {op} of {key:?}: {e}; strict mode surfaces what is otherwise logged and skipped"
            );
        }
        if let Some(held_back) = self.inner.warnings.allow(now_ms()) {
            tracing::warn!(cache_key = %key, op, kind = e.kind(), error = %e, held_back, "cache backend failed; serving from the loader");
        }
    }
}

/// `cache_errors_total{cache, kind}`: rare, so looked up each time.
fn metrics_error(counters: &Counters, kind: &'static str) {
    metrics::counter!(crate::stats::names::ERRORS, "cache" => counters.name().to_owned(), "kind" => kind)
        .increment(1);
}

/// The prefix of tag index keys (`{namespace}:~tag:{tag}`). Text parts of
/// keys escape `~`, so no entry key starts with it.
pub(crate) const TAG_PREFIX: &str = "~tag";

/// How long a written value lives, and what to record about its load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    pub(crate) ttl: Duration,
    pub(crate) stale: Duration,
    pub(crate) load_time: Duration,
}

/// The stats name of a typed-API key: its first segment.
fn name_of(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds a [`Cache`]. Every setting has a default; see [`Cache::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct CacheBuilder {
    redis_url: Option<String>,
    namespace: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    ttl_jitter: f64,
    max_entries: u64,
    max_value_bytes: usize,
    breaker: CircuitBreaker,
    strict: bool,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            redis_url: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ttl_jitter: DEFAULT_TTL_JITTER,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            breaker: CircuitBreaker::default(),
            strict: false,
        }
    }
}

impl CacheBuilder {
    /// Keep entries in process (moka). The default.
    pub fn memory(mut self) -> Self {
        self.redis_url = None;
        self
    }

    /// Keep entries in Redis at `url` (`redis://` or, with the `tls` feature,
    /// `rediss://`).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Redis when the `REDIS_URL` environment variable is set and not empty,
    /// memory otherwise.
    pub fn from_env(mut self) -> Self {
        self.redis_url = std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        self
    }

    /// The first segment of every key: an application and version tag.
    /// Changing it retires every old entry at once (say, after a deploy that
    /// changes a cached type). Empty means no namespace segment.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long one backend operation may take before the caller gives up on
    /// the cache and uses its loader. Default 50 ms.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// How long establishing a connection may take. Default 250 ms.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Up to this fraction of each TTL is added at random, so that entries
    /// written together do not expire together. Default 0.1; 0 turns it off.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// The most entries the memory backend keeps (least recently and
    /// frequently used go first). Default 100,000.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// The largest value (encoded, in bytes) stored on Redis. A larger one is
    /// not stored (and an older value under its key is removed); each is
    /// logged and counted as `oversize`. Default 1 MiB. The memory backend
    /// keeps values unencoded and does not measure them.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The circuit breaker in front of Redis. See [`CircuitBreaker`].
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// For tests: a backend failure, an unreadable entry or an oversize value
    /// panics at the call instead of being logged, counted and skipped. Never
    /// turn this on in production: it makes the cache a point of failure.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Builds the cache. Needs no running server: a Redis connection is made
    /// on first use and re-made whenever it drops.
    pub fn build(self) -> Result<Cache, BuildError> {
        if self.op_timeout.is_zero() {
            return Err(BuildError::InvalidSetting(
                "op_timeout must be greater than zero".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(BuildError::InvalidSetting(
                "connect_timeout must be greater than zero".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.ttl_jitter) {
            return Err(BuildError::InvalidSetting(format!(
                "ttl_jitter must be between 0 and 1, got {}",
                self.ttl_jitter
            )));
        }
        if self.max_entries == 0 {
            return Err(BuildError::InvalidSetting(
                "max_entries must be at least 1".into(),
            ));
        }
        if self.breaker.failures > 0
            && (self.breaker.min_backoff.is_zero()
                || self.breaker.max_backoff < self.breaker.min_backoff)
        {
            return Err(BuildError::InvalidSetting(
                "circuit_breaker: min_backoff must be above zero and at most max_backoff".into(),
            ));
        }
        let backend = match &self.redis_url {
            None => Backend::Memory(MemoryBackend::new(self.max_entries)),
            Some(url) => {
                let client = redis::Client::open(url.as_str()).map_err(BuildError::InvalidUrl)?;
                let breaker = Breaker::new(self.breaker, self.namespace.clone());
                Backend::Redis(Box::new(RedisBackend::new(
                    client,
                    self.connect_timeout,
                    breaker,
                    self.max_value_bytes,
                )))
            }
        };
        Ok(Cache::from_parts(backend, self))
    }
}
