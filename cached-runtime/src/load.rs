//! Get-or-load: the same semantics on every backend.
//!
//! 1. A fresh hit returns at once. Near its expiry one caller, cluster-wide,
//!    refreshes it in the background (XFetch, Vattani et al., VLDB 2015).
//! 2. A stale hit (past its TTL, inside its `stale` window) is served while
//!    one caller refreshes it in the background, and keeps being served if
//!    the refresh fails.
//! 3. On a miss, callers in one process share one load (single flight), and
//!    across processes one caller holds a lease on the key; the others poll
//!    for its value, at an interval that grows with the wait, up to a bound
//!    after which they load for themselves rather than hang.
//! 4. The leaseholder's write succeeds only while its lease is valid: an
//!    invalidation destroys the lease, so a load that read the source before
//!    a write can never store the old value afterwards.
//! 5. A caller dropped mid-load, or a loader that panics, wakes every waiter
//!    and releases its lease.
//!
//! On Redis the single flight begins before the read: callers of one key in
//! one process share its GET, and after a miss the same flight goes on to
//! the lease and the load. A write-through or invalidation in the process
//! detaches the key's flight, so that no caller starting after it shares a
//! read begun before it.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::Cacheable;
use crate::backend::{BackendError, Fetched, LeaseOutcome};
use crate::cache::{Cache, Keep, now_ms};
use crate::codec::EntryMeta;
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
}

impl Policy {
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
        }
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

/// Every value is stored, for the policy's TTL.
impl<T> Shape<T> for T {
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
        Some(policy.ttl)
    }
}

/// `Some` for the TTL; `None` as a marker, only with `cache_none`.
impl<T> Shape<T> for Option<T> {
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
        if self.is_some() {
            Some(policy.ttl)
        } else {
            policy.none_ttl
        }
    }
}

/// A load that can run after its caller has returned: a background refresh.
/// `None` means the load failed (its error is not needed: the old value is
/// kept and served).
pub type Refresh<T> = Pin<Box<dyn Future<Output = Option<T>> + Send + 'static>>;

/// What a finished flight tells its waiters.
#[derive(Clone)]
enum Landed {
    Running,
    /// A loaded value.
    Value(Arc<dyn Any + Send + Sync>),
    /// A value the leader read from the backend (a shared hit).
    Hit(Arc<dyn Any + Send + Sync>, Shared),
    /// The load returned an error, which only its own caller receives.
    Failed,
    /// The leader went away (cancelled, panicked, or lost the lease race).
    Abandoned,
}

/// What kind of value a flight hands its waiters.
#[derive(Debug, Clone, Copy)]
enum Shared {
    /// Loaded after a miss.
    Loaded,
    /// A fresh hit, with its metadata (each waiter decides on an early
    /// refresh as if it had read it).
    Fresh(EntryMeta),
    /// A hit past its TTL, inside its stale window.
    Stale,
}

/// In-process single flight: one read and at most one load per key at a
/// time.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Flight, FlightHasher>>,
    /// Keys with a background refresh running: one per key at a time, kept
    /// apart from `running` because nobody waits for one (and a refresh may
    /// start while callers share a read). Nothing detaches a refresh.
    refreshing: Mutex<HashSet<String, FlightHasher>>,
    /// Flights in `running`: while zero, a call on the memory backend need
    /// not look for one before reading, and its hit takes no lock.
    misses: AtomicUsize,
    /// Numbers flights, so that a leader whose flight was detached (by a
    /// write or an invalidation) never removes its successor.
    next_id: std::sync::atomic::AtomicU64,
}

/// Every Redis hit hashes its key into `running` twice: SipHash cost more
/// than the rest of the bookkeeping (seen in `seq_hit`'s profile). The map
/// holds only keys in flight, so collisions cannot pile up.
type FlightHasher = foldhash::fast::RandomState;

/// A get-or-load (its read on Redis, then its load after a miss), which
/// callers join.
struct Flight {
    id: u64,
    /// Made when the first waiter joins: a flight nobody joins (nearly
    /// every hit) costs no channel.
    tx: Option<watch::Sender<Landed>>,
}

