//! HTTP caching: Cache-Control presets, ETags and conditional GET
//! (RFC 9110, section 13), on the `headers` crate's typed headers.
//!
//! Three pieces, each usable alone:
//!
//! - **What a response says about caching**: [`CacheHeaders`] (an ETag, a
//!   Last-Modified date, a Cache-Control policy), with the presets
//!   [`private_max_age`], [`public_max_age`] and [`no_store`], and ETags from
//!   a row version ([`strong_etag`]) or from the content ([`weak_etag`]).
//! - **What a request asks**: [`ConditionalRequest`], its `If-None-Match` and
//!   `If-Modified-Since` conditions. A malformed condition is no condition:
//!   the answer is the full response, never an error.
//! - **The answer**: [`ConditionalRequest::respond`] gives a
//!   [`CachedResponse`]: `304 Not Modified` with the caching headers and no
//!   body when the client's copy is current, otherwise `200` with the body,
//!   which is only built in that case.
//!
//! Where the seed guide raises `HTTPException(304)` after an exact string
//! comparison of `If-None-Match`, a 304 here is an ordinary response that
//! carries the validators and Cache-Control a client needs to refresh its
//! copy, and the comparison follows RFC 9110 (lists, `*`, weak comparison).
//!
//! With the `axum` feature, `ConditionalRequest` is an extractor,
//! `CachedResponse` implements `IntoResponse` and `CacheHeaders` implements
//! `IntoResponseParts`. Without it, the same types write into an
//! [`http::HeaderMap`] and give [`http::response::Parts`]:
//!
//! ```
//! use std::time::Duration;
//! use cached_runtime::http::{CacheHeaders, ConditionalRequest, private_max_age, strong_etag};
//! use http::{HeaderMap, Method, Response, StatusCode, header};
//!
//! let mut request_headers = HeaderMap::new();
//! request_headers.insert(header::IF_NONE_MATCH, "\"7\"".parse().unwrap());
//! let cond = ConditionalRequest::new(&Method::GET, &request_headers);
//!
//! let caching = CacheHeaders::new()
//!     .etag(strong_etag(7))
//!     .cache_control(private_max_age(Duration::from_secs(60)));
//! let (parts, body) = cond.respond(caching, || "the placement".to_string()).into_parts();
//!
//! assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
//! assert_eq!(parts.headers[header::ETAG], "\"7\"");
//! assert_eq!(parts.headers[header::CACHE_CONTROL], "private, max-age=60");
//! let response = Response::from_parts(parts, body.unwrap_or_default());
//! assert!(response.body().is_empty());
//! ```

/// The typed headers this module speaks, re-exported so that no second
/// (possibly mismatched) `headers` dependency is needed.
pub use headers;
pub use headers::{CacheControl, ETag};

