//! HTTP caching: Cache-Control presets, ETags, and conditional GET per
//! RFC 9110 (If-None-Match, If-Modified-Since), through a real axum `Router`
//! driven with `tower::ServiceExt::oneshot`, ending with a handler backed by
//! a `#[cached]` service whose write-through changes the ETag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use cached_runtime::http::headers::{self, HeaderMapExt as _};
use cached_runtime::http::{
    CacheHeaders, ConditionalRequest, Precondition, is_not_modified, list_etag, no_store,
    private_max_age, public_max_age, strong_etag, weak_etag,
};
use cached_runtime::{Cache, cache_put, cached};
use cached_tests::{Backend, Source, on_both_backends};
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;

// ---------------------------------------------------------------------------
// A fixed document: ETag "7", last modified at LAST_MODIFIED_SECS,
// `private, max-age=60`. The handler counts how often it builds the body.

/// Sun, 06 Nov 1994 08:49:37 GMT.
const LAST_MODIFIED_SECS: u64 = 784_111_777;
const LAST_MODIFIED_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
const BEFORE_TEXT: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
const AFTER_TEXT: &str = "Mon, 07 Nov 1994 08:49:37 GMT";
const BODY: &str = "the document";

async fn document(cond: ConditionalRequest, State(built): State<Arc<AtomicU32>>) -> Response {
    let caching = CacheHeaders::new()
        .etag(strong_etag(7))
        // A fraction of a second must not defeat an equal If-Modified-Since.
        .last_modified(UNIX_EPOCH + Duration::from_millis(LAST_MODIFIED_SECS * 1000 + 999))
        .cache_control(private_max_age(Duration::from_secs(60)))
        // Per user and per encoding: said on the 304 as on the 200.
        .vary([ACCEPT_ENCODING, AUTHORIZATION, ACCEPT_ENCODING]);
    cond.respond(caching, || {
        built.fetch_add(1, SeqCst);
        BODY
    })
    .into_response()
}

struct Fixture {
    app: Router,
    built: Arc<AtomicU32>,
}

fn fixture() -> Fixture {
    let built = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/doc", any(document))
        .with_state(built.clone());
    Fixture { app, built }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: http::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body reads");
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends `method /doc` with the given raw headers (bytes, so that invalid
/// text can be sent too).
async fn send(app: &Router, method: Method, headers: &[(http::HeaderName, &[u8])]) -> Reply {
    let mut request = Request::builder().method(method).uri("/doc");
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).expect("a header value the client could send");
        request = request.header(name.clone(), value);
    }
    call(app, request.body(Body::empty()).expect("request")).await
}

async fn get_doc(app: &Router, headers: &[(http::HeaderName, &[u8])]) -> Reply {
    send(app, Method::GET, headers).await
}

fn assert_full(reply: &Reply, why: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{why}: {reply:?}");
    assert_eq!(reply.body, BODY, "{why}: a 200 carries the body");
    assert_caching_headers(reply, why);
}

fn assert_not_modified(reply: &Reply, why: &str) {
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{why}: {reply:?}");
    assert!(reply.body.is_empty(), "{why}: a 304 has no body");
    assert_caching_headers(reply, why);
}

fn assert_caching_headers(reply: &Reply, why: &str) {
    assert_eq!(reply.header(ETAG), Some("\"7\""), "{why}");
    assert_eq!(
        reply.header(CACHE_CONTROL),
        Some("private, max-age=60"),
        "{why}"
    );
    assert_eq!(
        reply.header(LAST_MODIFIED),
        Some(LAST_MODIFIED_TEXT),
        "{why}"
    );
    assert_eq!(
        reply.header(VARY),
        Some("accept-encoding, authorization"),
        "{why}"
    );
}

// ---------------------------------------------------------------------------
// If-None-Match

#[tokio::test]
async fn unconditional_get_is_200_with_body_and_caching_headers() {
    let f = fixture();
    assert_full(&get_doc(&f.app, &[]).await, "no condition");
}

#[tokio::test]
async fn matching_strong_tag_is_304_with_headers_and_no_body_built() {
    let f = fixture();
    let reply = get_doc(&f.app, &[(IF_NONE_MATCH, b"\"7\"")]).await;
    assert_not_modified(&reply, "If-None-Match: \"7\"");
    assert_eq!(f.built.load(SeqCst), 0, "a 304 must not build the body");
}

