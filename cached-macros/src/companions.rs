//! `#[cached]` on an impl block: the attributes on methods of a trait impl.
//!
//! A method attribute emits the method and its `{name}_uncached` twin side
//! by side, which a trait impl refuses (`E0407`: the twin is not a member
//! of the trait). An attribute on a method cannot emit anything outside
//! its impl block, but one on the block can: it moves each cached method's
//! twin to an inherent impl of the same type (same generics), and tells the
//! method's attribute not to emit it. The wrapper calls the twin as before
//! (`self.get_uncached(..)`, an inherent method), and so do callers.
//!
//! ```ignore
//! #[cached]
//! impl Repo for PgRepo {
//!     #[cached(prefix = "placement", ttl = "5m", key = id)]
//!     async fn get(&self, id: i64) -> Result<Option<Placement>, DbError> { /* … */ }
//! }
//! // emits: impl Repo for PgRepo { async fn get(..) { /* cached */ } }
//! //        impl PgRepo { pub async fn get_uncached(..) { /* the body */ } }
//! ```

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote};

/// Where a method's twin goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Twin {
    /// Next to the method (a free function, an inherent impl).
    Here,
    /// In the inherent impl the impl block's `#[cached]` emits.
    Elsewhere,
}

/// What the impl block's `#[cached]` puts first in a method attribute's
/// options. Not an option users write: a name no option has.
const MARKER: &str = "__cached_twin_elsewhere";

/// The attributes whose methods get twins.
const ATTRIBUTES: [&str; 3] = ["cached", "cache_put", "cache_evict"];

/// Takes the marker off a method attribute's options.
pub(crate) fn strip_marker(args: TokenStream) -> (TokenStream, Twin) {
    let mut tokens = args.clone().into_iter();
    match (tokens.next(), tokens.next()) {
        (Some(TokenTree::Ident(i)), Some(TokenTree::Punct(p)))
            if i == MARKER && p.as_char() == ',' =>
        {
            (tokens.collect(), Twin::Elsewhere)
        }
        (Some(TokenTree::Ident(i)), None) if i == MARKER => (TokenStream::new(), Twin::Elsewhere),
        _ => (args, Twin::Here),
    }
}

fn is_cache_attribute(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| ATTRIBUTES.iter().any(|a| s.ident == a))
}

// Input:
//     #[cached]
//     impl<T: Db> Repo for Service<T> {
//         #[cached(prefix = "p", ttl = "5m")] async fn get(&self, id: u64) -> P { body }
//         fn other(&self) {}
//     }
// Output:
//     impl<T: Db> Repo for Service<T> {
//         #[cached(__cached_twin_elsewhere, prefix = "p", ttl = "5m")] async fn get(&self, id: u64) -> P { body }
//         fn other(&self) {}
//     }
//     impl<T: Db> Service<T> {
//         /// (doc)
//         pub async fn get_uncached(&self, id: u64) -> P { body }
//     }
pub(crate) fn impl_block(args: TokenStream, mut imp: syn::ItemImpl) -> TokenStream {
    // Options here are an error, and the block is expanded all the same,
    // so that it is the one error the user sees.
    let error = (!args.is_empty()).then(|| {
        syn::Error::new_spanned(
            &args,
            "#[cached] on an impl block takes no options: it gives the cached methods of a trait \
             impl their `_uncached` twins; the options go on each method",
        )
        .to_compile_error()
    });
    // An inherent impl takes the twins itself.
    if imp.trait_.is_none() {
        return quote!(#error #imp);
    }
    let mut twins = Vec::new();
    for item in &mut imp.items {
        let syn::ImplItem::Fn(method) = item else {
            continue;
        };
        let Some(at) = method.attrs.iter().position(is_cache_attribute) else {
            continue;
        };
        let name = &method.sig.ident;
        let mut twin = method.clone();
        twin.sig.ident = format_ident!("{}_uncached", name);
        twin.attrs
            .retain(|a| !is_cache_attribute(a) && !a.path().is_ident("doc"));
        twin.vis = syn::parse_quote!(pub);
        twin.defaultness = None;
        let doc = format!(
            " `{name}` without the cache: runs the function body, neither reading nor writing the \
             cache. For callers that must see the source of truth."
        );
        twins.push(quote! {
            #[doc = #doc]
            // Parameters the attribute reads (a key) may be unused here.
            #[allow(unused_variables, clippy::used_underscore_binding)]
            #twin
        });
        let attr = &mut method.attrs[at];
        let marker = proc_macro2::Ident::new(MARKER, proc_macro2::Span::call_site());
        match &mut attr.meta {
            syn::Meta::List(list) => {
                let tokens = std::mem::take(&mut list.tokens);
                list.tokens = quote!(#marker, #tokens);
            }
            syn::Meta::Path(path) => {
                attr.meta = syn::Meta::List(syn::MetaList {
                    path: path.clone(),
                    delimiter: syn::MacroDelimiter::Paren(Default::default()),
                    tokens: quote!(#marker),
                });
            }
            // `#[cached = ..]`: the method's attribute reports it.
            syn::Meta::NameValue(_) => {}
        }
    }
    let (impl_generics, _, where_clause) = imp.generics.split_for_impl();
    let self_ty = &imp.self_ty;
    quote! {
        #error
        #imp
        impl #impl_generics #self_ty #where_clause {
            #(#twins)*
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_taken_off_and_only_it() {
        let (rest, twin) = strip_marker(quote!(__cached_twin_elsewhere, prefix = "p"));
        assert_eq!(twin, Twin::Elsewhere);
        assert_eq!(rest.to_string(), quote!(prefix = "p").to_string());
        let (rest, twin) = strip_marker(quote!(__cached_twin_elsewhere));
        assert_eq!((rest.is_empty(), twin), (true, Twin::Elsewhere));
        let (rest, twin) = strip_marker(quote!(prefix = "p", ttl = "5m"));
        assert_eq!(twin, Twin::Here);
        assert_eq!(
            rest.to_string(),
            quote!(prefix = "p", ttl = "5m").to_string()
        );
    }
}
