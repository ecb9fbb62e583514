//! The near tier: an in-process copy (L1) of what this process read from
//! Redis (L2), kept true by Redis's client-side caching.
//!
//! L1 is a `quick_cache` bounded by bytes (as the memory backend is by
//! count). Not moka: moka records every read in a queue for its eviction
//! policy's bookkeeping, which 64 tasks hitting one map on two cores fight
//! over (a third of an L1 hit's time, measured by `cached-bench`'s
//! `concurrent_hit_keys`); quick_cache's read takes a shard's read lock and
//! marks the entry referenced. It has no expiry of its own: each entry
//! records until when it may be served, every hit checks it, and the
//! tracking task drops the entries past it once per `max_ttl`.
//!
//! A dedicated RESP3 connection subscribes with `CLIENT TRACKING ON BCAST
//! PREFIX {namespace}:`: from then on Redis pushes the name of every key
//! under the namespace that changes (written, deleted, expired, evicted, or
//! all of them on a flush) to this process, whoever changed it. The
//! connection's reader hands each push to [`Shared::on_push`] before it
//! reads the next reply, so the L1 copies of those keys are gone by the time
//! anything sent later on that connection is answered: a PING on it is a
//! barrier that this process uses after its own pattern and tag
//! invalidations.
//!
//! Three rules keep L1 from serving what might be stale:
//!
//! - **Fills are guarded.** Each key hashes to a slot of change counters;
//!   a read from Redis notes its key's slot (and its tags' slots) before it
//!   asks, and its value enters L1 only if no change of the key reached this
//!   process since (checked after the insert, so a change that arrives
//!   during the insert removes what was inserted).
//! - **Trust needs a live channel.** L1 is consulted, and filled, only
//!   while the tracking connection is subscribed and answers its heartbeat
//!   PING within the operation timeout, and while the circuit breaker in
//!   front of Redis is closed. A disconnect, a PING that goes unanswered (a
//!   frozen or unreachable server) or a push that cannot be read withdraws
//!   trust at once and empties L1; trust returns only after the connection
//!   is subscribed again, and L1 is emptied then too, since whatever changed
//!   in between was never announced.
//! - **This process's own changes** remove the keys they touch from L1 as
//!   they return (a keyed write or eviction), or wait for the barrier (a
//!   pattern or tag invalidation, whose keys only Redis knows); if the
//!   barrier fails, L1 is emptied.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use super::redis::RedisBackend;
use super::{BackendError, Fetched, LEASE_SUFFIX, Lookup};
use crate::Cacheable;
use crate::clock::now_ms;
use crate::codec::{self, EntryMeta};
use crate::stats::{Striped, names};

/// The settings of the near tier (see
/// [`CacheBuilder::near_cache`](crate::CacheBuilder::near_cache)).
///
/// ```
/// use std::time::Duration;
/// use cached_runtime::NearCache;
///
/// let near = NearCache::new()
///     .max_bytes(64 << 20)
///     .max_ttl(Duration::from_secs(30));
/// assert_eq!(near.get_max_bytes(), 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCache {
    max_bytes: u64,
    max_ttl: Duration,
    heartbeat: Duration,
}

/// The default bound of the near tier: 64 MiB of encoded entries.
pub const DEFAULT_NEAR_MAX_BYTES: u64 = 64 << 20;
/// The default longest time an entry stays in the near tier: 60 s.
pub const DEFAULT_NEAR_MAX_TTL: Duration = Duration::from_secs(60);
/// The default interval of the tracking connection's heartbeat: 50 ms.
pub const DEFAULT_NEAR_HEARTBEAT: Duration = Duration::from_millis(50);

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            max_bytes: DEFAULT_NEAR_MAX_BYTES,
            max_ttl: DEFAULT_NEAR_MAX_TTL,
            heartbeat: DEFAULT_NEAR_HEARTBEAT,
        }
    }
}

impl NearCache {
    /// The defaults: 64 MiB, entries kept at most 60 s, a heartbeat every
    /// 50 ms.
    pub fn new() -> Self {
        NearCache::default()
    }

    /// The most bytes the tier keeps: each entry weighs its key, its
    /// encoded value and 96 bytes of bookkeeping. The decoded copy a hit
    /// keeps beside the bytes (so that only the first hit decodes) is not
    /// counted: budget for up to twice this with values whose decoded form
    /// is larger than their encoding. The bound is split among the tier's
    /// shards (four per core, fewer for a small bound): an entry heavier
    /// than about its shard's share is served from Redis, never kept (and
    /// counted as an eviction).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The longest an entry is served from the tier (never longer than it
    /// lives in Redis; at least 1 ms): a bound on memory held by keys nobody
    /// reads (past it, an entry is given back by the next sweep, within
    /// another `max_ttl` while the tracking connection is up, or evicted
    /// when newer entries need the room), not on staleness, which
    /// invalidation bounds.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// How often the tracking connection is checked with a PING (it must
    /// answer within the cache's operation timeout, or the tier stops
    /// serving until it is subscribed again). This plus the operation
    /// timeout is how long a silently broken connection can go unnoticed.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The byte bound.
    pub fn get_max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The longest time in the tier.
    pub fn get_max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The heartbeat interval.
    pub fn get_heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Why these settings cannot be used, if they cannot.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        if self.max_bytes == 0 {
            Some("near_cache: max_bytes must be at least 1")
        } else if self.max_ttl < Duration::from_millis(1) {
            // L1 keeps time in milliseconds: less would keep nothing.
            Some("near_cache: max_ttl must be at least 1 ms")
        } else if self.heartbeat.is_zero() {
            Some("near_cache: heartbeat must be greater than zero")
        } else {
            None
        }
    }
}

/// A snapshot of the near tier's counters, for one [`Cache`](crate::Cache)
/// (every cache name together), since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearStats {
    /// Reads answered from the near tier (L1).
    pub l1_hits: u64,
    /// Reads that went to Redis (L2) and found an entry there.
    pub l2_hits: u64,
    /// Reads that went to Redis and found nothing (or nothing usable).
    pub l2_misses: u64,
    /// Entries Redis reported changed (keys named in invalidation pushes).
    pub invalidations_received: u64,
    /// Entries dropped from L1 to keep within its bound, and entries too
    /// heavy to be kept at all (not removals, nor replacements by a newer
    /// copy of the same key).
    pub l1_evictions: u64,
    /// Times L1 was emptied because it could not be trusted (a
    /// disconnect, a missed heartbeat, a failed barrier, a flush on Redis).
    pub flushes: u64,
    /// Times the tracking connection was subscribed (the first time and
    /// after each loss).
    pub subscriptions: u64,
    /// Entries in L1 now (those past their time count until swept).
    pub l1_entries: u64,
    /// Bytes L1 holds now, as its bound counts them.
    pub l1_bytes: u64,
    /// Whether L1 is trusted now (its invalidation channel is up).
    pub trusted: bool,
}

