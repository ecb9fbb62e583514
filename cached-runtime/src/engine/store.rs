//! Writing entries: the envelope's times and TTL jitter, and the
//! write-through, which also destroys the key's lease.

use std::time::{Duration, Instant};

use std::sync::Arc;

use super::Engine;
use super::policy::Keep;
use super::recover::{Changed, must_retry};
use crate::Cacheable;
use crate::clock::{LONGEST, duration_ms, now_ms};
use crate::codec::EntryMeta;
use crate::stats::Counters;

impl Engine {
    /// The metadata of an entry written now, and how long the backend keeps
    /// it (its jittered TTL plus its stale window).
    pub(super) fn entry_meta(&self, keep: Keep) -> (EntryMeta, Duration) {
        let ttl = self.jittered(keep.ttl.min(LONGEST));
        let stale = keep.stale.min(LONGEST);
        let now = now_ms();
        let expires_ms = now.saturating_add(duration_ms(ttl));
        let meta = EntryMeta {
            created_ms: now,
            load_us: u32::try_from(keep.load_time.as_micros()).unwrap_or(u32::MAX),
            expires_ms,
            stale_until_ms: expires_ms.saturating_add(duration_ms(stale)),
        };
        (meta, ttl.saturating_add(stale))
    }

    /// A write-through: stores the value and destroys the key's lease.
    pub(crate) async fn write<T: Cacheable>(
        self: &Arc<Self>,
        key: &str,
        value: Option<&T>,
        keep: Keep,
        tags: &[String],
        counters: &Counters,
    ) {
        if !self.enabled {
            return;
        }
        let (meta, keep_for) = self.entry_meta(keep);
        let started = Instant::now();
        let result = self
            .backend
            .put(key, value, &meta, keep_for, tags, self.op_timeout)
            .await;
        // As for an invalidation: callers from now on read the new value.
        // A write that cannot be stored at all is not retried. One whose
        // store was refused is: its claim on the key was gone (another
        // change came first, or the claim was evicted or expired while
        // this writer stalled), and in the second case another process may
        // have taken the key's lease meanwhile and be loading a row read
        // before this write's transaction committed. Taken for "a newer
        // change came first", that row stayed for its TTL (found by a
        // review); an invalidation, retried until it lands and once more
        // after it settles, destroys that lease or removes what it stored.
        let failed = match &result {
            Ok(stored) => !stored,
            Err(e) => must_retry(e),
        };
        self.after_change(Changed::Key(key), failed);
        self.wrote(key, counters, started, "cache set");
        match result {
            Ok(true) => {}
            Ok(false) => {
                counters.leases_lost.add();
                tracing::debug!(cache_key = %key, "the write-through's claim on the key was gone at its store; not stored, invalidated instead");
            }
            Err(e) => self.backend_failed(key, "set", &e, counters),
        }
    }

    /// A plain fill after a miss of a `lock = false` call, which takes no
    /// lease: stored unless a lease is held on the key (a load or a
    /// write-through in flight, whose value wins over this one). Such a
    /// call opts out of the stale-set protection: a fill that read the
    /// source before a write-through completed can still land after it.
    pub(super) async fn fill<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        keep: Keep,
        tags: &[String],
        counters: &Counters,
    ) {
        let (meta, keep_for) = self.entry_meta(keep);
        let started = Instant::now();
        let result = self
            .backend
            .fill(key, value, &meta, keep_for, tags, self.op_timeout)
            .await;
        self.wrote(key, counters, started, "cache fill");
        match result {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(cache_key = %key, "a lease is held on the key: the fill was not stored");
            }
            Err(e) => self.backend_failed(key, "set", &e, counters),
        }
    }

    /// Records a write's latency (Redis only) and traces it.
    pub(super) fn wrote(
        &self,
        key: &str,
        counters: &Counters,
        started: Instant,
        what: &'static str,
    ) {
        let took = started.elapsed();
        if self.backend.is_remote() {
            counters.latency_set.record(took);
        }
        tracing::debug!(cache_key = %key, latency_ms = took.as_secs_f64() * 1e3, "{what}");
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        if self.ttl_jitter <= 0.0 {
            return ttl;
        }
        ttl + ttl.mul_f64(self.ttl_jitter * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Cache;

    #[test]
    fn jitter_only_lengthens_a_ttl_and_by_at_most_its_share() {
        let cache = Cache::builder()
            .memory()
            .ttl_jitter(0.1)
            .build()
            .expect("a cache");
        let ttl = Duration::from_secs(100);
        let jittered: Vec<Duration> = (0..1000).map(|_| cache.engine().jittered(ttl)).collect();
        assert!(
            jittered
                .iter()
                .all(|d| (ttl..=ttl + Duration::from_secs(10)).contains(d)),
            "outside [ttl, 1.1 ttl]"
        );
        // Spread over the range, not stuck at one end.
        assert!(jittered.iter().any(|d| *d > ttl + Duration::from_secs(5)));
        assert!(jittered.iter().any(|d| *d < ttl + Duration::from_secs(5)));
    }

    #[test]
    fn no_jitter_keeps_the_ttl() {
        let cache = Cache::builder()
            .memory()
            .ttl_jitter(0.0)
            .build()
            .expect("a cache");
        let ttl = Duration::from_secs(100);
        assert!((0..100).all(|_| cache.engine().jittered(ttl) == ttl));
    }
}