impl Flight {
    fn subscribe(&mut self) -> watch::Receiver<Landed> {
        match &self.tx {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(Landed::Running);
                self.tx = Some(tx);
                rx
            }
        }
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

enum Role<'a> {
    Lead(FlightGuard<'a>),
    Wait(watch::Receiver<Landed>),
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight, FlightHasher>> {
        crate::lock(&self.running)
    }

    /// Joins the get-or-load of `key` running in this process, or leads it.
    fn join_or_lead<'a>(&self, cache: &'a Cache, key: &'a str) -> Role<'a> {
        let mut running = self.lock();
        if let Some(flight) = running.get_mut(key) {
            return Role::Wait(flight.subscribe());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        running.insert(key.to_owned(), Flight { id, tx: None });
        self.misses.fetch_add(1, Ordering::Relaxed);
        Role::Lead(FlightGuard {
            cache: Cow::Borrowed(cache),
            key: Cow::Borrowed(key),
            id,
            refresh: false,
            landed: false,
            lease: None,
        })
    }

    /// Lets callers from now on start afresh rather than join a flight
    /// for `key` that began before a write or an invalidation of it (its
    /// read may have seen the old value). Its waiters, told it went away,
    /// read afresh too.
    pub(crate) fn detach<K: AsRef<str>>(&self, keys: &[K]) {
        // Nearly always nothing is in flight: no lock.
        if self.misses.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut running = self.lock();
        for key in keys {
            if running.remove(key.as_ref()).is_some() {
                self.misses.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// [`Flights::detach`] for every key (a pattern or tag invalidation).
    /// Background refreshes go on: their writes need their leases.
    pub(crate) fn detach_all(&self) {
        let mut running = self.lock();
        self.misses.fetch_sub(running.len(), Ordering::Relaxed);
        running.clear();
    }

    /// The flight running for `key`, if any: a caller can wait for its
    /// value without reading the backend first (the stampede case).
    fn miss_in_flight(&self, key: &str) -> Option<watch::Receiver<Landed>> {
        if self.misses.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().get_mut(key).map(Flight::subscribe)
    }

    /// Removes flight `id`, if it is still the one registered for `key`, and
    /// returns its channel if anyone joined it.
    fn remove(&self, key: &str, id: u64) -> Option<watch::Sender<Landed>> {
        let mut running = self.lock();
        // One lookup in the usual case; a successor (after a detach) is put
        // back.
        let (owned, flight) = running.remove_entry(key)?;
        if flight.id == id {
            self.misses.fetch_sub(1, Ordering::Relaxed);
            return flight.tx;
        }
        running.insert(owned, flight);
        None
    }

    /// Leads a background refresh of `key`, unless one is running here.
    fn try_lead(&self, cache: &Cache, key: &str) -> Option<FlightGuard<'static>> {
        if !crate::lock(&self.refreshing).insert(key.to_owned()) {
            return None;
        }
        Some(FlightGuard {
            cache: Cow::Owned(cache.clone()),
            key: Cow::Owned(key.to_owned()),
            id: 0,
            refresh: true,
            landed: false,
            lease: None,
        })
    }
}

/// Waits for a flight to land.
async fn landing(mut rx: watch::Receiver<Landed>) -> Landed {
    match rx.wait_for(|l| !matches!(l, Landed::Running)).await {
        Ok(landed) => landed.clone(),
        Err(_) => Landed::Abandoned,
    }
}

/// The leader's side of a flight. Dropping it unfinished (cancellation, a
/// panic) tells the waiters to go on without it and releases its lease.
/// Borrows the call's cache and key; a background refresh's owns them.
struct FlightGuard<'a> {
    cache: Cow<'a, Cache>,
    key: Cow<'a, str>,
    /// Its flight's number in `running` (a refresh has none).
    id: u64,
    /// A background refresh (nobody waits for it) rather than a get-or-load.
    refresh: bool,
    landed: bool,
    lease: Option<u64>,
}

impl FlightGuard<'_> {
    /// Ends the flight (once): later callers start their own, and those who
    /// joined get `landed`.
    fn land(&mut self, landed: Landed) {
        if let Some(tx) = self.end() {
            let _ = tx.send(landed);
        }
    }

    /// Ends the flight and hands a value to the waiters, made only if there
    /// are any: once the flight is out of the map, none can join.
    fn land_with<V: Clone + Send + Sync + 'static>(&mut self, value: &V, shared: Shared) {
        if let Some(tx) = self.end()
            && tx.receiver_count() > 0
        {
            let value: Arc<dyn Any + Send + Sync> = Arc::new(value.clone());
            let _ = tx.send(match shared {
                Shared::Loaded => Landed::Value(value),
                hit => Landed::Hit(value, hit),
            });
        }
    }

    fn end(&mut self) -> Option<watch::Sender<Landed>> {
        if std::mem::replace(&mut self.landed, true) {
            return None;
        }
        let flights = self.cache.flights();
        if self.refresh {
            crate::lock(&flights.refreshing).remove(&*self.key);
            return None;
        }
        flights.remove(&self.key, self.id)
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.land(Landed::Abandoned);
        if let Some(token) = self.lease.take() {
            // Cannot await in drop: release from a task, if a runtime runs.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let cache = self.cache.clone().into_owned();
                let key = std::mem::take(&mut self.key).into_owned();
                handle.spawn(async move { cache.release_lease(&key, token).await });
            }
        }
    }
}

