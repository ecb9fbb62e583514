//! Per-cache-name counters behind [`Cache::stats`](crate::Cache::stats),
//! usable with no metrics exporter (health pages, tests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// One cache name's counters and metric handles. Opaque outside the crate.
///
/// Each count is kept twice: in an atomic, for [`Cache::stats`](crate::Cache::stats)
/// (which needs no exporter), and in a `metrics` handle registered when the
/// name is first used, so that recording costs no registry lookup. Install a
/// metrics recorder before the first cached call: handles made before it
/// record nothing.
#[derive(Debug)]
pub struct Counters {
    name: Box<str>,
    /// Every read counts here, from every thread: striped.
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) loads: Tally,
    pub(crate) load_errors: Tally,
    pub(crate) load_timeouts: Tally,
    pub(crate) soft_timeouts: Tally,
    pub(crate) errors: Tally,
    pub(crate) coalesced: Tally,
    pub(crate) stale_served: Tally,
    pub(crate) early_refreshes: Tally,
    pub(crate) stale_refreshes: Tally,
    pub(crate) wait_timeouts: Tally,
    pub(crate) leases_lost: Tally,
    pub(crate) invalidations: Tally,
    pub(crate) skipped: Tally,
    pub(crate) oversize: Tally,
    pub(crate) audits: Tally,
    pub(crate) inconsistencies: Tally,
    /// `cache_latency_seconds{op}`.
    pub(crate) latency_get: Histogram,
    pub(crate) latency_set: Histogram,
    pub(crate) latency_lease: Histogram,
    pub(crate) latency_invalidate: Histogram,
    /// `cache_load_seconds`.
    pub(crate) load_seconds: Histogram,
}

/// The metric names, labelled `cache` (the cache name) but for the
/// breaker's. Errors also carry
/// `kind`; latency carries `op` (`get`, `set`, `lease`, `invalidate`).
pub mod names {
    /// Reads answered from the cache (fresh or stale).
    pub const HITS: &str = "cache_hits_total";
    /// Reads that found nothing usable.
    pub const MISSES: &str = "cache_misses_total";
    /// Backend operation latency, by `op` (histogram, seconds). Redis only;
    /// reads (`op="get"`) are sampled one in 16, or all while debug events
    /// are enabled.
    pub const LATENCY: &str = "cache_latency_seconds";
    /// Backend failures and unreadable entries, by `kind`.
    pub const ERRORS: &str = "cache_errors_total";
    /// Loader runs.
    pub const LOADS: &str = "cache_loads_total";
    /// Loader runs that returned an error.
    pub const LOAD_ERRORS: &str = "cache_load_errors_total";
    /// Loader runs stopped by their `hard_timeout`.
    pub const LOAD_TIMEOUTS: &str = "cache_load_timeouts_total";
    /// Callers served a stale value once their `soft_timeout` passed with
    /// the refresh still running.
    pub const SOFT_TIMEOUTS: &str = "cache_soft_timeouts_total";
    /// Loader run time (histogram, seconds).
    pub const LOAD_SECONDS: &str = "cache_load_seconds";
    /// Callers that shared another caller's load.
    pub const COALESCED: &str = "cache_coalesced_total";
    /// Values served past their TTL (stale-while-revalidate, fail-safe).
    pub const STALE_SERVED: &str = "cache_stale_served_total";
    /// Background refreshes started early (XFetch).
    pub const EARLY_REFRESHES: &str = "cache_early_refreshes_total";
    /// Background refreshes of stale values.
    pub const STALE_REFRESHES: &str = "cache_stale_refreshes_total";
    /// Waits for another caller's load that hit their bound.
    pub const WAIT_TIMEOUTS: &str = "cache_wait_timeouts_total";
    /// Loads, and write-throughs, whose lease was gone at write time (not
    /// stored).
    pub const LEASES_LOST: &str = "cache_leases_lost_total";
    /// Invalidations (by key, pattern or tag) that reached the backend.
    pub const INVALIDATIONS: &str = "cache_invalidations_total";
    /// Operations that skipped the backend while the breaker was open.
    pub const SKIPPED: &str = "cache_skipped_total";
    /// Values over `max_value_bytes`, not stored.
    pub const OVERSIZE: &str = "cache_oversize_total";
    /// Hits whose value was compared with the source (sampled audits).
    pub const AUDITS: &str = "cache_audits_total";
    /// Audits that found the served value differing from a source that had
    /// not changed meanwhile, while the entry was still the one served.
    pub const INCONSISTENCIES: &str = "cache_inconsistencies_total";
    /// How many circuit breakers of the namespace are open: for one
    /// `Cache`, 1 while open, 0 while closed (labelled `namespace`, not
    /// `cache`: one breaker serves every cache name of a `Cache`).
    pub const BREAKER_STATE: &str = "cache_breaker_state";
    /// Breaker transitions, by `to` (`open`, `closed`); labelled `namespace`.
    pub const BREAKER_TRANSITIONS: &str = "cache_breaker_transitions_total";
    /// With the near tier: reads answered per tier (`tier` = `l1`, in
    /// process, or `l2`, Redis); labelled `namespace`.
    pub const TIER_HITS: &str = "cache_tier_hits_total";
    /// With the near tier: keys named in invalidation pushes from Redis.
    pub const NEAR_INVALIDATIONS_RECEIVED: &str = "cache_near_invalidations_received_total";
    /// With the near tier: entries dropped from L1 to keep within its bound.
    pub const NEAR_EVICTIONS: &str = "cache_near_evictions_total";
    /// With the near tier: times L1 was emptied because it could not be
    /// trusted (a disconnect, a missed heartbeat, a failed barrier).
    pub const NEAR_FLUSHES: &str = "cache_near_flushes_total";
    /// With the near tier: bytes L1 holds, as its bound counts them (gauge,
    /// updated at each heartbeat).
    pub const NEAR_BYTES: &str = "cache_near_bytes";
    /// With the near tier: entries in L1 (gauge, updated at each heartbeat).
    pub const NEAR_ENTRIES: &str = "cache_near_entries";
    /// With the near tier: 1 while L1 is trusted, 0 while not (gauge).
    pub const NEAR_TRUSTED: &str = "cache_near_trusted";
}

