//! Redis's glob syntax (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), for pattern
//! invalidation on the memory backend, so a pattern selects the same keys on
//! every backend.
//!
//! Redis matches bytes, not characters, and its parser has quirks that this
//! one reproduces on purpose (all checked against a real server, see
//! `tests/tests/glob_parity.rs`):
//!
//! - `?` and every class match exactly one byte: `?` does not match `é`
//!   (two bytes), `??` does.
//! - Only `^` negates a class; `!` is a plain member.
//! - A `]` right after `[` or `[^` closes the class: `[]` matches nothing,
//!   `[^]` any one byte.
//! - `x-y` is a range whenever two bytes follow `x`, even if the second is
//!   the closing `]` (`[a-]` is the range `]`..=`a`). A reversed range is
//!   swapped. Bounds compare as C `char`s, signed on x86-64, so a byte of
//!   0x80 or more sorts below ASCII.
//! - `\x` inside or outside a class is the byte `x`; a trailing lone `\`
//!   is a literal backslash.
//! - An unclosed class runs to the end of the pattern and is still a class:
//!   `a[bc` matches `ab` and `ac`; `a[` matches nothing, `a[^` any `a?`.
//! - An empty key matches only the empty pattern and the pattern `*` alone
//!   (`SCAN` and `KEYS` skip the matcher for `*`; the matcher itself needs
//!   at least one byte for a `*` to be tried).
//! - A pattern with more than [`MAX_STARS`] runs of `*` followed by more
//!   pattern matches nothing (Redis 7.0.9 on: its matcher recurses once per
//!   such run and gives up past that depth, and a match goes through each).

/// Whether `text` matches `pattern` as Redis `SCAN MATCH` would match it.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    matches_bytes(pattern.as_bytes(), text.as_bytes())
}

/// The most runs of `*` followed by more pattern that Redis follows (see
/// the module docs).
const MAX_STARS: usize = 1_000;

/// How many runs of `*` in `p` have more pattern after them, counting up
/// to `MAX_STARS + 1`.
fn inner_stars(p: &[u8]) -> usize {
    let (mut i, mut runs) = (0, 0);
    while i < p.len() && runs <= MAX_STARS {
        if p[i] == b'*' {
            while p.get(i) == Some(&b'*') {
                i += 1;
            }
            if i < p.len() {
                runs += 1;
            }
        } else {
            // Where an element ends depends on the pattern only.
            i = element(p, i, 0).0;
        }
    }
    runs
}

