//! [`CacheBuilder`]: every setting of a [`Cache`], its default, and the
//! checks that reject a setting out of range.

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use super::connect::{Origin, Pem, RedisSettings};
use crate::backend::near::{NearBackend, NearCache};
use crate::backend::redis::{RedisBackend, Target};
use crate::backend::{Backend, memory::MemoryBackend};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::codec::{Codec, Compression, Format, MAX_DECOMPRESSED};
use crate::engine::{AuditSettings, Engine, Settings};
use crate::error::BuildError;
use crate::redact::Secret;

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

/// Where the near tier's settings came from.
#[derive(Debug, Clone)]
enum NearSource {
    Builder(NearCache),
    /// `CACHE_NEAR_MAX_BYTES` and `CACHE_NEAR_MAX_TTL`, checked by `build`.
    Env {
        bytes: Option<String>,
        ttl: Option<String>,
    },
}

impl NearSource {
    fn name(&self) -> &'static str {
        match self {
            NearSource::Builder(_) => "CacheBuilder::near_cache",
            NearSource::Env { .. } => "CACHE_NEAR_MAX_BYTES",
        }
    }

    fn settings(&self) -> Result<NearCache, BuildError> {
        let near = match self {
            NearSource::Builder(near) => *near,
            NearSource::Env { bytes, ttl } => {
                let mut near = NearCache::new();
                if let Some(bytes) = bytes {
                    let n = bytes.trim().parse::<u64>().map_err(|_| {
                        BuildError::InvalidSetting(format!(
                            "CACHE_NEAR_MAX_BYTES must be a number of bytes, got `{bytes}`"
                        ))
                    })?;
                    near = near.max_bytes(n);
                }
                if let Some(ttl) = ttl {
                    let d = humantime::parse_duration(ttl.trim()).map_err(|e| {
                        BuildError::InvalidSetting(format!(
                            "CACHE_NEAR_MAX_TTL must be a duration such as `30s`, got `{ttl}`: {e}"
                        ))
                    })?;
                    near = near.max_ttl(d);
                }
                near
            }
        };
        match near.invalid() {
            Some(why) => Err(BuildError::InvalidSetting(format!(
                "{why} (from {})",
                self.name()
            ))),
            None => Ok(near),
        }
    }
}

/// Builds a [`Cache`]. Every setting has a default; see [`Cache::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.build()`"]
pub struct CacheBuilder {
    redis: RedisSettings,
    namespace: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    ttl_jitter: f64,
    max_entries: u64,
    max_value_bytes: usize,
    /// Set by `max_decompressed_bytes`; else worked out by `build`.
    max_decompressed_bytes: Option<usize>,
    breaker: CircuitBreaker,
    strict: bool,
    enabled: bool,
    audit: AuditSettings,
    format: Format,
    /// The near tier, and where its settings came from.
    near: Option<NearSource>,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            redis: RedisSettings::default(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ttl_jitter: DEFAULT_TTL_JITTER,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_decompressed_bytes: None,
            breaker: CircuitBreaker::default(),
            strict: false,
            enabled: true,
            audit: AuditSettings::default(),
            format: Format::default(),
            near: None,
        }
    }
}

impl CacheBuilder {
    /// Keep entries in process (a bounded map with per-entry expiry). The
    /// default.
    pub fn memory(mut self) -> Self {
        self.redis.url = None;
        self.redis.cluster = None;
        self
    }