use metrics::{Counter, Histogram};

impl Counters {
    pub(crate) fn new(name: &str) -> Counters {
        let label = || name.to_owned();
        let tally = |metric: &'static str| Tally {
            count: AtomicU64::new(0),
            metric: metrics::counter!(metric, "cache" => label()),
        };
        let latency =
            |op: &'static str| metrics::histogram!(names::LATENCY, "cache" => label(), "op" => op);
        Counters {
            name: name.into(),
            hits: Striped::new(metrics::counter!(names::HITS, "cache" => label())),
            misses: Striped::new(metrics::counter!(names::MISSES, "cache" => label())),
            loads: tally(names::LOADS),
            load_errors: tally(names::LOAD_ERRORS),
            load_timeouts: tally(names::LOAD_TIMEOUTS),
            soft_timeouts: tally(names::SOFT_TIMEOUTS),
            // Exported by kind where it is counted (`cache_errors_total{kind}`).
            errors: Tally {
                count: AtomicU64::new(0),
                metric: Counter::noop(),
            },
            coalesced: tally(names::COALESCED),
            stale_served: tally(names::STALE_SERVED),
            early_refreshes: tally(names::EARLY_REFRESHES),
            stale_refreshes: tally(names::STALE_REFRESHES),
            wait_timeouts: tally(names::WAIT_TIMEOUTS),
            leases_lost: tally(names::LEASES_LOST),
            invalidations: tally(names::INVALIDATIONS),
            skipped: tally(names::SKIPPED),
            oversize: tally(names::OVERSIZE),
            audits: tally(names::AUDITS),
            inconsistencies: tally(names::INCONSISTENCIES),
            latency_get: latency("get"),
            latency_set: latency("set"),
            latency_lease: latency("lease"),
            latency_invalidate: latency("invalidate"),
            load_seconds: metrics::histogram!(names::LOAD_SECONDS, "cache" => label()),
        }
    }

    /// The cache name these count for.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// One count: an atomic for stats, a metrics handle for the exporter.
#[derive(Debug)]
pub(crate) struct Tally {
    count: AtomicU64,
    metric: Counter,
}

