//! Failure reporting: every backend failure and unreadable entry is counted,
//! exported as a metric and logged (rate-limited), and never reaches the
//! caller, except in strict mode, which panics so tests see it.

use super::Engine;
use crate::backend::BackendError;
use crate::clock::monotonic_ms;
use crate::codec::DecodeError;
use crate::stats::Counters;

impl Engine {
    /// Reports a failed backend operation on `key`.
    pub(crate) fn backend_failed(
        &self,
        key: &str,
        op: &'static str,
        e: &BackendError,
        counters: &Counters,
    ) {
        match e {
            // The breaker logged its opening; each skip is only counted.
            BackendError::Skipped => {
                counters.skipped.add();
                return;
            }
            BackendError::TooLarge(_) => counters.oversize.add(),
            _ => counters.errors.add(),
        }
        metrics_error(counters, e.kind());
        if self.strict {
            panic!(
                "cache backend failed on {op} of {key:?}: {e}; strict mode surfaces what is otherwise logged and skipped"
            );
        }
        if e.is_misconfiguration() && self.first_misconfiguration(e.kind()) {
            tracing::error!(
                op,
                kind = e.kind(),
                error = %e,
                "cache cannot use Redis as configured (check the credentials, and the ACL rule: \
                 cached_runtime::redis_acl_rule); every call is served from its loader until it is fixed"
            );
            return;
        }
        if let Some(held_back) = self.warnings.allow(monotonic_ms()) {
            tracing::warn!(cache_key = %key, op, kind = e.kind(), error = %e, held_back, "cache backend failed; serving from the loader");
        }
    }

    /// Whether this is the first misconfiguration of `kind` (`auth`,
    /// `permission`) this cache has seen.
    fn first_misconfiguration(&self, kind: &str) -> bool {
        // Which kind gets which bit does not matter (scripts/mutants reports
        // swapping them as a survivor: equivalent).
        let bit = if kind == "auth" { 1 } else { 2 };
        self.misconfigured
            .fetch_or(bit, std::sync::atomic::Ordering::Relaxed)
            & bit
            == 0
    }

    /// Reports an entry that is not a value of the type and format asked for.
    pub(super) fn unreadable(&self, key: &str, why: &DecodeError, counters: &Counters) {
        counters.errors.add();
        metrics_error(counters, "unreadable");
        if self.strict {
            panic!(
                "cache entry {key:?} is unreadable ({why}); strict mode surfaces what is otherwise a logged miss"
            );
        }
        if let Some(held_back) = self.warnings.allow(monotonic_ms()) {
            tracing::warn!(cache_key = %key, reason = %why, held_back, "unreadable cache entry treated as a miss; it will be overwritten");
        }
    }

    /// Warns (rate-limited) that a background refresh failed.
    pub(super) fn refresh_failed(&self, key: &str) {
        if let Some(held_back) = self.warnings.allow(monotonic_ms()) {
            // Fail-safe: the old value stays until its stale window ends.
            tracing::warn!(cache_key = %key, held_back, "background refresh failed; serving the previous value");
        }
    }
}

/// `cache_errors_total{cache, kind}`: rare, so looked up each time.
fn metrics_error(counters: &Counters, kind: &'static str) {
    metrics::counter!(crate::stats::names::ERRORS, "cache" => counters.name().to_owned(), "kind" => kind)
        .increment(1);
}
