//! The `#[cached]`, `#[cache_put]` and `#[cache_evict]` attributes. Depend on
//! `cached-runtime`, which re-exports them and provides everything the
//! expansions call.
//!
//! The crate is split by phase: parse (`attr` reads the options, `template`
//! reads key templates), validate (`func` checks the function, `valid` the
//! options against each other and the function), and expand (`expand`
//! generates code; `fallback` what is emitted instead on an error). Errors
//! from every phase are collected and reported together.

mod attr;
mod companions;
mod duration;
mod errors;
mod expand;
mod fallback;
mod func;
mod template;
mod valid;

use proc_macro::TokenStream;

use crate::attr::{Args, Kind, RawArgs};
use crate::errors::Errors;
pub(crate) use crate::valid::Templates;

/// Caches an `async fn`'s result: cache-aside, in one attribute.
///
/// ```ignore
/// #[cached(prefix = "placement", ttl = "5m", key = placement_id)]
/// async fn get_by_id(&self, placement_id: Uuid) -> Result<Option<Placement>, DbError> { /* … */ }
/// ```
///
/// The function keeps its name, signature, visibility, docs and attributes;
/// a twin named `{name}_uncached` runs the body without the cache.
///
/// # Options
///
/// Every option, with an example of its use:
///
/// | option | meaning |
/// | --- | --- |
/// | `prefix = "placement"` | **required.** The key prefix: keys are `{namespace}:{prefix}:{key}`. Letters, digits and `_-./` only. |
/// | `ttl = "5m"` or `ttl = 300` | **required.** How long a value is kept: a duration (`"30s"`, `"5m"`, `"1h 30m"`) or whole seconds, checked at compile time. A small random jitter is added. |
/// | `ttl = \|p: &Placement\| p.ttl()` or `ttl = Placement::ttl` | A TTL chosen by the stored value: a closure or a path to a function of it (a path to a `Duration` constant is a fixed TTL). Applied to loads, batches, background refreshes and write-throughs. A zero (or sub-millisecond) answer stores nothing. Needs `max_ttl`. |
/// | `ttl = self.ttl` or `ttl = ttl_for(tier)` | A TTL computed per call: any other expression over `self` and the parameters, of type `Duration`, evaluated when the function is called. Needs `max_ttl`. |
/// | `max_ttl = "1d"` | With a run-time `ttl`: the longest it may be (a longer answer is cut to it). Tag bookkeeping lives this long, and `{name}_prime` stores for it when the TTL is per call. |
/// | `key = placement_id` | The key part: any expression over the parameters whose value is a `KeyPart` (integers, strings, UUIDs, tuples of them, `hashed(&query)`). Default: every parameter but `self`, joined with `:`. |
/// | `key = "video:{video_id}:placements"` | A key template; each placeholder names a parameter and stands alone between `:` separators (checked at compile time). `{{` and `}}` are literal braces. |
/// | `cache = CACHE` | Where the `Cache` is. Default `self.cache`; required on free functions (e.g. a `static CACHE: LazyLock<Cache>`). |
/// | `cache_none = "30s"` | Also cache `None` (negative caching), for this long. Only for `Option<T>` and `Result<Option<T>, E>` returns. |
/// | `tags = ["video:{video_id}"]` | Tags the entry, so `#[cache_evict(tags = [...])]` or `Cache::invalidate_tag` removes it with every other entry of the tag. On `batch`, rendered per id (`{ids}` is one id). |
/// | `name = "placements"` | The name in stats and metrics. Default: the prefix. |
/// | `lock = false` | Turns off single flight and leases (each caller loads on a miss). Default on. |
/// | `lease = "10s"` | How long a lease lives if its holder dies mid-load. Default 10 s. |
/// | `wait = "5s"` | The longest a caller waits for another's load (in this process or another) before loading itself. Default 5 s. |
/// | `stale = "1h"` | Keep an expired value this much longer: served while one caller refreshes it in the background, and if the refresh fails. Needs a `Clone` service and owned arguments. |
/// | `early_refresh = true` or `early_refresh = 2.0` | Probabilistic early refresh (XFetch) near expiry, in the background; a number is beta (larger refreshes earlier). Needs a `Clone` service and owned arguments. |
/// | `audit = 0.001` | Audit this share of hits against the source, in the background: the function's body runs again and its value is compared with the one served; a confirmed difference counts in `stats().inconsistencies` and `cache_inconsistencies_total`. Needs a `Clone` service and owned arguments. |
/// | `cache_if = \|p: &Placement\| !p.draft` or `unless = Placement::is_draft` | Store a loaded value only if the predicate (a closure or a function of the stored type) says so; `None` follows `cache_none`. A value kept out is returned, not stored, and a write-through of it (`_refresh`) removes the entry instead. |
/// | `hard_timeout = "2s"` | The longest a load may run: past it the body is dropped (its lease released) and the call returns its error type's `From<cached_runtime::LoadTimeout>` (so only for `Result` returns), counted in `load_timeouts`. Background refreshes are bounded too. |
/// | `soft_timeout = "20ms"` | With `stale`: a caller that finds a stale value waits up to this long for this process's refresh of it, and gets the refreshed value if it comes in time; else the stale one, while the refresh goes on and stores. Counted in `soft_timeouts`. Shorter than `hard_timeout`. |
/// | `batch` or `batch = ids` | Batch cache-aside: the function takes a collection of ids and returns a map from id to value (see *Batch* below). `batch` alone when the ids are the only parameter; `batch = ids` names their parameter. |
/// | `crate = "my_deps::cached_runtime"` | Where `cached-runtime` is, if renamed or re-exported. |
///
/// ```ignore
/// #[derive(Clone)]
/// struct Videos { cache: Cache, db: Db }
///
/// impl Videos {
///     #[cached(prefix = "video", ttl = "90s", key = "{video_id}:placements",
///              tags = ["video:{video_id}"], stale = "10m", early_refresh = true,
///              cache_none = "30s", wait = "2s", name = "video_placements")]
///     async fn placements(&self, video_id: u64) -> Result<Option<Vec<Placement>>, DbError> { /* … */ }
/// }
/// ```
///
/// # Return types
///
/// `T` is cached. `Option<T>`: `None` is not cached unless `cache_none`.
/// `Result<T, E>`: only `Ok` is cached; an `Err` goes back to the caller
/// unchanged. `Result<Option<T>, E>` combines both. The value type must be
/// `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`.
///
/// # Companions
///
/// Beside the function and its twin, `#[cached]` emits typed companions
/// (not for `batch`), with the function's visibility, so that callers name
/// an entry by the function and its arguments, never by a key written out:
///
/// | companion | what it does |
/// | --- | --- |
/// | `get_by_id_key(&id) -> String` | the entry's key, relative to the namespace (`"placement:7"`) |
/// | `self.get_by_id_invalidate(&id)` | removes the entry and destroys its lease, as `#[cache_evict]` |
/// | `self.get_by_id_prime(&id, &value)` | stores `value` as the entry without calling the function (a write-through) |
/// | `self.get_by_id_refresh(id)` | calls the function without the cache and writes its result through, as `#[cache_put]`; returns it |
/// | `self.get_by_id_with_outcome(id)` | the call, and what it did (`cached_runtime::Outcome`: hit, loaded, ...) |
///
/// `#[cache_evict(of = [Self::get_by_id(id)])]` removes the entries of those
/// calls; a wrong argument count or type is a compile error at its token.
///
/// # Trait methods
///
/// On a method of a trait impl, put `#[cached]` (no options) on the impl
/// block as well: a trait impl cannot hold the `_uncached` twins (they are
/// not members of the trait), so the block's attribute moves them to an
/// inherent impl of the same type, with the same generics. The methods keep
/// their semantics, including `#[cache_put]`, `#[cache_evict]`, `batch` and
/// background refreshes; callers reach the twins as usual.
///
/// ```ignore
/// #[cached]
/// impl Repo for PgRepo {
///     #[cached(prefix = "placement", ttl = "5m", key = id)]
///     async fn get(&self, id: i64) -> Result<Option<Placement>, DbError> { /* … */ }
/// }
/// // repo.get(id) caches; repo.get_uncached(id) reads the database.
/// ```
///
/// # Batch
///
/// ```ignore
/// #[cached(prefix = "placement", ttl = "5m", batch)]
/// async fn get_many(&self, ids: Vec<Uuid>) -> Result<HashMap<Uuid, Placement>, DbError> {
///     /* one query: WHERE id = ANY($1) */
/// }
/// ```
///
/// Every id's entry is read in one round trip; the body is called once,
/// with only the ids that missed (in a collection of the type the function
/// takes: `Vec<Id>`, `&[Id]`, `HashSet<Id>` or `BTreeSet<Id>`, each id
/// once), and what it returns is written back in one round trip. Each id's
/// key is the one a single-key function of the same `prefix` makes with
/// the same `key` (default: every parameter, with the collection's name
/// standing for one id; `key = (tenant, ids)` or `key = "{ids}:row"` work
/// too, and a `key` without the ids is a compile error), so the two share
/// entries both ways. Single flight and leases
/// hold per id: two batches that overlap load each id once. An id missing
/// from the returned map is absent: left out of the result, and cached
/// only with `cache_none`. The map is `HashMap<Id, V>` or `BTreeMap<Id, V>`,
/// or a `Result` of one. A batch takes `cache_none`, `lease`, `wait`, `name`,
/// `cache` and `tags`, whose templates are rendered per id as the key is
/// (`tags = ["placements", "placement:{ids}"]`: `{ids}` stands for one
/// id); not `stale`, `early_refresh`, `audit` or `lock = false` (a compile
/// error says why). When other callers are
/// loading some of the ids and their loads fail or run past `wait`, the
/// body is called once more for those ids.
///
/// # Failures
///
/// A cache failure never reaches the caller: a backend error, timeout or an
/// unreadable entry is a miss, and the function body runs.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Cached, args.into(), item.into()).into()
}

