//! A small placement service over a counting "database", and helpers shared
//! by the fault tests.

use std::time::{Duration, Instant};

use cached_runtime::{Cache, CacheBuilder, cache_evict, cache_put, cached};
use cached_tests::{RedisServer, Source, redis_builder};
use serde::{Deserialize, Serialize};

/// The operation timeout of every cache here.
pub const OP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub id: u64,
    pub name: String,
}

impl Placement {
    pub fn row(id: u64) -> Placement {
        Placement {
            id,
            name: format!("placement {id}"),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct DbError;

pub struct Service {
    pub cache: Cache,
    source: Source,
}

impl Service {
    pub fn new(cache: Cache) -> Service {
        Service {
            cache,
            source: Source::new(),
        }
    }

    /// Loader runs so far.
    pub fn loads(&self) -> u32 {
        self.source.loads()
    }

    #[cached(prefix = "placement", ttl = "5m", key = id)]
    pub async fn get(&self, id: u64) -> Result<Placement, DbError> {
        self.source.count_load();
        Ok(Placement::row(id))
    }

    /// A 50 ms load.
    #[cached(prefix = "slow", ttl = "5m", key = id)]
    pub async fn slow(&self, id: u64) -> Placement {
        self.source.count_load();
        tokio::time::sleep(Duration::from_millis(50)).await;
        Placement::row(id)
    }

    /// A row `len` bytes large (to test the size limit).
    #[cached(prefix = "big", ttl = "5m", key = id)]
    pub async fn big(&self, id: u64, len: usize) -> Placement {
        self.source.count_load();
        Placement {
            id,
            name: "x".repeat(len),
        }
    }

    #[cache_put(prefix = "placement", ttl = "5m", key = id)]
    pub async fn rename(&self, id: u64, name: String) -> Result<Placement, DbError> {
        Ok(Placement { id, name })
    }

    #[cache_evict(keys = ["placement:{id}"])]
    pub async fn delete(&self, id: u64) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }
}

/// A builder for a Redis cache on `server`, namespace `t`, 50 ms timeout.
pub fn builder(server: &RedisServer) -> CacheBuilder {
    redis_builder(server).op_timeout(OP)
}

pub fn service(server: &RedisServer) -> Service {
    service_with(server, |b| b)
}

/// A service on `server` whose cache [`builder`] is adjusted by `adjust`.
pub fn service_with(
    server: &RedisServer,
    adjust: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> Service {
    Service::new(adjust(builder(server)).build().expect("a valid cache"))
}

/// A service whose breaker opens after `failures` in a row and probes
/// between `min_ms` and `max_ms` apart.
pub fn with_breaker(server: &RedisServer, failures: u32, min_ms: u64, max_ms: u64) -> Service {
    service_with(server, |b| {
        b.circuit_breaker(cached_runtime::CircuitBreaker {
            failures,
            min_backoff: Duration::from_millis(min_ms),
            max_backoff: Duration::from_millis(max_ms),
        })
    })
}

/// The Redis key of placement `id`.
pub fn key(id: u64) -> String {
    format!("t:placement:{id}")
}

/// Awaits `fut`, failing the test if it takes longer than `limit` (a hang
/// is a failure, not a stuck suite); returns its output and how long it took.
pub async fn timed<T>(limit: Duration, fut: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => (v, started.elapsed()),
        Err(_) => panic!("the call took longer than {limit:?}"),
    }
}

/// Calls `get(id)` until a call is served without a load (a hit), or fails
/// after `limit`. Returns how long that took.
pub async fn until_hit(s: &Service, id: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let before = s.loads();
        let got = timed(Duration::from_secs(2), s.get(id)).await.0;
        assert_eq!(got, Ok(Placement::row(id)), "every call is answered");
        if s.loads() == before {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no hit within {limit:?} (stats: {:?})",
            s.cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls `get(id)` until the breaker has closed; fails with `why` after
/// `limit`.
pub async fn until_closed(s: &Service, id: u64, limit: Duration, why: &str) {
    let started = Instant::now();
    while s.cache.breaker_open() {
        assert!(started.elapsed() < limit, "{why}");
        let _ = timed(Duration::from_secs(2), s.get(id)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The median of some durations.
pub fn median(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d.get(d.len() / 2).copied().unwrap_or_default()
}
