//! What `#[cached]` expansions call. Not a public API: it changes with the
//! macro, which is pinned to this crate's exact version.

use std::borrow::Cow;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

pub use std::time::Duration;

pub use crate::key::{KeyBuilder, hashed};
use crate::{Cache, Cacheable};

use crate::engine::batch::BatchCall;
use crate::engine::policy::{Call, CountersRef, Keep};
pub use crate::engine::policy::{ErrorSharing, Policy, Refresh, Shape};
use crate::stats::Counters;

/// Everything a call site knows at compile time.
#[derive(Debug)]
pub struct Site {
    /// The stats and metrics name.
    name: &'static str,
    /// The key prefix.
    prefix: &'static str,
    /// TTLs, locking, stale window, early refresh.
    policy: Policy,
    /// The counters of the first caches this site served, kept here so a
    /// hit takes no lock and no reference count (both contended under load).
    counters: SiteCounters,
}

/// How many caches a site keeps the counters of (a service with a cache
/// per tier or per tenant; tests with a cache each): calls through any
/// further cache find theirs in the cache's registry.
const SITE_CACHES: usize = 4;

/// See the `counters` field of [`Site`]: `(engine id, its counters)`, each
/// slot taken by the first cache that finds it empty.
#[derive(Debug)]
struct SiteCounters([OnceLock<(u64, Arc<Counters>)>; SITE_CACHES]);

impl SiteCounters {
    /// Empty until the first call.
    const fn new() -> SiteCounters {
        SiteCounters([const { OnceLock::new() }; SITE_CACHES])
    }
}

impl Site {
    /// A call site: its stats name, key prefix and policy.
    pub const fn new(name: &'static str, prefix: &'static str, policy: Policy) -> Site {
        Site {
            name,
            prefix,
            policy,
            counters: SiteCounters::new(),
        }
    }

    /// The policy of one call: the site's, or a copy with this call's TTL
    /// (`ttl = <expression>`).
    fn policy_for(&self, ttl: Option<Duration>) -> Cow<'_, Policy> {
        match ttl {
            None => Cow::Borrowed(&self.policy),
            Some(ttl) => Cow::Owned(self.policy.for_call(ttl)),
        }
    }

    /// The counters of `cache` for this site: from the site for the first
    /// [`SITE_CACHES`] caches it served, from the cache's registry for any
    /// other.
    fn counters(&'static self, cache: &Cache) -> CountersRef<'static> {
        let engine = cache.engine();
        for slot in &self.counters.0 {
            let (id, counters) = slot.get_or_init(|| (engine.id, engine.stats.counters(self.name)));
            if *id == engine.id {
                return std::borrow::Cow::Borrowed(counters);
            }
        }
        std::borrow::Cow::Owned(engine.stats.counters(self.name))
    }
}

/// Starts the key of a call: `{namespace}:{prefix}:`.
#[inline]
pub fn key(cache: &Cache, site: &Site) -> KeyBuilder {
    KeyBuilder::new(cache.namespace(), site.prefix)
}

/// Picks how a call site runs: [`CacheRun`] when the value type is
/// [`Cacheable`], [`PlainRun`] otherwise (autoref specialization).
#[derive(Debug)]
pub struct Runner<T>(PhantomData<fn() -> T>);

impl<T> Runner<T> {
    /// The one value of this marker.
    pub const NEW: Runner<T> = Runner(PhantomData);
}

/// The caching path, chosen when the value type is cacheable. One entry
/// for every return shape: `V` is what the function returns (`T`, or
/// `Option<T>`), mapped to the stored `T` by [`Shape`].
pub trait CacheRun<T> {
    /// Cache-aside for a function returning `V` (or `Result<V, E>`).
    #[allow(clippy::too_many_arguments)]
    fn cached<V, E, F, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
        errors: Option<ErrorSharing<E>>,
        tags: &[String],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<V, E>>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>;
}

/// Write-through for `#[cache_put]`, on the same dispatch as [`CacheRun`].
pub trait CachePut<T> {
    /// Stores `value` under `key` and destroys any lease on it; `None`
    /// invalidates the key instead (the thing is gone).
    fn put(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        value: Option<&T>,
        tags: &[String],
        ttl: Option<Duration>,
    ) -> impl Future<Output = ()>;
}

