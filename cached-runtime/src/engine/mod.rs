//! The engine: get-or-load, write-through and invalidation, the same
//! semantics on every backend.
//!
//! One call, top to bottom ([`Engine::load_through`]):
//!
//! 1. **Read.** On Redis, callers of one key in this process share one read
//!    ([`flight`]).
//! 2. **Fresh or stale hit**: returned at once. Near its expiry one caller,
//!    cluster-wide, refreshes it in the background; past its TTL, inside its
//!    stale window, it is served while one caller refreshes it ([`refresh`]).
//! 3. **Lead or wait.** On a miss, callers in one process share one load
//!    ([`flight`]); across processes one caller holds a lease on the key and
//!    the others poll for its value, up to a bound after which they load for
//!    themselves rather than hang ([`lease`]).
//! 4. **Load**, timed, its error returned to its own caller unchanged.
//! 5. **Store**: the leaseholder's write succeeds only while its lease is
//!    valid; a write-through or an invalidation destroys the lease, so a load
//!    that read the source before the change never stores the old value
//!    ([`lease`], [`store`], [`invalidate`]).
//!
//! A caller dropped mid-load, or a loader that panics, wakes every waiter
//! and releases its lease ([`flight::FlightGuard`]). Failures are counted
//! and logged, never returned to a cached call ([`report`]).
//!
//! Dependencies point down: the `Cache` handle calls the engine; the engine
//! calls the backends; nothing here knows the handle.

mod audit;
pub(crate) mod batch;
mod flight;
mod invalidate;
mod lease;
pub(crate) mod policy;
mod read;
mod recover;
mod refresh;
mod report;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Cacheable;
use crate::backend::{Backend, Lease};
use crate::scope::{CallMode, Outcome, record};
use crate::stats::{Counters, LogLimiter, Registry};

pub(crate) use flight::Flights;
use flight::{FlightGuard, Landed, Patience, Role, Shared, landing};
use lease::{Ask, LeaseEnd, Leasing};
use policy::{Call, ErrorSharing, Refresh, Shape};
pub(crate) use read::Read;

/// Everything one cache holds: its backend, settings, counters and flights.
/// A [`Cache`](crate::Cache) is an `Arc` of it.
pub(crate) struct Engine {
    /// Unique for the process's lifetime (an address could be reused).
    pub(crate) id: u64,
    pub(crate) backend: Backend,
    pub(crate) namespace: String,
    pub(crate) op_timeout: Duration,
    /// `false`: every call runs its loader; nothing is read or stored.
    pub(crate) enabled: bool,
    ttl_jitter: f64,
    strict: bool,
    pub(crate) stats: Registry,
    warnings: LogLimiter,
    /// Misconfigurations reported so far (bits, by kind): each once.
    misconfigured: std::sync::atomic::AtomicU8,
    /// Sampled audits of hits against the source ([`audit`]).
    pub(crate) audits: audit::Audits,
    pub(crate) flights: Flights,
    /// Changes that did not reach the backend, retried until they do.
    pub(crate) pending: recover::Pending,
}

/// The settings an [`Engine`] is built with (validated by the builder).
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) namespace: String,
    pub(crate) op_timeout: Duration,
    pub(crate) enabled: bool,
    pub(crate) ttl_jitter: f64,
    pub(crate) strict: bool,
    pub(crate) audit: AuditSettings,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend)
            .field("namespace", &self.namespace)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

pub(crate) use audit::AuditSettings;

/// Whether a miss goes through the backend (lease, write) or only through
/// the loader: when the backend has just failed, or when a change of the
/// key has not reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Backend,
    LoaderOnly,
    /// Loader only, because a change of the key is pending: what the
    /// backend holds may be the value it replaced, so this caller shares
    /// only loads of callers kept from the backend the same way
    /// ([`Flights::join_or_lead_within`]).
    AfterChange,
}

impl Engine {
    pub(crate) fn new(backend: Backend, settings: Settings) -> Engine {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Engine {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            backend,
            namespace: settings.namespace,
            op_timeout: settings.op_timeout,
            enabled: settings.enabled,
            ttl_jitter: settings.ttl_jitter,
            strict: settings.strict,
            stats: Registry::default(),
            warnings: LogLimiter::default(),
            misconfigured: std::sync::atomic::AtomicU8::new(0),
            audits: audit::Audits::new(settings.audit),
            flights: Flights::default(),
            pending: recover::Pending::default(),
        }
    }

