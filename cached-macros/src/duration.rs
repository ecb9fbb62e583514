//! TTLs, checked at compile time: `"5m"`, `"1h 30m"`, or whole seconds.

use std::time::Duration;

use proc_macro2::Span;
use syn::{Expr, ExprLit, Lit};

use crate::errors::Errors;

/// A checked duration and where it was written.
pub(crate) struct Ttl {
    pub(crate) millis: u64,
    pub(crate) span: Span,
}

/// A `ttl`: a literal checked now, or an expression evaluated at run time
/// (a `Duration` per call, or a function of the stored value).
pub(crate) enum TtlSpec {
    /// `ttl = "5m"` or `ttl = 300`.
    Fixed(Ttl),
    /// `ttl = <expression>`, `ttl = |v: &T| ...` or `ttl = path`.
    Run(Expr),
}

/// Parses `ttl`: a literal (checked as [`parse_ttl`] does), or any other
/// expression, kept for run time.
pub(crate) fn parse_ttl_spec(errors: &mut Errors, value: Expr) -> Option<TtlSpec> {
    match &value {
        // A negative literal is a literal (and an error); `*TTL` is not.
        Expr::Lit(_)
        | Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            ..
        }) => parse_ttl(errors, "ttl", &value).map(TtlSpec::Fixed),
        _ => Some(TtlSpec::Run(value)),
    }
}

/// Parses the value of a duration option named `what`.
pub(crate) fn parse_ttl(errors: &mut Errors, what: &str, value: &Expr) -> Option<Ttl> {
    let err = |span: Span, msg: String| syn::Error::new(span, msg);
    let duration = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match humantime::parse_duration(s.value().trim()) {
            Ok(d) => d,
            Err(e) => {
                errors.push(err(
                    s.span(),
                    format!(
                        "`{what} = {:?}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h 30m\", or a number of seconds",
                        s.value()
                    ),
                ));
                return None;
            }
        },
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                errors.push(err(
                    i.span(),
                    format!("`{what}` in seconds must be a whole number that fits in u64"),
                ));
                return None;
            }
        },
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            ..
        }) => {
            errors.push(syn::Error::new_spanned(
                value,
                format!("`{what}` cannot be negative"),
            ));
            return None;
        }
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => {
            errors.push(err(
                f.span(),
                format!("`{what}` in seconds must be a whole number; for fractions write a string such as \"1500ms\""),
            ));
            return None;
        }
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                format!("`{what}` takes a literal: a string such as \"5m\" or a number of seconds"),
            ));
            return None;
        }
    };
    let span = match value {
        Expr::Lit(l) => l.lit.span(),
        _ => Span::call_site(),
    };
    if duration.is_zero() {
        errors.push(err(
            span,
            format!(
                "`{what}` must be greater than zero{}",
                if what == "ttl" {
                    ": a zero TTL would cache nothing"
                } else {
                    ""
                }
            ),
        ));
        return None;
    }
    if duration < Duration::from_millis(1) {
        errors.push(err(
            span,
            format!("`{what}` must be at least 1ms: backends keep time in milliseconds"),
        ));
        return None;
    }
    // The runtime keeps entries at most this long (its `LONGEST`): a
    // longer duration would be cut to it without a word.
    const MAX_DAYS: u64 = 100 * 365;
    if duration > Duration::from_secs(MAX_DAYS * 24 * 60 * 60) {
        errors.push(err(
            span,
            format!(
                "`{what}` is longer than the most a cache keeps anything, 100 years \
                 ({MAX_DAYS} days); write at most \"{MAX_DAYS}d\""
            ),
        ));
        return None;
    }
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    Some(Ttl { millis, span })
}
