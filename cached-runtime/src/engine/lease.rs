//! Leases: across processes, one caller per key loads while the others wait
//! for its value. Its write lands only while its lease holds, so a load that
//! read the source before a write-through or an invalidation (both destroy
//! the lease) never stores what it read. One request type, one way to take,
//! finish and release a lease, for loads and refreshes alike.

use std::time::{Duration, Instant};

use super::Engine;
use super::policy::{Call, Keep, Shape};
use super::read::Read;
use crate::Cacheable;
use crate::backend::{BackendError, Lease, LeaseIf, LeaseOutcome};
use crate::codec::EntryMeta;
use crate::stats::Counters;

/// What asking for a lease came to.
pub(super) enum Leasing<V> {
    /// This caller holds it (taken at this invalidation epoch): load and
    /// write.
    Ours(u64),
    /// Another caller's value arrived meanwhile.
    Value(V),
    /// Another holds it and the wait ran out (or, for a refresh, another
    /// refreshes): load, but do not write.
    NotOurs,
    /// The request failed (timed out, refused, cut off): the lease may be
    /// ours on the server all the same, so the caller releases it (in the
    /// background) rather than leave every caller of the key waiting out
    /// `wait` until it expires. Load, but do not write.
    Failed,
}

/// How a leaseholder's lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseEnd {
    /// The value was written, and the lease ended with it.
    Stored,
    /// Released, nothing written (a value not to keep, or a failed load).
    Released,
    /// Lost before the write (invalidated, or expired): nothing written.
    Lost,
    /// The backend failed: the lease may still be held; the caller's guard
    /// releases it.
    Failed,
}

/// How hard to try for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// A load after a miss: wait for another holder's value, up to the
    /// policy's `wait`.
    ForLoad,
    /// A background refresh of the entry with this metadata: one attempt,
    /// taken only while that entry is still stored (a write-through since
    /// the refresh's read wins); if another holds the lease, that one
    /// refreshes.
    ForRefresh(EntryMeta),
    /// A forced refresh (`CallMode::Refresh`): taken whatever is stored,
    /// waiting up to `wait` while another holds it; never reads, since
    /// what is stored is what the refresh replaces.
    Replace,
}

impl Engine {
    /// Asks for the key's lease until it is ours, a usable value appears
    /// (another process's load landed), the backend fails, or the wait
    /// runs out.
    pub(super) async fn take_lease<V, T>(
        &self,
        call: &Call<'_, V, T>,
        token: u64,
        ask: Ask,
        by: Option<tokio::time::Instant>,
    ) -> Leasing<V>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let (key, counters, policy) = (&call.key, &*call.counters, &*call.policy);
        let started = Instant::now();
        // Until something is seen under the key that this caller cannot use
        // (an absence marker for a function that never returns `None`, a
        // value just past its expiry), the lease is taken only if it is empty.
        let mut cond = match ask {
            Ask::ForLoad => LeaseIf::Absent,
            Ask::ForRefresh(seen) => LeaseIf::Unchanged(seen),
            Ask::Replace => LeaseIf::Any,
        };
        loop {
            let asked = Instant::now();
            let outcome = self
                .backend
                .acquire_lease(
                    key,
                    token,
                    policy.lease,
                    cond,
                    call.tags,
                    call.tag_for(),
                    self.op_timeout,
                )
                .await;
            if self.backend.is_remote() && outcome.is_ok() {
                counters.latency_lease.record(asked.elapsed());
            }
            match outcome {
                Ok(LeaseOutcome::Acquired(epoch)) => return Leasing::Ours(epoch),
                // Another process refreshes it, or the entry was replaced.
                Ok(_) if matches!(ask, Ask::ForRefresh(_)) => return Leasing::NotOurs,
                // Written since this caller's read (take it), or not usable
                // here (unreadable, expired): read, then ask again, at once.
                Ok(LeaseOutcome::ValuePresent | LeaseOutcome::Changed) => cond = LeaseIf::Any,
                Ok(LeaseOutcome::Held) => {
                    // `wait`, or what is left of it after this caller's
                    // wait for loads in this process (see `Patience`).
                    if started.elapsed() >= policy.wait
                        || by.is_some_and(|by| tokio::time::Instant::now() >= by)
                    {
                        counters.wait_timeouts.add();
                        return Leasing::NotOurs;
                    }
                    tokio::time::sleep(poll_interval(started.elapsed())).await;
                }
                Err(e) => {
                    self.backend_failed(key, "lease", &e, counters);
                    // Skipped by the breaker: never sent, nothing to release.
                    return if matches!(e, BackendError::Skipped) {
                        Leasing::NotOurs
                    } else {
                        Leasing::Failed
                    };
                }
            }
            if ask == Ask::Replace {
                continue;
            }
            let (fetched, took) = self.fetch_timed(key, call.tags, counters).await;
            if let Read::Fresh(value, _) | Read::Stale(value, _) =
                self.open_as(call, fetched, took, false)
            {
                return Leasing::Value(value);
            }
        }
    }

    /// Ends the lease this caller took for its load: the loaded value is
    /// written while the lease holds; a value not to be kept, or a failed
    /// load (`None`), releases it.
    pub(super) async fn finish_lease<V, T>(
        &self,
        call: &Call<'_, V, T>,
        lease: Lease,
        loaded: Option<(&V, Duration)>,
    ) -> LeaseEnd
    where
        V: Shape<T>,
        T: Cacheable,
    {
        let keep = loaded.and_then(|(value, took)| Some((value, call.keep(value, took)?)));
        match keep {
            Some((value, keep)) => {
                self.write_leased(
                    &call.key,
                    value.item(),
                    keep,
                    lease,
                    call.tags,
                    &call.counters,
                )
                .await
            }
            None => {
                if self.release_lease(&call.key, lease.token).await {
                    LeaseEnd::Released
                } else {
                    LeaseEnd::Failed
                }
            }
        }
    }

    /// A write that lands only while the lease holds.
    async fn write_leased<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        keep: Keep,
        lease: Lease,
        tags: &[String],
        counters: &Counters,
    ) -> LeaseEnd {
        let (meta, keep_for) = self.entry_meta(keep);
        let started = Instant::now();
        let result = self
            .backend
            .set_if_leased(key, value, &meta, keep_for, lease, tags, self.op_timeout)
            .await;
        self.wrote(key, counters, started, "cache set (leased)");
        match result {
            Ok(true) => LeaseEnd::Stored,
            Ok(false) => {
                counters.leases_lost.add();
                tracing::debug!(cache_key = %key, "lease lost (invalidated or expired) before the write; not stored");
                LeaseEnd::Lost
            }
            Err(e) => {
                self.backend_failed(key, "set", &e, counters);
                LeaseEnd::Failed
            }
        }
    }

    /// Ends the lease if `token` still holds it. Returns whether the
    /// backend answered.
    pub(crate) async fn release_lease(&self, key: &str, token: u64) -> bool {
        match self
            .backend
            .release_lease(key, token, self.op_timeout)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(cache_key = %key, error = %e, "lease release failed; it expires on its own");
                false
            }
        }
    }
}

/// How long to sleep before polling again for another process's value:
/// an eighth of the time waited so far, within [2 ms, 50 ms], so polling
/// adds at most about an eighth to a wait, and little load to Redis.
fn poll_interval(waited: Duration) -> Duration {
    (waited / 8).clamp(Duration::from_millis(2), Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_grows_with_the_wait_within_bounds() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::from_millis(2));
        assert_eq!(
            poll_interval(Duration::from_millis(80)),
            Duration::from_millis(10)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(10)),
            Duration::from_millis(50)
        );
    }
}