/// Change counters: a key's slot is bumped whenever a change of a key
/// hashing there reaches this process. More slots, fewer fills refused
/// because another key of the slot changed.
const SLOTS: usize = 1 << 14;

/// The least time between two sweeps of L1's entries past their time (see
/// [`Shared::sweep`]); otherwise one per `max_ttl`.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one L1 entry weighs besides its key and bytes.
const ENTRY_OVERHEAD: usize = 96;

/// One L1 entry: the bytes as Redis holds them, and the value decoded by
/// the first hit (kept for the next ones).
#[derive(Clone)]
pub(crate) struct NearEntry(Arc<NearInner>);

struct NearInner {
    bytes: Vec<u8>,
    /// `(Option<T>, EntryMeta)` for the type the first hit asked for.
    typed: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Until when L1 may serve it (ms since the epoch, as [`now_ms`]):
    /// checked by each hit, the entry staying until evicted or replaced.
    keep_until_ms: u64,
    /// What its read noted before asking Redis: a hit is served only while
    /// none of it moved (no flush, no change of the key's slot, none of its
    /// tags'), so an entry inserted just as a change arrived is never
    /// served, not even before the fill's own re-check removes it.
    noted: Noted,
}

impl NearEntry {
    /// The entry as a value of type `T`: decoded once, cloned after.
    pub(crate) fn open<T: Cacheable>(&self) -> Lookup<T> {
        if let Some(typed) = self.0.typed.get()
            && let Some((value, meta)) = typed.downcast_ref::<(Option<T>, EntryMeta)>()
        {
            return Lookup::Found(value.clone(), *meta);
        }
        match codec::decode::<T>(&self.0.bytes) {
            Ok((value, meta)) => {
                // Another type's decode may have come first: then every hit
                // of this type decodes (two types under one key is a bug
                // the type fingerprint reports anyway).
                let _ = self.0.typed.set(Box::new((value.clone(), meta)));
                Lookup::Found(value, meta)
            }
            Err(e) => Lookup::Unreadable(e),
        }
    }
}

/// Counts L1's evictions: entries dropped to keep within its bound (and
/// new entries too heavy to be kept), not removals by invalidation, flush
/// or sweep, nor an entry replaced by a newer copy of its key.
#[derive(Clone)]
struct Evictions {
    count: Arc<AtomicU64>,
    metric: metrics::Counter,
}

/// One insert into L1, for [`Evictions`]: quick_cache reports the entry an
/// insert replaces through the same hook as an eviction, so the hook is
/// told which key is being inserted, and by which entry.
#[derive(Default)]
struct Inserting {
    /// The key, and the address of its new entry.
    new: Option<(String, usize)>,
    /// What the insert dropped: released when this is, after the shard's
    /// lock (a decoded value can be large).
    dropped: Vec<NearEntry>,
}

impl quick_cache::Lifecycle<String, NearEntry> for Evictions {
    type RequestState = Inserting;

    fn on_evict(&self, state: &mut Inserting, key: String, entry: NearEntry) {
        let replaced = state.new.as_ref().is_some_and(|(new_key, new_entry)| {
            *new_key == key && *new_entry != Arc::as_ptr(&entry.0) as usize
        });
        if !replaced {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.metric.increment(1);
        }
        state.dropped.push(entry);
    }
}

/// What an L1 entry weighs against the byte bound: its key, its bytes
/// (or, compressed, what they decompress to, if more: the decoded copy a
/// hit keeps beside them is of that size, and a payload may expand
/// thousands of times) and [`ENTRY_OVERHEAD`].
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<String, NearEntry> for Weight {
    fn weight(&self, key: &String, entry: &NearEntry) -> u64 {
        let bytes = &entry.0.bytes;
        let held = bytes.len().max(codec::decoded_len(bytes));
        (key.len() + held + ENTRY_OVERHEAD) as u64
    }
}

type L1 =
    quick_cache::sync::Cache<String, NearEntry, Weight, foldhash::fast::RandomState, Evictions>;

struct Tallies {
    /// Every L1 hit counts here: striped over cache lines, so that two
    /// cores serving hits do not fight over one (with its metric).
    l1_hits: Striped,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: Arc<AtomicU64>,
    flushes: AtomicU64,
    subscriptions: AtomicU64,
}

struct Metrics {
    l2_hits: metrics::Counter,
    invalidations: metrics::Counter,
    flushes: metrics::Counter,
    bytes: metrics::Gauge,
    entries: metrics::Gauge,
    trusted: metrics::Gauge,
}

/// What the tracking connection's reader, the heartbeat and every reader
/// and writer of this process share.
pub(crate) struct Shared {
    l1: L1,
    /// Per-slot change counts (see [`SLOTS`]).
    slots: Box<[AtomicU64]>,
    /// Bumped whenever L1 is emptied: a fill noted before it is refused.
    generation: AtomicU64,
    /// Whether L1 may be read and filled.
    trusted: AtomicBool,
    /// Until when (Unix ms) the last answered heartbeat vouches for L1: the
    /// next answer is due by then. Trust is withdrawn only by the tracking
    /// task, which does not run while its runtime is not polled (pushes then
    /// wait unread in the socket); this bound holds whether it runs or not.
    /// On the clock a hit reads anyway for its entry's expiry: one more
    /// clock read per L1 hit cost the near tier a fifth of its throughput
    /// under `concurrent_hit_keys`. That clock may step back (an NTP step,
    /// a VM restored), which would stretch the vouch by the step: a vouch
    /// further ahead than the window it was given ([`Shared::window`])
    /// vouches for nothing, so a step back at worst doubles it.
    vouched: AtomicU64,
    /// The window of the last vouch, in ms.
    window: AtomicU64,
    /// The tracking connection being made or in use (each one's number).
    epoch: AtomicU64,
    /// The newest tracking connection known lost (its disconnect pushed).
    dead: AtomicU64,
    max_ttl: Duration,
    tallies: Tallies,
    metrics: Metrics,
}

fn slot(key: &str) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) % SLOTS
}

/// What a read noted before it asked Redis: `None` while L1 is not trusted
/// (nothing read then may enter it).
#[derive(Debug, Clone)]
struct Noted {
    generation: u64,
    slot: usize,
    count: u64,
    /// The tags it asked Redis about (a tagged read checks that each one's
    /// index lists the key), with their change counters before it asked
    /// (`(tag, slot, count)`): a hit is served only to a call with exactly
    /// these tags, and only while none of them changed (an index evicted or
    /// invalidated after the read).
    tags: Box<[(Box<str>, usize, u64)]>,
}