    /// Keep entries in Redis at `url`: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` (TLS, with the `tls` feature) or
    /// `redis+unix:///path/to/socket`. A malformed URL is reported by
    /// [`build`](Self::build), saying which part is wrong, with the password
    /// masked.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis.url = Some((url.into(), Origin::Builder("CacheBuilder::redis")));
        self.redis.cluster = None;
        self
    }

    /// Keep entries on a Redis Cluster, reached through its seed nodes
    /// `urls` (`redis://[user:password@]host:port`, or `rediss://` with the
    /// `tls` feature): any of its nodes, primaries or replicas; the client
    /// learns the others from them. Give more than one, so that the cache
    /// can start while one is down. Credentials and TLS settings
    /// ([`redis_password`](Self::redis_password),
    /// [`redis_tls_ca`](Self::redis_tls_ca), ...) apply to every node.
    ///
    /// Annotated code is unchanged; keys are laid out for hash slots (each
    /// `{namespace}:{prefix}:{key}` stored as `{...}` so that a value and
    /// its lease share a slot), tags are per-tag versions, and a pattern
    /// invalidation visits every primary: README.md's "Redis Cluster"
    /// section says what each costs. The namespace must not be empty nor
    /// hold `{` or `}`; the near tier cannot sit in front of a cluster yet.
    ///
    /// ```
    /// use cached_runtime::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
    ///     .namespace("placement-v1")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.backend_kind(), "redis-cluster");
    /// ```
    pub fn redis_cluster<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.redis.cluster = Some((
            urls.into_iter().map(Into::into).collect(),
            Origin::Builder("CacheBuilder::redis_cluster"),
        ));
        self.redis.url = None;
        self
    }

    /// The ACL user to authenticate as, overriding the URL's.
    pub fn redis_username(mut self, username: impl Into<String>) -> Self {
        self.redis.username = Some(username.into());
        self
    }

    /// The password to authenticate with (`AUTH`), overriding the URL's, so
    /// that the URL itself can be logged or kept in plain configuration.
    /// Never shown: `Debug` and errors print `***`.
    pub fn redis_password(mut self, password: impl Into<String>) -> Self {
        self.redis.password = Some((
            Secret(password.into()),
            Origin::Builder("CacheBuilder::redis_password"),
        ));
        self
    }

    /// Trust the certificate authorities in `pem` (PEM text, one or more
    /// certificates) for a `rediss://` server, instead of the public web PKI
    /// roots: an organisation's private CA. Needs the `tls` feature.
    pub fn redis_tls_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis.tls_ca = Some(Pem::Given(pem.into(), "CacheBuilder::redis_tls_ca"));
        self
    }

    /// Mutual TLS: present the client certificate `cert_pem` (with its
    /// chain, PEM) and prove it with its private key `key_pem` (PEM, PKCS#8,
    /// PKCS#1 or SEC1). Needs the `tls` feature and a `rediss://` URL.
    pub fn redis_tls_client(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.redis.tls_client = Some((
            Pem::Given(cert_pem.into(), "CacheBuilder::redis_tls_client"),
            Pem::Given(key_pem.into(), "CacheBuilder::redis_tls_client"),
        ));
        self
    }

    /// Settings from the environment, each only if its variable is set and
    /// not empty:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `REDIS_URL` | Redis at this URL (else the memory backend) |
    /// | `REDIS_CLUSTER_URLS` | instead, a Redis Cluster through these seed nodes, comma-separated ([`redis_cluster`](Self::redis_cluster)) |
    /// | `REDIS_USERNAME` | the ACL user, overriding the URL's |
    /// | `REDIS_PASSWORD` | the password, overriding the URL's |
    /// | `REDIS_TLS_CA_FILE` | a PEM file of CA certificates to trust (`rediss://`) |
    /// | `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE` | a client certificate and its key (PEM files), for mutual TLS |
    /// | `CACHE_NEAR_MAX_BYTES` | the near tier in front of Redis, bounded to this many bytes ([`near_cache`](Self::near_cache)) |
    /// | `CACHE_NEAR_MAX_TTL` | with it, the longest an entry stays in the tier (`30s`, `2m`) |
    ///
    /// Files are read, and every value checked, by [`build`](Self::build),
    /// whose error names the variable.
    pub fn from_env(self) -> Self {
        self.from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env), with the variables looked up by `lookup`
    /// rather than in the process environment: for settings that come from a
    /// configuration file or a secrets manager, and for tests.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use cached_runtime::Cache;
    ///
    /// let vars = HashMap::from([("REDIS_URL", "redis://127.0.0.1:6379")]);
    /// let cache = Cache::builder()
    ///     .from_vars(|name| vars.get(name).map(|v| v.to_string()))
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn from_vars(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        self.redis.url = var("REDIS_URL").map(|url| (url, Origin::Env("REDIS_URL")));
        self.redis.cluster = var("REDIS_CLUSTER_URLS").map(|urls| {
            (
                urls.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Origin::Env("REDIS_CLUSTER_URLS"),
            )
        });
        if let Some(user) = var("REDIS_USERNAME") {
            self.redis.username = Some(user);
        }
        if let Some(password) = var("REDIS_PASSWORD") {
            self.redis.password = Some((Secret(password), Origin::Env("REDIS_PASSWORD")));
        }
        if let Some(path) = var("REDIS_TLS_CA_FILE") {
            self.redis.tls_ca = Some(Pem::File(path.into(), "REDIS_TLS_CA_FILE"));
        }
        match (var("CACHE_NEAR_MAX_BYTES"), var("CACHE_NEAR_MAX_TTL")) {
            (None, None) => {}
            (bytes, ttl) => self.near = Some(NearSource::Env { bytes, ttl }),
        }
        match (var("REDIS_TLS_CERT_FILE"), var("REDIS_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => {
                self.redis.tls_client = Some((
                    Pem::File(cert.into(), "REDIS_TLS_CERT_FILE"),
                    Pem::File(key.into(), "REDIS_TLS_KEY_FILE"),
                ));
            }
            (None, None) => {}
            // One without the other: `build` says which is missing.
            (cert, key) => {
                self.redis.tls_client = Some((
                    Pem::File(cert.unwrap_or_default().into(), "REDIS_TLS_CERT_FILE"),
                    Pem::File(key.unwrap_or_default().into(), "REDIS_TLS_KEY_FILE"),
                ));
            }
        }
        self
    }

    /// The first segment of every key: an application and version tag.
    /// Changing it retires every old entry at once (say, after a deploy that
    /// changes a cached type). Default `cache`.
    ///
    /// Empty means no namespace segment, on the memory backend only: on
    /// Redis, [`CacheBuilder::build`] refuses it, since the cache's pattern
    /// invalidations (`{namespace}:*` and narrower) would reach every key of
    /// the database. Caches sharing a database need namespaces that are not
    /// one inside the other: `app`'s `invalidate_pattern("*")` reaches
    /// `app:v2`'s entries too (removes them: no wrong value is served).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long one backend operation may take before the caller gives up on
    /// the cache and uses its loader. Default 50 ms. A step of a batch
    /// (`#[cached(batch)]`: its read, its leases, its writes, one command
    /// per id) is given this plus 50 µs per id.
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

    /// The most bytes a compressed entry may expand to. A reader does not
    /// decompress an entry that claims more (it reads as a miss, logged as
    /// unreadable), so that a few kilobytes under a key cannot make it
    /// allocate tens of megabytes; a writer does not compress a payload
    /// longer than this (it is stored uncompressed if it fits
    /// `max_value_bytes`, else counted as `oversize`). Default and most
    /// `build` accepts: 64 MiB; with compression on, it must be above the
    /// compression threshold. Give every process of a fleet the same
    /// value: an entry a process of a larger setting wrote reads as a miss
    /// in the others.
    pub fn max_decompressed_bytes(mut self, bytes: usize) -> Self {
        self.max_decompressed_bytes = Some(bytes);
        self
    }

    /// How values are serialized on Redis: [`Codec::Json`] (the default,
    /// readable in `redis-cli`) or [`Codec::MessagePack`] (the `msgpack`
    /// feature). Every process reads both, so a fleet can switch one
    /// process at a time; turn the feature on everywhere before any process
    /// writes MessagePack (a process without it reads such entries as
    /// misses, and overwrites them).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.format.codec = codec;
        self
    }

    /// Compresses payloads over `above_bytes` (encoded) with `compression`,
    /// when that makes them smaller ([`Compression::Lz4`] with the `lz4`
    /// feature, [`Compression::Zstd`] with `zstd`). The envelope records it,
    /// so readers of either setting read both. `max_value_bytes` applies to
    /// the stored, compressed size. Default: none.
    pub fn compression(mut self, compression: Compression, above_bytes: usize) -> Self {
        self.format.compression = compression;
        self.format.compress_above = above_bytes;
        self
    }

    /// Keeps an in-process copy (L1, bounded) of what this process reads
    /// from Redis, kept true across processes by Redis's client-side
    /// caching (`CLIENT TRACKING`, on a RESP3 connection of its own): a hit
    /// costs a lookup instead of a round trip, and a change made by any
    /// process removes the copies in every other within about a
    /// millisecond on a local network. While that invalidation channel is
    /// down (a disconnect, a missed heartbeat, the breaker open), L1 is
    /// neither read nor filled, and it is emptied before it is trusted
    /// again. Needs Redis 6 or later; ignored by the memory backend
    /// (`build` refuses the combination). See README.md, "Near cache".
    ///
    /// ```
    /// use cached_runtime::{Cache, NearCache};
    ///
    /// let cache = Cache::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .near_cache(NearCache::new().max_bytes(32 << 20))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.backend_kind(), "redis+near");
    /// ```
    pub fn near_cache(mut self, near: NearCache) -> Self {
        self.near = Some(NearSource::Builder(near));
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

    /// Audits this share of hits (0 to 1, else `build` fails; default 0,
    /// none) against the source, at call sites whose attribute sets no
    /// `audit` of its own and that load in the background (an `audit`,
    /// `stale` or `early_refresh` option: a `Clone` service and owned
    /// arguments). An audit runs after
    /// the caller has its value, compares it with what the function's body
    /// returns now, and counts `audits` and confirmed `inconsistencies` in
    /// [`Cache::stats`](crate::Cache::stats) and the metrics (README,
    /// "Auditing consistency").
    pub fn audit(mut self, rate: f64) -> Self {
        self.audit.rate = rate;
        self
    }

    /// Invalidates an entry an audit found inconsistent (default off: only
    /// counted and logged).
    pub fn audit_repair(mut self, repair: bool) -> Self {
        self.audit.repair = repair;
        self
    }

    /// The most audits running at once (default 4): a sampled hit past it
    /// is not audited, so audits never add more than this many loads to the
    /// source.
    pub fn max_audits_in_flight(mut self, audits: usize) -> Self {
        self.audit.max_in_flight = audits;
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
    pub fn build(mut self) -> Result<Cache, BuildError> {
        self.format.max_decompressed = match self.max_decompressed_bytes {
            None => MAX_DECOMPRESSED,
            Some(n) if n > MAX_DECOMPRESSED => {
                return Err(BuildError::InvalidSetting(format!(
                    "max_decompressed_bytes must be at most {MAX_DECOMPRESSED} bytes (64 MiB), got {n}"
                )));
            }
            Some(n)
                if self.format.compression != Compression::None
                    && n <= self.format.compress_above =>
            {
                return Err(BuildError::InvalidSetting(format!(
                    "max_decompressed_bytes ({n}) must be above the compression threshold ({}): no payload would be compressed",
                    self.format.compress_above
                )));
            }
            Some(n) => n,
        };
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
        if !(0.0..=1.0).contains(&self.audit.rate) {
            return Err(BuildError::InvalidSetting(format!(
                "audit must be a share of hits between 0 and 1, got {}",
                self.audit.rate
            )));
        }
        if !(0.0..=1.0).contains(&self.ttl_jitter) {
            return Err(BuildError::InvalidSetting(format!(
                "ttl_jitter must be between 0 and 1, got {}",
                self.ttl_jitter
            )));
        }
        if !(0.0..=1.0).contains(&self.audit.rate) {
            return Err(BuildError::InvalidSetting(format!(
                "audit must be a share of hits between 0 and 1, got {}",
                self.audit.rate
            )));
        }
        if let Some(why) = self.format.unsupported() {
            return Err(BuildError::InvalidSetting(why.into()));
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
        let near = self.near.as_ref().map(NearSource::settings).transpose()?;
        if let Some((urls, origin)) = self.redis.cluster.clone() {
            return self.build_cluster(&urls, origin, near.is_some());
        }
        let backend = match (&self.redis.url, near) {
            (None, None) => Backend::Memory(MemoryBackend::new(self.max_entries)),
            (None, Some(_)) => {
                return Err(BuildError::InvalidSetting(format!(
                    "a near cache ({}) needs Redis behind it: set REDIS_URL or CacheBuilder::redis",
                    self.near.as_ref().map(NearSource::name).unwrap_or_default()
                )));
            }
            (Some((url, origin)), near) => {
                if self.namespace.is_empty() {
                    // Its pattern invalidations, and the one a pile of
                    // failed changes collapses into (`{namespace}:*`),
                    // would reach every key of the database.
                    return Err(BuildError::InvalidSetting(
                        "a cache on Redis needs a namespace: without one, its pattern invalidations (and the whole-namespace invalidation that changes Redis did not take collapse into) would reach every key of the database, the cache's or not".into(),
                    ));
                }
                let client = self.redis.client(url, *origin)?;
                let tracking = near
                    .is_some()
                    .then(|| super::connect::resp3(&client))
                    .transpose()
                    .map_err(|e| BuildError::InvalidSetting(e.to_string()))?;
                let breaker = Breaker::new(self.breaker, self.namespace.clone());
                let redis = RedisBackend::new(
                    Target::Single(client),
                    self.connect_timeout,
                    breaker,
                    self.max_value_bytes,
                    self.format,
                    &self.namespace,
                );
                match (near, tracking) {
                    (Some(near), Some(tracking)) => Backend::Near(Box::new(NearBackend::new(
                        redis,
                        tracking,
                        &near,
                        &self.namespace,
                        self.op_timeout,
                        self.connect_timeout,
                    ))),
                    _ => Backend::Redis(Box::new(redis)),
                }
            }
        };
        Ok(self.finish(backend))
    }

    /// A cache on a Redis Cluster (`urls`: its seed nodes).
    fn build_cluster(
        self,
        urls: &[String],
        origin: Origin,
        near: bool,
    ) -> Result<Cache, BuildError> {
        if self.redis.url.is_some() {
            return Err(BuildError::InvalidSetting(
                "both REDIS_URL and REDIS_CLUSTER_URLS are set: one server or a cluster, not both"
                    .into(),
            ));
        }
        if near {
            return Err(BuildError::InvalidSetting(format!(
                "the near tier ({}) cannot sit in front of a Redis Cluster yet",
                self.near.as_ref().map(NearSource::name).unwrap_or_default()
            )));
        }
        if let Some(why) = crate::backend::cluster::namespace_problem(&self.namespace) {
            return Err(BuildError::InvalidSetting(format!(
                "{why}, got `{}`",
                self.namespace
            )));
        }
        let client = self.redis.cluster_client(urls, origin)?;
        let breaker = Breaker::new(self.breaker, self.namespace.clone());
        let redis = RedisBackend::new(
            Target::Cluster(client),
            self.connect_timeout,
            breaker,
            self.max_value_bytes,
            self.format,
            &self.namespace,
        );
        Ok(self.finish(Backend::Redis(Box::new(redis))))
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
            audit: self.audit,
        };
        Cache {
            engine: Arc::new(Engine::new(backend, settings)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares outside 0 to 1 (NaN among them) fail `build` with the
    /// setting's name, rather than audit every hit or jitter a TTL by a
    /// nonsense fraction.
    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            let audit = Cache::builder().audit(bad).build().err();
            assert!(
                matches!(&audit, Some(BuildError::InvalidSetting(why)) if why.contains("audit")),
                "audit({bad}): {audit:?}"
            );
            let jitter = Cache::builder().ttl_jitter(bad).build().err();
            assert!(
                matches!(&jitter, Some(BuildError::InvalidSetting(why)) if why.contains("ttl_jitter")),
                "ttl_jitter({bad}): {jitter:?}"
            );
        }
        for good in [0.0, 0.5, 1.0] {
            assert!(
                Cache::builder()
                    .audit(good)
                    .ttl_jitter(good)
                    .build()
                    .is_ok()
            );
        }
    }
}
