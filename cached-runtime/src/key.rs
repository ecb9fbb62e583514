//! Cache keys: `{namespace}:{prefix}:{key}`, built from typed key parts.
//!
//! Keys are injective: distinct arguments give distinct keys. Parts are
//! joined with `:`, and user text escapes `:` (and `\\`, and `~`, which alone
//! stands for `None`) with a backslash, so `("a:b", "c")` and `("a", "b:c")`
//! differ; prefixes and template text cannot hold `:` (a compile error). When
//! a part goes into a *pattern*, its text is glob-escaped as well, so it can
//! never widen an invalidation: a key part of `*` removes only its own
//! entries.

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
    note = "write `key = hashed(&...)` (a float, a struct, anything `Serialize`: a stable hash of its value); \
            a type defined in your crate may implement `cached_runtime::KeyPart` instead"
)]
pub trait KeyPart {
    /// Appends this part to `out`. Text must go through [`push_key_text`].
    fn write_key_part(&self, out: &mut String);
}

/// Appends user text to a key: as it is, but for `:` (the separator of key
/// parts), `\\` and `~` (alone, it stands for `None`), which get a
/// backslash. Read left to right, an escaped key splits back into its parts
/// one way only, so distinct parts give distinct keys.
pub fn push_key_text(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, ':' | '\\' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends `text` to a glob pattern so that it matches only itself: the
/// characters Redis patterns give meaning to (`*`, `?`, `[`, `]`, `\\`) get a
/// backslash. For text a key holds as it is (a key passed to
/// [`Cache::get`](crate::Cache::get) by hand); for a part of a key an
/// attribute built, use [`push_pattern_part`], which escapes it as the key
/// holds it first.
pub fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends a key part to a glob pattern as the keys an attribute builds
/// hold it (text escaped by [`push_key_text`]: `a:b` is stored `a\\:b`),
/// then escaped as [`push_escaped`] escapes text, so that the pattern
/// matches that part and nothing else. For user text in a hand-written
/// [`invalidate_pattern`](crate::Cache::invalidate_pattern) of entries
/// `#[cached]` stored:
///
/// ```
/// # async fn forget(cache: &cached_runtime::Cache, owner: &str) -> Result<(), cached_runtime::CacheError> {
/// // Entries of `#[cached(prefix = "doc", key = (owner, id))]` for this owner.
/// let mut pattern = String::from("doc:");
/// cached_runtime::push_pattern_part(&mut pattern, owner);
/// pattern.push_str(":*");
/// cache.invalidate_pattern(&pattern).await?;
/// # Ok(()) }
/// ```
pub fn push_pattern_part<P: KeyPart + ?Sized>(out: &mut String, part: &P) {
    let mut text = String::new();
    part.write_key_part(&mut text);
    push_escaped(out, &text);
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
/// A `Some` whose value is written starting with `~` (a `None` inside it:
/// `Option<Option<T>>`, or a tuple led by one) gets one more `~` in front,
/// so `Some(None)` (`~~`) differs from `None` (`~`).
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut String) {
        match self {
            Some(v) => {
                let start = out.len();
                v.write_key_part(out);
                if out[start..].starts_with('~') {
                    out.insert(start, '~');
                }
            }
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
/// Made by [`hashed`]: XXH3-128 of a canonical, type-tagged binary encoding
/// of the value's serde data model, written by this crate (not JSON, and not
/// affected by any serde_json feature). Every item carries a tag and every
/// length is explicit, so distinct values have distinct encodings; map and
/// struct entries are sorted, so field order and map iteration order do not
/// matter. The hash is the same on every platform, every run and every
/// release that does not announce a change of key format. Collisions between
/// distinct values are out of reach in practice (128 bits).
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
///
/// Equal values hash equally, and so do values that differ only in ways a
/// query cannot mean differently:
///
/// - integers of any width or signedness with the same value (`1u8`, `1i64`,
///   `1u128`), so widening a field keeps its keys; `u128` and `i128` cover
///   their whole range;
/// - an `f32` and the `f64` it widens to, and every NaN with every other;
/// - a `char` and the one-character string;
/// - a seq, a tuple and a tuple struct with the same elements;
/// - a struct and a map with the same string keys, in any field or iteration
///   order (maps may have keys of any type: tuples, bytes, integers);
/// - a newtype struct and its content; `()` and a unit struct.
///
/// Everything else is told apart: `None`, `Some(None)`, `()`, NaN, `+inf`,
/// `-inf`, `0.0` and `-0.0` all differ; enum variants are identified by
/// *name* (reordering variants keeps keys) and differ from strings and from
/// each other's shapes; bytes differ from a seq of integers; a map with a
/// duplicate key keeps every entry. Type names are not hashed.
///
/// Never panics and always returns. If the value's `Serialize` impl fails
/// (returns an error, even one it then ignores), the call gets a hash of
/// fresh random bytes, so it shares a cache entry with no other call: every
/// such call is a miss, which is slower but never serves one caller's result
/// to another. One `warn` is logged per such call.
pub fn hashed<T: Serialize + ?Sized>(value: &T) -> Hashed {
    match crate::canonical::to_bytes(value) {
        Ok(bytes) => Hashed(xxhash_rust::xxh3::xxh3_128(&bytes)),
        Err(error) => {
            tracing::warn!(
                value_type = std::any::type_name::<T>(),
                %error,
                "hashed(): the value's Serialize impl failed; this call gets a unique key and shares no cache entry"
            );
            Hashed(unique_hash())
        }
    }
}

/// A hash no other call gets: fresh random bytes plus a process-wide counter
/// (distinct within this process even if two thread-local generators agreed).
fn unique_hash() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut seed = [0u8; 24];
    seed[..16].copy_from_slice(&fastrand::u128(..).to_le_bytes());
    seed[16..].copy_from_slice(&CALLS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&seed)
}

/// The prefix of tag index keys (`{namespace}:~tag:{tag}`). Text parts of
/// keys escape `~`, so no entry key starts with it.
pub(crate) const TAG_PREFIX: &str = "~tag";

/// The `:`-separated segments that name what the cache keeps for itself:
/// leases (`{key}:~lease`), tag indexes (`{namespace}:~tag:{tag}`), the
/// namespace's epoch (`{namespace}:~epoch`), and a cluster's side keys.
const RESERVED: [&str; 5] = ["~lease", "~tag", "~epoch", "~tags", "~ltags"];

/// Whether a key given by hand names one the cache keeps for itself: it has
/// one of the [`RESERVED`] segments. No key the macros build has one (text
/// parts escape `~`, and `None` is a `~` alone), so only the typed API by
/// hand (`Cache::set("x:~lease")`) needs this check. Segments are split on
/// every `:`, escaped or not, as Redis sees the name.
pub(crate) fn is_reserved(key: &str) -> bool {
    key.contains('~') && key.split(':').any(|segment| RESERVED.contains(&segment))
}

/// Whether `key`, a full name as the engine builds it, is one of the
/// records the cache keeps for itself across a namespace (its epoch, a
/// tag's index or version), not an entry or a lease: its name begins with
/// `~` after the namespace (`{namespace}:~...`, or `~...` without one). Text
/// parts of keys escape `~`, so no entry's name begins so; a pattern as `*`
/// or `*:7` matches these names all the same, and invalidation skips them.
pub(crate) fn is_record(key: &str, namespace: &str) -> bool {
    let rest = if namespace.is_empty() {
        Some(key)
    } else {
        key.strip_prefix(namespace)
            .and_then(|rest| rest.strip_prefix(':'))
    };
    rest.is_some_and(|rest| rest.starts_with('~'))
}

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
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    #[test]
    fn records_are_the_names_that_begin_with_a_tilde_after_the_namespace() {
        assert!(is_record("ns:~tag:video:7", "ns"));
        assert!(is_record("ns:~epoch", "ns"));
        assert!(is_record("~epoch", ""));
        assert!(!is_record("ns:item:7", "ns"));
        assert!(!is_record("ns:item:7:~lease", "ns"));
        assert!(!is_record("other:~tag:t", "ns"));
        assert!(!is_record("ns~:tag", "ns"));
        assert!(!is_record("nsx:~tag:t", "ns"));
        assert!(!is_record("item:7", ""));
    }

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
    fn reserved_names_are_told_from_keys_the_macros_build() {
        for reserved in [
            "~epoch",
            "~tag:t",
            "x:~lease",
            "a:~tags:b",
            "~ltags",
            r"a\:~lease",
        ] {
            assert!(is_reserved(reserved), "{reserved}");
        }
        for key in [
            "x",
            "x:~",
            "x:~~",
            "x:~:1",
            "x:~1",
            r"x:\~lease",
            "x~lease",
            "x:~leases",
            "home:~alice",
            "",
        ] {
            assert!(!is_reserved(key), "{key}");
        }
        // What the macros build from hostile text is never reserved.
        for text in ["~lease", ":~lease", "~tag:t", "a:~epoch"] {
            let key = KeyBuilder::new("", "p").part(text).finish();
            assert!(!is_reserved(&key), "{key}");
            let key = KeyBuilder::new("", "p").part(&Some(Some(text))).finish();
            assert!(!is_reserved(&key), "{key}");
        }
        assert!(!is_reserved(
            &KeyBuilder::new("", "p").part(&Some(None::<u8>)).finish()
        ));
    }

    #[test]
    fn nested_options_give_distinct_keys() {
        let key = |p: &dyn Fn(KeyBuilder) -> KeyBuilder| p(KeyBuilder::new("ns", "p")).finish();
        let nested: [Option<Option<Option<&str>>>; 7] = [
            None,
            Some(None),
            Some(Some(None)),
            Some(Some(Some(""))),
            Some(Some(Some("~"))),
            Some(Some(Some("~~"))),
            Some(Some(Some("a"))),
        ];
        let tupled: [Option<(Option<&str>, u8)>; 4] = [
            None,
            Some((None, 1)),
            Some((Some("~"), 1)),
            Some((Some(""), 1)),
        ];
        // (Within a type: `None` is `~` whatever it is `None` of.)
        let nested: Vec<String> = nested.iter().map(|v| key(&|b| b.part(v))).collect();
        let tupled: Vec<String> = tupled.iter().map(|v| key(&|b| b.part(v))).collect();
        for keys in [nested, tupled] {
            let distinct: std::collections::HashSet<&String> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        }
        // Unchanged for one level: `None` is `~`, `Some(v)` is `v`.
        assert_eq!(key(&|b| b.part(&None::<&str>)), "ns:p:~");
        assert_eq!(key(&|b| b.part(&Some("a"))), "ns:p:a");
        assert_eq!(key(&|b| b.part(&Some(None::<&str>))), "ns:p:~~");
    }

    /// Hostile text for key parts: separators, escapes, glob characters,
    /// the `None` marker, unicode and the empty string.
    fn hostile(rng: &mut fastrand::Rng) -> String {
        const ALPHABET: &[&str] = &[
            "a", "b", "7", ":", "\\", "~", "*", "?", "[", "]", "é", "-", "",
        ];
        (0..rng.usize(0..5))
            .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
            .collect()
    }

    /// One generated key part, and what it means: its text, or `None`.
    #[derive(Debug, Clone)]
    enum Part {
        Text(String),
        Int(u64),
        Nothing,
    }

    impl Part {
        fn meaning(&self) -> Option<String> {
            match self {
                Part::Text(t) => Some(t.clone()),
                // An integer is its decimal text: a `u64` reader and a
                // `String` evictor of "7" name one entry.
                Part::Int(n) => Some(n.to_string()),
                Part::Nothing => None,
            }
        }
    }

    fn push(builder: KeyBuilder, part: &Part) -> KeyBuilder {
        match part {
            Part::Text(t) => builder.part(t.as_str()),
            Part::Int(n) => builder.part(n),
            Part::Nothing => builder.part(&None::<&str>),
        }
    }

    fn seed() -> u64 {
        let seed = std::env::var("KEY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("key injectivity seed: {seed} (replay with KEY_SEED={seed})");
        seed
    }

    #[test]
    fn distinct_arguments_give_distinct_keys_across_prefixes_and_templates() {
        let seed = seed();
        let mut rng = fastrand::Rng::with_seed(seed);
        // What a key means: its segments (prefix or template text, then
        // parts), `None` parts apart from every text.
        let mut seen: std::collections::HashMap<String, Vec<Option<String>>> =
            std::collections::HashMap::new();
        const PREFIXES: &[&str] = &["video", "video.x", "v", "placement", "7"];
        for _ in 0..30_000 {
            let prefix = PREFIXES[rng.usize(..PREFIXES.len())];
            let parts: Vec<Part> = (0..rng.usize(0..4))
                .map(|_| match rng.u8(..10) {
                    0 => Part::Nothing,
                    1 | 2 => Part::Int(rng.u64(0..100)),
                    _ => Part::Text(hostile(&mut rng)),
                })
                .collect();
            let mut meaning = vec![Some(prefix.to_owned())];
            meaning.extend(parts.iter().map(Part::meaning));
            // As `#[cached(prefix, key = (parts...))]`, or as a template
            // `"{prefix}:{a}:{b}"` over the same parts: one entry either way.
            let key = if rng.bool() {
                let mut b = KeyBuilder::new("ns", prefix);
                for part in &parts {
                    b = push(b, part);
                }
                b.finish()
            } else {
                let mut b = KeyBuilder::new("ns", "").literal(prefix);
                for part in &parts {
                    b = push(b.literal(":"), part);
                }
                b.finish()
            };
            if let Some(earlier) = seen.insert(key.clone(), meaning.clone()) {
                assert_eq!(
                    earlier, meaning,
                    "seed {seed}: {earlier:?} and {meaning:?} share the key {key:?}"
                );
            }
        }
        // Every meaning kept one key: no two keys for one meaning either.
        let meanings: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(
            meanings.len(),
            seen.len(),
            "seed {seed}: one meaning, two keys"
        );
    }

    #[test]
    fn a_pattern_over_a_part_matches_exactly_the_keys_of_that_part() {
        let seed = seed();
        let mut rng = fastrand::Rng::with_seed(seed);
        let texts: Vec<String> = (0..120).map(|_| hostile(&mut rng)).collect();
        let keys: Vec<(String, String)> = texts
            .iter()
            .flat_map(|t| {
                [
                    (
                        t.clone(),
                        KeyBuilder::new("ns", "video")
                            .part(t.as_str())
                            .part("placements")
                            .finish(),
                    ),
                    (
                        t.clone(),
                        KeyBuilder::new("ns", "video")
                            .part(t.as_str())
                            .part(&1u8)
                            .finish(),
                    ),
                ]
            })
            .collect();
        for text in &texts {
            // `patterns = ["video:{id}:*"]`
            let pattern = KeyBuilder::pattern("ns")
                .literal("video:")
                .part(text.as_str())
                .literal(":*")
                .finish();
            for (owner, key) in &keys {
                assert_eq!(
                    crate::glob::matches(&pattern, key),
                    owner == text,
                    "seed {seed}: pattern {pattern:?} (part {text:?}) against {key:?} (part {owner:?})"
                );
            }
        }
    }

    #[test]
    fn separators_in_text_do_not_collide() {
        let a = KeyBuilder::new("ns", "t").part(&("a:b", "c")).finish();
        let b = KeyBuilder::new("ns", "t").part(&("a", "b:c")).finish();
        assert_ne!(a, b);
        assert_eq!(a, r"ns:t:a\:b:c");
        // A string part "7:placements" under `video` is not the template
        // "video:{video_id}:placements" with 7.
        let text = KeyBuilder::new("ns", "video").part("7:placements").finish();
        let template = KeyBuilder::new("ns", "")
            .literal("video:")
            .part(&7u32)
            .literal(":placements")
            .finish();
        assert_ne!(text, template);
    }

    /// Golden key text of every key-part type: a stored key must not change
    /// between releases (it would empty every cache), and no type's part may
    /// silently drop out of the key.
    #[test]
    fn every_key_part_type_writes_its_golden_text() {
        fn text<P: KeyPart + ?Sized>(p: &P) -> String {
            let mut out = String::new();
            p.write_key_part(&mut out);
            out
        }
        assert_eq!(text(&true), "true");
        assert_eq!(text(&false), "false");
        assert_eq!(text(&'x'), "x");
        assert_eq!(text(&':'), r"\:");
        assert_eq!(text(&-7i64), "-7");
        assert_eq!(text(&u128::MAX), "340282366920938463463374607431768211455");
        assert_eq!(text("a:b"), r"a\:b");
        assert_eq!(text(&"a~".to_owned()), r"a\~");
        assert_eq!(text(&std::borrow::Cow::Borrowed("c:d")), r"c\:d");
        assert_eq!(text(&Box::new(5u8)), "5");
        assert_eq!(text(&std::sync::Arc::new("e")), "e");
        assert_eq!(text(&&&9u16), "9");
        assert_eq!(text(&()), "-");
        assert_eq!(text(&None::<u8>), "~");
        assert_eq!(text(&Some(3u8)), "3");
        assert_eq!(text(&(1u8, "x", None::<u8>)), "1:x:~");
        #[cfg(feature = "uuid")]
        assert_eq!(
            text(&uuid::Uuid::from_u128(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef
            )),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        let h = Hashed(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(text(&h), "0123456789abcdef0123456789abcdef");
        assert_eq!(h.value(), 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(format!("{h:?}"), "Hashed(0123456789abcdef0123456789abcdef)");
        assert_eq!(h.to_string(), "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn a_stats_name_is_the_first_segment_of_a_key() {
        assert_eq!(stats_name("placement:7"), "placement");
        assert_eq!(stats_name("products"), "products");
        assert_eq!(stats_name(""), "");
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

    #[derive(serde::Serialize)]
    struct ListQuery {
        video_id: u64,
        text: String,
        limit: Option<u32>,
        tags: Vec<String>,
    }

    #[derive(serde::Serialize)]
    enum Sort {
        #[allow(dead_code)]
        Newest,
        ByScore {
            min: f64,
        },
    }

    /// Fixed vectors. Changing any of these literals retires every hashed
    /// key deployed so far (each one becomes a miss once, and the old entries
    /// linger until their TTL): do it only on purpose, with a release note.
    #[test]
    fn hashed_is_stable_across_runs() {
        let query = ListQuery {
            video_id: 7,
            text: "a*b:c".into(),
            limit: Some(20),
            tags: vec!["x".into(), "y".into()],
        };
        let names = BTreeMap::from([("x", 1), ("y", 2)]);
        let pairs = BTreeMap::from([((1u32, 2u32), "a"), ((3, 4), "b")]);
        let golden = [
            (hashed(&("a", 1)), "8f08ffe7f1fc7ef2ee270a87193f9051"),
            (hashed(&query), "b5f5f929ec0ff094934ce18519d18ce7"),
            (hashed(&names), "3f5e9b546d7157830ee21a9f81951b7c"),
            (hashed(&pairs), "093512e1930356c13a59e62e0af3d747"),
            (hashed(&u128::MAX), "33f84f739182961cd10919ca8fffc0eb"),
            (hashed(&i128::MIN), "c599fa64322b7423aee81b85fac3642b"),
            (
                hashed(&Sort::ByScore { min: -0.5 }),
                "656bbc20543021fe425e29851ae15306",
            ),
            (
                hashed(&Some(Some(None::<u8>))),
                "c5c5b019288b79670eb60b08ef03fc56",
            ),
        ];
        for (i, (hash, expected)) in golden.iter().enumerate() {
            assert_eq!(hash.to_string(), *expected, "golden value #{i}");
        }
        // The same values written with other types or orders keep their keys.
        assert_eq!(hashed(&("a", 1u64)), golden[0].0);
        assert_eq!(
            hashed(&HashMap::from([
                ("y".to_string(), 2i8),
                ("x".to_string(), 1)
            ])),
            golden[2].0
        );
        assert_eq!(hashed(&Some(Some(None::<String>))), golden[7].0);
    }

    /// Values the JSON form merged into one key: each pair must differ.
    #[test]
    fn hashed_tells_apart_what_json_merged() {
        let map = |entries: &[((u32, u32), &'static str)]| {
            entries.iter().copied().collect::<HashMap<_, _>>()
        };
        let bytes_map = |k: &[u8]| HashMap::from([(k.to_vec(), 1)]);
        let pairs: [(Hashed, Hashed); 12] = [
            (hashed(&u128::MAX), hashed(&(u128::MAX - 1))),
            (
                hashed(&(u128::from(u64::MAX) + 1)),
                hashed(&(u128::from(u64::MAX) + 2)),
            ),
            (hashed(&i128::MIN), hashed(&(i128::MIN + 1))),
            (
                hashed(&map(&[((1, 2), "a")])),
                hashed(&map(&[((3, 4), "b")])),
            ),
            (hashed(&bytes_map(b"a")), hashed(&bytes_map(b"b"))),
            (hashed(&f64::NAN), hashed(&f64::INFINITY)),
            (hashed(&f64::NAN), hashed(&None::<f64>)),
            (hashed(&f64::INFINITY), hashed(&f64::NEG_INFINITY)),
            (hashed(&f64::INFINITY), hashed(&None::<f64>)),
            (hashed(&0.0f64), hashed(&-0.0f64)),
            (hashed(&Some(None::<u8>)), hashed(&None::<Option<u8>>)),
            (hashed(&()), hashed(&None::<u8>)),
        ];
        for (i, (a, b)) in pairs.iter().enumerate() {
            assert_ne!(a, b, "pair #{i}");
        }
        // And what the old form turned into one shared error text.
        let unhashable = [
            hashed(&u128::MAX),
            hashed(&(u128::MAX - 1)),
            hashed(&map(&[((1, 2), "a")])),
            hashed(&map(&[((3, 4), "b")])),
        ];
        let distinct: std::collections::HashSet<_> = unhashable.iter().collect();
        assert_eq!(distinct.len(), unhashable.len());
    }

    #[test]
    fn hashed_maps_with_any_keys_ignore_insertion_order() {
        let entries: Vec<((u32, u32), String)> = (0..50)
            .map(|i| ((i, i * 7 % 11), format!("v{i}")))
            .collect();
        let forward: HashMap<_, _> = entries.iter().cloned().collect();
        let mut backward = HashMap::with_capacity(1000);
        for (k, v) in entries.iter().rev().cloned() {
            backward.insert(k, v);
        }
        let sorted: BTreeMap<_, _> = entries.iter().cloned().collect();
        assert_eq!(hashed(&forward), hashed(&backward));
        assert_eq!(hashed(&forward), hashed(&sorted));
        backward.insert((0, 0), "changed".into());
        assert_ne!(hashed(&forward), hashed(&backward));
    }

    #[test]
    fn hashed_widened_integer_fields_keep_their_keys() {
        #[derive(serde::Serialize)]
        struct Narrow {
            id: u32,
            offset: i16,
        }
        #[derive(serde::Serialize)]
        struct Wide {
            offset: i64,
            id: u128,
        }
        assert_eq!(
            hashed(&Narrow { id: 7, offset: -3 }),
            hashed(&Wide { id: 7, offset: -3 })
        );
        assert_eq!(hashed(&1u8), hashed(&1i32));
        assert_ne!(hashed(&1u8), hashed(&1.0f64));
    }

    /// A `Serialize` impl that fails must never share a key: not with another
    /// failing call, not with anything else.
    #[test]
    fn hashed_failing_serialize_gets_a_fresh_key_every_call() {
        struct Fails;
        impl serde::Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("cannot serialize"))
            }
        }
        let first = hashed(&Fails);
        let second = hashed(&Fails);
        assert_ne!(first, second);
        // Nested inside other values: the same.
        let nested = || hashed(&vec![(1u8, Some(Fails))]);
        assert_ne!(nested(), nested());
        assert_ne!(nested(), first);
    }
}
