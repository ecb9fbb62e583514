//! End to end: the real service, in process on a free port, over a real
//! SQLite file and a real `redis-server`, driven over HTTP.

use std::time::{Duration, Instant};

use cached_placements::{Config, RedisVars, Running, start};
use cached_tests::RedisServer;
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

struct Env {
    running: Running,
    config: Config,
    client: Client,
    // Dropped last: the service's database and Redis.
    _dir: tempfile::TempDir,
}

impl Env {
    async fn with(redis: Option<&RedisServer>) -> Env {
        let vars = redis
            .map(|r| RedisVars::default().with("REDIS_URL", r.url()))
            .unwrap_or_default();
        Env::with_vars(vars).await
    }

    async fn with_vars(redis: RedisVars) -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            database_url: format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("db.sqlite").display()
            ),
            redis,
            bypass: false,
            near: false,
        };
        let running = start(&config).await.expect("the service starts");
        // A connection per request: a pooled one that the server closes
        // as the client reuses it fails the request (the keep-alive race),
        // which is the client's problem, not the service's.
        let client = Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .expect("a client");
        Env {
            running,
            config,
            client,
            _dir: dir,
        }
    }

    /// Stops the service and starts it again on the same database.
    async fn restart(self) -> Env {
        let Env {
            running,
            config,
            client,
            _dir,
        } = self;
        running.stop().await.expect("stops");
        let running = start(&config).await.expect("the service starts again");
        Env {
            running,
            config,
            client,
            _dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }

    /// A conditional GET: `If-None-Match: etag`.
    async fn get_if_none_match(&self, path: &str, etag: header::HeaderValue) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header(header::IF_NONE_MATCH, etag)
            .send()
            .await
            .expect("answers")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("answers")
    }

    async fn json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.get(path).await;
        let status = r.status();
        (status, r.json().await.expect("a JSON body"))
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("answers");
        let status = r.status();
        (status, r.json().await.expect("a JSON body"))
    }

    fn stats(&self, name: &str) -> cached_runtime::CacheStats {
        self.running
            .service
            .cache
            .stats_for(name)
            .unwrap_or_default()
    }
}

