//! Keeping secrets out of everything the cache shows: a Redis URL's password
//! is masked in errors and `Debug` output, and a password or a private key
//! given to the builder is never printed.

/// What is shown instead of a secret.
pub(crate) const MASK: &str = "***";

/// `url` with its password masked: `redis://user:***@host:6379/0`. Works by
/// position, not by parsing, so that a URL too broken to parse is masked the
/// same way: everything between `://` (or the start) and the last `@` after
/// the first `:` of the user info is hidden, and so are the values of
/// `password=` and `pass=` query parameters (unix-socket URLs carry it
/// there). It masks too much rather than too little.
pub(crate) fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    // The last `@`: a password may hold an unencoded `@` in a broken URL.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(MASK);
                }
                // No `:`: a user name alone, or a bare token; hidden too.
                None if userinfo.is_empty() => {}
                None => out.push_str(MASK),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match rest.find('?') {
        Some(q) => {
            out.push_str(&rest[..=q]);
            let query: Vec<String> = rest[q + 1..]
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => format!("{name}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&query.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    ["pass", "password", "token", "secret"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

/// A secret held by the builder: its `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_they_are() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:hunter2@host:6379/1", "redis://:***@host:6379/1"),
            ("redis://app:hunter2@host", "redis://app:***@host"),
            (
                "rediss://app:hun@ter2@host:6380",
                "rediss://app:***@host:6380",
            ),
            ("redis://hunter2@host", "redis://***@host"),
            ("redis://@host", "redis://@host"),
            (
                "redis+unix:///run/redis.sock?db=2&pass=hunter2",
                "redis+unix:///run/redis.sock?db=2&pass=***",
            ),
            ("redis://app:hunter2@host:port", "redis://app:***@host:port"),
            ("app:hunter2@host", "app:***@host"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(mask_url(url), want, "{url}");
            assert!(!mask_url(url).contains("hunter2"), "{url}");
        }
    }

    #[test]
    fn a_secret_is_never_debug_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");
    }
}
