//! Invalidation by key, pattern and tag. Each destroys the leases of what
//! it removes (so a load in flight cannot write back a value it read before
//! the change) and detaches this process's flights of those keys.

use std::sync::Arc;
use std::time::Instant;

use super::Engine;
use super::recover::Changed;
use crate::backend::BackendError;
use crate::error::CacheError;
use crate::key::{TAG_PREFIX, stats_name};

impl Engine {
    /// Removes the entries under the full `keys` and destroys their leases.
    pub(crate) async fn invalidate_full(
        self: &Arc<Self>,
        keys: &[String],
    ) -> Result<(), CacheError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.backend.invalidate(keys, self.op_timeout).await;
        self.after_change(Changed::Keys(keys), result.is_err());
        self.invalidated(
            first,
            "invalidate",
            started,
            result.map(|()| keys.len() as u64),
        )
        .map(drop)
    }

    /// Removes the entries a refresh was to replace and could not store
    /// over (see `refresh_now`): now, if Redis answers; else (`failing`:
    /// Redis failed the refresh's lease request or write, or the breaker
    /// is open) as a change that did not land, by the retry of pending
    /// changes, so that the refresh neither waits on a failing backend nor
    /// adds its failures to the breaker's count. Either way this process
    /// stops reading the keys from the cache until the removal lands. A
    /// refresh dropped while the removal is under way pends it, as a
    /// dropped invalidation does: its joiners already have the new value.
    pub(super) async fn remove_unreplaced(self: &Arc<Self>, keys: &[String], failing: bool) {
        if !self.enabled || keys.is_empty() {
            return;
        }
        if failing || self.backend.breaker_open() {
            self.after_change(Changed::Keys(keys), true);
            return;
        }
        let _ = self
            .guarded(keys, &[], &[], self.invalidate_full(keys))
            .await;
    }

    /// Removes every entry whose full key matches the glob `pattern`.
    pub(crate) async fn invalidate_pattern_full(
        self: &Arc<Self>,
        pattern: &str,
    ) -> Result<u64, CacheError> {
        if !self.enabled {
            return Ok(0);
        }
        let started = Instant::now();
        let result = self
            .backend
            .invalidate_pattern(pattern, self.op_timeout, true)
            .await;
        self.after_change(Changed::Pattern(pattern), result.is_err());
        if result
            .as_ref()
            .is_err_and(crate::backend::BackendError::is_refused_for_memory)
        {
            // It removed what matches before Redis refused the epoch.
            self.pending.mark_swept(pattern);
        }
        self.invalidated(pattern, "invalidate_pattern", started, result)
    }

    /// Removes every entry recorded under the full tag key `tag`.
    pub(crate) async fn invalidate_tag_full(
        self: &Arc<Self>,
        tag: &str,
    ) -> Result<u64, CacheError> {
        if !self.enabled {
            return Ok(0);
        }
        let started = Instant::now();
        let result = self.backend.invalidate_tag(tag, self.op_timeout).await;
        self.after_change(Changed::Tag(tag), result.is_err());
        self.invalidated(tag, "invalidate_tag", started, result)
    }

    /// Counts, times and traces an invalidation; reports its failure.
    fn invalidated(
        &self,
        key: &str,
        op: &'static str,
        started: Instant,
        result: Result<u64, BackendError>,
    ) -> Result<u64, CacheError> {
        let took = started.elapsed();
        let relative = key
            .strip_prefix(self.namespace.as_str())
            .and_then(|k| k.strip_prefix(':'))
            .unwrap_or(key);
        // A tag's invalidations count under the tag's first segment.
        let relative = relative
            .strip_prefix(TAG_PREFIX)
            .and_then(|t| t.strip_prefix(':'))
            .unwrap_or(relative);
        let counters = self.stats.counters(stats_name(relative));
        if self.backend.is_remote() {
            counters.latency_invalidate.record(took);
        }
        tracing::debug!(cache_key = %key, op, latency_ms = took.as_secs_f64() * 1e3, ok = result.is_ok(), "cache invalidation");
        match result {
            Ok(n) => {
                counters.invalidations.add();
                Ok(n)
            }
            Err(e) => {
                self.backend_failed(key, op, &e, &counters);
                Err(CacheError(e))
            }
        }
    }
}