/// The value of one Prometheus sample line, e.g.
/// `cache_hits_total{cache="placement"}`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Production settings: mutual TLS with a private CA, and an ACL user
/// allowed exactly `redis_acl_rule("placements")`, all from `REDIS_*`
/// variables. The service caches, and neither `/health` nor `/metrics`
/// shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_user_from_the_environment_and_no_secret_shown() {
    let pki = cached_tests::Pki::generate();
    let args = cached_tests::acl_user_args(cached_placements::NAMESPACE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = RedisServer::start_tls_with(&pki, cached_tests::ClientAuth::Required, &args);
    let files = tempfile::tempdir().expect("a directory");
    let (ca, cert, key) = pki.write(files.path());
    let path = |p: std::path::PathBuf| p.display().to_string();
    let vars = RedisVars::default()
        .with("REDIS_URL", redis.tls_url())
        .with("REDIS_USERNAME", cached_tests::ACL_USER)
        .with("REDIS_PASSWORD", cached_tests::ACL_PASSWORD)
        .with("REDIS_TLS_CA_FILE", path(ca))
        .with("REDIS_TLS_CERT_FILE", path(cert))
        .with("REDIS_TLS_KEY_FILE", path(key));
    assert!(!format!("{vars:?}").contains(cached_tests::ACL_PASSWORD));
    let env = Env::with_vars(vars).await;
    let (status, first) = env.json("/placements/3").await;
    assert_eq!(status, StatusCode::OK);
    // Hits within a bound (a first TLS handshake on a loaded machine may
    // outlast the default connect timeout: that call is a counted miss).
    let started = Instant::now();
    while env.stats("placement").hits == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no hit over TLS"
        );
        let (_, again) = env.json("/placements/3").await;
        assert_eq!(again, first);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.cmd::<i64>(&["EXISTS", "placements:placement:3"]), 1);
    let log: Vec<redis::Value> = redis.cmd(&["ACL", "LOG"]);
    assert!(log.is_empty(), "refused: {log:?}");
    for page in ["/health", "/metrics"] {
        let body = env.get(page).await.text().await.expect("text");
        assert!(!body.contains(cached_tests::ACL_PASSWORD), "{page}: {body}");
        assert!(!body.contains("PRIVATE KEY"), "{page}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_then_hits_and_both_show_in_metrics_and_health() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let hits = r#"cache_hits_total{cache="placement"}"#;
    let before = sample(&env.get("/metrics").await.text().await.expect("text"), hits);

    let (status, first) = env.json("/placements/3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["id"], 3);
    let (_, again) = env.json("/placements/3").await;
    assert_eq!(again, first);
    let s = env.stats("placement");
    assert_eq!((s.misses, s.hits, s.loads), (1, 1, 1));
    assert_eq!(redis.cmd::<i64>(&["EXISTS", "placements:placement:3"]), 1);

    let metrics = env.get("/metrics").await.text().await.expect("text");
    assert!(sample(&metrics, hits) >= before + 1.0, "{metrics}");
    assert!(metrics.contains("cache_misses_total{cache=\"placement\"}"));
    assert!(metrics.contains("cache_latency_seconds"));

    let (status, health) = env.json("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["cache"]["backend"], "redis");
    let placement = health["cache"]["stats"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "placement"))
        .cloned()
        .expect("placement stats");
    assert_eq!(placement["hit_rate"], 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_and_cache_control_then_304_for_a_current_copy() {
    let env = Env::with(None).await;
    let r = env.get("/placements/4").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "private, max-age=60");
    let etag = r.headers()[header::ETAG].clone();
    assert_eq!(etag, "\"1\"");

    let r = env.get_if_none_match("/placements/4", etag.clone()).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG], etag);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "private, max-age=60");
    assert!(r.bytes().await.expect("body").is_empty());

    let r = env.get("/public/products").await;
    assert_eq!(r.headers()[header::CACHE_CONTROL], "max-age=3600");
    let weak = r.headers()[header::ETAG].clone();
    assert!(weak.to_str().expect("ascii").starts_with("W/\""));
    let r = env.get_if_none_match("/public/products", weak).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_visible_at_once_and_changes_the_etag() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let (_, before) = env.json("/placements/12").await;
    assert_eq!(before["version"], 1);
    let (status, updated) = env
        .put(
            "/placements/12",
            json!({ "name": "renamed", "position_sec": 45 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["version"], 2);
    let loads = env.stats("placement").loads;
    let r = env
        .get_if_none_match("/placements/12", header::HeaderValue::from_static("\"1\""))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "the old ETag is not current");
    assert_eq!(r.headers()[header::ETAG], "\"2\"");
    let now: Value = r.json().await.expect("json");
    assert_eq!(now, updated);
    assert_eq!(
        env.stats("placement").loads,
        loads,
        "served from the write-through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_then_404_and_the_lists_forget_it() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().filter_map(|p| p["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    let (_, list) = env.json("/videos/1/placements").await;
    assert!(ids(&list).contains(&5));
    let (_, query) = env.json("/placements?video_id=1&limit=50").await;
    assert!(ids(&query).contains(&5));
    assert_eq!(env.json("/placements/5").await.0, StatusCode::OK);

    let r = env.delete("/placements/5").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.json("/placements/5").await.0, StatusCode::NOT_FOUND);
    let (_, list) = env.json("/videos/1/placements").await;
    assert!(!ids(&list).contains(&5), "the list was evicted: {list}");
    let (_, query) = env.json("/placements?video_id=1&limit=50").await;
    assert!(!ids(&query).contains(&5), "the query was evicted: {query}");
    let again = env.delete("/placements/5").await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

/// A list's members come from one batch: the placements already cached
/// are hits, the rest one load; the list's entry holds ids, and each
/// member's entry is `GET /placements/{id}`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_reads_its_members_in_one_batch_shared_with_single_reads() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    // Video 3's placements are 21..=30; two of them read one by one first.
    for id in [22, 27] {
        assert_eq!(
            env.json(&format!("/placements/{id}")).await.0,
            StatusCode::OK
        );
    }
    let (status, list) = env.json("/videos/3/placements").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["id"].as_i64())
        .collect();
    assert_eq!(ids, (21..=30).collect::<Vec<_>>());
    let s = env.stats("placement");
    assert_eq!(
        (s.hits, s.misses, s.loads),
        (2, 2 + 8, 2 + 1),
        "two single loads, then 2 hits and one load of the other 8"
    );
    let entry: Vec<u8> = redis.cmd(&["GET", "placements:video:3:placement_ids"]);
    let entry = String::from_utf8_lossy(&entry);
    assert!(
        entry.contains("[21,22,23"),
        "the list's entry holds ids: {entry}"
    );
    // Every member is now a single read's hit.
    assert_eq!(env.json("/placements/29").await.0, StatusCode::OK);
    assert_eq!(env.stats("placement").loads, 3);
    // A query of the same rows loads nothing more.
    let (_, query) = env.json("/placements?video_id=3&limit=50").await;
    assert_eq!(query, list);
    assert_eq!(env.stats("placement").loads, 3);
}

