//! Parses `#[cached(...)]` arguments into [`CachedArgs`]. Only parsing and
//! per-option checks live here; nothing here knows the function.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

use crate::duration::{self, Ttl};
use crate::errors::Errors;

/// The options `#[cached]` knows, in the order the docs list them.
pub(crate) const CACHED_OPTIONS: &[&str] = &[
    "prefix",
    "ttl",
    "key",
    "cache",
    "cache_none",
    "name",
    "crate",
];

/// One `name = value` pair as written.
pub(crate) struct RawArg {
    pub(crate) name: Ident,
    pub(crate) value: Expr,
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `crate` is a keyword; every other option is a plain identifier.
        let name = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                name.span(),
                format!("expected `{name} = ...`: every option of #[cached] takes a value"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse::<Expr>()?;
        Ok(RawArg { name, value })
    }
}

/// All raw pairs of the attribute.
pub(crate) struct RawArgs(pub(crate) Vec<RawArg>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let list = Punctuated::<RawArg, Token![,]>::parse_terminated(input)?;
        Ok(RawArgs(list.into_iter().collect()))
    }
}

/// How the key is given.
pub(crate) enum KeySpec {
    /// `key = "video:{video_id}"`.
    Template(LitStr),
    /// `key = <expr>`.
    Expr(Expr),
}

/// The validated options of `#[cached]`.
#[derive(Default)]
pub(crate) struct CachedArgs {
    pub(crate) prefix: Option<LitStr>,
    pub(crate) ttl: Option<Ttl>,
    pub(crate) key: Option<KeySpec>,
    pub(crate) cache: Option<Expr>,
    pub(crate) cache_none: Option<Ttl>,
    pub(crate) name: Option<LitStr>,
    pub(crate) krate: Option<syn::Path>,
    pub(crate) lock: Option<syn::LitBool>,
    pub(crate) lease: Option<Ttl>,
    pub(crate) wait: Option<Ttl>,
    pub(crate) stale: Option<Ttl>,
    /// XFetch's beta and where it was written.
    pub(crate) early_refresh: Option<(f64, proc_macro2::Span)>,
    /// Every option written, valid or not: an invalid `ttl` is not also
    /// reported as missing.
    pub(crate) seen: Vec<String>,
}

