//! The HTTP API: axum handlers a few lines each, over `PlacementService`.
//!
//! Every answer states its cacheability (RFC 9111): a placement and the
//! lists of placements are `private, max-age=60` with an ETag (a list's from
//! its members' versions) and answer conditional GETs with 304; the public
//! catalogue is `max-age=3600`; everything else (errors, health, metrics,
//! the answers to writes) is `no-store`. PUT and DELETE honour `If-Match`,
//! `If-None-Match` and `If-Unmodified-Since` (RFC 9110 section 13.2.2): an
//! editor who saves over a version someone else changed gets 412, not a
//! lost update.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cached_runtime::http::{
    CacheHeaders, ConditionalRequest, Precondition, list_etag, private_max_age, public_max_age,
    strong_etag, weak_etag,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::db::{DbError, Placement, PlacementQuery, PlacementUpdate};
use crate::service::PlacementService;

/// The largest request body accepted (a placement update is a few dozen
/// bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The longest placement name accepted.
pub const MAX_NAME_CHARS: usize = 200;
/// The page size of `GET /placements` when none is asked, and the largest.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

#[derive(Debug, Clone)]
pub struct AppState {
    pub service: PlacementService,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/placements/{id}",
            get(get_placement)
                .put(put_placement)
                .delete(delete_placement),
        )
        .route("/placements", get(query_placements))
        .route("/videos/{id}/placements", get(video_placements))
        .route("/public/products", get(products))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(axum::middleware::from_fn(refresh_on_no_cache))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A request with `Cache-Control: no-cache` (RFC 9111 section 5.2.1.4:
/// the client wants nothing stored used without checking the origin) or
/// `Pragma: no-cache` is served from the database, and what it reads
/// replaces the cached entries (`CallMode::Refresh`). One place for it: the
/// handlers below do not know.
async fn refresh_on_no_cache(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Decided before any await: the request is not `Sync`, so no borrow of
    // it may be held across one.
    let refresh = {
        let no_cache = |name: header::HeaderName| {
            request.headers().get_all(name).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
                })
            })
        };
        no_cache(header::CACHE_CONTROL) || no_cache(header::PRAGMA)
    };
    if refresh {
        cached_runtime::with_mode(cached_runtime::CallMode::Refresh, next.run(request)).await
    } else {
        next.run(request).await
    }
}

/// For `axum::middleware::map_response`, around the whole router: an
/// answer that says nothing of caching (a 405 from the router, say) is
/// `no-store`. Every answer of this API then states its cacheability, and
/// none is left to a cache's heuristics (RFC 9111 section 4.2.2).
pub async fn no_store_unless_stated(mut response: Response) -> Response {
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A placement's validators: its version is its ETag.
fn validators(p: &Placement) -> CacheHeaders {
    CacheHeaders::new().etag(strong_etag(p.version))
}

/// A list's caching: private like its members, an ETag from their ids and
/// versions, 304 for a current copy.
fn list_response(cond: &ConditionalRequest, list: Vec<Placement>) -> Response {
    let caching = CacheHeaders::new()
        .etag(list_etag(list.iter().map(|p| (p.id, p.version))))
        .cache_control(private_max_age(Duration::from_secs(60)));
    cond.respond(caching, || Json(list)).into_response()
}

/// Every error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(&'static str),
    /// A rejected body or query, with the status axum chose (400, 413, 415,
    /// 422).
    Rejected(StatusCode, String),
    /// The database failed: 503, and nothing was cached.
    Unavailable(DbError),
    /// A bug of this service (a response that does not serialize): 500.
    Internal(String),
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Unavailable(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Rejected(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Rejected(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, what.to_owned()),
            ApiError::Rejected(status, m) => (status, m),
            ApiError::Internal(why) => {
                tracing::error!(error = %why, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "database failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; try again".to_owned(),
                )
            }
        };
        // No cache may keep an error (404 and 405 are heuristically
        // cacheable otherwise: RFC 9110 section 15.1).
        (
            status,
            CacheHeaders::no_store(),
            Json(json!({ "error": message })),
        )
            .into_response()
    }
}

/// A positive id from the path (`/placements/{id}`, `/videos/{id}/...`):
/// anything else is a 400 before the handler runs.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub i64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::BadRequest(r.body_text()))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Id)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("id must be a positive integer, got {raw:?}"))
            })
    }
}

/// `GET /placements/{id}`: cache-aside, `Cache-Control: private,
/// max-age=60`, an ETag from the row's version, 304 for a current copy.
async fn get_placement(
    State(app): State<AppState>,
    cond: ConditionalRequest,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let found = app.service.get_by_id(id).await?;
    let p = found.ok_or(ApiError::NotFound("no such placement"))?;
    let caching = CacheHeaders::new()
        .etag(strong_etag(p.version))
        .cache_control(private_max_age(Duration::from_secs(60)));
    Ok(cond.respond(caching, || Json(p)).into_response())
}

