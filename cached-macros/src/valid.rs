//! Validation: the options against each other and against the function.
//! Everything here only reports; nothing is generated.

use crate::attr::{Args, KeySpec, Kind, missing};
use crate::duration::TtlSpec;
use crate::errors::Errors;
use crate::func::{self, FnInfo, Shape};
use crate::template;
use proc_macro2::Ident;

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
    if args.seen.iter().any(|o| o == "cache_if")
        && args.seen.iter().any(|o| o == "unless")
        && let Some(pred) = &args.keep_if
    {
        errors.push(syn::Error::new_spanned(
            &pred.expr,
            "give `cache_if` or `unless`, not both: one predicate decides whether a value is stored",
        ));
    }
    if let Some(t) = &args.hard_timeout {
        if args.batch.is_some() {
            errors.push(syn::Error::new(
                t.span,
                "`hard_timeout` cannot be used with `batch` yet: bound the batch's query itself",
            ));
        } else if matches!(info.shape, Shape::Plain | Shape::Option) {
            errors.push(syn::Error::new(
                t.span,
                "`hard_timeout` needs a `Result` return: a load past it returns the error type's \
                 `From<cached_runtime::LoadTimeout>`, and a function that cannot fail has no way to say it timed out",
            ));
        }
    }
    match (&args.ttl, &args.max_ttl) {
        (Some(TtlSpec::Run(e)), None) => errors.push(syn::Error::new_spanned(
            e,
            "a `ttl` computed at run time needs `max_ttl = \"...\"`, the longest it may be \
             (a longer answer is cut to it; tag bookkeeping and `_prime` use it)",
        )),
        (Some(TtlSpec::Fixed(_)), Some(max)) => errors.push(syn::Error::new(
            max.span,
            "`max_ttl` bounds a `ttl` computed at run time; with a literal `ttl` it does nothing: remove it",
        )),
        _ => {}
    }
    if let Some(soft) = &args.soft_timeout {
        if args.stale.is_none() {
            errors.push(syn::Error::new(
                soft.span,
                "`soft_timeout` needs `stale = \"...\"`: past it the caller is served the stale value \
                 while the refresh goes on, and without a stale window there is none to serve \
                 (`hard_timeout` bounds a load)",
            ));
        }
        if let Some(hard) = &args.hard_timeout
            && soft.millis >= hard.millis
        {
            errors.push(syn::Error::new(
                soft.span,
                "`soft_timeout` must be shorter than `hard_timeout`: past the hard one the load is dropped",
            ));
        }
    }
    if let Some(batch) = &args.batch {
        templates.batch = check_batch(batch, args, func, info, errors);
    }
    if let Some(none) = &args.cache_none
        && args.batch.is_none()
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
            if !["keys", "patterns", "prefixes", "tags", "of"]
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

/// What `#[cached(batch)]` needs to know about the function.
pub(crate) struct BatchPlan {
    /// The parameter holding the ids.
    pub(crate) ids: syn::Ident,
    /// Its type, as written (`Vec<Uuid>`, `&[u64]`).
    pub(crate) ids_ty: syn::Type,
    /// The map's value type: what is stored per id.
    pub(crate) value_ty: syn::Type,
}

