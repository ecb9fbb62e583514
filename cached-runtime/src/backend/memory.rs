//! The in-process backend on moka: bounded, with a per-entry expiry.
//!
//! Values are kept as typed objects (`Arc<dyn Any>`), so a hit is a lookup
//! and a clone, with no serialization. An entry of another type under the same
//! key reads as unreadable, exactly as a foreign value does on Redis.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

use super::{LeaseOutcome, Lookup};
use crate::Cacheable;
use crate::codec::{DecodeError, EntryMeta};

#[derive(Clone)]
struct MemEntry(Arc<MemInner>);

struct MemInner {
    value: Box<dyn Any + Send + Sync>,
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
    // Leases, and every write that must see them, go through this lock, so
    // "check the lease, then store" is atomic against an invalidation.
    leases: Mutex<HashMap<String, (u64, Instant)>>,
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
            leases: Mutex::default(),
        }
    }

    #[inline]
    pub(crate) fn get<T: Cacheable>(&self, key: &str) -> Lookup<T> {
        match self.entries.get(key) {
            None => Lookup::Absent,
            Some(entry) => match entry.0.value.downcast_ref::<T>() {
                Some(v) => Lookup::Found(v.clone(), entry.0.meta),
                None => Lookup::Unreadable(DecodeError::TypeMismatch),
            },
        }
    }

    pub(crate) fn set<T: Cacheable>(
        &self,
        key: &str,
        value: &T,
        meta: EntryMeta,
        keep_for: Duration,
    ) {
        let entry = MemEntry(Arc::new(MemInner {
            value: Box::new(value.clone()),
            meta,
            keep_for,
        }));
        self.entries.insert(key.to_owned(), entry);
    }

    /// Removes the value and destroys any lease on it, so a load in flight
    /// cannot write an older value back.
    pub(crate) fn delete(&self, key: &str) {
        let mut leases = self.lock_leases();
        leases.remove(key);
        self.entries.invalidate(key);
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        // A panic while holding this lock leaves the map consistent (every
        // change is one insert or remove), so a poisoned lock is still usable.
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn acquire_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        only_if_absent: bool,
    ) -> LeaseOutcome {
        let mut leases = self.lock_leases();
        let now = Instant::now();
        if let Some((_, until)) = leases.get(key)
            && *until > now
        {
            return LeaseOutcome::Held;
        }
        if only_if_absent && self.entries.contains_key(key) {
            return LeaseOutcome::ValuePresent;
        }
        leases.insert(key.to_owned(), (token, now + ttl));
        LeaseOutcome::Acquired
    }

    pub(crate) fn set_if_leased<T: Cacheable>(
        &self,
        key: &str,
        value: &T,
        meta: EntryMeta,
        keep_for: Duration,
        token: u64,
    ) -> bool {
        let mut leases = self.lock_leases();
        match leases.get(key) {
            Some((held, until)) if *held == token && *until > Instant::now() => {
                leases.remove(key);
                self.set(key, value, meta, keep_for);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release_lease(&self, key: &str, token: u64) {
        let mut leases = self.lock_leases();
        if leases.get(key).is_some_and(|(held, _)| *held == token) {
            leases.remove(key);
        }
    }
}
