//! Batch get-or-load (`#[cached(batch)]`): the keys of one call read in one
//! round trip, the missing ones loaded by one call of the function and
//! written back in one round trip, each key under the same single flight and
//! lease as a single-key call of it.
//!
//! One round, for the keys it is given:
//!
//! 1. **Flights.** Each key's in-process flight is led or joined, as a
//!    single call's is: a key another caller here is already reading or
//!    loading is waited for (step 5), not read again.
//! 2. **Read** the led keys: one pipeline. Hits are handed to the callers
//!    who joined their flights.
//! 3. **Leases** for the misses: one pipeline, one token.
//! 4. **Load** what this batch holds leases on (and what it may load but not
//!    store: the backend failed, or a change of the key is pending), in one
//!    call of the function, then **store** it in one pipeline while each
//!    lease holds.
//! 5. **Wait** for the rest, all at once: keys whose lease another process
//!    holds (polled as a single call polls, up to `wait`) and keys another
//!    caller here leads. What they did not deliver (their load failed, or
//!    ran past `wait`) is loaded in one more call of the function.
//!
//! The batch's own load never waits on another caller's (step 4 comes
//! before step 5), so two batches that overlap, in one process or two,
//! cannot wait on each other. A key whose leader here went away (cancelled,
//! or detached by an invalidation) goes to the next round.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use super::Engine;
use super::flight::{FlightGuard, Landed, Role, Shared, landing};
use super::lease::{Ask, LeaseEnd, Leasing};
use super::policy::{Call, CountersRef, ErrorSharing, Keep, Policy, Shape};
use super::read::Read;
use crate::Cacheable;
use crate::backend::{BackendError, Fetched, Lease, LeaseFinish, LeaseIf, LeaseOutcome};
use crate::scope::{CallMode, Outcome, record};

/// Rounds before the batch stops waiting for leaders that keep going away
/// and loads what is left itself, storing nothing (as a single call does
/// after a failed or abandoned wait).
const MAX_ROUNDS: usize = 3;

/// One batch call: its site's counters and policy.
pub(crate) struct BatchCall<'a> {
    pub(crate) counters: CountersRef<'a>,
    pub(crate) policy: &'a Policy,
}

/// A key to load in step 4 or 5: its index, its flight (`None`: not led by
/// this batch), and the lease its value is stored under (`None`: loaded,
/// not stored).
type ToLoad<'g> = (usize, Option<FlightGuard<'g>>, Option<Lease>);

