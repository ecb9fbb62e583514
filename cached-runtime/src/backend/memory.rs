//! The in-process backend on moka: bounded, with a per-entry expiry.
//!
//! Values are kept as typed objects (`Arc<dyn Any>`), so a hit is a lookup
//! and a clone, with no serialization. An entry of another type under the same
//! key reads as unreadable, exactly as a foreign value does on Redis.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

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
}

struct MemInner {
    /// `None`: a cached absence.
    value: Option<Box<dyn Any + Send + Sync>>,
    meta: EntryMeta,
    keep_for: Duration,
}

struct KeepFor;

impl moka::Expiry<String, MemEntry> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &MemEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.0.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &MemEntry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.0.keep_for)
    }
}

pub(crate) struct MemoryBackend {
    entries: Moka<String, MemEntry>,
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
    /// Tag key -> entry keys.
    tags: HashMap<String, HashSet<String>>,
    /// Keys recorded under tags, all tags together.
    members: usize,
    /// Members and leases past which the next prune runs: twice what the
    /// last one kept (at least the backend's base), so pruning is amortized.
    next_prune: usize,
}

impl MemState {
    fn tag(&mut self, key: &str, tags: &[String]) {
        for tag in tags {
            if self
                .tags
                .entry(tag.clone())
                .or_default()
                .insert(key.to_owned())
            {
                self.members += 1;
            }
        }
    }

    /// Forgets tag members whose entries are gone (evicted, expired) and
    /// whose leases are over, and leases past their expiry: the index stays
    /// bounded by the live entries, whatever the key space.
    fn prune(&mut self, entries: &Moka<String, MemEntry>) {
        let now = Instant::now();
        self.leases.retain(|_, (_, until)| *until > now);
        let leases = &self.leases;
        let mut members = 0;
        self.tags.retain(|_, keys| {
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
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl MemoryBackend {
    pub(crate) fn new(max_capacity: u64) -> Self {
        let entries = Moka::builder()
            .max_capacity(max_capacity)
            .expire_after(KeepFor)
            .build();
        MemoryBackend {
            entries,
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
        let Some(entry) = self.entries.get(key) else {
            return Fetched::Absent;
        };
        if !tags.is_empty() {
            let state = self.lock_state();
            if !tags
                .iter()
                .all(|t| state.tags.get(t).is_some_and(|m| m.contains(key)))
            {
                return Fetched::Absent;
            }
        }
        Fetched::Memory(entry)
    }

    fn insert<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: EntryMeta,
        keep_for: Duration,
    ) {
        let value = value.map(|v| Box::new(v.clone()) as Box<dyn Any + Send + Sync>);
        let entry = MemEntry(Arc::new(MemInner {
            value,
            meta,
            keep_for,
        }));
        self.entries.insert(key.to_owned(), entry);
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
        state.tag(key, tags);
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
        state.tag(key, tags);
        self.insert(key, value, meta, keep_for);
        true
    }

    /// Removes the values and destroys any leases on them.
    pub(crate) fn invalidate(&self, keys: &[String]) {
        let mut state = self.lock_state();
        for key in keys {
            state.leases.remove(key);
            self.entries.invalidate(key);
        }
    }

    /// Removes every entry (and lease) whose key matches the glob `pattern`.
    pub(crate) fn invalidate_pattern(&self, pattern: &str) -> u64 {
        let mut state = self.lock_state();
        state
            .leases
            .retain(|k, _| !crate::glob::matches(pattern, k));
        let mut removed = 0;
        for (key, _) in self.entries.iter() {
            if crate::glob::matches(pattern, &key) {
                self.entries.invalidate(key.as_str());
                removed += 1;
            }
        }
        removed
    }

    /// Removes every entry recorded under the tag key, and their leases.
    pub(crate) fn invalidate_tag(&self, tag: &str) -> u64 {
        let mut state = self.lock_state();
        let keys = state.tags.remove(tag).unwrap_or_default();
        let mut removed = 0;
        for key in keys {
            state.leases.remove(&key);
            if self.entries.contains_key(&key) {
                removed += 1;
            }
            self.entries.invalidate(&key);
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
        if let Some((_, until)) = state.leases.get(key)
            && *until > now
        {
            return LeaseOutcome::Held;
        }
        match cond {
            LeaseIf::Absent if self.entries.contains_key(key) => {
                return LeaseOutcome::ValuePresent;
            }
            LeaseIf::Unchanged(seen)
                if self
                    .entries
                    .get(key)
                    .is_none_or(|entry| entry.0.meta != seen) =>
            {
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
        state.tag(key, tags);
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
                state.tag(key, tags);
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
        backend.entries.run_pending_tasks();
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
}
