//! Auditing consistency in production: a sampled share of hits is compared
//! with the source, in the background, never on the caller's path.
//!
//! After the caller has its value, an audit runs the function's uncached
//! body (the same background load a refresh uses) and compares what it
//! returns with the value served, in their [canonical](crate::canonical)
//! encodings (so no `PartialEq` is needed, and two equal maps are equal
//! whatever order a `HashMap` iterates in). The caller pays for a clone of
//! the value; the encoding, as everything else, runs in the audit's task.
//! Equal: one consistent audit. Different: that may be an honest race (a
//! write that committed after the hit, whose write-through or invalidation
//! is on its way), so the audit looks again after [`RECHECK`]: it counts an
//! inconsistency only if the entry is still the very one served (same
//! creation time, load time and expiry) and the source, read a second time,
//! still says what it said the first time, and that differs from what was
//! served. What it cannot see: an entry that was stale and got replaced
//! before the audit (it was served, but is gone when looked at again), a
//! difference shorter than [`RECHECK`], and hits that were not sampled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Engine;
use super::policy::{Call, Refresh, Shape};
use super::read::Read;
use crate::Cacheable;
use crate::clock::now_ms;
use crate::codec::{EntryMeta, identity};

/// How long after a difference the audit looks again (see the module
/// docs): a write's cache update that takes longer than this after its
/// commit is counted as an inconsistency.
pub(crate) const RECHECK: Duration = Duration::from_millis(200);

/// The audit settings of a cache (its builder's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AuditSettings {
    /// The share of hits audited where a call site sets none (0: none).
    pub(crate) rate: f64,
    /// Invalidate an entry found inconsistent.
    pub(crate) repair: bool,
    /// The most audits running at once (a sampled hit past it is not
    /// audited).
    pub(crate) max_in_flight: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            rate: 0.0,
            repair: false,
            max_in_flight: 4,
        }
    }
}

/// A cache's audits: its settings, and how many are running.
#[derive(Debug)]
pub(crate) struct Audits {
    settings: AuditSettings,
    in_flight: Arc<AtomicUsize>,
}

/// One running audit's place under the bound; freed when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Audits {
    pub(crate) fn new(settings: AuditSettings) -> Audits {
        Audits {
            settings,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place for one more audit, if the bound allows.
    fn enter(&self) -> Option<Slot> {
        let max = self.settings.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.in_flight)))
    }
}

impl Engine {
    /// Audits the hit of `value` (entry `meta`) against the source, if it is
    /// sampled: in a task of its own, `refresh` giving the source's answers.
    pub(super) fn audit_after_hit<V, T>(
        self: &Arc<Self>,
        call: &Call<'_, V, T>,
        value: &V,
        meta: EntryMeta,
        refresh: &(dyn Fn() -> Refresh<V> + Send + Sync),
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let rate = call.policy.audit.unwrap_or(self.audits.settings.rate);
        if rate <= 0.0 || fastrand::f64() >= rate {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(slot) = self.audits.enter() else {
            return;
        };
        let served = value.clone();
        // Made now, run later: each reads the source when first polled.
        let (first, second) = (refresh(), refresh());
        let engine = Arc::clone(self);
        let counters = Arc::clone(&call.counters);
        let (key, tags) = (call.key.clone(), call.tags.to_vec());
        runtime.spawn(async move {
            let _slot = slot;
            let Ok(served) = crate::canonical::to_bytes(&served.item()) else {
                return;
            };
            // The source failed: nothing learned, nothing counted.
            let Some(source) = first.await else { return };
            let Ok(source) = crate::canonical::to_bytes(&source.item()) else {
                return;
            };
            counters.audits.add();
            if source == served {
                return;
            }
            tokio::time::sleep(RECHECK).await;
            let (fetched, _) = engine.fetch_timed(&key, &tags, &counters).await;
            let unchanged = match engine.interpret::<T>(&key, &counters, fetched) {
                Read::Fresh(_, now) | Read::Stale(_, now) => identity(&now) == identity(&meta),
                Read::Miss | Read::Failed => false,
            };
            // Replaced, invalidated or expired since: the cache moved on.
            if !unchanged {
                return;
            }
            let Some(again) = second.await else { return };
            let Ok(again) = crate::canonical::to_bytes(&again.item()) else {
                return;
            };
            // The source is changing: no verdict either way.
            if again != source {
                return;
            }
            counters.inconsistencies.add();
            let repair = engine.audits.settings.repair;
            tracing::warn!(
                cache_key = %key,
                entry_age_ms = now_ms().saturating_sub(meta.created_ms),
                repair,
                "cache audit: the entry served differs from the source, which did not change while it was checked"
            );
            if repair {
                let _ = engine.invalidate_full(std::slice::from_ref(&key)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audits_in_flight_are_bounded_and_freed() {
        let audits = Audits::new(AuditSettings {
            max_in_flight: 2,
            ..AuditSettings::default()
        });
        let a = audits.enter().expect("first");
        let _b = audits.enter().expect("second");
        assert!(audits.enter().is_none(), "a third waits for none: skipped");
        drop(a);
        assert!(audits.enter().is_some(), "a place freed");
    }
}