#[tokio::test]
async fn non_matching_tag_is_200_with_body() {
    let f = fixture();
    assert_full(
        &get_doc(&f.app, &[(IF_NONE_MATCH, b"\"6\"")]).await,
        "If-None-Match: \"6\"",
    );
    assert_eq!(f.built.load(SeqCst), 1);
}

#[tokio::test]
async fn a_list_with_one_matching_tag_is_304() {
    let f = fixture();
    assert_not_modified(
        &get_doc(&f.app, &[(IF_NONE_MATCH, b"\"1\", W/\"2\",\"7\" , \"9\"")]).await,
        "the third member matches",
    );
    // The same list split over several header lines.
    assert_not_modified(
        &get_doc(
            &f.app,
            &[(IF_NONE_MATCH, b"\"1\""), (IF_NONE_MATCH, b"\"7\"")],
        )
        .await,
        "a match on the second header line",
    );
    assert_full(
        &get_doc(&f.app, &[(IF_NONE_MATCH, b"\"1\", \"70\", \"\"")]).await,
        "no member matches",
    );
}

#[tokio::test]
async fn star_matches_any_current_representation() {
    let f = fixture();
    assert_not_modified(
        &get_doc(&f.app, &[(IF_NONE_MATCH, b"*")]).await,
        "If-None-Match: *",
    );
    let cond = ConditionalRequest::new(&Method::GET, &headers(&[(IF_NONE_MATCH, "*")]));
    assert!(
        cond.is_not_modified(None, None),
        "`*` matches even a representation without an ETag"
    );
}

#[tokio::test]
async fn if_none_match_uses_weak_comparison() {
    let f = fixture();
    assert_not_modified(
        &get_doc(&f.app, &[(IF_NONE_MATCH, b"W/\"7\"")]).await,
        "W/\"7\" weakly matches \"7\"",
    );
    let client_has_strong = headers(&[(IF_NONE_MATCH, "\"abc\"")]);
    let weak_current: headers::ETag = "W/\"abc\"".parse().expect("tag");
    assert!(is_not_modified(
        &Method::GET,
        &client_has_strong,
        Some(&weak_current),
        None
    ));
}

#[tokio::test]
async fn if_none_match_without_an_etag_on_the_resource_matches_only_star() {
    let cond = ConditionalRequest::new(&Method::GET, &headers(&[(IF_NONE_MATCH, "\"7\"")]));
    assert!(!cond.is_not_modified(None, Some(SystemTime::now())));
}

// ---------------------------------------------------------------------------
// If-Modified-Since

#[tokio::test]
async fn if_modified_since_later_or_equal_is_304_earlier_is_200() {
    let f = fixture();
    assert_not_modified(
        &get_doc(&f.app, &[(IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes())]).await,
        "If-Modified-Since a day after Last-Modified",
    );
    assert_not_modified(
        &get_doc(
            &f.app,
            &[(IF_MODIFIED_SINCE, LAST_MODIFIED_TEXT.as_bytes())],
        )
        .await,
        "If-Modified-Since equal to Last-Modified, in whole seconds",
    );
    assert_full(
        &get_doc(&f.app, &[(IF_MODIFIED_SINCE, BEFORE_TEXT.as_bytes())]).await,
        "If-Modified-Since a second before Last-Modified",
    );
    // The obsolete date formats a recipient must accept.
    assert_not_modified(
        &get_doc(
            &f.app,
            &[(IF_MODIFIED_SINCE, b"Sunday, 06-Nov-94 08:49:37 GMT")],
        )
        .await,
        "RFC 850 date",
    );
    assert_not_modified(
        &get_doc(&f.app, &[(IF_MODIFIED_SINCE, b"Sun Nov  6 08:49:37 1994")]).await,
        "asctime date",
    );
}

#[tokio::test]
async fn if_none_match_overrides_if_modified_since() {
    let f = fixture();
    assert_full(
        &get_doc(
            &f.app,
            &[
                (IF_NONE_MATCH, b"\"6\""),
                (IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes()),
            ],
        )
        .await,
        "a stale tag wins over a date that alone would give a 304",
    );
    assert_not_modified(
        &get_doc(
            &f.app,
            &[
                (IF_NONE_MATCH, b"\"7\""),
                (IF_MODIFIED_SINCE, BEFORE_TEXT.as_bytes()),
            ],
        )
        .await,
        "a current tag wins over a date that alone would give a 200",
    );
}

