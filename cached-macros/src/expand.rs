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
    let loader = if lifted {
        quote!(move || #p::infallible(#call))
    } else {
        quote!(move || #call)
    };
    // `(&&Runner).cached(..)` resolves to the caching impl when the value
    // type is cacheable, and to a plain call otherwise; the spanned check
    // above is then the one error the user sees, not a wall of bounds.
    let invoke = quote! {{
        #[allow(unused_imports)]
        use #p::{CacheRun as _, PlainRun as _};
        (&&#p::Runner::<#value_ty>::NEW).#runner(__cached_cache, &__CACHED_SITE, __cached_key, #loader).await
    }};
    let result = if lifted {
        quote!(#p::into_ok(#invoke))
    } else {
        invoke
    };

    quote! {
        #(#attrs)*
        #[allow(clippy::redundant_closure, clippy::used_underscore_binding)]
        #vis #wrapper_sig {
            #check
            static __CACHED_SITE: #p::Site = #p::Site {
                name: #name,
                prefix: #prefix,
                ttl: #p::Duration::from_millis(#ttl_ms),
                none_ttl: #none_ttl,
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
            // Bound to a local first so temporaries in the expression
            // (`hashed(&q)`, a tuple) live until the key is finished.
            let bind = quote_spanned! {e.span()=>
                let __cached_part = &(#e);
                #p::check::key_part(__cached_part);
            };
            (bind, quote!(.part(__cached_part)))
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
