//! The in-process backend on quick_cache: bounded, with a per-entry expiry.
//!
//! Values are kept as typed objects (`Arc<dyn Any>`), so a hit is a lookup
//! and a clone, with no serialization. An entry of another type under the same
//! key reads as unreadable, exactly as a foreign value does on Redis.
//!
//! Why quick_cache and not moka (which this backend used first): a moka read
//! records itself in a queue for the eviction policy and, with per-entry
//! expiry, in a timer wheel; a quick_cache read takes a shard's read lock
//! and marks the entry referenced. Measured on the same hit path
//! (`cached-bench memory_hit`), the lookup was most of the framework's
//! cost over moka's own `get`. Expiry is kept by the entries themselves: an
//! entry past its time reads as absent (and is removed), and a sweep gives
//! back the memory of the expired entries no one reads again.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Fetched, LeaseIf, LeaseOutcome, Lookup};
use crate::Cacheable;
use crate::codec::{DecodeError, EntryMeta};

/// One stored entry, shared by every reader.
#[derive(Clone)]
pub(crate) struct MemEntry(Arc<MemInner>);

impl MemEntry {
    /// The entry as a value of type `T`.
    #[inline]
    pub(crate) fn open<T: Cacheable>(&self) -> Lookup<T> {
        match &self.0.value {
            None => Lookup::Found(None, self.0.meta),
            Some(any) => match any.downcast_ref::<T>() {
                Some(v) => Lookup::Found(Some(v.clone()), self.0.meta),
                None => Lookup::Unreadable(DecodeError::TypeMismatch),
            },
        }
    }

    /// Whether the entry is still kept at `now` (its `keep_for` from the
    /// write not yet over), as Redis keeps a key until its `PX`.
    /// (`<` against `<=`: equal instants are not worth a test; cargo-mutants
    /// reports that mutant as a survivor.)
    #[inline]
    fn live_at(&self, now: Instant) -> bool {
        now < self.0.gone_at
    }
}

struct MemInner {
    /// `None`: a cached absence.
    value: Option<Box<dyn Any + Send + Sync>>,
    meta: EntryMeta,
    /// The write's instant plus its `keep_for`: from then on the entry is
    /// gone, whatever its metadata says.
    gone_at: Instant,
}

/// Writes between two sweeps of expired entries, at the least.
const MIN_SWEEP: usize = 1024;

/// The entries by key, bounded by their count. Hashed with foldhash: every
/// hit hashes its key, and SipHash cost a hit a sixth of its time; the keys
/// are the application's, and foldhash is seeded per process all the same.
type Entries = quick_cache::sync::Cache<
    String,
    MemEntry,
    quick_cache::UnitWeighter,
    foldhash::fast::RandomState,
>;

pub(crate) struct MemoryBackend {
    entries: Entries,
    /// Writes since the last sweep of expired entries, and how many
    /// trigger the next (amortized: the sweep visits every entry).
    writes: AtomicUsize,
    sweep_every: AtomicUsize,
    /// Tag members (and leases) past which the index is pruned.
    prune_at: usize,
    // Leases and tags, and every write or invalidation that must see them,
    // go through this lock, so "check the lease, then store" is atomic
    // against an invalidation.
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    leases: HashMap<String, (u64, Instant)>,
    /// Tag key -> entry keys, and when the index goes (see
    /// [`MemState::tag`]).
    tags: HashMap<String, (HashSet<String>, Instant)>,
    /// Keys recorded under tags, all tags together.
    members: usize,
    /// Members and leases past which the next prune runs: twice what the
    /// last one kept (at least the backend's base), so pruning is amortized.
    next_prune: usize,
}

impl MemState {
    /// Records `key` under each of `tags`, for at least `keep_for` more:
    /// a tag's index lives as long as the last entry or lease recorded
    /// under it can, as a Redis tag set lives `tag_for` from its last
    /// addition. Until then it lists a key stored again under other tags
    /// (or none) too, as on Redis, so its invalidation still removes it
    /// (README: a load under other tags takes over the entry's tags); past
    /// it, the index is gone, and one live key stored under ever-new tags
    /// does not keep every tag it ever had.
    fn tag(&mut self, key: &str, tags: &[String], keep_for: Duration) {
        if tags.is_empty() {
            return;
        }
        let until = Instant::now() + keep_for.min(crate::clock::LONGEST);
        for tag in tags {
            let (keys, ends) = self
                .tags
                .entry(tag.clone())
                .or_insert_with(|| (HashSet::new(), until));
            *ends = (*ends).max(until);
            if keys.insert(key.to_owned()) {
                self.members += 1;
            }
        }
    }

