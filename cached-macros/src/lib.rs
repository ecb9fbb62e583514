//! The `#[cached]`, `#[cache_put]` and `#[cache_evict]` attributes. Depend on
//! `cached-runtime`, which re-exports them and provides everything the
//! expansions call.
//!
//! The crate is split by phase: `attr` parses the options, `func` checks the
//! function, `template` reads key templates, and `expand` generates code.
//! Errors from every phase are collected and reported together.

mod attr;
mod duration;
mod errors;
mod expand;
mod func;
mod template;

use proc_macro::TokenStream;
use quote::ToTokens as _;

use crate::attr::{Args, KeySpec, Kind, RawArgs, missing};
use crate::errors::Errors;
use crate::func::Shape;

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
/// | option | meaning |
/// | --- | --- |
/// | `prefix = "placement"` | **required.** The key prefix: keys are `{namespace}:{prefix}:{key}`. |
/// | `ttl = "5m"` or `ttl = 300` | **required.** How long a value is kept: a duration (`"30s"`, `"5m"`, `"1h 30m"`) or whole seconds. A small random jitter is added. |
/// | `key = <expr>` | The key part: any expression over the parameters whose value is a `KeyPart` (integers, strings, UUIDs, tuples of them, `hashed(&query)`). Default: every parameter but `self`, joined with `:`. |
/// | `key = "video:{video_id}"` | A key template; placeholders must name parameters (checked at compile time). `{{` and `}}` are literal braces. |
/// | `cache = <expr>` | Where the `Cache` is. Default `self.cache`; required on free functions (e.g. a `static CACHE: LazyLock<Cache>`). |
/// | `cache_none = "30s"` | Also cache `None` (negative caching), for this long. Only for `Option<T>` and `Result<Option<T>, E>` returns. |
/// | `name = "placements"` | The name in stats and metrics. Default: the prefix. |
/// | `crate = "path::to::cached_runtime"` | Where `cached-runtime` is, if renamed or re-exported. |
///
/// # Return types
///
/// `T` is cached. `Option<T>`: `None` is not cached unless `cache_none`.
/// `Result<T, E>`: only `Ok` is cached; an `Err` goes back to the caller
/// unchanged. `Result<Option<T>, E>` combines both. The value type must be
/// `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`.
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
/// Options: `prefix`, `ttl`, `key`, `cache`, `tags`, `stale`, `name`,
/// `crate`, as for [`cached`].
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
/// | `prefixes = ["placements"]` | every key of a `#[cached]` prefix |
/// | `tags = ["video:{video_id}"]` | every entry cached with that tag |
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
    let mut errors = Errors::default();
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
            let seen = |o: &str| args.seen.iter().any(|s| s == o);
            match kind {
                Kind::Cached | Kind::Put => {
                    if !seen("prefix") {
                        errors.push(missing(kind, "`prefix`", "prefix = \"...\""));
                    }
                    if !seen("ttl") {
                        errors.push(missing(kind, "`ttl`", "ttl = \"5m\""));
                    }
                }
                Kind::Evict => {
                    if !["keys", "patterns", "prefixes", "tags"]
                        .iter()
                        .any(|o| seen(o))
                    {
                        errors.push(missing(
                            kind,
                            "what to evict",
                            "keys = [\"placement:{placement_id}\"]",
                        ));
                    }
                }
            }
            args
        }
        None => Args::default(),
    };
    let info = func::analyse(&func, kind, &mut errors);

    let mut templates = Templates::default();
    if let Some(info) = &info {
        if let Some(none) = &args.cache_none
            && matches!(info.shape, Shape::Plain | Shape::Result)
        {
            errors.push(syn::Error::new(
                none.span,
                "`cache_none` is for functions that return `Option<T>` or `Result<Option<T>, E>`; \
                 this one never returns `None`",
            ));
        }
        if args.lock.as_ref().is_some_and(|l| !l.value) {
            for (what, given) in [("lease", &args.lease), ("wait", &args.wait)] {
                if let Some(t) = given {
                    errors.push(syn::Error::new(
                        t.span,
                        format!("`{what}` has no effect with `lock = false`: there is no lease to hold or wait for"),
                    ));
                }
            }
        }
        if kind == Kind::Cached
            && (args.stale.is_some() || args.early_refresh.as_ref().is_some_and(|(b, _)| *b > 0.0))
        {
            for arg in &func.sig.inputs {
                if let syn::FnArg::Typed(pt) = arg
                    && borrows(&pt.ty)
                {
                    errors.push(syn::Error::new_spanned(
                        &pt.ty,
                        "with `stale` or `early_refresh`, arguments must be owned (e.g. `String` for `&str`): \
                         a background refresh runs after the caller has returned, with its own copies",
                    ));
                }
            }
        }
        if !info.has_self && args.cache.is_none() {
            errors.push(syn::Error::new(
                func::name_span(&func),
                format!(
                    "#[{}] on a free function needs `cache = <expr>`: `{}` has no `self.cache` \
                     (e.g. `cache = CACHE` with `static CACHE: LazyLock<Cache>`)",
                    kind.name(),
                    func.sig.ident
                ),
            ));
        }
        let mut check = |lit: &syn::LitStr, glob: bool| {
            check_template(lit, glob, info, &func.sig.ident, &mut errors)
        };
        if let Some(KeySpec::Template(lit)) = &args.key {
            templates.key = check(lit, false);
        }
        templates.tags = args.tags.iter().filter_map(|l| check(l, false)).collect();
        templates.keys = args.keys.iter().filter_map(|l| check(l, false)).collect();
        templates.patterns = args
            .patterns
            .iter()
            .filter_map(|l| check(l, true))
            .collect();
        templates.prefixes = args
            .prefixes
            .iter()
            .filter_map(|l| check(l, false))
            .collect();
    }

    match (errors.combined(), info) {
        (None, Some(info)) => expand::expand(expand::Plan {
            kind,
            func,
            info,
            args,
            templates,
        }),
        (err, _) => with_errors(func, err),
    }
}

