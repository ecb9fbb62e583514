//! Per-cache-name counters behind [`Cache::stats`](crate::Cache::stats),
//! usable with no metrics exporter (health pages, tests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// One cache name's counters. Opaque outside the crate.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every read counts here, from every thread: striped.
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) early_refreshes: AtomicU64,
    pub(crate) stale_refreshes: AtomicU64,
    pub(crate) wait_timeouts: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

const STRIPES: usize = 8;

/// A counter split over cache lines, one per thread (modulo 8), so threads
/// counting hits at once do not fight over one line.
#[derive(Debug, Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    #[inline]
    pub(crate) fn add(&self) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % STRIPES
            };
        }
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(1, Relaxed);
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_name: RwLock<HashMap<Box<str>, Arc<Counters>>>,
}

impl Registry {
    /// The counters of `name`, made on first use.
    #[inline]
    pub(crate) fn counters(&self, name: &str) -> Arc<Counters> {
        if let Ok(map) = self.by_name.read()
            && let Some(c) = map.get(name)
        {
            return Arc::clone(c);
        }
        let mut map = self
            .by_name
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(map.entry(name.into()).or_default())
    }

    pub(crate) fn snapshot(&self) -> Vec<CacheStats> {
        let map = self
            .by_name
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out: Vec<CacheStats> = map
            .iter()
            .map(|(name, c)| CacheStats {
                name: name.to_string(),
                hits: c.hits.load(),
                misses: c.misses.load(),
                loads: c.loads.load(Relaxed),
                load_errors: c.load_errors.load(Relaxed),
                errors: c.errors.load(Relaxed),
                coalesced: c.coalesced.load(Relaxed),
                stale_served: c.stale_served.load(Relaxed),
                early_refreshes: c.early_refreshes.load(Relaxed),
                stale_refreshes: c.stale_refreshes.load(Relaxed),
                wait_timeouts: c.wait_timeouts.load(Relaxed),
                leases_lost: c.leases_lost.load(Relaxed),
                invalidations: c.invalidations.load(Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// A snapshot of one cache name's counters since the [`Cache`](crate::Cache)
/// was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// The cache name: the `name` option of the attribute, else its prefix.
    pub name: String,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found nothing usable (absent, expired or unreadable).
    pub misses: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that returned an error.
    pub load_errors: u64,
    /// Backend failures (timeouts, connection errors, unreadable values),
    /// none of which reached a caller.
    pub errors: u64,
    /// Callers that shared another caller's load in this process.
    pub coalesced: u64,
    /// Values served past their TTL, inside their `stale` window.
    pub stale_served: u64,
    /// Background refreshes started early (XFetch).
    pub early_refreshes: u64,
    /// Background refreshes of stale values.
    pub stale_refreshes: u64,
    /// Waits for another caller's load that hit their bound.
    pub wait_timeouts: u64,
    /// Loads whose lease was gone when they came to write (an invalidation
    /// or expiry), so their possibly old value was not stored.
    pub leases_lost: u64,
    /// Invalidations (by key, pattern or tag) that reached the backend.
    pub invalidations: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before the first read.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Lets through one warning a second; counts the rest.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(n)` when a warning may be logged now, `n` being how many were
    /// held back since the last one.
    pub(crate) fn allow(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Relaxed);
        if now_ms.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_is_hits_over_reads() {
        let s = CacheStats {
            name: "p".into(),
            hits: 3,
            misses: 1,
            loads: 1,
            ..CacheStats::default()
        };
        assert!((s.hit_rate() - 0.75).abs() < 1e-12);
        let empty = CacheStats {
            hits: 0,
            misses: 0,
            ..s
        };
        assert_eq!(empty.hit_rate(), 0.0);
    }

    #[test]
    fn limiter_lets_one_warning_through_a_second() {
        let l = LogLimiter::default();
        assert_eq!(l.allow(10_000), Some(0));
        assert_eq!(l.allow(10_500), None);
        assert_eq!(l.allow(10_900), None);
        assert_eq!(l.allow(11_000), Some(2));
    }
}