    /// Forgets tag members whose entries are gone (evicted, expired) and
    /// whose leases are over, and leases past their expiry: the index stays
    /// bounded by the live entries, whatever the key space.
    fn prune(&mut self, entries: &Entries) {
        let now = Instant::now();
        self.leases.retain(|_, (_, until)| *until > now);
        let leases = &self.leases;
        let mut members = 0;
        self.tags.retain(|_, (keys, until)| {
            if *until <= now {
                return false;
            }
            keys.retain(|k| entries.contains_key(k) || leases.contains_key(k));
            members += keys.len();
            !keys.is_empty()
        });
        self.members = members;
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl MemoryBackend {
    pub(crate) fn new(max_capacity: u64) -> Self {
        let entries = Entries::with(
            // The table's first size (it grows as entries come).
            usize::try_from(max_capacity)
                .unwrap_or(usize::MAX)
                .clamp(16, 1 << 16),
            max_capacity,
            quick_cache::UnitWeighter,
            foldhash::fast::RandomState::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
        MemoryBackend {
            entries,
            writes: AtomicUsize::new(0),
            sweep_every: AtomicUsize::new(MIN_SWEEP),
            prune_at: usize::try_from(max_capacity)
                .unwrap_or(usize::MAX)
                .saturating_mul(2)
                .max(1024),
            state: Mutex::default(),
        }
    }

    #[inline]
    /// The entry under `key`; with `tags` (full tag keys), only while each
    /// tag's index lists it, as on Redis: an entry recorded under other
    /// tags (the same key cached by a call with other tag arguments) is
    /// not served to a call whose tag invalidation would miss it.
    pub(crate) fn fetch(&self, key: &str, tags: &[String]) -> Fetched {
        let Some(entry) = self.live(key) else {
            return Fetched::Absent;
        };
        if !tags.is_empty() {
            let state = self.lock_state();
            let now = Instant::now();
            if !tags.iter().all(|t| {
                state
                    .tags
                    .get(t)
                    .is_some_and(|(m, until)| *until > now && m.contains(key))
            }) {
                return Fetched::Absent;
            }
        }
        Fetched::Memory(entry)
    }

    /// The entry under `key` while it is kept; one past its time is
    /// removed (unless a write replaced it meanwhile) and reads as absent.
    #[inline]
    fn live(&self, key: &str) -> Option<MemEntry> {
        let entry = self.entries.get(key)?;
        if entry.live_at(Instant::now()) {
            return Some(entry);
        }
        self.entries.remove_if(key, |e| Arc::ptr_eq(&e.0, &entry.0));
        None
    }

    fn insert<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: EntryMeta,
        keep_for: Duration,
    ) {
        let value = value.map(|v| Box::new(v.clone()) as Box<dyn Any + Send + Sync>);
        let now = Instant::now();
        let entry = MemEntry(Arc::new(MemInner {
            value,
            meta,
            gone_at: now + keep_for.min(crate::clock::LONGEST),
        }));
        self.entries.insert(key.to_owned(), entry);
        let _swept = self.sweep_now_and_then(now);
    }

    /// Gives back the memory of expired entries no one reads again (a read
    /// removes the one it finds): every so many writes, as many as the
    /// entries the last sweep kept (at least [`MIN_SWEEP`]), so the cost
    /// per write stays constant whatever the size.
    /// Returns whether it swept.
    fn sweep_now_and_then(&self, now: Instant) -> bool {
        let writes = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if writes < self.sweep_every.load(Ordering::Relaxed) {
            return false;
        }
        self.writes.store(0, Ordering::Relaxed);
        self.entries.retain(|_, e| e.live_at(now));
        self.sweep_every
            .store(self.entries.len().max(MIN_SWEEP), Ordering::Relaxed);
        true
    }

    /// A write-through: stores the value and destroys any lease on the key,
    /// so a load in flight cannot overwrite it with what it read before.
    pub(crate) fn put<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: EntryMeta,
        keep_for: Duration,
        tags: &[String],
    ) {
        let mut state = self.lock_state();
        state.leases.remove(key);
        state.tag(key, tags, keep_for);
        self.insert(key, value, meta, keep_for);
    }

    /// A plain fill (a miss of a `lock = false` call): stores the value
    /// unless a lease is held on the key (a load or a write in flight,
    /// whose value wins). Returns whether it stored.
    pub(crate) fn fill<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: EntryMeta,
        keep_for: Duration,
        tags: &[String],
    ) -> bool {
        let mut state = self.lock_state();
        if state
            .leases
            .get(key)
            .is_some_and(|(_, until)| *until > Instant::now())
        {
            return false;
        }
        state.tag(key, tags, keep_for);
        self.insert(key, value, meta, keep_for);
        true
    }

