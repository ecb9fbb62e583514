//! What is emitted instead of the expansion when the attribute has an
//! error: the error, the function as written (the error at the top of its
//! body), and its `{name}_uncached` twin, so that callers of either still
//! resolve and the user sees the one real error, not a cascade of
//! "no method `get_by_id_uncached`" at every call site.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, format_ident, quote};

// Input:
//     #[cached(prefix = "placement", ttl = "5x", key = id)]
//     async fn get(&self, id: u64) -> Result<P, E> { body }
// Output:
//     async fn get(&self, id: u64) -> Result<P, E> { compile_error!("..."); body }
//     async fn get_uncached(&self, id: u64) -> Result<P, E> { body }
pub(crate) fn fallback(
    func: syn::ItemFn,
    err: Option<syn::Error>,
    emit: crate::companions::Emit,
) -> TokenStream {
    let mut twin = func.clone();
    twin.sig.ident = format_ident!("{}_uncached", func.sig.ident);
    twin.attrs.retain(|a| !a.path().is_ident("doc"));
    let mut func = func;
    if let Some(err) = err {
        let tokens = err.to_compile_error();
        func.block
            .stmts
            .insert(0, syn::Stmt::Item(syn::Item::Verbatim(tokens)));
    }
    match emit {
        crate::companions::Emit::All => {}
        crate::companions::Emit::Method => return func.into_token_stream(),
        crate::companions::Emit::Companions => {
            return quote! {
                #[allow(dead_code, unused_variables, clippy::all)]
                #twin
            };
        }
    }
    let twin = twin.into_token_stream();
    quote! {
        #func
        #[allow(dead_code, unused_variables, clippy::all)]
        #twin
    }
}
