//! Turns a checked `async fn` into its wrapper plus the uncached twin.
//! Nothing here parses again or reports user errors; `attr`, `func` and the
//! template checks have done that.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Expr, FnArg, Ident, ItemFn, LitStr, Pat};

use crate::Templates;
use crate::attr::{Args, KeySpec, Kind};
use crate::duration::TtlSpec;
use crate::func::{FnInfo, Shape};
use crate::template::Piece;

/// Everything the expansion needs, all checked.
pub(crate) struct Plan {
    pub(crate) kind: Kind,
    pub(crate) func: ItemFn,
    pub(crate) info: FnInfo,
    pub(crate) args: Args,
    pub(crate) templates: Templates,
    /// What to emit: the method, its twin and companions, or a part.
    pub(crate) emit: crate::companions::Emit,
}

/// What every expansion shares: names, paths and the twin.
struct Parts {
    p: TokenStream,
    krate: syn::Path,
    call: TokenStream,
    twin: TokenStream,
    wrapper_attrs: Vec<syn::Attribute>,
    wrapper_sig: syn::Signature,
    vis: syn::Visibility,
    cache_expr: TokenStream,
}

pub(crate) fn expand(plan: Plan) -> TokenStream {
    use crate::companions::Emit;
    let parts = parts(&plan);
    // In a trait impl neither the twin nor the companions can be members:
    // `#[cached]` on the impl block copies the method into an inherent impl
    // of the type, where only they are emitted.
    let method = (plan.emit != Emit::Companions).then(|| {
        let body = match plan.kind {
            Kind::Cached => cached_body(&plan, &parts),
            Kind::Put => put_body(&plan, &parts),
            Kind::Evict => evict_body(&plan, &parts),
        };
        let Parts {
            wrapper_attrs,
            wrapper_sig,
            vis,
            ..
        } = &parts;
        quote! {
            #(#wrapper_attrs)*
            #[allow(clippy::redundant_closure, clippy::used_underscore_binding)]
            #vis #wrapper_sig {
                #body
            }
        }
    });
    let (twin, companions) = if plan.emit == Emit::Method {
        (TokenStream::new(), TokenStream::new())
    } else {
        (parts.twin.clone(), companions(&plan, &parts))
    };
    quote! {
        #method
        #twin
        #companions
    }
}