#[tokio::test]
async fn if_modified_since_is_ignored_without_a_usable_last_modified() {
    let ims = headers(&[(IF_MODIFIED_SINCE, AFTER_TEXT)]);
    let cond = ConditionalRequest::new(&Method::GET, &ims);
    assert!(!cond.is_not_modified(None, None), "no Last-Modified");
    let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
    assert!(
        !cond.is_not_modified(None, Some(before_epoch)),
        "a date no HTTP-date can express is no date"
    );
}

// ---------------------------------------------------------------------------
// Malformed conditions are no conditions: a 200, never an error or a panic.

#[tokio::test]
async fn malformed_if_none_match_is_200() {
    let f = fixture();
    let malformed: [&[u8]; 9] = [
        b"7",
        b"garbage, more garbage",
        b"\"unbalanced",
        b"\"7\" \"",
        b"\"a b\"",
        b"W/\"7 \"",
        b"\"\t7\"",
        b"\"caf\xc3\xa9\"",
        b"",
    ];
    for value in malformed {
        let reply = get_doc(&f.app, &[(IF_NONE_MATCH, value)]).await;
        assert_full(&reply, &format!("If-None-Match: {value:?}"));
        // Present, even unusable, it still overrides If-Modified-Since.
        let reply = get_doc(
            &f.app,
            &[
                (IF_NONE_MATCH, value),
                (IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes()),
            ],
        )
        .await;
        assert_full(&reply, &format!("If-None-Match: {value:?} with a date"));
    }
}

#[tokio::test]
async fn malformed_if_modified_since_is_200() {
    let f = fixture();
    let malformed: [&[u8]; 6] = [
        b"yesterday",
        b"Sun, 06 Nov 1994 08:49:37",
        b"Sun, 31 Feb 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 25:49:37 GMT",
        b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        b"\xff\xfe",
    ];
    for value in malformed {
        let reply = get_doc(&f.app, &[(IF_MODIFIED_SINCE, value)]).await;
        assert_full(&reply, &format!("If-Modified-Since: {value:?}"));
    }
    // Two dates are not one date.
    let reply = get_doc(
        &f.app,
        &[
            (IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes()),
            (IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes()),
        ],
    )
    .await;
    assert_full(&reply, "two If-Modified-Since lines");
}

// ---------------------------------------------------------------------------
// Methods

#[tokio::test]
async fn only_get_and_head_are_answered_304_and_other_methods_412() {
    let f = fixture();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        // RFC 9110 section 13.1.2: a matching If-None-Match fails any
        // other method's precondition: 412, never 304.
        let reply = send(
            &f.app,
            method.clone(),
            &[
                (IF_NONE_MATCH, b"\"7\""),
                (IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes()),
            ],
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::PRECONDITION_FAILED,
            "{method}: {reply:?}"
        );
        assert!(reply.body.is_empty());
        assert_eq!(reply.header(CACHE_CONTROL), Some("no-store"), "{method}");
        assert_eq!(reply.header(ETAG), None, "{method}: no validator of a 412");
        // If-Modified-Since applies to GET and HEAD only.
        let reply = send(
            &f.app,
            method.clone(),
            &[(IF_MODIFIED_SINCE, AFTER_TEXT.as_bytes())],
        )
        .await;
        assert_full(&reply, &format!("{method} with If-Modified-Since only"));
    }
    let reply = send(&f.app, Method::HEAD, &[(IF_NONE_MATCH, b"\"7\"")]).await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "HEAD: {reply:?}");
    // axum gives every empty answer `Content-Length: 0`, a 304's included;
    // `without_304_length`, around the router, takes it off.
    assert_eq!(reply.header(CONTENT_LENGTH), Some("0"), "{reply:?}");
    let wrapped = tower::Layer::layer(
        &axum::middleware::map_response(cached_runtime::http::without_304_length),
        f.app.clone(),
    );
    let request = Request::head("/doc")
        .header(IF_NONE_MATCH, "\"7\"")
        .body(Body::empty())
        .expect("request");
    let response = wrapped.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers().get(CONTENT_LENGTH), None, "{response:?}");
    assert_eq!(response.headers()[ETAG], "\"7\"");
    assert!(!is_not_modified(
        &Method::POST,
        &headers(&[(IF_NONE_MATCH, "*")]),
        Some(&strong_etag(7)),
        None
    ));
}

