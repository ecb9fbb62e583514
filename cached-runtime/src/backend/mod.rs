//! Where entries live: in process ([`memory`]) or in Redis ([`redis`]),
//! one server or a cluster ([`cluster`]), with an in-process tier in front
//! ([`near`]).
//!
//! Every backend answers the same typed operations; the cache above them turns
//! every failure into a miss (reads) or a no-op (writes), so a backend error
//! never reaches the caller of a cached function.

pub(crate) mod cluster;
pub(crate) mod memory;
pub(crate) mod near;
pub(crate) mod redis;

use std::time::Duration;

use crate::Cacheable;
use crate::codec::{DecodeError, EntryMeta};

/// What went wrong talking to a backend.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// The operation did not finish within the cache's operation timeout.
    Timeout,
    /// The backend answered with an error, or the connection failed.
    Redis(::redis::RedisError),
    /// The value could not be encoded for storage.
    Encode(crate::codec::EncodeError),
    /// The encoded value is larger than the cache's `max_value_bytes`: not
    /// stored (and any older value under the key removed).
    TooLarge(usize),
    /// The circuit breaker is open: the backend was not asked.
    Skipped,
    /// A key given by hand names one the cache keeps for itself (see
    /// `key::is_reserved`): the backend was not asked.
    ReservedKey,
}

impl BackendError {
    /// A short, stable label for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                "connection"
            }
            BackendError::Redis(e) if is_auth(e) => "auth",
            BackendError::Redis(e) if is_permission(e) => "permission",
            BackendError::Redis(_) => "redis",
            BackendError::Encode(_) => "encode",
            BackendError::TooLarge(_) => "too_large",
            BackendError::Skipped => "circuit_open",
            BackendError::ReservedKey => "reserved_key",
        }
    }

    /// Whether the failure says the backend is unwell (and counts towards
    /// opening the circuit breaker), rather than something wrong with one
    /// key or value.
    /// Whether Redis refused a write for memory (`-OOM`, `maxmemory`
    /// under `noeviction`).
    pub(crate) fn is_refused_for_memory(&self) -> bool {
        matches!(self, BackendError::Redis(e) if e.code() == Some("OOM"))
    }

    pub(crate) fn is_outage(&self) -> bool {
        match self {
            BackendError::Timeout => true,
            BackendError::Redis(e) => is_outage(e),
            BackendError::Encode(_)
            | BackendError::TooLarge(_)
            | BackendError::Skipped
            | BackendError::ReservedKey => false,
        }
    }
}

/// Whether a Redis error says the server is unwell (see
/// [`BackendError::is_outage`]).
pub(crate) fn is_outage(e: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

/// Redis refused the credentials (`WRONGPASS`, `NOAUTH`): a configuration
/// error, and every command fails until it is fixed.
fn is_auth(e: &::redis::RedisError) -> bool {
    e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// The ACL user may not run a command or touch a key (`NOPERM`, also when a
/// script's command is refused): the rule given to the user lacks
/// something (see `redis_acl_rule`).
fn is_permission(e: &::redis::RedisError) -> bool {
    e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoPerm)
        || e.code() == Some("NOPERM")
        || e.to_string().contains("NOPERM")
}

impl BackendError {
    /// A failure of configuration rather than of the server: wrong
    /// credentials, or an ACL rule that refuses a command. Reported at
    /// `error` level, once per cache and kind, besides the usual counting.
    pub(crate) fn is_misconfiguration(&self) -> bool {
        matches!(self, BackendError::Redis(e) if is_auth(e) || is_permission(e))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Timeout => f.write_str("backend operation timed out"),
            BackendError::Redis(e) => write!(f, "redis: {e}"),
            BackendError::Encode(e) => write!(f, "value does not serialize: {e}"),
            BackendError::TooLarge(n) => {
                write!(
                    f,
                    "value of {n} bytes is over the cache's max_value_bytes; not stored"
                )
            }
            BackendError::Skipped => f.write_str("circuit breaker open; backend skipped"),
            BackendError::ReservedKey => f.write_str(
                "the key names one the cache keeps for itself (a segment such as `~lease` or `~tag`); not used",
            ),
        }
    }
}

