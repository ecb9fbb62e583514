//! Production Redis: TLS with a private CA and client certificates, AUTH
//! and ACL users, settings from the environment, and secrets that never
//! show. Every server is a real `redis-server` with certificates made fresh
//! by the test (`cached_tests::Pki`); none is committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cached_runtime::{BuildError, Cache, CacheBuilder, cached};
use cached_tests::{ClientAuth, NAMESPACE, Pki, RedisServer, Source, acl_user_args};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    version: u64,
}

struct Service {
    cache: Cache,
    source: Source,
}

impl Service {
    fn new(cache: Cache) -> Service {
        Service {
            cache,
            source: Source::new(),
        }
    }

    #[cached(prefix = "row", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Row {
        Row {
            id,
            version: self.source.load().await.expect("the source answers"),
        }
    }

    fn loads(&self) -> u32 {
        self.source.loads()
    }
}

/// Calls `get(id)` until it is a hit (no load), within `bound`.
async fn until_hit(s: &Service, id: u64, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let before = s.loads();
        s.get(id).await;
        if s.loads() == before {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "no hit within {bound:?}: the cache is not used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Patient: a TLS handshake on a loaded machine must not turn a test of
/// certificates into a test of timeouts.
fn tls_builder(server: &RedisServer) -> CacheBuilder {
    Cache::builder()
        .redis(server.tls_url())
        .namespace(NAMESPACE)
        .op_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
}

/// The entry is in Redis (read over the plain port, as the default user).
fn stored(server: &RedisServer, id: u64) -> bool {
    server.cmd::<i64>(&["EXISTS", &format!("{NAMESPACE}:row:{id}")]) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_given_to_the_builder_caches() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki, ClientAuth::Optional);
    let cache = tls_builder(&server)
        .redis_tls_ca(pki.ca_pem.clone())
        .build()
        .expect("builds");
    cache.ping().await.expect("a TLS connection to the server");
    let s = Service::new(cache);
    assert_eq!(s.get(1).await.version, 1);
    assert_eq!(s.get(1).await.version, 1);
    assert_eq!(s.loads(), 1, "the second call was a hit");
    assert!(stored(&server, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki, ClientAuth::Required);

    // Without a certificate the server hangs up: the cache fails, the caller
    // does not.
    let anonymous = tls_builder(&server)
        .redis_tls_ca(pki.ca_pem.clone())
        .build()
        .expect("builds");
    assert!(
        anonymous.ping().await.is_err(),
        "connected without a certificate"
    );
    let s = Service::new(anonymous);
    assert_eq!(s.get(1).await.version, 1);
    assert_eq!(s.get(1).await.version, 1);
    assert_eq!(s.loads(), 2, "nothing was cached");
    assert!(!stored(&server, 1));

    let cache = tls_builder(&server)
        .redis_tls_ca(pki.ca_pem.clone())
        .redis_tls_client(pki.client_cert.clone(), pki.client_key.clone())
        .build()
        .expect("builds");
    cache.ping().await.expect("mutual TLS");
    let s = Service::new(cache);
    s.get(1).await;
    until_hit(&s, 1, Duration::from_secs(2)).await;
    assert!(stored(&server, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_from_the_environment() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki, ClientAuth::Required);
    let dir = tempfile::tempdir().expect("a directory");
    let (ca, cert, key) = pki.write(dir.path());
    let path = |p: &std::path::Path| p.display().to_string();
    let vars = HashMap::from([
        ("REDIS_URL", server.tls_url()),
        ("REDIS_TLS_CA_FILE", path(&ca)),
        ("REDIS_TLS_CERT_FILE", path(&cert)),
        ("REDIS_TLS_KEY_FILE", path(&key)),
    ]);
    let cache = Cache::builder()
        .from_vars(|name| vars.get(name).cloned())
        .namespace(NAMESPACE)
        .build()
        .expect("builds");
    cache.ping().await.expect("mutual TLS from the environment");
    let s = Service::new(cache);
    s.get(3).await;
    until_hit(&s, 3, Duration::from_secs(2)).await;

    // A key file named but missing: the error names the variable and file.
    let mut broken = vars.clone();
    broken.insert("REDIS_TLS_KEY_FILE", path(&dir.path().join("missing.key")));
    let e = Cache::builder()
        .from_vars(|name| broken.get(name).cloned())
        .build()
        .expect_err("no key file");
    assert!(matches!(e, BuildError::InvalidTls { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.starts_with("invalid Redis TLS setting in REDIS_TLS_KEY_FILE (file "),
        "{e}"
    );
    assert!(
        e.contains("missing.key") && e.contains("cannot read the file"),
        "{e}"
    );

    // A certificate without its key.
    let mut half = vars.clone();
    half.remove("REDIS_TLS_KEY_FILE");
    let e = Cache::builder()
        .from_vars(|name| half.get(name).cloned())
        .build()
        .expect_err("no key")
        .to_string();
    assert!(
        e.contains("REDIS_TLS_KEY_FILE") && e.contains("go together"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_at_first_use() {
    let pki = Pki::generate();
    let server = RedisServer::start_tls(&pki, ClientAuth::Optional);
    let stranger = Pki::generate_named("some other CA");
    // Building needs no server: the CA is checked when it connects.
    let cache = tls_builder(&server)
        .redis_tls_ca(stranger.ca_pem)
        .build()
        .expect("builds");
    let e = cache.ping().await.expect_err("an untrusted server");
    let e = e.to_string();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "the error says why: {e}"
    );
    let s = Service::new(cache);
    assert_eq!(s.get(1).await.version, 1, "the caller still gets its value");
    assert!(!stored(&server, 1));

    // A CA that is not PEM at all is refused when the cache is built.
    let e = tls_builder(&server)
        .redis_tls_ca("not a certificate")
        .build()
        .expect_err("not PEM")
        .to_string();
    assert!(
        e.starts_with("invalid Redis TLS setting in CacheBuilder::redis_tls_ca: not PEM"),
        "{e}"
    );
    // TLS settings with a plain URL are a mistake, said so.
    let e = Cache::builder()
        .redis(server.url())
        .redis_tls_ca(pki.ca_pem.clone())
        .build()
        .expect_err("not rediss")
        .to_string();
    assert!(e.contains("is not rediss://"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_survives_a_frozen_a_killed_and_a_restarted_server() {
    let pki = Pki::generate();
    let mut server = RedisServer::start_tls(&pki, ClientAuth::Required);
    let cache = tls_builder(&server)
        .op_timeout(Duration::from_millis(50))
        .redis_tls_ca(pki.ca_pem.clone())
        .redis_tls_client(pki.client_cert.clone(), pki.client_key.clone())
        .build()
        .expect("builds");
    let s = Arc::new(Service::new(cache));
    s.get(1).await;
    until_hit(&s, 1, Duration::from_secs(2)).await;

    // Frozen: bounded calls, the loader's value, then the breaker skips.
    server.freeze();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(s.get(1).await.version, 1);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a call waited {:?} on a frozen TLS server",
            started.elapsed()
        );
    }
    assert!(s.cache.breaker_open());
    server.thaw();
    until_hit(&s, 1, Duration::from_secs(3)).await;

    // Killed: calls go to the loader; restarted (empty): cached again.
    server.kill();
    let loads = s.loads();
    assert_eq!(s.get(1).await.version, 1);
    assert!(s.loads() > loads, "a killed server served a hit");
    server.restart();
    s.get(1).await;
    until_hit(&s, 1, Duration::from_secs(3)).await;
    assert!(stored(&server, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_or_from_the_builder() {
    let server = RedisServer::start();
    let port = server.port();
    // The default user's password (what `requirepass` sets); the test's
    // own plain commands are done with.
    server.cmd::<()>(&["CONFIG", "SET", "requirepass", "right-password"]);
    for cache in [
        Cache::builder().redis(format!("redis://:right-password@127.0.0.1:{port}")),
        Cache::builder()
            .redis(format!("redis://:wrong-password@127.0.0.1:{port}"))
            .redis_password("right-password"),
    ] {
        let cache = cache.namespace(NAMESPACE).build().expect("builds");
        cache.ping().await.expect("authenticated");
        let s = Service::new(cache);
        s.get(7).await;
        until_hit(&s, 7, Duration::from_secs(2)).await;
    }

    // A wrong password: the caller gets its value; the failure says auth.
    let wrong = Cache::builder()
        .redis(format!("redis://127.0.0.1:{port}"))
        .redis_password("not-the-password")
        .namespace(NAMESPACE)
        .build()
        .expect("builds");
    let e = wrong.ping().await.expect_err("refused");
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    let s = Service::new(wrong);
    assert_eq!(s.get(8).await.version, 1);
    assert_eq!(s.get(8).await.version, 1);
    assert_eq!(s.loads(), 2);
}

/// A cache on Redis without a namespace is refused: every pattern
/// invalidation it sends (`{namespace}:*` and narrower, and the one a pile
/// of changes Redis did not take collapses into) would then reach every
/// key of the database, the application's own data included. Without the
/// refusal, `invalidate_pattern("*")` removed a key no cache wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_redis_needs_a_namespace_and_its_patterns_stay_inside_it() {
    let server = RedisServer::start();
    let e = cached_tests::redis_builder(&server)
        .namespace("")
        .build()
        .expect_err("refused");
    assert!(e.to_string().contains("needs a namespace"), "{e}");
    assert!(
        Cache::builder().namespace("").build().is_ok(),
        "in memory, nothing else shares the keyspace"
    );
    // With one, `*` reaches the namespace's keys alone.
    let () = server.cmd(&["SET", "session:1", "not the cache's"]);
    let cache = cached_tests::redis_builder(&server)
        .build()
        .expect("builds");
    cache.set("a", &1u8, Duration::from_secs(60)).await;
    cache.invalidate_pattern("*").await.expect("invalidates");
    assert_eq!(cache.get::<u8>("a").await, None);
    let kept: Option<String> = server.cmd(&["GET", "session:1"]);
    assert_eq!(kept.as_deref(), Some("not the cache's"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_the_documented_rule_runs_and_one_without_is_refused_per_key() {
    // The user may touch `t:*` only; a cache under another namespace is
    // refused every command (NOPERM), and its callers still get values.
    let args = acl_user_args(NAMESPACE);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(&args);
    let as_user = |namespace: &str| {
        cached_tests::redis_builder(&server)
            .namespace(namespace)
            .redis_username(cached_tests::ACL_USER)
            .redis_password(cached_tests::ACL_PASSWORD)
            .build()
            .expect("builds")
    };
    let s = Service::new(as_user(NAMESPACE));
    s.get(1).await;
    until_hit(&s, 1, Duration::from_secs(2)).await;
    s.cache.invalidate_pattern("row:*").await.expect("allowed");

    let outsider = Service::new(as_user("other"));
    assert_eq!(outsider.get(1).await.version, 1);
    assert_eq!(outsider.get(1).await.version, 1);
    assert_eq!(
        outsider.loads(),
        2,
        "nothing cached outside the rule's keys"
    );
    let e = outsider
        .cache
        .invalidate("row:1")
        .await
        .expect_err("NOPERM");
    assert_eq!(e.kind(), "permission", "{e}");
}

#[test]
fn the_readme_gives_the_acl_rule_the_runtime_needs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let rule = cached_runtime::redis_acl_rule("placement-v1");
    assert!(
        readme.contains(&rule),
        "README.md's \"Production Redis\" section must show the rule for namespace \
         placement-v1 exactly as redis_acl_rule gives it:\n{rule}"
    );
}

#[test]
fn secrets_never_show_in_debug_output_or_errors() {
    let secrets = ["url-secret", "builder-secret", "PRIVATE KEY DATA"];
    let key = "-----BEGIN PRIVATE KEY-----\nPRIVATE KEY DATA\n-----END PRIVATE KEY-----\n";
    let builder = Cache::builder()
        .redis("rediss://app:url-secret@127.0.0.1:6380/0")
        .redis_password("builder-secret")
        .redis_tls_client("-----BEGIN CERTIFICATE-----\n", key);
    let mut shown = vec![format!("{builder:?}")];
    match builder.clone().build() {
        Ok(cache) => shown.push(format!("{cache:?}")),
        Err(e) => shown.extend([format!("{e}"), format!("{e:?}")]),
    }
    let cache = Cache::builder()
        .redis("redis://app:url-secret@127.0.0.1:6380/0")
        .redis_password("builder-secret")
        .build()
        .expect("builds");
    shown.push(format!("{cache:?}"));
    for url in [
        "redis://app:url-secret@127.0.0.1:63x0",
        "redis://app:url-secret@127.0.0.1:6380/db",
        "http://app:url-secret@127.0.0.1",
        "redis://app:url-secret@:6380",
    ] {
        let e = Cache::builder().redis(url).build().expect_err("refused");
        shown.extend([format!("{e}"), format!("{e:?}")]);
    }
    for text in &shown {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} shown in: {text}");
        }
    }
    assert!(
        shown[0].contains("rediss://app:***@127.0.0.1:6380/0"),
        "the URL is shown masked: {}",
        shown[0]
    );
}
