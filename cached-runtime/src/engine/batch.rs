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
//! 3. **Leases** for the misses: one pipeline, one token. A key whose
//!    lease request found a value is read again (a usable value is
//!    served), and its lease asked again whatever is stored.
//! 4. **Load** what this batch holds leases on (and what it may load but not
//!    store: the backend failed, or a change of the key is pending), in one
//!    call of the function, then **store** it in one pipeline while each
//!    lease holds.
//! 5. **Wait** for the rest, all at once: keys whose lease another process
//!    holds (polled as a single call polls, up to `wait`) and keys another
//!    caller here leads. What they did not deliver (their load failed, or
//!    ran past `wait`) is loaded in one more call of the function.
//!
//! With `tags`, each key is read, leased and stored under its own tags,
//! as a single call with them is (see `Backend::fetch_many`).
//!
//! The batch's own load never waits on another caller's (step 4 comes
//! before step 5), so two batches that overlap, in one process or two,
//! cannot wait on each other. A key whose leader here went away (cancelled,
//! or detached by an invalidation) goes to the next round.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Engine;
use super::flight::{FlightGuard, Landed, Patience, Role, Shared, landing};
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

/// One batch call: its site's counters and policy, and its keys' tags.
pub(crate) struct BatchCall<'a> {
    pub(crate) counters: CountersRef<'a>,
    pub(crate) policy: &'a Policy,
    /// Full tag keys of each key, by the keys' index (empty: no key has
    /// any).
    pub(crate) tags: &'a [Vec<String>],
}

impl BatchCall<'_> {
    /// The full tag keys of key `i`.
    fn tags(&self, i: usize) -> &[String] {
        self.tags.get(i).map_or(&[], Vec::as_slice)
    }
}

/// A key to load in step 4 or 5: its index, its flight (`None`: not led by
/// this batch), and the lease its value is stored under (`None`: loaded,
/// not stored).
type ToLoad<'g> = (usize, Option<FlightGuard<'g>>, Option<Lease>);

/// The time a batch step is given per key, beyond the operation timeout:
/// Redis runs one command per key of a pipeline, about 10 to 20 µs each
/// for bounded reads, lease scripts and writes of a few KiB (measured by a
/// review on Redis 7.0, loopback). Held to one `op_timeout` for any number
/// of keys, a batch of a few thousand timed out on every call: nothing was
/// read or stored, and each call counted a failure to the breaker.
pub(crate) const BATCH_TIME_PER_KEY: Duration = Duration::from_micros(50);

