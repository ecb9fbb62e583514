//! What one call asks of the engine: its [`Policy`] (TTLs, locking, stale
//! window, early refresh), how its return type maps to what is stored
//! ([`Shape`]), and the [`Call`] that carries both with the key.

use std::any::Any;
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::LONGEST;
use crate::stats::Counters;

/// How a call site loads: everything that is not the key or the loader.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a value is fresh.
    pub ttl: Duration,
    /// How long a `None` is kept (`cache_none`); `None`: not kept.
    pub none_ttl: Option<Duration>,
    /// Single flight (shared reads on Redis, one load per key) and leases
    /// (`lock = false` turns them off).
    pub lock: bool,
    /// How long a lease lives if its holder never ends it (a crash).
    pub lease: Duration,
    /// The longest a caller waits for another's load before loading itself.
    pub wait: Duration,
    /// How long past its TTL a value may still be served (zero: never).
    pub stale: Duration,
    /// XFetch's beta: `Some` turns probabilistic early refresh on.
    pub early_refresh: Option<f64>,
    /// The share of hits audited against the source (`audit`), in (0, 1];
    /// `None`: the cache's default (`CacheBuilder::audit`).
    pub audit: Option<f64>,
    /// Whether a loaded value may be stored (`cache_if`, `unless`), given
    /// the stored type's value; `None`: every value may.
    pub keep_if: Option<fn(&dyn Any) -> bool>,
    /// A TTL chosen by the stored value (`ttl = |v: &T| ...`), at most
    /// `ttl`; `None`: every value is kept for `ttl`.
    pub ttl_of: Option<fn(&dyn Any) -> Duration>,
    /// With a stale window: how long a caller that found a stale value
    /// waits for this process's refresh of it before it is served the
    /// stale value (`soft_timeout`); `None`: served at once.
    pub soft_timeout: Option<Duration>,
}

impl Policy {
    /// How long a tag must outlive a lease taken now: the longest an entry
    /// stored under it may then live.
    pub(crate) fn tag_for(&self) -> Duration {
        let ttl = self.ttl.min(LONGEST);
        ttl.saturating_add(ttl.mul_f64(MAX_JITTER))
            .saturating_add(self.stale.min(LONGEST))
            .saturating_add(self.lease.min(LONGEST))
    }

    /// Defaults for a TTL: locking on, a 10 s lease, a 5 s wait, no stale
    /// window, no early refresh.
    pub const fn new(ttl: Duration) -> Policy {
        Policy {
            ttl,
            none_ttl: None,
            lock: true,
            lease: Duration::from_secs(10),
            wait: Duration::from_secs(5),
            stale: Duration::ZERO,
            early_refresh: None,
            audit: None,
            keep_if: None,
            ttl_of: None,
            soft_timeout: None,
        }
    }

    /// Keeps each value for what `ttl_of` says of it, at most the policy's
    /// TTL (`ttl = |v: &T| ...`, with `max_ttl`).
    pub const fn ttl_of(mut self, ttl_of: fn(&dyn Any) -> Duration) -> Policy {
        self.ttl_of = Some(ttl_of);
        self
    }

    /// Waits this long for a refresh of a stale value before serving it
    /// (`soft_timeout`).
    pub const fn soft_timeout(mut self, after: Duration) -> Policy {
        self.soft_timeout = Some(after);
        self
    }

    /// This policy for one call whose TTL was computed when it was made
    /// (`ttl = <expression>`): at most the policy's own TTL (`max_ttl`).
    pub fn for_call(mut self, ttl: Duration) -> Policy {
        self.ttl = ttl.min(self.ttl);
        self
    }

    /// How long to keep `value` (of the stored type), if at all: the TTL
    /// rule's answer or the policy's TTL, at most the policy's TTL; a TTL
    /// under a millisecond (what backends count in) keeps nothing.
    #[inline]
    pub(crate) fn ttl_for(&self, value: &dyn Any) -> Option<Duration> {
        let ttl = match self.ttl_of {
            Some(rule) => rule(value).min(self.ttl),
            None => self.ttl,
        };
        (ttl >= Duration::from_millis(1)).then_some(ttl)
    }

    /// Stores a loaded value only if `keep` says so (`cache_if`, `unless`).
    pub const fn keep_if(mut self, keep: fn(&dyn Any) -> bool) -> Policy {
        self.keep_if = Some(keep);
        self
    }

    /// Whether `value` (of the stored type) may be stored.
    #[inline]
    fn keeps(&self, value: &dyn Any) -> bool {
        self.keep_if.is_none_or(|keep| keep(value))
    }

    /// Keeps `None` for `ttl` (`cache_none`).
    pub const fn cache_none(mut self, ttl: Duration) -> Policy {
        self.none_ttl = Some(ttl);
        self
    }

    /// Single flight and leases on or off (`lock`).
    pub const fn lock(mut self, lock: bool) -> Policy {
        self.lock = lock;
        self
    }

    /// How long a lease lives if its holder dies (`lease`).
    pub const fn lease(mut self, lease: Duration) -> Policy {
        self.lease = lease;
        self
    }

