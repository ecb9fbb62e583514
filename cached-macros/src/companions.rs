//! `#[cached]` on an impl block: the attributes on methods of a trait impl.
//!
//! A method attribute emits the method, its `{name}_uncached` twin and its
//! companions (`{name}_key`, `{name}_invalidate`, ...) side by side, which a
//! trait impl refuses (`E0407`: they are not members of the trait). An
//! attribute on a method cannot emit anything outside its impl block, but
//! one on the block can: it copies each cached method into an inherent impl
//! of the same type (same generics), where its attribute emits the twin and
//! the companions only, and marks the original to emit the method only. The
//! method calls the twin as before (`self.get_uncached(..)`, an inherent
//! method), and so do callers.
//!
//! ```ignore
//! #[cached]
//! impl Repo for PgRepo {
//!     #[cached(prefix = "placement", ttl = "5m", key = id)]
//!     async fn get(&self, id: i64) -> Result<Option<Placement>, DbError> { /* … */ }
//! }
//! // emits: impl Repo for PgRepo { async fn get(..) { /* cached */ } }
//! //        impl PgRepo { pub async fn get_uncached(..), pub fn get_key(..), ... }
//! ```

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;

/// What a method attribute emits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Emit {
    /// The method, its twin and its companions (a free function, an
    /// inherent impl).
    All,
    /// The method only: it is in a trait impl.
    Method,
    /// The twin and the companions only: the inherent impl the impl
    /// block's `#[cached]` emits.
    Companions,
}

/// What the impl block's `#[cached]` puts first in a method attribute's
/// options. Not options users write: names no option has.
const METHOD_ONLY: &str = "__cached_method_only";
const COMPANIONS_ONLY: &str = "__cached_companions_only";

/// The attributes whose methods get twins and companions.
const ATTRIBUTES: [&str; 3] = ["cached", "cache_put", "cache_evict"];

/// Takes the marker off a method attribute's options.
pub(crate) fn strip_marker(args: TokenStream) -> (TokenStream, Emit) {
    let mut tokens = args.clone().into_iter();
    let emit = match tokens.next() {
        Some(TokenTree::Ident(i)) if i == METHOD_ONLY => Emit::Method,
        Some(TokenTree::Ident(i)) if i == COMPANIONS_ONLY => Emit::Companions,
        _ => return (args, Emit::All),
    };
    match tokens.next() {
        Some(TokenTree::Punct(p)) if p.as_char() == ',' => (tokens.collect(), emit),
        None => (TokenStream::new(), emit),
        // Not our marker after all.
        Some(_) => (args, Emit::All),
    }
}

/// Puts `marker` first in the attribute's options.
fn mark(attr: &mut syn::Attribute, marker: &str) {
    let marker = proc_macro2::Ident::new(marker, proc_macro2::Span::call_site());
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
//         #[cached(__cached_method_only, prefix = "p", ttl = "5m")] async fn get(&self, id: u64) -> P { body }
//         fn other(&self) {}
//     }
//     impl<T: Db> Service<T> {
//         #[cached(__cached_companions_only, prefix = "p", ttl = "5m")] pub async fn get(&self, id: u64) -> P { body }
//     }
pub(crate) fn impl_block(args: TokenStream, mut imp: syn::ItemImpl) -> TokenStream {
    // Options here are an error, and the block is expanded all the same,
    // so that it is the one error the user sees.
    let error = (!args.is_empty()).then(|| {
        syn::Error::new_spanned(
            &args,
            "#[cached] on an impl block takes no options: it gives the cached methods of a trait \
             impl their `_uncached` twins and companions; the options go on each method",
        )
        .to_compile_error()
    });
    // An inherent impl takes the twins and companions itself.
    if imp.trait_.is_none() {
        return quote!(#error #imp);
    }
    // Each cached method twice: in the trait impl, the method only; in the
    // inherent impl, its twin and companions only (public, as a trait's
    // methods are callable wherever the trait is).
    let mut companions = Vec::new();
    for item in &mut imp.items {
        let syn::ImplItem::Fn(method) = item else {
            continue;
        };
        let Some(at) = method.attrs.iter().position(is_cache_attribute) else {
            continue;
        };
        let mut copy = method.clone();
        copy.vis = syn::parse_quote!(pub);
        copy.defaultness = None;
        // Attributes before ours ran already; later ones go with the
        // method, not its companions.
        copy.attrs.truncate(at + 1);
        copy.attrs.retain(|a| !a.path().is_ident("doc"));
        if let Some(ours) = copy.attrs.last_mut() {
            mark(ours, COMPANIONS_ONLY);
        }
        companions.push(copy);
        mark(&mut method.attrs[at], METHOD_ONLY);
    }
    let (impl_generics, _, where_clause) = imp.generics.split_for_impl();
    let self_ty = &imp.self_ty;
    quote! {
        #error
        #imp
        impl #impl_generics #self_ty #where_clause {
            #(#companions)*
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_taken_off_and_only_it() {
        let (rest, emit) = strip_marker(quote!(__cached_method_only, prefix = "p"));
        assert_eq!(emit, Emit::Method);
        assert_eq!(rest.to_string(), quote!(prefix = "p").to_string());
        let (rest, emit) = strip_marker(quote!(__cached_companions_only));
        assert_eq!((rest.is_empty(), emit), (true, Emit::Companions));
        let (rest, emit) = strip_marker(quote!(prefix = "p", ttl = "5m"));
        assert_eq!(emit, Emit::All);
        assert_eq!(
            rest.to_string(),
            quote!(prefix = "p", ttl = "5m").to_string()
        );
        let (rest, emit) = strip_marker(quote!(__cached_method_only = 1));
        assert_eq!(emit, Emit::All, "not the marker");
        assert_eq!(
            rest.to_string(),
            quote!(__cached_method_only = 1).to_string()
        );
    }
}