// ---------------------------------------------------------------------------
// Preconditions of unsafe methods (RFC 9110 section 13.1 and 13.2.2)

/// The current representation: version 7, last modified at
/// `LAST_MODIFIED_TEXT`.
fn current() -> CacheHeaders {
    CacheHeaders::new()
        .etag(strong_etag(7))
        .last_modified(UNIX_EPOCH + Duration::from_secs(LAST_MODIFIED_SECS))
}

fn evaluate(method: Method, pairs: &[(http::HeaderName, &str)], exists: bool) -> Precondition {
    let current = current();
    ConditionalRequest::new(&method, &headers(pairs)).evaluate(exists.then_some(&current))
}

#[test]
fn if_match_compares_strongly_and_fails_closed() {
    use Precondition::{Failed, Proceed};
    let cases: &[(&str, bool, Precondition)] = &[
        ("\"7\"", true, Proceed),
        ("\"6\", \"7\"", true, Proceed),
        ("\"6\"", true, Failed),
        // A weak tag never matches If-Match (strong comparison).
        ("W/\"7\"", true, Failed),
        ("*", true, Proceed),
        // Nothing to match: even `*` fails (RFC 9110 section 13.1.1).
        ("*", false, Failed),
        ("\"7\"", false, Failed),
        // Unreadable: the check the client asked for cannot be made.
        ("\"7", true, Failed),
        ("\"a b\"", true, Failed),
        // `*` among tags, a bare token, no tag at all: not a field RFC 9110
        // allows, so unreadable too (not a list of what could be read).
        ("*, *", true, Failed),
        ("\"7\", *", true, Failed),
        ("7", true, Failed),
        ("\"7\", 8", true, Failed),
        ("", true, Failed),
        // Empty elements, whitespace, a comma inside a tag: readable.
        (" \"6\" ,, \"7\" ", true, Proceed),
        ("\"x,y\", \"7\"", true, Proceed),
    ];
    for (field, exists, want) in cases {
        for method in [Method::PUT, Method::DELETE, Method::GET] {
            assert_eq!(
                evaluate(method.clone(), &[(IF_MATCH, field)], *exists),
                *want,
                "{method} If-Match: {field} (exists: {exists})"
            );
        }
    }
}

/// A field of several lines is read as one list (RFC 9110 section 5.3):
/// each line must be readable, and `*` must stand alone across them.
#[test]
fn a_precondition_of_several_lines_is_one_list() {
    use Precondition::{Failed, NotModified, Proceed};
    let star_twice = [(IF_NONE_MATCH, "*"), (IF_NONE_MATCH, "*")];
    assert_eq!(evaluate(Method::PUT, &star_twice, false), Failed);
    assert_eq!(evaluate(Method::GET, &star_twice, true), Proceed);
    let tags = [(IF_NONE_MATCH, "\"6\""), (IF_NONE_MATCH, "W/\"7\"")];
    assert_eq!(evaluate(Method::GET, &tags, true), NotModified);
    assert_eq!(evaluate(Method::PUT, &tags, true), Failed);
    let one_bad = [(IF_NONE_MATCH, "\"8\""), (IF_NONE_MATCH, "9")];
    assert_eq!(evaluate(Method::PUT, &one_bad, true), Failed);
    let matches = [(IF_MATCH, "\"6\""), (IF_MATCH, "\"7\"")];
    assert_eq!(evaluate(Method::PUT, &matches, true), Proceed);
    let any_and_tag = [(IF_MATCH, "*"), (IF_MATCH, "\"7\"")];
    assert_eq!(evaluate(Method::PUT, &any_and_tag, true), Failed);
}