impl Shared {
    fn new(settings: &NearCache, namespace: &str) -> Arc<Shared> {
        let evictions = Arc::new(AtomicU64::new(0));
        let evicted = Arc::clone(&evictions);
        let evicted_metric =
            metrics::counter!(names::NEAR_EVICTIONS, "namespace" => namespace.to_owned());
        let l1 = L1::with(
            // quick_cache sizes its table from this estimate (and grows it
            // as needed): one entry per 4 KiB of the bound, within limits.
            usize::try_from(settings.max_bytes / 4096)
                .unwrap_or(usize::MAX)
                .clamp(64, 1 << 16),
            settings.max_bytes,
            Weight,
            // Every hit hashes its key: foldhash rather than SipHash (keys
            // are the application's, not an attacker's choice of bucket:
            // foldhash is seeded per process all the same).
            foldhash::fast::RandomState::default(),
            Evictions {
                count: evicted,
                metric: evicted_metric,
            },
        );
        let label = || namespace.to_owned();
        Arc::new(Shared {
            l1,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            trusted: AtomicBool::new(false),
            vouched: AtomicU64::new(0),
            window: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            max_ttl: settings.max_ttl,
            tallies: Tallies {
                l1_hits: Striped::new(
                    metrics::counter!(names::TIER_HITS, "namespace" => label(), "tier" => "l1"),
                ),
                l2_hits: AtomicU64::new(0),
                l2_misses: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
                evictions,
                flushes: AtomicU64::new(0),
                subscriptions: AtomicU64::new(0),
            },
            metrics: Metrics {
                l2_hits: metrics::counter!(names::TIER_HITS, "namespace" => label(), "tier" => "l2"),
                invalidations: metrics::counter!(names::NEAR_INVALIDATIONS_RECEIVED, "namespace" => label()),
                flushes: metrics::counter!(names::NEAR_FLUSHES, "namespace" => label()),
                bytes: metrics::gauge!(names::NEAR_BYTES, "namespace" => label()),
                entries: metrics::gauge!(names::NEAR_ENTRIES, "namespace" => label()),
                trusted: metrics::gauge!(names::NEAR_TRUSTED, "namespace" => label()),
            },
        })
    }

    fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::SeqCst)
    }

    /// Whether L1 may be filled now: trusted, and vouched for by a
    /// heartbeat answered within its bound (see [`Shared::vouched`]; a hit
    /// checks the vouch in [`Shared::get`]).
    fn is_vouched(&self) -> bool {
        self.is_trusted() && self.vouches_at(now_ms())
    }

    /// Whether the last vouch holds at `now` (Unix ms; see
    /// [`Shared::vouched`]).
    #[inline]
    fn vouches_at(&self, now: u64) -> bool {
        let until = self.vouched.load(Ordering::Relaxed);
        now < until && until - now <= self.window.load(Ordering::Relaxed)
    }

    /// Extends the vouch to `window` from now: every push Redis sent before
    /// the answer just read has been applied (they share the connection).
    fn vouch(&self, window: Duration) {
        let window = crate::clock::duration_ms(window);
        self.window.store(window, Ordering::Relaxed);
        self.vouched
            .store(now_ms().saturating_add(window), Ordering::Relaxed);
    }

    /// A change of `key` reached this process: no read noted before it may
    /// fill, and no copy stays.
    fn changed(&self, key: &str) {
        self.slots[slot(key)].fetch_add(1, Ordering::SeqCst);
        self.l1.remove(key);
    }

    /// Empties L1 and refuses every fill noted before.
    fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.l1.clear();
        self.tallies.flushes.fetch_add(1, Ordering::Relaxed);
        self.metrics.flushes.increment(1);
    }

    /// Stops trusting L1 (and empties it) until the channel is subscribed
    /// again.
    fn distrust(&self) {
        self.trusted.store(false, Ordering::SeqCst);
        self.metrics.trusted.set(0.0);
        self.flush();
    }

    /// Trusts L1 again, emptied first (what changed while the channel was
    /// down was never announced), on the word of tracking connection
    /// `epoch`: unless that connection was reported lost already. Vouched
    /// for `vouched_for`, until the next heartbeat's answer is due.
    fn trust(&self, epoch: u64, vouched_for: Duration) {
        self.vouch(vouched_for);
        self.flush();
        self.trusted.store(true, Ordering::SeqCst);
        self.metrics.trusted.set(1.0);
        self.tallies.subscriptions.fetch_add(1, Ordering::Relaxed);
        // A disconnect of this connection pushed before the store above:
        // its handler saw the old trust, so it is undone here.
        if self.dead.load(Ordering::SeqCst) >= epoch {
            self.distrust();
        }
    }

    /// Tracking connection `epoch` is lost: if it is the one trusted, L1
    /// is not any more.
    fn lost(&self, epoch: u64) {
        self.dead.fetch_max(epoch, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            self.distrust();
        }
    }

    fn note(&self, key: &str, tags: &[String]) -> Option<Noted> {
        // Generation first: a flush between the two reads is then seen by
        // the check after the insert.
        let generation = self.generation.load(Ordering::SeqCst);
        if !self.is_vouched() {
            return None;
        }
        let slot = slot(key);
        Some(Noted {
            generation,
            slot,
            count: self.slots[slot].load(Ordering::SeqCst),
            tags: tags
                .iter()
                .map(|tag| {
                    let s = self::slot(tag);
                    (
                        Box::from(tag.as_str()),
                        s,
                        self.slots[s].load(Ordering::SeqCst),
                    )
                })
                .collect(),
        })
    }

    /// Whether nothing `noted` covers moved since.
    #[inline]
    fn unchanged(&self, noted: &Noted) -> bool {
        self.generation.load(Ordering::SeqCst) == noted.generation
            && self.slots[noted.slot].load(Ordering::SeqCst) == noted.count
            && noted
                .tags
                .iter()
                .all(|(_, s, count)| self.slots[*s].load(Ordering::SeqCst) == *count)
    }

    /// Puts what a read brought from Redis into L1, unless a change of the
    /// key (or a flush) reached this process since the read was noted.
    /// The tags the entry is served under are the ones its read noted.
    fn fill(&self, key: &str, noted: Option<Noted>, bytes: Vec<u8>) -> Fetched {
        let Some(noted) = noted else {
            return Fetched::Encoded(bytes);
        };
        let Ok(meta) = codec::decode_meta(&bytes) else {
            return Fetched::Encoded(bytes);
        };
        let now = now_ms();
        let max_ttl = u64::try_from(self.max_ttl.as_millis()).unwrap_or(u64::MAX);
        let keep_until_ms = meta.stale_until_ms.min(now.saturating_add(max_ttl));
        if keep_until_ms <= now || !self.unchanged(&noted) {
            return Fetched::Encoded(bytes);
        }
        let entry = NearEntry(Arc::new(NearInner {
            bytes,
            typed: OnceLock::new(),
            keep_until_ms,
            noted,
        }));
        let mut inserting = Inserting {
            new: Some((key.to_owned(), Arc::as_ptr(&entry.0) as usize)),
            dropped: Vec::new(),
        };
        self.l1
            .insert_with_lifecycle(key.to_owned(), entry.clone(), &mut inserting);
        drop(inserting);
        if !self.unchanged(&entry.0.noted) {
            // A change arrived during the insert: what was inserted may be
            // older than it.
            self.l1.remove(key);
        }
        Fetched::Near(entry)
    }

    /// Drops the entries past their time (a hit never serves one, but
    /// until dropped or evicted it holds its share of the bound). The
    /// tracking task runs it once per `max_ttl` (at least [`SWEEP_EVERY`]
    /// apart), on Tokio's blocking pool: it visits every entry, holding
    /// each shard's lock in turn.
    fn sweep(&self) {
        let now = now_ms();
        // (`>=` here would keep an entry at its very last millisecond for
        // one sweep more, which no hit serves: only when its memory comes
        // back differs, so that mutant survives.)
        self.l1.retain(|_, entry| entry.0.keep_until_ms > now);
    }

    /// L1's entry for `key`, if it may be served.
    #[inline]
    fn get(&self, key: &str, tags: &[String]) -> Option<NearEntry> {
        let entry = self.l1.get(key)?;
        let noted = &entry.0.noted;
        let now = now_ms();
        if now >= entry.0.keep_until_ms
            // No heartbeat answered within its bound (see `vouched`).
            || !self.vouches_at(now)
            || noted.tags.len() != tags.len()
            || noted
                .tags
                .iter()
                .zip(tags)
                .any(|((tag, _, _), asked)| **tag != **asked)
            || !self.unchanged(noted)
        {
            // Read under other tags; or the key, one of its tags or the
            // whole of L1 changed since its read was noted (the copy may be
            // older than the change, even if the change's removal of it has
            // not happened yet): ask Redis.
            return None;
        }
        Some(entry)
    }

    /// One push from Redis, handed over by the tracking connection's
    /// reader before it reads the next reply.
    fn on_push(&self, epoch: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(bytes) => {
                                let Ok(key) = std::str::from_utf8(bytes) else {
                                    // Not a key this cache wrote; but a slot
                                    // cannot be told for it: trust nothing.
                                    self.flush();
                                    continue;
                                };
                                // A lease's churn: never in L1 (a key
                                // by hand may not end so, see
                                // `key::is_reserved`).
                                if key.ends_with(LEASE_SUFFIX) {
                                    continue;
                                }
                                self.changed(key);
                                self.tallies.invalidations.fetch_add(1, Ordering::Relaxed);
                                self.metrics.invalidations.increment(1);
                            }
                            _ => self.flush(),
                        }
                    }
                }
                // `FLUSHDB`/`FLUSHALL` (a null key list), or a push this
                // version cannot read: every key may have changed.
                _ => self.flush(),
            },
            PushKind::Disconnection => self.lost(epoch),
            _ => {}
        }
    }

    fn stats(&self) -> NearStats {
        let t = &self.tallies;
        NearStats {
            l1_hits: t.l1_hits.load(),
            l2_hits: t.l2_hits.load(Ordering::Relaxed),
            l2_misses: t.l2_misses.load(Ordering::Relaxed),
            invalidations_received: t.invalidations.load(Ordering::Relaxed),
            l1_evictions: t.evictions.load(Ordering::Relaxed),
            flushes: t.flushes.load(Ordering::Relaxed),
            subscriptions: t.subscriptions.load(Ordering::Relaxed),
            l1_entries: self.l1.len() as u64,
            l1_bytes: self.l1.weight(),
            trusted: self.is_trusted(),
        }
    }
}