use std::fmt::{Display, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use headers::{
    HeaderMapExt as _, IfMatch, IfModifiedSince, IfNoneMatch, IfUnmodifiedSince, LastModified,
};
use http::header::{IF_MATCH, IF_NONE_MATCH, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// `Cache-Control: private, max-age=N`: only the client (no shared cache,
/// no CDN) may keep the response, for `max_age`. For per-user data; a
/// browser shared by two accounts keeps it per URL, so name what it
/// depends on with [`CacheHeaders::vary`] (`authorization`, `cookie`).
///
/// HTTP counts in whole seconds: a fraction of a second is dropped.
///
/// ```
/// # use std::time::Duration;
/// # use http::HeaderMap;
/// use cached_runtime::http::headers::HeaderMapExt as _;
/// use cached_runtime::http::private_max_age;
///
/// let mut headers = HeaderMap::new();
/// headers.typed_insert(private_max_age(Duration::from_secs(60)));
/// assert_eq!(headers["cache-control"], "private, max-age=60");
/// ```
pub fn private_max_age(max_age: Duration) -> CacheControl {
    CacheControl::new()
        .with_private()
        .with_max_age(whole_seconds(max_age))
}

/// `Cache-Control: max-age=N`: any cache, shared ones and CDNs included,
/// may keep the response for `max_age`. For data that is the same for every
/// user.
///
/// No `public`: a response with `max-age` to a request without
/// `Authorization` is storable by shared caches already (RFC 9111 section
/// 3), and `public` there is redundant (REDbot warns of it). For a response
/// to an authenticated request that shared caches may keep all the same,
/// add it: `public_max_age(d).with_public()`.
///
/// HTTP counts in whole seconds: a fraction of a second is dropped.
///
/// ```
/// # use std::time::Duration;
/// # use http::HeaderMap;
/// use cached_runtime::http::headers::HeaderMapExt as _;
/// use cached_runtime::http::public_max_age;
///
/// let mut headers = HeaderMap::new();
/// headers.typed_insert(public_max_age(Duration::from_secs(3600)));
/// assert_eq!(headers["cache-control"], "max-age=3600");
/// ```
pub fn public_max_age(max_age: Duration) -> CacheControl {
    CacheControl::new().with_max_age(whole_seconds(max_age))
}

/// `Cache-Control: no-store`: no cache may keep any part of the response.
/// For secrets and data that must never be replayed.
///
/// ```
/// # use http::HeaderMap;
/// use cached_runtime::http::headers::HeaderMapExt as _;
/// use cached_runtime::http::no_store;
///
/// let mut headers = HeaderMap::new();
/// headers.typed_insert(no_store());
/// assert_eq!(headers["cache-control"], "no-store");
/// ```
pub fn no_store() -> CacheControl {
    CacheControl::new().with_no_store()
}

/// `headers` asserts (in debug builds) that a max-age has no fraction.
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// A strong ETag, `"<version>"`, from a row's version: equal versions mean
/// byte-identical representations.
///
/// Any value can be a version. Characters an entity-tag cannot hold (`"`,
/// spaces, control and non-ASCII characters) and `%` itself are
/// percent-encoded as UTF-8 bytes (`"` becomes `%22`), so every input gives a
/// valid tag, distinct versions give distinct tags, and a plain number or
/// word is used as is.
///
/// ```
/// use cached_runtime::http::strong_etag;
/// use cached_runtime::http::headers::HeaderMapExt as _;
///
/// let mut headers = http::HeaderMap::new();
/// headers.typed_insert(strong_etag(42));
/// assert_eq!(headers["etag"], "\"42\"");
///
/// headers.typed_insert(strong_etag("v\"2 beta"));
/// assert_eq!(headers["etag"], "\"v%222%20beta\"");
/// ```
pub fn strong_etag(version: impl Display) -> ETag {
    let version = version.to_string();
    if version.bytes().all(is_plain_etag_byte) {
        return entity_tag(false, &version);
    }
    let mut opaque = String::with_capacity(version.len() + 8);
    for byte in version.bytes() {
        if is_plain_etag_byte(byte) {
            opaque.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(opaque, "%{byte:02X}");
        }
    }
    entity_tag(false, &opaque)
}

/// A weak ETag, `W/"<hash>"`, from a representation's bytes: the 128-bit
/// xxh3 hash of `content`, in hex. Equal content gives the same tag.
///
/// Weak, because it is meant for content that is equivalent rather than
/// guaranteed byte-identical (e.g. the same JSON serialized again); that is
/// all conditional GET needs.
///
/// ```
/// use cached_runtime::http::weak_etag;
///
/// assert_eq!(weak_etag(b"[1,2,3]"), weak_etag(b"[1,2,3]"));
/// assert_ne!(weak_etag(b"[1,2,3]"), weak_etag(b"[1,2,4]"));
/// assert!(weak_etag(b"[1,2,3]").is_weak());
/// ```
pub fn weak_etag(content: &[u8]) -> ETag {
    let hash = xxhash_rust::xxh3::xxh3_128(content);
    entity_tag(true, &format!("{hash:032x}"))
}

/// A strong ETag for a list, from its members' identities and versions,
/// in order: `"l<hash>"`, the 128-bit xxh3 hash of every `(id, version)`.
/// Any member added, removed, reordered or changed gives another tag;
/// computing it reads no body.
///
/// Strong, because a list whose representation is made only of these
/// members at these versions, in this order, is byte-identical each time.
/// For a representation with more in it (a page's totals, say), hash the
/// content with [`weak_etag`] instead.
///
/// ```
/// use cached_runtime::http::list_etag;
///
/// let tag = list_etag([(1, 3), (2, 1)]);
/// assert_eq!(tag, list_etag([(1, 3), (2, 1)]));
/// assert_ne!(tag, list_etag([(1, 4), (2, 1)]), "a member changed");
/// assert_ne!(tag, list_etag([(2, 1), (1, 3)]), "reordered");
/// assert_ne!(list_etag([(12, 3)]), list_etag([(1, 23)]));
/// assert!(!tag.is_weak());
/// ```
pub fn list_etag<I, K, V>(members: I) -> ETag
where
    I: IntoIterator<Item = (K, V)>,
    K: Display,
    V: Display,
{
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = String::new();
    for (id, version) in members {
        buf.clear();
        // Lengths first: `12`,`3` and `1`,`23` hash apart.
        let _ = write!(buf, "{id}");
        let id_len = buf.len();
        let _ = write!(buf, "{version}");
        hasher.update(&(id_len as u64).to_le_bytes());
        hasher.update(&((buf.len() - id_len) as u64).to_le_bytes());
        hasher.update(buf.as_bytes());
    }
    entity_tag(false, &format!("l{:032x}", hasher.digest128()))
}

/// `etagc` (RFC 9110 section 8.8.3) without obs-text, and without `%`, which
/// [`strong_etag`] keeps for its escapes.
fn is_plain_etag_byte(byte: u8) -> bool {
    byte == 0x21 || ((0x23..=0x7e).contains(&byte) && byte != b'%')
}

fn entity_tag(weak: bool, opaque: &str) -> ETag {
    debug_assert!(opaque.bytes().all(|b| is_plain_etag_byte(b) || b == b'%'));
    let prefix = if weak { "W/" } else { "" };
    format!("{prefix}\"{opaque}\"")
        .parse()
        // Both callers pass only `etagc` bytes, which always form a valid tag.
        .expect("an opaque part of etagc bytes is a valid entity-tag")
}

/// Whether a GET or HEAD may be answered `304 Not Modified`: the client's
/// copy, described by the request's conditional headers, is still current.
///
/// A shorthand for [`ConditionalRequest::new`] followed by
/// [`ConditionalRequest::is_not_modified`]; see there for the rules. Always
/// `false` for methods other than GET and HEAD.
///
/// ```
/// use cached_runtime::http::{is_not_modified, strong_etag};
/// use http::{HeaderMap, Method, header};
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::IF_NONE_MATCH, "W/\"3\", \"4\"".parse().unwrap());
/// assert!(is_not_modified(&Method::GET, &headers, Some(&strong_etag(4)), None));
/// assert!(!is_not_modified(&Method::GET, &headers, Some(&strong_etag(5)), None));
/// assert!(!is_not_modified(&Method::PUT, &headers, Some(&strong_etag(4)), None));
/// ```
pub fn is_not_modified(
    method: &Method,
    request_headers: &HeaderMap,
    etag: Option<&ETag>,
    last_modified: Option<SystemTime>,
) -> bool {
    ConditionalRequest::new(method, request_headers).is_not_modified(etag, last_modified)
}

/// The conditions of a request that make a GET conditional (RFC 9110
/// section 13.1.2 and 13.1.3): `If-None-Match` and `If-Modified-Since`, and
/// whether the method is one they apply to.
///
/// Built from any request's method and headers, and never fails: a header
/// that does not parse is no condition, so the answer is the full response.
/// With the `axum` feature it is also an extractor that never rejects.
///
/// [`ConditionalRequest::is_not_modified`] and [`ConditionalRequest::respond`]
/// decide a conditional GET. [`ConditionalRequest::evaluate`] decides every
/// precondition of any method, `If-Match` and `If-Unmodified-Since`
/// included: a `PUT` or `DELETE` whose client edited an older version gets
/// `412 Precondition Failed` instead of overwriting a newer one (the lost
/// update).
#[derive(Debug, Clone)]
pub struct ConditionalRequest {
    /// GET or HEAD, the methods a 304 answers.
    get_or_head: bool,
    if_match: MatchCondition,
    if_none_match: EntityTagCondition,
    /// `None` when absent, malformed or repeated.
    if_unmodified_since: Option<SystemTime>,
    /// `None` when absent, malformed or repeated.
    if_modified_since: Option<SystemTime>,
}

/// `If-Match`, read.
#[derive(Debug, Clone)]
enum MatchCondition {
    Absent,
    /// Present but unreadable: it matches nothing, so the request fails
    /// its precondition rather than write without the check it asked for.
    Unusable,
    Tags(IfMatch),
}

/// What a request's preconditions decide, from
/// [`ConditionalRequest::evaluate`] (RFC 9110 section 13.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a failed precondition must stop the request"]
pub enum Precondition {
    /// Every precondition holds (or there is none): carry on with the
    /// method.
    Proceed,
    /// A GET or HEAD whose client's copy is current: answer
    /// `304 Not Modified`, with the ETag and Cache-Control a 200 would
    /// carry ([`ConditionalRequest::respond`] does both).
    NotModified,
    /// A precondition is false: answer `412 Precondition Failed`, and do
    /// not perform the method.
    Failed,
}

impl Precondition {
    /// The status to answer with instead of performing the method: 304 or
    /// 412; `None` to proceed.
    pub fn status(self) -> Option<StatusCode> {
        match self {
            Precondition::Proceed => None,
            Precondition::NotModified => Some(StatusCode::NOT_MODIFIED),
            Precondition::Failed => Some(StatusCode::PRECONDITION_FAILED),
        }
    }
}

#[derive(Debug, Clone)]
enum EntityTagCondition {
    Absent,
    /// Present but unusable: for GET and HEAD it matches nothing, and
    /// still overrides `If-Modified-Since`, as RFC 9110 asks of any
    /// `If-None-Match`; any other method fails its precondition.
    Unusable,
    Tags(IfNoneMatch),
}

impl ConditionalRequest {
    /// Reads the conditions from a request's method and headers.
    pub fn new(method: &Method, headers: &HeaderMap) -> Self {
        let if_none_match = if !headers.contains_key(IF_NONE_MATCH) {
            EntityTagCondition::Absent
        } else if well_formed_tags(headers.get_all(IF_NONE_MATCH).iter()) {
            headers
                .typed_get::<IfNoneMatch>()
                .map_or(EntityTagCondition::Unusable, EntityTagCondition::Tags)
        } else {
            EntityTagCondition::Unusable
        };
        let if_match = if !headers.contains_key(IF_MATCH) {
            MatchCondition::Absent
        } else if well_formed_tags(headers.get_all(IF_MATCH).iter()) {
            headers
                .typed_get::<IfMatch>()
                .map_or(MatchCondition::Unusable, MatchCondition::Tags)
        } else {
            MatchCondition::Unusable
        };
        ConditionalRequest {
            get_or_head: method == Method::GET || method == Method::HEAD,
            if_match,
            if_none_match,
            if_unmodified_since: headers
                .typed_get::<IfUnmodifiedSince>()
                .map(SystemTime::from),
            if_modified_since: headers.typed_get::<IfModifiedSince>().map(SystemTime::from),
        }
    }

    /// Every precondition of the request, in RFC 9110 section 13.2.2's
    /// order, against the current representation (`None`: there is none,
    /// the resource does not exist), whose validators are `current`'s ETag
    /// and Last-Modified:
    ///
    /// 1. `If-Match`: `*` holds if there is a current representation; a list
    ///    holds if one tag equals its ETag by *strong* comparison (a weak
    ///    tag never matches). False: [`Precondition::Failed`]. A field that
    ///    cannot be read holds for nothing.
    /// 2. Only without `If-Match`, `If-Unmodified-Since` (one valid date):
    ///    false when the representation changed after it (whole seconds).
    ///    Without a Last-Modified it is ignored. False: `Failed`.
    /// 3. `If-None-Match`: `*` fails if there is a current representation; a
    ///    list fails if one tag equals the ETag by *weak* comparison. False:
    ///    [`Precondition::NotModified`] for GET and HEAD, `Failed` for any
    ///    other method (`PUT` with `If-None-Match: *` creates only). A field
    ///    that cannot be read holds for GET and HEAD and fails any other
    ///    method.
    /// 4. Only without `If-None-Match`, for GET and HEAD, `If-Modified-Since`
    ///    as in [`ConditionalRequest::is_not_modified`].
    ///
    /// An `If-Match` or `If-None-Match` can be read when its lines, taken
    /// together, are `*` alone or a list of entity-tags (`"x"`, `W/"x"`):
    /// `*, *`, `*, "8"`, a bare `7` or a tag with a space in it cannot.
    ///
    /// ```
    /// use cached_runtime::http::{CacheHeaders, ConditionalRequest, Precondition, strong_etag};
    /// use http::{HeaderMap, Method, header};
    ///
    /// // An editor saves over version 3; the row is at version 4 now.
    /// let mut headers = HeaderMap::new();
    /// headers.insert(header::IF_MATCH, "\"3\"".parse().unwrap());
    /// let put = ConditionalRequest::new(&Method::PUT, &headers);
    /// let current = CacheHeaders::new().etag(strong_etag(4));
    /// assert_eq!(put.evaluate(Some(&current)), Precondition::Failed);
    /// assert_eq!(put.evaluate(Some(&CacheHeaders::new().etag(strong_etag(3)))), Precondition::Proceed);
    /// ```
    pub fn evaluate(&self, current: Option<&CacheHeaders>) -> Precondition {
        let etag = current.and_then(|c| c.etag.as_ref());
        let last_modified = current.and_then(|c| c.last_modified).and_then(http_date);
        match &self.if_match {
            MatchCondition::Tags(field) => {
                let holds = match (current, etag) {
                    (None, _) => false,
                    (Some(_), _) if field.is_any() => true,
                    (Some(_), Some(etag)) => field.precondition_passes(etag),
                    (Some(_), None) => false,
                };
                if !holds {
                    return Precondition::Failed;
                }
            }
            MatchCondition::Unusable => return Precondition::Failed,
            MatchCondition::Absent => {
                if let (Some(since), Some(modified)) = (self.if_unmodified_since, last_modified)
                    && modified > since
                {
                    return Precondition::Failed;
                }
            }
        }
        let not_modified = match &self.if_none_match {
            EntityTagCondition::Tags(field) => match (current, etag) {
                (None, _) => false,
                (Some(_), _) if *field == IfNoneMatch::any() => true,
                (Some(_), Some(etag)) => !field.precondition_passes(etag),
                (Some(_), None) => false,
            },
            // Matches nothing for GET and HEAD, which get the full answer.
            // Any other method fails closed, as with an unreadable
            // If-Match: the client asked for a check (create-only, say)
            // that cannot be made, and its write must not go ahead.
            EntityTagCondition::Unusable => !self.get_or_head,
            EntityTagCondition::Absent => {
                return if current.is_some() && self.is_not_modified(etag, last_modified) {
                    Precondition::NotModified
                } else {
                    Precondition::Proceed
                };
            }
        };
        match (not_modified, self.get_or_head) {
            (false, _) => Precondition::Proceed,
            (true, true) => Precondition::NotModified,
            (true, false) => Precondition::Failed,
        }
    }

    /// Whether the client's copy is current, so the answer is
    /// `304 Not Modified`, given the representation's validators.
    ///
    /// RFC 9110 section 13.2.2, for GET and HEAD (any other method: `false`):
    ///
    /// 1. If `If-None-Match` is present, it alone decides: `*` matches any
    ///    representation; a list matches when one of its tags equals `etag`
    ///    by *weak* comparison (`W/"x"` matches `"x"`); members that are not
    ///    entity-tags are skipped. A field that cannot be read at all matches
    ///    nothing, and `If-Modified-Since` is still ignored.
    /// 2. Otherwise `If-Modified-Since`, if it is one valid HTTP-date, matches
    ///    when `last_modified`, in whole seconds, is not later than it.
    ///    Without a `last_modified` (or one an HTTP-date cannot express,
    ///    before 1970 or after 9999) it is ignored.
    pub fn is_not_modified(&self, etag: Option<&ETag>, last_modified: Option<SystemTime>) -> bool {
        if !self.get_or_head {
            return false;
        }
        match &self.if_none_match {
            EntityTagCondition::Tags(field) => match etag {
                Some(etag) => !field.precondition_passes(etag),
                None => *field == IfNoneMatch::any(),
            },
            EntityTagCondition::Unusable => false,
            EntityTagCondition::Absent => {
                match (self.if_modified_since, last_modified.and_then(http_date)) {
                    (Some(since), Some(modified)) => modified <= since,
                    _ => false,
                }
            }
        }
    }

    /// Answers a GET or HEAD of an existing representation: `304 Not
    /// Modified` with `caching`'s headers and no body if the client's copy is
    /// current (by `caching`'s ETag and Last-Modified), `412 Precondition
    /// Failed` if an `If-Match` or `If-Unmodified-Since` does not hold (see
    /// [`ConditionalRequest::evaluate`]), otherwise the body, built by `body`
    /// only then, with the same headers.
    ///
    /// ```
    /// use cached_runtime::http::{CacheHeaders, ConditionalRequest, no_store, weak_etag};
    /// use http::{HeaderMap, Method};
    ///
    /// let cond = ConditionalRequest::new(&Method::GET, &HeaderMap::new());
    /// let page = "<h1>hello</h1>";
    /// let caching = CacheHeaders::new().etag(weak_etag(page.as_bytes())).cache_control(no_store());
    /// let response = cond.respond(caching, || page);
    /// assert!(!response.is_not_modified());
    /// assert_eq!(response.body(), Some(&page));
    /// ```
    pub fn respond<B>(&self, caching: CacheHeaders, body: impl FnOnce() -> B) -> CachedResponse<B> {
        match self.evaluate(Some(&caching)) {
            Precondition::Proceed => CachedResponse {
                status: StatusCode::OK,
                body: Some(body()),
                headers: caching,
            },
            Precondition::NotModified => CachedResponse {
                status: StatusCode::NOT_MODIFIED,
                body: None,
                headers: caching,
            },
            // Not the representation the client asked about: no validators
            // of it, and nothing to keep.
            Precondition::Failed => CachedResponse {
                status: StatusCode::PRECONDITION_FAILED,
                body: None,
                headers: CacheHeaders::no_store(),
            },
        }
    }
}

/// Whether the field lines of an `If-Match` or `If-None-Match`, combined,
/// are what RFC 9110 allows: `"*"` alone, or a list of one or more
/// entity-tags (`"x"`, `W/"x"`; empty list elements and whitespace around
/// them are ignored). Anything else (`*` among tags, a bare token, a tag
/// with whitespace or an unbalanced quote, no tag at all) cannot be read:
/// `headers` would skip such members and keep the rest, so a write sent
/// with `*, *` or `"7` would go ahead without the check it asked for; and
/// `headers` 0.4 debug-asserts that a tag holds no whitespace.
fn well_formed_tags<'a>(lines: impl Iterator<Item = &'a HeaderValue>) -> bool {
    let (mut members, mut any) = (0usize, false);
    for line in lines {
        let bytes = line.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            if i == bytes.len() {
                break;
            }
            if bytes[i] == b'*' {
                any = true;
                i += 1;
            } else {
                if bytes[i..].starts_with(b"W/") {
                    i += 2;
                }
                if bytes.get(i) != Some(&b'"') {
                    return false;
                }
                i += 1;
                // etagc: %x21 / %x23-7E / obs-text.
                while i < bytes.len() && bytes[i] != b'"' {
                    if !matches!(bytes[i], 0x21 | 0x23..=0x7E | 0x80..=0xFF) {
                        return false;
                    }
                    i += 1;
                }
                if i == bytes.len() {
                    return false;
                }
                i += 1;
            }
            members += 1;
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] != b',' {
                return false;
            }
        }
    }
    members > 0 && (!any || members == 1)
}