    /// The longest wait for another caller's load (`wait`).
    pub const fn wait(mut self, wait: Duration) -> Policy {
        self.wait = wait;
        self
    }

    /// How long past its TTL a value may be served (`stale`).
    pub const fn stale(mut self, stale: Duration) -> Policy {
        self.stale = stale;
        self
    }

    /// Probabilistic early refresh with XFetch's `beta` (`early_refresh`).
    pub const fn early_refresh(mut self, beta: f64) -> Policy {
        self.early_refresh = Some(beta);
        self
    }

    /// Audits this share of hits against the source (`audit`).
    pub const fn audit(mut self, rate: f64) -> Policy {
        self.audit = Some(rate);
        self
    }
}

/// How a call site's value maps to the item stored under its key: `V = T`
/// for functions returning a value, `V = Option<T>` for those returning an
/// `Option` (`None` is stored, if at all, as an absence marker). Resolved at
/// compile time, so a hit's value is moved, not passed through a function
/// pointer.
pub trait Shape<T>: Sized {
    /// What to store for this value (`None`: the absence marker).
    fn item(&self) -> Option<&T>;
    /// What a stored item means to this caller (`None`: nothing usable, e.g.
    /// an absence marker for a function that never returns `None`).
    fn from_item(item: Option<T>) -> Option<Self>;
    /// How long to keep this value (`None`: do not cache it).
    fn keep_for(&self, policy: &Policy) -> Option<Duration>;
}

/// Every value is stored (unless `cache_if` / `unless` says otherwise),
/// for the policy's TTL.
impl<T: 'static> Shape<T> for T {
    #[inline(always)]
    fn item(&self) -> Option<&T> {
        Some(self)
    }
    #[inline(always)]
    fn from_item(item: Option<T>) -> Option<T> {
        item
    }
    #[inline(always)]
    fn keep_for(&self, policy: &Policy) -> Option<Duration> {
        if policy.keeps(self) {
            policy.ttl_for(self)
        } else {
            None
        }
    }
}

/// `Some` for the TTL (unless `cache_if` / `unless` says otherwise);
/// `None` as a marker, only with `cache_none`.
impl<T: 'static> Shape<T> for Option<T> {
    #[inline(always)]
    fn item(&self) -> Option<&T> {
        self.as_ref()
    }
    #[inline(always)]
    fn from_item(item: Option<T>) -> Option<Option<T>> {
        Some(item)
    }
    #[inline(always)]
    fn keep_for(&self, policy: &Policy) -> Option<Duration> {
        match self {
            Some(value) if policy.keeps(value) => policy.ttl_for(value),
            Some(_) => None,
            None => policy.none_ttl,
        }
    }
}

/// A load that can run after its caller has returned: a background refresh.
/// `None` means the load failed (its error is not needed: the old value is
/// kept and served).
pub type Refresh<T> = Pin<Box<dyn Future<Output = Option<T>> + Send + 'static>>;

/// How a loader's error reaches the callers who waited for that load: a
/// copy of it each, so one failure costs the source one run, not one per
/// waiter. Made only for errors that are `Clone + Send + Sync + 'static`
/// (the attributes pick it when the error type allows); without it, each
/// waiter tries the source itself.
pub struct ErrorSharing<E> {
    share: fn(&E) -> Arc<dyn Any + Send + Sync>,
    take: fn(&(dyn Any + Send + Sync)) -> Option<E>,
}

impl<E> Clone for ErrorSharing<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for ErrorSharing<E> {}

impl<E> std::fmt::Debug for ErrorSharing<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorSharing")
    }
}

impl<E: Clone + Send + Sync + 'static> ErrorSharing<E> {
    /// Shares errors by cloning them.
    pub const fn new() -> Self {
        ErrorSharing {
            share: |e| Arc::new(e.clone()),
            take: |any| any.downcast_ref::<E>().cloned(),
        }
    }
}

impl<E: Clone + Send + Sync + 'static> Default for ErrorSharing<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> ErrorSharing<E> {
    /// The error, as the waiters receive it.
    pub(super) fn share(&self, e: &E) -> Arc<dyn Any + Send + Sync> {
        (self.share)(e)
    }

    /// A waiter's copy of a shared error.
    pub(super) fn take(&self, shared: &(dyn Any + Send + Sync)) -> Option<E> {
        (self.take)(shared)
    }
}

/// A call's counters: borrowed from its call site, or owned.
pub(crate) type CountersRef<'a> = Cow<'a, Arc<Counters>>;

/// One get-or-load call: everything but the loader.
///
/// `V` is what the caller gets (`T`, or `Option<T>` for functions that
/// return an `Option`); `T` is what is stored. Every call site of a key
/// stores the same `T`, so `#[cache_put]` on `-> Placement` and `#[cached]`
/// on `-> Option<Placement>` share entries; a cached `None` is a marker.
pub(crate) struct Call<'a, V, T> {
    pub(crate) key: String,
    pub(crate) counters: CountersRef<'a>,
    /// The call site's policy, or this call's copy of it (a TTL computed
    /// per call).
    pub(crate) policy: Cow<'a, Policy>,
    /// Full tag keys the entry is recorded under.
    pub(crate) tags: &'a [String],
    /// How `V` maps to `T` ([`Shape`]).
    pub(crate) shape: std::marker::PhantomData<fn(V) -> T>,
}