/// The outcome of a typed read.
#[derive(Debug)]
pub(crate) enum Lookup<T> {
    /// A value of the requested type (`None`: a cached absence), with its
    /// metadata.
    Found(Option<T>, EntryMeta),
    /// Nothing under the key.
    Absent,
    /// Something is there that is not a value of this type and format.
    Unreadable(DecodeError),
}

/// What a read brought back, not yet decoded. A hit's value is made only
/// where it is used: moved out through every layer of the read, it was
/// copied a dozen times (seen in `concurrent_hit`'s instruction profile).
pub(crate) enum Fetched {
    /// Nothing under the key.
    Absent,
    /// An encoded entry (Redis).
    Encoded(Vec<u8>),
    /// A typed entry (memory).
    Memory(memory::MemEntry),
    /// An entry of the near tier's L1 (or just read into it): its bytes,
    /// and its value once decoded.
    Near(near::NearEntry),
    /// The key holds another kind of Redis value (a list, a hash).
    WrongKind,
    /// The value under the key is larger than the limit (`max_value_bytes`):
    /// only its first bytes were read.
    TooLarge(usize),
    /// A compressed entry that claims to expand past the limit
    /// (`max_decompressed_bytes`): not decompressed.
    Expands(usize),
}

impl Fetched {
    /// The entry as a value of type `T`.
    #[inline]
    pub(crate) fn open<T: Cacheable>(self) -> Lookup<T> {
        match self {
            Fetched::Absent => Lookup::Absent,
            Fetched::Encoded(bytes) => match crate::codec::decode::<T>(&bytes) {
                Ok((value, meta)) => Lookup::Found(value, meta),
                Err(e) => Lookup::Unreadable(e),
            },
            Fetched::Memory(entry) => entry.open(),
            Fetched::Near(entry) => entry.open(),
            Fetched::WrongKind => Lookup::Unreadable(DecodeError::WrongKind),
            Fetched::TooLarge(limit) => Lookup::Unreadable(DecodeError::TooLarge(limit)),
            Fetched::Expands(limit) => Lookup::Unreadable(DecodeError::Expands(limit)),
        }
    }
}

/// What an attempt to take a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseOutcome {
    /// The lease is ours: load and write. Carries the namespace's
    /// invalidation epoch when it was taken (see [`Lease`]).
    Acquired(u64),
    /// Another caller holds it: wait for its value.
    Held,
    /// A value is already there (asked with [`LeaseIf::Absent`]): read it.
    ValuePresent,
    /// The entry is no longer the one seen (asked with
    /// [`LeaseIf::Unchanged`]): a write-through replaced it.
    Changed,
}

/// A lease this caller holds: its token, and the namespace's invalidation
/// epoch when it was taken. A pattern invalidation bumps the epoch before it
/// scans, and a leased write lands only while the epoch is unchanged: SCAN
/// does not promise to return keys created (or leases ended) during the
/// scan, so a load in flight could otherwise store what it read before the
/// change after the scan passed its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) token: u64,
    pub(crate) epoch: u64,
}

/// How one lease of a batch ends: with a write of the value (`None` inside:
/// the absence marker), its metadata and how long to keep it, or (`write`
/// is `None`) released with nothing written.
pub(crate) struct LeaseFinish<'a, T> {
    pub(crate) key: &'a str,
    pub(crate) lease: Lease,
    pub(crate) write: Option<(Option<&'a T>, EntryMeta, Duration)>,
    /// The tags the value is stored under (a release ignores them).
    pub(crate) tags: &'a [String],
}

/// When a lease may be taken, besides nobody else holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseIf {
    /// Only while no value is stored (a load after a miss).
    Absent,
    /// Whatever is stored (a value this caller cannot use).
    Any,
    /// Only while the stored entry is still the one with this metadata (a
    /// refresh: a write-through since the refresh's read must not be
    /// replaced by what the refresh loads).
    Unchanged(EntryMeta),
}

/// The key under which the lease on `key` lives. A suffix rather than a
/// prefix, so a pattern that removes `key` removes its lease too.
pub(crate) fn lease_key(key: &str) -> String {
    let mut k = String::with_capacity(key.len() + LEASE_SUFFIX.len());
    k.push_str(key);
    k.push_str(LEASE_SUFFIX);
    k
}

/// What a lease key ends with. Text parts of keys escape `~`, so no entry
/// key ends with it.
pub(crate) const LEASE_SUFFIX: &str = ":~lease";