/// The end of year 9999, the last instant an HTTP-date can express.
const HTTP_DATE_END: Duration = Duration::from_secs(253_402_300_800);

/// `time` truncated to whole seconds, if an HTTP-date can express it; `headers`
/// panics on any other time.
fn http_date(time: SystemTime) -> Option<SystemTime> {
    let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
    if since_epoch >= HTTP_DATE_END {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(since_epoch.as_secs()))
}

/// What a response says about caching: its validators (`ETag`,
/// `Last-Modified`) and its `Cache-Control` policy. Each is optional.
///
/// The same headers go on a `200` and on a `304`, so that a client
/// refreshing its copy with a 304 learns the current policy too.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use cached_runtime::http::{CacheHeaders, public_max_age, strong_etag};
/// use http::HeaderMap;
///
/// let caching = CacheHeaders::new()
///     .etag(strong_etag(3))
///     .last_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
///     .cache_control(public_max_age(Duration::from_secs(3600)));
/// let mut headers = HeaderMap::new();
/// caching.write_to(&mut headers);
/// assert_eq!(headers["etag"], "\"3\"");
/// assert_eq!(headers["last-modified"], "Sun, 06 Nov 1994 08:49:37 GMT");
/// assert_eq!(headers["cache-control"], "max-age=3600");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "caching headers do nothing until written to a response"]
pub struct CacheHeaders {
    etag: Option<ETag>,
    last_modified: Option<SystemTime>,
    cache_control: Option<CacheControl>,
    vary: Vec<HeaderName>,
}

