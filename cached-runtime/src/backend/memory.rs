//! The in-process backend on moka: bounded, with a per-entry expiry.
//!
//! Values are kept as typed objects (`Arc<dyn Any>`), so a hit is a lookup
//! and a clone, with no serialization. An entry of another type under the same
//! key reads as unreadable, exactly as a foreign value does on Redis.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

use super::Lookup;
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
        MemoryBackend { entries }
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

    pub(crate) fn delete(&self, key: &str) {
        self.entries.invalidate(key);
    }
}