impl<V: Shape<T>, T> Call<'_, V, T> {
    /// How long to keep `value`, which took `load_time` to load (`None`:
    /// not at all).
    pub(super) fn keep(&self, value: &V, load_time: Duration) -> Option<Keep> {
        value.keep_for(&self.policy).map(|ttl| Keep {
            ttl,
            stale: self.policy.stale,
            load_time,
        })
    }

    /// How long a tag must outlive a lease taken now: the longest the entry
    /// may then live.
    pub(super) fn tag_for(&self) -> Duration {
        self.policy.tag_for()
    }
}

/// How long a written value lives, and what to record about its load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    pub(crate) ttl: Duration,
    pub(crate) stale: Duration,
    pub(crate) load_time: Duration,
}

/// The most TTL jitter a cache can add (`ttl_jitter` is at most 1).
const MAX_JITTER: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Registry;

    fn call<V: Shape<u32>>(policy: &Policy, f: impl FnOnce(&Call<'_, V, u32>)) {
        let registry = Registry::default();
        let call = Call {
            key: "k".to_owned(),
            counters: Cow::Owned(registry.counters("k")),
            policy: Cow::Borrowed(policy),
            tags: &[],
            shape: std::marker::PhantomData,
        };
        f(&call);
    }

    #[test]
    fn a_tag_outlives_the_longest_entry_a_lease_can_write() {
        let policy = Policy::new(Duration::from_secs(10))
            .stale(Duration::from_secs(5))
            .lease(Duration::from_secs(2));
        // The TTL, its largest jitter (as much again), the stale window, and
        // the lease during which the write may still come.
        call::<u32>(&policy, |c| {
            assert_eq!(c.tag_for(), Duration::from_secs(27))
        });
        let forever = Policy::new(Duration::MAX).stale(Duration::MAX);
        call::<u32>(&forever, |c| assert!(c.tag_for() >= LONGEST * 2));
    }

    #[test]
    fn what_is_kept_and_for_how_long() {
        let policy = Policy::new(Duration::from_secs(60)).stale(Duration::from_secs(9));
        let took = Duration::from_millis(3);
        call::<u32>(&policy, |c| {
            let keep = c.keep(&7, took).expect("a value is kept");
            assert_eq!(
                (keep.ttl, keep.stale, keep.load_time),
                (Duration::from_secs(60), Duration::from_secs(9), took)
            );
        });
        call::<Option<u32>>(&policy, |c| {
            assert!(c.keep(&None, took).is_none(), "no cache_none: not kept");
            assert_eq!(
                c.keep(&Some(7), took).map(|k| k.ttl),
                Some(Duration::from_secs(60))
            );
        });
        let none_too = policy.cache_none(Duration::from_secs(4));
        call::<Option<u32>>(&none_too, |c| {
            assert_eq!(
                c.keep(&None, took).map(|k| k.ttl),
                Some(Duration::from_secs(4))
            );
        });
    }

    #[test]
    fn a_value_and_its_item() {
        assert_eq!(Shape::<u32>::item(&5u32), Some(&5));
        assert_eq!(<u32 as Shape<u32>>::from_item(Some(5)), Some(5));
        assert_eq!(
            <u32 as Shape<u32>>::from_item(None),
            None,
            "a marker is no u32"
        );
        assert_eq!(Shape::<u32>::item(&Some(5u32)), Some(&5));
        assert_eq!(Shape::<u32>::item(&None::<u32>), None);
        assert_eq!(<Option<u32> as Shape<u32>>::from_item(None), Some(None));
    }

    #[test]
    fn the_builders_set_what_they_name() {
        let p = Policy::new(Duration::from_secs(1))
            .lock(false)
            .wait(Duration::from_millis(7))
            .early_refresh(2.0);
        assert!(!p.lock);
        assert_eq!(p.wait, Duration::from_millis(7));
        assert_eq!(p.early_refresh, Some(2.0));
        let d = Policy::new(Duration::from_secs(1));
        assert!(d.lock && d.none_ttl.is_none() && d.early_refresh.is_none());
        assert_eq!(
            (d.lease, d.wait, d.stale),
            (
                Duration::from_secs(10),
                Duration::from_secs(5),
                Duration::ZERO
            )
        );
    }

    #[test]
    fn errors_are_shared_by_copy() {
        let sharing = ErrorSharing::<String>::default();
        let shared = sharing.share(&"boom".to_owned());
        assert_eq!(sharing.take(&*shared).as_deref(), Some("boom"));
        assert_eq!(
            ErrorSharing::<u8>::new().take(&*shared),
            None,
            "another type"
        );
        assert_eq!(format!("{sharing:?}"), "ErrorSharing");
    }
}