impl CacheHeaders {
    /// No headers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The representation's entity-tag, from [`strong_etag`] or
    /// [`weak_etag`]; compared with `If-None-Match`.
    pub fn etag(mut self, etag: ETag) -> Self {
        self.etag = Some(etag);
        self
    }

    /// When the representation last changed; compared with
    /// `If-Modified-Since` in whole seconds. A time an HTTP-date cannot
    /// express (before 1970, after 9999) is left out.
    pub fn last_modified(mut self, time: SystemTime) -> Self {
        self.last_modified = Some(time);
        self
    }

    /// The `Cache-Control` policy, e.g. [`private_max_age`].
    pub fn cache_control(mut self, cache_control: CacheControl) -> Self {
        self.cache_control = Some(cache_control);
        self
    }

    /// The request headers the representation depends on (`Vary`): a
    /// compressed body (`accept-encoding`), a language, a user. Sent on
    /// the `304` as on the `200` (RFC 9110, section 15.4.5: a cache that
    /// refreshes its copy with a 304 takes its `Vary` from it), which a
    /// header the body adds cannot be: the body of a 304 is never built.
    ///
    /// ```
    /// use cached_runtime::http::CacheHeaders;
    /// use http::header::{ACCEPT_ENCODING, AUTHORIZATION};
    ///
    /// let mut headers = http::HeaderMap::new();
    /// CacheHeaders::new().vary([ACCEPT_ENCODING, AUTHORIZATION]).write_to(&mut headers);
    /// assert_eq!(headers["vary"], "accept-encoding, authorization");
    /// ```
    pub fn vary(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in headers {
            if !self.vary.contains(&name) {
                self.vary.push(name);
            }
        }
        self
    }

