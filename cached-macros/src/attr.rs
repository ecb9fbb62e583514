//! Parses `#[cached(...)]` arguments into [`Args`]. Only parsing and
//! per-option checks live here; nothing here knows the function.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

use crate::duration::{self, Ttl};
use crate::errors::Errors;

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// `#[cached]`: cache-aside.
    Cached,
    /// `#[cache_put]`: write-through.
    Put,
    /// `#[cache_evict]`: invalidation.
    Evict,
}

impl Kind {
    /// The attribute's name, as users write it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Cached => "cached",
            Kind::Put => "cache_put",
            Kind::Evict => "cache_evict",
        }
    }

    /// The options this attribute knows, in the order the docs list them.
    pub(crate) fn options(self) -> &'static [&'static str] {
        match self {
            Kind::Cached => &[
                "prefix",
                "ttl",
                "key",
                "cache",
                "cache_none",
                "tags",
                "name",
                "lock",
                "lease",
                "wait",
                "stale",
                "early_refresh",
                "crate",
            ],
            Kind::Put => &[
                "prefix", "ttl", "key", "cache", "tags", "stale", "name", "crate",
            ],
            Kind::Evict => &["keys", "patterns", "prefixes", "tags", "cache", "crate"],
        }
    }
}

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

/// The validated options of an attribute.
#[derive(Default)]
pub(crate) struct Args {
    /// `tags = [..]`: templates.
    pub(crate) tags: Vec<LitStr>,
    /// `keys = [..]` of `#[cache_evict]`: templates.
    pub(crate) keys: Vec<LitStr>,
    /// `patterns = [..]`: glob templates.
    pub(crate) patterns: Vec<LitStr>,
    /// `prefixes = [..]`: every key under each.
    pub(crate) prefixes: Vec<LitStr>,
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

/// Fills an option's slot; duplicates were reported when the pair was read.
fn set<T>(_errors: &mut Errors, slot: &mut Option<T>, _name: &Ident, value: T) {
    *slot = Some(value);
}

impl Args {
    /// Reads every pair, collecting all errors instead of stopping at the first.
    pub(crate) fn from_raw(raw: RawArgs, kind: Kind, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        for RawArg { name, value } in raw.0 {
            let option = name.to_string();
            if !kind.options().contains(&option.as_str()) {
                errors.push(unknown_option(&name, &option, kind));
                // "did you mean `ttl`?" is enough; do not also report `ttl`
                // as missing.
                if let Some(meant) = nearest(&option, kind.options()) {
                    args.seen.push(meant.to_owned());
                }
                continue;
            }
            if args.seen.contains(&option) {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("duplicate option `{name}`: give it once"),
                ));
                continue;
            }
            args.seen.push(option.clone());
            match option.as_str() {
                "tags" | "keys" | "patterns" | "prefixes" => {
                    let list = string_list(errors, &name, &value);
                    match option.as_str() {
                        "tags" => args.tags = list,
                        "keys" => args.keys = list,
                        "patterns" => args.patterns = list,
                        _ => args.prefixes = list,
                    }
                }
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
                        args.lock = Some(b.clone());
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
                _ => unreachable!("every option of Kind::options is handled above"),
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

/// `["a:{x}", "b"]`: a list of string literals.
fn string_list(errors: &mut Errors, name: &Ident, value: &Expr) -> Vec<LitStr> {
    let Expr::Array(array) = value else {
        errors.push(syn::Error::new_spanned(
            value,
            format!("`{name}` takes a list of strings, e.g. `{name} = [\"video:{{video_id}}\"]`"),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for elem in &array.elems {
        match elem {
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => out.push(s.clone()),
            other => errors.push(syn::Error::new_spanned(
                other,
                format!("`{name}` takes string literals only"),
            )),
        }
    }
    out
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
        .find(|c| !crate::template::allowed_in_name(*c))
        .map(|c| {
            format!(
                "`prefix` must not contain {c:?}: use letters, digits and `_-./` \
                 (`:` separates the prefix from the key, so a prefix holding one could \
                 equal another prefix followed by a key)"
            )
        })
}

/// "unknown option `tll`; did you mean `ttl`?" with the valid list.
pub(crate) fn unknown_option(name: &Ident, given: &str, kind: Kind) -> syn::Error {
    let valid = kind.options();
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
        format!(
            "unknown option `{given}` for #[{}]{hint}\nexpected one of: {list}",
            kind.name()
        ),
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
pub(crate) fn missing(kind: Kind, what: &str, example: &str) -> syn::Error {
    syn::Error::new(
        Span::call_site(),
        format!("missing {what}: add `{example}` to #[{}(...)]", kind.name()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_option() {
        let options = Kind::Cached.options();
        assert_eq!(nearest("tll", options), Some("ttl"));
        assert_eq!(nearest("prefx", options), Some("prefix"));
        assert_eq!(nearest("cache_nones", options), Some("cache_none"));
        assert_eq!(nearest("zzzzzzzz", options), None);
        assert_eq!(nearest("key", Kind::Evict.options()), Some("keys"));
    }
}