#[test]
fn if_unmodified_since_only_without_if_match() {
    use Precondition::{Failed, Proceed};
    assert_eq!(
        evaluate(Method::PUT, &[(IF_UNMODIFIED_SINCE, BEFORE_TEXT)], true),
        Failed
    );
    assert_eq!(
        evaluate(
            Method::PUT,
            &[(IF_UNMODIFIED_SINCE, LAST_MODIFIED_TEXT)],
            true
        ),
        Proceed
    );
    assert_eq!(
        evaluate(Method::PUT, &[(IF_UNMODIFIED_SINCE, AFTER_TEXT)], true),
        Proceed
    );
    // If-Match present: If-Unmodified-Since is not evaluated.
    assert_eq!(
        evaluate(
            Method::PUT,
            &[(IF_MATCH, "\"7\""), (IF_UNMODIFIED_SINCE, BEFORE_TEXT)],
            true
        ),
        Proceed
    );
    // Not a date: ignored.
    assert_eq!(
        evaluate(Method::PUT, &[(IF_UNMODIFIED_SINCE, "yesterday")], true),
        Proceed
    );
    // No Last-Modified to compare: ignored.
    let no_date = CacheHeaders::new().etag(strong_etag(7));
    let cond = ConditionalRequest::new(
        &Method::PUT,
        &headers(&[(IF_UNMODIFIED_SINCE, BEFORE_TEXT)]),
    );
    assert_eq!(cond.evaluate(Some(&no_date)), Proceed);
}

#[test]
fn if_none_match_fails_unsafe_methods_and_answers_304_to_safe_ones() {
    use Precondition::{Failed, NotModified, Proceed};
    // Create-only PUT: `If-None-Match: *` fails when the resource exists.
    assert_eq!(evaluate(Method::PUT, &[(IF_NONE_MATCH, "*")], true), Failed);
    assert_eq!(
        evaluate(Method::PUT, &[(IF_NONE_MATCH, "*")], false),
        Proceed
    );
    assert_eq!(
        evaluate(Method::DELETE, &[(IF_NONE_MATCH, "W/\"7\"")], true),
        Failed
    );
    assert_eq!(
        evaluate(Method::DELETE, &[(IF_NONE_MATCH, "\"8\"")], true),
        Proceed
    );
    assert_eq!(
        evaluate(Method::GET, &[(IF_NONE_MATCH, "*")], true),
        NotModified
    );
    assert_eq!(
        evaluate(Method::HEAD, &[(IF_NONE_MATCH, "W/\"7\"")], true),
        NotModified
    );
    assert_eq!(
        evaluate(Method::GET, &[(IF_NONE_MATCH, "*")], false),
        Proceed
    );
    // Unreadable (`*, "7` meant create-only, or not to overwrite "7"): a
    // write fails closed, as with If-Match, whether the resource exists or
    // not; a read gets the full answer.
    for field in [
        "*, \"7",
        "\"a b\"",
        "\"7",
        "*, *",
        "*, \"8\"",
        "\"8\", *",
        "7",
        "garbage",
        "W/7",
        "\"7\" \"8\"",
        "\"8\"x",
        "",
        " , ",
    ] {
        for exists in [true, false] {
            for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::POST] {
                assert_eq!(
                    evaluate(method.clone(), &[(IF_NONE_MATCH, field)], exists),
                    Failed,
                    "{method} If-None-Match: {field} (exists: {exists})"
                );
            }
            for method in [Method::GET, Method::HEAD] {
                assert_eq!(
                    evaluate(method.clone(), &[(IF_NONE_MATCH, field)], exists),
                    Proceed,
                    "{method} If-None-Match: {field} (exists: {exists})"
                );
            }
        }
    }
    // If-Modified-Since: GET and HEAD only, and only without If-None-Match.
    assert_eq!(
        evaluate(Method::GET, &[(IF_MODIFIED_SINCE, AFTER_TEXT)], true),
        NotModified
    );
    assert_eq!(
        evaluate(Method::PUT, &[(IF_MODIFIED_SINCE, AFTER_TEXT)], true),
        Proceed
    );
    assert_eq!(
        evaluate(
            Method::GET,
            &[(IF_NONE_MATCH, "\"8\""), (IF_MODIFIED_SINCE, AFTER_TEXT)],
            true
        ),
        Proceed
    );
    assert_eq!(
        evaluate(Method::GET, &[(IF_MODIFIED_SINCE, AFTER_TEXT)], false),
        Proceed
    );
}

