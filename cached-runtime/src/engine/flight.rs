//! In-process single flight: callers of one key share one read and at most
//! one load, and a background refresh runs once per key.
//!
//! On Redis the flight begins before the read: callers of one key in one
//! process share its GET, and after a miss the same flight goes on to the
//! lease and the load. A write-through or invalidation in the process
//! detaches the key's flight, so that no caller starting after it shares a
//! read begun before it.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Engine;
use crate::codec::EntryMeta;

/// What a finished flight tells its waiters.
#[derive(Clone)]
pub(super) enum Landed {
    Running,
    /// A loaded value.
    Value(Arc<dyn Any + Send + Sync>),
    /// A value the leader read from the backend (a shared hit).
    Hit(Arc<dyn Any + Send + Sync>, Shared),
    /// The load returned an error: shared with the waiters when its type
    /// allows (see `ErrorSharing`), else only its own caller receives it.
    Failed(Option<Arc<dyn Any + Send + Sync>>),
    /// The leader went away (cancelled, panicked, or lost the lease race).
    Abandoned,
    /// Not landed within a waiter's `wait`: sent to every waiter by the
    /// flight's one timer (the first waiter's `wait`), or seen by a waiter
    /// alone when its own `wait` ends before that timer (see [`Waiter`]).
    /// The waiter loads for itself.
    TimedOut,
}

/// What kind of value a flight hands its waiters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shared {
    /// Loaded after a miss.
    Loaded,
    /// A fresh hit, with its metadata (each waiter decides on an early
    /// refresh as if it had read it).
    Fresh(EntryMeta),
    /// A hit past its TTL, inside its stale window, with its metadata.
    Stale(EntryMeta),
}

/// One read and at most one load per key at a time, and one background
/// refresh per key.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Flight, FlightHasher>>,
    /// Keys with a background refresh running: one per key at a time, kept
    /// apart from `running` because only callers served a stale value with
    /// a `soft_timeout` wait for one (and a refresh may start while callers
    /// share a read). Nothing detaches a refresh. Its channel tells those
    /// callers the refreshed value.
    refreshing: Mutex<HashMap<String, Refreshing, FlightHasher>>,
    /// Flights in `running`: while zero, a call on the memory backend need
    /// not look for one before reading, and its hit takes no lock.
    misses: AtomicUsize,
    /// Numbers flights, so that a leader whose flight was detached (by a
    /// write or an invalidation) never removes its successor.
    next_id: AtomicU64,
}

/// The identity of the entry a refresh replaces (`codec::identity`): only
/// callers that read that same entry may take the refresh's value.
type Identity = [u8; crate::codec::IDENTITY_LEN];

/// A background refresh running: its channel, and the entry it replaces.
type Refreshing = (Arc<watch::Sender<Landed>>, Identity);

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
    tx: Option<Arc<watch::Sender<Landed>>>,
    /// Sends `TimedOut` once the first waiter has waited `wait`: one timer
    /// per flight, not one per waiter (1000 waiters' timers cost a
    /// stampede's callers milliseconds).
    timer: Option<tokio::task::AbortHandle>,
    /// The first waiter's `wait`, and when the timer fires (`None`: no
    /// timer, or past the clock's range).
    wait: Duration,
    deadline: Option<tokio::time::Instant>,
    /// Led by a caller a pending change kept from the backend (see
    /// [`Flights::join_or_lead_within`]): its value comes from the
    /// loader, never from a read of what the change was to replace.
    after_change: bool,
}

/// A caller waiting for a flight to land ([`landing`]).
pub(super) struct Waiter {
    rx: watch::Receiver<Landed>,
    /// This caller's own deadline, when its `wait` ends before the flight's
    /// timer fires: a caller joining with a shorter `wait` than the first
    /// waiter's (another call site of the key) still waits no longer than
    /// its own. `None` in the usual case, which costs no timer.
    until: Option<tokio::time::Instant>,
}

impl From<watch::Receiver<Landed>> for Waiter {
    /// A waiter bounded by its channel's sender alone (a background
    /// refresh's `soft_timeout` callers, who time their own wait).
    fn from(rx: watch::Receiver<Landed>) -> Waiter {
        Waiter { rx, until: None }
    }
}