impl<T: Cacheable> CachePut<T> for &Runner<T> {
    async fn put(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        value: Option<&T>,
        tags: &[String],
        ttl: Option<Duration>,
    ) {
        let engine = cache.engine();
        let keys = [key];
        let write = async {
            // A value `cache_if` / `unless` keeps out is not stored, and the
            // entry it replaces goes.
            let policy = site.policy_for(ttl);
            let value = value.filter(|v| policy.keep_if.is_none_or(|keep| keep(*v)));
            // A value its TTL rule keeps for no time is not stored either.
            match value.and_then(|v| Some((v, policy.ttl_for(v)?))) {
                Some((value, ttl)) => {
                    let counters = site.counters(cache);
                    let keep = Keep {
                        ttl,
                        stale: policy.stale,
                        load_time: Duration::ZERO,
                    };
                    engine
                        .write(&keys[0], Some(value), keep, tags, &counters)
                        .await;
                }
                None => {
                    let _ = engine.invalidate_full(&keys).await;
                }
            }
        };
        engine.guarded(&keys, &[], &[], write).await;
    }
}

/// The fallback of [`CachePut`]; never runs (see [`PlainRun`]).
pub trait PlainPut<T> {
    /// Does nothing.
    fn put(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        value: Option<&T>,
        tags: &[String],
        ttl: Option<Duration>,
    ) -> impl Future<Output = ()> {
        let _ = (cache, site, key, value, tags, ttl);
        std::future::ready(())
    }
}

impl<T> PlainPut<T> for Runner<T> {}

/// What `#[cache_evict]` removes once the function has succeeded: full keys,
/// full glob patterns and full tag keys. Failures are logged and counted
/// by the cache, and retried until they land; the caller's result is
/// returned regardless. A caller dropped before the invalidations finish
/// leaves them to the retries, not undone.
pub async fn evict(cache: &Cache, keys: &[String], patterns: &[String], tags: &[String]) {
    let engine = cache.engine();
    let invalidations = async {
        let _ = engine.invalidate_full(keys).await;
        for pattern in patterns {
            let _ = engine.invalidate_pattern_full(pattern).await;
        }
        for tag in tags {
            let _ = engine.invalidate_tag_full(tag).await;
        }
    };
    engine.guarded(keys, patterns, tags, invalidations).await;
}

/// Whether `text` matches the glob `pattern` as Redis's `SCAN MATCH` and
/// `KEYS` match it: the memory backend's matcher, exposed only so that
/// `tests/tests/glob_parity.rs` can compare it with a real server.
#[doc(hidden)]
pub fn __glob_matches(pattern: &str, text: &str) -> bool {
    crate::glob::matches(pattern, text)
}

/// A key part as the typed companions add it: [`PushPart`] when its type
/// is a `KeyPart`, [`SkipPart`] otherwise (autoref specialization; never
/// run: the function's own key fails to compile first, with a worded
/// error, and the companions do not repeat it).
#[derive(Debug)]
pub struct PartOf<'a, T: ?Sized>(pub &'a T);

/// Adds the part.
pub trait PushPart {
    /// The builder with the part added.
    fn push_to(&self, builder: KeyBuilder) -> KeyBuilder;
}

impl<T: crate::KeyPart + ?Sized> PushPart for &PartOf<'_, T> {
    #[inline]
    fn push_to(&self, builder: KeyBuilder) -> KeyBuilder {
        builder.part(self.0)
    }
}

/// The fallback of [`PushPart`].
pub trait SkipPart {
    /// The builder as it was.
    fn push_to(&self, builder: KeyBuilder) -> KeyBuilder {
        builder
    }
}

impl<T: ?Sized> SkipPart for PartOf<'_, T> {}

/// Starts a tag of a call: `{namespace}:~tag:`.
#[inline]
pub fn tag(cache: &Cache) -> KeyBuilder {
    KeyBuilder::new(cache.namespace(), crate::key::TAG_PREFIX)
}

/// Starts a key template relative to the namespace.
#[inline]
pub fn template(cache: &Cache) -> KeyBuilder {
    KeyBuilder::new(cache.namespace(), "")
}