/// Parses a template and checks its placeholders against the parameters.
fn check_template(
    lit: &syn::LitStr,
    glob: bool,
    info: &func::FnInfo,
    fn_name: &syn::Ident,
    errors: &mut Errors,
) -> Option<(syn::LitStr, Vec<template::Piece>)> {
    let pieces = match template::parse(lit) {
        Ok(pieces) => pieces,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if let Err(why) = template::check_segments(&lit.value(), &pieces, glob) {
        errors.push(syn::Error::new(lit.span(), why));
        return None;
    }
    let mut ok = true;
    for piece in &pieces {
        if let template::Piece::Param(name) = piece
            && !info.params.iter().any(|p| p == name)
        {
            let list = info
                .params
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let list = if list.is_empty() {
                "none".to_owned()
            } else {
                list
            };
            errors.push(syn::Error::new(
                lit.span(),
                format!("template names `{{{name}}}`, which is not a parameter of `{fn_name}`; parameters: {list}"),
            ));
            ok = false;
        }
    }
    ok.then(|| (lit.clone(), pieces))
}

/// Every checked template of an attribute, with the literal it came from.
#[derive(Default)]
pub(crate) struct Templates {
    pub(crate) key: Option<(syn::LitStr, Vec<template::Piece>)>,
    pub(crate) tags: Vec<(syn::LitStr, Vec<template::Piece>)>,
    pub(crate) keys: Vec<(syn::LitStr, Vec<template::Piece>)>,
    pub(crate) patterns: Vec<(syn::LitStr, Vec<template::Piece>)>,
    pub(crate) prefixes: Vec<(syn::LitStr, Vec<template::Piece>)>,
}

/// Whether a type holds a borrow (a reference or a named lifetime).
fn borrows(ty: &syn::Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if l.ident != "static" {
                self.0 = true;
            }
        }
    }
    let mut finder = Finder(false);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}

/// The function unchanged, with the errors at the top of its body: callers
/// still resolve, so the user sees only the errors that matter.
fn with_errors(mut func: syn::ItemFn, err: Option<syn::Error>) -> proc_macro2::TokenStream {
    if let Some(err) = err {
        let tokens = err.to_compile_error();
        func.block
            .stmts
            .insert(0, syn::Stmt::Item(syn::Item::Verbatim(tokens)));
    }
    func.into_token_stream()
}