/// Write-through: runs the function, then stores its result under the key.
///
/// ```ignore
/// #[cache_put(prefix = "placement", ttl = "5m", key = placement_id)]
/// async fn update(&self, placement_id: Uuid, data: PlacementUpdate) -> Result<Placement, DbError> { /* … */ }
/// ```
///
/// An `Ok`, `Some` or plain result is stored under `{namespace}:{prefix}:{key}`
/// exactly as `#[cached]` with the same `prefix` and `key` would store it
/// (a `Placement` written here is a hit for a `#[cached]` function returning
/// `Option<Placement>`), and any lease on the key is destroyed, so a load
/// that read the old row cannot write it back afterwards. `None` invalidates
/// the key; an `Err` changes nothing.
///
/// Options, each as for [`cached`]: `prefix` and `ttl` (required; a run-time
/// `ttl` with `max_ttl`), `key`,
/// `cache`, `tags`, `name`, `stale`, `crate`. For example
/// `#[cache_put(prefix = "placement", ttl = "5m", key = id, tags = ["video:{video_id}"], stale = "1h")]`.
#[proc_macro_attribute]
pub fn cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Put, args.into(), item.into()).into()
}

/// Invalidation: runs the function, then, if it succeeded, removes entries.
///
/// ```ignore
/// #[cache_evict(keys = ["placement:{placement_id}", "video:{video_id}:placements"])]
/// async fn delete(&self, placement_id: Uuid, video_id: Uuid) -> Result<(), DbError> { /* … */ }
/// ```
///
/// | option | removes |
/// | --- | --- |
/// | `keys = ["placement:{id}"]` | those keys (relative to the namespace), and their leases |
/// | `patterns = ["video:{video_id}:*"]` | every key matching the glob (SCAN + UNLINK in batches on Redis); parameter values are escaped, so they match only themselves |
/// | `prefixes = ["placements"]` | every key of a `#[cached]` prefix, and the prefix's own key (a function without key parameters) |
/// | `tags = ["video:{video_id}"]` | every entry cached with that tag |
/// | `of = [Self::get_by_id(placement_id)]` | the entries of those calls of `#[cached]` functions (their `_key` companions), checked at compile time |
/// | `cache = <expr>`, `crate = "…"` | as for [`cached`] |
///
/// Placeholders must name parameters (checked at compile time). For a
/// `Result` the entries are removed only after `Ok`; the removal destroys
/// leases, so loads in flight cannot store what they read before the change.
/// A failed removal is logged and counted, and the result is returned as is.
#[proc_macro_attribute]
pub fn cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Evict, args.into(), item.into()).into()
}