impl Engine {
    /// Get-or-load for every key of `keys` (distinct full keys), by the
    /// module's rounds. `load` is called with the indexes of the keys to
    /// load and answers one value per index, in order (`None`: absent).
    /// Returns one value per key (`None`: absent).
    pub(crate) async fn load_batch<T, E, L, Fut>(
        self: &Arc<Self>,
        call: &BatchCall<'_>,
        keys: &[String],
        load: L,
        errors: Option<ErrorSharing<E>>,
    ) -> Result<Vec<Option<T>>, E>
    where
        T: Cacheable,
        L: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<T>>, E>>,
    {
        let mut found: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..keys.len()).collect();
        let mode = crate::scope::current_mode();
        let bypass = !self.enabled || mode == CallMode::Bypass;
        let refresh = mode == CallMode::Refresh;
        if refresh {
            // No read begun before this refresh is shared with it.
            self.flights.detach(keys);
        }
        let ran = std::sync::atomic::AtomicBool::new(false);
        let load = |indexes: Vec<usize>| {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
            load(indexes)
        };
        let mut round = 0;
        while !todo.is_empty() {
            round += 1;
            // The cache is off, or leaders kept going away: load, store
            // nothing.
            if bypass || round > MAX_ROUNDS {
                if !bypass {
                    call.counters.misses.add_n(todo.len() as u64);
                }
                let (values, _) = self
                    .run_loader(&call.counters, || load(todo.clone()))
                    .await?;
                for (i, value) in todo.iter().zip(values) {
                    found[*i] = value;
                }
                break;
            }
            todo = Box::pin(self.batch_round(call, keys, todo, &load, errors, &mut found, refresh))
                .await?;
        }
        if bypass {
            record(Outcome::Bypassed);
        } else if !ran.load(std::sync::atomic::Ordering::Relaxed) {
            // Every id from the cache (a load records itself).
            record(Outcome::Hit);
        }
        Ok(found)
    }

    /// One round (see the module docs); returns the keys for the next.
    #[allow(clippy::too_many_arguments)]
    async fn batch_round<T, E, L, Fut>(
        self: &Arc<Self>,
        call: &BatchCall<'_>,
        keys: &[String],
        todo: Vec<usize>,
        load: &L,
        errors: Option<ErrorSharing<E>>,
        found: &mut [Option<T>],
        refresh: bool,
    ) -> Result<Vec<usize>, E>
    where
        T: Cacheable,
        L: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<T>>, E>>,
    {
        let counters = &*call.counters;
        let policy = call.policy;

        // 1. One read of every key (but those with a change pending: what
        // is there may be the value it replaced; they are loaded, not
        // stored). A batch shares no read: it is one round trip already.
        let (blocked, readable): (Vec<usize>, Vec<usize>) = todo
            .into_iter()
            .partition(|&i| self.pending.blocks(&keys[i]));
        let mut misses: Vec<(usize, LeaseIf)> = Vec::new();
        let mut unread: Vec<usize> = blocked;
        // `CallMode::Refresh`: nothing is read; every id is loaded and
        // replaces what is stored.
        if refresh {
            misses.extend(readable.iter().map(|&i| (i, LeaseIf::Any)));
        } else if !readable.is_empty() {
            let names: Vec<&str> = readable.iter().map(|&i| keys[i].as_str()).collect();
            let started = Instant::now();
            let fetched = self.backend.fetch_many(&names, self.op_timeout).await;
            match fetched {
                Ok(entries) => {
                    if self.backend.is_remote() {
                        counters.latency_get.record(started.elapsed());
                    }
                    let mut hits = 0;
                    for (&i, entry) in readable.iter().zip(entries) {
                        // Until something this batch cannot use is seen
                        // under the key, its lease is taken only while the
                        // key is empty (as `take_lease` asks).
                        let cond = if matches!(entry, Fetched::Absent) {
                            LeaseIf::Absent
                        } else {
                            LeaseIf::Any
                        };
                        match self.interpret::<T>(&keys[i], counters, Ok(entry)) {
                            Read::Fresh(item, _) => {
                                hits += 1;
                                found[i] = item;
                            }
                            Read::Stale(item, _) => {
                                hits += 1;
                                counters.stale_served.add();
                                found[i] = item;
                            }
                            Read::Miss | Read::Failed => misses.push((i, cond)),
                        }
                    }
                    counters.hits.add_n(hits);
                    tracing::debug!(keys = names.len(), hits, "cache get (batch)");
                }
                Err(e) => {
                    // Served by the function, as a single call's failed read.
                    self.backend_failed(names[0], "get", &e, counters);
                    unread.extend(readable);
                }
            }
        }
        counters.misses.add_n((misses.len() + unread.len()) as u64);

        // 2. Flights of the misses: a key another caller here is loading is
        // waited for (step 5), not loaded again.
        let mut asks = Vec::new();
        let mut now: Vec<ToLoad<'_>> = Vec::new();
        let mut joined = Vec::new();
        let flights = unread
            .into_iter()
            .map(|i| (i, None))
            .chain(misses.into_iter().map(|(i, cond)| (i, Some(cond))));
        for (i, cond) in flights {
            // A key kept from the backend by a pending change shares only
            // loads made the same way (see `Via::AfterChange`).
            let after_change = cond.is_none() && self.pending.blocks(&keys[i]);
            let role = self
                .flights
                .join_or_lead_as(self, &keys[i], policy.wait, after_change);
            match (role, cond) {
                (Role::Lead(guard), Some(cond)) => asks.push((i, guard, cond)),
                // Not read (a pending change, or the backend failed): loaded
                // without a lease, not stored.
                (Role::Lead(guard), None) => now.push((i, Some(guard), None)),
                (Role::Wait(rx), _) => joined.push((i, rx)),
            }
        }

        // 3. One request for the leases of the misses.
        let mut contested = Vec::new();
        if !asks.is_empty() {
            let token = fastrand::u64(1..);
            // Held by each guard from the moment the request is sent: a
            // batch dropped while it is in flight releases them.
            for (_, guard, _) in &mut asks {
                guard.lease = Some(token);
            }
            let request: Vec<(&str, LeaseIf)> = asks
                .iter()
                .map(|(i, _, cond)| (keys[*i].as_str(), *cond))
                .collect();
            let asked = Instant::now();
            let outcomes = self
                .backend
                .acquire_leases(&request, token, policy.lease, self.op_timeout)
                .await;
            match outcomes {
                Ok(outcomes) => {
                    if self.backend.is_remote() {
                        counters.latency_lease.record(asked.elapsed());
                    }
                    for ((i, mut guard, _), outcome) in asks.into_iter().zip(outcomes) {
                        match outcome {
                            LeaseOutcome::Acquired(epoch) => {
                                now.push((i, Some(guard), Some(Lease { token, epoch })));
                            }
                            // Another holds it, or a value arrived since the
                            // read: step 5.
                            LeaseOutcome::Held
                            | LeaseOutcome::ValuePresent
                            | LeaseOutcome::Changed => {
                                guard.lease = None;
                                contested.push((i, guard));
                            }
                        }
                    }
                }
                Err(e) => {
                    self.backend_failed(request[0].0, "lease", &e, counters);
                    for (i, mut guard, _) in asks {
                        // Never sent: nothing to release. Otherwise the
                        // leases may be ours on the server: each guard
                        // releases its own.
                        if matches!(e, BackendError::Skipped) {
                            guard.lease = None;
                        }
                        now.push((i, Some(guard), None));
                    }
                }
            }
        }

        // 4. One load, one write.
        self.load_and_store(call, keys, load, errors, now, found, refresh)
            .await?;

        // A refresh does not wait for another holder's value (it may be
        // the one being replaced): it loads those ids too, storing nothing.
        if refresh {
            let contested = std::mem::take(&mut contested);
            let mine = contested
                .into_iter()
                .map(|(i, guard)| (i, Some(guard), None));
            self.load_and_store(call, keys, load, errors, mine.collect(), found, false)
                .await?;
        }

        // 5. The keys others are loading, all at once.
        let polls = contested.into_iter().map(|(i, mut guard)| async move {
            let token = fastrand::u64(1..);
            guard.lease = Some(token);
            let single: Call<'_, Option<T>, T> = Call {
                key: keys[i].clone(),
                counters: Cow::Borrowed(&*call.counters),
                policy: Cow::Borrowed(policy),
                tags: &[],
                shape: std::marker::PhantomData,
            };
            let leasing = self.take_lease(&single, token, Ask::ForLoad).await;
            (i, guard, token, leasing)
        });
        let waits = joined
            .into_iter()
            .map(|(i, rx)| async move { (i, landing(rx).await) });
        let (polled, landed) = tokio::join!(
            futures_util::future::join_all(polls),
            futures_util::future::join_all(waits)
        );
        let mut later: Vec<ToLoad<'_>> = Vec::new();
        for (i, mut guard, token, leasing) in polled {
            match leasing {
                Leasing::Ours(epoch) => later.push((i, Some(guard), Some(Lease { token, epoch }))),
                Leasing::Value(value) => {
                    guard.lease = None;
                    guard.land_with(&value, Shared::Loaded);
                    found[i] = value;
                }
                Leasing::NotOurs => {
                    guard.lease = None;
                    later.push((i, Some(guard), None));
                }
                // Perhaps ours on the server: the guard releases it.
                Leasing::Failed => later.push((i, Some(guard), None)),
            }
        }
        let mut again = Vec::new();
        for (i, landed) in landed {
            match landed {
                // A read's value is what a refresh replaces (as for a single
                // key's refresh): loaded instead, and not stored.
                Landed::Hit(..) if refresh => later.push((i, None, None)),
                // (Its miss was counted with the batch's read.)
                Landed::Value(any) | Landed::Hit(any, _) => {
                    counters.coalesced.add();
                    if let Some(item) = any.downcast_ref::<Option<T>>() {
                        found[i] = item.clone();
                    } else if let Some(value) = any.downcast_ref::<T>() {
                        found[i] = Some(value.clone());
                    } else {
                        // A value of another type under the key: load it.
                        later.push((i, None, None));
                    }
                }
                // The leader went away: start over with this key.
                Landed::Abandoned | Landed::Running => again.push(i),
                Landed::TimedOut => {
                    counters.wait_timeouts.add();
                    later.push((i, None, None));
                }
                // Its load failed: this batch tries the source itself.
                Landed::Failed(_) => later.push((i, None, None)),
            }
        }
        self.load_and_store(call, keys, load, errors, later, found, refresh)
            .await?;
        Ok(again)
    }

    /// Loads `items` in one call of the function, stores the leased ones in
    /// one round trip, and hands every value to its flight's waiters.
    #[allow(clippy::too_many_arguments)]
    async fn load_and_store<'g, T, E, L, Fut>(
        self: &Arc<Self>,
        call: &BatchCall<'_>,
        keys: &'g [String],
        load: &L,
        errors: Option<ErrorSharing<E>>,
        items: Vec<ToLoad<'g>>,
        found: &mut [Option<T>],
        replace: bool,
    ) -> Result<(), E>
    where
        T: Cacheable,
        L: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<T>>, E>>,
    {
        if items.is_empty() {
            return Ok(());
        }
        let counters = &*call.counters;
        let indexes: Vec<usize> = items.iter().map(|(i, _, _)| *i).collect();
        let (values, took) = match self.run_loader(counters, || load(indexes)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                // Each waiter gets the error if its type allows. The leases
                // are released before the caller has its error (as a
                // single call's), so the next caller of these keys loads at
                // once; one the backend did not release, its guard retries.
                let shared = errors.map(|s| s.share(&e));
                let releases: Vec<LeaseFinish<'_, T>> = items
                    .iter()
                    .filter_map(|(i, _, lease)| {
                        Some(LeaseFinish {
                            key: keys[*i].as_str(),
                            lease: (*lease)?,
                            write: None,
                        })
                    })
                    .collect();
                let released = if releases.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.backend.finish_leases(&releases, self.op_timeout).await
                };
                let mut released = released.ok().into_iter().flatten();
                for (_, guard, lease) in items {
                    let done = lease.is_some() && matches!(released.next(), Some(Ok(_)));
                    if let Some(mut guard) = guard {
                        if done {
                            guard.lease = None;
                        }
                        guard.land(Landed::Failed(shared.clone()));
                    }
                }
                return Err(e);
            }
        };

        // The leased values, written in one round trip.
        let mut metas = Vec::new();
        for ((_, _, lease), value) in items.iter().zip(&values) {
            let keep = Shape::<T>::keep_for(value, call.policy).map(|ttl| Keep {
                ttl,
                stale: call.policy.stale,
                load_time: took,
            });
            metas.push(lease.and(keep).map(|keep| self.entry_meta(keep)));
        }
        let finishes: Vec<LeaseFinish<'_, T>> = items
            .iter()
            .zip(&values)
            .zip(&metas)
            .filter_map(|(((i, _, lease), value), meta)| {
                Some(LeaseFinish {
                    key: keys[*i].as_str(),
                    lease: (*lease)?,
                    write: meta.map(|(meta, keep_for)| (value.as_ref(), meta, keep_for)),
                })
            })
            .collect();
        let mut ends = Vec::with_capacity(finishes.len());
        if !finishes.is_empty() {
            let started = Instant::now();
            let result = self.backend.finish_leases(&finishes, self.op_timeout).await;
            self.wrote(
                finishes[0].key,
                counters,
                started,
                "cache set (leased, batch)",
            );
            match result {
                Ok(results) => {
                    for (finish, result) in finishes.iter().zip(results) {
                        ends.push(match result {
                            // Stored, or (nothing to write) released: the
                            // lease ended either way.
                            Ok(true) => LeaseEnd::Stored,
                            Ok(false) => {
                                counters.leases_lost.add();
                                tracing::debug!(cache_key = %finish.key, "lease lost (invalidated or expired) before the write; not stored");
                                LeaseEnd::Lost
                            }
                            Err(e) => {
                                self.backend_failed(finish.key, "set", &e, counters);
                                LeaseEnd::Failed
                            }
                        });
                    }
                }
                Err(e) => {
                    self.backend_failed(finishes[0].key, "set", &e, counters);
                    ends.resize(finishes.len(), LeaseEnd::Failed);
                }
            }
        }

        // A refresh replaces: an entry whose new value is not kept (an
        // absence without `cache_none`) goes.
        if replace {
            let gone: Vec<String> = finishes
                .iter()
                .zip(&ends)
                .filter(|(finish, end)| finish.write.is_none() && **end == LeaseEnd::Stored)
                .map(|(finish, _)| finish.key.to_owned())
                .collect();
            if !gone.is_empty() {
                let _ = self.invalidate_full(&gone).await;
            }
        }
        let mut ends = ends.into_iter();
        for ((i, guard, lease), value) in items.into_iter().zip(values) {
            let end = lease.and_then(|_| ends.next());
            if let Some(mut guard) = guard {
                if end.is_some_and(|end| end != LeaseEnd::Failed) {
                    guard.lease = None;
                }
                // As a single call's leader: a value whose lease was lost may
                // predate an invalidation, so no caller who joined after it
                // gets it; they read again.
                if end == Some(LeaseEnd::Lost) {
                    guard.land(Landed::Abandoned);
                } else {
                    guard.land_with(&value, Shared::Loaded);
                }
            }
            found[i] = value;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::{BatchCall, MAX_ROUNDS};
    use crate::EntryMeta;
    use crate::engine::Engine;
    use crate::engine::flight::{Role, Shared};
    use crate::engine::policy::Policy;

    /// How long a caller waits for a flight here: longer than any test.
    const WAIT: Duration = Duration::from_secs(30);
    /// The key the tests batch, as the engine names it.
    const KEY: &str = "cache:item:1";

    /// Lets the batch task run until it waits again (a current-thread
    /// runtime, the memory backend: nothing else runs meanwhile).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// A memory cache and its engine.
    fn memory() -> (crate::Cache, Arc<Engine>) {
        let cache = crate::Cache::memory();
        let engine = Arc::clone(cache.engine());
        (cache, engine)
    }

    /// A batch call of `engine` waiting [`WAIT`] for flights.
    fn batch_call(engine: &Engine) -> BatchCall<'static> {
        let policy: &'static Policy =
            Box::leak(Box::new(Policy::new(Duration::from_secs(60)).wait(WAIT)));
        BatchCall {
            counters: Cow::Owned(engine.stats.counters("item")),
            policy,
        }
    }

    /// A batch body answering `value` for every index, counting its calls.
    fn counting_load(
        calls: &Arc<AtomicUsize>,
        value: u32,
    ) -> impl Fn(Vec<usize>) -> std::future::Ready<Result<Vec<Option<u32>>, ()>> + use<> {
        let calls = Arc::clone(calls);
        move |indexes| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(indexes.iter().map(|_| Some(value)).collect()))
        }
    }

    /// A batch whose key's leader here goes away, again and again, waits
    /// for a new leader at most `MAX_ROUNDS` times, then loads the key
    /// itself (and stores nothing: another leader runs).
    #[tokio::test(flavor = "current_thread")]
    async fn after_max_rounds_of_abandoned_leaders_a_batch_loads_for_itself() {
        let (cache, engine) = memory();
        let calls = Arc::new(AtomicUsize::new(0));
        let Role::Lead(mut leader) = engine.flights.join_or_lead(&engine, KEY, WAIT) else {
            panic!("the test leads first");
        };
        let batch = tokio::spawn({
            let (engine, load) = (Arc::clone(&engine), counting_load(&calls, 7));
            async move {
                let call = batch_call(&engine);
                engine
                    .load_batch(&call, &[KEY.to_owned()], load, None)
                    .await
            }
        });
        settle().await;
        for round in 1..=MAX_ROUNDS {
            assert!(
                !batch.is_finished(),
                "round {round}: still waiting for a leader"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 0, "round {round}");
            // The leader goes away; another takes its place at once.
            drop(leader);
            let Role::Lead(next) = engine.flights.join_or_lead(&engine, KEY, WAIT) else {
                panic!("round {round}: the batch has not run yet");
            };
            leader = next;
            settle().await;
        }
        assert!(
            batch.is_finished(),
            "after {MAX_ROUNDS} rounds it loads for itself"
        );
        assert_eq!(batch.await.expect("joins"), Ok(vec![Some(7)]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(leader);
        assert_eq!(cache.get::<u32>("item:1").await, None, "not stored");
    }

    /// A refreshing batch that finds a read of one of its keys running here
    /// (begun after the refresh detached the key's flights, or met in a
    /// later round) loads that key: what the read brings back is the value
    /// the refresh is to replace, so it is not shared with the refresh.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refreshing_batch_loads_a_key_it_finds_being_read() {
        let (_cache, engine) = memory();
        let calls = Arc::new(AtomicUsize::new(0));
        let Role::Lead(mut reader) = engine.flights.join_or_lead(&engine, KEY, WAIT) else {
            panic!("the test leads first");
        };
        let round = tokio::spawn({
            let (engine, load) = (Arc::clone(&engine), counting_load(&calls, 2));
            async move {
                let call = batch_call(&engine);
                let mut found = vec![None];
                let keys = [KEY.to_owned()];
                let again = engine
                    .batch_round(&call, &keys, vec![0], &load, None, &mut found, true)
                    .await;
                (again, found)
            }
        });
        settle().await;
        assert!(!round.is_finished(), "the refresh waits on the read");
        let meta = EntryMeta {
            created_ms: 0,
            load_us: 0,
            expires_ms: u64::MAX,
            stale_until_ms: u64::MAX,
        };
        reader.land_with(&Some(1u32), Shared::Fresh(meta));
        let (again, found) = round.await.expect("joins");
        assert_eq!(again, Ok(vec![]));
        assert_eq!(found, vec![Some(2)], "the loader's value, not the read's");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