    /// `Cache-Control: no-store` and no validators: for answers no cache
    /// may keep (errors, health checks, metrics, the answers to writes).
    ///
    /// ```
    /// use cached_runtime::http::CacheHeaders;
    ///
    /// let mut headers = http::HeaderMap::new();
    /// CacheHeaders::no_store().write_to(&mut headers);
    /// assert_eq!(headers["cache-control"], "no-store");
    /// ```
    pub fn no_store() -> Self {
        Self::new().cache_control(no_store())
    }

    /// Sets these headers on `headers`, replacing any values they had.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            headers.typed_insert(etag.clone());
        }
        if let Some(time) = self.last_modified.and_then(http_date) {
            headers.typed_insert(LastModified::from(time));
        }
        if let Some(cache_control) = &self.cache_control {
            headers.typed_insert(cache_control.clone());
        }
        if !self.vary.is_empty() {
            let names: Vec<&str> = self.vary.iter().map(HeaderName::as_str).collect();
            // Header names are tokens: always a valid value.
            if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
                headers.insert(VARY, value);
            }
        }
    }
}

/// The answer to a conditional GET, from [`ConditionalRequest::respond`]:
/// `304 Not Modified` with the caching headers and no body, or `200` with
/// the body and the same headers.
#[derive(Debug, Clone)]
#[must_use = "a response does nothing until it is sent"]
pub struct CachedResponse<B> {
    status: StatusCode,
    headers: CacheHeaders,
    /// `None` for a 304 or a 412: the body was never built.
    body: Option<B>,
}