fn run(
    kind: Kind,
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    // `#[cached]` on an impl block: the companions of its methods.
    if kind == Kind::Cached
        && let Ok(imp) = syn::parse2::<syn::ItemImpl>(item.clone())
    {
        return companions::impl_block(args, imp);
    }
    let (args, emit) = companions::strip_marker(args);
    let mut errors = Errors::default();
    // Phase 1, parse: the options, then the function.
    let raw = match syn::parse2::<RawArgs>(args) {
        Ok(raw) => Some(raw),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let func = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new(
                proc_macro2::Span::call_site(),
                format!(
                    "#[{}] goes on an `async fn` (a free function or a method taking `&self`)",
                    kind.name()
                ),
            );
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    let args = match raw {
        Some(raw) => {
            let args = Args::from_raw(raw, kind, &mut errors);
            valid::required(kind, &args, &mut errors);
            args
        }
        None => Args::default(),
    };
    // Phase 2, validate: the function, and the options against it.
    let info = func::analyse(&func, kind, &mut errors);
    let templates = valid::validate(kind, &args, &func, info.as_ref(), &mut errors);
    // Phase 3, expand; on any error, the fallback.
    match (errors.combined(), info) {
        (None, Some(info)) => expand::expand(expand::Plan {
            kind,
            func,
            info,
            args,
            templates,
            emit,
        }),
        (err, _) => fallback::fallback(func, err, emit),
    }
}
