//! Validation: the options against each other and against the function.
//! Everything here only reports; nothing is generated.

use crate::attr::{Args, KeySpec, Kind, missing};
use crate::errors::Errors;
use crate::func::{self, FnInfo, Shape};
use crate::template;

/// Checks what needs both the options and the function, and returns the
/// checked templates.
pub(crate) fn validate(
    kind: Kind,
    args: &Args,
    func: &syn::ItemFn,
    info: Option<&FnInfo>,
    errors: &mut Errors,
) -> Templates {
    let mut templates = Templates::default();
    let Some(info) = info else { return templates };
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
        && (args.stale.is_some()
            || args.audit.is_some()
            || args.early_refresh.as_ref().is_some_and(|(b, _)| *b > 0.0))
    {
        for arg in &func.sig.inputs {
            if let syn::FnArg::Typed(pt) = arg
                && borrows(&pt.ty)
            {
                errors.push(syn::Error::new_spanned(
                    &pt.ty,
                    "with `stale`, `early_refresh` or `audit`, arguments must be owned (e.g. `String` for `&str`): \
                     a background load runs after the caller has returned, with its own copies",
                ));
            }
        }
    }
    if !info.has_self && args.cache.is_none() {
        errors.push(syn::Error::new(
            func::name_span(func),
            format!(
                "#[{}] on a free function needs `cache = <expr>`: `{}` has no `self.cache` \
                 (e.g. `cache = CACHE` with `static CACHE: LazyLock<Cache>`)",
                kind.name(),
                func.sig.ident
            ),
        ));
    }
    let mut check =
        |lit: &syn::LitStr, glob: bool| check_template(lit, glob, info, &func.sig.ident, errors);
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
    templates
}

/// The options an attribute cannot do without.
pub(crate) fn required(kind: Kind, args: &Args, errors: &mut Errors) {
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
}

/// Parses a template and checks its placeholders against the parameters.
fn check_template(
    lit: &syn::LitStr,
    glob: bool,
    info: &FnInfo,
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