impl<B> CachedResponse<B> {
    /// Whether this is a `304 Not Modified`.
    pub fn is_not_modified(&self) -> bool {
        self.status == StatusCode::NOT_MODIFIED
    }

    /// `200 OK`, `304 Not Modified` or `412 Precondition Failed`.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body of a `200`; `None` for a 304 or a 412.
    pub fn body(&self) -> Option<&B> {
        self.body.as_ref()
    }

    /// The status and headers, and the body of a `200` (`None` for a 304,
    /// whose body must be empty): the pieces of an [`http::Response`].
    pub fn into_parts(self) -> (http::response::Parts, Option<B>) {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status();
        self.headers.write_to(&mut parts.headers);
        (parts, self.body)
    }
}

#[cfg(feature = "axum")]
pub use axum_impls::without_304_length;

#[cfg(feature = "axum")]
mod axum_impls {
    use std::convert::Infallible;

    use axum::extract::FromRequestParts;
    use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
    use http::StatusCode;
    use http::request::Parts;

    use super::{CacheHeaders, CachedResponse, ConditionalRequest};

    /// Extracts the request's conditions; never rejects (a malformed header
    /// is no condition).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, extract::Path, response::IntoResponse, routing::get};
    /// use cached_runtime::http::{CacheHeaders, ConditionalRequest, private_max_age, strong_etag};
    ///
    /// struct Placement { id: u64, version: u64 }
    ///
    /// async fn placement(cond: ConditionalRequest, Path(id): Path<u64>) -> impl IntoResponse {
    ///     let p = Placement { id, version: 3 }; // from a #[cached] service
    ///     let caching = CacheHeaders::new()
    ///         .etag(strong_etag(p.version))
    ///         .cache_control(private_max_age(Duration::from_secs(60)));
    ///     cond.respond(caching, || format!("placement {}", p.id))
    /// }
    ///
    /// let app: Router = Router::new().route("/placements/{id}", get(placement));
    /// ```
    impl<S: Send + Sync> FromRequestParts<S> for ConditionalRequest {
        type Rejection = Infallible;