/// Checks a batch function: which parameter holds the ids, that it returns
/// a map, and that no option it cannot honour is given.
fn check_batch(
    batch: &crate::attr::Batch,
    args: &Args,
    func: &syn::ItemFn,
    info: &FnInfo,
    errors: &mut Errors,
) -> Option<BatchPlan> {
    let before = errors.len();
    let unsupported: [(&str, Option<proc_macro2::Span>, &str); 4] = [
        (
            "stale",
            args.stale.as_ref().map(|t| t.span),
            "a batch is not refreshed in the background",
        ),
        (
            "early_refresh",
            args.early_refresh
                .as_ref()
                .filter(|(b, _)| *b > 0.0)
                .map(|(_, s)| *s),
            "a batch is not refreshed in the background",
        ),
        (
            "audit",
            args.audit.as_ref().map(|(_, s)| *s),
            "a batch is not audited; audit a single-key function of the same prefix",
        ),
        (
            "lock",
            args.lock.as_ref().filter(|l| !l.value).map(|l| l.span),
            "a batch always takes its keys' single flight and leases",
        ),
    ];
    for (option, span, why) in unsupported {
        if let Some(span) = span {
            errors.push(syn::Error::new(
                span,
                format!("`{option}` cannot be used with `batch`: {why}"),
            ));
        }
    }
    let typed: Vec<&syn::PatType> = func
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            syn::FnArg::Typed(pt) => Some(pt),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    let param = match &batch.param {
        Some(name) => {
            let found = info.params.iter().position(|p| p == name);
            if found.is_none() {
                errors.push(syn::Error::new(
                    name.span(),
                    format!(
                        "`batch = {name}` names no parameter of `{}`; it must name the parameter that holds the ids",
                        func.sig.ident
                    ),
                ));
            }
            found
        }
        None if info.params.len() == 1 => Some(0),
        None => {
            errors.push(syn::Error::new(
                batch.span,
                if info.params.is_empty() {
                    format!(
                        "`batch` needs a parameter that holds the ids: `{}` takes none (e.g. `ids: Vec<u64>`)",
                        func.sig.ident
                    )
                } else {
                    format!(
                        "`{}` takes several parameters: name the one that holds the ids, e.g. `batch = {}`",
                        func.sig.ident,
                        info.params.last().map(ToString::to_string).unwrap_or_default()
                    )
                },
            ));
            None
        }
    };
    let map_value = match info.shape {
        Shape::Plain | Shape::Result => map_value_type(&info.value_ty),
        Shape::Option | Shape::ResultOption => None,
    };
    if map_value.is_none() {
        let span = match &func.sig.output {
            syn::ReturnType::Type(_, ty) => syn::spanned::Spanned::span(ty),
            syn::ReturnType::Default => func.sig.ident.span(),
        };
        errors.push(syn::Error::new(
            span,
            "a `batch` function returns a map from id to value, `HashMap<Id, V>` or `BTreeMap<Id, V>` \
             (or a `Result` of one); an id missing from the map is absent",
        ));
    }
    if let (Some(i), Some(key)) = (param, &args.key)
        && !key_names(key, &info.params[i])
    {
        let ids = &info.params[i];
        let span = match key {
            KeySpec::Template(lit) => lit.span(),
            KeySpec::Expr(e) => syn::spanned::Spanned::span(e),
        };
        errors.push(syn::Error::new(
            span,
            format!(
                "the `key` of a `batch` function must use `{ids}`, which stands for one id in it \
                 (e.g. `key = ({ids}, ..)`): without it every id would share one entry"
            ),
        ));
    }
    if errors.len() != before {
        return None;
    }
    let pt = typed.get(param?)?;
    Some(BatchPlan {
        ids: info.params[param?].clone(),
        ids_ty: (*pt.ty).clone(),
        value_ty: map_value?.clone(),
    })
}

/// Whether `key` mentions the parameter `name` (a template's `{name}`, or
/// the identifier anywhere in an expression).
fn key_names(key: &KeySpec, name: &Ident) -> bool {
    match key {
        // An unreadable template is reported by its own check.
        KeySpec::Template(lit) => template::parse(lit).map_or(true, |pieces| {
            pieces
                .iter()
                .any(|p| matches!(p, template::Piece::Param(p) if *name == p.as_str()))
        }),
        KeySpec::Expr(e) => {
            let mut found = Vec::new();
            params_in(e, std::slice::from_ref(name), &mut found);
            !found.is_empty()
        }
    }
}

/// Adds to `found` each of `params` that `expr` names, once.
pub(crate) fn params_in(expr: &syn::Expr, params: &[Ident], found: &mut Vec<Ident>) {
    struct Idents<'p>(&'p [Ident], &'p mut Vec<Ident>);
    impl<'ast> syn::visit::Visit<'ast> for Idents<'_> {
        fn visit_ident(&mut self, i: &'ast Ident) {
            if self.0.contains(i) && !self.1.contains(i) {
                self.1.push(i.clone());
            }
        }
    }
    syn::visit::Visit::visit_expr(&mut Idents(params, found), expr);
}

/// `V` of a map type written `Map<K, V>` (`HashMap`, `BTreeMap`, any map
/// with the id and value as its first two type arguments).
fn map_value_type(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(tp) = ty else { return None };
    if tp.qself.is_some() {
        return None;
    }
    let last = tp.path.segments.last()?;
    if last.ident != "HashMap" && last.ident != "BTreeMap" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .filter_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .nth(1)
}

/// Every checked template of an attribute, with the literal it came from.
#[derive(Default)]
pub(crate) struct Templates {
    /// `#[cached(batch)]`'s plan, once checked.
    pub(crate) batch: Option<BatchPlan>,
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