/// The typed companions of a `#[cached]` function (not a batch):
/// `{name}_key`, `{name}_invalidate`, `{name}_prime` and `{name}_refresh`,
/// so that callers name the entry of a call by the function and its
/// arguments rather than by a key written out by hand.
//
// Input:
//     #[cached(prefix = "placement", ttl = "5m", key = id)]
//     pub async fn get(&self, id: u64) -> Result<Option<P>, E> { body }
// Output (besides the method and its twin):
//     pub fn get_key(id: &u64) -> String { KeyBuilder::new("", "placement").part(&(id)).finish() }
//     pub async fn get_invalidate(&self, id: &u64) { evict(cache, &[full key], &[], &[]).await }
//     pub async fn get_prime(&self, id: &u64, value: &P) { (write-through of value) }
//     pub async fn get_refresh(&self, id: u64) -> Result<Option<P>, E> { (as #[cache_put] of the twin) }
fn companions(plan: &Plan, parts: &Parts) -> TokenStream {
    if plan.kind != Kind::Cached || plan.templates.batch.is_some() {
        return TokenStream::new();
    }
    let Plan {
        func, info, args, ..
    } = plan;
    let Parts { p, krate, vis, .. } = parts;
    let name = &func.sig.ident;
    let prefix = args.prefix.as_ref().map(LitStr::value).unwrap_or_default();
    let generics = &func.sig.generics;
    let typed: Vec<(&Ident, &syn::Type)> = func
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) => Some((&pi.ident, &*pt.ty)),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    let by_ref: Vec<TokenStream> = typed.iter().map(|(i, ty)| quote!(#i: &#ty)).collect();
    let names: Vec<&Ident> = typed.iter().map(|(i, _)| *i).collect();
    let receiver = info.has_self.then(|| quote!(&self,));
    let value_ty = &info.value_ty;
    let key_fn = format_ident!("{}_key", name);
    let invalidate_fn = format_ident!("{}_invalidate", name);
    let prime_fn = format_ident!("{}_prime", name);
    let refresh_fn = format_ident!("{}_refresh", name);
    let this = if info.has_self {
        quote!(Self::)
    } else {
        TokenStream::new()
    };
    let call_key = quote!(#this #key_fn(#(#names),*));
    let key_doc = format!(
        " The key `{name}` caches the value of these arguments under, relative to the cache's \
         namespace: what `Cache::get` and `Cache::invalidate` take."
    );
    let invalidate_doc = format!(
        " Removes the entry of `{name}` for these arguments, and destroys its lease (a load of \
         it in flight does not store). Retried until it lands, as `#[cache_evict]`."
    );
    // The primed value's parameter: `value`, unless the function has one
    // of that name (it would be bound twice, a compile error at the
    // attribute).
    let value_param = if names.iter().any(|n| *n == "value") {
        format_ident!("__cached_value")
    } else {
        format_ident!("value")
    };
    let prime_doc = format!(
        " Stores `{value_param}` as the entry of `{name}` for these arguments without calling \
         it: a write-through (a load of it in flight does not store)."
    );
    let refresh_doc = format!(
        " Calls `{name}` without reading the cache and replaces its entry with what it returns \
         (an error changes nothing; a value it would not keep removes the entry): an admin's \
         \"refresh\", or after a change the cache did not see. It loads under the entry's lease \
         (`CallMode::Refresh`), so a write-through or an eviction that completes meanwhile wins; \
         when it cannot store (no lease within `wait`, the breaker open, a failed write) it \
         removes the entry instead, as a write-through that did not land does. Returns what \
         the function returned."
    );
    // Built without the checks the method's own key and tags make: a part
    // that is not a `KeyPart` is reported there, once.
    let key_soft = soft_parts(
        &key_part_exprs(plan),
        quote!(#p::KeyBuilder::new("", #prefix)),
        p,
    );
    let cache_expr = &parts.cache_expr;
    let tags: Vec<TokenStream> = plan
        .templates
        .tags
        .iter()
        .map(|(lit, pieces)| {
            let parts = template_part_exprs(lit, pieces);
            soft_parts(&parts, quote!(#p::tag(__cached_cache)), p)
        })
        .collect();
    let tags = quote!([#(#tags),*]);
    let site = site(args, &info.params, p, &info.value_ty);
    let put = quote! {{
        #[allow(unused_imports)]
        use #p::{CachePut as _, PlainPut as _};
        (&&#p::Runner::<#value_ty>::NEW)
            .put(__cached_cache, &__CACHED_SITE, __cached_key, ::core::option::Option::Some(#value_param), __cached_tags, ::core::option::Option::None)
            .await;
    }};
    let refresh_sig = {
        let mut sig = parts.wrapper_sig.clone();
        sig.ident = refresh_fn.clone();
        sig
    };
    let with_outcome_fn = format_ident!("{}_with_outcome", name);
    let with_outcome_sig = {
        let mut sig = parts.wrapper_sig.clone();
        sig.ident = with_outcome_fn;
        let ret = match &sig.output {
            syn::ReturnType::Type(_, ty) => quote!(#ty),
            syn::ReturnType::Default => quote!(()),
        };
        sig.output = syn::parse_quote!(-> (#ret, ::core::option::Option<#krate::Outcome>));
        sig
    };
    let with_outcome_doc = format!(
        " `{name}`, and what it did: a hit, a load, a shared load... (`None`: the cache was \
         not reached, as when the function is not cacheable)."
    );
    let method_call = if info.has_self {
        quote!(self.#name(#(#names),*))
    } else {
        quote!(#name(#(#names),*))
    };
    // The function itself, in a refresh scope: it reads nothing, loads
    // under the key's lease and replaces the entry, so an eviction or a
    // write-through that completes while it loads (which destroys the
    // lease) is not overwritten by what it read before. Calling the
    // function without the cache and writing its result through did
    // overwrite it: the stale-set race.
    let refresh_body = quote! {
        #krate::with_mode(#krate::CallMode::Refresh, #method_call).await
    };
    quote! {
        #[doc = #key_doc]
        #[allow(dead_code, unused_variables, clippy::all, clippy::pedantic)]
        #vis fn #key_fn #generics (#(#by_ref),*) -> ::std::string::String {
            #[allow(unused_imports)]
            use #p::hashed;
            #key_soft
        }

        #[doc = #invalidate_doc]
        #[allow(dead_code, unused_variables, clippy::all, clippy::pedantic)]
        #vis async fn #invalidate_fn #generics (#receiver #(#by_ref),*) {
            #cache_expr
            let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
            let __cached_keys = [__cached_cache.full_key(&#call_key)];
            #p::evict(__cached_cache, &__cached_keys, &[], &[]).await;
        }

        #[doc = #prime_doc]
        #[allow(dead_code, unused_variables, clippy::all, clippy::pedantic)]
        #vis async fn #prime_fn #generics (#receiver #(#by_ref,)* #value_param: &#value_ty) {
            #site
            #cache_expr
            let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
            let __cached_key = __cached_cache.full_key(&#call_key);
            let __cached_tags: &[::std::string::String] = &#tags;
            #put
        }

        #[doc = #refresh_doc]
        #[allow(dead_code, clippy::all, clippy::pedantic)]
        #vis #refresh_sig {
            #refresh_body
        }

        #[doc = #with_outcome_doc]
        #[allow(dead_code, clippy::all, clippy::pedantic)]
        #vis #with_outcome_sig {
            #krate::with_outcome(#method_call).await
        }
    }
}

fn parts(plan: &Plan) -> Parts {
    let Plan {
        func, info, args, ..
    } = plan;
    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::cached_runtime));
    let p = quote!(#krate::__private);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let fn_name = &sig.ident;
    let twin_name = format_ident!("{}_uncached", fn_name);

    // The twin: the original body under `{name}_uncached`.
    let mut twin_sig = sig.clone();
    twin_sig.ident = twin_name.clone();
    let twin_attrs = attrs.iter().filter(|a| !a.path().is_ident("doc"));
    let twin_doc = format!(
        " `{fn_name}` without the cache: runs the function body, neither reading nor writing the cache. \
         For callers that must see the source of truth."
    );
    // A parameter the attribute uses (in a key, a template, `cache = conn`)
    // is used, even if the body does not read it: keep the twin free of an
    // unused-variable warning that the user did not cause.
    let mut block = block.clone();
    for ident in used_by_attribute(plan) {
        block.stmts.insert(0, syn::parse_quote!(let _ = &#ident;));
    }
    let twin = quote! {
        #[doc = #twin_doc]
        #(#twin_attrs)*
        #vis #twin_sig #block
    };

    // The wrapper passes every argument on by value, so `mut` on a parameter
    // belongs to the twin's body only.
    let mut wrapper_sig = sig.clone();
    for arg in &mut wrapper_sig.inputs {
        if let FnArg::Typed(pt) = arg
            && let Pat::Ident(pi) = &mut *pt.pat
        {
            pi.mutability = None;
        }
    }

    let params = &info.params;
    let call = if info.has_self {
        quote!(self.#twin_name(#(#params),*))
    } else {
        quote!(#twin_name(#(#params),*))
    };
    // Bound with `let` first, so a temporary in the expression
    // (`cache = self.cache()`) lives as long as the call.
    let cache_expr = match &args.cache {
        Some(e) => quote_spanned!(e.span()=> let __cached_cache_src = &(#e);),
        None => quote_spanned!(fn_name.span()=> let __cached_cache_src = &self.cache;),
    };
    Parts {
        p,
        krate,
        call,
        twin,
        wrapper_attrs: attrs.clone(),
        wrapper_sig,
        vis: vis.clone(),
        cache_expr,
    }
}

/// The parameters the attribute itself reads: in key expressions, in
/// templates, in `cache = ...`.
fn used_by_attribute(plan: &Plan) -> Vec<Ident> {
    let params = &plan.info.params;
    let mut found = Vec::new();
    if let Some(KeySpec::Expr(e)) = &plan.args.key {
        crate::valid::params_in(e, params, &mut found);
    }
    if let Some(e) = &plan.args.cache {
        crate::valid::params_in(e, params, &mut found);
    }
    for call in &plan.args.of {
        for arg in &call.args {
            crate::valid::params_in(arg, params, &mut found);
        }
    }
    let t = &plan.templates;
    let templates = t
        .key
        .iter()
        .chain(&t.tags)
        .chain(&t.keys)
        .chain(&t.patterns)
        .chain(&t.prefixes);
    for (_, pieces) in templates {
        for piece in pieces {
            if let Piece::Param(name) = piece
                && let Some(ident) = params.iter().find(|p| *p == name)
                && !found.contains(ident)
            {
                found.push(ident.clone());
            }
        }
    }
    found
}

/// What a `ttl` given as an expression is.
enum RunTtl<'a> {
    /// A closure, or a path that is not a parameter: a function of the
    /// stored value, or a constant `Duration` (told apart by its type).
    Rule(&'a Expr),
    /// Anything else (a parameter, `self.ttl`, a call): a `Duration`
    /// evaluated when the function is called.
    PerCall(&'a Expr),
}

fn run_ttl<'a>(args: &'a Args, params: &[Ident]) -> Option<RunTtl<'a>> {
    let Some(TtlSpec::Run(e)) = &args.ttl else {
        return None;
    };
    Some(match e {
        Expr::Closure(_) => RunTtl::Rule(e),
        Expr::Path(path)
            if path.qself.is_none()
                && !path.path.get_ident().is_some_and(|i| params.contains(i)) =>
        {
            RunTtl::Rule(e)
        }
        _ => RunTtl::PerCall(e),
    })
}

/// `let __cached_ttl = ...;`: this call's TTL when the attribute computes
/// one per call (`None`: the call site's policy decides). Evaluated before
/// the body can move the parameters.
fn call_ttl(args: &Args, params: &[Ident], p: &TokenStream) -> TokenStream {
    match run_ttl(args, params) {
        Some(RunTtl::PerCall(e)) => quote! {
            let __cached_ttl: ::core::option::Option<#p::Duration> =
                ::core::option::Option::Some(#p::call_ttl(#e));
        },
        _ => quote! {
            let __cached_ttl: ::core::option::Option<#p::Duration> = ::core::option::Option::None;
        },
    }
}

/// `static __CACHED_SITE: Site = ...;`
fn site(args: &Args, params: &[Ident], p: &TokenStream, value_ty: &syn::Type) -> TokenStream {
    let prefix = args.prefix.as_ref().map(LitStr::value).unwrap_or_default();
    let name = args
        .name
        .as_ref()
        .map_or_else(|| prefix.clone(), LitStr::value);
    let ms = |t: &Option<crate::duration::Ttl>, default: TokenStream| match t {
        Some(t) => {
            let ms = t.millis;
            quote!(#p::Duration::from_millis(#ms))
        }
        None => default,
    };
    // A run-time TTL: the site's TTL is its bound.
    let ttl = match &args.ttl {
        Some(TtlSpec::Fixed(t)) => {
            let ms = t.millis;
            quote!(#p::Duration::from_millis(#ms))
        }
        _ => ms(&args.max_ttl, quote!(#p::Duration::ZERO)),
    };
    // Only what the attribute sets; every default is the runtime's.
    let mut policy = quote!(#p::Policy::new(#ttl));
    if let Some(RunTtl::Rule(expr)) = run_ttl(args, params) {
        // A closure gets its parameter type from `ttl_fn`'s bound; a path
        // is told apart (a function or a `Duration`) by `TtlRule`.
        let call = if matches!(expr, Expr::Closure(_)) {
            quote_spanned!(expr.span()=> #p::ttl_fn(#expr, __cached_v))
        } else {
            quote_spanned!(expr.span()=> #p::ttl_rule::<#value_ty, _>(#expr, __cached_v))
        };
        policy.extend(quote! {
            .ttl_of(|__cached_any: &dyn ::core::any::Any| {
                match __cached_any.downcast_ref::<#value_ty>() {
                    ::core::option::Option::Some(__cached_v) => #call,
                    ::core::option::Option::None => #p::Duration::MAX,
                }
            })
        });
    }
    if let Some(t) = &args.soft_timeout {
        let ms = t.millis;
        policy.extend(quote!(.soft_timeout(#p::Duration::from_millis(#ms))));
    }
    if args.cache_none.is_some() {
        let d = ms(&args.cache_none, TokenStream::new());
        policy.extend(quote!(.cache_none(#d)));
    }
    if let Some(lock) = &args.lock {
        let lock = lock.value;
        policy.extend(quote!(.lock(#lock)));
    }
    for (setter, given) in [
        ("lease", &args.lease),
        ("wait", &args.wait),
        ("stale", &args.stale),
    ] {
        if given.is_some() {
            let setter = format_ident!("{setter}");
            let d = ms(given, TokenStream::new());
            policy.extend(quote!(.#setter(#d)));
        }
    }
    if let Some(b) = beta(args) {
        policy.extend(quote!(.early_refresh(#b)));
    }
    if let Some((rate, _)) = args.audit {
        policy.extend(quote!(.audit(#rate)));
    }
    if let Some(pred) = &args.keep_if {
        let expr = &pred.expr;
        // The user's closure or function, called on the stored type: a
        // wrong parameter or return type is an error at their tokens.
        let call = quote_spanned!(expr.span()=> #p::decide(#expr, __cached_v));
        let decide = if pred.keep { call } else { quote!(!#call) };
        policy.extend(quote! {
            .keep_if(|__cached_any: &dyn ::core::any::Any| {
                match __cached_any.downcast_ref::<#value_ty>() {
                    ::core::option::Option::Some(__cached_v) => #decide,
                    ::core::option::Option::None => true,
                }
            })
        });
    }
    quote! {
        static __CACHED_SITE: #p::Site = #p::Site::new(#name, #prefix, #policy);
    }
}

fn beta(args: &Args) -> Option<f64> {
    args.early_refresh
        .as_ref()
        .map(|(b, _)| *b)
        .filter(|b| *b > 0.0)
}

/// `let __cached_key = ...;` for `#[cached]` and `#[cache_put]`.
fn key(plan: &Plan, p: &TokenStream) -> TokenStream {
    let (prelude, chain) = key_parts(plan, p);
    quote! {
        let __cached_key = {
            #[allow(unused_imports)]
            use #p::hashed;
            #prelude
            #p::key(__cached_cache, &__CACHED_SITE) #chain .finish()
        };
    }
}

/// A key's parts: statements binding them, and the `.part(..)` chain.
fn key_parts(plan: &Plan, p: &TokenStream) -> (TokenStream, TokenStream) {
    match (&plan.args.key, &plan.templates.key) {
        (Some(KeySpec::Template(_)), Some((lit, pieces))) => {
            (TokenStream::new(), chain(lit, pieces))
        }
        (Some(KeySpec::Expr(e)), _) => {
            // A tuple is taken apart, each element borrowed: `(id, lang)` as
            // a value would move `lang` before the function gets it. It
            // makes the same key a tuple part would (`id:lang`).
            let elems: Vec<&syn::Expr> = match e {
                syn::Expr::Tuple(t) if !t.elems.is_empty() => t.elems.iter().collect(),
                other => vec![other],
            };
            // Each part is bound to a local first, so temporaries in it
            // (`hashed(&q)`) live until the key is finished; the local is
            // named with the element's span, so a part that is not a
            // `KeyPart` is reported at the user's expression.
            let names: Vec<Ident> = elems
                .iter()
                .enumerate()
                .map(|(i, e)| Ident::new(&format!("__cached_part{i}"), e.span()))
                .collect();
            let bind = elems.iter().zip(&names).map(|(e, name)| {
                quote_spanned! {e.span()=>
                    let #name = &(#e);
                    #p::check::key_part(#name);
                }
            });
            (quote!(#(#bind)*), quote!(#(.part(#names))*))
        }
        _ => {
            let chain = plan
                .info
                .params
                .iter()
                .map(|ident| quote_spanned!(ident.span()=> .part(&#ident)));
            (TokenStream::new(), chain.collect())
        }
    }
}

/// One piece of a key in the order written: literal text, or an
/// expression whose value is a key part.
enum KeyPiece {
    Literal(String),
    Part(TokenStream),
}

/// The pieces of a call's key (see [`key_parts`]).
fn key_part_exprs(plan: &Plan) -> Vec<KeyPiece> {
    match (&plan.args.key, &plan.templates.key) {
        (Some(KeySpec::Template(_)), Some((lit, pieces))) => template_part_exprs(lit, pieces),
        (Some(KeySpec::Expr(e)), _) => {
            let elems: Vec<&syn::Expr> = match e {
                syn::Expr::Tuple(t) if !t.elems.is_empty() => t.elems.iter().collect(),
                other => vec![other],
            };
            elems
                .into_iter()
                .map(|e| KeyPiece::Part(quote_spanned!(e.span()=> &(#e))))
                .collect()
        }
        _ => plan
            .info
            .params
            .iter()
            .map(|ident| KeyPiece::Part(quote!(&#ident)))
            .collect(),
    }
}

/// The pieces of a checked template.
fn template_part_exprs(lit: &LitStr, pieces: &[Piece]) -> Vec<KeyPiece> {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Literal(text) => KeyPiece::Literal(text.clone()),
            Piece::Param(name) => {
                let ident = Ident::new(name, lit.span());
                KeyPiece::Part(quote!(&#ident))
            }
        })
        .collect()
}

/// A key from `start` and `pieces`, each part added only if its type is a
/// `KeyPart` (autoref specialization): the function's own key has already
/// required it, with the worded error, so a second one here would only
/// repeat it.
fn soft_parts(pieces: &[KeyPiece], start: TokenStream, p: &TokenStream) -> TokenStream {
    let steps = pieces.iter().map(|piece| match piece {
        KeyPiece::Literal(text) => quote!(let __cached_b = __cached_b.literal(#text);),
        KeyPiece::Part(expr) => quote! {
            let __cached_b = {
                #[allow(unused_imports)]
                use #p::{PushPart as _, SkipPart as _};
                (&&#p::PartOf(#expr)).push_to(__cached_b)
            };
        },
    });
    quote! {{
        let __cached_b = #start;
        #(#steps)*
        __cached_b.finish()
    }}
}

/// The `.literal(..)` / `.part(..)` chain of a checked template.
fn chain(lit: &LitStr, pieces: &[Piece]) -> TokenStream {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Literal(text) => quote!(.literal(#text)),
            Piece::Param(name) => {
                let ident = Ident::new(name, lit.span());
                quote_spanned!(lit.span()=> .part(&#ident))
            }
        })
        .collect()
}

/// `[String; N]` of full keys from templates, each started by `start`.
fn full_keys(list: &[(LitStr, Vec<Piece>)], start: &TokenStream, suffix: &str) -> TokenStream {
    let items = list.iter().map(|(lit, pieces)| {
        let chain = chain(lit, pieces);
        let suffix = (!suffix.is_empty()).then(|| quote!(.literal(#suffix)));
        quote!(#start #chain #suffix .finish())
    });
    quote!([#(#items),*])
}

/// The value type check, spanned at the user's type.
fn value_check(info: &FnInfo, p: &TokenStream) -> TokenStream {
    let value_ty = &info.value_ty;
    // A plain value, or a `Result`'s, that is a `Result` or an `Option`
    // behind an alias would be cached whole, errors and `None` included.
    let shape = match info.shape {
        Shape::Plain => Some(quote!(__cached_shape)),
        Shape::Result => Some(quote!(__cached_ok_shape)),
        Shape::Option | Shape::ResultOption => None,
    };
    let shape = shape.map(|method| {
        quote_spanned! {value_ty.span()=>
            {
                #[allow(unused_imports)]
                use #p::check::{AliasedOption as _, AliasedShape as _, PlainShape as _};
                #p::check::written((&&#p::check::ShapeProbe::<#value_ty>::NEW).#method());
            }
        }
    });
    quote_spanned! {value_ty.span()=>
        #p::check::cacheable::<#value_ty>();
        #shape
    }
}

// Input:
//     #[cached(prefix = "placement", ttl = "5m", key = id)]
//     pub async fn get(&self, id: u64) -> Result<Option<P>, E> { body }
// Output:
//     pub async fn get(&self, id: u64) -> Result<Option<P>, E> {
//         check::cacheable::<P>();                       // spanned at `P`
//         static __CACHED_SITE: Site = Site { name, prefix, policy };
//         let __cached_cache = as_cache(&self.cache);
//         let __cached_key = key(cache, &SITE).part(&(id)).finish();
//         let __cached_tags = [/* tag templates */];
//         (&&Runner::<P>::NEW).cached(cache, &SITE, key,
//             move || self.get_uncached(id), None, __cached_tags).await
//     }
//     /// (doc)
//     pub async fn get_uncached(&self, id: u64) -> Result<Option<P>, E> { body }
fn cached_body(plan: &Plan, parts: &Parts) -> TokenStream {
    let Plan {
        info,
        args,
        templates,
        ..
    } = plan;
    if let Some(batch) = &templates.batch {
        return batch_body(plan, parts, batch);
    }
    let Parts {
        p,
        krate,
        call,
        cache_expr,
        ..
    } = parts;
    let params = &info.params;
    let value_ty = &info.value_ty;
    let check = value_check(info, p);
    let site = site(args, &info.params, p, value_ty);
    let key = key(plan, p);
    let tags = full_keys(&templates.tags, &quote!(#p::tag(__cached_cache)), "");
    let ttl = call_ttl(args, &info.params, p);

    let lifted = matches!(info.shape, Shape::Plain | Shape::Option);
    // `hard_timeout`: the body bounded (Result shapes only, checked).
    let bound = |body: TokenStream| match &args.hard_timeout {
        Some(t) => {
            let ms = t.millis;
            quote!(#p::hard_timeout(__cached_cache, &__CACHED_SITE, #p::Duration::from_millis(#ms), #body))
        }
        None => body,
    };
    let bound_refresh = |body: TokenStream| match &args.hard_timeout {
        Some(t) => {
            let ms = t.millis;
            quote!(#p::hard_timeout_refresh(
                ::core::clone::Clone::clone(__cached_cache),
                &__CACHED_SITE,
                #p::Duration::from_millis(#ms),
                #body
            ))
        }
        None => body,
    };
    let timeout_check = match (&args.hard_timeout, &info.error_ty) {
        (Some(t), Some(err_ty)) => {
            quote_spanned!(t.span=> #p::check::timeout_error::<#err_ty>();)
        }
        _ => TokenStream::new(),
    };

    // With a stale window or early refresh, a load may run after the caller
    // has returned, so it needs its own copies of `self` and the arguments.
    let background = args.stale.is_some() || beta(args).is_some() || args.audit.is_some();
    let (loader, refresh, refresh_checks) = if background {
        let twin_name = format_ident!("{}_uncached", plan.func.sig.ident);
        let cloned = params
            .iter()
            .map(|p| quote!(::core::clone::Clone::clone(&#p)));
        let fg_call = if info.has_self {
            quote!(self.#twin_name(#(#cloned),*))
        } else {
            quote!(#twin_name(#(#cloned),*))
        };
        let loader = if lifted {
            quote!(|| #p::infallible(#fg_call))
        } else {
            let fg_call = bound(fg_call);
            quote!(|| #fg_call)
        };
        let span = args
            .stale
            .as_ref()
            .map(|t| t.span)
            .or(args.early_refresh.as_ref().map(|(_, s)| *s))
            .or(args.audit.as_ref().map(|(_, s)| *s))
            .unwrap_or_else(Span::call_site);
        // Spanned like the check below, so a service that is not `Clone`
        // gets one worded error rather than two.
        let (this, bg_call) = if info.has_self {
            (
                quote_spanned!(span=> let __cached_this = #p::check::refresh_copy(self);),
                quote!(__cached_this.#twin_name(#(#params),*)),
            )
        } else {
            (TokenStream::new(), call.clone())
        };
        let finish = if lifted {
            quote!(::core::option::Option::Some(#bg_call.await))
        } else {
            quote!(#bg_call.await.ok())
        };
        let refreshing = bound_refresh(quote!(async move { #finish }));
        let refresh = quote! {
            ::core::option::Option::Some(&|| -> #p::Refresh<_> {
                #this
                #(let #params = ::core::clone::Clone::clone(&#params);)*
                ::std::boxed::Box::pin(#refreshing)
            })
        };
        let self_check = if info.has_self {
            quote_spanned!(span=> #p::check::refreshable_service::<Self>();)
        } else {
            TokenStream::new()
        };
        let arg_checks = params
            .iter()
            .map(|param| quote_spanned!(param.span()=> #p::check::refreshable_arg(&#param);));
        (loader, refresh, quote!(#self_check #(#arg_checks)*))
    } else {
        let loader = if lifted {
            quote!(move || #p::infallible(#call))
        } else {
            let call = bound(call.clone());
            quote!(move || #call)
        };
        (
            loader,
            quote!(::core::option::Option::None),
            TokenStream::new(),
        )
    };

    // An error that can be cloned goes to every caller who waited for the
    // failed load (one failure, one run of the source); `(&&Errors)`
    // resolves to the sharing impl only when the type allows it.
    let errors = error_sharing(info, lifted, p);
    // `(&&Runner).cached(..)` resolves to the caching impl when the value
    // type is cacheable, and to a plain call otherwise; the spanned check
    // above is then the one error the user sees, not a wall of bounds.
    let invoke = quote! {{
        #[allow(unused_imports)]
        use #p::{CacheRun as _, PlainRun as _};
        (&&#p::Runner::<#value_ty>::NEW)
            .cached(__cached_cache, &__CACHED_SITE, __cached_key, #loader, #refresh, #errors, __cached_tags, __cached_ttl)
            .await
    }};
    let result = if lifted {
        quote!(#p::into_ok(#invoke))
    } else {
        invoke
    };
    quote! {
        #check
        #timeout_check
        #refresh_checks
        #site
        #cache_expr
        let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
        #key
        let __cached_tags: &[::std::string::String] = &#tags;
        #ttl
        #result
    }
}

/// The sharing of a call site's errors with waiters: `Some` when the error
/// type is `Clone + Send + Sync + 'static` (resolved by autoref).
fn error_sharing(info: &FnInfo, lifted: bool, p: &TokenStream) -> TokenStream {
    match (&info.error_ty, lifted) {
        (Some(err_ty), false) => quote! {{
            #[allow(unused_imports)]
            use #p::{KeepErrors as _, ShareErrors as _};
            (&&#p::Errors::<#err_ty>::NEW).sharing()
        }},
        _ => quote!(::core::option::Option::None),
    }
}

// Input:
//     #[cached(prefix = "placement", ttl = "5m", batch)]
//     pub async fn get_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, P>, E> { body }
// Output:
//     pub async fn get_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, P>, E> {
//         check::cacheable::<P>();                       // spanned at `P`
//         static __CACHED_SITE: Site = ...;
//         let __cached_cache = as_cache(&self.cache);
//         (&&Runner::<P>::NEW).batch(cache, &SITE, batch_ids(&ids),
//             |id| key(cache, &SITE).part(id).finish(),
//             |id| Vec::from([/* tag templates, `ids` for `id` */]),
//             |missing| { let owned = <Vec<u64> as BatchIds>::from_ids(missing);
//                         async move { self.get_many_uncached(owned).await } },
//             errors).await
//     }
fn batch_body(plan: &Plan, parts: &Parts, batch: &crate::valid::BatchPlan) -> TokenStream {
    let Plan { info, args, .. } = plan;
    let Parts {
        p,
        krate,
        cache_expr,
        ..
    } = parts;
    let value_ty = &batch.value_ty;
    let check = quote_spanned! {value_ty.span()=>
        #p::check::cacheable::<#value_ty>();
    };
    let site = site(args, &info.params, p, value_ty);
    let ttl = call_ttl(args, &info.params, p);
    let ids = &batch.ids;
    // A borrowed collection (`&[u64]`) is read as it is, and the function
    // is called with a borrow of the owned one (`Vec<u64>`) made of the
    // ids to load.
    // A collection that is not one, or a map of other ids, is reported at
    // the type the user wrote.
    let ids_span = batch.ids_ty.span();
    let (ids_expr, pass) = match &batch.ids_ty {
        syn::Type::Reference(_) => (quote_spanned!(ids_span=> #ids), quote!(&__cached_owned)),
        _ => (quote_spanned!(ids_span=> &#ids), quote!(__cached_owned)),
    };
    let input = quote_spanned! {ids_span=>
        let #p::BatchInput {
            ids: __cached_ids,
            rebuild: __cached_rebuild,
        } = #p::batch_input(#ids_expr);
    };
    let map_span = info.value_ty.span();
    let batch_method = quote_spanned!(map_span=> batch);
    let await_batch = quote_spanned!(map_span=> .await);
    let runner = quote_spanned!(map_span=> (&&#p::Runner::<#value_ty>::NEW));
    // Each id's key and tags are made as a single call's: the `key` option
    // (or every parameter) and the tag templates, with the collection's
    // name standing for one id.
    let key = key(plan, p);
    let tags = full_keys(&plan.templates.tags, &quote!(#p::tag(__cached_cache)), "");
    let others: Vec<&Ident> = info.params.iter().filter(|param| *param != ids).collect();
    let twin_name = format_ident!("{}_uncached", plan.func.sig.ident);
    let args_in = info.params.iter().map(|param| {
        if param == ids {
            pass.clone()
        } else {
            quote!(#param)
        }
    });
    let call = if info.has_self {
        quote!(self.#twin_name(#(#args_in),*))
    } else {
        quote!(#twin_name(#(#args_in),*))
    };
    let lifted = matches!(info.shape, Shape::Plain | Shape::Option);
    let body = if lifted {
        quote!(#p::infallible(async move { #call.await }))
    } else {
        quote!(async move { #call.await })
    };
    let errors = error_sharing(info, lifted, p);
    let invoke = quote! {{
        #[allow(unused_imports)]
        use #p::{CacheBatch as _, PlainBatch as _};
        #runner
            .#batch_method(
                __cached_cache,
                &__CACHED_SITE,
                __cached_ids,
                |__cached_id| {
                    #[allow(unused_variables)]
                    let #ids = __cached_id;
                    #key
                    __cached_key
                },
                // Each id's tags, the collection's name standing for one id
                // as in its key.
                |__cached_id| {
                    #[allow(unused_variables)]
                    let #ids = __cached_id;
                    ::std::vec::Vec::<::std::string::String>::from(#tags)
                },
                // Called once per load, maybe more than once: each call
                // gets its own copies of the other arguments.
                |__cached_missing| {
                    let __cached_owned = __cached_rebuild(__cached_missing);
                    #(let #others = ::core::clone::Clone::clone(&#others);)*
                    #body
                },
                #errors,
                __cached_ttl,
            )
            #await_batch
    }};
    let result = if lifted {
        quote!(#p::into_ok(#invoke))
    } else {
        invoke
    };
    quote! {
        #check
        #site
        #cache_expr
        let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
        #ttl
        #input
        #result
    }
}

// Input:
//     #[cache_put(prefix = "placement", ttl = "5m", key = id)]
//     async fn update(&self, id: u64, data: D) -> Result<P, E> { body }
// Output:
//     async fn update(&self, id: u64, data: D) -> Result<P, E> {
//         (checks, site, cache, key and tags as for #[cached])
//         let __cached_result = self.update_uncached(id, data).await;
//         if let Ok(v) = &__cached_result { (&&Runner::<P>::NEW).put(.., Some(v), ..).await }
//         __cached_result
//     }
fn put_body(plan: &Plan, parts: &Parts) -> TokenStream {
    let Plan {
        info,
        args,
        templates,
        ..
    } = plan;
    let Parts {
        p,
        krate,
        call,
        cache_expr,
        ..
    } = parts;
    let check = value_check(info, p);
    let site = site(args, &info.params, p, &info.value_ty);
    let key = key(plan, p);
    let tags = full_keys(&templates.tags, &quote!(#p::tag(__cached_cache)), "");
    let store = store_result(info, p);
    let ttl = call_ttl(args, &info.params, p);
    quote! {
        #check
        #site
        #cache_expr
        let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
        #key
        let __cached_tags: &[::std::string::String] = &#tags;
        #ttl
        let __cached_result = #call.await;
        #store
        __cached_result
    }
}

/// Writes `__cached_result` through under `__cached_key`, as `#[cache_put]`
/// does: `Ok`, `Some` or a plain value stored, `None` invalidated, `Err`
/// nothing.
fn store_result(info: &FnInfo, p: &TokenStream) -> TokenStream {
    let value_ty = &info.value_ty;
    let put = |value: TokenStream| {
        quote! {{
            #[allow(unused_imports)]
            use #p::{CachePut as _, PlainPut as _};
            (&&#p::Runner::<#value_ty>::NEW)
                .put(__cached_cache, &__CACHED_SITE, __cached_key, #value, __cached_tags, __cached_ttl)
                .await;
        }}
    };
    let (some, none) = (
        put(quote!(::core::option::Option::Some(__cached_value))),
        put(quote!(::core::option::Option::None)),
    );
    match info.shape {
        Shape::Plain => quote!({ let __cached_value = &__cached_result; #some }),
        Shape::Option => quote! {
            match &__cached_result {
                ::core::option::Option::Some(__cached_value) => #some,
                ::core::option::Option::None => #none,
            }
        },
        Shape::Result => quote! {
            if let ::core::result::Result::Ok(__cached_value) = &__cached_result #some
        },
        Shape::ResultOption => quote! {
            match &__cached_result {
                ::core::result::Result::Ok(::core::option::Option::Some(__cached_value)) => #some,
                ::core::result::Result::Ok(::core::option::Option::None) => #none,
                ::core::result::Result::Err(_) => {}
            }
        },
    }
}

// Input:
//     #[cache_evict(keys = ["placement:{id}"], patterns = ["video:{vid}:*"])]
//     async fn delete(&self, id: u64, vid: u64) -> Result<(), E> { body }
// Output:
//     async fn delete(&self, id: u64, vid: u64) -> Result<(), E> {
//         let __cached_cache = as_cache(&self.cache);
//         let keys = [template(cache).literal("placement:").part(&id).finish()];
//         let patterns = [...]; let tags = [...];
//         let __cached_result = self.delete_uncached(id, vid).await;
//         if __cached_result.is_ok() { evict(cache, &keys, &patterns, &tags).await }
//         __cached_result
//     }
fn evict_body(plan: &Plan, parts: &Parts) -> TokenStream {
    let Plan {
        info, templates, ..
    } = plan;
    let Parts {
        p,
        krate,
        call,
        cache_expr,
        ..
    } = parts;
    let start = quote!(#p::template(__cached_cache));
    // A prefix is the key `{prefix}` (a function without key parameters)
    // and the pattern `{prefix}:*` (every other).
    let keys: Vec<(LitStr, Vec<Piece>)> = templates
        .keys
        .iter()
        .chain(&templates.prefixes)
        .cloned()
        .collect();
    let keys = full_keys(&keys, &start, "");
    // `of = [Self::get(id)]`: the key of that call, by its `_key`
    // companion, called with the user's arguments (so a wrong count or
    // type is an error at the user's tokens).
    let of = plan.args.of.iter().map(|call| {
        let mut path = match &*call.func {
            syn::Expr::Path(p) => p.path.clone(),
            _ => unreachable!("`of` takes calls of paths (checked when read)"),
        };
        if let Some(last) = path.segments.last_mut() {
            last.ident = format_ident!("{}_key", last.ident, span = last.ident.span());
        }
        let args = call.args.iter().map(|a| quote_spanned!(a.span()=> &(#a)));
        quote_spanned! {call.span()=>
            __cached_cache.full_key(&#path(#(#args),*))
        }
    });
    let mut patterns: Vec<(LitStr, Vec<Piece>)> = templates.patterns.clone();
    patterns.extend(templates.prefixes.iter().map(|(lit, pieces)| {
        let mut pieces = pieces.clone();
        pieces.push(Piece::Literal(":*".into()));
        (lit.clone(), pieces)
    }));
    let patterns = full_keys(&patterns, &quote!(#p::pattern(__cached_cache)), "");
    let tags = full_keys(&templates.tags, &quote!(#p::tag(__cached_cache)), "");
    let succeeded = match info.shape {
        Shape::Result | Shape::ResultOption => quote!(__cached_result.is_ok()),
        Shape::Plain | Shape::Option => quote!(true),
    };
    quote! {
        #cache_expr
        let __cached_cache: &#krate::Cache = #p::as_cache(__cached_cache_src);
        let __cached_keys: &[::std::string::String] = &{
            let mut __cached_all = ::std::vec::Vec::from(#keys);
            #(__cached_all.push(#of);)*
            __cached_all
        };
        let __cached_patterns: &[::std::string::String] = &#patterns;
        let __cached_tags: &[::std::string::String] = &#tags;
        let __cached_result = #call.await;
        if #succeeded {
            #p::evict(__cached_cache, __cached_keys, __cached_patterns, __cached_tags).await;
        }
        __cached_result
    }
}