/// Starts a pattern template relative to the namespace: parts are escaped.
#[inline]
pub fn pattern(cache: &Cache) -> KeyBuilder {
    KeyBuilder::pattern(cache.namespace())
}

// A plain function returning the get-or-load future itself, not an
// `async fn` awaiting it: one layer less in every call's future, which is
// copied and allocated on every hit.
impl<T: Cacheable> CacheRun<T> for &Runner<T> {
    #[inline]
    fn cached<V, E, F, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
        errors: Option<ErrorSharing<E>>,
        tags: &[String],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<V, E>>
    where
        V: Shape<T> + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let call: Call<'_, V, T> = Call {
            key,
            counters: site.counters(cache),
            policy: site.policy_for(ttl),
            tags,
            shape: PhantomData,
        };
        cache.engine().load_through(call, load, refresh, errors)
    }
}

/// The fallback when the value type is not cacheable. A program never runs
/// it: `check::cacheable` fails to compile first, with a readable error.
pub trait PlainRun<T> {
    /// Runs the loader.
    #[allow(clippy::too_many_arguments)]
    fn cached<V, E, F, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        key: String,
        load: F,
        refresh: Option<&(dyn Fn() -> Refresh<V> + Send + Sync)>,
        errors: Option<ErrorSharing<E>>,
        tags: &[String],
        ttl: Option<Duration>,
    ) -> Fut
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let _ = (cache, site, key, refresh, errors, tags, ttl);
        load()
    }
}

impl<T> PlainRun<T> for Runner<T> {}

/// Batch cache-aside for `#[cached(batch)]`, on the same dispatch as
/// [`CacheRun`]: the function takes a collection of ids and returns a map
/// from id to value. Each id's entry is the one a single-key function of
/// the same prefix reads and writes (`key(id)`); an id missing from the
/// function's map is absent (stored only with `cache_none`). `tags(id)`
/// are the full tag keys of that id's entry (`tags = [..]`, rendered per
/// id).
pub trait CacheBatch<T> {
    /// Reads every id's entry, calls `load` with the ids it must load, and
    /// returns a map of every id that has a value.
    #[allow(clippy::too_many_arguments)]
    fn batch<K, M, E, L, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        ids: Vec<K>,
        key: impl Fn(&K) -> String,
        tags: impl Fn(&K) -> Vec<String>,
        load: L,
        errors: Option<ErrorSharing<E>>,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<M, E>>
    where
        K: Clone,
        M: BatchMap<K, T>,
        L: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<M, E>>;
}

