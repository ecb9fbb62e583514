//! Reading an entry and deciding what it means now: fresh, stale, a miss,
//! or a failure of the backend.

use std::time::{Duration, Instant};

use super::Engine;
use super::policy::{Call, Shape};
use crate::Cacheable;
use crate::backend::{BackendError, Fetched, Lookup};
use crate::clock::now_ms;
use crate::codec::EntryMeta;
use crate::stats::Counters;

/// One Redis read in this many is timed for `cache_latency_seconds{op="get"}`.
pub(crate) const LATENCY_SAMPLE: u32 = 16;

/// What a read found.
pub(crate) enum Read<T> {
    Fresh(T, EntryMeta),
    Stale(T, EntryMeta),
    Miss,
    /// The backend failed (already logged and counted).
    Failed,
}

impl Engine {
    /// Reads the entry under `key`, undecoded, and how long the backend took
    /// (recorded as latency). Reads of the memory backend are not timed: they
    /// take a fraction of a microsecond, and the two clock reads would add a
    /// fifth to a hit. Redis reads are timed one in [`LATENCY_SAMPLE`] (every
    /// one while debug events are on): the distribution needs no more, and a
    /// hit's CPU time is what 64 concurrent callers share.
    pub(crate) async fn fetch_timed(
        &self,
        key: &str,
        tags: &[String],
        counters: &Counters,
    ) -> (Result<Fetched, BackendError>, Option<Duration>) {
        let timed = self.backend.is_remote()
            && (fastrand::u32(..LATENCY_SAMPLE) == 0 || tracing::enabled!(tracing::Level::DEBUG));
        let started = timed.then(Instant::now);
        let fetched = self.backend.fetch(key, tags, self.op_timeout).await;
        let took = started.map(|s| s.elapsed());
        if let Some(took) = took {
            counters.latency_get.record(took);
        }
        (fetched, took)
    }

    /// What an entry [`Engine::fetch_timed`] brought back means now (`None`
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
                    Read::Stale(value, meta)
                } else {
                    Read::Miss
                }
            }
            Ok(Lookup::Absent) => Read::Miss,
            Ok(Lookup::Unreadable(why)) => {
                self.unreadable(key, &why, counters);
                Read::Miss
            }
            Err(e) => {
                self.backend_failed(key, "get", &e, counters);
                Read::Failed
            }
        }
    }

    /// Counts a read as a hit or a miss and traces it. A stale hit is
    /// counted as served stale by its caller, once it serves it (see
    /// [`Engine::open_as`]).
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
        match took {
            Some(took) => {
                tracing::debug!(cache_key = %key, hit, latency_ms = took.as_secs_f64() * 1e3, "cache get");
            }
            None => tracing::debug!(cache_key = %key, hit, "cache get"),
        }
    }

    /// What a fetched entry means to this caller. Synchronous, so that a
    /// hit's value is made in the caller's own frame (see [`Fetched`]).
    #[inline(always)]
    pub(super) fn open_as<V: Shape<T>, T: Cacheable>(
        &self,
        call: &Call<'_, V, T>,
        fetched: Result<Fetched, BackendError>,
        took: Option<Duration>,
        count: bool,
    ) -> Read<V> {
        let read = match self.interpret::<T>(&call.key, &call.counters, fetched) {
            Read::Fresh(item, meta) => match V::from_item(item) {
                Some(v) => Read::Fresh(v, meta),
                None => Read::Miss,
            },
            Read::Stale(item, meta) => match V::from_item(item) {
                Some(v) => Read::Stale(v, meta),
                None => Read::Miss,
            },
            Read::Miss => Read::Miss,
            Read::Failed => Read::Failed,
        };
        if count {
            self.count_read(&call.key, &call.counters, &read, took);
            // With a soft timeout the caller may yet be served the refresh's
            // value instead: `serve_stale` counts what it serves.
            if matches!(read, Read::Stale(..)) && call.policy.soft_timeout.is_none() {
                call.counters.stale_served.add();
            }
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Fetched;
    use crate::codec::{EntryMeta, encode};

    /// An entry with no stale window is a miss from its expiry on: at the
    /// very millisecond of it, not served stale.
    #[test]
    fn no_stale_window_means_a_miss_at_the_expiry_itself() {
        let cache = crate::Cache::memory();
        let engine = cache.engine();
        let counters = engine.stats.counters("t");
        let mut exact = 0;
        for _ in 0..10_000 {
            let now = now_ms();
            let meta = EntryMeta {
                created_ms: now - 10,
                load_us: 0,
                expires_ms: now,
                stale_until_ms: now,
            };
            let bytes = encode(Some(&1u32), &meta).expect("encodes");
            let read = engine.interpret::<u32>("k", &counters, Ok(Fetched::Encoded(bytes)));
            if now_ms() != now {
                continue; // the millisecond passed meanwhile: not the case
            }
            exact += 1;
            assert!(matches!(read, Read::Miss), "served at its expiry");
        }
        assert!(exact > 100, "the same millisecond only {exact} times");
        // One millisecond into a stale window: stale.
        let now = now_ms();
        let meta = EntryMeta {
            created_ms: now - 10,
            load_us: 0,
            expires_ms: now - 1,
            stale_until_ms: now + 60_000,
        };
        let bytes = encode(Some(&1u32), &meta).expect("encodes");
        let read = engine.interpret::<u32>("k", &counters, Ok(Fetched::Encoded(bytes)));
        assert!(matches!(read, Read::Stale(Some(1), _)));
    }
}
