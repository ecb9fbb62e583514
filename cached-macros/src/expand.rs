//! Turns a checked `async fn` into a cache-aside wrapper plus its uncached
//! twin. Nothing here parses again or reports user errors; `attr` and `func`
//! have done that.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{FnArg, Ident, ItemFn, Pat};

use crate::attr::{CachedArgs, KeySpec};
use crate::func::{FnInfo, Shape};
use crate::template::Piece;

/// Everything the expansion needs, all checked.
pub(crate) struct Plan {
    pub(crate) func: ItemFn,
    pub(crate) info: FnInfo,
    pub(crate) args: CachedArgs,
    /// The key template's pieces, when the key is a template.
    pub(crate) template: Option<Vec<Piece>>,
}

// Input:
//     #[cached(prefix = "placement", ttl = "5m", key = id)]
//     pub async fn get(&self, id: u64) -> Result<Option<P>, E> { body }
// Output:
//     pub async fn get(&self, id: u64) -> Result<Option<P>, E> {
//         check::cacheable::<P>();                       // spanned at `P`
//         static SITE: Site = Site { name, prefix, ttl, none_ttl };
//         let cache = as_cache(&self.cache);
//         let key = key(cache, &SITE).part(&(id)).finish();
//         cached_option(cache, &SITE, key, move || self.get_uncached(id)).await
//     }
//     /// (doc)
//     pub async fn get_uncached(&self, id: u64) -> Result<Option<P>, E> { body }
pub(crate) fn expand(plan: Plan) -> TokenStream {
    let Plan {
        func,
        info,
        args,
        template,
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

    let mut twin_sig = sig.clone();
    twin_sig.ident = twin_name.clone();
    let twin_attrs = attrs.iter().filter(|a| !a.path().is_ident("doc"));
    let twin_doc = format!(
        " `{fn_name}` without the cache: runs the function body, neither reading nor writing the cache. \
         For callers that must see the source of truth."
    );

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

    let value_ty = &info.value_ty;
    let check = quote_spanned! {value_ty.span()=>
        #p::check::cacheable::<#value_ty>();
    };

    let prefix = args.prefix.as_ref().map(|l| l.value()).unwrap_or_default();
    let name = args
        .name
        .as_ref()
        .map_or_else(|| prefix.clone(), |l| l.value());
    let ttl_ms = args.ttl.as_ref().map_or(0, |t| t.millis);
    let none_ttl = match &args.cache_none {
        Some(t) => {
            let ms = t.millis;
            quote!(::core::option::Option::Some(#p::Duration::from_millis(#ms)))
        }
        None => quote!(::core::option::Option::None),
    };

    let duration = |t: &Option<crate::duration::Ttl>, default: TokenStream| match t {
        Some(t) => {
            let ms = t.millis;
            quote!(#p::Duration::from_millis(#ms))
        }
        None => default,
    };
    let lock = args.lock.as_ref().is_none_or(|l| l.value);
    let lease = duration(
        &args.lease,
        quote!(#p::Policy::new(#p::Duration::ZERO).lease),
    );
    let wait = duration(&args.wait, quote!(#p::Policy::new(#p::Duration::ZERO).wait));
    let stale = duration(&args.stale, quote!(#p::Duration::ZERO));
    let beta = args
        .early_refresh
        .as_ref()
        .map(|(b, _)| *b)
        .filter(|b| *b > 0.0);
    let early_refresh = match beta {
        Some(b) => quote!(::core::option::Option::Some(#b)),
        None => quote!(::core::option::Option::None),
    };

    let cache_expr = match &args.cache {
        Some(e) => quote_spanned!(e.span()=> #p::as_cache(&(#e))),
        None => quote_spanned!(fn_name.span()=> #p::as_cache(&self.cache)),
    };

    let (key_prelude, parts) = key_parts(&args, &info, template.as_deref(), &p);

    let (runner, lifted) = match info.shape {
        Shape::Plain => (quote!(cached), true),
        Shape::Option => (quote!(cached_option), true),
        Shape::Result => (quote!(cached), false),
        Shape::ResultOption => (quote!(cached_option), false),
    };
    // With a stale window or early refresh, a load may run after the caller
    // has returned, so it needs its own copies of `self` and the arguments.
    let background = args.stale.is_some() || beta.is_some();
    let (loader, refresh, refresh_checks) = if background {
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
            quote!(|| #fg_call)
        };
        let span = args
            .stale
            .as_ref()
            .map(|t| t.span)
            .or(args.early_refresh.as_ref().map(|(_, s)| *s))
            .unwrap_or_else(proc_macro2::Span::call_site);
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
        let refresh = quote! {
            ::core::option::Option::Some(&|| -> #p::Refresh<_> {
                #this
                #(let #params = ::core::clone::Clone::clone(&#params);)*
                ::std::boxed::Box::pin(async move { #finish })
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
            quote!(move || #call)
        };
        (
            loader,
            quote!(::core::option::Option::None),
            TokenStream::new(),
        )
    };
    // `(&&Runner).cached(..)` resolves to the caching impl when the value
    // type is cacheable, and to a plain call otherwise; the spanned check
    // above is then the one error the user sees, not a wall of bounds.
    let invoke = quote! {{
        #[allow(unused_imports)]
        use #p::{CacheRun as _, PlainRun as _};
        (&&#p::Runner::<#value_ty>::NEW)
            .#runner(__cached_cache, &__CACHED_SITE, __cached_key, #loader, #refresh)
            .await
    }};
    let result = if lifted {
        quote!(#p::into_ok(#invoke))
    } else {
        invoke
    };

    // `cache = conn` names a parameter the body itself may not use: keep the
    // twin free of an unused-variable warning that the user did not cause.
    let mut block = block;
    if let Some(syn::Expr::Path(path)) = &args.cache
        && let Some(ident) = path.path.get_ident()
        && params.contains(ident)
    {
        block.stmts.insert(0, syn::parse_quote!(let _ = &#ident;));
    }

    quote! {
        #(#attrs)*
        #[allow(clippy::redundant_closure, clippy::used_underscore_binding)]
        #vis #wrapper_sig {
            #check
            #refresh_checks
            static __CACHED_SITE: #p::Site = #p::Site {
                name: #name,
                prefix: #prefix,
                policy: #p::Policy {
                    ttl: #p::Duration::from_millis(#ttl_ms),
                    none_ttl: #none_ttl,
                    lock: #lock,
                    lease: #lease,
                    wait: #wait,
                    stale: #stale,
                    early_refresh: #early_refresh,
                },
            };
            let __cached_cache: &#krate::Cache = #cache_expr;
            let __cached_key = {
                #[allow(unused_imports)]
                use #p::hashed;
                #key_prelude
                #p::key(__cached_cache, &__CACHED_SITE) #parts .finish()
            };
            #result
        }

        #[doc = #twin_doc]
        #(#twin_attrs)*
        #vis #twin_sig #block
    }
}

/// The `.part(..)` / `.literal(..)` chain of the key, and statements to run
/// before it.
fn key_parts(
    args: &CachedArgs,
    info: &FnInfo,
    template: Option<&[Piece]>,
    p: &TokenStream,
) -> (TokenStream, TokenStream) {
    match (&args.key, template) {
        (Some(KeySpec::Template(lit)), Some(pieces)) => {
            let chain = pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Literal(text) => quote!(.literal(#text)),
                    Piece::Param(name) => {
                        let ident = Ident::new(name, lit.span());
                        quote_spanned!(lit.span()=> .part(&#ident))
                    }
                })
                .collect();
            (TokenStream::new(), chain)
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
            // (`hashed(&q)`) live until the key is finished.
            // Named with the element's span, so a part that is not a `KeyPart`
            // is reported at the user's expression.
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
            let chain = info
                .params
                .iter()
                .map(|ident| quote_spanned!(ident.span()=> .part(&#ident)));
            (TokenStream::new(), chain.collect())
        }
    }
}