impl<T: Cacheable> CacheBatch<T> for &Runner<T> {
    async fn batch<K, M, E, L, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        ids: Vec<K>,
        key: impl Fn(&K) -> String,
        tags: impl Fn(&K) -> Vec<String>,
        load: L,
        errors: Option<ErrorSharing<E>>,
        ttl: Option<Duration>,
    ) -> Result<M, E>
    where
        K: Clone,
        M: BatchMap<K, T>,
        L: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<M, E>>,
    {
        // Each key once. Ids that make the same key (the same id twice, or
        // ids the key template folds together, such as `ids.to_lowercase()`)
        // are one entry: read, loaded and stored once, and answered for
        // each of them.
        let mut keys: Vec<String> = ids.iter().map(&key).collect();
        // Each id's place among the distinct keys, in order of first sight.
        let place: Vec<usize> = {
            let mut seen: std::collections::HashMap<&str, usize, foldhash::fast::RandomState> =
                std::collections::HashMap::with_capacity_and_hasher(keys.len(), Default::default());
            keys.iter()
                .map(|k| {
                    let next = seen.len();
                    *seen.entry(k.as_str()).or_insert(next)
                })
                .collect()
        };
        let distinct = place.iter().max().map_or(0, |&last| last + 1);
        let (unique, repeats) = if distinct == ids.len() {
            (ids, None)
        } else {
            // The first id of each key: the one whose place is new.
            let mut kept = 0;
            let first: Vec<bool> = place
                .iter()
                .map(|&at| {
                    let new = at == kept;
                    kept += usize::from(new);
                    new
                })
                .collect();
            let mut again = first.iter();
            keys.retain(|_| *again.next().unwrap_or(&false));
            let unique: Vec<K> = ids
                .iter()
                .zip(&first)
                .filter(|(_, first)| **first)
                .map(|(id, _)| id.clone())
                .collect();
            (unique, Some((ids, place)))
        };
        // A site's tag templates are the same for every id: an id without
        // tags means a batch without (nothing made per id, then).
        let tags: Vec<Vec<String>> = match unique.first().map(&tags) {
            Some(first) if !first.is_empty() => std::iter::once(first)
                .chain(unique[1..].iter().map(&tags))
                .collect(),
            _ => Vec::new(),
        };
        let policy = site.policy_for(ttl);
        let call = BatchCall {
            counters: site.counters(cache),
            policy: &policy,
            tags: &tags,
        };
        let unique = &unique;
        let load = &load;
        let loader = |indexes: Vec<usize>| {
            let asked: Vec<K> = indexes.iter().map(|&i| unique[i].clone()).collect();
            async move {
                let map = load(asked.clone()).await?;
                // Copied rather than taken: two ids the map holds as one
                // (equal, though their keys differ) each get the value.
                Ok(asked.iter().map(|id| map.get(id).cloned()).collect())
            }
        };
        let values = cache
            .engine()
            .load_batch(&call, &keys, loader, errors)
            .await?;
        let mut out = M::with_capacity(values.len());
        match repeats {
            None => {
                for (id, value) in unique.iter().zip(values) {
                    if let Some(value) = value {
                        out.put(id.clone(), value);
                    }
                }
            }
            Some((ids, place)) => {
                for (id, at) in ids.into_iter().zip(place) {
                    if let Some(value) = &values[at] {
                        out.put(id, value.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The fallback of [`CacheBatch`]; never runs (see [`PlainRun`]).
pub trait PlainBatch<T> {
    /// Calls the function with every id.
    #[allow(clippy::too_many_arguments)]
    fn batch<K, M, E, L, Fut>(
        &self,
        cache: &Cache,
        site: &'static Site,
        ids: Vec<K>,
        key: impl Fn(&K) -> String,
        tags: impl Fn(&K) -> Vec<String>,
        load: L,
        errors: Option<ErrorSharing<E>>,
        ttl: Option<Duration>,
    ) -> Fut
    where
        L: Fn(Vec<K>) -> Fut,
    {
        let _ = (cache, site, key, tags, errors, ttl);
        load(ids)
    }
}

impl<T> PlainBatch<T> for Runner<T> {}

/// The collection parameter of a batch function: its ids, and the same
/// kind of collection made of the ids to load.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the ids of `#[cached(batch)]`",
    label = "a batch function takes its ids as a collection",
    note = "take `Vec<Id>`, `&[Id]`, `HashSet<Id>` or `BTreeSet<Id>`"
)]
pub trait BatchIds {
    /// One id.
    type Id: Clone;
    /// The collection the function is called with (`Vec` for a slice).
    type Owned;
    /// The ids, in order.
    fn batch_ids(&self) -> Vec<Self::Id>;
    /// A collection of these ids.
    fn from_ids(ids: Vec<Self::Id>) -> Self::Owned;
}

impl<K: Clone> BatchIds for Vec<K> {
    type Id = K;
    type Owned = Vec<K>;
    fn batch_ids(&self) -> Vec<K> {
        self.clone()
    }
    fn from_ids(ids: Vec<K>) -> Vec<K> {
        ids
    }
}

impl<K: Clone> BatchIds for [K] {
    type Id = K;
    type Owned = Vec<K>;
    fn batch_ids(&self) -> Vec<K> {
        self.to_vec()
    }
    fn from_ids(ids: Vec<K>) -> Vec<K> {
        ids
    }
}

impl<K, S> BatchIds for std::collections::HashSet<K, S>
where
    K: Clone + Eq + std::hash::Hash,
    S: std::hash::BuildHasher + Default,
{
    type Id = K;
    type Owned = Self;
    fn batch_ids(&self) -> Vec<K> {
        self.iter().cloned().collect()
    }
    fn from_ids(ids: Vec<K>) -> Self {
        ids.into_iter().collect()
    }
}

impl<K: Clone + Ord> BatchIds for std::collections::BTreeSet<K> {
    type Id = K;
    type Owned = Self;
    fn batch_ids(&self) -> Vec<K> {
        self.iter().cloned().collect()
    }
    fn from_ids(ids: Vec<K>) -> Self {
        ids.into_iter().collect()
    }
}

/// A batch call's ids, in order, and how to make the function's argument
/// of the ids it must load.
#[derive(Debug)]
pub struct BatchInput<I, O> {
    /// The ids, in order.
    pub ids: Vec<I>,
    /// The collection of some of them.
    pub rebuild: fn(Vec<I>) -> O,
}

/// The [`BatchInput`] of a batch call's collection (the one place the
/// collection's type is checked, so a wrong one is one error).
#[inline]
pub fn batch_input<C, I, O>(ids: &C) -> BatchInput<I, O>
where
    C: BatchIds<Id = I, Owned = O> + ?Sized,
{
    BatchInput {
        ids: ids.batch_ids(),
        rebuild: C::from_ids,
    }
}

/// What a batch function returns (inside its `Result`): a map from id to
/// value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a map a `#[cached(batch)]` function can return",
    label = "a batch function returns a map from id to value",
    note = "return `HashMap<Id, V>` or `BTreeMap<Id, V>` (inside a `Result` if it can fail), with the id type of the collection it takes"
)]
pub trait BatchMap<K, T>: Sized {
    /// An empty map with room for `n`.
    fn with_capacity(n: usize) -> Self;
    /// The value of `id`.
    fn get(&self, id: &K) -> Option<&T>;
    /// Adds a value.
    fn put(&mut self, id: K, value: T);
}

impl<K, T, S> BatchMap<K, T> for std::collections::HashMap<K, T, S>
where
    K: Eq + std::hash::Hash,
    S: std::hash::BuildHasher + Default,
{
    fn with_capacity(n: usize) -> Self {
        std::collections::HashMap::with_capacity_and_hasher(n, S::default())
    }
    fn get(&self, id: &K) -> Option<&T> {
        std::collections::HashMap::get(self, id)
    }
    fn put(&mut self, id: K, value: T) {
        self.insert(id, value);
    }
}

impl<K: Ord, T> BatchMap<K, T> for std::collections::BTreeMap<K, T> {
    fn with_capacity(_: usize) -> Self {
        std::collections::BTreeMap::new()
    }
    fn get(&self, id: &K) -> Option<&T> {
        std::collections::BTreeMap::get(self, id)
    }
    fn put(&mut self, id: K, value: T) {
        self.insert(id, value);
    }
}

/// Picks how a call site's errors reach the callers who waited for a failed
/// load: [`ShareErrors`] (a clone each) when the error type is
/// `Clone + Send + Sync + 'static`, [`KeepErrors`] (each tries the source
/// itself) otherwise (autoref specialization, as [`Runner`]).
#[derive(Debug)]
pub struct Errors<E>(PhantomData<fn() -> E>);

impl<E> Errors<E> {
    /// The one value of this marker.
    pub const NEW: Errors<E> = Errors(PhantomData);
}

/// Errors are shared with waiters.
pub trait ShareErrors<E> {
    /// `Some`: clone the leader's error for each waiter.
    fn sharing(&self) -> Option<ErrorSharing<E>>;
}

impl<E: Clone + Send + Sync + 'static> ShareErrors<E> for &Errors<E> {
    fn sharing(&self) -> Option<ErrorSharing<E>> {
        Some(ErrorSharing::new())
    }
}

/// Errors stay with the leader; each waiter tries the source itself.
pub trait KeepErrors<E> {
    /// `None`.
    fn sharing(&self) -> Option<ErrorSharing<E>> {
        None
    }
}

impl<E> KeepErrors<E> for Errors<E> {}

/// A function's body under its `hard_timeout`: past it, the body is
/// dropped (a lease it held is released by its caller's guard) and the
/// call returns the error type's `From<LoadTimeout>`, counted in
/// `load_timeouts`.
pub async fn hard_timeout<T, E>(
    cache: &Cache,
    site: &'static Site,
    after: Duration,
    body: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: check::TimeoutError,
{
    match tokio::time::timeout(after, body).await {
        Ok(result) => result,
        Err(_) => {
            site.counters(cache).load_timeouts.add();
            Err(E::from(crate::LoadTimeout { after }))
        }
    }
}

/// A background refresh under its function's `hard_timeout`: `None` (the
/// refresh failed; the entry is kept) past it, counted in `load_timeouts`
/// as a call's is.
pub async fn hard_timeout_refresh<T>(
    cache: Cache,
    site: &'static Site,
    after: Duration,
    refresh: impl Future<Output = Option<T>>,
) -> Option<T> {
    match tokio::time::timeout(after, refresh).await {
        Ok(refreshed) => refreshed,
        Err(_) => {
            site.counters(&cache).load_timeouts.add();
            None
        }
    }
}

/// Calls a `cache_if` / `unless` predicate on a value (through a generic
/// function, so an unannotated closure gets its parameter type).
#[inline(always)]
pub fn decide<T: ?Sized>(predicate: impl FnOnce(&T) -> bool, value: &T) -> bool {
    predicate(value)
}

/// Lifts an infallible body into the `Result` the runtime works with.
#[inline]
pub async fn infallible<T>(body: impl Future<Output = T>) -> Result<T, Infallible> {
    Ok(body.await)
}

/// Takes the value out of a `Result` that cannot be an error.
#[inline]
pub fn into_ok<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Borrows the cache named by the attribute (`self.cache`, a static, an
/// `Arc<Cache>`...).
#[inline]
pub fn as_cache<C: AsCache + ?Sized>(c: &C) -> &Cache {
    c.as_cache()
}

/// Anything the attribute can find a [`Cache`] in.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `cached_runtime::Cache`",
    label = "the attribute looks for the cache here",
    note = "`#[cached]` uses `self.cache` by default; point it at a `Cache` with `cache = <expr>`"
)]
pub trait AsCache {
    /// The cache.
    fn as_cache(&self) -> &Cache;
}

impl AsCache for Cache {
    fn as_cache(&self) -> &Cache {
        self
    }
}

impl<C: AsCache + ?Sized> AsCache for &C {
    fn as_cache(&self) -> &Cache {
        (**self).as_cache()
    }
}

impl<C: AsCache + ?Sized> AsCache for std::sync::Arc<C> {
    fn as_cache(&self) -> &Cache {
        (**self).as_cache()
    }
}

impl<C: AsCache, F: FnOnce() -> C> AsCache for std::sync::LazyLock<C, F> {
    fn as_cache(&self) -> &Cache {
        std::sync::LazyLock::force(self).as_cache()
    }
}

impl<C: AsCache> AsCache for std::sync::OnceLock<C> {
    /// The cache set in the lock; before it is set, a cache that is
    /// switched off (`enabled(false)`: calls run their functions, nothing
    /// is stored), with a warning, rather than a panic in the caller (a
    /// startup that calls a cached function before it sets its cache).
    fn as_cache(&self) -> &Cache {
        static UNSET: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(|| {
            tracing::warn!(
                "#[cached]: a function's cache (a OnceLock) was used before it was set; \
                 its calls run uncached until it is"
            );
            Cache::builder()
                .enabled(false)
                .namespace("unset")
                .build()
                .unwrap_or_else(|_| Cache::memory())
        });
        match self.get() {
            Some(c) => c.as_cache(),
            None => &UNSET,
        }
    }
}

/// Compile-time checks spanned at the user's types, so a missing trait is
/// reported in words at the return type, not deep in generated code.
pub mod check {
    use crate::KeyPart;

    /// The cached type must serialize.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be cached: it does not implement `serde::Serialize`",
        label = "cached values are stored as JSON, so this type must implement `Serialize`",
        note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to the type"
    )]
    pub trait Serializable {}
    impl<T: serde::Serialize + ?Sized> Serializable for T {}

    /// The cached type must deserialize into an owned value.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be cached: it does not implement `serde::de::DeserializeOwned`",
        label = "cached values are read back from JSON, so this type must implement `Deserialize` without borrowing",
        note = "add `#[derive(serde::Deserialize)]` to the type; a type that borrows (`&str`, `Cow<'a, _>`) cannot be cached"
    )]
    pub trait Deserializable {}
    impl<T: serde::de::DeserializeOwned> Deserializable for T {}

    /// The cached type must be `Clone`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be cached: it does not implement `Clone`",
        label = "hits and shared loads hand out copies, so this type must implement `Clone`",
        note = "add `#[derive(Clone)]` to the type"
    )]
    pub trait Cloneable {}
    impl<T: Clone> Cloneable for T {}

    /// The cached type must be shareable across tasks.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be cached: it is not `Send + Sync + 'static`",
        label = "cached values are shared between tasks and threads",
        note = "use `Arc` instead of `Rc`, and owned data instead of borrows"
    )]
    pub trait Shareable {}
    impl<T: Send + Sync + 'static> Shareable for T {}

    /// A service whose method refreshes in the background.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must be `Clone + Send + Sync + 'static` for `stale`, `early_refresh` or `audit`",
        label = "a background load calls the method after its caller has returned, on a copy of the service",
        note = "keep the service's state behind `Arc`s and derive `Clone`; the copy is made only when a refresh starts"
    )]
    pub trait RefreshableService {}
    impl<T: Clone + Send + Sync + 'static> RefreshableService for T {}

    /// An argument of a method that refreshes in the background.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must be `Clone + Send + Sync + 'static` for `stale`, `early_refresh` or `audit`",
        label = "a background load owns a copy of every argument",
        note = "take owned arguments (`String`, not `&str`) on functions with `stale`, `early_refresh` or `audit`"
    )]
    pub trait RefreshableArg {}
    impl<T: Clone + Send + Sync + 'static> RefreshableArg for T {}

    /// Asserts the service can be copied into a background refresh.
    #[inline(always)]
    pub fn refreshable_service<T: RefreshableService + ?Sized>() {}

    /// The service's copy for a background refresh.
    #[inline(always)]
    pub fn refresh_copy<T: RefreshableService + Clone>(service: &T) -> T {
        service.clone()
    }

    /// Asserts an argument can be copied into a background refresh.
    #[inline(always)]
    pub fn refreshable_arg<T: RefreshableArg>(_: &T) {}

    /// The error type of a function with `hard_timeout`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot report a `hard_timeout`: it does not implement `From<cached_runtime::LoadTimeout>`",
        label = "a load that runs past its hard timeout returns this error type",
        note = "add `impl From<cached_runtime::LoadTimeout> for {Self}` (say, a `Timeout` variant)"
    )]
    pub trait TimeoutError: From<crate::LoadTimeout> {}
    impl<E: From<crate::LoadTimeout>> TimeoutError for E {}

    /// Asserts the error type of a function with `hard_timeout`.
    #[inline(always)]
    pub fn timeout_error<E: TimeoutError>() {}

    /// Asserts every requirement on a cached type.
    #[inline(always)]
    pub fn cacheable<T: Serializable + Deserializable + Cloneable + Shareable>() {}

    /// Asserts a key part.
    #[inline(always)]
    pub fn key_part<T: KeyPart + ?Sized>(_: &T) {}

    /// Tells apart, by the type itself, what the attribute read from the
    /// signature's text: a type it took for a plain value (or for the
    /// value in `Result<T, E>`) may be a `Result` or an `Option` behind a
    /// type alias (`type Res<T> = Result<T, MyError>`), which the macro
    /// cannot see through. `(&&ShapeProbe::<T>::NEW).__cached_shape()`
    /// picks [`AliasedShape`]'s method when `T` is one (a receiver one
    /// reference deeper wins), [`PlainShape`]'s otherwise, and
    /// [`written`] accepts only the latter's answer.
    #[derive(Debug)]
    pub struct ShapeProbe<T: ?Sized>(core::marker::PhantomData<T>);

    impl<T: ?Sized> ShapeProbe<T> {
        pub const NEW: Self = ShapeProbe(core::marker::PhantomData);
    }

    /// What [`PlainShape`] answers: a type that is neither.
    #[derive(Debug)]
    pub struct AsWritten;

    /// What [`AliasedShape`] answers: a `Result` or an `Option` that the
    /// signature does not spell as one.
    #[derive(Debug)]
    pub struct ResultOrOptionBehindAnAlias;

    /// A `Result` (for a plain value) or an `Option` (for a plain value or
    /// the value in a `Result`) probed.
    pub trait AliasedShape {
        fn __cached_shape(&self) -> ResultOrOptionBehindAnAlias {
            ResultOrOptionBehindAnAlias
        }
    }
    impl<T, E> AliasedShape for &ShapeProbe<Result<T, E>> {}
    impl<T> AliasedShape for &ShapeProbe<Option<T>> {}

    /// An `Option` probed (for the value in a `Result`).
    pub trait AliasedOption {
        fn __cached_ok_shape(&self) -> ResultOrOptionBehindAnAlias {
            ResultOrOptionBehindAnAlias
        }
    }
    impl<T> AliasedOption for &ShapeProbe<Option<T>> {}

    /// Any other type probed.
    pub trait PlainShape {
        fn __cached_shape(&self) -> AsWritten {
            AsWritten
        }
        fn __cached_ok_shape(&self) -> AsWritten {
            AsWritten
        }
    }
    impl<T: ?Sized> PlainShape for ShapeProbe<T> {}

    /// Implemented by [`AsWritten`] only.
    #[diagnostic::on_unimplemented(
        message = "this return type is a `Result` or an `Option` behind a type alias, which the attribute cannot see through",
        label = "the attribute reads `Result` and `Option` from the signature's text: with an alias it would cache errors, or `None`, as values",
        note = "write `Result<T, E>` or `Option<T>` in the signature (`Result<T, MyError>`, not `type Res<T> = Result<T, MyError>`)"
    )]
    pub trait WrittenInTheSignature {}
    impl WrittenInTheSignature for AsWritten {}

    /// Asserts the probe's answer (see [`ShapeProbe`]).
    #[inline(always)]
    pub fn written<M: WrittenInTheSignature>(_: M) {}
}