/// A slot that reports its own duplicates, so no option checks that by hand.
fn set<T>(errors: &mut Errors, slot: &mut Option<T>, name: &Ident, value: T) {
    if slot.is_some() {
        errors.push(syn::Error::new(
            name.span(),
            format!("duplicate option `{name}`: give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

impl CachedArgs {
    /// Reads every pair, collecting all errors instead of stopping at the first.
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> CachedArgs {
        let mut args = CachedArgs::default();
        for RawArg { name, value } in raw.0 {
            args.seen.push(name.to_string());
            match name.to_string().as_str() {
                "prefix" => {
                    if let Some(lit) = string_lit(errors, &name, &value) {
                        if let Some(why) = bad_prefix(&lit.value()) {
                            errors.push(syn::Error::new(lit.span(), why));
                        }
                        set(errors, &mut args.prefix, &name, lit);
                    }
                }
                "ttl" => {
                    if let Some(ttl) = duration::parse_ttl(errors, "ttl", &value) {
                        set(errors, &mut args.ttl, &name, ttl);
                    }
                }
                "cache_none" => {
                    if let Some(ttl) = duration::parse_ttl(errors, "cache_none", &value) {
                        set(errors, &mut args.cache_none, &name, ttl);
                    }
                }
                "key" => {
                    let spec = match value {
                        Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(s),
                            ..
                        }) => KeySpec::Template(s),
                        other => KeySpec::Expr(other),
                    };
                    set(errors, &mut args.key, &name, spec);
                }
                "cache" => set(errors, &mut args.cache, &name, value),
                "lock" => match &value {
                    Expr::Lit(syn::ExprLit { lit: syn::Lit::Bool(b), .. }) => {
                        set(errors, &mut args.lock, &name, b.clone());
                    }
                    other => errors.push(syn::Error::new_spanned(
                        other,
                        "`lock` takes `true` or `false` (`lock = false` turns off single flight and leases)",
                    )),
                },
                "lease" | "wait" | "stale" => {
                    if let Some(d) = duration::parse_ttl(errors, &name.to_string(), &value) {
                        let slot = match name.to_string().as_str() {
                            "lease" => &mut args.lease,
                            "wait" => &mut args.wait,
                            _ => &mut args.stale,
                        };
                        set(errors, slot, &name, d);
                    }
                }
                "early_refresh" => {
                    if let Some(beta) = parse_beta(errors, &value) {
                        set(errors, &mut args.early_refresh, &name, beta);
                    }
                }
                "name" => {
                    if let Some(lit) = string_lit(errors, &name, &value) {
                        if lit.value().trim().is_empty() {
                            errors.push(syn::Error::new(lit.span(), "`name` must not be empty"));
                        }
                        set(errors, &mut args.name, &name, lit);
                    }
                }
                "crate" => {
                    if let Some(lit) = string_lit(errors, &name, &value) {
                        match lit.parse::<syn::Path>() {
                            Ok(path) => set(errors, &mut args.krate, &name, path),
                            Err(_) => errors.push(syn::Error::new(
                                lit.span(),
                                "`crate` must be a path to cached-runtime, e.g. `crate = \"my_deps::cached_runtime\"`",
                            )),
                        }
                    }
                }
                other => errors.push(unknown_option(&name, other, CACHED_OPTIONS)),
            }
        }
        args
    }
}

/// `early_refresh = true` (beta 1.0), `= false` (off: `None` beta 0), or a
/// positive beta such as `2.0` (refresh earlier).
fn parse_beta(errors: &mut Errors, value: &Expr) -> Option<(f64, proc_macro2::Span)> {
    let bad = |errors: &mut Errors| {
        errors.push(syn::Error::new_spanned(
            value,
            "`early_refresh` takes `true` (beta 1.0) or a positive beta such as `2.0`; \
             a larger beta refreshes earlier",
        ));
        None
    };
    match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Bool(b),
            ..
        }) => Some((if b.value { 1.0 } else { 0.0 }, b.span)),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Float(f),
            ..
        }) => match f.base10_parse::<f64>() {
            Ok(beta) if beta.is_finite() && beta > 0.0 => Some((beta, f.span())),
            _ => bad(errors),
        },
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => match i.base10_parse::<u32>() {
            Ok(beta) if beta > 0 => Some((f64::from(beta), i.span())),
            _ => bad(errors),
        },
        _ => bad(errors),
    }
}

fn string_lit(errors: &mut Errors, name: &Ident, value: &Expr) -> Option<LitStr> {
    match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.clone()),
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!("`{name}` takes a string literal, e.g. `{name} = \"placement\"`"),
            ));
            None
        }
    }
}

/// Why a prefix would make keys ambiguous or patterns wider than meant.
fn bad_prefix(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some(
            "`prefix` must not be empty: it keeps this function's keys apart from every other's"
                .into(),
        );
    }
    prefix
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}'))
        .map(|c| format!("`prefix` must not contain {c:?}: use letters, digits and `_-.:/`"))
}

/// "unknown option `tll`; did you mean `ttl`?" with the valid list.
pub(crate) fn unknown_option(name: &Ident, given: &str, valid: &[&str]) -> syn::Error {
    let list = valid
        .iter()
        .map(|o| format!("`{o}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = nearest(given, valid)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    syn::Error::new(
        name.span(),
        format!("unknown option `{given}`{hint}\nexpected one of: {list}"),
    )
}

fn nearest<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (edit_distance(given, v), *v))
        .filter(|(d, v)| *d <= (v.len().max(given.len()) / 3).max(1) + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// An error at the attribute itself, for options that are missing.
pub(crate) fn missing(what: &str, example: &str) -> syn::Error {
    syn::Error::new(
        Span::call_site(),
        format!("missing `{what}`: add `{example}` to #[cached(...)]"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_option() {
        assert_eq!(nearest("tll", CACHED_OPTIONS), Some("ttl"));
        assert_eq!(nearest("prefx", CACHED_OPTIONS), Some("prefix"));
        assert_eq!(nearest("cache_nones", CACHED_OPTIONS), Some("cache_none"));
        assert_eq!(nearest("zzzzzzzz", CACHED_OPTIONS), None);
    }
}