impl Engine {
    /// How long a batch step over `keys` keys may take: the operation
    /// timeout, and [`BATCH_TIME_PER_KEY`] for each key.
    pub(crate) fn batch_timeout(&self, keys: usize) -> Duration {
        let per_key = u32::try_from(keys).map_or(Duration::MAX, |n| BATCH_TIME_PER_KEY * n);
        self.op_timeout.saturating_add(per_key)
    }

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
        let ran = std::sync::atomic::AtomicBool::new(false);
        let load = |indexes: Vec<usize>| {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
            load(indexes)
        };
        let mut round = 0;
        // One wait for the whole batch, over every round (see `Patience`).
        let mut patience = Patience::new(call.policy.wait);
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
            let next = self.batch_round(
                call,
                keys,
                todo,
                &load,
                errors,
                &mut found,
                refresh,
                &mut patience,
            );
            todo = Box::pin(next).await?;
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
        patience: &mut Patience,
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
            let tags: Vec<&[String]> = readable.iter().map(|&i| call.tags(i)).collect();
            let started = Instant::now();
            let fetched = self
                .backend
                .fetch_many(&names, &tags, self.batch_timeout(names.len()))
                .await;
            match fetched {
                Ok(entries) => {
                    if self.backend.is_remote() {
                        counters.latency_get.record(started.elapsed());
                    }
                    let mut hits = 0;
                    let mut reported = false;
                    for (&i, entry) in readable.iter().zip(entries) {
                        // A read of this key alone that failed (a
                        // cluster's primary): served by the function, as
                        // a failed read of all.
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(e) => {
                                if !std::mem::replace(&mut reported, true) {
                                    self.backend_failed(&keys[i], "get", &e, counters);
                                }
                                unread.push(i);
                                continue;
                            }
                        };
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
        // Joins honour a wait begun in an earlier round, and start none:
        // the batch waits from step 5 on, after its own load.
        let mut joining = *patience;
        let flights = unread
            .into_iter()
            .map(|i| (i, None))
            .chain(misses.into_iter().map(|(i, cond)| (i, Some(cond))));
        for (i, cond) in flights {
            // A key kept from the backend by a pending change shares only
            // loads made the same way (see `Via::AfterChange`). (`&&` made
            // `||` by cargo-mutants survives as equivalent: it marks also a
            // key whose read failed, or one read just before a change was
            // pended; the former loads from the source after the change,
            // and the change's detach removed any flight begun before it.)
            let after_change = cond.is_none() && self.pending.blocks(&keys[i]);
            // A refresh leads every key (see `Flights::lead`).
            let role = if refresh {
                Role::Lead(self.flights.lead(self, &keys[i], after_change))
            } else {
                self.flights
                    .join_or_lead_within(self, &keys[i], &mut joining, after_change)
            };
            match (role, cond) {
                (Role::Lead(guard), Some(cond)) => asks.push((i, guard, cond)),
                // Not read (a pending change, or the backend failed): loaded
                // without a lease, not stored.
                (Role::Lead(guard), None) => now.push((i, Some(guard), None)),
                (Role::Wait(rx), _) => joined.push((i, rx)),
            }
        }

        // 3. One request for the leases of the misses. A key found holding
        // a value (written since the read, or one the read could not use:
        // stored under other tags, outdated by a tag on a cluster) is read
        // again, and its lease asked again whatever is stored, as a single
        // call does (see `take_lease`): it is then loaded with the others.
        let mut contested = Vec::new();
        let token = fastrand::u64(1..);
        let mut again = false;
        while !asks.is_empty() {
            // Held by each guard from the moment the request is sent: a
            // batch dropped while it is in flight releases them.
            for (_, guard, _) in &mut asks {
                guard.lease = Some(token);
            }
            let request: Vec<(&str, LeaseIf)> = asks
                .iter()
                .map(|(i, _, cond)| (keys[*i].as_str(), *cond))
                .collect();
            let tags: Vec<&[String]> = asks.iter().map(|(i, _, _)| call.tags(*i)).collect();
            let asked = Instant::now();
            let outcomes = self
                .backend
                .acquire_leases(
                    &request,
                    &tags,
                    token,
                    policy.lease,
                    policy.tag_for(),
                    self.batch_timeout(request.len()),
                )
                .await;
            // One answer per key: a request that failed may have taken its
            // lease (the guard releases it), unless it was never sent.
            let outcomes: Vec<Result<LeaseOutcome, bool>> = match outcomes {
                Ok(outcomes) => {
                    if self.backend.is_remote() {
                        counters.latency_lease.record(asked.elapsed());
                    }
                    let mut reported = false;
                    outcomes
                        .into_iter()
                        .zip(&request)
                        .map(|(outcome, (key, _))| {
                            outcome.map_err(|e| {
                                if !std::mem::replace(&mut reported, true) {
                                    self.backend_failed(key, "lease", &e, counters);
                                }
                                matches!(e, BackendError::Skipped)
                            })
                        })
                        .collect()
                }
                Err(e) => {
                    self.backend_failed(request[0].0, "lease", &e, counters);
                    let skipped = matches!(e, BackendError::Skipped);
                    asks.iter().map(|_| Err(skipped)).collect()
                }
            };
            let mut present = Vec::new();
            for ((i, mut guard, _), outcome) in asks.into_iter().zip(outcomes) {
                match outcome {
                    Ok(LeaseOutcome::Acquired(epoch)) => {
                        now.push((i, Some(guard), Some(Lease { token, epoch })));
                    }
                    // (`!again` made `true` by cargo-mutants survives as
                    // equivalent: asked again, a lease is asked whatever
                    // is stored, which never answers these.)
                    Ok(LeaseOutcome::ValuePresent | LeaseOutcome::Changed) if !again => {
                        guard.lease = None;
                        present.push((i, guard));
                    }
                    // Another holds it: step 5.
                    Ok(LeaseOutcome::Held | LeaseOutcome::ValuePresent | LeaseOutcome::Changed) => {
                        guard.lease = None;
                        contested.push((i, guard));
                    }
                    // Loaded without a lease, not stored: shared only with
                    // those who joined before (see `FlightGuard::close`),
                    // as a single call's. Never sent (skipped by the
                    // breaker): nothing to release.
                    Err(skipped) => {
                        if skipped {
                            guard.lease = None;
                        }
                        guard.close();
                        now.push((i, Some(guard), None));
                    }
                }
            }
            again = true;
            asks = self
                .read_again(call, keys, present, found, &mut contested)
                .await;
        }

        // 4. One load, one write.
        self.load_and_store(call, keys, load, errors, now, found, refresh)
            .await?;

        // 5. The keys others are loading, all at once: waited for, or (a
        // refresh, which takes no value another holder stores: it may be
        // the one being replaced) their leases waited for, to replace them.
        let ask = if refresh { Ask::Replace } else { Ask::ForLoad };
        // The batch's wait begins here, after its own load (a load's time
        // is the loader's), unless an earlier round began it. (Deleting
        // the first `!` survives cargo-mutants as equivalent: with leases
        // to poll and no flight joined, no round follows, and `take_lease`
        // without a deadline polls `wait` from now all the same.)
        if !contested.is_empty() || !joined.is_empty() {
            patience.began();
        }
        let by = patience.deadline();
        let polls = contested.into_iter().map(|(i, mut guard)| async move {
            let token = fastrand::u64(1..);
            guard.lease = Some(token);
            let single: Call<'_, Option<T>, T> = Call {
                key: keys[i].clone(),
                counters: Cow::Borrowed(&*call.counters),
                policy: Cow::Borrowed(policy),
                tags: call.tags(i),
                shape: std::marker::PhantomData,
            };
            let leasing = self.take_lease(&single, token, ask, by).await;
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
                // Loaded without a lease: shared only with those who
                // joined before (see `FlightGuard::close`).
                Leasing::NotOurs => {
                    guard.lease = None;
                    guard.close();
                    later.push((i, Some(guard), None));
                }
                // Perhaps ours on the server: the guard releases it.
                Leasing::Failed => {
                    guard.close();
                    later.push((i, Some(guard), None));
                }
            }
        }
        let mut again = Vec::new();
        for (i, landed) in landed {
            match landed {
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

    /// Reads again the keys whose lease request found a value: a usable
    /// one is this batch's (and its flight's waiters'); the others are
    /// returned, to ask for their leases whatever is stored. A failed read
    /// leaves its keys to step 5.
    async fn read_again<'g, T: Cacheable>(
        &self,
        call: &BatchCall<'_>,
        keys: &[String],
        present: Vec<(usize, FlightGuard<'g>)>,
        found: &mut [Option<T>],
        contested: &mut Vec<(usize, FlightGuard<'g>)>,
    ) -> Vec<(usize, FlightGuard<'g>, LeaseIf)> {
        if present.is_empty() {
            return Vec::new();
        }
        let counters = &*call.counters;
        let names: Vec<&str> = present.iter().map(|(i, _)| keys[*i].as_str()).collect();
        let tags: Vec<&[String]> = present.iter().map(|(i, _)| call.tags(*i)).collect();
        let entries = match self
            .backend
            .fetch_many(&names, &tags, self.batch_timeout(names.len()))
            .await
        {
            Ok(entries) => entries,
            Err(e) => {
                self.backend_failed(names[0], "get", &e, counters);
                contested.extend(present);
                return Vec::new();
            }
        };
        let mut asks = Vec::new();
        let mut reported = false;
        for ((i, mut guard), entry) in present.into_iter().zip(entries) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    if !std::mem::replace(&mut reported, true) {
                        self.backend_failed(&keys[i], "get", &e, counters);
                    }
                    contested.push((i, guard));
                    continue;
                }
            };
            match self.interpret::<T>(&keys[i], counters, Ok(entry)) {
                Read::Fresh(item, meta) => {
                    guard.land_with(&item, Shared::Fresh(meta));
                    found[i] = item;
                }
                Read::Stale(item, meta) => {
                    counters.stale_served.add();
                    guard.land_with(&item, Shared::Stale(meta));
                    found[i] = item;
                }
                Read::Miss | Read::Failed => asks.push((i, guard, LeaseIf::Any)),
            }
        }
        asks
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
                            tags: &[],
                        })
                    })
                    .collect();
                let released = if releases.is_empty() {
                    Ok(Vec::new())
                } else {
                    let timeout = self.batch_timeout(releases.len());
                    self.backend.finish_leases(&releases, timeout).await
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
                    tags: call.tags(*i),
                })
            })
            .collect();
        let mut ends = Vec::with_capacity(finishes.len());
        if !finishes.is_empty() {
            let started = Instant::now();
            let timeout = self.batch_timeout(finishes.len());
            let result = self.backend.finish_leases(&finishes, timeout).await;
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

        // A refresh replaces: an entry it did not replace with its value
        // goes, as a single key's refresh's does (see `refresh_now`), once
        // its flight has landed (the removal detaches flights: its own
        // callers would load again).
        let mut gone: Vec<String> = Vec::new();
        // Redis failed a lease request (the guard may hold the lease) or a
        // write of these: their removal waits for the retry of pending
        // changes (see `remove_unreplaced`).
        let mut failing = false;
        let mut ends = ends.into_iter();
        for (((i, guard, lease), value), meta) in items.into_iter().zip(values).zip(&metas) {
            let end = lease.and_then(|_| ends.next());
            // (A lease lost was ended by a change that came meanwhile: the
            // key is that change's, as for a single key's refresh.)
            let replaced = match end {
                Some(LeaseEnd::Stored) => meta.is_some(),
                Some(LeaseEnd::Lost) => true,
                _ => false,
            };
            if replace && !replaced {
                gone.push(keys[i].clone());
                let requested =
                    lease.is_none() && guard.as_ref().is_some_and(|g| g.lease.is_some());
                failing |= requested || end == Some(LeaseEnd::Failed);
            }
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
        self.remove_unreplaced(&gone, failing).await;
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
    use crate::backend::{Lease, LeaseIf, LeaseOutcome};
    use crate::engine::Engine;
    use crate::engine::flight::{Landed, Patience, Role, Shared, landing};
    use crate::engine::policy::{Call, Policy};
    use crate::scope::{CallMode, with_mode};

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
            tags: &[],
        }
    }

    /// A single-key call of `engine` for [`KEY`], as `batch_call`.
    fn single_call(engine: &Engine) -> Call<'static, Option<u32>, u32> {
        Call {
            key: KEY.to_owned(),
            counters: Cow::Owned(engine.stats.counters("item")),
            policy: Cow::Owned(Policy::new(Duration::from_secs(60)).wait(WAIT)),
            tags: &[],
            shape: std::marker::PhantomData,
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

    /// A batch's `wait` spans its rounds: joined 200 ms into a 300 ms
    /// wait, the next leader's flight (whose own timer runs a minute) is
    /// waited on for the 100 ms left, and the batch then loads for itself.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_waits_its_wait_in_all_over_its_rounds() {
        let (_cache, engine) = memory();
        let calls = Arc::new(AtomicUsize::new(0));
        let minute = Duration::from_secs(60);
        let Role::Lead(leader) = engine.flights.join_or_lead(&engine, KEY, minute) else {
            panic!("the test leads first");
        };
        let batch = tokio::spawn({
            let (engine, load) = (Arc::clone(&engine), counting_load(&calls, 7));
            async move {
                let policy = Policy::new(minute).wait(Duration::from_millis(300));
                let call = BatchCall {
                    counters: Cow::Owned(engine.stats.counters("item")),
                    policy: &policy,
                    tags: &[],
                };
                engine
                    .load_batch(&call, &[KEY.to_owned()], load, None)
                    .await
            }
        });
        settle().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(leader);
        let Role::Lead(next) = engine.flights.join_or_lead(&engine, KEY, minute) else {
            panic!("the batch has not run yet");
        };
        let Role::Wait(_patient) = engine.flights.join_or_lead(&engine, KEY, minute) else {
            panic!("a waiter of a minute sets the flight's timer");
        };
        settle().await;
        assert!(!batch.is_finished(), "waits on the next leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            batch.is_finished(),
            "waited 400 ms, `wait` 300 ms in all over its rounds"
        );
        assert_eq!(batch.await.expect("joins"), Ok(vec![Some(7)]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(next);
    }

    /// A batch's wait begins after its own load (a load's time is the
    /// loader's): with a key another caller here loads (joined), a key
    /// whose lease another load holds (contested) and a miss whose load
    /// takes 400 ms, the contested key's lease is still waited for, `wait`
    /// (300 ms) from the end of that load, and its holder's value taken:
    /// the source is not asked for it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_waits_for_a_lease_from_after_its_own_load() {
        let (_cache, engine) = memory();
        let keys = ["cache:item:a", "cache:item:b", "cache:item:c"].map(str::to_owned);
        let got = engine
            .backend
            .acquire_lease(
                &keys[1],
                OLDER,
                WAIT,
                LeaseIf::Absent,
                &[],
                Duration::ZERO,
                WAIT,
            )
            .await;
        assert!(matches!(got, Ok(LeaseOutcome::Acquired(_))), "{got:?}");
        let Role::Lead(mut other) = engine.flights.join_or_lead(&engine, &keys[0], WAIT) else {
            panic!("the test leads first");
        };
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batch = tokio::spawn({
            let (engine, asked, keys) = (Arc::clone(&engine), Arc::clone(&asked), keys.clone());
            async move {
                let policy = Policy::new(Duration::from_secs(60)).wait(Duration::from_millis(300));
                let call = BatchCall {
                    counters: Cow::Owned(engine.stats.counters("item")),
                    policy: &policy,
                    tags: &[],
                };
                let load = |indexes: Vec<usize>| {
                    asked.lock().expect("asked").push(indexes.clone());
                    async move {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        Ok::<_, ()>(indexes.iter().map(|_| Some(3u32)).collect())
                    }
                };
                engine.load_batch(&call, &keys, load, None).await
            }
        });
        settle().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        other.land_with(&Some(1u32), Shared::Loaded);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lease = Lease {
            token: OLDER,
            epoch: 0,
        };
        let stored = engine
            .backend
            .set_if_leased(&keys[1], Some(&2u32), &meta(), WAIT, lease, &[], WAIT)
            .await;
        assert_eq!(stored.ok(), Some(true), "its lease still held");
        let got = batch.await.expect("joins");
        assert_eq!(got, Ok(vec![Some(1), Some(2), Some(3)]));
        assert_eq!(*asked.lock().expect("asked"), vec![vec![2]]);
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
        // One miss a round, the last (its own load) included.
        let misses = cache.stats_for("item").map(|s| s.misses);
        assert_eq!(misses, Some(MAX_ROUNDS as u64 + 1));
        drop(leader);
        assert_eq!(cache.get::<u32>("item:1").await, None, "not stored");
    }

    /// A batch in a `Bypass` scope runs its body and counts no miss (nor
    /// anything else): the cache took no part.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bypassed_batch_loads_and_counts_no_miss() {
        let (cache, engine) = memory();
        let calls = Arc::new(AtomicUsize::new(0));
        let call = batch_call(&engine);
        let keys = [KEY.to_owned()];
        let got = with_mode(
            CallMode::Bypass,
            engine.load_batch(&call, &keys, counting_load(&calls, 4), None),
        )
        .await;
        assert_eq!(got, Ok(vec![Some(4)]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stats = cache.stats_for("item").expect("counters made");
        assert_eq!((stats.hits, stats.misses), (0, 0));
        assert_eq!(cache.get::<u32>("item:1").await, None, "not stored");
    }

    /// The metadata of an entry stored now, kept for ever.
    fn meta() -> EntryMeta {
        EntryMeta {
            created_ms: crate::clock::now_ms(),
            load_us: 0,
            expires_ms: u64::MAX,
            stale_until_ms: u64::MAX,
        }
    }

    /// The lease token of a load begun before the refresh under test.
    const OLDER: u64 = 99;

    /// A load begun before the refresh (in this process or another) holds
    /// the key's lease: it has read the source before the refresh began.
    async fn an_older_load_holds_the_lease(engine: &Engine) {
        let got = engine
            .backend
            .acquire_lease(KEY, OLDER, WAIT, LeaseIf::Absent, &[], Duration::ZERO, WAIT)
            .await;
        assert!(matches!(got, Ok(LeaseOutcome::Acquired(_))), "{got:?}");
    }

    /// That load stores what it read (1) while its lease holds.
    async fn the_older_load_stores(engine: &Engine) {
        let lease = Lease {
            token: OLDER,
            epoch: 0,
        };
        let stored = engine
            .backend
            .set_if_leased(KEY, Some(&1u32), &meta(), WAIT, lease, &[], WAIT)
            .await;
        assert_eq!(stored.ok(), Some(true), "its lease still held");
    }

    /// A refreshing batch shares no read of its key running here (begun
    /// before the refresh, or beside it): what the read brings back is the
    /// value the refresh is to replace. It leads and loads at once.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refreshing_batch_shares_no_read_running_for_its_key() {
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
                let mut patience = Patience::new(WAIT);
                let again = engine
                    .batch_round(
                        &call,
                        &keys,
                        vec![0],
                        &load,
                        None,
                        &mut found,
                        true,
                        &mut patience,
                    )
                    .await;
                (again, found)
            }
        });
        settle().await;
        assert!(round.is_finished(), "the refresh did not wait on the read");
        reader.land_with(&Some(1u32), Shared::Fresh(meta()));
        let (again, found) = round.await.expect("joins");
        assert_eq!(again, Ok(vec![]));
        assert_eq!(found, vec![Some(2)], "the loader's value, not the read's");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A refreshing batch whose key's lease a load begun before it holds
    /// waits for that lease and replaces what that load stores, as a
    /// single key's refresh does; it used to load without storing, and the
    /// older load's value stayed cached for its whole TTL.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refreshing_batch_replaces_what_an_older_load_stores() {
        let (cache, engine) = memory();
        let calls = Arc::new(AtomicUsize::new(0));
        an_older_load_holds_the_lease(&engine).await;
        let batch = tokio::spawn({
            let (engine, load) = (Arc::clone(&engine), counting_load(&calls, 2));
            with_mode(CallMode::Refresh, async move {
                let call = batch_call(&engine);
                engine
                    .load_batch(&call, &[KEY.to_owned()], load, None)
                    .await
            })
        });
        settle().await;
        assert!(!batch.is_finished(), "it waits for the older lease");
        the_older_load_stores(&engine).await;
        assert_eq!(batch.await.expect("joins"), Ok(vec![Some(2)]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get::<u32>("item:1").await, Some(2), "replaced");
    }

    /// A refresh (batch or single key) shares no flight led by a caller
    /// that waited for another's lease: such a leader passes on what it
    /// then read, which may be the older load's value. (The single key's
    /// refresh used to detach, then join: here that passes too; what it
    /// left open was a flight led between those two steps, on another
    /// thread. It now leads without looking, as a batch does.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_refresh_takes_no_value_a_waiting_leader_read() {
        for batch in [true, false] {
            let (cache, engine) = memory();
            let calls = Arc::new(AtomicUsize::new(0));
            an_older_load_holds_the_lease(&engine).await;
            // A caller (not refreshing) misses, leads and waits for the lease.
            let waiting = tokio::spawn({
                let engine = Arc::clone(&engine);
                async move {
                    let call = single_call(&engine);
                    let load = || std::future::ready(Ok::<_, ()>(Some(3u32)));
                    engine.load_through(call, load, None, None).await
                }
            });
            settle().await;
            let refresh = tokio::spawn({
                let (engine, load) = (Arc::clone(&engine), counting_load(&calls, 2));
                with_mode(CallMode::Refresh, async move {
                    if batch {
                        let (call, keys) = (batch_call(&engine), [KEY.to_owned()]);
                        let got = engine.load_batch(&call, &keys, load, None).await;
                        got.map(|mut v| v.remove(0))
                    } else {
                        let call = single_call(&engine);
                        let load = || async move { load(vec![0]).await.map(|mut v| v.remove(0)) };
                        engine.load_through(call, load, None, None).await
                    }
                })
            });
            settle().await;
            the_older_load_stores(&engine).await;
            assert_eq!(
                refresh.await.expect("joins"),
                Ok(Some(2)),
                "batch {batch}: the refresh's own load"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1, "batch {batch}");
            assert!(waiting.await.expect("joins").is_ok());
            assert_eq!(cache.get::<u32>("item:1").await, Some(2), "batch {batch}");
        }
    }

    /// A refresh (batch or single key) that cannot take its key's lease
    /// (another load holds it past `wait`; or the breaker is open, or the
    /// request failed) loads without storing, and returns the value it
    /// loaded: the entry it was to replace goes, rather than stay for its
    /// TTL older than what the refresh returned (found by a review).
    #[tokio::test(flavor = "current_thread")]
    async fn a_refresh_that_cannot_take_the_lease_leaves_no_older_entry() {
        let brief = Duration::from_millis(20);
        for batch in [true, false] {
            let (cache, engine) = memory();
            an_older_load_holds_the_lease(&engine).await;
            the_older_load_stores(&engine).await;
            // Another load, begun before the refresh, holds the lease and
            // will hold it past the refresh's `wait`.
            let got = engine
                .backend
                .acquire_lease(
                    KEY,
                    OLDER + 1,
                    WAIT,
                    LeaseIf::Any,
                    &[],
                    Duration::ZERO,
                    WAIT,
                )
                .await;
            assert!(matches!(got, Ok(LeaseOutcome::Acquired(_))), "{got:?}");
            let calls = Arc::new(AtomicUsize::new(0));
            let load = counting_load(&calls, 2);
            let policy: &'static Policy =
                Box::leak(Box::new(Policy::new(Duration::from_secs(60)).wait(brief)));
            let got = with_mode(CallMode::Refresh, async {
                if batch {
                    let call = BatchCall {
                        counters: Cow::Owned(engine.stats.counters("item")),
                        policy,
                        tags: &[],
                    };
                    let keys = [KEY.to_owned()];
                    let got = engine.load_batch(&call, &keys, load, None).await;
                    got.map(|mut v| v.remove(0))
                } else {
                    let call: Call<'_, Option<u32>, u32> = Call {
                        key: KEY.to_owned(),
                        counters: Cow::Owned(engine.stats.counters("item")),
                        policy: Cow::Borrowed(policy),
                        tags: &[],
                        shape: std::marker::PhantomData,
                    };
                    let load = || async move { load(vec![0]).await.map(|mut v| v.remove(0)) };
                    engine.load_through(call, load, None, None).await
                }
            })
            .await;
            assert_eq!(got, Ok(Some(2)), "batch {batch}: the refresh's load");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "batch {batch}");
            assert_eq!(
                cache.get::<u32>("item:1").await,
                None,
                "batch {batch}: the entry older than the refresh's value stayed"
            );
            // The backend answers: removed before the refresh returned, not
            // left to the retry of changes that did not land.
            assert_eq!(
                engine.pending.len(),
                0,
                "batch {batch}: the removal was pended"
            );
        }
    }

    /// A refresh whose value is not kept (`None` without `cache_none`)
    /// removes the entry only once its flight has landed: callers who
    /// joined it get its `None`, rather than being told it went away (and
    /// loading again).
    #[tokio::test(flavor = "current_thread")]
    async fn a_refresh_of_an_absent_value_hands_it_to_its_joiners() {
        let (_cache, engine) = memory();
        let gate = Arc::new(tokio::sync::Notify::new());
        let batch = tokio::spawn({
            let (engine, gate) = (Arc::clone(&engine), Arc::clone(&gate));
            with_mode(CallMode::Refresh, async move {
                let call = batch_call(&engine);
                let load = move |indexes: Vec<usize>| {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.notified().await;
                        Ok::<_, ()>(indexes.iter().map(|_| None::<u32>).collect::<Vec<_>>())
                    }
                };
                engine
                    .load_batch(&call, &[KEY.to_owned()], load, None)
                    .await
            })
        });
        settle().await;
        let Role::Wait(rx) = engine.flights.join_or_lead(&engine, KEY, WAIT) else {
            panic!("the refresh leads");
        };
        gate.notify_one();
        assert_eq!(batch.await.expect("joins"), Ok(vec![None]));
        let landed = landing(rx).await;
        let Landed::Value(value) = landed else {
            panic!("the joiner was not handed the refresh's value");
        };
        assert_eq!(value.downcast_ref::<Option<u32>>(), Some(&None));
    }
}
