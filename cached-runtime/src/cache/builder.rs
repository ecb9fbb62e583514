//! [`CacheBuilder`]: every setting of a [`Cache`], its default, and the
//! checks that reject a setting out of range.

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use crate::backend::{Backend, memory::MemoryBackend, redis::RedisBackend};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::engine::{Engine, Settings};
use crate::error::BuildError;

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
/// The default size limit of one stored value (its encoded form), 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

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
    enabled: bool,
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
            enabled: true,
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

    /// Switches the cache on (the default) or off. Off, every cached call
    /// runs its function as if it had no attribute, `get` finds nothing,
    /// and write-throughs and invalidations do nothing: a baseline to
    /// measure the cache against, or a switch for an incident, with no
    /// change to annotated code.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
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
                    &self.namespace,
                )))
            }
        };
        Ok(self.finish(backend))
    }

    /// An in-process cache with these (default, so valid) settings.
    pub(super) fn build_memory(self) -> Cache {
        let backend = Backend::Memory(MemoryBackend::new(self.max_entries));
        self.finish(backend)
    }

    fn finish(self, backend: Backend) -> Cache {
        let settings = Settings {
            namespace: self.namespace,
            op_timeout: self.op_timeout,
            enabled: self.enabled,
            ttl_jitter: self.ttl_jitter,
            strict: self.strict,
        };
        Cache {
            engine: Arc::new(Engine::new(backend, settings)),
        }
    }
}