fn matches_bytes(p: &[u8], t: &[u8]) -> bool {
    if t.is_empty() {
        return p.is_empty() || p == b"*";
    }
    // Each such run needs a byte of text to be tried, so a pattern of more
    // runs than that cannot match a shorter text: counted only when the
    // text is long enough to matter. (`>=` for the first `>` survives
    // cargo-mutants as equivalent: a text of exactly `MAX_STARS` bytes
    // cannot match more runs either.)
    if t.len() > MAX_STARS && inner_stars(p) > MAX_STARS {
        return false;
    }
    // Every element other than `*` matches exactly one byte, and where an
    // element ends depends on the pattern only, so one backtrack point, for
    // the last `*`, is enough: O(pattern × text), no recursion.
    let (mut pi, mut ti) = (0, 0);
    // The element after the last `*`, and the text byte it was last tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            pi += 1;
            star = Some((pi, ti));
            continue;
        }
        if pi < p.len() {
            let (next, hit) = element(p, pi, t[ti]);
            if hit {
                pi = next;
                ti += 1;
                continue;
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                // (scripts/mutants: `st * 1` here survives, and is
                // equivalent: the first retry then repeats the attempt the
                // `*` began with, which fails the same way, and the next
                // goes on from `st + 1` as here: same answers, more work.)
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// `pattern` rewritten to select exactly the same texts, and to go on
/// doing so with more pattern appended: every class closed, and no lone
/// backslash at the end. A Redis Cluster wraps a pattern in the braces of
/// its value keys (`{pattern}`), and without this an unclosed class
/// (`a[b`) would take the `}` in as a member, and a trailing `\` would
/// escape it: the pattern would select other keys than on one server.
///
/// Inside a class, a member that is not a range is written so that what
/// follows cannot make it one: a literal `-` as `\-`, and a class's
/// trailing lone `\` (a literal backslash) as `\\`. Ranges and escapes
/// are copied as they are (a range takes its three bytes whatever they
/// are). Only ASCII backslashes are added, each before an ASCII byte, so
/// the result is still UTF-8.
pub(crate) fn closed(pattern: &str) -> std::borrow::Cow<'_, str> {
    let p = pattern.as_bytes();
    if !p.contains(&b'[') && p.last() != Some(&b'\\') {
        return std::borrow::Cow::Borrowed(pattern);
    }
    let mut out: Vec<u8> = Vec::with_capacity(p.len() + 8);
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => {
                out.extend_from_slice(&p[i..i + 2]);
                i += 2;
            }
            // A lone backslash at the end: the byte itself.
            b'\\' => {
                out.extend_from_slice(b"\\\\");
                i += 1;
            }
            b'[' => {
                out.push(b'[');
                i += 1;
                if p.get(i) == Some(&b'^') {
                    out.push(b'^');
                    i += 1;
                }
                // The class's members, as `class` reads them.
                loop {
                    let Some(&b) = p.get(i) else {
                        out.push(b']');
                        break;
                    };
                    if b == b'\\' && i + 1 < p.len() {
                        out.extend_from_slice(&p[i..i + 2]);
                        i += 2;
                    } else if b == b']' {
                        out.push(b']');
                        i += 1;
                        break;
                    } else if i + 2 < p.len() && p[i + 1] == b'-' {
                        out.extend_from_slice(&p[i..i + 3]);
                        i += 3;
                    } else {
                        if b == b'-' || b == b'\\' {
                            out.push(b'\\');
                        }
                        out.push(b);
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were added, each before an ASCII byte or at the end.
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| pattern.to_owned()))
}

/// Tests the byte `c` against the element starting at `at` (not a `*`):
/// returns where the next element starts, and whether `c` matched.
fn element(p: &[u8], at: usize, c: u8) -> (usize, bool) {
    match p[at] {
        b'?' => (at + 1, true),
        b'\\' if at + 1 < p.len() => (at + 2, p[at + 1] == c),
        b'[' => class(p, at + 1, c),
        literal => (at + 1, literal == c),
    }
}

/// A class whose body starts at `i`, just after the `[`.
fn class(p: &[u8], mut i: usize, c: u8) -> (usize, bool) {
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        let Some(&b) = p.get(i) else {
            // Unclosed: the class ends with the pattern.
            return (p.len(), hit != negate);
        };
        if b == b'\\' && i + 1 < p.len() {
            hit |= p[i + 1] == c;
            i += 2;
        } else if b == b']' {
            return (i + 1, hit != negate);
        } else if i + 2 < p.len() && p[i + 1] == b'-' {
            // Redis compares C `char`s: signed on the x86-64 builds this
            // follows.
            let (a, z) = (b as i8, p[i + 2] as i8);
            let (lo, hi) = if a <= z { (a, z) } else { (z, a) };
            hit |= (lo..=hi).contains(&(c as i8));
            i += 3;
        } else {
            hit |= b == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_STARS, closed, inner_stars, matches};

    /// Runs of `*` with more pattern after them, as Redis's matcher
    /// recurses on them: doubled stars are one run, a trailing run none,
    /// escaped and class stars are literals.
    #[test]
    fn inner_stars_count_the_runs_redis_recurses_on() {
        for (pattern, runs) in [
            ("", 0),
            ("*", 0),
            ("a*", 0),
            ("*a", 1),
            ("**a***", 1),
            ("*a*b*", 2),
            (r"\*a", 0),
            (r"\**a", 1),
            (r"\*", 0),
            (r"\*a*", 0),
            ("[*]a*b", 1),
            ("*[a*]", 1),
        ] {
            assert_eq!(inner_stars(pattern.as_bytes()), runs, "{pattern:?}");
        }
        let many = "*a".repeat(5_000);
        assert_eq!(
            inner_stars(many.as_bytes()),
            MAX_STARS + 1,
            "stops counting"
        );
        let text = "a".repeat(5_000);
        assert!(!matches(&many, &text));
        assert!(matches(&"*a".repeat(MAX_STARS), &text));
    }

    /// Generated patterns and texts over every metacharacter, a dash, a
    /// backslash and multi-byte characters: the closed pattern selects what
    /// the pattern selects, alone and wrapped as a cluster wraps it (the
    /// memory matcher is Redis's, see `tests/tests/glob_parity.rs`).
    #[test]
    fn a_closed_pattern_selects_the_same_texts_alone_and_wrapped() {
        const ALPHABET: &[char] = &[
            'a', 'b', 'z', ':', '*', '?', '[', ']', '^', '-', '\\', 'é', '}',
        ];
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let text = |rng: &mut fastrand::Rng, max: usize| -> String {
            let len = rng.usize(0..=max);
            (0..len)
                .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                .collect()
        };
        for _ in 0..20_000 {
            let pattern = text(&mut rng, 7);
            let c = closed(&pattern);
            for _ in 0..8 {
                // Keys are never empty (the empty text is Redis's special
                // case, matched by `*` alone, and by `**` once wrapped).
                let t = text(&mut rng, 5);
                if t.is_empty() {
                    continue;
                }
                let want = matches(&pattern, &t);
                let wrapped = |suffix: &str| {
                    matches(&format!("{{{c}}}{suffix}"), &format!("{{{t}}}{suffix}"))
                };
                assert!(
                    matches(&c, &t) == want && wrapped("") == want && wrapped(":~lease") == want,
                    "seed {seed}: {pattern:?} closed as {c:?} on {t:?}: {want} alone"
                );
            }
        }
    }

    #[test]
    fn closing_changes_only_what_more_pattern_would_change() {
        assert_eq!(closed("p:a*"), "p:a*");
        assert_eq!(closed("p:[0-9]"), "p:[0-9]");
        assert_eq!(closed("a[b"), "a[b]");
        assert_eq!(closed("a["), "a[]");
        assert_eq!(closed("a[^"), "a[^]");
        assert_eq!(closed("a\\"), "a\\\\");
        assert_eq!(closed("a\\\\"), "a\\\\", "an escaped backslash is kept");
        assert_eq!(closed("[ab-"), "[ab\\-]");
        assert_eq!(closed("[a-]"), "[a-]]", "`]` ends the range `]`..=`a`");
        assert_eq!(closed("[é-"), "[é\\-]");
        assert_eq!(closed("[b\\"), "[b\\\\]");
    }

    #[test]
    fn stars_questions_and_literals() {
        assert!(matches("video:7:*", "video:7:placements"));
        assert!(matches("video:7:*", "video:7:"));
        assert!(!matches("video:7:*", "video:70:placements"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn a_negated_class_holds_what_follows_the_caret_only() {
        // Neither the `^` nor the `[` is a member of `[^a]`.
        assert!(matches("[^a]", "^"));
        assert!(matches("[^a]", "["));
        assert!(!matches("[^a]", "a"));
    }

    #[test]
    fn a_dash_at_the_end_of_an_unclosed_class_is_a_member_not_a_range() {
        assert!(matches("[a-", "a"));
        assert!(matches("[a-", "-"));
        assert!(!matches("[a-", "b"));
    }

    #[test]
    fn classes_and_ranges() {
        assert!(matches("id:[0-9]", "id:5"));
        assert!(!matches("id:[0-9]", "id:x"));
        assert!(matches("id:[^0-9]", "id:x"));
        assert!(matches("[abc]", "b"));
        assert!(matches("[abc", "a"), "an unclosed class is still a class");
    }

    #[test]
    fn escapes_match_only_themselves() {
        assert!(matches(r"p:\*", "p:*"));
        assert!(!matches(r"p:\*", "p:anything"));
        assert!(matches(r"p:\[a-z\]:*", "p:[a-z]:1"));
        assert!(!matches(r"p:\[a-z\]:*", "p:q:1"));
    }

    // Every expectation below was checked against a real redis-server 7.0
    // (`KEYS pattern`); `tests/tests/glob_parity.rs` checks thousands more.

    #[test]
    fn question_mark_is_one_byte() {
        assert!(!matches("caf?", "café"), "`é` is two bytes");
        assert!(matches("caf??", "café"));
        assert!(!matches("?", "é"));
        assert!(matches("??", "é"));
    }

    #[test]
    fn only_caret_negates() {
        assert!(matches("[^a]", "b"));
        assert!(!matches("[^a]", "a"));
        assert!(matches("[!a]", "!"), "`!` is a plain member");
        assert!(matches("[!a]", "a"));
        assert!(!matches("[!a]", "b"));
    }

    #[test]
    fn a_leading_bracket_closes_the_class() {
        // `[]` is an empty class: it matches nothing, so `[]a]` never
        // matches; `[^]` is its negation and matches any one byte.
        assert!(!matches("[]", "]"));
        assert!(!matches("[]", ""));
        assert!(!matches("[]a]", "]"));
        assert!(!matches("[]a]", "a"));
        assert!(!matches("[]a]", "]a]"));
        assert!(!matches("[]a]", "xa]"));
        assert!(matches("[^]", "x"));
        assert!(matches("[^]", "]"));
        assert!(!matches("[^]", "xy"));
        assert!(matches("[^]a]", "]a]"));
        assert!(matches("[^]a]", "xa]"));
        assert!(!matches("[^]a]", "]"));
    }

    #[test]
    fn ranges_and_dashes() {
        assert!(matches("[z-a]", "c"), "a reversed range is swapped");
        assert!(!matches("[z-a]", "-"));
        assert!(matches("[-a]", "-"));
        assert!(matches("[--/]", "-"));
        // `[a-]`: the range runs from `a` to the closing `]` (`]^_`a`), and
        // the class is then unclosed.
        for c in ["]", "^", "_", "`", "a"] {
            assert!(matches("[a-]", c), "{c}");
        }
        assert!(!matches("[a-]", "-"));
        assert!(!matches("[a-]", "b"));
        assert!(matches("[a-]x", "x"), "the unclosed class takes in `x`");
        assert!(!matches("[a-]x", "ax"));
        assert!(matches("[a-]]", "_"));
        // `[ab-]` holds `a` and the range `b`-`]`, not `-`.
        assert!(!matches("[ab-]", "-"));
        assert!(matches("[ab-]", "_"));
    }

    #[test]
    fn escapes_inside_classes() {
        assert!(matches(r"[\]]", "]"));
        assert!(matches(r"[\-]", "-"));
        assert!(matches(r"[a\-z]", "-"));
        assert!(!matches(r"[a\-z]", "b"), r"`\-` is no range");
        assert!(matches(r"[\^a]", "^"));
        assert!(!matches(r"[\^a]", "b"), r"`\^` does not negate");
        assert!(matches(r"[\", r"\"), "a lone `\\` in a class is a member");
    }

    #[test]
    fn an_unclosed_class_runs_to_the_end_of_the_pattern() {
        assert!(matches("a[b", "ab"));
        assert!(!matches("a[b", "a[b"));
        assert!(!matches("a[b", "a"));
        assert!(matches("a[bc", "ac"));
        assert!(matches("[a-c", "b"));
        assert!(
            !matches("a[", "a["),
            "an empty unclosed class matches nothing"
        );
        assert!(!matches("a[", "ab"));
        assert!(matches("a[^", "ab"), "a negated empty one matches any byte");
        assert!(!matches("a[^", "a"));
    }

    #[test]
    fn backslashes_outside_classes() {
        assert!(matches(r"\a", "a"));
        assert!(matches(r"a\", r"a\"), "a trailing `\\` matches itself");
        assert!(!matches(r"a\", "a"));
        assert!(matches(r"\", r"\"));
        assert!(matches(r"a\\", r"a\"));
    }

    #[test]
    fn classes_work_on_bytes() {
        // `é` is the bytes C3 A9; Redis compares range bounds as C `char`s,
        // signed on x86-64, so `[a-é]` is the range C3..=61 (wrapping through
        // 00) plus the member A9.
        assert!(!matches("[é]", "é"));
        assert!(matches("[é][é]", "é"));
        assert!(!matches("[a-é]", "b"));
        assert!(matches("[a-é]", "0"));
        assert!(matches("[a-é]", r"\"));
        assert!(matches("[a-é]?", "é"));
        assert!(!matches("[a-é]?", "bx"));
    }

    #[test]
    fn empty_texts() {
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        // SCAN and KEYS skip matching for the pattern `*` alone; any other
        // pattern goes through the matcher, which never matches an empty key.
        assert!(matches("*", ""));
        assert!(!matches("**", ""));
        assert!(matches("a**", "a"));
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        let text = "a".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!matches("*a*a*a*a*a*a*b", &text));
        assert!(!matches("*?*?*?*?*?*?*?*?*?*?*b", &text));
        assert!(!matches(&format!("{}c", "a*".repeat(200)), &text));
        assert!(matches(&"*a".repeat(50), &text));
        assert!(!matches(
            &format!("*[{}]", "a-a".repeat(300)),
            &format!("{text}b")
        ));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
}
