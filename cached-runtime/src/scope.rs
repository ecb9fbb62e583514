//! Per-call control: a scope whose cached calls bypass the cache or refresh
//! their entries, and the outcome of a call (hit, loaded, ...).
//!
//! A scope is a Tokio task-local, set around a future: an axum middleware
//! sets it from a request header, and the handlers below it stay the same.
//!
//! ```
//! use cached_runtime::{CallMode, with_mode};
//! # async fn handler() -> u32 { 1 }
//! # async fn run() {
//! // `Cache-Control: no-cache` from a client: read the source, replace the entries.
//! let answer = with_mode(CallMode::Refresh, handler()).await;
//! # let _ = answer;
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// How the cached calls inside a scope use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CallMode {
    /// Read, load and store as each function is configured.
    #[default]
    Normal,
    /// Neither read nor write: every cached call runs its function, as if
    /// the cache were off (`CacheBuilder::enabled(false)`) for this scope.
    /// Write-throughs and evictions made inside it (`#[cache_put]`,
    /// `#[cache_evict]`, `Cache::set`, `Cache::invalidate*`) still reach
    /// the cache, so that no entry outlives the change they make.
    Bypass,
    /// Do not read: each cached call loads from the source and replaces
    /// its entry, under the key's lease (a write-through or an invalidation
    /// meanwhile wins, as for any load). `#[cached(batch)]` calls load
    /// every id.
    Refresh,
}

/// What a cached call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Served from the cache past its TTL, inside its stale window.
    Stale,
    /// The function ran for this call.
    Loaded,
    /// Served another caller's read or load (in this process, or another
    /// process's leaseholder).
    Coalesced,
    /// The cache was not used: a [`CallMode::Bypass`] scope, or a cache
    /// built with `enabled(false)`.
    Bypassed,
    /// Loaded and stored by a [`CallMode::Refresh`] scope.
    Refreshed,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Loaded,
        Outcome::Coalesced,
        Outcome::Bypassed,
        Outcome::Refreshed,
    ];

    fn code(self) -> u8 {
        match self {
            Outcome::Hit => 1,
            Outcome::Stale => 2,
            Outcome::Loaded => 3,
            Outcome::Coalesced => 4,
            Outcome::Bypassed => 5,
            Outcome::Refreshed => 6,
        }
    }

    fn from_code(code: u8) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// The scope of a task: its mode, and where to record the outcome of its
/// cached calls when asked for (shared with the scopes nested inside).
#[derive(Debug)]
struct Scope {
    mode: CallMode,
    outcome: Option<Arc<AtomicU8>>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `fut` with its cached calls in `mode`. Scopes nest: the innermost
/// wins. Background refreshes started inside are not in the scope (they
/// run in tasks of their own).
pub async fn with_mode<F: Future>(mode: CallMode, fut: F) -> F::Output {
    let outcome = SCOPE.try_with(|s| s.outcome.clone()).ok().flatten();
    SCOPE.scope(Scope { mode, outcome }, fut).await
}

/// Runs `fut` and returns what it returned with the outcome of the last
/// cached call it made (`None`: it made none). The `{name}_with_outcome`
/// companion of a `#[cached]` function is this around one call.
pub async fn with_outcome<F: Future>(fut: F) -> (F::Output, Option<Outcome>) {
    let slot = Arc::new(AtomicU8::new(0));
    let scope = Scope {
        mode: current_mode(),
        outcome: Some(Arc::clone(&slot)),
    };
    let out = SCOPE.scope(scope, fut).await;
    (out, Outcome::from_code(slot.load(Ordering::Relaxed)))
}

/// The mode of the current task's scope (`Normal` outside any).
#[inline]
pub(crate) fn current_mode() -> CallMode {
    SCOPE.try_with(|s| s.mode).unwrap_or_default()
}

/// Records a cached call's outcome, if the scope asks for it.
#[inline]
pub(crate) fn record(outcome: Outcome) {
    let _ = SCOPE.try_with(|s| {
        if let Some(slot) = &s.outcome {
            slot.store(outcome.code(), Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_nest_and_outside_is_normal() {
        assert_eq!(current_mode(), CallMode::Normal);
        with_mode(CallMode::Bypass, async {
            assert_eq!(current_mode(), CallMode::Bypass);
            with_mode(CallMode::Refresh, async {
                assert_eq!(current_mode(), CallMode::Refresh);
            })
            .await;
            assert_eq!(current_mode(), CallMode::Bypass);
        })
        .await;
        assert_eq!(current_mode(), CallMode::Normal);
    }

    #[tokio::test]
    async fn the_last_outcome_is_returned_and_only_when_asked() {
        record(Outcome::Hit); // no scope: nothing happens
        let ((), outcome) = with_outcome(async {
            record(Outcome::Hit);
            record(Outcome::Loaded);
        })
        .await;
        assert_eq!(outcome, Some(Outcome::Loaded));
        let ((), none) = with_outcome(async {}).await;
        assert_eq!(none, None);
        // A mode scope inside records for the outer one.
        let ((), outcome) = with_outcome(with_mode(CallMode::Bypass, async {
            assert_eq!(current_mode(), CallMode::Bypass);
            record(Outcome::Bypassed);
        }))
        .await;
        assert_eq!(outcome, Some(Outcome::Bypassed));
        // And an outcome scope keeps the mode it is in.
        with_mode(CallMode::Refresh, async {
            let (mode, _) = with_outcome(async { current_mode() }).await;
            assert_eq!(mode, CallMode::Refresh);
        })
        .await;
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_code(o.code()), Some(o));
        }
        assert_eq!(Outcome::from_code(0), None);
    }
}
