//! Key templates: `"video:{video_id}:placements"`. Placeholders are checked
//! against the function's parameters at compile time.

use syn::LitStr;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text written as is.
    Literal(String),
    /// A parameter whose value is written as a key part.
    Param(String),
}

/// Splits a template into pieces; `{{` and `}}` stand for literal braces.
pub(crate) fn parse(lit: &LitStr) -> syn::Result<Vec<Piece>> {
    let text = lit.value();
    if text.is_empty() {
        return Err(syn::Error::new(lit.span(), "key template is empty"));
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(syn::Error::new(
                                lit.span(),
                                format!(
                                    "unclosed `{{` in key template {text:?}; write `{{{{` for a literal brace"
                                ),
                            ));
                        }
                    }
                }
                let name = name.trim().to_owned();
                if name.is_empty() || !is_ident(&name) {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "`{{{name}}}` in key template {text:?} must name a parameter, e.g. `{{video_id}}`"
                        ),
                    ));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Param(name));
            }
            '}' => {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "unmatched `}}` in key template {text:?}; write `}}}}` for a literal brace"
                    ),
                ));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> LitStr {
        LitStr::new(s, proc_macro2::Span::call_site())
    }

    #[test]
    fn splits_literals_and_params() {
        let pieces = parse(&lit("video:{video_id}:placements")).expect("parses");
        assert_eq!(
            pieces,
            vec![
                Piece::Literal("video:".into()),
                Piece::Param("video_id".into()),
                Piece::Literal(":placements".into())
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        let pieces = parse(&lit("a{{b}}{c}")).expect("parses");
        assert_eq!(
            pieces,
            vec![Piece::Literal("a{b}".into()), Piece::Param("c".into())]
        );
    }

    #[test]
    fn rejects_unclosed_and_non_identifiers() {
        assert!(parse(&lit("a{b")).is_err());
        assert!(parse(&lit("a}b")).is_err());
        assert!(parse(&lit("{}")).is_err());
        assert!(parse(&lit("{a.b}")).is_err());
        assert!(parse(&lit("")).is_err());
    }
}
