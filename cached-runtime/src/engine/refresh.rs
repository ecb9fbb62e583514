//! Refresh in the background: early, near a fresh entry's expiry (XFetch,
//! Vattani et al., VLDB 2015), and stale, past it inside its stale window
//! (stale-while-revalidate; the old value stays if the refresh fails). One
//! refresh per key in this process (its flight) and across processes (its
//! lease).

use std::borrow::Cow;
use std::sync::Arc;

use super::Engine;
use super::flight::{Landed, Shared, landing};
use super::lease::{Ask, LeaseEnd, Leasing};
use super::policy::{Call, Refresh, Shape};
use crate::Cacheable;
use crate::backend::Lease;
use crate::clock::now_ms;
use crate::codec::EntryMeta;
use crate::scope::{Outcome, record};

/// XFetch: refresh early when `now - delta * beta * ln(rand) >= expiry`,
/// `delta` being how long the last load took. An entry stored by a
/// write-through records no load time; for it `delta` is 1% of its TTL, so
/// it is refreshed early too rather than left to expire.
fn early_refresh_due(meta: &EntryMeta, beta: f64, now_ms: u64) -> bool {
    let delta_ms = if meta.load_us > 0 {
        f64::from(meta.load_us) / 1000.0
    } else {
        meta.expires_ms.saturating_sub(meta.created_ms) as f64 / 100.0
    };
    // 1 - f64() is in (0, 1], so ln is finite and <= 0.
    let gap = -delta_ms * beta * (1.0 - fastrand::f64()).ln();
    now_ms as f64 + gap >= meta.expires_ms as f64
}

impl Engine {
    /// After a hit: near its expiry an early refresh (XFetch), past it a
    /// stale refresh, each in the background and one per key at a time.
    /// And, for a sampled share of hits, an audit of the value served
    /// against the source ([`super::audit`]).
    pub(super) fn refresh_after_hit<V, T>(
        self: &Arc<Self>,
        call: &Call<'_, V, T>,
        value: &V,
        shared: Shared,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let Some(refresh) = refresh else { return };
        if let Shared::Fresh(meta) | Shared::Stale(meta) = shared {
            self.audit_after_hit(call, value, meta, refresh);
        }
        match shared {
            Shared::Fresh(meta) => {
                if let Some(beta) = call.policy.early_refresh
                    && early_refresh_due(&meta, beta, now_ms())
                {
                    self.refresh_in_background(call, refresh, true, meta);
                }
            }
            Shared::Stale(meta) => self.refresh_in_background(call, refresh, false, meta),
            Shared::Loaded => {}
        }
    }

    /// `soft_timeout`: a caller about to be served the stale `value` (the
    /// entry `seen`) waits up to the timeout for this process's refresh of
    /// that entry (which `refresh_after_hit` started, or found running) and
    /// is served the refreshed value if it comes in time; else the stale one, while the
    /// refresh goes on and stores. Records the outcome either way, and counts
    /// a stale value served (a refreshed one is not).
    pub(super) async fn serve_stale<V, T>(
        &self,
        call: &Call<'_, V, T>,
        value: V,
        seen: &EntryMeta,
    ) -> V
    where
        V: Clone + Send + Sync + 'static,
    {
        if let Some(soft) = call.policy.soft_timeout
            && let Some(rx) = self.flights.refresh_in_flight(&call.key, seen)
        {
            match tokio::time::timeout(soft, landing(rx.into())).await {
                Ok(Landed::Value(any)) => {
                    if let Some(fresh) = any.downcast_ref::<V>() {
                        record(Outcome::Coalesced);
                        return fresh.clone();
                    }
                }
                // The refresh failed, or another process holds the lease.
                Ok(_) => {}
                Err(_) => call.counters.soft_timeouts.add(),
            }
        }
        call.counters.stale_served.add();
        record(Outcome::Stale);
        value
    }

