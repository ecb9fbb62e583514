//! Redis's glob syntax (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), for pattern
//! invalidation on the memory backend, so a pattern means the same thing on
//! every backend.

/// Whether `text` matches `pattern` as Redis `SCAN MATCH` would match it.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative with one backtrack point for the last `*`: linear enough
    // for keys, and no recursion to blow the stack on hostile patterns.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
            continue;
        }
        if pi < p.len()
            && let Some(next) = one(&p, pi, t[ti])
        {
            pi = next;
            ti += 1;
            continue;
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches one character against the pattern element at `pi`; returns the
/// index after that element, or `None` when it does not match.
fn one(p: &[char], pi: usize, c: char) -> Option<usize> {
    match p[pi] {
        '?' => Some(pi + 1),
        '\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        '[' => {
            let mut i = pi + 1;
            let negate = i < p.len() && (p[i] == '^' || p[i] == '!');
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            while i < p.len() && (p[i] != ']' || first) {
                first = false;
                if p[i] == '\\' && i + 1 < p.len() {
                    hit |= p[i + 1] == c;
                    i += 2;
                } else if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                    let (lo, hi) = if p[i] <= p[i + 2] {
                        (p[i], p[i + 2])
                    } else {
                        (p[i + 2], p[i])
                    };
                    hit |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    hit |= p[i] == c;
                    i += 1;
                }
            }
            // An unclosed `[` matches nothing, as in Redis.
            if i >= p.len() {
                return None;
            }
            (hit != negate).then_some(i + 1)
        }
        other => (other == c).then_some(pi + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

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
    fn classes_and_ranges() {
        assert!(matches("id:[0-9]", "id:5"));
        assert!(!matches("id:[0-9]", "id:x"));
        assert!(matches("id:[^0-9]", "id:x"));
        assert!(matches("[abc]", "b"));
        assert!(!matches("[abc", "a"), "an unclosed class matches nothing");
    }

    #[test]
    fn escapes_match_only_themselves() {
        assert!(matches(r"p:\*", "p:*"));
        assert!(!matches(r"p:\*", "p:anything"));
        assert!(matches(r"p:\[a-z\]:*", "p:[a-z]:1"));
        assert!(!matches(r"p:\[a-z\]:*", "p:q:1"));
    }
}
