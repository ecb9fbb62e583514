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
    let server = cached_tests::RedisServer::start();
    runtime.block_on(async {
        let s = Service {
            cache: cached_tests::redis_cache(&server),
        };
        s.traced(9).await;
        s.traced(9).await;
    });
    let logged = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
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