/// `Cache-Control: no-cache` from a client reads the database and replaces
/// the cached entries: a change made behind the cache's back shows, to
/// that request and to every later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_cache_request_reads_the_database_and_replaces_the_entries() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    assert_eq!(env.json("/placements/4").await.1["name"], "video 1 break 4");
    assert_eq!(
        env.json("/videos/1/placements").await.1[3]["name"],
        "video 1 break 4"
    );
    // Behind the cache's back: the database only.
    let db = env.running.service.db();
    let mut tx = db.begin().await.expect("begins");
    let update = cached_placements::db::PlacementUpdate {
        name: Some("changed".into()),
        position_sec: None,
    };
    cached_placements::db::Db::update(&mut tx, 4, &update, None)
        .await
        .expect("updates");
    tx.commit().await.expect("commits");
    assert_eq!(
        env.json("/placements/4").await.1["name"],
        "video 1 break 4",
        "cached"
    );
    let r = reqwest::Client::new()
        .get(env.url("/placements/4"))
        .header("cache-control", "no-cache")
        .send()
        .await
        .expect("answers");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["name"], "changed");
    assert_eq!(
        env.json("/placements/4").await.1["name"],
        "changed",
        "replaced"
    );
    assert_eq!(
        env.json("/videos/1/placements").await.1[3]["name"],
        "changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_shows_in_its_videos_list_at_once() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let name_of = |v: &Value, id: i64| {
        v.as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id))
            .map(|p| p["name"].clone())
    };
    let (_, list) = env.json("/videos/2/placements").await;
    assert_eq!(name_of(&list, 13), Some(json!("video 2 break 3")));
    let (status, _) = env.put("/placements/13", json!({ "name": "moved" })).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = env.json("/videos/2/placements").await;
    assert_eq!(name_of(&list, 13), Some(json!("moved")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_with_a_json_error_never_a_500() {
    let env = Env::with(None).await;
    for (path, want) in [
        ("/placements/abc", StatusCode::BAD_REQUEST),
        ("/placements/-4", StatusCode::BAD_REQUEST),
        ("/placements/99999999999999999999", StatusCode::BAD_REQUEST),
        ("/placements/424242", StatusCode::NOT_FOUND),
        ("/videos/x/placements", StatusCode::BAD_REQUEST),
        ("/placements?limit=1000", StatusCode::BAD_REQUEST),
        ("/placements?limit=-1", StatusCode::BAD_REQUEST),
        ("/placements?video_id=one", StatusCode::BAD_REQUEST),
        ("/placements?nonsense=1", StatusCode::BAD_REQUEST),
        ("/no/such/route", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = env.json(path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let put = |body: reqwest::Body, content_type: &'static str| {
        env.client
            .put(env.url("/placements/1"))
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    for (body, content_type, want) in [
        (
            "{\"name\":".to_owned(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "{\"name\": 7}".to_owned(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "{\"colour\": \"red\"}".to_owned(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "{\"name\": \"\"}".to_owned(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "{\"position_sec\": -5}".to_owned(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "{\"name\": \"a\\u0000b\"}".to_owned(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "{\"name\": \"x\"}".to_owned(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            format!("{{\"name\": \"{}\"}}", "x".repeat(64 * 1024)),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let r = put(body.clone().into(), content_type)
            .await
            .expect("answers");
        let status = r.status();
        let json: Value = r.json().await.expect("a JSON error");
        assert_eq!(status, want, "{body:.40}: {json}");
        assert!(json["error"].is_string());
    }
    // Nothing above changed the row.
    assert_eq!(env.json("/placements/1").await.1["version"], 1);
}

/// A deleted row stays deleted across a restart. The sample data was put
/// back for each missing row at every start, at version 1, so the row took
/// again the versions it had had: a client's copy of its old version 2
/// (ETag `"2"`) was answered 304 for the new row's version 2, and an
/// `If-Match: "2"` from an editor of the old row overwrote the new one
/// (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_stays_deleted_and_its_etags_name_nothing_after_a_restart() {
    let env = Env::with(None).await;
    let (status, old) = env.put("/placements/3", json!({"name": "old"})).await;
    assert_eq!((status, old["version"].as_i64()), (StatusCode::OK, Some(2)));
    assert_eq!(
        env.delete("/placements/3").await.status(),
        StatusCode::NO_CONTENT
    );
    let env = env.restart().await;
    assert_eq!(
        env.get("/placements/3").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = env
        .get_if_none_match("/placements/3", header::HeaderValue::from_static("\"2\""))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a 304 for a deleted row");
    // The rest of the sample data is as it was.
    assert_eq!(env.json("/placements/4").await.1["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_is_503_and_nothing_is_cached() {
    let env = Env::with(None).await;
    env.running.service.db().close().await;
    let (status, body) = env.json("/placements/7").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].is_string());
    let cached: Option<Value> = env.running.service.cache.get("placement:7").await;
    assert_eq!(cached, None);
    assert_eq!(
        env.json("/placements/7").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        env.stats("placement").load_errors,
        2,
        "each call went to the database"
    );
    assert_eq!(env.json("/health").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_while_redis_is_frozen_and_after_a_restart() {
    let mut redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let (_, expected) = env.json("/placements/21").await;

    redis.freeze();
    let started = Instant::now();
    for _ in 0..20 {
        let (status, body) = env.json("/placements/21").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, expected);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "20 requests took {:?} with Redis frozen",
        started.elapsed()
    );
    // A write while frozen is answered, and reaches Redis when it wakes.
    let (status, updated) = env.put("/placements/21", json!({ "name": "frozen" })).await;
    assert_eq!(status, StatusCode::OK);
    redis.thaw();
    assert_eq!(env.json("/placements/21").await.1, updated);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loads = env.stats("placement").loads;
        let (status, body) = env.json("/placements/21").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, updated, "the database's row, through whichever path");
        if env.stats("placement").loads == loads {
            break; // a hit from the restarted Redis
        }
        assert!(Instant::now() < deadline, "no hits after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request with headers, for the precondition tests.
async fn send(
    env: &Env,
    method: reqwest::Method,
    path: &str,
    headers: &[(header::HeaderName, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = env.client.request(method, env.url(path));
    for (name, value) in headers {
        request = request.header(name.clone(), *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("answers")
}

/// Two editors load version 1 and save. The first wins; the second, still
/// holding version 1's ETag, gets 412 and changes nothing: no lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_editor_of_one_version_gets_412_and_the_first_change_stays() {
    let redis = RedisServer::start();
    let env = Env::with(Some(&redis)).await;
    let r = env.get("/placements/21").await;
    let etag = r.headers()[header::ETAG]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(etag, "\"1\"");
    let put = |name: &'static str| {
        let etag = etag.clone();
        let env = &env;
        async move {
            send(
                env,
                reqwest::Method::PUT,
                "/placements/21",
                &[(header::IF_MATCH, etag.as_str())],
                Some(json!({ "name": name })),
            )
            .await
        }
    };
    let first = put("first editor").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.headers().get(header::ETAG),
        None,
        "no ETag on a partial update's answer"
    );
    assert_eq!(first.headers()[header::CACHE_CONTROL], "no-store");
    let second = put("second editor").await;
    assert_eq!(second.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(second.headers()[header::CACHE_CONTROL], "no-store");
    let (_, now) = env.json("/placements/21").await;
    assert_eq!(now["name"], "first editor");
    assert_eq!(now["version"], 2);

    // The second editor reloads, and saves over the current version.
    let r = send(
        &env,
        reqwest::Method::PUT,
        "/placements/21",
        &[(header::IF_MATCH, "\"2\"")],
        Some(json!({ "name": "second editor" })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, now) = env.json("/placements/21").await;
    assert_eq!(
        (now["name"].as_str(), now["version"].as_i64()),
        (Some("second editor"), Some(3))
    );
}

/// Concurrent editors of one version: exactly one save lands, whatever the
/// interleaving of the precondition checks and the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_editors_of_one_version_exactly_one_saves() {
    let env = std::sync::Arc::new(Env::with(None).await);
    let saves: Vec<_> = (0..8)
        .map(|i| {
            let env = env.clone();
            tokio::spawn(async move {
                send(
                    &env,
                    reqwest::Method::PUT,
                    "/placements/22",
                    &[(header::IF_MATCH, "\"1\"")],
                    Some(json!({ "name": format!("editor {i}") })),
                )
                .await
                .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in saves {
        statuses.push(s.await.expect("no panic"));
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::PRECONDITION_FAILED),
        "{statuses:?}"
    );
    let (_, now) = env.json("/placements/22").await;
    assert_eq!(now["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_honour_every_precondition() {
    let env = Env::with(None).await;
    let status = |r: reqwest::Response| r.status();
    // If-None-Match: * is "create only": the placement exists.
    let r = send(
        &env,
        reqwest::Method::PUT,
        "/placements/23",
        &[(header::IF_NONE_MATCH, "*")],
        Some(json!({ "name": "x" })),
    )
    .await;
    assert_eq!(status(r), StatusCode::PRECONDITION_FAILED);
    // A weak tag never matches If-Match.
    let r = send(
        &env,
        reqwest::Method::PUT,
        "/placements/23",
        &[(header::IF_MATCH, "W/\"1\"")],
        Some(json!({ "name": "x" })),
    )
    .await;
    assert_eq!(status(r), StatusCode::PRECONDITION_FAILED);
    // DELETE with a stale If-Match: 412, and the placement stays.
    let r = send(
        &env,
        reqwest::Method::DELETE,
        "/placements/23",
        &[(header::IF_MATCH, "\"9\"")],
        None,
    )
    .await;
    assert_eq!(status(r), StatusCode::PRECONDITION_FAILED);
    assert_eq!(env.json("/placements/23").await.0, StatusCode::OK);
    // If-Match on a placement that does not exist: 412, not 404.
    let r = send(
        &env,
        reqwest::Method::DELETE,
        "/placements/999999",
        &[(header::IF_MATCH, "*")],
        None,
    )
    .await;
    assert_eq!(status(r), StatusCode::PRECONDITION_FAILED);
    // The current version: deleted.
    let r = send(
        &env,
        reqwest::Method::DELETE,
        "/placements/23",
        &[(header::IF_MATCH, "\"1\"")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(env.json("/placements/23").await.0, StatusCode::NOT_FOUND);
}

/// Every answer states whether and how it may be stored: lists like their
/// members (private, with a validator), everything that is not a
/// representation `no-store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_states_its_cacheability() {
    let env = Env::with(None).await;
    for path in ["/videos/3/placements", "/placements?video_id=3&limit=5"] {
        let r = env.get(path).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "private, max-age=60",
            "{path}"
        );
        let etag = r.headers()[header::ETAG].clone();
        let r = env.get_if_none_match(path, etag.clone()).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(r.headers()[header::ETAG], etag, "{path}");
        let r = env
            .get_if_none_match(path, header::HeaderValue::from_static("*"))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_MODIFIED,
            "{path}: * matches a list"
        );
    }
    // A change to a member changes its lists' ETags.
    let before = env.get("/videos/3/placements").await.headers()[header::ETAG].clone();
    let (status, _) = env
        .put("/placements/21", json!({ "name": "moved on" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let after = env.get("/videos/3/placements").await.headers()[header::ETAG].clone();
    assert_ne!(before, after);

    for (method, path, want) in [
        (reqwest::Method::GET, "/health", StatusCode::OK),
        (reqwest::Method::GET, "/metrics", StatusCode::OK),
        (
            reqwest::Method::GET,
            "/placements/999999",
            StatusCode::NOT_FOUND,
        ),
        (reqwest::Method::GET, "/nope", StatusCode::NOT_FOUND),
        (
            reqwest::Method::GET,
            "/placements/abc",
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/placements/1",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let r = send(&env, method.clone(), path, &[], None).await;
        assert_eq!(r.status(), want, "{method} {path}");
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "no-store",
            "{method} {path}"
        );
    }
    let r = env.get("/metrics").await;
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    // HEAD answered 304: no Content-Length (a 0 would say "empty").
    let r = send(
        &env,
        reqwest::Method::HEAD,
        "/placements/1",
        &[(header::IF_NONE_MATCH, "\"1\"")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        r.headers().get(header::CONTENT_LENGTH),
        None,
        "{:?}",
        r.headers()
    );
}

/// The service on the near tier (`CACHE_NEAR_MAX_BYTES`, as a deployment
/// sets it): hits come from L1 and show per tier in `/metrics`, and a
/// change is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_tier_serves_hits_in_process_and_shows_in_metrics() {
    let redis = RedisServer::start();
    let vars = RedisVars::default()
        .with("REDIS_URL", redis.url())
        .with("CACHE_NEAR_MAX_BYTES", "8388608");
    let env = Env::with_vars(vars).await;
    let (_, health) = env.json("/health").await;
    assert_eq!(health["cache"]["backend"], "redis+near");
    let l1 = r#"cache_tier_hits_total{namespace="placements",tier="l1"}"#;
    let (_, first) = env.json("/placements/5").await;
    // The tracking connection subscribes on first use: hits come from L1
    // once it has.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, again) = env.json("/placements/5").await;
        assert_eq!(again, first);
        let metrics = env.get("/metrics").await.text().await.expect("text");
        if sample(&metrics, l1) >= 1.0 {
            assert!(metrics.contains("cache_near_trusted"), "{metrics}");
            break;
        }
        assert!(Instant::now() < until, "no L1 hit: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, updated) = env
        .put(
            "/placements/5",
            json!({ "name": "near", "position_sec": 7 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, now) = env.json("/placements/5").await;
    assert_eq!(now, updated, "the change is seen at once");
}

/// The same service on a Redis Cluster, chosen by `REDIS_CLUSTER_URLS`
/// alone: a miss then a hit stored in the cluster, a change seen at once,
/// and a delete that its list and its tagged query forget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_a_redis_cluster_by_configuration_alone() {
    let cluster = cached_tests::RedisCluster::start();
    let vars = RedisVars::default().with("REDIS_CLUSTER_URLS", cluster.urls().join(","));
    let env = Env::with_vars(vars).await;
    let (_, health) = env.json("/health").await;
    assert_eq!(health["cache"]["backend"], "redis-cluster");

    let (status, first) = env.json("/placements/5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.json("/placements/5").await.1, first);
    let s = env.stats("placement");
    assert_eq!((s.misses, s.hits, s.loads), (1, 1, 1));
    let key = "{placements:placement:5}";
    let owner = &cluster.nodes()[cluster.owner_of(key)];
    assert_eq!(
        owner.cmd::<i64>(&["EXISTS", key]),
        1,
        "stored in the cluster, its name its own hash tag"
    );

    let (_, query) = env.json("/placements?video_id=1&limit=50").await;
    let has = |v: &Value, id: i64| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p["id"].as_i64() == Some(id)))
    };
    assert!(has(&query, 5));
    let (status, updated) = env
        .put(
            "/placements/5",
            json!({ "name": "sharded", "position_sec": 9 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.json("/placements/5").await.1, updated);

    assert_eq!(
        env.delete("/placements/5").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(env.json("/placements/5").await.0, StatusCode::NOT_FOUND);
    let (_, list) = env.json("/videos/1/placements").await;
    assert!(!has(&list, 5), "the list was evicted: {list}");
    let (_, query) = env.json("/placements?video_id=1&limit=50").await;
    assert!(!has(&query, 5), "the tagged query was invalidated: {query}");
}