#[test]
fn the_order_is_if_match_first() {
    // A failing If-Match decides, whatever If-None-Match says.
    assert_eq!(
        evaluate(
            Method::GET,
            &[(IF_MATCH, "\"6\""), (IF_NONE_MATCH, "\"7\"")],
            true
        ),
        Precondition::Failed
    );
    assert_eq!(
        evaluate(
            Method::PUT,
            &[(IF_MATCH, "\"7\""), (IF_NONE_MATCH, "\"7\"")],
            true
        ),
        Precondition::Failed,
        "both hold their turn: If-Match passes, If-None-Match fails"
    );
    assert_eq!(
        Precondition::Failed.status(),
        Some(StatusCode::PRECONDITION_FAILED)
    );
    assert_eq!(
        Precondition::NotModified.status(),
        Some(StatusCode::NOT_MODIFIED)
    );
    assert_eq!(Precondition::Proceed.status(), None);
}

#[tokio::test]
async fn a_get_whose_if_match_fails_is_412_without_the_body() {
    let f = fixture();
    let reply = get_doc(&f.app, &[(IF_MATCH, b"\"6\"")]).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED, "{reply:?}");
    assert!(reply.body.is_empty());
    assert_eq!(reply.header(CACHE_CONTROL), Some("no-store"));
    let reply = get_doc(&f.app, &[(IF_MATCH, b"\"7\"")]).await;
    assert_full(&reply, "If-Match holds");
}