/// What a read found.
pub(crate) enum Read<T> {
    Fresh(T, EntryMeta),
    Stale(T),
    Miss,
    /// The backend failed (already logged and counted).
    Failed,
}

/// XFetch: refresh early when `now - delta * beta * ln(rand) >= expiry`,
/// `delta` being how long the last load took.
fn early_refresh_due(meta: &EntryMeta, beta: f64, now_ms: u64) -> bool {
    let delta_ms = f64::from(meta.load_us) / 1000.0;
    // 1 - f64() is in (0, 1], so ln is finite and <= 0.
    let gap = -delta_ms * beta * (1.0 - fastrand::f64()).ln();
    now_ms as f64 + gap >= meta.expires_ms as f64
}

/// How long to sleep before polling again for another process's value:
/// an eighth of the time waited so far, within [2 ms, 50 ms], so polling
/// adds at most about an eighth to a wait, and little load to Redis.
fn poll_interval(waited: Duration) -> Duration {
    (waited / 8).clamp(Duration::from_millis(2), Duration::from_millis(50))
}

/// One get-or-load call: everything but the loader.
///
/// `V` is what the caller gets (`T`, or `Option<T>` for functions that
/// return an `Option`); `T` is what is stored. Every call site of a key
/// stores the same `T`, so `#[cache_put]` on `-> Placement` and `#[cached]`
/// on `-> Option<Placement>` share entries; a cached `None` is a marker.
pub(crate) struct Call<'a, V, T> {
    pub(crate) key: String,
    pub(crate) counters: CountersRef<'a>,
    pub(crate) policy: &'a Policy,
    /// Full tag keys the entry is recorded under.
    pub(crate) tags: &'a [String],
    /// How `V` maps to `T` ([`Shape`]).
    pub(crate) shape: std::marker::PhantomData<fn(V) -> T>,
}

impl<V: Shape<T>, T> Call<'_, V, T> {
    fn keep(&self, value: &V, load_time: Duration) -> Option<Keep> {
        value.keep_for(self.policy).map(|ttl| Keep {
            ttl,
            stale: self.policy.stale,
            load_time,
        })
    }

    /// How long a tag must outlive a lease taken now: the longest the entry
    /// may then live.
    fn tag_for(&self) -> Duration {
        self.policy.ttl.mul_f64(1.0 + MAX_JITTER) + self.policy.stale + self.policy.lease
    }
}

/// A call's counters: borrowed from its call site, or owned.
pub(crate) type CountersRef<'a> = Cow<'a, Arc<Counters>>;

