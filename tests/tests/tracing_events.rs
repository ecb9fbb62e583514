//! The `tracing` events of a cached call. A binary of its own: the
//! subscriber here is thread-local, and tests of other binaries' threads
//! would race it for tracing's global interest cache.

use std::sync::{Arc, Mutex};

use cached_runtime::{Cache, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    secret: String,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "obs_traced", ttl = "5m", key = id)]
    async fn traced(&self, id: u64) -> Row {
        Row {
            id,
            secret: "do-not-log-me".into(),
        }
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn each_redis_read_is_a_debug_event_with_key_hit_and_latency_and_no_value() {
    let server = cached_tests::RedisServer::start();
    let logged = logged_by(|| async {
        let s = Service {
            cache: cached_tests::redis_cache(&server),
        };
        s.traced(9).await;
        s.traced(9).await;
    });
    let gets: Vec<&str> = logged.lines().filter(|l| l.contains("cache get")).collect();
    assert_eq!(gets.len(), 2, "{logged}");
    assert!(gets[0].contains("cache_key=t:obs_traced:9") && gets[0].contains("hit=false"));
    assert!(gets[1].contains("hit=true") && gets[1].contains("latency_ms="));
    assert!(logged.contains("cache set"), "{logged}");
    assert!(
        !logged.contains("do-not-log-me"),
        "a value's content was logged"
    );
}

/// Runs `body` on a current-thread runtime with a subscriber at `debug`,
/// and returns everything logged.
fn logged_by<F: Future<Output = ()>>(body: impl FnOnce() -> F) -> String {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(body());
    String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8")
}

#[test]
fn a_wrong_password_is_one_error_event_and_the_password_is_never_logged() {
    let server = cached_tests::RedisServer::start();
    server.cmd::<()>(&["CONFIG", "SET", "requirepass", "the-right-one"]);
    let url = format!("redis://app:url-secret-pw@127.0.0.1:{}", server.port());
    let logged = logged_by(|| async {
        let s = Service {
            cache: cached_runtime::Cache::builder()
                .redis(url)
                .redis_password("builder-secret-pw")
                .namespace("t")
                .build()
                .expect("builds"),
        };
        for id in 0..20 {
            assert_eq!(s.traced(id).await.id, id, "the caller gets its value");
        }
        assert!(s.cache.ping().await.is_err());
    });
    let errors: Vec<&str> = logged.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error event:\n{logged}");
    assert!(
        errors[0].contains("kind=\"auth\"") || errors[0].contains("kind=auth"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("redis_acl_rule"), "{}", errors[0]);
    for secret in ["url-secret-pw", "builder-secret-pw", "the-right-one"] {
        assert!(!logged.contains(secret), "{secret} logged:\n{logged}");
    }
}

#[test]
fn a_command_the_acl_refuses_is_one_error_event() {
    let args = cached_tests::acl_user_args("t");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = cached_tests::RedisServer::start_with(&args);
    let logged = logged_by(|| async {
        // Outside the rule's namespace: every keyed command is NOPERM.
        let s = Service {
            cache: cached_tests::redis_builder(&server)
                .namespace("elsewhere")
                .redis_username(cached_tests::ACL_USER)
                .redis_password(cached_tests::ACL_PASSWORD)
                .build()
                .expect("builds"),
        };
        for id in 0..20 {
            assert_eq!(s.traced(id).await.id, id, "the caller gets its value");
        }
    });
    let errors: Vec<&str> = logged.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error event:\n{logged}");
    assert!(errors[0].contains("permission"), "{}", errors[0]);
    assert!(!logged.contains(cached_tests::ACL_PASSWORD), "{logged}");
}

#[derive(Clone)]
struct Flaky {
    cache: cached_runtime::Cache,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Flaky {
    #[cached(prefix = "flaky", ttl = "50ms", stale = "1m", key = id)]
    async fn get(&self, id: u64) -> Result<u64, String> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err("the source is down".into())
        } else {
            Ok(id)
        }
    }
}

#[test]
fn a_failed_background_refresh_is_a_warning_and_the_stale_value_stays() {
    let logged = logged_by(|| async {
        let s = Flaky {
            cache: cached_runtime::Cache::memory(),
            down: Arc::default(),
        };
        assert_eq!(s.get(1).await, Ok(1));
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        s.down.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            s.get(1).await,
            Ok(1),
            "stale, and refreshed in the background"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(s.get(1).await, Ok(1), "still the stale value");
    });
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("background refresh failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logged}");
    assert!(
        warnings[0].contains("cache_key=cache:flaky:1"),
        "{}",
        warnings[0]
    );
}
