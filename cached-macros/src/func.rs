//! What `#[cached]` needs to know about the function it wraps, and the
//! checks that the function is one it can wrap.

use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::attr::Kind;
use crate::errors::Errors;

/// How the return type maps onto what is cached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    /// `T`: the value is cached.
    Plain,
    /// `Option<T>`: `Some` is cached, `None` only with `cache_none`.
    Option,
    /// `Result<T, E>`: `Ok` is cached; `Err` goes back to the caller.
    Result,
    /// `Result<Option<T>, E>`.
    ResultOption,
}

/// The parts of a function the expansion uses.
pub(crate) struct FnInfo {
    /// Whether it takes `&self`.
    pub(crate) has_self: bool,
    /// Parameter names in order, `self` excluded.
    pub(crate) params: Vec<Ident>,
    pub(crate) shape: Shape,
    /// The type whose values are stored (`T` of every shape).
    pub(crate) value_ty: Type,
    /// `E` of a `Result<T, E>` return written out (not behind an alias).
    pub(crate) error_ty: Option<Type>,
}

/// Checks `f` and describes it; every problem goes to `errors`.
/// For `#[cached]` and `#[cache_put]` the result is stored, which rules out
/// `()` and borrowed return types.
pub(crate) fn analyse(f: &ItemFn, kind: Kind, errors: &mut Errors) -> Option<FnInfo> {
    let stores = kind != Kind::Evict;
    let attr = kind.name();
    let sig = &f.sig;
    let before = errors.len();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[{attr}] works on `async fn` only; `{}` is not async",
                sig.ident
            ),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("#[{attr}] does not support `extern` functions"),
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            format!("#[{attr}] does not support variadic functions"),
        ));
    }
    for param in &sig.generics.params {
        match param {
            syn::GenericParam::Lifetime(_) => {}
            other => errors.push(syn::Error::new_spanned(
                other,
                format!(
                    "#[{attr}] does not support generic functions: the key and the stored type must be \
                     known at compile time; cache a non-generic function that calls this one"
                ),
            )),
        }
    }

    let mut has_self = false;
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                if r.reference.is_none() || r.mutability.is_some() || r.colon_token.is_some() {
                    errors.push(syn::Error::new_spanned(
                        r,
                        format!(
                            "#[{attr}] methods must take `&self`: the cache is shared, so the method must be \
                             callable through a shared reference"
                        ),
                    ));
                }
                has_self = true;
            }
            FnArg::Typed(pt) => {
                // Anywhere in the type (`&impl KeyPart`, `Option<impl
                // KeyPart>`): each is a type parameter, and two types that
                // render alike would share one key.
                if let Some(it) = impl_trait_in(&pt.ty) {
                    errors.push(syn::Error::new_spanned(
                        it,
                        format!(
                            "#[{attr}] does not support `impl Trait` parameters (they make the function \
                             generic); take a concrete type"
                        ),
                    ));
                }
                match &*pt.pat {
                    // The expansion's own names begin with `__cached`: a
                    // parameter so named would be shadowed by one of them.
                    Pat::Ident(pi) if pi.ident.to_string().starts_with("__cached") => {
                        errors.push(syn::Error::new_spanned(
                            &pi.ident,
                            format!(
                                "#[{attr}] reserves names beginning with `__cached` for the code it \
                                 generates; rename this parameter"
                            ),
                        ))
                    }
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                        params.push(pi.ident.clone())
                    }
                    other => errors.push(syn::Error::new_spanned(
                        other,
                        format!(
                            "#[{attr}] needs every parameter to be a plain name (`id: u64`), \
                             so it can be used in the key and passed to the function"
                        ),
                    )),
                }
            }
        }
    }

    let ret = match &sig.output {
        ReturnType::Default if !stores => None,
        ReturnType::Default => {
            errors.push(syn::Error::new(
                sig.paren_token.span.close(),
                format!("#[{attr}] needs a return value to cache; this function returns `()`"),
            ));
            None
        }
        ReturnType::Type(_, ty) => Some(&**ty),
    };
    let (shape, value_ty) = match ret {
        Some(ty) => classify(ty),
        None => (Shape::Plain, syn::parse_quote!(())),
    };
    if stores
        && ret.is_some()
        && let Some(why) = not_storable(&value_ty, attr)
    {
        errors.push(syn::Error::new(value_ty.span(), why));
    }
    let error_ty = ret.and_then(error_type).cloned();
    (errors.len() == before).then_some(FnInfo {
        has_self,
        params,
        shape,
        value_ty,
        error_ty,
    })
}