/// What asking for a lease came to.
enum Leasing<V> {
    /// This caller holds it: load and write.
    Ours,
    /// Another caller's value arrived meanwhile.
    Value(V),
    /// The backend failed or the wait ran out: load, but do not write.
    NotOurs,
}

/// Whether a miss goes through the backend (lease, write) or, when the
/// backend has just failed, only through the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Backend,
    LoaderOnly,
}

/// The most TTL jitter a cache can add (`ttl_jitter` is at most 1).
const MAX_JITTER: f64 = 1.0;

impl Cache {
    /// Get-or-load (the module docs give the semantics).
    pub(crate) async fn load_through<V, T, E, F, Fut>(
        &self,
        call: Call<'_, V, T>,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let counters = &*call.counters;
        let mut load = load;
        // On Redis, callers of one key in this process share one read, and
        // after a miss its one load: 1000 callers of a cold key would
        // otherwise queue 1000 reads ahead of the leader's lease and load.
        if call.policy.lock && self.backend().is_remote() {
            // Each round waits for another flight to land: only a leader
            // that went away (cancelled, or detached) brings another.
            loop {
                let rx = match self.flights().join_or_lead(self, &call.key) {
                    Role::Lead(guard) => return self.lead_read(&call, guard, load, refresh).await,
                    Role::Wait(rx) => rx,
                };
                let landed = Box::pin(landing(rx)).await;
                if let Landed::Hit(any, shared) = &landed {
                    if let Some(value) = any.downcast_ref::<V>() {
                        self.shared_hit(&call, *shared, refresh);
                        return Ok(value.clone());
                    }
                    // A hit of another type (another call site shares the
                    // key): read for itself.
                    break;
                }
                match Box::pin(self.settle(landed, counters, load, true)).await {
                    Ok(result) => return result,
                    Err(again) => load = again,
                }
            }
        }
        // A load of this key is already running here: wait for it rather
        // than add a read to the pile. Failed, abandoned, or another type:
        // go the usual way.
        if call.policy.lock
            && let Some(rx) = self.flights().miss_in_flight(&call.key)
            && let Landed::Value(any) = Box::pin(landing(rx)).await
            && let Some(v) = any.downcast_ref::<V>()
        {
            counters.coalesced.add();
            counters.misses.add();
            return Ok(v.clone());
        }
        let (fetched, took) = self.fetch_timed(&call.key, counters).await;
        match self.open_as(&call, fetched, took, true) {
            Read::Fresh(value, meta) => {
                self.refresh_after_hit(&call, Shared::Fresh(meta), refresh);
                return Ok(value);
            }
            Read::Stale(value) => {
                self.refresh_after_hit(&call, Shared::Stale, refresh);
                return Ok(value);
            }
            Read::Miss => {}
            // The backend is failing (or the breaker is open): callers here
            // still share one load, but none waits on the backend again for
            // a lease or a write.
            Read::Failed => return Box::pin(self.miss(call, load, Via::LoaderOnly)).await,
        }
        // Boxed: the miss path's state (leases, the loader, the write) would
        // otherwise make every hit's future kilobytes large, which costs a
        // hit its allocation and copy (seen in `concurrent_hit`).
        Box::pin(self.miss(call, load, Via::Backend)).await
    }