        async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
            Ok(ConditionalRequest::new(&parts.method, &parts.headers))
        }
    }

    /// A 304 is an empty response with the caching headers. A 200 is the
    /// body's own response with the caching headers added, if it is a
    /// success: an error the body turns into is not given a cache policy.
    impl<B: IntoResponse> IntoResponse for CachedResponse<B> {
        fn into_response(self) -> Response {
            let mut response = match self.body {
                None => self.status.into_response(),
                Some(body) => body.into_response(),
            };
            let status = response.status();
            if status.is_success()
                || status == StatusCode::NOT_MODIFIED
                || status == StatusCode::PRECONDITION_FAILED
            {
                self.headers.write_to(response.headers_mut());
            }
            response
        }
    }

    /// For `axum::middleware::map_response`: takes the `Content-Length: 0`
    /// that axum gives every empty response off a `304 Not Modified`. A
    /// Content-Length on a 304 must be the length the 200 would have had
    /// (RFC 9110 section 8.6); `0` tells a client, or a cache updating its
    /// stored headers, that the representation is empty (REDbot flags it on
    /// HEAD).
    ///
    /// ```
    /// use axum::{Router, middleware::map_response, routing::get};
    /// use cached_runtime::http::without_304_length;
    ///
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(map_response(without_304_length));
    /// ```
    pub async fn without_304_length(mut response: Response) -> Response {
        if response.status() == StatusCode::NOT_MODIFIED {
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        response
    }

    /// `412 Precondition Failed` or `304 Not Modified` from
    /// [`ConditionalRequest::evaluate`](super::ConditionalRequest::evaluate)
    /// (`Proceed` is an empty 200: check for it before answering). A 412
    /// is `no-store`. A 304 made here carries no headers, where RFC 9110
    /// wants the ETag and Cache-Control the 200 would have had (a cache
    /// refreshing its copy takes them from the 304): `NotModified` comes
    /// only from a GET or HEAD, which
    /// [`ConditionalRequest::respond`](super::ConditionalRequest::respond)
    /// answers with the headers given to it. A write's precondition is
    /// `Proceed` or `Failed`.
    impl IntoResponse for super::Precondition {
        fn into_response(self) -> Response {
            let status = self.status().unwrap_or(StatusCode::OK);
            let mut response = status.into_response();
            if status == StatusCode::PRECONDITION_FAILED {
                CacheHeaders::no_store().write_to(response.headers_mut());
            }
            response
        }
    }

    /// For responses that are not conditional, e.g.
    /// `(CacheHeaders::new().cache_control(public_max_age(hour)), body)`.
    impl IntoResponseParts for CacheHeaders {
        type Error = Infallible;

        fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Infallible> {
            self.write_to(res.headers_mut());
            Ok(res)
        }
    }
}