/// Splits a return type into its shape and the stored type.
pub(crate) fn classify(ty: &Type) -> (Shape, Type) {
    if let Some(ok) = generic_arg(ty, "Result") {
        return match generic_arg(ok, "Option") {
            Some(inner) => (Shape::ResultOption, inner.clone()),
            None => (Shape::Result, ok.clone()),
        };
    }
    match generic_arg(ty, "Option") {
        Some(inner) => (Shape::Option, inner.clone()),
        None => (Shape::Plain, ty.clone()),
    }
}

/// `E` of `Result<T, E>`, when both arguments are written.
fn error_type(ty: &Type) -> Option<&Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if tp.qself.is_some() || last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .nth(1)
}

/// The first type argument of `ty` when its last path segment is `name`.
fn generic_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(tp) = ty else { return None };
    if tp.qself.is_some() {
        return None;
    }
    let last = tp.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// Types that can never be stored, with the reason in words.
fn not_storable(ty: &Type, attr: &str) -> Option<String> {
    match ty {
        Type::Reference(r) => {
            let lifetime = r
                .lifetime
                .as_ref()
                .map(|l| format!("{l} "))
                .unwrap_or_default();
            let mutability = if r.mutability.is_some() { "mut " } else { "" };
            let elem = quote::ToTokens::to_token_stream(&r.elem);
            Some(format!(
                "#[{attr}] cannot cache a borrowed value `&{lifetime}{mutability}{elem}`: a cached value \
                 outlives the call, so return an owned type (e.g. `String` for `&str`, `Vec<T>` for `&[T]`)"
            ))
        }
        Type::ImplTrait(_) => Some(format!(
            "#[{attr}] cannot cache an `impl Trait` return type: name the concrete type"
        )),
        Type::Tuple(t) if t.elems.is_empty() => Some(format!(
            "#[{attr}] needs a return value to cache; this function returns `()`"
        )),
        Type::Paren(p) => not_storable(&p.elem, attr),
        Type::Group(g) => not_storable(&g.elem, attr),
        _ => None,
    }
}

/// The span to blame for a missing `cache = ...` on a free function.
pub(crate) fn name_span(f: &ItemFn) -> Span {
    f.sig.ident.span()
}

/// The first `impl Trait` anywhere in `ty`, if any.
fn impl_trait_in(ty: &Type) -> Option<&syn::TypeImplTrait> {
    struct Finder<'a>(Option<&'a syn::TypeImplTrait>);
    impl<'a> syn::visit::Visit<'a> for Finder<'a> {
        fn visit_type_impl_trait(&mut self, it: &'a syn::TypeImplTrait) {
            self.0.get_or_insert(it);
        }
    }
    let mut finder = Finder(None);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(src: &str) -> (Shape, String) {
        let ty: Type = syn::parse_str(src).expect("type parses");
        let (s, t) = classify(&ty);
        (s, quote::ToTokens::to_token_stream(&t).to_string())
    }

    #[test]
    fn classifies_every_return_shape() {
        assert_eq!(shape("Placement"), (Shape::Plain, "Placement".into()));
        assert_eq!(
            shape("Option<Placement>"),
            (Shape::Option, "Placement".into())
        );
        assert_eq!(
            shape("Result<Placement, DbError>"),
            (Shape::Result, "Placement".into())
        );
        assert_eq!(
            shape("anyhow::Result<Placement>"),
            (Shape::Result, "Placement".into())
        );
        assert_eq!(
            shape("Result<Option<Vec<u8>>, E>"),
            (Shape::ResultOption, "Vec < u8 >".into())
        );
        assert_eq!(
            shape("std::option::Option<u8>"),
            (Shape::Option, "u8".into())
        );
    }
}