/// A `ttl` computed per call (`ttl = self.ttl`, `ttl = ttl_for(tier)`):
/// a `Duration`, or a reference to one.
#[diagnostic::on_unimplemented(
    message = "a `ttl` computed per call must be a `std::time::Duration`, not `{Self}`",
    label = "not a `Duration`",
    note = "write e.g. `ttl = Duration::from_secs(self.ttl_secs)`; for a TTL chosen by the value, \
            write a closure `ttl = |v: &Value| ...`"
)]
pub trait CallTtl {
    /// The duration.
    fn duration(self) -> Duration;
}

impl CallTtl for Duration {
    #[inline]
    fn duration(self) -> Duration {
        self
    }
}

impl CallTtl for &Duration {
    #[inline]
    fn duration(self) -> Duration {
        *self
    }
}

/// This call's TTL (`ttl = <expression>`).
#[inline]
pub fn call_ttl(ttl: impl CallTtl) -> Duration {
    ttl.duration()
}

/// Calls a `ttl = |v: &T| ...` closure on a value (through a generic
/// function, so an unannotated closure gets its parameter type).
#[inline(always)]
pub fn ttl_fn<T: ?Sized>(rule: impl FnOnce(&T) -> Duration, value: &T) -> Duration {
    rule(value)
}

/// A `ttl = path`: a function of the stored value, or a constant
/// `Duration`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the `ttl` of a value of type `{T}`",
    label = "neither a `Duration` nor a function of `&{T}`",
    note = "write a `Duration` constant, a function `fn(&{T}) -> Duration`, or a closure \
            `|v: &{T}| ...`"
)]
pub trait TtlRule<T: ?Sized> {
    /// How long to keep `value`.
    fn ttl_of(self, value: &T) -> Duration;
}

impl<T: ?Sized> TtlRule<T> for Duration {
    #[inline]
    fn ttl_of(self, _: &T) -> Duration {
        self
    }
}

impl<T: ?Sized, F: FnOnce(&T) -> Duration> TtlRule<T> for F {
    #[inline]
    fn ttl_of(self, value: &T) -> Duration {
        self(value)
    }
}

/// Applies a `ttl = path` rule to a value.
#[inline(always)]
pub fn ttl_rule<T: ?Sized, R: TtlRule<T>>(rule: R, value: &T) -> Duration {
    rule.ttl_of(value)
}
