//! Parses `#[cached(...)]` arguments into [`Args`]. Only parsing and
//! per-option checks live here; nothing here knows the function.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

use crate::duration::{self, Ttl, TtlSpec};
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
    pub(crate) fn options(self) -> Vec<&'static str> {
        OPTIONS
            .iter()
            .filter(|o| o.kinds.contains(&self))
            .map(|o| o.name)
            .collect()
    }
}

/// One option: its name, the attributes that take it, and how its value is
/// read into [`Args`]. Every option is declared here once; the list of
/// valid names, the suggestions and the dispatch all come from this table.
struct Opt {
    name: &'static str,
    kinds: &'static [Kind],
    read: fn(&mut Args, &mut Errors, &Ident, Expr),
}

const ALL: &[Kind] = &[Kind::Cached, Kind::Put, Kind::Evict];
const STORING: &[Kind] = &[Kind::Cached, Kind::Put];
const CACHED: &[Kind] = &[Kind::Cached];
const EVICT: &[Kind] = &[Kind::Evict];

/// Every option, in the order the docs and error messages list them.
const OPTIONS: &[Opt] = &[
    Opt {
        name: "prefix",
        kinds: STORING,
        read: read_prefix,
    },
    Opt {
        name: "ttl",
        kinds: STORING,
        read: |a, e, _, v| a.ttl = duration::parse_ttl_spec(e, v),
    },
    Opt {
        name: "max_ttl",
        kinds: STORING,
        read: |a, e, _, v| a.max_ttl = duration::parse_ttl(e, "max_ttl", &v),
    },
    Opt {
        name: "key",
        kinds: STORING,
        read: read_key,
    },
    Opt {
        name: "keys",
        kinds: EVICT,
        read: |a, e, n, v| a.keys = string_list(e, n, &v),
    },
    Opt {
        name: "patterns",
        kinds: EVICT,
        read: |a, e, n, v| a.patterns = string_list(e, n, &v),
    },
    Opt {
        name: "prefixes",
        kinds: EVICT,
        read: |a, e, n, v| a.prefixes = string_list(e, n, &v),
    },
    Opt {
        name: "of",
        kinds: EVICT,
        read: read_of,
    },
    Opt {
        name: "cache",
        kinds: ALL,
        read: |a, _, _, v| a.cache = Some(v),
    },
    Opt {
        name: "cache_none",
        kinds: CACHED,
        read: |a, e, _, v| a.cache_none = duration::parse_ttl(e, "cache_none", &v),
    },
    Opt {
        name: "tags",
        kinds: ALL,
        read: |a, e, n, v| a.tags = string_list(e, n, &v),
    },
    Opt {
        name: "name",
        kinds: STORING,
        read: read_name,
    },
    Opt {
        name: "lock",
        kinds: CACHED,
        read: read_lock,
    },
    Opt {
        name: "lease",
        kinds: CACHED,
        read: |a, e, _, v| a.lease = duration::parse_ttl(e, "lease", &v),
    },
    Opt {
        name: "wait",
        kinds: CACHED,
        read: |a, e, _, v| a.wait = duration::parse_ttl(e, "wait", &v),
    },
    Opt {
        name: "stale",
        kinds: STORING,
        read: |a, e, _, v| a.stale = duration::parse_ttl(e, "stale", &v),
    },
    Opt {
        name: "early_refresh",
        kinds: CACHED,
        read: |a, e, _, v| a.early_refresh = parse_beta(e, &v),
    },
    Opt {
        name: "audit",
        kinds: CACHED,
        read: |a, e, _, v| a.audit = parse_rate(e, &v),
    },
    Opt {
        name: "hard_timeout",
        kinds: CACHED,
        read: |a, e, _, v| a.hard_timeout = duration::parse_ttl(e, "hard_timeout", &v),
    },
    Opt {
        name: "soft_timeout",
        kinds: CACHED,
        read: |a, e, _, v| a.soft_timeout = duration::parse_ttl(e, "soft_timeout", &v),
    },
    Opt {
        name: "cache_if",
        kinds: CACHED,
        read: |a, e, n, v| a.keep_if = predicate(e, n, v, true),
    },
    Opt {
        name: "unless",
        kinds: CACHED,
        read: |a, e, n, v| a.keep_if = predicate(e, n, v, false),
    },
    Opt {
        name: "batch",
        kinds: CACHED,
        read: read_batch,
    },
    Opt {
        name: "crate",
        kinds: ALL,
        read: read_crate,
    },
];