/// Removes the keys a write touched from L1 when dropped: after the write
/// returns, and also if the caller's future is dropped mid-write (the
/// write may have landed).
struct ForgetOnDrop<'a, K: AsRef<str>> {
    shared: &'a Shared,
    keys: &'a [K],
}

impl<K: AsRef<str>> Drop for ForgetOnDrop<'_, K> {
    fn drop(&mut self) {
        for key in self.keys {
            self.shared.changed(key.as_ref());
        }
    }
}

/// The Redis backend with the near tier in front of it.
pub(crate) struct NearBackend {
    pub(crate) redis: RedisBackend,
    shared: Arc<Shared>,
    tracker: TrackerSettings,
}

impl std::fmt::Debug for NearBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearBackend")
            .field("redis", &self.redis)
            .field("l1_entries", &self.shared.l1.len())
            .field("trusted", &self.shared.is_trusted())
            .finish()
    }
}

/// The tracking connection's settings, and whether its task runs.
#[derive(Clone)]
struct TrackerSettings {
    /// A RESP3 client for the same server and credentials as the backend.
    client: redis::Client,
    prefix: String,
    heartbeat: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    /// Whether the task runs (cleared by [`TrackGuard`] when it ends).
    started: Arc<AtomicBool>,
    /// The tracking connection, for the barrier.
    conn: Arc<arc_swap::ArcSwapOption<redis::aio::MultiplexedConnection>>,
}

impl NearBackend {
    pub(crate) fn new(
        redis: RedisBackend,
        tracking_client: redis::Client,
        settings: &NearCache,
        namespace: &str,
        op_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        NearBackend {
            redis,
            shared: Shared::new(settings, namespace),
            tracker: TrackerSettings {
                client: tracking_client,
                prefix: if namespace.is_empty() {
                    String::new()
                } else {
                    format!("{namespace}:")
                },
                heartbeat: settings.heartbeat,
                timeout: op_timeout,
                connect_timeout,
                started: Arc::default(),
                conn: Arc::default(),
            },
        }
    }