    /// Refreshes the key from a task of its own, replacing the entry `seen`
    /// only if it is still there: a write-through since then wins.
    fn refresh_in_background<V, T>(
        self: &Arc<Self>,
        call: &Call<'_, V, T>,
        refresh: &(dyn Fn() -> Refresh<V> + Send + Sync),
        early: bool,
        seen: EntryMeta,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut guard) = self.flights.try_lead(self, &call.key, &seen) else {
            return;
        };
        let load = refresh();
        let engine = Arc::clone(self);
        let counters = Arc::clone(&call.counters);
        let (key, policy, tags) = (call.key.clone(), *call.policy, call.tags.to_vec());
        runtime.spawn(async move {
            let call: Call<'_, V, T> = Call {
                key,
                counters: Cow::Borrowed(&counters),
                policy: Cow::Borrowed(&policy),
                tags: &tags,
                shape: std::marker::PhantomData,
            };
            let token = fastrand::u64(1..);
            guard.lease = Some(token);
            let epoch = match engine
                .take_lease(&call, token, Ask::ForRefresh(seen), None)
                .await
            {
                Leasing::Ours(epoch) => epoch,
                // Perhaps ours on the server: the guard releases it.
                Leasing::Failed => return,
                // Another process refreshes it, or the entry was replaced.
                Leasing::NotOurs | Leasing::Value(_) => {
                    guard.lease.take();
                    return;
                }
            };
            if early {
                counters.early_refreshes.add()
            } else {
                counters.stale_refreshes.add()
            };
            let loaded = engine
                .run_loader(&counters, || async { load.await.ok_or(()) })
                .await;
            let value = loaded.as_ref().ok().map(|(v, took)| (v, *took));
            // Callers waiting out their `soft_timeout` take it now; the
            // write follows.
            if let Some((v, _)) = value {
                guard.tell(v);
            }
            if engine
                .finish_lease(&call, Lease { token, epoch }, value)
                .await
                != LeaseEnd::Failed
            {
                guard.lease.take();
            }
            // Nobody waits for a refresh: ending it frees the key for the
            // next one.
            let _ = guard.end();
            if loaded.is_err() {
                engine.refresh_failed(&call.key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_is_never_due_far_from_expiry_and_always_due_past_it() {
        let meta = EntryMeta {
            created_ms: 0,
            load_us: 20_000,
            expires_ms: 1_000_000,
            stale_until_ms: 1_000_000,
        };
        // 20 ms loads, 1000 s left: the chance is e^-(1000000/20), i.e. none.
        assert!((0..10_000).all(|_| !early_refresh_due(&meta, 1.0, 0)));
        assert!((0..100).all(|_| early_refresh_due(&meta, 1.0, 1_000_000)));
    }

    #[test]
    fn xfetch_refreshes_a_written_through_entry_near_its_expiry() {
        // A write-through: no load time, a 100 s TTL.
        let meta = EntryMeta {
            created_ms: 0,
            load_us: 0,
            expires_ms: 100_000,
            stale_until_ms: 100_000,
        };
        let rate = |now| {
            (0..10_000)
                .filter(|_| early_refresh_due(&meta, 1.0, now))
                .count()
        };
        // delta = 1 s: 1 s before expiry, P = e^-1 ~ 37%; 60 s before, none.
        let near = rate(99_000);
        assert!((3_000..4_400).contains(&near), "{near}");
        assert_eq!(rate(40_000), 0);
    }

    #[test]
    fn xfetch_beta_scales_the_load_time() {
        // 20 ms loads, 40 ms left: P(due) = exp(-40 / (20 * beta)).
        let meta = EntryMeta {
            created_ms: 0,
            load_us: 20_000,
            expires_ms: 1_000,
            stale_until_ms: 1_000,
        };
        let rate = |beta| {
            (0..10_000)
                .filter(|_| early_refresh_due(&meta, beta, 960))
                .count()
        };
        // beta 2: e^-1 ~ 37%; beta 0.5: e^-4 ~ 1.8%.
        let (eager, lazy) = (rate(2.0), rate(0.5));
        assert!((3_000..4_400).contains(&eager), "{eager}");
        assert!((80..320).contains(&lazy), "{lazy}");
    }

    #[test]
    fn xfetch_is_due_at_the_expiry_itself() {
        // A zero TTL written through: no time to spread over, so due exactly
        // from its expiry on, never before.
        let meta = EntryMeta {
            created_ms: 1_000,
            load_us: 0,
            expires_ms: 1_000,
            stale_until_ms: 1_000,
        };
        assert!(early_refresh_due(&meta, 1.0, 1_000));
        assert!(!early_refresh_due(&meta, 1.0, 999));
    }

    #[test]
    fn xfetch_fires_more_often_closer_to_expiry() {
        let meta = EntryMeta {
            created_ms: 0,
            load_us: 20_000,
            expires_ms: 1_000,
            stale_until_ms: 1_000,
        };
        let rate = |now| {
            (0..20_000)
                .filter(|_| early_refresh_due(&meta, 1.0, now))
                .count()
        };
        let (far, near) = (rate(900), rate(990));
        assert!(far < near, "{far} >= {near}");
        // P(due) = exp(-gap/delta): 100 ms left of 20 ms loads ~ e^-5 ~ 0.7%.
        assert!(far < 400, "{far}");
    }
}