impl Flight {
    /// A waiter of this flight for `wait`, or until `by` if sooner (the end
    /// of a wait begun on an earlier flight: see [`Patience`]).
    fn subscribe(&mut self, wait: Duration, by: Option<tokio::time::Instant>) -> Waiter {
        let mut waiter = self.subscribe_for(wait);
        // (Outside a runtime nothing can time a wait: see `subscribe_for`.
        // `<=` for either `<` survives cargo-mutants as equivalent: equal
        // instants end the wait at the same time.)
        if let Some(by) = by
            && waiter.until.is_none_or(|until| by < until)
            && self.deadline.is_none_or(|flight| by < flight)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            waiter.until = Some(by);
        }
        waiter
    }

    fn subscribe_for(&mut self, wait: Duration) -> Waiter {
        if let Some(tx) = &self.tx {
            let rx = tx.subscribe();
            // Without a timer (no runtime) nothing could time a wait; a
            // wait no shorter than the first waiter's, begun later, ends
            // after the timer fires (every waiter of a stampede: no clock
            // read under the lock).
            if self.timer.is_none() || wait >= self.wait {
                return Waiter { rx, until: None };
            }
            let own = tokio::time::Instant::now().checked_add(wait);
            let until = match (own, self.deadline) {
                (Some(own), Some(flight)) if own < flight => Some(own),
                (Some(own), None) => Some(own),
                _ => None,
            };
            return Waiter { rx, until };
        }
        let (tx, rx) = watch::channel(Landed::Running);
        let tx = Arc::new(tx);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Weak: a flight that lands, or is dropped, ends its channel at
            // once; the timer must not hold it open.
            let weak = Arc::downgrade(&tx);
            let timer = runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(tx) = weak.upgrade() {
                    tx.send_if_modified(|landed| {
                        let running = matches!(landed, Landed::Running);
                        if running {
                            *landed = Landed::TimedOut;
                        }
                        running
                    });
                }
            });
            self.timer = Some(timer.abort_handle());
            self.wait = wait;
            self.deadline = tokio::time::Instant::now().checked_add(wait);
        }
        self.tx = Some(tx);
        Waiter { rx, until: None }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