/// The backend a [`Cache`](crate::Cache) was built with.
#[derive(Debug)]
pub(crate) enum Backend {
    Memory(memory::MemoryBackend),
    Redis(Box<redis::RedisBackend>),
    /// Redis with an in-process tier in front of it.
    Near(Box<near::NearBackend>),
}

impl Backend {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(r) if r.is_cluster() => "redis-cluster",
            Backend::Redis(_) => "redis",
            Backend::Near(_) => "redis+near",
        }
    }

    /// Reads the entry under `key`, undecoded; with `tags`, only while
    /// their indexes list it (see `RedisBackend::fetch`).
    pub(crate) async fn fetch(
        &self,
        key: &str,
        tags: &[String],
        timeout: Duration,
    ) -> Result<Fetched, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.fetch(key, tags)),
            Backend::Redis(r) => r.fetch(key, tags, timeout).await,
            // Boxed: inline, the near tier's read (reached only when L1
            // missed, see `Backend::l1_hit`) made every Redis hit's future
            // 130 bytes larger.
            Backend::Near(n) => Box::pin(n.fetch(key, tags, timeout)).await,
        }
    }

    /// A write-through that destroys the key's lease and records its tags.
    /// `Ok(false)`: another change came first and the value was not stored
    /// (Redis: see `RedisBackend::put`); the key holds nothing older.
    pub(crate) async fn put<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        match self {
            Backend::Memory(m) => {
                m.put(key, value, *meta, keep_for, tags);
                Ok(true)
            }
            Backend::Redis(r) => r.put(key, value, meta, keep_for, tags, timeout).await,
            Backend::Near(n) => {
                n.changing(
                    &[key],
                    n.redis.put(key, value, meta, keep_for, tags, timeout),
                )
                .await
            }
        }
    }

    /// A plain fill, for callers that take no lease (`lock = false`):
    /// stores unless a lease is held on the key (a load or a write-through
    /// in flight, whose value wins). `Ok(false)`: not stored.
    pub(crate) async fn fill<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.fill(key, value, *meta, keep_for, tags)),
            Backend::Redis(r) => r.fill(key, value, meta, keep_for, tags, timeout).await,
            Backend::Near(n) => {
                n.changing(
                    &[key],
                    n.redis.fill(key, value, meta, keep_for, tags, timeout),
                )
                .await
            }
        }
    }

    /// Removes the values and destroys their leases.
    pub(crate) async fn invalidate(
        &self,
        keys: &[String],
        timeout: Duration,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Memory(m) => {
                m.invalidate(keys);
                Ok(())
            }
            Backend::Redis(r) => r.invalidate(keys, timeout).await,
            Backend::Near(n) => n.changing(keys, n.redis.invalidate(keys, timeout)).await,
        }
    }

    /// Removes every entry whose full key matches the glob; returns how many.
    /// `sweep`: remove what matches even if Redis refuses the epoch for
    /// memory (see `RedisBackend::invalidate_pattern`).
    pub(crate) async fn invalidate_pattern(
        &self,
        pattern: &str,
        timeout: Duration,
        sweep: bool,
    ) -> Result<u64, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.invalidate_pattern(pattern)),
            Backend::Redis(r) => r.invalidate_pattern(pattern, timeout, sweep).await,
            Backend::Near(n) => {
                let removed = n.redis.invalidate_pattern(pattern, timeout, sweep).await;
                n.barrier().await;
                removed
            }
        }
    }

    /// Removes every entry recorded under the full tag key.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.invalidate_tag(tag)),
            Backend::Redis(r) => r.invalidate_tag(tag, timeout).await,
            Backend::Near(n) => {
                let removed = n.redis.invalidate_tag(tag, timeout).await;
                n.barrier().await;
                removed
            }
        }
    }

    /// The near tier's in-process copy of `key`, if it has one it may
    /// serve now (always `None` without the tier): a read tries it before
    /// joining or leading a shared read of Redis.
    #[inline]
    pub(crate) fn l1_hit(&self, key: &str, tags: &[String]) -> Option<Fetched> {
        match self {
            Backend::Near(n) => n.l1_hit(key, tags),
            _ => None,
        }
    }

    /// Takes the lease on `key` for `ttl` with `token`, unless another holder
    /// has it, or the stored entry does not meet `cond`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn acquire_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        cond: LeaseIf,
        tags: &[String],
        tag_for: Duration,
        timeout: Duration,
    ) -> Result<LeaseOutcome, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.acquire_lease(key, token, ttl, cond, tags)),
            Backend::Redis(r) => {
                r.acquire_lease(key, token, ttl, cond, tags, tag_for, timeout)
                    .await
            }
            Backend::Near(n) => {
                n.redis
                    .acquire_lease(key, token, ttl, cond, tags, tag_for, timeout)
                    .await
            }
        }
    }

    /// Writes the value only while `lease` still holds (its token, and no
    /// pattern invalidation since it was taken), and ends the lease. `Ok(false)`: the lease was lost (invalidated, or expired),
    /// so the value, possibly read before a write, is not stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn set_if_leased<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        lease: Lease,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        match self {
            Backend::Memory(m) => {
                Ok(m.set_if_leased(key, value, *meta, keep_for, lease.token, tags))
            }
            Backend::Redis(r) => {
                r.set_if_leased(key, value, meta, keep_for, lease, tags, timeout)
                    .await
            }
            Backend::Near(n) => {
                let write = n
                    .redis
                    .set_if_leased(key, value, meta, keep_for, lease, tags, timeout);
                n.changing(&[key], write).await
            }
        }
    }

    /// Ends the lease if `token` still holds it (compare-and-delete).
    pub(crate) async fn release_lease(
        &self,
        key: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Memory(m) => {
                m.release_lease(key, token);
                Ok(())
            }
            Backend::Redis(r) => r.release_lease(key, token, timeout).await,
            Backend::Near(n) => n.redis.release_lease(key, token, timeout).await,
        }
    }

    /// Reads the entries under `keys`, undecoded; one answer per key, in
    /// order. `tags[i]` are key `i`'s tags: each key is read as a single
    /// call with its tags reads it (see [`Backend::fetch`]), the near tier's
    /// L1 first. In one round trip (on one server: a pipeline, or with tags
    /// one script call; on a cluster, untagged, a marked entry's versions
    /// checked as an untagged call's), except tagged keys on a cluster,
    /// whose reads take steps of their own: there each is read as a single
    /// call's is, all at once.
    pub(crate) async fn fetch_many(
        &self,
        keys: &[&str],
        tags: &[&[String]],
        timeout: Duration,
    ) -> Result<Vec<Result<Fetched, BackendError>>, BackendError> {
        debug_assert_eq!(keys.len(), tags.len());
        match self {
            Backend::Memory(m) => Ok(keys
                .iter()
                .zip(tags)
                .map(|(key, tags)| Ok(m.fetch(key, tags)))
                .collect()),
            Backend::Redis(r) => r.fetch_many(keys, tags, timeout).await,
            Backend::Near(n) => n.fetch_many(keys, tags, timeout).await,
        }
    }

    /// Asks for the lease on each key: `token` for every one, each on its
    /// own condition; one outcome per key, in order. `tags[i]` are key
    /// `i`'s tags, recorded as a single call's lease records them. In one
    /// round trip (a pipeline on Redis), except on a cluster, where a
    /// tagged key's lease takes steps of its own (its tags' versions read
    /// first): there each is asked as a single call's is, all at once. An
    /// `Err` of the whole is a failure of every request (an outage, or no
    /// answer); an `Err` of one key, that key's alone. A failed request may
    /// have taken its lease: its caller releases it.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn acquire_leases(
        &self,
        asks: &[(&str, LeaseIf)],
        tags: &[&[String]],
        token: u64,
        ttl: Duration,
        tag_for: Duration,
        timeout: Duration,
    ) -> Result<Vec<Result<LeaseOutcome, BackendError>>, BackendError> {
        debug_assert_eq!(asks.len(), tags.len());
        if !self.is_cluster() || tags.iter().all(|t| t.is_empty()) {
            return self
                .acquire_pipelined(asks, tags, token, ttl, tag_for, timeout)
                .await;
        }
        let requests = asks.iter().zip(tags).map(|((key, cond), tags)| {
            self.acquire_lease(key, token, ttl, *cond, tags, tag_for, timeout)
        });
        Ok(futures_util::future::join_all(requests).await)
    }

    /// [`Backend::acquire_leases`] in one round trip (never on a cluster
    /// with tags).
    async fn acquire_pipelined(
        &self,
        asks: &[(&str, LeaseIf)],
        tags: &[&[String]],
        token: u64,
        ttl: Duration,
        tag_for: Duration,
        timeout: Duration,
    ) -> Result<Vec<Result<LeaseOutcome, BackendError>>, BackendError> {
        match self {
            Backend::Memory(m) => Ok(asks
                .iter()
                .zip(tags)
                .map(|((key, cond), tags)| Ok(m.acquire_lease(key, token, ttl, *cond, tags)))
                .collect()),
            Backend::Redis(r) => {
                r.acquire_leases(asks, tags, token, ttl, tag_for, timeout)
                    .await
            }
            Backend::Near(n) => {
                n.redis
                    .acquire_leases(asks, tags, token, ttl, tag_for, timeout)
                    .await
            }
        }
    }

    /// Ends leases: each writes its value while its lease holds (under its
    /// item's tags), or releases it. One answer per item, in order:
    /// `Ok(true)` stored (or released), `Ok(false)` the lease was lost and
    /// nothing was written, `Err` this value could not be stored (too
    /// large, does not encode, the write failed; what the key held is
    /// gone). In one round trip, except tagged items on a cluster: each as
    /// a single call's write or release, all at once.
    pub(crate) async fn finish_leases<T: Cacheable>(
        &self,
        items: &[LeaseFinish<'_, T>],
        timeout: Duration,
    ) -> Result<Vec<Result<bool, BackendError>>, BackendError> {
        if !self.is_cluster() || items.iter().all(|item| item.tags.is_empty()) {
            return self.finish_pipelined(items, timeout).await;
        }
        let ends = items.iter().map(|item| async move {
            match item.write {
                Some((value, meta, keep_for)) => {
                    self.set_if_leased(
                        item.key, value, &meta, keep_for, item.lease, item.tags, timeout,
                    )
                    .await
                }
                None => self
                    .release_lease(item.key, item.lease.token, timeout)
                    .await
                    .map(|()| true),
            }
        });
        Ok(futures_util::future::join_all(ends).await)
    }

    /// [`Backend::finish_leases`] in one round trip (never on a cluster
    /// with tags).
    async fn finish_pipelined<T: Cacheable>(
        &self,
        items: &[LeaseFinish<'_, T>],
        timeout: Duration,
    ) -> Result<Vec<Result<bool, BackendError>>, BackendError> {
        match self {
            Backend::Memory(m) => Ok(items
                .iter()
                .map(|item| match &item.write {
                    Some((value, meta, keep_for)) => Ok(m.set_if_leased(
                        item.key,
                        *value,
                        *meta,
                        *keep_for,
                        item.lease.token,
                        item.tags,
                    )),
                    None => {
                        m.release_lease(item.key, item.lease.token);
                        Ok(true)
                    }
                })
                .collect()),
            Backend::Redis(r) => r.finish_leases(items, timeout).await,
            Backend::Near(n) => {
                let keys: Vec<&str> = items
                    .iter()
                    .filter(|item| item.write.is_some())
                    .map(|item| item.key)
                    .collect();
                n.changing(&keys, n.redis.finish_leases(items, timeout))
                    .await
            }
        }
    }

    /// Whether entries live on a Redis Cluster (behind the near tier too,
    /// should it ever sit in front of one).
    fn is_cluster(&self) -> bool {
        match self {
            Backend::Memory(_) => false,
            Backend::Redis(r) => r.is_cluster(),
            Backend::Near(n) => n.redis.is_cluster(),
        }
    }

    /// Whether operations leave the process (and are worth timing).
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, Backend::Redis(_) | Backend::Near(_))
    }

    /// Whether the circuit breaker is open (always false in memory).
    pub(crate) fn breaker_open(&self) -> bool {
        match self {
            Backend::Memory(_) => false,
            Backend::Redis(r) => r.breaker_open(),
            Backend::Near(n) => n.redis.breaker_open(),
        }
    }

    /// Starts the breaker's probe if it is due (see
    /// `RedisBackend::let_probe`); nothing in memory.
    pub(crate) fn let_probe(&self, timeout: Duration) {
        match self {
            Backend::Memory(_) => {}
            Backend::Redis(r) => r.let_probe(timeout),
            Backend::Near(n) => n.redis.let_probe(timeout),
        }
    }

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping(timeout).await,
            Backend::Near(n) => n.ping(timeout).await,
        }
    }
}