    /// What a waiter does with what its flight landed: takes its value;
    /// after an error, or a value of another type, loads for itself.
    /// `Err(load)`: the leader went away, try again. `count`: this caller
    /// has not read the backend, so record what it got as its hit or miss.
    async fn settle<V, E, F, Fut>(
        &self,
        landed: Landed,
        counters: &Counters,
        load: F,
        count: bool,
    ) -> Result<Result<V, E>, F>
    where
        V: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let any = match landed {
            Landed::Abandoned | Landed::Running => return Err(load),
            Landed::Hit(any, _) | Landed::Value(any) => Some(any),
            Landed::Failed => None,
        };
        // A hit reaches here only from `miss`, whose callers counted their
        // own read.
        if count {
            counters.misses.add();
        }
        if let Some(v) = any.as_deref().and_then(|a| a.downcast_ref::<V>()) {
            counters.coalesced.add();
            return Ok(Ok(v.clone()));
        }
        // The leader's error went to the leader, or another call site shares
        // this key with another type: this caller tries the source itself
        // rather than fail unasked.
        Ok(self.run_loader(counters, load).await.map(|(v, _)| v))
    }

    /// A waiter's share of its leader's hit: counted as its own, with the
    /// refresh it would have started had it read the value itself.
    fn shared_hit<V, T>(
        &self,
        call: &Call<'_, V, T>,
        shared: Shared,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        call.counters.hits.add();
        call.counters.coalesced.add();
        if matches!(shared, Shared::Stale) {
            call.counters.stale_served.add();
        }
        self.refresh_after_hit(call, shared, refresh);
    }

    /// After a hit: near its expiry an early refresh (XFetch), past it a
    /// stale refresh, each in the background and one per key at a time.
    fn refresh_after_hit<V, T>(
        &self,
        call: &Call<'_, V, T>,
        shared: Shared,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let Some(refresh) = refresh else { return };
        match shared {
            Shared::Fresh(meta) => {
                if let Some(beta) = call.policy.early_refresh
                    && early_refresh_due(&meta, beta, now_ms())
                {
                    self.refresh_in_background(call, refresh, true);
                }
            }
            Shared::Stale => self.refresh_in_background(call, refresh, false),
            Shared::Loaded => {}
        }
    }

    /// The leader of a key's flight on Redis: reads, hands a hit to the
    /// callers who joined, or goes on to lead the load after a miss.
    async fn lead_read<V, T, E, F, Fut>(
        &self,
        call: &Call<'_, V, T>,
        mut guard: FlightGuard<'_>,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let (fetched, took) = self.fetch_timed(&call.key, &call.counters).await;
        match self.open_as(call, fetched, took, true) {
            Read::Fresh(value, meta) => {
                guard.land_with(&value, Shared::Fresh(meta));
                self.refresh_after_hit(call, Shared::Fresh(meta), refresh);
                Ok(value)
            }
            Read::Stale(value) => {
                guard.land_with(&value, Shared::Stale);
                self.refresh_after_hit(call, Shared::Stale, refresh);
                Ok(value)
            }
            Read::Miss => Box::pin(self.lead(call, guard, load, Via::Backend)).await,
            Read::Failed => Box::pin(self.lead(call, guard, load, Via::LoaderOnly)).await,
        }
    }

    /// Everything after a miss: single flight, the lease, the load.
    async fn miss<V, T, E, F, Fut>(
        &self,
        call: Call<'_, V, T>,
        mut load: F,
        via: Via,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let counters = &*call.counters;
        if !call.policy.lock {
            let (value, took) = self.run_loader(counters, load).await?;
            if via == Via::Backend
                && let Some(keep) = call.keep(&value, took)
            {
                self.write(&call.key, value.item(), keep, call.tags, counters)
                    .await;
            }
            return Ok(value);
        }
        loop {
            match self.flights().join_or_lead(self, &call.key) {
                Role::Lead(guard) => return self.lead(&call, guard, load, via).await,
                Role::Wait(rx) => match self.settle(landing(rx).await, counters, load, false).await
                {
                    Ok(result) => return result,
                    Err(again) => load = again,
                },
            }
        }
    }

    /// The flight leader: take the lease (or wait for its holder's value),
    /// load, write while the lease holds, and hand the value to the waiters.
    /// `Via::LoaderOnly`: no lease, no write, only the value to the waiters.
    async fn lead<V, T, E, F, Fut>(
        &self,
        call: &Call<'_, V, T>,
        mut guard: FlightGuard<'_>,
        load: F,
        via: Via,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let counters = &*call.counters;
        let token = fastrand::u64(1..);
        let leased = match via {
            Via::LoaderOnly => false,
            Via::Backend => match self.take_lease(call, token).await {
                Leasing::Ours => {
                    guard.lease = Some(token);
                    true
                }
                Leasing::Value(value) => {
                    guard.land_with(&value, Shared::Loaded);
                    return Ok(value);
                }
                Leasing::NotOurs => false,
            },
        };

        // Without the lease (the backend failed, or the wait ran out) the
        // value is returned but not stored: only a leaseholder may write.
        let result = self.run_loader(counters, load).await;
        // Waiters get the value first; the write's round trip is the
        // leader's alone.
        match &result {
            Ok((value, _)) => guard.land_with(value, Shared::Loaded),
            Err(_) => guard.land(Landed::Failed),
        }
        if leased {
            let loaded = result.as_ref().ok().map(|(v, took)| (v, *took));
            self.finish_lease(call, token, loaded).await;
            guard.lease.take();
        }
        result.map(|(v, _)| v)
    }

    /// Asks for the key's lease until it is ours, a usable value appears
    /// (another process's load landed), the backend fails, or the wait
    /// runs out.
    async fn take_lease<V, T>(&self, call: &Call<'_, V, T>, token: u64) -> Leasing<V>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let (key, counters, policy) = (&call.key, &*call.counters, call.policy);
        let started = Instant::now();
        // Until something is seen under the key that this caller cannot use
        // (an absence marker for a function that never returns `None`, a
        // value just past its expiry), the lease is taken only if it is empty.
        let mut only_if_absent = true;
        loop {
            let asked = Instant::now();
            let outcome = self
                .backend()
                .acquire_lease(
                    key,
                    token,
                    policy.lease,
                    only_if_absent,
                    call.tags,
                    call.tag_for(),
                    self.op_timeout(),
                )
                .await;
            if self.backend().is_remote() && outcome.is_ok() {
                counters.latency_lease.record(asked.elapsed());
            }
            match outcome {
                Ok(LeaseOutcome::Acquired) => return Leasing::Ours,
                // Written since this caller's read (take it), or not usable
                // here (unreadable, expired): read, then ask again, at once.
                Ok(LeaseOutcome::ValuePresent) => only_if_absent = false,
                Ok(LeaseOutcome::Held) => {
                    if started.elapsed() >= policy.wait {
                        counters.wait_timeouts.add();
                        return Leasing::NotOurs;
                    }
                    tokio::time::sleep(poll_interval(started.elapsed())).await;
                }
                Err(e) => {
                    self.backend_failed(key, "lease", &e, counters);
                    return Leasing::NotOurs;
                }
            }
            let (fetched, took) = self.fetch_timed(key, counters).await;
            if let Read::Fresh(value, _) | Read::Stale(value) =
                self.open_as(call, fetched, took, false)
            {
                return Leasing::Value(value);
            }
        }
    }

    /// Refreshes the key from a task of its own: one refresh per key in this
    /// process (the flight) and across processes (the lease, taken even
    /// though a value is present).
    fn refresh_in_background<V, T>(
        &self,
        call: &Call<'_, V, T>,
        refresh: &(dyn Fn() -> Refresh<V> + Send + Sync),
        early: bool,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut guard) = self.flights().try_lead(self, &call.key) else {
            return;
        };
        let load = refresh();
        let cache = self.clone();
        let counters = Arc::clone(&call.counters);
        let (key, policy, tags) = (call.key.clone(), *call.policy, call.tags.to_vec());
        let tag_for = call.tag_for();
        runtime.spawn(async move {
            let call: Call<'_, V, T> = Call {
                key,
                counters: Cow::Borrowed(&counters),
                policy: &policy,
                tags: &tags,
                shape: std::marker::PhantomData,
            };
            let key = &call.key;
            let token = fastrand::u64(1..);
            let lease = cache
                .backend()
                .acquire_lease(key, token, policy.lease, false, &tags, tag_for, cache.op_timeout())
                .await;
            if !matches!(lease, Ok(LeaseOutcome::Acquired)) {
                return; // another process refreshes it; the guard lands Abandoned
            }
            guard.lease = Some(token);
            if early { counters.early_refreshes.add() } else { counters.stale_refreshes.add() };
            let loaded = cache.run_loader(&counters, || async { load.await.ok_or(()) }).await;
            let value = loaded.as_ref().ok().map(|(v, took)| (v, *took));
            cache.finish_lease(&call, token, value).await;
            guard.lease.take();
            // Nobody waits for a refresh: ending it frees the key for the
            // next one.
            let _ = guard.end();
            if loaded.is_err() && let Some(held_back) = cache.warnings().allow(now_ms()) {
                // Fail-safe: the old value stays until its stale window ends.
                tracing::warn!(cache_key = %key, held_back, "background refresh failed; serving the previous value");
            }
        });
    }

    /// Ends the lease `token` this caller took for its load: the loaded
    /// value is written while the lease holds; a value not to be kept, or a
    /// failed load (`None`), releases it.
    async fn finish_lease<V, T>(
        &self,
        call: &Call<'_, V, T>,
        token: u64,
        loaded: Option<(&V, Duration)>,
    ) where
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
                    token,
                    call.tags,
                    &call.counters,
                )
                .await;
            }
            None => self.release_lease(&call.key, token).await,
        }
    }

    /// What a fetched entry means to this caller. Synchronous, so that a
    /// hit's value is made in the caller's own frame (see [`Fetched`]).
    #[inline(always)]
    fn open_as<V: Shape<T>, T: Cacheable>(
        &self,
        call: &Call<'_, V, T>,
        fetched: Result<Fetched, BackendError>,
        took: Option<Duration>,
        count: bool,
    ) -> Read<V> {
        let read = match self.interpret::<T>(&call.key, &call.counters, fetched) {
            Read::Fresh(item, meta) => match V::from_item(item) {
                Some(v) => Read::Fresh(v, meta),
                None => Read::Miss,
            },
            Read::Stale(item) => match V::from_item(item) {
                Some(v) => Read::Stale(v),
                None => Read::Miss,
            },
            Read::Miss => Read::Miss,
            Read::Failed => Read::Failed,
        };
        if count {
            self.count_read(&call.key, &call.counters, &read, took);
        }
        read
    }

    async fn run_loader<T, E, F, Fut>(
        &self,
        counters: &Counters,
        load: F,
    ) -> Result<(T, Duration), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        counters.loads.add();
        let started = Instant::now();
        let result = load().await;
        let took = started.elapsed();
        counters.load_seconds.record(took);
        match result {
            Ok(v) => Ok((v, took)),
            Err(e) => {
                counters.load_errors.add();
                Err(e)
            }
        }
    }

    pub(crate) async fn release_lease(&self, key: &str, token: u64) {
        if let Err(e) = self
            .backend()
            .release_lease(key, token, self.op_timeout())
            .await
        {
            tracing::debug!(cache_key = %key, error = %e, "lease release failed; it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_flight_is_not_joined_and_its_leader_leaves_its_successor() {
        let cache = Cache::memory();
        let flights = cache.flights();
        let Role::Lead(mut first) = flights.join_or_lead(&cache, "k") else {
            panic!("the first caller leads");
        };
        assert!(matches!(flights.join_or_lead(&cache, "k"), Role::Wait(_)));
        flights.detach(&["k"]);
        let Role::Lead(_second) = flights.join_or_lead(&cache, "k") else {
            panic!("a caller after the detach leads a new flight");
        };
        first.land(Landed::Abandoned);
        assert!(
            matches!(flights.join_or_lead(&cache, "k"), Role::Wait(_)),
            "the first leader, landing late, left its successor in place"
        );
    }

    #[test]
    fn refreshes_run_one_per_key_beside_shared_reads() {
        let cache = Cache::memory();
        let flights = cache.flights();
        let refresh = flights.try_lead(&cache, "k").expect("leads the refresh");
        assert!(flights.try_lead(&cache, "k").is_none(), "one at a time");
        // Readers still share a read while it runs, and start a new one.
        let Role::Lead(_read) = flights.join_or_lead(&cache, "k") else {
            panic!("a reader leads its own flight");
        };
        flights.detach_all();
        assert!(flights.try_lead(&cache, "k").is_none(), "not detached");
        drop(refresh);
        assert!(
            flights.try_lead(&cache, "k").is_some(),
            "ended when dropped"
        );
    }

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