/// `of = [Self::get_by_id(id), list_for_video(video_id)]`: the entries of
/// those calls of `#[cached]` functions.
fn read_of(args: &mut Args, errors: &mut Errors, name: &Ident, value: Expr) {
    let bad = |errors: &mut Errors, at: &dyn quote::ToTokens| {
        errors.push(syn::Error::new_spanned(
            at,
            format!(
                "`{name}` takes calls of `#[cached]` functions with the arguments whose entries to \
                 remove, e.g. `{name} = [Self::get_by_id(placement_id)]`"
            ),
        ));
    };
    let Expr::Array(array) = &value else {
        bad(errors, &value);
        return;
    };
    for elem in &array.elems {
        match elem {
            Expr::Call(call) if matches!(&*call.func, Expr::Path(p) if p.qself.is_none()) => {
                args.of.push(call.clone());
            }
            other => bad(errors, other),
        }
    }
    if array.elems.is_empty() {
        errors.push(syn::Error::new_spanned(
            &value,
            format!("`{name} = []` removes nothing: name at least one call, or leave `{name}` out"),
        ));
    }
}

/// `cache_if = |p: &Placement| !p.draft` (`keep` true) or `unless = ...`:
/// a closure or the path of a function taking the stored value.
fn predicate(errors: &mut Errors, name: &Ident, value: Expr, keep: bool) -> Option<Predicate> {
    match &value {
        Expr::Closure(_) | Expr::Path(_) => Some(Predicate { expr: value, keep }),
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!(
                    "`{name}` takes a closure or a function of the value, e.g. \
                     `{name} = |p: &Placement| p.archived` or `{name} = Placement::is_archived`"
                ),
            ));
            None
        }
    }
}

/// `cache_if` / `unless`: which, and the closure or function.
pub(crate) struct Predicate {
    pub(crate) expr: Expr,
    /// `cache_if` (store when true) rather than `unless` (when false).
    pub(crate) keep: bool,
}

/// `batch` (the function's only parameter holds the ids) or `batch = ids`
/// (names the parameter that does).
fn read_batch(args: &mut Args, errors: &mut Errors, name: &Ident, value: Expr) {
    match &value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Bool(b),
            ..
        }) => {
            if b.value {
                args.batch = Some(Batch {
                    span: name.span(),
                    param: None,
                });
            }
        }
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            args.batch = Some(Batch {
                span: name.span(),
                param: p.path.get_ident().cloned(),
            });
        }
        other => errors.push(syn::Error::new_spanned(
            other,
            "`batch` takes the name of the parameter that holds the ids (`batch = ids`), \
             or nothing when it is the function's only parameter",
        )),
    }
}

/// `#[cached(batch)]`: where it was written, and the ids' parameter if named.
pub(crate) struct Batch {
    pub(crate) span: Span,
    pub(crate) param: Option<Ident>,
}

/// `audit = 0.001`: a share of hits, above 0 and at most 1.
fn parse_rate(errors: &mut Errors, value: &Expr) -> Option<(f64, proc_macro2::Span)> {
    if let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Float(f),
        ..
    }) = value
        && let Ok(rate) = f.base10_parse::<f64>()
        && rate > 0.0
        && rate <= 1.0
    {
        return Some((rate, f.span()));
    }
    errors.push(syn::Error::new_spanned(
        value,
        "`audit` takes the share of hits to audit against the source, above 0 and at most 1.0, \
         such as `0.001` (one hit in a thousand)",
    ));
    None
}

fn read_prefix(args: &mut Args, errors: &mut Errors, name: &Ident, value: Expr) {
    if let Some(lit) = string_lit(errors, name, &value) {
        if let Some(why) = bad_prefix(&lit.value()) {
            errors.push(syn::Error::new(lit.span(), why));
        }
        args.prefix = Some(lit);
    }
}

fn read_key(args: &mut Args, _: &mut Errors, _: &Ident, value: Expr) {
    args.key = Some(match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => KeySpec::Template(s),
        other => KeySpec::Expr(other),
    });
}