    /// Starts the tracking task on first use, inside the caller's Tokio
    /// runtime (building a `Cache` needs no runtime).
    #[inline]
    fn ensure_tracking(&self) {
        if self.tracker.started.load(Ordering::Relaxed) {
            return;
        }
        if self.tracker.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.tracker.started.store(false, Ordering::SeqCst);
            return;
        };
        runtime.spawn(track(Arc::downgrade(&self.shared), self.tracker.clone()));
    }

    /// A health check: also starts the tracking connection, so that a
    /// service that pings at startup has its L1 trusted by its first call.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        self.ensure_tracking();
        self.redis.ping(timeout).await
    }

    /// Whether L1 may be read now.
    #[inline]
    fn l1_usable(&self) -> bool {
        self.shared.is_trusted() && !self.redis.breaker_open()
    }

    /// L1's entry for `key`, if it has one it may serve now (counted as an
    /// L1 hit): what a read tries before anything else.
    #[inline]
    pub(crate) fn l1_hit(&self, key: &str, tags: &[String]) -> Option<Fetched> {
        self.ensure_tracking();
        if !self.l1_usable() {
            return None;
        }
        let entry = self.shared.get(key, tags)?;
        self.shared.tallies.l1_hits.add();
        Some(Fetched::Near(entry))
    }

    /// Reads `key` from Redis, and fills L1 with what it found. L1 itself
    /// is not consulted here: a read tries [`l1_hit`](Self::l1_hit) first,
    /// once (the engine before its shared read, `Cache::get` before its
    /// fetch), and the reads that follow a lease or serve an audit want
    /// Redis's copy.
    pub(crate) async fn fetch(
        &self,
        key: &str,
        tags: &[String],
        timeout: Duration,
    ) -> Result<Fetched, BackendError> {
        self.ensure_tracking();
        let noted = if self.redis.breaker_open() {
            None
        } else {
            self.shared.note(key, tags)
        };
        let fetched = self.redis.fetch(key, tags, timeout).await?;
        Ok(self.received(key, noted, fetched))
    }

    fn received(&self, key: &str, noted: Option<Noted>, got: Fetched) -> Fetched {
        match got {
            Fetched::Encoded(bytes) => {
                self.shared.tallies.l2_hits.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.l2_hits.increment(1);
                self.shared.fill(key, noted, bytes)
            }
            other => {
                self.shared
                    .tallies
                    .l2_misses
                    .fetch_add(1, Ordering::Relaxed);
                other
            }
        }
    }

    /// Reads many keys: L1's entries first (with `tags[i]`, key `i`'s tags,
    /// as [`l1_hit`](Self::l1_hit) does), then the rest from Redis in one
    /// round trip (see `RedisBackend::fetch_many`), filling L1 with what it
    /// found.
    pub(crate) async fn fetch_many(
        &self,
        keys: &[&str],
        tags: &[&[String]],
        timeout: Duration,
    ) -> Result<Vec<Result<Fetched, BackendError>>, BackendError> {
        self.ensure_tracking();
        let usable = self.l1_usable();
        let mut out: Vec<Option<Result<Fetched, BackendError>>> = Vec::with_capacity(keys.len());
        let (mut ask, mut ask_tags) = (Vec::new(), Vec::new());
        for (key, tags) in keys.iter().zip(tags) {
            match usable.then(|| self.shared.get(key, tags)).flatten() {
                Some(entry) => {
                    self.shared.tallies.l1_hits.add();
                    out.push(Some(Ok(Fetched::Near(entry))));
                }
                None => {
                    ask.push(*key);
                    ask_tags.push(*tags);
                    out.push(None);
                }
            }
        }
        if ask.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let noted: Vec<Option<Noted>> = ask
            .iter()
            .zip(&ask_tags)
            .map(|(k, tags)| {
                if usable {
                    self.shared.note(k, tags)
                } else {
                    None
                }
            })
            .collect();
        let fetched = match self.redis.fetch_many(&ask, &ask_tags, timeout).await {
            Ok(fetched) => fetched,
            // L1's hits stay hits, as a single call's would: only the keys
            // asked of Redis failed. The first of them carries the error
            // (the one the batch reports), the others say it was not read.
            Err(e) => {
                let mut e = Some(e);
                return Ok(out
                    .into_iter()
                    .map(|slot| {
                        slot.unwrap_or_else(|| Err(e.take().unwrap_or(BackendError::Skipped)))
                    })
                    .collect());
            }
        };
        let mut answers = ask.iter().zip(noted).zip(fetched);
        Ok(out
            .into_iter()
            .map(|slot| match slot {
                Some(hit) => hit,
                None => match answers.next() {
                    Some(((key, noted), got)) => got.map(|got| self.received(key, noted, got)),
                    None => Ok(Fetched::Absent),
                },
            })
            .collect())
    }

    /// Runs a write that changes `keys`, removing them from L1 when it
    /// returns (or is dropped).
    pub(crate) async fn changing<K: AsRef<str>, T>(
        &self,
        keys: &[K],
        write: impl Future<Output = T>,
    ) -> T {
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            keys,
        };
        write.await
    }

    /// After a change whose keys only Redis knows (a pattern or a tag):
    /// waits until every invalidation Redis sent for it has reached L1 (a
    /// PING on the tracking connection, answered after them), or, if that
    /// fails, empties L1.
    pub(crate) async fn barrier(&self) {
        let conn = self.tracker.conn.load_full();
        // (Untrusted, L1 is empty and takes no fills, so the guard below
        // only spares a PING: made `true` or `false` by cargo-mutants, no
        // test can tell, and none should.)
        let answered = match conn {
            Some(conn) if self.shared.is_trusted() => {
                let mut conn = (*conn).clone();
                matches!(
                    tokio::time::timeout(
                        self.tracker.timeout,
                        redis::cmd("PING").query_async::<String>(&mut conn)
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
            _ => false,
        };
        if !answered {
            self.shared.flush();
        }
    }

    pub(crate) fn stats(&self) -> NearStats {
        self.shared.stats()
    }
}

/// The tracking connection's life: connect, subscribe, trust; PING every
/// heartbeat; on any failure distrust, and start again. Ends when the cache
/// is dropped; if its runtime drops it first (shut down with the task
/// pending), [`TrackGuard`] distrusts L1 and lets the next use start it
/// again.
async fn track(shared: Weak<Shared>, tracker: TrackerSettings) {
    let _guard = TrackGuard {
        shared: shared.clone(),
        started: Arc::clone(&tracker.started),
    };
    // Retries back off from 10 ms (or the heartbeat) to 1 s, doubling.
    // (How fast a lost tracking connection is retried is not a guarantee
    // any test holds: halving instead, or sweeping at every heartbeat
    // below, survive cargo-mutants and cost only load.)
    let first_backoff = tracker.heartbeat.min(Duration::from_millis(10));
    let mut backoff = first_backoff;
    // Whether a failure to subscribe has been logged at `warn` since the
    // last subscription (the rest go to `debug`).
    let mut warned = false;
    loop {
        let Some(s) = shared.upgrade() else { return };
        // Each connection's pushes carry its epoch: a disconnect reported
        // by an older connection does not withdraw the trust a newer one
        // earned, and one reported before this connection was trusted
        // stops it being trusted.
        let epoch = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        drop(s);
        let reader = shared.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(tracker.connect_timeout))
            .set_response_timeout(Some(tracker.timeout))
            .set_push_sender(move |push: PushInfo| -> Result<(), ()> {
                if let Some(shared) = reader.upgrade() {
                    shared.on_push(epoch, push);
                }
                Ok(())
            });
        // (A subscription that stalls after connecting ends after both
        // timeouts; only a server that stalls mid-subscribe tells `+` from
        // `-` here, which the consistency checker's `near/freeze` does, not
        // the targets `scripts/mutants` runs for this file.)
        let subscribed = tokio::time::timeout(
            tracker.connect_timeout.saturating_add(tracker.timeout),
            async {
                let mut conn = tracker
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let mut cmd = redis::cmd("CLIENT");
                cmd.arg("TRACKING").arg("ON").arg("BCAST");
                if !tracker.prefix.is_empty() {
                    cmd.arg("PREFIX").arg(&tracker.prefix);
                }
                cmd.query_async::<()>(&mut conn).await?;
                Ok::<_, redis::RedisError>(conn)
            },
        )
        .await;
        let mut conn = match subscribed {
            Ok(Ok(conn)) => conn,
            failed => {
                // (Only the log's wording depends on this arm.)
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                if warned {
                    tracing::debug!(error = %why, "near cache: cannot subscribe its tracking connection");
                } else {
                    // A refused `CLIENT TRACKING` (an ACL rule without it, a
                    // server older than 6) keeps the tier off for good: say so.
                    tracing::warn!(error = %why, "near cache: cannot subscribe its tracking connection; serving from Redis only until it can");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match shared.upgrade() {
            Some(s) => s.trust(epoch, tracker.heartbeat.saturating_add(tracker.timeout)),
            None => return,
        }
        warned = false;
        tracker.conn.store(Some(Arc::new(conn.clone())));
        let mut swept = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(tracker.heartbeat).await;
            let Some(s) = shared.upgrade() else { return };
            if swept.elapsed() >= s.max_ttl.max(SWEEP_EVERY) {
                let sweeping = Arc::clone(&s);
                tokio::task::spawn_blocking(move || sweeping.sweep());
                swept = tokio::time::Instant::now();
            }
            s.metrics.bytes.set(s.l1.weight() as f64);
            s.metrics.entries.set(s.l1.len() as f64);
            // (The two go together: this connection's loss distrusts, and
            // only its loss does, so `&&` for `||` survives mutation.)
            if !s.is_trusted() || s.dead.load(Ordering::SeqCst) >= epoch {
                // A disconnect push came: make a new connection.
                break;
            }
            drop(s);
            let pong = tokio::time::timeout(
                tracker.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            if !matches!(pong, Ok(Ok(_))) {
                tracing::debug!("near cache: tracking connection missed its heartbeat");
                break;
            }
            // Until the next heartbeat's answer is due.
            if let Some(s) = shared.upgrade() {
                s.vouch(tracker.heartbeat.saturating_add(tracker.timeout));
            }
            // A heartbeat answered: the connection is good, so a failure
            // after it starts the backoff over. (Not at subscription: a
            // server that subscribes and then drops every connection at
            // once would be re-subscribed, and L1 emptied, in a tight loop.)
            backoff = first_backoff;
        }
        tracker.conn.store(None);
        if let Some(s) = shared.upgrade() {
            s.distrust();
        }
        drop(conn);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Distrusts L1 and marks the tracker stopped when the tracking task ends
/// or is dropped (its runtime shut down): without its channel, L1 must not
/// be served, and the next use starts a new task.
struct TrackGuard {
    shared: Weak<Shared>,
    started: Arc<AtomicBool>,
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if let Some(s) = self.shared.upgrade() {
            s.distrust();
        }
        self.started.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vouch that outlasts every test here.
    const LONG: Duration = Duration::from_secs(3600);

    fn shared() -> Arc<Shared> {
        let s = Shared::new(&NearCache::new().max_bytes(1 << 20), "t");
        s.epoch.store(1, Ordering::SeqCst);
        s.trust(1, LONG);
        s
    }

    fn entry_bytes(value: u32) -> Vec<u8> {
        entry_living(value, 60_000, 60_000)
    }

    /// Trusted but not vouched for (no heartbeat answered within its
    /// bound): nothing is read or noted, until a heartbeat vouches again.
    #[test]
    fn a_vouch_that_ran_out_keeps_l1_aside_while_trusted() {
        let s = shared();
        assert!(s.is_vouched());
        let noted = s.note("t:a", &[]);
        s.fill("t:a", noted, entry_bytes(1));
        assert!(s.get("t:a", &[]).is_some());
        s.vouch(Duration::from_millis(20));
        assert!(
            s.is_vouched() && s.get("t:a", &[]).is_some(),
            "within its window"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.is_trusted() && !s.is_vouched(), "past its window");
        assert!(s.get("t:a", &[]).is_none(), "served past its window");
        assert!(s.note("t:b", &[]).is_none(), "noted a fill");
        s.vouch(LONG);
        assert!(s.get("t:a", &[]).is_some(), "kept, served again");
        // The wall clock stepped back 10 s just after a vouch of 20 ms:
        // the vouch now ends 10 s later by that clock, and vouches for
        // nothing rather than for 10 s more.
        s.vouch(Duration::from_millis(20));
        s.vouched.fetch_add(10_000, Ordering::Relaxed);
        assert!(!s.is_vouched(), "stretched by the step");
        assert!(s.get("t:a", &[]).is_none(), "served on a stretched vouch");
        s.vouch(LONG);
        assert!(s.is_vouched() && s.note("t:b", &[]).is_some());
        s.distrust();
        assert!(!s.is_vouched(), "vouched for, not trusted");
    }

    /// An entry fresh for `fresh_ms` from now, then stale until `life_ms`.
    fn entry_living(value: u32, fresh_ms: u64, life_ms: u64) -> Vec<u8> {
        let now = now_ms();
        let meta = EntryMeta {
            created_ms: now,
            load_us: 0,
            expires_ms: now + fresh_ms,
            stale_until_ms: now + life_ms,
        };
        codec::encode(Some(&value), &meta).expect("encodes")
    }

    fn value_of(f: Fetched) -> Option<u32> {
        match f.open::<u32>() {
            Lookup::Found(v, _) => v,
            _ => None,
        }
    }

    #[test]
    fn a_fill_noted_before_a_change_of_its_key_is_refused() {
        let s = shared();
        let noted = s.note("t:k", &[]);
        s.changed("t:k");
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &[]).is_none());
        // Noted after the change: kept, and served.
        let noted = s.note("t:k", &[]);
        let f = s.fill("t:k", noted, entry_bytes(2));
        assert_eq!(value_of(f), Some(2));
        assert_eq!(
            value_of(Fetched::Near(s.get("t:k", &[]).expect("kept"))),
            Some(2)
        );
    }

    #[test]
    fn a_fill_noted_before_a_flush_or_while_distrusted_is_refused() {
        let s = shared();
        let noted = s.note("t:k", &[]);
        s.flush();
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &[]).is_none());
        s.distrust();
        assert!(s.note("t:k", &[]).is_none());
        s.trust(1, LONG);
        let noted = s.note("t:k", &[]);
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &[]).is_some());
        s.distrust();
        assert!(s.get("t:k", &[]).is_none(), "distrust empties L1");
    }

    #[test]
    fn pushes_remove_keys_and_a_null_push_empties_everything() {
        let s = shared();
        for k in ["t:a", "t:b"] {
            let noted = s.note(k, &[]);
            s.fill(k, noted, entry_bytes(1));
        }
        let push = |data| PushInfo {
            kind: PushKind::Invalidate,
            data: vec![data],
        };
        s.on_push(
            1,
            push(Value::Array(vec![Value::BulkString(b"t:a".to_vec())])),
        );
        assert!(s.get("t:a", &[]).is_none());
        assert!(s.get("t:b", &[]).is_some());
        // A lease's key changes nothing.
        s.on_push(
            1,
            push(Value::Array(vec![Value::BulkString(
                b"t:b:~lease".to_vec(),
            )])),
        );
        assert!(s.get("t:b", &[]).is_some());
        s.on_push(1, push(Value::Nil));
        assert!(s.get("t:b", &[]).is_none());
        assert_eq!(s.stats().invalidations_received, 1);
        s.on_push(
            1,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(!s.is_trusted());
    }

    #[test]
    fn a_tagged_entry_is_not_served_once_its_tag_changed() {
        let s = shared();
        let tags = vec!["t:~tag:x".to_owned()];
        let noted = s.note("t:k", &tags);
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &tags).is_some());
        assert!(s.get("t:k", &[]).is_none(), "read under other tags");
        assert!(
            s.get("t:k", &["t:~tag:y".to_owned()]).is_none(),
            "read under another tag"
        );
        s.changed("t:~tag:x");
        assert!(s.get("t:k", &tags).is_none());
    }

    #[test]
    fn an_entry_inserted_as_a_change_arrives_is_never_served() {
        // The change's counter moves after the fill's first check and
        // before its insert's re-check removes the entry: a reader in
        // between must not be served it.
        let s = shared();
        let noted = s.note("t:k", &[]);
        s.fill("t:k", noted, entry_bytes(1));
        s.slots[slot("t:k")].fetch_add(1, Ordering::SeqCst);
        assert!(s.get("t:k", &[]).is_none());
        // The same for a flush that has not emptied L1 yet.
        let noted = s.note("t:k", &[]);
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &[]).is_some());
        s.generation.fetch_add(1, Ordering::SeqCst);
        assert!(s.get("t:k", &[]).is_none());
    }

    #[test]
    fn a_tag_changed_between_the_read_and_the_fill_keeps_the_entry_out() {
        // The tagged read ran while the index listed the key; the index
        // was then evicted (a push for the tag, none for the key).
        let s = shared();
        let tags = vec!["t:~tag:x".to_owned()];
        let noted = s.note("t:k", &tags);
        s.changed("t:~tag:x");
        s.fill("t:k", noted, entry_bytes(1));
        assert!(s.get("t:k", &tags).is_none());
    }

    #[test]
    fn a_lost_connection_withdraws_trust_only_its_own_and_for_good() {
        let s = shared();
        // An older connection's disconnect, arriving late: no effect.
        s.epoch.store(2, Ordering::SeqCst);
        s.trust(2, LONG);
        s.on_push(
            1,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(s.is_trusted());
        // This connection lost before it was trusted: never trusted.
        s.epoch.store(3, Ordering::SeqCst);
        s.on_push(
            3,
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        s.trust(3, LONG);
        assert!(!s.is_trusted());
    }

    #[test]
    fn an_entry_is_kept_no_longer_than_redis_keeps_it() {
        let s = shared();
        let noted = s.note("t:k", &[]);
        s.fill("t:k", noted, entry_living(1, 0, 0));
        assert!(s.get("t:k", &[]).is_none());
        // Not kept either.
        assert_eq!(s.stats().l1_entries, 0);
    }

    /// `max_ttl` bounds how long L1 serves an entry Redis keeps longer, and
    /// the entry's own stale window bounds it when shorter; the sweep then
    /// gives back what they held.
    #[test]
    fn an_entry_is_served_neither_past_max_ttl_nor_past_its_life_and_the_sweep_drops_it() {
        // A tier keeping entries 40 ms, and one keeping them a minute.
        let brief = Shared::new(
            &NearCache::new()
                .max_bytes(1 << 20)
                .max_ttl(Duration::from_millis(40)),
            "t",
        );
        let lasting = Shared::new(&NearCache::new().max_bytes(1 << 20), "t");
        brief.trust(1, LONG);
        lasting.trust(1, LONG);
        // Redis keeps this one a minute: the brief tier serves it 40 ms.
        let noted = brief.note("t:k", &[]);
        brief.fill("t:k", noted, entry_bytes(1));
        // Redis keeps this one 40 ms: so does the lasting tier.
        let noted = lasting.note("t:k", &[]);
        lasting.fill("t:k", noted, entry_living(2, 20, 40));
        let started = std::time::Instant::now();
        let served = (
            brief.get("t:k", &[]).is_some(),
            lasting.get("t:k", &[]).is_some(),
        );
        if started.elapsed() < Duration::from_millis(30) {
            assert_eq!(served, (true, true), "served while young");
        }
        std::thread::sleep(Duration::from_millis(45));
        assert!(brief.get("t:k", &[]).is_none(), "served past max_ttl");
        assert!(lasting.get("t:k", &[]).is_none(), "served past its life");
        // Not served, but still held until swept.
        assert_eq!(brief.stats().l1_entries, 1);
        brief.sweep();
        lasting.sweep();
        assert_eq!((brief.stats().l1_entries, brief.stats().l1_bytes), (0, 0));
        assert_eq!(lasting.stats().l1_entries, 0);
        // The sweep keeps what is still in time.
        let noted = brief.note("t:k", &[]);
        brief.fill("t:k", noted, entry_bytes(1));
        brief.sweep();
        assert!(brief.get("t:k", &[]).is_some());
    }

    /// A backend on a port nothing listens on: its tracking connection
    /// never subscribes, which these tests do not need.
    fn backend() -> NearBackend {
        let client = redis::Client::open("redis://127.0.0.1:1").expect("url");
        let redis = RedisBackend::new(
            super::super::redis::Target::Single(client.clone()),
            Duration::from_millis(50),
            crate::breaker::Breaker::new(crate::CircuitBreaker::default(), "t".to_owned()),
            1 << 20,
            codec::Format::default(),
            "t",
        );
        let near = NearBackend::new(
            redis,
            client,
            &NearCache::new(),
            "t",
            Duration::from_millis(50),
            Duration::from_millis(50),
        );
        near.shared.trust(1, LONG);
        near
    }

    fn filled(b: &NearBackend, key: &str) {
        let noted = b.shared.note(key, &[]);
        b.shared.fill(key, noted, entry_bytes(1));
        assert!(b.shared.get(key, &[]).is_some());
    }

    #[tokio::test]
    async fn a_write_removes_its_keys_from_l1_when_it_returns_or_is_dropped() {
        let b = backend();
        filled(&b, "t:a");
        filled(&b, "t:b");
        let noted = b.shared.note("t:a", &[]);
        b.changing(&["t:a"], async {}).await;
        assert!(b.shared.get("t:a", &[]).is_none());
        assert!(b.shared.get("t:b", &[]).is_some(), "only its keys");
        // A read noted before the write cannot fill after it.
        b.shared.fill("t:a", noted, entry_bytes(1));
        assert!(b.shared.get("t:a", &[]).is_none());
        // Dropped mid-write (the write may have landed): removed too.
        let write = b.changing(&["t:b"], std::future::pending::<()>());
        let _ = tokio::time::timeout(Duration::from_millis(5), write).await;
        assert!(b.shared.get("t:b", &[]).is_none());
    }

    #[test]
    fn the_backend_debugs_as_its_tier() {
        let b = backend();
        filled(&b, "t:a");
        let shown = format!("{b:?}");
        assert!(shown.starts_with("NearBackend"), "{shown}");
        assert!(shown.contains("l1_entries: 1"), "{shown}");
        assert!(shown.contains("trusted: true"), "{shown}");
    }

    /// An open breaker means Redis is failing, and the tracking connection
    /// with it may be (its heartbeat has not told yet): L1 is not served
    /// meanwhile, though it is trusted and holds the entry.
    #[tokio::test]
    async fn l1_is_not_served_while_the_breaker_is_open() {
        let b = backend();
        // No tracking task: nothing but the breaker changes below.
        b.tracker.started.store(true, Ordering::SeqCst);
        filled(&b, "t:a");
        assert!(b.l1_hit("t:a", &[]).is_some());
        // Nothing listens: each read fails, until the breaker opens.
        for _ in 0..50 {
            if b.redis.breaker_open() {
                break;
            }
            let _ = b.fetch("t:b", &[], Duration::from_millis(50)).await;
        }
        assert!(b.redis.breaker_open(), "the breaker opened");
        assert!(b.shared.is_trusted() && b.shared.get("t:a", &[]).is_some());
        assert!(
            b.l1_hit("t:a", &[]).is_none(),
            "served with the breaker open"
        );
    }

    #[tokio::test]
    async fn a_barrier_that_cannot_reach_the_tracking_connection_empties_l1() {
        let b = backend();
        filled(&b, "t:a");
        b.barrier().await;
        assert!(b.shared.get("t:a", &[]).is_none());
        assert_eq!(b.stats().flushes, 2, "the trust's and the barrier's");
    }

    /// A fill that replaces its key's entry is not an eviction; an entry
    /// too heavy for L1's bound is (it is served, never kept).
    #[test]
    fn only_entries_dropped_for_the_bound_count_as_evictions() {
        let s = Shared::new(&NearCache::new().max_bytes(64 << 10), "t");
        s.trust(1, LONG);
        for value in 0..5 {
            let noted = s.note("t:k", &[]);
            s.fill("t:k", noted, entry_bytes(value));
        }
        assert_eq!(
            value_of(s.get("t:k", &[]).map(Fetched::Near).expect("kept")),
            Some(4)
        );
        assert_eq!((s.stats().l1_entries, s.stats().l1_evictions), (1, 0));
        // Heavier than the whole bound: served from what Redis sent, not
        // kept, counted.
        let now = now_ms();
        let meta = EntryMeta {
            created_ms: now,
            load_us: 0,
            expires_ms: now + 60_000,
            stale_until_ms: now + 60_000,
        };
        let heavy = codec::encode(Some(&"x".repeat(80 << 10)), &meta).expect("encodes");
        let noted = s.note("t:heavy", &[]);
        assert!(matches!(
            s.fill("t:heavy", noted, heavy).open::<String>(),
            Lookup::Found(Some(v), _) if v.len() == 80 << 10
        ));
        assert!(s.get("t:heavy", &[]).is_none());
        assert_eq!((s.stats().l1_entries, s.stats().l1_evictions), (1, 1));
        // Light as stored, heavy once decompressed (the decoded copy a hit
        // keeps is of that size): not kept either.
        let bomb = codec::claiming_compressed(&meta, 80 << 10);
        assert!(bomb.len() < 100);
        let noted = s.note("t:bomb", &[]);
        s.fill("t:bomb", noted, bomb);
        assert!(s.get("t:bomb", &[]).is_none(), "weighed as stored");
        assert_eq!((s.stats().l1_entries, s.stats().l1_evictions), (1, 2));
    }

    #[test]
    fn settings_are_kept_and_each_unusable_one_is_refused() {
        // The documented defaults: 64 MiB, 60 s, 50 ms.
        assert_eq!(DEFAULT_NEAR_MAX_BYTES, 67_108_864);
        let near = NearCache::new();
        assert_eq!(
            (
                near.get_max_bytes(),
                near.get_max_ttl(),
                near.get_heartbeat()
            ),
            (
                DEFAULT_NEAR_MAX_BYTES,
                DEFAULT_NEAR_MAX_TTL,
                DEFAULT_NEAR_HEARTBEAT
            )
        );
        assert_eq!(near.invalid(), None);
        let set = near
            .max_bytes(12_345)
            .max_ttl(Duration::from_millis(7))
            .heartbeat(Duration::from_millis(3));
        assert_eq!(
            (set.get_max_bytes(), set.get_max_ttl(), set.get_heartbeat()),
            (12_345, Duration::from_millis(7), Duration::from_millis(3))
        );
        assert_eq!(set.invalid(), None);
        let refused = |near: NearCache| near.invalid().expect("refused");
        assert!(refused(NearCache::new().max_bytes(0)).contains("max_bytes"));
        assert!(refused(NearCache::new().heartbeat(Duration::ZERO)).contains("heartbeat"));
        // L1 keeps milliseconds: less would keep nothing.
        let ttl = |d| refused(NearCache::new().max_ttl(d));
        assert!(ttl(Duration::from_micros(999)).contains("max_ttl"));
        assert!(ttl(Duration::ZERO).contains("max_ttl"));
        assert_eq!(
            NearCache::new().max_ttl(Duration::from_millis(1)).invalid(),
            None
        );
    }

    #[test]
    fn l1_stays_within_its_byte_bound() {
        let s = Shared::new(&NearCache::new().max_bytes(64 << 10), "t");
        s.trust(1, LONG);
        let bytes = entry_bytes(7);
        // An entry weighs its key, its bytes and the overhead, exactly.
        let noted = s.note("t:first", &[]);
        s.fill("t:first", noted, bytes.clone());
        let weight = ("t:first".len() + bytes.len() + ENTRY_OVERHEAD) as u64;
        assert_eq!((s.stats().l1_entries, s.stats().l1_bytes), (1, weight));
        // A million distinct keys.
        for i in 0..1_000_000 {
            let key = format!("t:{i}");
            let noted = s.note(&key, &[]);
            s.fill(&key, noted, bytes.clone());
        }
        let stats = s.stats();
        assert!(stats.l1_bytes <= 64 << 10, "{stats:?}");
        assert!(stats.l1_evictions > 0, "{stats:?}");
        // And it is used: bounded, not emptied.
        assert!(stats.l1_bytes >= 32 << 10, "{stats:?}");
    }
}