impl Tally {
    #[inline]
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Relaxed);
        self.metric.increment(1);
    }

    pub(crate) fn load(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

const STRIPES: usize = 8;

/// A counter split over cache lines, one per thread (modulo 8), so threads
/// counting hits at once do not fight over one line.
#[derive(Debug)]
pub(crate) struct Striped {
    stripes: [Stripe; STRIPES],
    metric: Counter,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    pub(crate) fn new(metric: Counter) -> Striped {
        Striped {
            stripes: Default::default(),
            metric,
        }
    }

    #[inline]
    pub(crate) fn add(&self) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % STRIPES
            };
        }
        let i = STRIPE.with(|s| *s);
        self.stripes[i].0.fetch_add(1, Relaxed);
        self.metric.increment(1);
    }

    /// Adds `n` at once (a batch's keys).
    pub(crate) fn add_n(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.stripes[0].0.fetch_add(n, Relaxed);
        self.metric.increment(n);
    }

    pub(crate) fn load(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// The most cache names counted apart; later ones count under [`OTHER`].
pub(crate) const MAX_NAMES: usize = 1_000;
/// The name that cache names past [`MAX_NAMES`] count under.
pub(crate) const OTHER: &str = "~other";

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
        // Names come from code (attributes) and from typed-API keys, whose
        // first segment may be user data: past a bound, the rest share one
        // name, so neither memory nor metric series grow with the key space.
        let name = if map.len() >= MAX_NAMES && !map.contains_key(name) {
            OTHER
        } else {
            name
        };
        Arc::clone(
            map.entry(name.into())
                .or_insert_with(|| Arc::new(Counters::new(name))),
        )
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
                loads: c.loads.load(),
                load_errors: c.load_errors.load(),
                load_timeouts: c.load_timeouts.load(),
                soft_timeouts: c.soft_timeouts.load(),
                errors: c.errors.load(),
                coalesced: c.coalesced.load(),
                stale_served: c.stale_served.load(),
                early_refreshes: c.early_refreshes.load(),
                stale_refreshes: c.stale_refreshes.load(),
                wait_timeouts: c.wait_timeouts.load(),
                leases_lost: c.leases_lost.load(),
                invalidations: c.invalidations.load(),
                skipped: c.skipped.load(),
                oversize: c.oversize.load(),
                audits: c.audits.load(),
                inconsistencies: c.inconsistencies.load(),
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
    /// Loader runs stopped by their `hard_timeout` (counted in
    /// `load_errors` too).
    pub load_timeouts: u64,
    /// Callers served a stale value because their `soft_timeout` passed
    /// before the refresh of it finished (the refresh went on).
    pub soft_timeouts: u64,
    /// Backend failures (timeouts, connection errors, unreadable values),
    /// none of which reached a caller.
    pub errors: u64,
    /// Callers that used another caller's read or load in this process
    /// (counted as well as their hit or miss).
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
    /// or expiry), so their possibly old value was not stored; and
    /// write-throughs on Redis whose claim on the key another change took
    /// before they stored (the key was left empty or newer).
    pub leases_lost: u64,
    /// Invalidations (by key, pattern or tag) that reached the backend.
    pub invalidations: u64,
    /// Backend operations skipped because the circuit breaker was open
    /// (the callers went straight to their loaders).
    pub skipped: u64,
    /// Values not stored because they were over `max_value_bytes`.
    pub oversize: u64,
    /// Sampled hits whose value was compared with the source (`audit`).
    pub audits: u64,
    /// Audits that confirmed an inconsistency: the value served differed
    /// from the source, the source did not change while it was checked,
    /// and the entry was still the one served (see the README, "Auditing
    /// consistency").
    pub inconsistencies: u64,
}

impl CacheStats {
    /// `1 - inconsistencies / audits`: the measured share of audited hits
    /// that were consistent with the source, 1 before the first audit (for
    /// a dashboard's "nines").
    pub fn consistency(&self) -> f64 {
        if self.audits == 0 {
            1.0
        } else {
            1.0 - self.inconsistencies as f64 / self.audits as f64
        }
    }
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
#[derive(Debug)]
pub(crate) struct LogLimiter {
    /// When the last warning went through ([`crate::clock::monotonic_ms`]),
    /// `u64::MAX` before the first.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            last_ms: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    /// `Some(n)` when a warning may be logged now (`now_ms`, on a clock
    /// that does not go back), `n` being how many were held back since the
    /// last one.
    pub(crate) fn allow(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Relaxed);
        if (last == u64::MAX || now_ms.saturating_sub(last) >= 1000)
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
    fn the_number_of_names_is_bounded() {
        let registry = Registry::default();
        for i in 0..MAX_NAMES + 500 {
            registry.counters(&format!("key{i}")).hits.add();
        }
        let names = registry.snapshot();
        assert_eq!(names.len(), MAX_NAMES + 1);
        let other = names
            .iter()
            .find(|s| s.name == OTHER)
            .expect("the overflow name");
        assert_eq!(other.hits, 500);
        // A name seen before the bound keeps its own counters.
        registry.counters("key7").hits.add();
        assert_eq!(
            registry
                .snapshot()
                .iter()
                .find(|s| s.name == "key7")
                .map(|s| s.hits),
            Some(2)
        );
    }

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
        // The first goes through, even at the clock's start.
        let first = LogLimiter::default();
        assert_eq!(first.allow(0), Some(0));
        assert_eq!(first.allow(999), None);
        assert_eq!(first.allow(1_000), Some(1));
        let l = LogLimiter::default();
        assert_eq!(l.allow(10_000), Some(0));
        assert_eq!(l.allow(10_500), None);
        assert_eq!(l.allow(10_900), None);
        assert_eq!(l.allow(11_000), Some(2));
    }
}