/// The precondition of a write to placement `id`, checked against its
/// current row: `Err` is the 412 (or 404) to answer; `Ok(Some(version))`
/// is the version the write must still find (`None`: no precondition).
async fn precondition(
    app: &AppState,
    cond: &ConditionalRequest,
    id: i64,
    has_conditions: bool,
) -> Result<Option<i64>, Response> {
    if !has_conditions {
        return Ok(None);
    }
    // From the database, not the cache: the check and the write must see
    // the same row.
    let current = app
        .service
        .db()
        .placement(id)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    match cond.evaluate(current.as_ref().map(validators).as_ref()) {
        Precondition::Proceed => Ok(current.map(|p| p.version)),
        failed => Err(failed.into_response()),
    }
}

/// Whether the request carries a precondition of a write.
fn has_write_conditions(headers: &axum::http::HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|h| headers.contains_key(h))
}

/// `PUT /placements/{id}`: write-through; the new version is readable at
/// once. With preconditions (`If-Match: "<version>"`), only over the
/// version the client saw: otherwise 412. The answer carries no ETag: the
/// stored representation is not the request's body (a partial update), so
/// RFC 9110 section 9.3.4 allows none; a GET gets it.
async fn put_placement(
    State(app): State<AppState>,
    cond: ConditionalRequest,
    headers: axum::http::HeaderMap,
    Id(id): Id,
    body: Result<Json<PlacementUpdate>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(update) = body?;
    if let Some(name) = &update.name {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "name must be 1 to {MAX_NAME_CHARS} printable characters"
            )));
        }
    }
    if update.position_sec.is_some_and(|s| s < 0) {
        return Err(ApiError::BadRequest(
            "position_sec must not be negative".into(),
        ));
    }
    let expected = match precondition(&app, &cond, id, has_write_conditions(&headers)).await {
        Ok(expected) => expected,
        Err(answer) => return Ok(answer),
    };
    match app.service.update(id, update, expected).await? {
        Some(p) => Ok((CacheHeaders::no_store(), Json(p)).into_response()),
        // Changed (or deleted) since the precondition was checked.
        None if expected.is_some() => Ok(Precondition::Failed.into_response()),
        None => Err(ApiError::NotFound("no such placement")),
    }
}

/// `DELETE /placements/{id}`: delete, then evict; with preconditions, only
/// the version the client saw.
async fn delete_placement(
    State(app): State<AppState>,
    cond: ConditionalRequest,
    headers: axum::http::HeaderMap,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let expected = match precondition(&app, &cond, id, has_write_conditions(&headers)).await {
        Ok(expected) => expected,
        Err(answer) => return Ok(answer),
    };
    if app.service.delete(id, expected).await? {
        Ok((StatusCode::NO_CONTENT, CacheHeaders::no_store(), ()).into_response())
    } else if expected.is_some() {
        Ok(Precondition::Failed.into_response())
    } else {
        Err(ApiError::NotFound("no such placement"))
    }
}

/// `GET /videos/{id}/placements`: private, with a list ETag.
async fn video_placements(
    State(app): State<AppState>,
    cond: ConditionalRequest,
    Id(video_id): Id,
) -> Result<Response, ApiError> {
    let list = app.service.by_video(video_id).await?;
    Ok(list_response(&cond, list))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryParams {
    video_id: Option<i64>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /placements?video_id=&limit=&offset=`: cached under a hash of the
/// normalised query.
async fn query_placements(
    State(app): State<AppState>,
    cond: ConditionalRequest,
    params: Result<Query<QueryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let query = PlacementQuery {
        video_id: params.video_id,
        limit,
        offset: params.offset.unwrap_or(0),
    };
    let rows = app.service.query(query).await?;
    Ok(list_response(&cond, rows))
}

/// `GET /public/products`: `Cache-Control: max-age=3600` (any cache) and
/// a weak ETag from the content.
async fn products(
    State(app): State<AppState>,
    cond: ConditionalRequest,
) -> Result<Response, ApiError> {
    let products = app.service.products().await?;
    let body = serde_json::to_vec(&products).map_err(|e| ApiError::Internal(e.to_string()))?;
    let caching = CacheHeaders::new()
        .etag(weak_etag(&body))
        .cache_control(public_max_age(Duration::from_secs(3600)));
    Ok(cond
        .respond(caching, || {
            ([(header::CONTENT_TYPE, "application/json")], body)
        })
        .into_response())
}

/// `GET /metrics`: Prometheus text, never stored (it changes every call).
async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        CacheHeaders::no_store(),
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /health`: liveness, the database, and the cache's stats per name.
async fn health(State(app): State<AppState>) -> Response {
    let cache = &app.service.cache;
    let stats: Vec<_> = cache
        .stats()
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "hits": s.hits,
                "misses": s.misses,
                "hit_rate": s.hit_rate(),
                "loads": s.loads,
                "errors": s.errors,
                "skipped": s.skipped,
            })
        })
        .collect();
    let database_ok = app.service.db().ping().await;
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if database_ok { "ok" } else { "degraded" },
        "database": { "kind": app.service.db().kind(), "ok": database_ok },
        "cache": {
            "backend": cache.backend_kind(),
            "breaker_open": cache.breaker_open(),
            "bypass": !cache.is_enabled(),
            "stats": stats,
        },
    });
    (status, CacheHeaders::no_store(), Json(body)).into_response()
}