/// A caller's part in a key's flight.
pub(super) enum Role<'a> {
    Lead(FlightGuard<'a>),
    Wait(Waiter),
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight, FlightHasher>> {
        crate::lock(&self.running)
    }

    /// Joins the get-or-load of `key` running in this process, or leads it.
    /// A waiter waits at most `wait` (the flight's timer).
    #[cfg(test)]
    pub(super) fn join_or_lead<'a>(
        &self,
        engine: &'a Arc<Engine>,
        key: &'a str,
        wait: Duration,
    ) -> Role<'a> {
        self.join_or_lead_as(engine, key, wait, false)
    }

    /// Joins the get-or-load of `key` running in this process, or leads
    /// it. A waiter waits no longer than `patience` has left: its `wait`,
    /// from the first flight it joined (a flight displaced before it lands
    /// sends its waiters to the next one).
    ///
    /// When `after_change` (a caller a pending change of `key` keeps from
    /// the backend: it loads and stores nothing), it joins only a flight
    /// led the same way. A flight led otherwise may hand out a read of the
    /// value the change was to replace (begun by a caller that started
    /// before the change, which may see it), so this caller takes the
    /// key's place in the map from it, as a write detaches a flight: its
    /// waiters are told it went away and start again.
    pub(super) fn join_or_lead_within<'a>(
        &self,
        engine: &'a Arc<Engine>,
        key: &'a str,
        patience: &mut Patience,
        after_change: bool,
    ) -> Role<'a> {
        let role = {
            let mut running = self.lock();
            match running.get_mut(key) {
                Some(flight) if flight.after_change || !after_change => {
                    Role::Wait(flight.subscribe(patience.wait, patience.by))
                }
                _ => Role::Lead(self.lead_in(&mut running, engine, key, after_change)),
            }
        };
        if matches!(role, Role::Wait(_)) {
            patience.began();
        }
        role
    }

    /// [`Flights::join_or_lead_within`] for a caller's first flight.
    #[cfg(test)]
    pub(super) fn join_or_lead_as<'a>(
        &self,
        engine: &'a Arc<Engine>,
        key: &'a str,
        wait: Duration,
        after_change: bool,
    ) -> Role<'a> {
        self.join_or_lead_within(engine, key, &mut Patience::new(wait), after_change)
    }

    /// Leads the get-or-load of `key` whatever runs for it here: a forced
    /// refresh (`CallMode::Refresh`) shares no flight begun before it or
    /// beside it, since any of them may hand out a read of the value it
    /// replaces (a leader that waited for another's lease passes on what it
    /// then read). The flight it displaces is detached, as a write detaches
    /// one: its waiters are told it went away and start again, and may join
    /// this one, whose value is loaded. `after_change` as for
    /// [`Flights::join_or_lead_within`].
    pub(super) fn lead<'a>(
        &self,
        engine: &'a Arc<Engine>,
        key: &'a str,
        after_change: bool,
    ) -> FlightGuard<'a> {
        let mut running = self.lock();
        self.lead_in(&mut running, engine, key, after_change)
    }

    /// Puts a new flight for `key` in `running`, in place of any there.
    fn lead_in<'a>(
        &self,
        running: &mut HashMap<String, Flight, FlightHasher>,
        engine: &'a Arc<Engine>,
        key: &'a str,
        after_change: bool,
    ) -> FlightGuard<'a> {
        if running.remove(key).is_some() {
            self.misses.fetch_sub(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        running.insert(
            key.to_owned(),
            Flight {
                id,
                tx: None,
                timer: None,
                wait: Duration::ZERO,
                deadline: None,
                after_change,
            },
        );
        self.misses.fetch_add(1, Ordering::Relaxed);
        FlightGuard {
            engine: Cow::Borrowed(engine),
            key: Cow::Borrowed(key),
            id,
            refresh: None,
            landed: false,
            closed: None,
            lease: None,
        }
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
    pub(super) fn miss_in_flight(&self, key: &str, patience: &mut Patience) -> Option<Waiter> {
        if self.misses.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let waiter = self
            .lock()
            .get_mut(key)
            .map(|f| f.subscribe(patience.wait, patience.by))?;
        patience.began();
        Some(waiter)
    }

    /// Removes flight `id`, if it is still the one registered for `key`, and
    /// returns its channel if anyone joined it.
    fn remove(&self, key: &str, id: u64) -> Option<Arc<watch::Sender<Landed>>> {
        self.take(key, id).and_then(|mut flight| flight.tx.take())
    }

    /// Takes flight `id` out of `running`, if it is still the one
    /// registered for `key`.
    fn take(&self, key: &str, id: u64) -> Option<Flight> {
        let mut running = self.lock();
        // One lookup in the usual case; a successor (after a detach) is put
        // back.
        let (owned, flight) = running.remove_entry(key)?;
        if flight.id == id {
            self.misses.fetch_sub(1, Ordering::Relaxed);
            return Some(flight);
        }
        running.insert(owned, flight);
        None
    }

    /// Leads a background refresh of `key`, replacing the entry `seen`
    /// (its identity), unless one is running here.
    pub(super) fn try_lead(
        &self,
        engine: &Arc<Engine>,
        key: &str,
        seen: &EntryMeta,
    ) -> Option<FlightGuard<'static>> {
        let tx = match crate::lock(&self.refreshing).entry(key.to_owned()) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(slot) => {
                let tx = Arc::new(watch::Sender::new(Landed::Running));
                slot.insert((Arc::clone(&tx), crate::codec::identity(seen)));
                tx
            }
        };
        Some(FlightGuard {
            engine: Cow::Owned(Arc::clone(engine)),
            key: Cow::Owned(key.to_owned()),
            id: 0,
            refresh: Some(tx),
            landed: false,
            closed: None,
            lease: None,
        })
    }

    /// The background refresh of `key` running in this process, if it
    /// replaces the entry `seen` (a refresh of an older entry may hold a
    /// value older than `seen`: a write-through or a reload replaced what
    /// it read): its channel gets the refreshed value (`Landed::Value`), or
    /// closes when the refresh ends without one.
    pub(super) fn refresh_in_flight(
        &self,
        key: &str,
        seen: &EntryMeta,
    ) -> Option<watch::Receiver<Landed>> {
        crate::lock(&self.refreshing)
            .get(key)
            .filter(|(_, of)| *of == crate::codec::identity(seen))
            .map(|(tx, _)| tx.subscribe())
    }
}

/// How long one call may still wait for others' loads of its key, across
/// every flight it joins: a flight displaced before it lands (by a write,
/// an eviction, a forced refresh) sends its waiters to the next one, and
/// `wait` bounds the whole wait, not each flight's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience {
    wait: Duration,
    /// When the wait ends, from the first flight joined (no clock read
    /// until then: a hit or a leader reads none).
    by: Option<tokio::time::Instant>,
}

