//! Changes that did not reach the backend: a write-through or an
//! invalidation that failed (Redis refusing writes with `-OOM` or
//! `-READONLY`, frozen, killed, unreachable) is not forgotten.
//!
//! Until it lands, this process never reads the keys it names from the
//! cache (their calls go to the loader, and store nothing), so it cannot
//! serve the value the change meant to replace, even after Redis comes back
//! with data that missed the change (an AOF or RDB restore, a replica that
//! was promoted). A task retries each change, as an invalidation, with a
//! backoff of 10 ms doubling to 500 ms, until the backend takes it. Other
//! processes may serve the old value until then (or until its TTL): the
//! window the README documents.
//!
//! Memory is bounded: past [`MAX_PENDING`] changes, the pending set collapses
//! into one invalidation of the whole namespace.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Engine;
use crate::backend::BackendError;

/// The most changes remembered one by one.
pub(crate) const MAX_PENDING: usize = 10_000;

/// Changes to retry, and the keys they keep this process from reading.
#[derive(Default)]
pub(crate) struct Pending {
    /// Items in `state` (0: nothing pending; the read path takes no lock).
    count: AtomicUsize,
    state: Mutex<State>,
    /// Whether a retry task runs.
    retrying: AtomicBool,
}

#[derive(Default)]
struct State {
    keys: HashSet<String>,
    patterns: HashSet<String>,
    tags: HashSet<String>,
}

impl State {
    fn len(&self) -> usize {
        self.keys.len() + self.patterns.len() + self.tags.len()
    }
}

/// One change to retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Change {
    /// Full keys to invalidate (a failed write-through or key invalidation).
    Keys(Vec<String>),
    /// A full glob pattern to invalidate.
    Pattern(String),
    /// A full tag key to invalidate.
    Tag(String),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Whether a call of `key` (recorded under the full tag keys `tags`)
    /// must not read the cache: a change of it has not landed.
    #[inline]
    pub(crate) fn blocks(&self, key: &str, tags: &[String]) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let state = crate::lock(&self.state);
        state.keys.contains(key)
            || tags.iter().any(|t| state.tags.contains(t))
            || state.patterns.iter().any(|p| crate::glob::matches(p, key))
    }

    /// How many changes wait to be retried.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn add(&self, change: Change, namespace: &str) {
        let mut state = crate::lock(&self.state);
        match change {
            Change::Keys(keys) => state.keys.extend(keys),
            Change::Pattern(p) => {
                state.patterns.insert(p);
            }
            Change::Tag(t) => {
                state.tags.insert(t);
            }
        }
        if state.len() > MAX_PENDING {
            // Too many to remember one by one: retire the whole namespace.
            *state = State::default();
            state.patterns.insert(namespace_pattern(namespace));
        }
        self.count.store(state.len(), Ordering::Release);
    }

    fn snapshot(&self) -> Vec<Change> {
        let state = crate::lock(&self.state);
        let mut out: Vec<Change> = Vec::with_capacity(state.len());
        let keys: Vec<String> = state.keys.iter().cloned().collect();
        // Bounded commands: no single UNLINK holds the server for long.
        out.extend(keys.chunks(500).map(|c| Change::Keys(c.to_vec())));
        out.extend(state.patterns.iter().cloned().map(Change::Pattern));
        out.extend(state.tags.iter().cloned().map(Change::Tag));
        out
    }

    fn landed(&self, change: &Change) {
        let mut state = crate::lock(&self.state);
        match change {
            Change::Keys(keys) => {
                for k in keys {
                    state.keys.remove(k);
                }
            }
            Change::Pattern(p) => {
                state.patterns.remove(p);
            }
            Change::Tag(t) => {
                state.tags.remove(t);
            }
        }
        self.count.store(state.len(), Ordering::Release);
    }
}

/// Every key of a namespace, as a glob.
fn namespace_pattern(namespace: &str) -> String {
    let mut p = String::with_capacity(namespace.len() + 2);
    if !namespace.is_empty() {
        crate::push_escaped(&mut p, namespace);
        p.push(':');
    }
    p.push('*');
    p
}

/// Whether a failed change may still have to be undone: anything but a
/// value that could not be stored at all (its write-through already removed
/// the old value, or the error says so).
pub(super) fn must_retry(e: &BackendError) -> bool {
    !matches!(e, BackendError::Encode(_) | BackendError::TooLarge(_))
}