#[test]
fn list_etags_follow_their_members() {
    let a = list_etag([(1, 3), (2, 5)]);
    assert_eq!(a, list_etag(vec![(1, 3), (2, 5)]));
    assert_ne!(a, list_etag([(1, 3), (2, 6)]));
    assert_ne!(a, list_etag([(1, 3)]));
    assert_ne!(list_etag([(1, 3)]), list_etag::<[(u8, u8); 0], u8, u8>([]));
    assert_ne!(list_etag([("1:3", "")]), list_etag([("1", ":3")]));
    let mut map = HeaderMap::new();
    map.typed_insert(a);
    let text = map[ETAG].to_str().expect("ascii");
    assert!(
        text.starts_with("\"l") && text.ends_with('"') && text.len() == 35,
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Cache-Control presets and ETags

#[test]
fn cache_control_presets_render_exactly() {
    let rendered = |cc: headers::CacheControl| {
        let mut map = HeaderMap::new();
        map.typed_insert(cc);
        map[CACHE_CONTROL].to_str().expect("ascii").to_owned()
    };
    assert_eq!(
        rendered(private_max_age(Duration::from_secs(60))),
        "private, max-age=60"
    );
    assert_eq!(
        rendered(public_max_age(Duration::from_secs(3600))),
        "max-age=3600",
        "public is implied for a response with max-age"
    );
    assert_eq!(rendered(no_store()), "no-store");
    assert_eq!(
        rendered(private_max_age(Duration::from_millis(1500))),
        "private, max-age=1",
        "a fraction of a second is dropped, not a panic"
    );
    assert_eq!(rendered(public_max_age(Duration::ZERO)), "max-age=0");
}

#[test]
fn weak_etag_is_stable_for_equal_content_and_differs_otherwise() {
    let a = weak_etag(br#"{"id":1,"label":"a"}"#);
    assert_eq!(a, weak_etag(br#"{"id":1,"label":"a"}"#));
    assert_ne!(a, weak_etag(br#"{"id":1,"label":"b"}"#));
    assert_ne!(weak_etag(b""), weak_etag(b"\0"));
    assert!(a.is_weak());
    let value = etag_text(&a);
    assert!(
        value.len() == 2 + 2 + 32
            && value.starts_with("W/\"")
            && value.ends_with('"')
            && value[3..35].bytes().all(|b| b.is_ascii_hexdigit()),
        "W/\"<128-bit hex>\", got {value}"
    );
}

#[test]
fn strong_etag_of_any_version_is_a_valid_distinct_tag() {
    assert_eq!(etag_text(&strong_etag(42)), "\"42\"");
    assert_eq!(etag_text(&strong_etag("v1.2-beta")), "\"v1.2-beta\"");
    assert!(!strong_etag(42).is_weak());
    // A quote (and the escape character itself) cannot break the tag.
    assert_eq!(etag_text(&strong_etag("a\"b")), "\"a%22b\"");
    assert_ne!(strong_etag("a\"b"), strong_etag("a%22b"));
    assert_eq!(etag_text(&strong_etag("a%22b")), "\"a%2522b\"");
    // Every character, alone and among others, gives a tag that round-trips
    // through a header and matches itself.
    for c in (0u32..0x250).chain([0x2028, 0xfeff, 0x1f600]) {
        let Some(c) = char::from_u32(c) else { continue };
        let version = format!("x{c}y");
        let tag = strong_etag(&version);
        let text = etag_text(&tag);
        let mut map = HeaderMap::new();
        map.insert(IF_NONE_MATCH, text.parse().expect("a valid header value"));
        assert!(
            is_not_modified(&Method::GET, &map, Some(&tag), None),
            "{version:?} -> {text}"
        );
        if c != 'q' {
            assert_ne!(tag, strong_etag("xqy"), "{version:?}");
        }
    }
}

#[test]
fn last_modified_outside_http_dates_is_left_out_not_a_panic() {
    for time in [
        UNIX_EPOCH - Duration::from_secs(1),
        UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 25),
    ] {
        let mut map = HeaderMap::new();
        CacheHeaders::new()
            .etag(strong_etag(1))
            .last_modified(time)
            .write_to(&mut map);
        assert!(map.get(LAST_MODIFIED).is_none(), "{time:?}");
        assert_eq!(map[ETAG], "\"1\"");
    }
}

#[test]
fn responses_work_without_axum_through_http_parts() {
    let caching = || {
        CacheHeaders::new()
            .etag(strong_etag(5))
            .cache_control(no_store())
    };
    let cond = ConditionalRequest::new(&Method::GET, &headers(&[(IF_NONE_MATCH, "\"5\"")]));
    let (parts, body) = cond.respond(caching(), || b"ignored".to_vec()).into_parts();
    assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
    assert_eq!(body, None);
    assert_eq!(parts.headers[ETAG], "\"5\"");
    assert_eq!(parts.headers[CACHE_CONTROL], "no-store");

    let cond = ConditionalRequest::new(&Method::GET, &HeaderMap::new());
    let response = cond.respond(caching(), || b"fresh".to_vec());
    assert_eq!(response.status(), StatusCode::OK);
    let (parts, body) = response.into_parts();
    assert_eq!(body.as_deref(), Some(&b"fresh"[..]));
    assert_eq!(parts.headers[ETAG], "\"5\"");
}

#[tokio::test]
async fn cache_headers_decorate_plain_responses_but_not_errors() {
    async fn products() -> impl IntoResponse {
        (
            CacheHeaders::new().cache_control(public_max_age(Duration::from_secs(3600))),
            "[]",
        )
    }
    async fn broken(cond: ConditionalRequest) -> Response {
        let caching = CacheHeaders::new()
            .etag(strong_etag(1))
            .cache_control(public_max_age(Duration::from_secs(3600)));
        cond.respond(caching, || {
            (StatusCode::INTERNAL_SERVER_ERROR, "could not render")
        })
        .into_response()
    }
    let app = Router::new()
        .route("/products", get(products))
        .route("/broken", get(broken));
    let reply = call(
        &app,
        Request::get("/products")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(CACHE_CONTROL), Some("max-age=3600"));

    let reply = call(
        &app,
        Request::get("/broken")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.header(CACHE_CONTROL),
        None,
        "an error must not be cached"
    );
    assert_eq!(reply.header(ETAG), None);
}

// ---------------------------------------------------------------------------
// Done when: an axum handler backed by a `#[cached]` service answers 200 with
// an ETag, 304 for that ETag, and 200 with a new ETag after a write-through.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placement {
    id: u64,
    label: String,
    version: u64,
}

struct PlacementService {
    cache: Cache,
    rows: Mutex<HashMap<u64, Placement>>,
    source: Source,
}

impl PlacementService {
    fn new(cache: Cache) -> Self {
        let row = Placement {
            id: 1,
            label: "intro".into(),
            version: 1,
        };
        PlacementService {
            cache,
            rows: Mutex::new(HashMap::from([(1, row)])),
            source: Source::new(),
        }
    }

    #[cached(prefix = "placement", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Option<Placement> {
        self.source.count_load();
        self.rows.lock().expect("rows").get(&id).cloned()
    }

    /// Renames the row and bumps its version; writes the new row through.
    #[cache_put(prefix = "placement", ttl = "5m", key = id)]
    async fn rename(&self, id: u64, label: String) -> Option<Placement> {
        let mut rows = self.rows.lock().expect("rows");
        let row = rows.get_mut(&id)?;
        row.label = label;
        row.version += 1;
        Some(row.clone())
    }
}

type App = Arc<PlacementService>;

async fn get_placement(
    cond: ConditionalRequest,
    Path(id): Path<u64>,
    State(service): State<App>,
) -> Response {
    let Some(p) = service.get(id).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let caching = CacheHeaders::new()
        .etag(strong_etag(p.version))
        .cache_control(private_max_age(Duration::from_secs(60)));
    cond.respond(caching, || json(&p)).into_response()
}

async fn put_placement(Path(id): Path<u64>, State(service): State<App>, label: String) -> Response {
    match service.rename(id, label).await {
        Some(p) => json(&p).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn json(p: &Placement) -> impl IntoResponse + use<> {
    (
        [(CONTENT_TYPE, "application/json")],
        serde_json::to_string(p).expect("a placement serializes"),
    )
}

fn placement_request(method: Method, if_none_match: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::builder().method(method).uri("/placements/1");
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    request.body(Body::from(body.to_owned())).expect("request")
}

fn placement_of(reply: &Reply) -> Placement {
    serde_json::from_slice(&reply.body).expect("a placement as JSON")
}

on_both_backends!(axum_handler_on_a_cached_service_revalidates_with_etags);

async fn axum_handler_on_a_cached_service_revalidates_with_etags(backend: &Backend) {
    let service = Arc::new(PlacementService::new(backend.cache()));
    let app = Router::new()
        .route("/placements/{id}", get(get_placement).put(put_placement))
        .with_state(service.clone());

    // First GET: a miss, loaded once, 200 with the row's version as ETag.
    let first = call(&app, placement_request(Method::GET, None, "")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.header(ETAG), Some("\"1\""));
    assert_eq!(first.header(CACHE_CONTROL), Some("private, max-age=60"));
    assert_eq!(first.header(CONTENT_TYPE), Some("application/json"));
    assert_eq!(placement_of(&first).label, "intro");
    let etag = first.header(ETAG).expect("an ETag").to_owned();

    // Revalidation with that ETag: 304, empty, served from the cache.
    let again = call(&app, placement_request(Method::GET, Some(&etag), "")).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{again:?}");
    assert!(again.body.is_empty(), "a 304 has no body");
    assert_eq!(again.header(ETAG), Some("\"1\""));
    assert_eq!(again.header(CACHE_CONTROL), Some("private, max-age=60"));
    assert_eq!(service.source.loads(), 1, "the second GET is a cache hit");

    // A write-through changes the row and its version.
    let put = call(&app, placement_request(Method::PUT, None, "renamed")).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(placement_of(&put).version, 2);

    // The old ETag is stale now: 200 with the new row and the new ETag,
    // read from the cache the write-through filled.
    let changed = call(&app, placement_request(Method::GET, Some(&etag), "")).await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    assert_eq!(changed.header(ETAG), Some("\"2\""));
    let p = placement_of(&changed);
    assert_eq!((p.label.as_str(), p.version), ("renamed", 2));
    assert_eq!(service.source.loads(), 1, "served from the write-through");

    // And the new ETag revalidates.
    let current = call(&app, placement_request(Method::GET, Some("\"2\""), "")).await;
    assert_eq!(current.status, StatusCode::NOT_MODIFIED, "{current:?}");
    assert!(current.body.is_empty());
}

// ---------------------------------------------------------------------------

fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(name.clone(), value.parse().expect("a header value"));
    }
    map
}

fn etag_text(tag: &headers::ETag) -> String {
    let mut map = HeaderMap::new();
    map.typed_insert(tag.clone());
    map[ETAG].to_str().expect("an ETag is ASCII").to_owned()
}