impl Patience {
    pub(super) fn new(wait: Duration) -> Patience {
        Patience { wait, by: None }
    }

    /// When the wait ends, if it has begun.
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.by
    }

    /// Starts the wait's clock, unless it runs already.
    pub(super) fn began(&mut self) {
        if self.by.is_none() {
            self.by = tokio::time::Instant::now().checked_add(self.wait);
        }
    }
}

/// Waits for a flight to land, or for the waiter's `wait` to end
/// (`TimedOut`: from the flight's timer, or the waiter's own deadline).
pub(super) async fn landing(waiter: Waiter) -> Landed {
    let Waiter { mut rx, until } = waiter;
    let landed = async move {
        match rx.wait_for(|l| !matches!(l, Landed::Running)).await {
            Ok(landed) => landed.clone(),
            Err(_) => Landed::Abandoned,
        }
    };
    match until {
        None => landed.await,
        Some(at) => tokio::time::timeout_at(at, landed)
            .await
            .unwrap_or(Landed::TimedOut),
    }
}

/// The leader's side of a flight. Dropping it unfinished (cancellation, a
/// panic) tells the waiters to go on without it and releases its lease.
/// Borrows the call's engine and key; a background refresh's owns them.
pub(super) struct FlightGuard<'a> {
    engine: Cow<'a, Arc<Engine>>,
    key: Cow<'a, str>,
    /// Its flight's number in `running` (a refresh has none).
    id: u64,
    /// A background refresh rather than a get-or-load: the channel its
    /// `soft_timeout` waiters listen on.
    refresh: Option<Arc<watch::Sender<Landed>>>,
    landed: bool,
    /// Its flight once [closed](FlightGuard::close) to callers who come
    /// later: those who joined before still wait on its channel and timer.
    closed: Option<Flight>,
    /// The lease this leader holds, released if it is dropped holding it.
    pub(super) lease: Option<u64>,
}