    /// Removes the values and destroys any leases on them.
    pub(crate) fn invalidate(&self, keys: &[String]) {
        let mut state = self.lock_state();
        for key in keys {
            state.leases.remove(key);
            self.entries.remove(key.as_str());
        }
    }

    /// Removes every entry (and lease) whose key matches the glob `pattern`.
    pub(crate) fn invalidate_pattern(&self, pattern: &str) -> u64 {
        let mut state = self.lock_state();
        state
            .leases
            .retain(|k, _| !crate::glob::matches(pattern, k));
        let now = Instant::now();
        let removed = std::sync::atomic::AtomicU64::new(0);
        self.entries.retain(|key, e| {
            if !crate::glob::matches(pattern, key) {
                return true;
            }
            removed.fetch_add(u64::from(e.live_at(now)), Ordering::Relaxed);
            false
        });
        removed.into_inner()
    }

    /// Removes every entry recorded under the tag key, and their leases.
    pub(crate) fn invalidate_tag(&self, tag: &str) -> u64 {
        let mut state = self.lock_state();
        // An index past its time is gone (see `MemState::tag`).
        let keys = match state.tags.remove(tag) {
            Some((keys, until)) => {
                state.members = state.members.saturating_sub(keys.len());
                if until > Instant::now() {
                    keys
                } else {
                    HashSet::new()
                }
            }
            None => HashSet::new(),
        };
        let mut removed = 0;
        for key in keys {
            state.leases.remove(&key);
            if self.live(&key).is_some() {
                removed += 1;
            }
            self.entries.remove(key.as_str());
        }
        removed
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, MemState> {
        let mut state = crate::lock(&self.state);
        if state.members + state.leases.len() > state.next_prune.max(self.prune_at) {
            state.prune(&self.entries);
            state.next_prune = (state.members + state.leases.len()).saturating_mul(2);
        }
        state
    }

    pub(crate) fn acquire_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        cond: LeaseIf,
        tags: &[String],
    ) -> LeaseOutcome {
        let mut state = self.lock_state();
        let now = Instant::now();
        // (`>` against `>=`: equal instants are not worth a test.)
        if let Some((_, until)) = state.leases.get(key)
            && *until > now
        {
            return LeaseOutcome::Held;
        }
        match cond {
            LeaseIf::Absent if self.live(key).is_some() => {
                return LeaseOutcome::ValuePresent;
            }
            LeaseIf::Unchanged(seen) if self.live(key).is_none_or(|entry| entry.0.meta != seen) => {
                return LeaseOutcome::Changed;
            }
            _ => {}
        }
        state.leases.insert(
            key.to_owned(),
            (token, now + ttl.min(crate::clock::LONGEST)),
        );
        // Tagged when the load starts, not when it ends, so a tag
        // invalidation in between finds the lease and destroys it.
        state.tag(key, tags, ttl);
        // Pattern invalidations here remove matching leases under this
        // lock, so the memory backend needs no epoch.
        LeaseOutcome::Acquired(0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_if_leased<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: EntryMeta,
        keep_for: Duration,
        token: u64,
        tags: &[String],
    ) -> bool {
        let mut state = self.lock_state();
        match state.leases.get(key) {
            Some((held, until)) if *held == token && *until > Instant::now() => {
                state.leases.remove(key);
                state.tag(key, tags, keep_for);
                self.insert(key, value, meta, keep_for);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release_lease(&self, key: &str, token: u64) {
        let mut state = self.lock_state();
        if state
            .leases
            .get(key)
            .is_some_and(|(held, _)| *held == token)
        {
            state.leases.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EntryMeta {
        EntryMeta {
            created_ms: 0,
            load_us: 0,
            expires_ms: u64::MAX,
            stale_until_ms: u64::MAX,
        }
    }

    #[test]
    fn a_fill_defers_to_a_live_lease_only() {
        let backend = MemoryBackend::new(10);
        let lease = Duration::from_millis(50);
        let taken = backend.acquire_lease("k", 7, lease, LeaseIf::Absent, &[]);
        assert!(matches!(taken, LeaseOutcome::Acquired(_)));
        assert!(
            !backend.fill("k", Some(&1u32), meta(), Duration::from_secs(60), &[]),
            "a fill landed under a live lease"
        );
        assert!(!backend.entries.contains_key("k"));
        std::thread::sleep(lease + Duration::from_millis(20));
        // `>` against `>=`: equal instants are not worth a test.
        assert!(
            backend.fill("k", Some(&1u32), meta(), Duration::from_secs(60), &[]),
            "an expired lease still held the key"
        );
        assert!(backend.entries.contains_key("k"));
    }

    #[test]
    fn the_tag_index_stays_bounded_by_the_live_entries() {
        let backend = MemoryBackend::new(10);
        let tags = ["t:a".to_owned(), "t:b".to_owned()];
        for i in 0..200_000u32 {
            backend.put(
                &format!("k{i}"),
                Some(&i),
                meta(),
                Duration::from_secs(60),
                &tags,
            );
        }
        let members = backend.lock_state().members;
        assert!(
            members <= 4 * 1024,
            "{members} tag members for at most 10 live entries"
        );
        // What is live is still found by its tag.
        backend.put("live", Some(&1u32), meta(), Duration::from_secs(60), &tags);
        assert!(backend.invalidate_tag("t:a") >= 1);
        assert!(!backend.entries.contains_key("live"));
    }

    /// A live key stored again and again under new tags (a popular item
    /// in many users' lists) keeps each tag's index only as long as what
    /// was stored under it can live, as Redis's tag sets expire: not every
    /// tag it was ever stored under. The latest tag still finds it.
    #[test]
    fn the_tag_index_stays_bounded_for_a_live_key_under_ever_new_tags() {
        let backend = MemoryBackend::new(10);
        let brief = Duration::from_millis(1);
        let started = Instant::now();
        let mut i = 0u32;
        while i < 200_000 || started.elapsed() < Duration::from_millis(20) {
            backend.put("k", Some(&i), meta(), brief, &[format!("t:{i}")]);
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
        let long = Duration::from_secs(60);
        backend.put("k", Some(&i), meta(), long, &["t:last".to_owned()]);
        let state = backend.lock_state();
        let (members, tags) = (state.members, state.tags.len());
        drop(state);
        assert!(
            members <= 4 * 1024 && tags <= 4 * 1024,
            "{members} tag members under {tags} tags for one live entry"
        );
        assert_eq!(backend.invalidate_tag("t:last"), 1);
        assert!(!backend.entries.contains_key("k"));
    }

    /// A key stored again without a tag (an untagged write-through of a
    /// tagged function's entry) is still removed by the tag while the
    /// tag's index lives, prunes or not, as on one Redis server (README: a
    /// load under other tags takes over the entry's tags); once the index
    /// is past its time, the tag finds nothing, and a tagged read does not
    /// take the entry as its own.
    #[test]
    fn a_tag_reaches_a_key_stored_again_untagged_while_its_index_lives() {
        let backend = MemoryBackend::new(100);
        let long = Duration::from_secs(60);
        let tag = ["t:a".to_owned()];
        backend.put("k", Some(&1u32), meta(), long, &tag);
        backend.put("k", Some(&2u32), meta(), long, &[]);
        // Enough tag members elsewhere for the index to be pruned.
        for i in 0..5_000u32 {
            backend.put("other", Some(&i), meta(), long, &[format!("o:{i}")]);
        }
        assert_eq!(backend.invalidate_tag("t:a"), 1);
        assert!(!found(&backend, "k"));

        let brief = Duration::from_millis(20);
        backend.put("j", Some(&1u32), meta(), brief, &tag);
        backend.put("j", Some(&2u32), meta(), long, &[]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(backend.fetch("j", &tag), Fetched::Absent));
        assert!(found(&backend, "j"));
        assert_eq!(backend.invalidate_tag("t:a"), 0);
        assert!(found(&backend, "j"));
    }

    fn found(backend: &MemoryBackend, key: &str) -> bool {
        matches!(backend.fetch(key, &[]), Fetched::Memory(_))
    }

    #[test]
    fn an_entry_is_served_until_its_keep_for_and_then_is_gone() {
        let backend = MemoryBackend::new(100);
        let keep = Duration::from_millis(60);
        backend.put("k", Some(&1u32), meta(), keep, &[]);
        backend.put("other", Some(&2u32), meta(), Duration::from_secs(60), &[]);
        assert!(found(&backend, "k"), "gone before its time");
        std::thread::sleep(keep + Duration::from_millis(20));
        assert!(!found(&backend, "k"), "served past its keep_for");
        // The read gave its memory back; the other entry is untouched.
        assert!(!backend.entries.contains_key("k"));
        assert!(found(&backend, "other"));
        // Past its time, an entry neither blocks a lease for an absent
        // value nor counts as removed by an invalidation.
        backend.put("k2", Some(&1u32), meta(), keep, &["t".to_owned()]);
        std::thread::sleep(keep + Duration::from_millis(20));
        assert_eq!(backend.invalidate_tag("t"), 0);
        backend.put("k3", Some(&1u32), meta(), keep, &[]);
        std::thread::sleep(keep + Duration::from_millis(20));
        assert_eq!(backend.invalidate_pattern("k*"), 0);
        backend.put("k4", Some(&1u32), meta(), keep, &[]);
        std::thread::sleep(keep + Duration::from_millis(20));
        let taken = backend.acquire_lease("k4", 1, keep, LeaseIf::Absent, &[]);
        assert!(matches!(taken, LeaseOutcome::Acquired(_)), "{taken:?}");
    }

    #[test]
    fn live_entries_count_in_invalidations() {
        let backend = MemoryBackend::new(100);
        let long = Duration::from_secs(60);
        backend.put("a:1", Some(&1u32), meta(), long, &["t".to_owned()]);
        backend.put("a:2", Some(&1u32), meta(), long, &[]);
        backend.put("b:1", Some(&1u32), meta(), long, &[]);
        assert_eq!(backend.invalidate_pattern("a:*"), 1 + 1);
        assert!(found(&backend, "b:1"));
        assert!(!found(&backend, "a:1") && !found(&backend, "a:2"));
        backend.put("c", Some(&1u32), meta(), long, &["t".to_owned()]);
        assert_eq!(backend.invalidate_tag("t"), 1);
        let taken = backend.acquire_lease("b:1", 1, long, LeaseIf::Absent, &[]);
        assert_eq!(taken, LeaseOutcome::ValuePresent);
    }

    #[test]
    fn expired_entries_no_one_reads_again_are_swept() {
        let backend = MemoryBackend::new(1_000_000);
        let short = Duration::from_millis(1);
        for i in 0..5_000u32 {
            backend.put(&format!("old{i}"), Some(&i), meta(), short, &[]);
        }
        std::thread::sleep(Duration::from_millis(10));
        // Enough writes for a sweep, whatever the count since the last.
        for i in 0..(5_000 + 2 * MIN_SWEEP as u32) {
            backend.put(
                &format!("new{i}"),
                Some(&i),
                meta(),
                Duration::from_secs(60),
                &[],
            );
        }
        let old = (0..5_000u32)
            .filter(|i| backend.entries.contains_key(format!("old{i}").as_str()))
            .count();
        assert_eq!(old, 0, "expired entries kept their memory");
        assert!(
            backend.entries.len() >= 5_000,
            "a sweep removed live entries"
        );
    }

    #[test]
    fn a_sweep_runs_once_per_as_many_writes_as_entries_it_kept() {
        let backend = MemoryBackend::new(1_000_000);
        let now = Instant::now();
        let sweeps_in = |writes: usize| {
            (0..writes)
                .filter(|_| backend.sweep_now_and_then(now))
                .count()
        };
        assert_eq!(sweeps_in(MIN_SWEEP - 1), 0, "swept before MIN_SWEEP writes");
        assert!(
            backend.sweep_now_and_then(now),
            "no sweep at MIN_SWEEP writes"
        );
        assert_eq!(sweeps_in(MIN_SWEEP - 1), 0, "swept again at once");
        assert!(backend.sweep_now_and_then(now));
        // Past MIN_SWEEP live entries, the period is the entry count.
        let long = Duration::from_secs(60);
        for i in 0..3 * MIN_SWEEP as u32 {
            backend.insert(&format!("k{i}"), Some(&i), meta(), long);
        }
        let kept = backend.entries.len();
        assert!(kept >= 2 * MIN_SWEEP, "{kept}");
        // Wherever the count stands, a full period brings exactly one.
        assert_eq!(sweeps_in(kept), 1);
        assert_eq!(sweeps_in(kept), 1);
    }

    #[test]
    fn a_live_lease_is_held_and_an_expired_one_is_not() {
        let backend = MemoryBackend::new(100);
        let lease = Duration::from_millis(60);
        let taken = backend.acquire_lease("k", 1, lease, LeaseIf::Any, &[]);
        assert!(matches!(taken, LeaseOutcome::Acquired(_)));
        let again = backend.acquire_lease("k", 2, lease, LeaseIf::Any, &[]);
        assert_eq!(again, LeaseOutcome::Held, "a live lease taken twice");
        assert!(!backend.set_if_leased("k", Some(&2u32), meta(), lease, 2, &[]));
        std::thread::sleep(lease + Duration::from_millis(20));
        let after = backend.acquire_lease("k", 3, lease, LeaseIf::Any, &[]);
        assert!(matches!(after, LeaseOutcome::Acquired(_)), "{after:?}");
        // The lease holder stores; the earlier holder cannot.
        assert!(!backend.set_if_leased("k", Some(&1u32), meta(), lease, 1, &[]));
        assert!(backend.set_if_leased("k", Some(&3u32), meta(), lease, 3, &[]));
        assert!(found(&backend, "k"));
    }

    #[test]
    fn a_lease_asked_for_an_unchanged_entry_is_refused_once_it_changed() {
        let backend = MemoryBackend::new(100);
        let long = Duration::from_secs(60);
        let seen = EntryMeta {
            created_ms: 1,
            ..meta()
        };
        backend.put("k", Some(&1u32), seen, long, &[]);
        let taken = backend.acquire_lease("k", 1, long, LeaseIf::Unchanged(seen), &[]);
        assert!(matches!(taken, LeaseOutcome::Acquired(_)), "{taken:?}");
        backend.release_lease("k", 1);
        // Replaced by a write-through: another entry.
        let newer = EntryMeta {
            created_ms: 2,
            ..meta()
        };
        backend.put("k", Some(&2u32), newer, long, &[]);
        let refused = backend.acquire_lease("k", 2, long, LeaseIf::Unchanged(seen), &[]);
        assert_eq!(refused, LeaseOutcome::Changed);
        // Gone: changed too.
        backend.invalidate(&["k".to_owned()]);
        let gone = backend.acquire_lease("k", 3, long, LeaseIf::Unchanged(newer), &[]);
        assert_eq!(gone, LeaseOutcome::Changed);
    }

    #[test]
    fn a_small_bound_still_keeps_what_was_just_written() {
        for bound in 1..=8u64 {
            let backend = MemoryBackend::new(bound);
            for i in 0..20u32 {
                let key = format!("k{i}");
                backend.put(&key, Some(&i), meta(), Duration::from_secs(60), &[]);
                assert!(found(&backend, &key), "bound {bound}: k{i} not kept");
            }
            assert!(
                backend.entries.len() as u64 <= bound,
                "{} entries kept under a bound of {bound}",
                backend.entries.len()
            );
        }
    }
}