    /// Get-or-load (the module docs give the semantics).
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (see the body)"
    )]
    pub(crate) fn load_through<V, T, E, F, Fut>(
        self: &Arc<Self>,
        call: Call<'_, V, T>,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
        errors: Option<ErrorSharing<E>>,
    ) -> impl Future<Output = Result<V, E>>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        // A future of an `async` block, not an `async fn`: an `async fn`
        // keeps each argument twice (its parameter and its local). With
        // `lead_read` the same and the near tier's read boxed, a hit's
        // future (a `#[cached]` method's, `-Zprint-type-sizes`) went from
        // 2,120 bytes to 1,536.
        async move {
            let counters = &*call.counters;
            let mut load = load;
            let mut patience = Patience::new(call.policy.wait);
            let mode = crate::scope::current_mode();
            // The cache is switched off (for this scope, or for good): the
            // function runs, as if uncached.
            if !self.enabled || mode == CallMode::Bypass {
                let result = self.run_loader(counters, load).await.map(|(v, _)| v);
                record(Outcome::Bypassed);
                return result;
            }
            if mode == CallMode::Refresh {
                return Box::pin(self.refresh_now(call, load, errors)).await;
            }
            // A change of this key has not reached the backend: what is there
            // may be the value it replaced. Load, and store nothing.
            if self.pending.blocks(&call.key) {
                counters.misses.add();
                let miss = self.miss(call, load, errors, Via::AfterChange, patience);
                return Box::pin(miss).await;
            }
            // With the near tier, its in-process copy first: a hit there needs
            // no shared read (nor any other step below before the read).
            let l1 = self.backend.l1_hit(&call.key, call.tags);
            // On Redis, callers of one key in this process share one read, and
            // after a miss its one load: 1000 callers of a cold key would
            // otherwise queue 1000 reads ahead of the leader's lease and load.
            if l1.is_none() && call.policy.lock && self.backend.is_remote() {
                // Each round waits for another flight to land: only a leader
                // that went away (cancelled, or detached) brings another.
                loop {
                    let joined =
                        self.flights
                            .join_or_lead_within(self, &call.key, &mut patience, false);
                    let rx = match joined {
                        Role::Lead(guard) => {
                            let by = patience.deadline();
                            return self
                                .lead_read(&call, guard, load, refresh, errors, by)
                                .await;
                        }
                        Role::Wait(rx) => rx,
                    };
                    let landed = Box::pin(landing(rx)).await;
                    if let Landed::Hit(any, shared) = &landed {
                        if let Some(value) = any.downcast_ref::<V>() {
                            self.shared_hit(&call, value, *shared, refresh);
                            if let Shared::Stale(meta) = shared
                                && call.policy.soft_timeout.is_some()
                            {
                                return Ok(
                                    Box::pin(self.serve_stale(&call, value.clone(), meta)).await
                                );
                            }
                            record(Outcome::Coalesced);
                            return Ok(value.clone());
                        }
                        // A hit of another type (another call site shares the
                        // key): read for itself.
                        break;
                    }
                    match Box::pin(self.settle(landed, counters, load, errors, true)).await {
                        Ok(result) => return result,
                        Err(again) => load = again,
                    }
                }
            }
            // A load of this key is already running here: wait for it rather
            // than add a read to the pile. Failed, abandoned, or another type:
            // go the usual way.
            if l1.is_none()
                && call.policy.lock
                && let Some(rx) = self.flights.miss_in_flight(&call.key, &mut patience)
            {
                match Box::pin(landing(rx)).await {
                    Landed::Value(any) => {
                        if let Some(v) = any.downcast_ref::<V>() {
                            counters.coalesced.add();
                            counters.misses.add();
                            record(Outcome::Coalesced);
                            return Ok(v.clone());
                        }
                    }
                    // Waited its bound: load for itself, as after a failure.
                    // (Without this arm the caller would read, miss, join the
                    // same flight and find `TimedOut` already sent: the same
                    // outcome after one more backend read; scripts/mutants
                    // reports that mutant as a survivor for that reason.) The
                    // load failed: its error, if it can be shared, as for a
                    // waiter of a shared read (one failure, one run of the
                    // source), else a load of its own.
                    landed @ (Landed::TimedOut | Landed::Failed(_)) => {
                        match Box::pin(self.settle(landed, counters, load, errors, true)).await {
                            Ok(result) => return result,
                            Err(again) => load = again,
                        }
                    }
                    _ => {}
                }
            }
            let (fetched, took) = match l1 {
                Some(hit) => {
                    // A hit in process completes without waiting on anything:
                    // a task calling in a loop would never give its worker
                    // back, starving the runtime's timers and connections (the
                    // tracking connection's heartbeat among them). Tokio's
                    // budget makes it yield every so often, as its own I/O does.
                    tokio::task::coop::consume_budget().await;
                    (Ok(hit), None)
                }
                None => self.fetch_timed(&call.key, call.tags, counters).await,
            };
            match self.open_as(&call, fetched, took, true) {
                Read::Fresh(value, meta) => {
                    self.refresh_after_hit(&call, &value, Shared::Fresh(meta), refresh);
                    record(Outcome::Hit);
                    return Ok(value);
                }
                Read::Stale(value, meta) => {
                    self.refresh_after_hit(&call, &value, Shared::Stale(meta), refresh);
                    if call.policy.soft_timeout.is_some() {
                        return Ok(Box::pin(self.serve_stale(&call, value, &meta)).await);
                    }
                    record(Outcome::Stale);
                    return Ok(value);
                }
                Read::Miss => {}
                // The backend is failing (or the breaker is open): callers here
                // still share one load, but none waits on the backend again for
                // a lease or a write.
                Read::Failed => {
                    let miss = self.miss(call, load, errors, Via::LoaderOnly, patience);
                    return Box::pin(miss).await;
                }
            }
            // Boxed: the miss path's state (leases, the loader, the write) would
            // otherwise make every hit's future kilobytes large, which costs a
            // hit its allocation and copy (seen in `concurrent_hit`).
            Box::pin(self.miss(call, load, errors, Via::Backend, patience)).await
        }
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
        errors: Option<ErrorSharing<E>>,
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
            Landed::Failed(shared) => {
                // One failure, one run of the source: the leader's error,
                // to every caller who waited for it.
                if let (Some(errors), Some(shared)) = (errors, shared)
                    && let Some(e) = errors.take(&*shared)
                {
                    if count {
                        counters.misses.add();
                    }
                    counters.coalesced.add();
                    return Ok(Err(e));
                }
                None
            }
            Landed::TimedOut => {
                counters.wait_timeouts.add();
                None
            }
        };
        // A hit reaches here only from `miss`, whose callers counted their
        // own read.
        if count {
            counters.misses.add();
        }
        if let Some(v) = any.as_deref().and_then(|a| a.downcast_ref::<V>()) {
            counters.coalesced.add();
            record(Outcome::Coalesced);
            return Ok(Ok(v.clone()));
        }
        // The leader's error went to the leader, its load ran past this
        // caller's `wait`, or another call site shares this key with another
        // type: this caller tries the source itself rather than fail unasked
        // or wait unbounded. Its value is returned, not stored (only a
        // leaseholder writes).
        Ok(self.run_loader(counters, load).await.map(|(v, _)| v))
    }

    /// A waiter's share of its leader's hit: counted as its own, with the
    /// refresh it would have started had it read the value itself.
    fn shared_hit<V, T>(
        self: &Arc<Self>,
        call: &Call<'_, V, T>,
        value: &V,
        shared: Shared,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
    ) where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
    {
        call.counters.hits.add();
        call.counters.coalesced.add();
        // With a soft timeout, counted by `serve_stale` if served stale.
        if matches!(shared, Shared::Stale(_)) && call.policy.soft_timeout.is_none() {
            call.counters.stale_served.add();
        }
        self.refresh_after_hit(call, value, shared, refresh);
    }

    /// The leader of a key's flight on Redis: reads, hands a hit to the
    /// callers who joined, or goes on to lead the load after a miss.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (see `load_through`)"
    )]
    fn lead_read<V, T, E, F, Fut>(
        self: &Arc<Self>,
        call: &Call<'_, V, T>,
        mut guard: FlightGuard<'_>,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
        errors: Option<ErrorSharing<E>>,
        by: Option<tokio::time::Instant>,
    ) -> impl Future<Output = Result<V, E>>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        // An `async` block, as `load_through`'s.
        async move {
            let (fetched, took) = self.fetch_timed(&call.key, call.tags, &call.counters).await;
            match self.open_as(call, fetched, took, true) {
                Read::Fresh(value, meta) => {
                    guard.land_with(&value, Shared::Fresh(meta));
                    self.refresh_after_hit(call, &value, Shared::Fresh(meta), refresh);
                    record(Outcome::Hit);
                    Ok(value)
                }
                Read::Stale(value, meta) => {
                    guard.land_with(&value, Shared::Stale(meta));
                    self.refresh_after_hit(call, &value, Shared::Stale(meta), refresh);
                    if call.policy.soft_timeout.is_some() {
                        return Ok(Box::pin(self.serve_stale(call, value, &meta)).await);
                    }
                    record(Outcome::Stale);
                    Ok(value)
                }
                Read::Miss => {
                    Box::pin(self.lead(call, guard, load, errors, Via::Backend, by)).await
                }
                Read::Failed => {
                    Box::pin(self.lead(call, guard, load, errors, Via::LoaderOnly, by)).await
                }
            }
        }
    }

    /// Everything after a miss: single flight, the lease, the load.
    async fn miss<V, T, E, F, Fut>(
        self: &Arc<Self>,
        call: Call<'_, V, T>,
        mut load: F,
        errors: Option<ErrorSharing<E>>,
        via: Via,
        mut patience: Patience,
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
                self.fill(&call.key, value.item(), keep, call.tags, counters)
                    .await;
            }
            return Ok(value);
        }
        loop {
            let after_change = via == Via::AfterChange;
            match self
                .flights
                .join_or_lead_within(self, &call.key, &mut patience, after_change)
            {
                Role::Lead(guard) => {
                    let by = patience.deadline();
                    return self.lead(&call, guard, load, errors, via, by).await;
                }
                Role::Wait(rx) => match self
                    .settle(landing(rx).await, counters, load, errors, false)
                    .await
                {
                    Ok(result) => return result,
                    Err(again) => load = again,
                },
            }
        }
    }

    /// The flight leader: take the lease (or wait for its holder's value),
    /// load, write while the lease holds, and hand the value to the waiters.
    /// `Via::LoaderOnly` and `Via::AfterChange`: no lease, no write, only the
    /// value to the waiters.
    async fn lead<V, T, E, F, Fut>(
        &self,
        call: &Call<'_, V, T>,
        mut guard: FlightGuard<'_>,
        load: F,
        errors: Option<ErrorSharing<E>>,
        via: Via,
        by: Option<tokio::time::Instant>,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let token = fastrand::u64(1..);
        let leased = match via {
            Via::LoaderOnly | Via::AfterChange => None,
            Via::Backend => {
                // Held by the guard from the moment the request is sent: a
                // caller dropped while it is in flight releases it.
                guard.lease = Some(token);
                match self.take_lease(call, token, Ask::ForLoad, by).await {
                    Leasing::Ours(epoch) => Some(Lease { token, epoch }),
                    Leasing::Value(value) => {
                        guard.lease.take();
                        guard.land_with(&value, Shared::Loaded);
                        record(Outcome::Coalesced);
                        return Ok(value);
                    }
                    Leasing::NotOurs => {
                        guard.lease.take();
                        guard.close();
                        None
                    }
                    // Perhaps ours on the server: the guard releases it.
                    Leasing::Failed => {
                        guard.close();
                        None
                    }
                }
            }
        };

        self.load_leased(call, &mut guard, leased, load, errors)
            .await
            .0
    }

    /// A leader's load: runs the loader, writes its value while `leased`
    /// holds (without a lease, because the backend failed or the wait ran
    /// out, the value is returned but not stored: only a leaseholder may
    /// write), and hands the value or the error to the flight's waiters.
    /// Returns how the lease ended.
    async fn load_leased<V, T, E, F, Fut>(
        &self,
        call: &Call<'_, V, T>,
        guard: &mut FlightGuard<'_>,
        leased: Option<Lease>,
        load: F,
        errors: Option<ErrorSharing<E>>,
    ) -> (Result<V, E>, Option<LeaseEnd>)
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let result = self.run_loader(&call.counters, load).await;
        if let Err(e) = &result {
            guard.land(Landed::Failed(errors.map(|s| s.share(e))));
        }
        let ended = match leased {
            Some(lease) => {
                let loaded = result.as_ref().ok().map(|(v, took)| (v, *took));
                let ended = self.finish_lease(call, lease, loaded).await;
                if ended != LeaseEnd::Failed {
                    guard.lease.take();
                }
                Some(ended)
            }
            None => None,
        };
        if let Ok((value, _)) = &result {
            // Handed out only after the write: if an invalidation took the
            // lease meanwhile, the value may predate it, and a caller who
            // joined after the invalidation must not get it. They read again.
            if ended == Some(LeaseEnd::Lost) {
                guard.land(Landed::Abandoned);
            } else {
                guard.land_with(value, Shared::Loaded);
            }
        }
        (result.map(|(v, _)| v), ended)
    }

    /// A call in a `CallMode::Refresh` scope: reads nothing, loads from the
    /// source and replaces the entry under the key's lease (a write-through
    /// or an invalidation meanwhile takes the lease, and this load does not
    /// store). Callers here that start during it share its load.
    async fn refresh_now<V, T, E, F, Fut>(
        self: &Arc<Self>,
        call: Call<'_, V, T>,
        load: F,
        errors: Option<ErrorSharing<E>>,
    ) -> Result<V, E>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let counters = &*call.counters;
        counters.misses.add();
        // A change of the key pending: this refresh loads without a lease
        // and shares only loads made the same way (see `Via::AfterChange`).
        let blocked = self.pending.blocks(&call.key);
        // It leads, whatever runs for the key here: no flight begun before
        // it, or beside it, is shared with it or with later callers.
        let mut guard = self.flights.lead(self, &call.key, blocked);
        let mut failing = false;
        let leased = if blocked {
            None
        } else {
            let token = fastrand::u64(1..);
            guard.lease = Some(token);
            // Without the lease the load cannot confirm that no change
            // landed while it ran: as `lead`'s, it is shared only with
            // callers who joined before it began.
            match self.take_lease(&call, token, Ask::Replace, None).await {
                Leasing::Ours(epoch) => Some(Lease { token, epoch }),
                Leasing::Value(_) | Leasing::NotOurs => {
                    guard.lease = None;
                    guard.close();
                    None
                }
                // Perhaps ours on the server: the guard releases it.
                Leasing::Failed => {
                    failing = true;
                    guard.close();
                    None
                }
            }
        };
        let (result, ended) = self
            .load_leased(&call, &mut guard, leased, load, errors)
            .await;
        if result.is_ok() {
            if ended == Some(LeaseEnd::Stored) {
                record(Outcome::Refreshed);
            } else if ended != Some(LeaseEnd::Lost) {
                // Not stored: not a value to keep (a `None` without
                // `cache_none`, `Released`); no lease (the breaker open,
                // another process's load holding it past `wait`, a failed
                // request); the write failed. The entry it was to replace
                // goes, as a write-through's does, so that no reader gets
                // the value older than the one it returned (an
                // invalidation that fails is retried, and ends another
                // holder's lease). A lease lost was ended by a change that
                // came meanwhile (a write-through, an invalidation): the
                // key is that change's.
                let failing = failing || ended == Some(LeaseEnd::Failed);
                self.remove_unreplaced(std::slice::from_ref(&call.key), failing)
                    .await;
                if ended == Some(LeaseEnd::Released) {
                    record(Outcome::Refreshed);
                }
            }
        }
        result
    }

    /// Runs a loader, counting and timing it.
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
        record(Outcome::Loaded);
        match result {
            Ok(v) => Ok((v, took)),
            Err(e) => {
                counters.load_errors.add();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_names_the_backend_namespace_and_timeout() {
        let cache = crate::Cache::builder()
            .namespace("shop-v2")
            .op_timeout(std::time::Duration::from_millis(70))
            .build()
            .expect("cache");
        let shown = format!("{:?}", cache.engine());
        assert!(shown.starts_with("Engine { backend: "), "{shown}");
        assert!(shown.contains("namespace: \"shop-v2\""), "{shown}");
        assert!(shown.contains("op_timeout: 70ms"), "{shown}");
    }
}