impl FlightGuard<'_> {
    /// Ends the flight (once): later callers start their own, and those who
    /// joined get `landed`.
    pub(super) fn land(&mut self, landed: Landed) {
        if let Some(tx) = self.end() {
            let _ = tx.send(landed);
        }
    }

    /// Ends the flight and hands a value to the waiters, made only if there
    /// are any: once the flight is out of the map, none can join.
    pub(super) fn land_with<V: Clone + Send + Sync + 'static>(
        &mut self,
        value: &V,
        shared: Shared,
    ) {
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

    /// Hands a background refresh's value to the callers waiting for it
    /// (`soft_timeout`), and to those who come before the refresh ends (its
    /// write is still to come). The refresh goes on to store it.
    pub(super) fn tell<V: Clone + Send + Sync + 'static>(&self, value: &V) {
        if let Some(tx) = &self.refresh {
            tx.send_replace(Landed::Value(Arc::new(value.clone())));
        }
    }

    /// Lets callers from now on start a flight of their own rather than
    /// join this one, whose value they could not be sure of: a load that
    /// holds no lease (another process's held past `wait`, or the request
    /// failed) cannot learn of a change another process makes while it
    /// runs, so it is shared only with callers who began before it did.
    /// Those keep waiting on it, within their `wait`.
    pub(super) fn close(&mut self) {
        if self.landed || self.refresh.is_some() || self.closed.is_some() {
            return;
        }
        self.closed = self.engine.flights.take(&self.key, self.id);
    }

    /// Ends the flight; returns its channel if anyone joined.
    pub(super) fn end(&mut self) -> Option<Arc<watch::Sender<Landed>>> {
        if std::mem::replace(&mut self.landed, true) {
            return None;
        }
        if let Some(mut flight) = self.closed.take() {
            return flight.tx.take();
        }
        let flights = &self.engine.flights;
        if self.refresh.is_some() {
            // Its waiters, if the value was not told, see the channel close.
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
                let engine = Arc::clone(&self.engine);
                let key = std::mem::take(&mut self.key).into_owned();
                handle.spawn(async move {
                    // Not released (refused, cut off): retried, so that no
                    // caller of the key waits on it until it expires.
                    if !engine.release_lease(&key, token).await {
                        engine.pend_release(key, token);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Arc<Engine> {
        Arc::clone(crate::Cache::memory().engine())
    }

    #[test]
    fn a_detached_flight_is_not_joined_and_its_leader_leaves_its_successor() {
        let engine = engine();
        let flights = &engine.flights;
        let Role::Lead(mut first) = flights.join_or_lead(&engine, "k", Duration::from_secs(5))
        else {
            panic!("the first caller leads");
        };
        assert!(matches!(
            flights.join_or_lead(&engine, "k", Duration::from_secs(5)),
            Role::Wait(_)
        ));
        flights.detach(&["k"]);
        let Role::Lead(_second) = flights.join_or_lead(&engine, "k", Duration::from_secs(5)) else {
            panic!("a caller after the detach leads a new flight");
        };
        first.land(Landed::Abandoned);
        assert!(
            matches!(
                flights.join_or_lead(&engine, "k", Duration::from_secs(5)),
                Role::Wait(_)
            ),
            "the first leader, landing late, left its successor in place"
        );
    }

    #[test]
    fn an_invalidation_of_every_key_detaches_every_flight() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_secs(5);
        let Role::Lead(_a) = flights.join_or_lead(&engine, "a", wait) else {
            panic!("leads a");
        };
        let Role::Lead(_b) = flights.join_or_lead(&engine, "b", wait) else {
            panic!("leads b");
        };
        flights.detach_all();
        assert_eq!(flights.misses.load(Ordering::Relaxed), 0);
        for key in ["a", "b"] {
            assert!(
                matches!(flights.join_or_lead(&engine, key, wait), Role::Lead(_)),
                "{key}: a caller after the invalidation starts afresh"
            );
        }
    }

    #[tokio::test]
    async fn a_caller_after_a_pending_change_shares_only_loads_made_after_it() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_secs(5);
        // A flight led as usual (its read may see what a change replaced),
        // with a waiter.
        let Role::Lead(mut before) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        let Role::Wait(waiter) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("waits");
        };
        // A caller kept from the backend by a pending change does not join
        // it: it leads a flight of its own in the key's place.
        let Role::Lead(mut after) = flights.join_or_lead_as(&engine, "k", wait, true) else {
            panic!("a caller after the change joined a flight begun before it");
        };
        assert_eq!(
            flights.misses.load(Ordering::Relaxed),
            1,
            "one flight in the map"
        );
        // The first flight's waiter is told it went away (and starts again).
        assert!(matches!(landing(waiter).await, Landed::Abandoned));
        // Callers of either kind from now on join the flight after it.
        let Role::Wait(later) = flights.join_or_lead_as(&engine, "k", wait, true) else {
            panic!("a second caller after the change did not join the first's load");
        };
        let Role::Wait(usual) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("a usual caller did not join the load after the change");
        };
        // The first flight's landing reaches nobody and leaves its successor.
        before.land_with(&1u32, Shared::Loaded);
        assert_eq!(flights.misses.load(Ordering::Relaxed), 1);
        after.land_with(&2u32, Shared::Loaded);
        for rx in [later, usual] {
            match landing(rx).await {
                Landed::Value(v) => assert_eq!(v.downcast_ref::<u32>(), Some(&2)),
                _ => panic!("not the load after the change"),
            }
        }
        assert_eq!(flights.misses.load(Ordering::Relaxed), 0);
    }

    /// A caller whose flight was displaced joins the next with what is
    /// left of its wait, however long the next one's timer: begun 80 ms
    /// into a 100 ms wait, it times out about 20 ms later, not 100 ms.
    /// A patience of `Duration::MAX` never ends (and never panics).
    #[tokio::test]
    async fn a_wait_carries_over_to_the_next_flight() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_millis(100);
        let mut patience = Patience::new(wait);
        let Role::Lead(_first) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        let Role::Wait(rx) = flights.join_or_lead_within(&engine, "k", &mut patience, false) else {
            panic!("waits");
        };
        let began = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(80)).await;
        flights.detach(&["k"]);
        assert!(matches!(landing(rx).await, Landed::Abandoned));
        let Role::Lead(_second) = flights.join_or_lead(&engine, "k", Duration::from_secs(60))
        else {
            panic!("leads the next flight");
        };
        // The next flight's timer is the first waiter's: a minute.
        let Role::Wait(_patient) = flights.join_or_lead(&engine, "k", Duration::from_secs(60))
        else {
            panic!("waits");
        };
        let Role::Wait(rx) = flights.join_or_lead_within(&engine, "k", &mut patience, false) else {
            panic!("waits again");
        };
        let landed = tokio::time::timeout(Duration::from_secs(5), landing(rx))
            .await
            .expect("the wait ended");
        assert!(matches!(landed, Landed::TimedOut));
        let waited = began.elapsed();
        assert!(
            waited < Duration::from_millis(160),
            "waited {waited:?} in all, `wait` 100 ms"
        );
        let mut forever = Patience::new(Duration::MAX);
        let Role::Wait(_rx) = flights.join_or_lead_within(&engine, "k", &mut forever, false) else {
            panic!("waits");
        };
        assert!(forever.by.is_none());
        assert!(flights.miss_in_flight("k", &mut forever).is_some());
    }

    /// Outside a runtime nothing can time a wait: a caller whose flight
    /// was displaced waits for the next one to land, as on its first,
    /// rather than panic on a timer it cannot have.
    #[test]
    fn a_wait_carried_over_outside_a_runtime_does_not_panic() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_secs(5);
        let mut patience = Patience::new(wait);
        let Role::Lead(_first) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        let Role::Wait(_rx) = flights.join_or_lead_within(&engine, "k", &mut patience, false)
        else {
            panic!("waits");
        };
        assert!(patience.by.is_some(), "the wait began");
        flights.detach(&["k"]);
        let Role::Lead(mut second) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads the next flight");
        };
        let Role::Wait(rx) = flights.join_or_lead_within(&engine, "k", &mut patience, false) else {
            panic!("waits again");
        };
        second.land_with(&1u32, Shared::Loaded);
        let mut landed = std::pin::pin!(landing(rx));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match landed.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Landed::Value(v)) => {
                assert_eq!(v.downcast_ref::<u32>(), Some(&1));
            }
            _ => panic!("not the value landed"),
        }
    }

    /// A waiter whose `wait` ends before the flight's timer (the first
    /// waiter's, however long: past the clock's range too) stops at its
    /// own, and leaves the others waiting.
    #[tokio::test]
    async fn a_waiter_stops_at_its_own_wait_when_it_ends_first() {
        let engine = engine();
        let flights = &engine.flights;
        let short = Duration::from_millis(20);
        for (key, first) in [("k", Duration::from_secs(60)), ("max", Duration::MAX)] {
            let Role::Lead(mut guard) = flights.join_or_lead(&engine, key, first) else {
                panic!("leads");
            };
            let Role::Wait(patient) = flights.join_or_lead(&engine, key, first) else {
                panic!("waits");
            };
            let Role::Wait(hurried) = flights.join_or_lead(&engine, key, short) else {
                panic!("waits");
            };
            let landed = tokio::time::timeout(Duration::from_secs(5), landing(hurried))
                .await
                .unwrap_or_else(|_| panic!("{key}: waited past its own wait"));
            assert!(matches!(landed, Landed::TimedOut), "{key}");
            guard.land_with(&7u32, Shared::Loaded);
            match landing(patient).await {
                Landed::Value(v) => assert_eq!(v.downcast_ref::<u32>(), Some(&7), "{key}"),
                _ => panic!("{key}: the first waiter was not handed the value"),
            }
        }
    }

    #[test]
    fn a_miss_in_flight_is_found_only_while_it_runs() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_secs(5);
        assert!(
            flights
                .miss_in_flight("k", &mut Patience::new(wait))
                .is_none()
        );
        let Role::Lead(mut guard) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        assert!(
            flights
                .miss_in_flight("k", &mut Patience::new(wait))
                .is_some(),
            "joinable"
        );
        assert!(
            flights
                .miss_in_flight("other", &mut Patience::new(wait))
                .is_none()
        );
        guard.land(Landed::Abandoned);
        assert!(
            flights
                .miss_in_flight("k", &mut Patience::new(wait))
                .is_none(),
            "landed"
        );
    }

    /// Counts its clones.
    struct Counted;
    static CLONES: AtomicUsize = AtomicUsize::new(0);
    impl Clone for Counted {
        fn clone(&self) -> Self {
            CLONES.fetch_add(1, Ordering::Relaxed);
            Counted
        }
    }

    #[tokio::test]
    async fn a_value_is_copied_for_waiters_only_if_there_are_any_and_timers_end_with_flights() {
        let engine = engine();
        let flights = &engine.flights;
        let wait = Duration::from_secs(5);
        let metrics = tokio::runtime::Handle::current().metrics();
        // Nobody joined: no copy of the value.
        let Role::Lead(mut alone) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        alone.land_with(&Counted, Shared::Loaded);
        assert_eq!(CLONES.load(Ordering::Relaxed), 0);
        // A waiter that joined and went away (cancelled): no copy either.
        let Role::Lead(mut left) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        let Role::Wait(gone) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("waits");
        };
        drop(gone);
        left.land_with(&Counted, Shared::Loaded);
        assert_eq!(CLONES.load(Ordering::Relaxed), 0, "copied for nobody");
        for _ in 0..100 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // One waiter: one copy, and its flight's timer ends with the flight.
        let Role::Lead(mut leader) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("leads");
        };
        let Role::Wait(rx) = flights.join_or_lead(&engine, "k", wait) else {
            panic!("waits");
        };
        assert_eq!(metrics.num_alive_tasks(), 1, "the flight's timer");
        leader.land_with(&Counted, Shared::Loaded);
        assert!(matches!(landing(rx).await, Landed::Value(_)));
        assert_eq!(CLONES.load(Ordering::Relaxed), 1);
        for _ in 0..100 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            metrics.num_alive_tasks(),
            0,
            "the timer was stopped, not left to sleep out its wait"
        );
    }

    /// Counts its clones (apart from `Counted`, whose test asserts
    /// absolute counts while this one runs beside it).
    struct Told;
    static TOLD: AtomicUsize = AtomicUsize::new(0);
    impl Clone for Told {
        fn clone(&self) -> Self {
            TOLD.fetch_add(1, Ordering::Relaxed);
            Told
        }
    }

    /// The metadata of an entry written at `created_ms`.
    fn entry(created_ms: u64) -> EntryMeta {
        EntryMeta {
            created_ms,
            load_us: 0,
            expires_ms: created_ms + 1_000,
            stale_until_ms: created_ms + 2_000,
        }
    }

    #[test]
    fn a_refresh_tells_its_value_to_callers_of_the_entry_it_replaces() {
        let engine = engine();
        let flights = &engine.flights;
        let (old, newer) = (entry(1), entry(2));
        assert!(
            flights.refresh_in_flight("r", &old).is_none(),
            "none running"
        );
        let refresh = flights
            .try_lead(&engine, "r", &old)
            .expect("leads the refresh");
        // A caller that read a newer entry (a write-through since) must not
        // take this refresh's value: it may predate that write.
        assert!(flights.refresh_in_flight("r", &newer).is_none());
        let rx = flights.refresh_in_flight("r", &old).expect("running");
        assert!(matches!(&*rx.borrow(), Landed::Running));
        refresh.tell(&Told);
        assert_eq!(TOLD.load(Ordering::Relaxed), 1, "one copy for the waiters");
        assert!(matches!(&*rx.borrow(), Landed::Value(_)));
        // One who comes after the value, before the refresh ends, has it.
        let late = flights.refresh_in_flight("r", &old).expect("still running");
        assert!(matches!(&*late.borrow(), Landed::Value(_)));
        drop(refresh);
        assert!(
            flights.refresh_in_flight("r", &old).is_none(),
            "ended with its guard"
        );
    }

    #[test]
    fn flights_say_what_they_are_in_debug_output() {
        let engine = engine();
        assert_eq!(format!("{:?}", engine.flights), "Flights { .. }");
    }

    #[test]
    fn refreshes_run_one_per_key_beside_shared_reads() {
        let engine = engine();
        let flights = &engine.flights;
        let seen = entry(1);
        let refresh = flights
            .try_lead(&engine, "k", &seen)
            .expect("leads the refresh");
        assert!(
            flights.try_lead(&engine, "k", &entry(2)).is_none(),
            "one at a time"
        );
        // Readers still share a read while it runs, and start a new one.
        let Role::Lead(_read) = flights.join_or_lead(&engine, "k", Duration::from_secs(5)) else {
            panic!("a reader leads its own flight");
        };
        flights.detach_all();
        assert!(
            flights.try_lead(&engine, "k", &seen).is_none(),
            "not detached"
        );
        drop(refresh);
        assert!(
            flights.try_lead(&engine, "k", &seen).is_some(),
            "ended when dropped"
        );
    }
}