impl Engine {
    /// Remembers a change that did not land, and makes sure a task retries it.
    pub(super) fn pend(self: &Arc<Self>, change: Change) {
        self.pending.add(change, &self.namespace);
        tracing::debug!(
            pending = self.pending.len(),
            "a change did not reach the backend; retrying it in the background"
        );
        if self.pending.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to retry from: the next change made inside one
            // starts the task; until then the keys stay blocked.
            self.pending.retrying.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(retry(Arc::downgrade(self)));
    }
}

/// The cache operation of a write whose body has succeeded (committed):
/// if its caller is dropped before the operation finishes (a client gone, a
/// request timeout), what it was to change is retried as pending rather
/// than lost with the future.
#[must_use = "call `finished` once the cache operation is done"]
pub(crate) struct Unfinished {
    engine: Arc<Engine>,
    changes: Vec<Change>,
}

impl Unfinished {
    /// The operation ran to its end (its own failures are pending already).
    pub(crate) fn finished(mut self) {
        self.changes.clear();
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        for change in std::mem::take(&mut self.changes) {
            self.engine.pend(change);
        }
    }
}

impl Engine {
    /// Guards the cache operation of a write over full `keys`, `patterns`
    /// and `tags` (see [`Unfinished`]).
    pub(crate) fn unfinished(
        self: &Arc<Self>,
        keys: &[String],
        patterns: &[String],
        tags: &[String],
    ) -> Unfinished {
        let mut changes = Vec::with_capacity(1 + patterns.len() + tags.len());
        if !keys.is_empty() {
            changes.push(Change::Keys(keys.to_vec()));
        }
        changes.extend(patterns.iter().cloned().map(Change::Pattern));
        changes.extend(tags.iter().cloned().map(Change::Tag));
        Unfinished {
            engine: Arc::clone(self),
            changes,
        }
    }
}

/// Retries every pending change until none is left, or the cache is gone.
async fn retry(engine: Weak<Engine>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::time::sleep(backoff).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let mut all_landed = true;
        for change in engine.pending.snapshot() {
            let timeout = engine.op_timeout;
            let result = match &change {
                Change::Keys(keys) => engine.backend.invalidate(keys, timeout).await.map(drop),
                Change::Pattern(p) => engine
                    .backend
                    .invalidate_pattern(p, timeout)
                    .await
                    .map(drop),
                Change::Tag(t) => engine.backend.invalidate_tag(t, timeout).await.map(drop),
            };
            match result {
                Ok(()) => engine.pending.landed(&change),
                Err(_) => all_landed = false,
            }
        }
        if all_landed {
            backoff = Duration::from_millis(10);
        } else {
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        if engine.pending.len() == 0 {
            engine.pending.retrying.store(false, Ordering::Release);
            // A change added after the check, whose `pend` saw the task
            // running, is picked up by restarting.
            if engine.pending.len() == 0 || engine.pending.retrying.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_changes_block_their_keys_patterns_and_tags_only() {
        let p = Pending::default();
        assert!(!p.blocks("ns:a:1", &[]));
        p.add(Change::Keys(vec!["ns:a:1".into()]), "ns");
        p.add(Change::Pattern(r"ns:v:7:*".into()), "ns");
        p.add(Change::Tag("ns:~tag:t".into()), "ns");
        assert_eq!(p.len(), 3);
        assert!(p.blocks("ns:a:1", &[]));
        assert!(!p.blocks("ns:a:2", &[]));
        assert!(p.blocks("ns:v:7:placements", &[]));
        assert!(!p.blocks("ns:v:8:placements", &[]));
        assert!(p.blocks("ns:b:1", &["ns:~tag:t".into()]));
        assert!(!p.blocks("ns:b:1", &["ns:~tag:u".into()]));
        p.landed(&Change::Keys(vec!["ns:a:1".into()]));
        assert!(!p.blocks("ns:a:1", &[]));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn too_many_pending_changes_collapse_into_the_namespace() {
        let p = Pending::default();
        for i in 0..=MAX_PENDING {
            p.add(Change::Keys(vec![format!("ns:k:{i}")]), "ns");
        }
        assert_eq!(p.len(), 1, "one namespace-wide invalidation");
        assert!(p.blocks("ns:anything:at:all", &[]));
        assert!(!p.blocks("other:k:1", &[]));
        assert_eq!(p.snapshot(), vec![Change::Pattern("ns:*".into())]);
    }
}