fn read_name(args: &mut Args, errors: &mut Errors, name: &Ident, value: Expr) {
    if let Some(lit) = string_lit(errors, name, &value) {
        if lit.value().trim().is_empty() {
            errors.push(syn::Error::new(lit.span(), "`name` must not be empty"));
        }
        args.name = Some(lit);
    }
}

fn read_lock(args: &mut Args, errors: &mut Errors, _: &Ident, value: Expr) {
    match &value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Bool(b),
            ..
        }) => args.lock = Some(b.clone()),
        other => errors.push(syn::Error::new_spanned(
            other,
            "`lock` takes `true` or `false` (`lock = false` turns off single flight and leases)",
        )),
    }
}

fn read_crate(args: &mut Args, errors: &mut Errors, name: &Ident, value: Expr) {
    if let Some(lit) = string_lit(errors, name, &value) {
        match lit.parse::<syn::Path>() {
            Ok(path) => args.krate = Some(path),
            Err(_) => errors.push(syn::Error::new(
                lit.span(),
                "`crate` must be a path to cached-runtime, e.g. `crate = \"my_deps::cached_runtime\"`",
            )),
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
            // A flag: `batch` alone means `batch = true`.
            if name == "batch" {
                let value = Expr::Lit(syn::ExprLit {
                    attrs: Vec::new(),
                    lit: syn::Lit::Bool(syn::LitBool::new(true, name.span())),
                });
                return Ok(RawArg { name, value });
            }
            return Err(syn::Error::new(
                name.span(),
                format!(
                    "expected `{name} = ...`: every option of #[cached] takes a value (only `batch` stands alone)"
                ),
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
    /// `of = [Self::get(id), ..]`: the entries of those cached calls.
    pub(crate) of: Vec<syn::ExprCall>,
    pub(crate) prefix: Option<LitStr>,
    pub(crate) ttl: Option<TtlSpec>,
    /// `max_ttl = "1d"`: the longest a run-time `ttl` may be.
    pub(crate) max_ttl: Option<Ttl>,
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
    /// The share of hits audited, and where it was written.
    pub(crate) audit: Option<(f64, proc_macro2::Span)>,
    /// `batch`: the function loads many ids at once.
    pub(crate) batch: Option<Batch>,
    /// `cache_if` or `unless`.
    pub(crate) keep_if: Option<Predicate>,
    /// `hard_timeout = "2s"`: the longest a load may run.
    pub(crate) hard_timeout: Option<Ttl>,
    /// `soft_timeout = "20ms"`: how long a caller waits for the refresh of
    /// a stale value before it is served the stale one.
    pub(crate) soft_timeout: Option<Ttl>,
    /// Every option written, valid or not: an invalid `ttl` is not also
    /// reported as missing.
    pub(crate) seen: Vec<String>,
}

impl Args {
    /// Reads every pair, collecting all errors instead of stopping at the first.
    pub(crate) fn from_raw(raw: RawArgs, kind: Kind, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        let options = kind.options();
        for RawArg { name, value } in raw.0 {
            let option = name.to_string();
            let Some(opt) = OPTIONS
                .iter()
                .find(|o| o.name == option && o.kinds.contains(&kind))
            else {
                errors.push(unknown_option(&name, &option, kind));
                // "did you mean `ttl`?" is enough; do not also report `ttl`
                // as missing.
                if let Some(meant) = nearest(&option, &options) {
                    args.seen.push(meant.to_owned());
                }
                continue;
            };
            if args.seen.contains(&option) {
                errors.push(syn::Error::new(
                    name.span(),
                    format!("duplicate option `{name}`: give it once"),
                ));
                continue;
            }
            args.seen.push(option);
            (opt.read)(&mut args, errors, &name, value);
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
    if array.elems.is_empty() {
        errors.push(syn::Error::new_spanned(
            value,
            format!("`{name} = []` names nothing: give at least one, or leave `{name}` out"),
        ));
    }
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
    let hint = nearest(given, &valid)
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
        assert_eq!(nearest("tll", &options), Some("ttl"));
        assert_eq!(nearest("prefx", &options), Some("prefix"));
        assert_eq!(nearest("cache_nones", &options), Some("cache_none"));
        assert_eq!(nearest("zzzzzzzz", &options), None);
        assert_eq!(nearest("key", &Kind::Evict.options()), Some("keys"));
    }
}
