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
                // `{id:?}`, `{id:>8}`: a format spec, as in `format!`.
                if let Some((param, _)) = name.split_once(':')
                    && is_ident(param.trim())
                {
                    let param = param.trim();
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "`{{{name}}}` in key template {text:?}: a placeholder takes a parameter name only, \
                             no format spec (each type's key text is fixed: see `KeyPart`); write `{{{param}}}`"
                        ),
                    ));
                }
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

/// Checks that a template keeps keys injective: split at `:`, every segment
/// is either one placeholder alone or literal text of letters, digits and
/// `_-./` (and, in a pattern, the glob characters `*?[]^!`). A placeholder
/// sharing a segment with text (`user-{id}`) could equal another key (`id` =
/// `"7"` under `user-` is the literal `user-7`), and an empty segment could
/// equal a key part that is the empty string.
pub(crate) fn check_segments(text: &str, pieces: &[Piece], glob: bool) -> Result<(), String> {
    #[derive(Default)]
    struct Segment {
        text: String,
        params: Vec<String>,
    }
    let mut segments = vec![Segment::default()];
    for piece in pieces {
        match piece {
            Piece::Param(name) => segments
                .last_mut()
                .expect("never empty")
                .params
                .push(name.clone()),
            Piece::Literal(literal) => {
                let mut chunks = literal.split(':');
                if let Some(first) = chunks.next() {
                    segments
                        .last_mut()
                        .expect("never empty")
                        .text
                        .push_str(first);
                }
                for chunk in chunks {
                    segments.push(Segment {
                        text: chunk.to_owned(),
                        params: Vec::new(),
                    });
                }
            }
        }
    }
    for segment in &segments {
        match segment.params.as_slice() {
            [] => {
                if segment.text.is_empty() {
                    return Err(format!(
                        "key template {text:?} has an empty segment between `:` separators"
                    ));
                }
                if let Some(c) = segment.text.chars().find(|c| {
                    !(allowed_in_name(*c) || glob && matches!(c, '*' | '?' | '[' | ']' | '^' | '!'))
                }) {
                    let also = if glob {
                        ", the glob characters `*?[]^!`"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "{c:?} is not allowed in the text of key template {text:?}: use letters, digits and `_-./`{also}, with `:` between segments"
                    ));
                }
            }
            [name] if segment.text.is_empty() => {
                let _ = name;
            }
            [name, ..] => {
                return Err(format!(
                    "`{{{name}}}` must stand alone between `:` separators in key template {text:?}: \
                     a placeholder sharing a segment with other text could make two different \
                     arguments give one key"
                ));
            }
        }
    }
    Ok(())
}

/// What a prefix and the literal text of a key template may hold: nothing
/// that separates (`:`), escapes (`\\`, `~`) or matches (`*`, `?`, `[`, `]`).
pub(crate) fn allowed_in_name(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
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

    fn segments(s: &str, glob: bool) -> Result<(), String> {
        check_segments(s, &parse(&lit(s)).expect("parses"), glob)
    }

    #[test]
    fn placeholders_stand_alone_between_separators() {
        assert!(segments("video:{video_id}:placements", false).is_ok());
        assert!(segments("{a}:{b}", false).is_ok());
        assert!(segments("the-key", false).is_ok());
        assert!(segments("video:{video_id}:*", true).is_ok());
        assert!(segments("user-{id}", false).is_err());
        assert!(segments("{a}{b}", false).is_err());
        assert!(segments("{a}x:y", false).is_err());
        assert!(segments("video::x", false).is_err());
        assert!(segments("video:", false).is_err());
        assert!(segments(":video", false).is_err());
        assert!(
            segments("video:*", false).is_err(),
            "globs only in patterns"
        );
        assert!(segments("a~b", false).is_err());
        assert!(segments(r"a\\b", true).is_err());
        assert!(segments("a b", true).is_err());
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
