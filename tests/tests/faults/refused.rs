//! No server at all (connection refused), and a server killed under a
//! warm cache.

use std::time::Duration;

use cached_tests::{RedisServer, unreachable_redis_builder};

use crate::support::{OP, Placement, Service, median, service, timed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_miss_every_time_never_an_error() {
    let cache = unreachable_redis_builder()
        .op_timeout(OP)
        .build()
        .expect("an unreachable server is not a build error");
    let s = Service::new(cache);
    let mut took = Vec::new();
    for id in 0..20 {
        let (got, t) = timed(Duration::from_secs(2), s.get(id)).await;
        assert_eq!(got, Ok(Placement::row(id)));
        took.push(t);
    }
    assert_eq!(s.loads(), 20);
    assert!(
        median(took) < OP,
        "refused connections must not cost a timeout each"
    );
    assert!(
        timed(Duration::from_secs(2), s.cache.ping())
            .await
            .0
            .is_err()
    );
    let stats = s.cache.stats_for("placement").expect("stats");
    assert!(stats.errors + stats.skipped >= 20, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_sends_callers_to_the_loader() {
    let mut server = RedisServer::start();
    let s = service(&server);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    server.kill();
    for _ in 0..10 {
        let (got, t) = timed(Duration::from_secs(2), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        assert!(t < OP * 6, "{t:?}");
    }
    // Writes and invalidations fail quietly too.
    let limit = Duration::from_secs(2);
    assert!(timed(limit, s.rename(1, "renamed".into())).await.0.is_ok());
    assert!(timed(limit, s.delete(1)).await.0.is_ok());
    assert!(
        timed(limit, s.cache.invalidate("placement:1"))
            .await
            .0
            .is_err()
    );
}

/// Timeouts as long as a `Duration` holds ("never time out") are taken as
/// given: no sum of them overflows into a panic, neither when a change
/// that failed is pended, nor when the breaker's probe is due, nor in the
/// breaker's backoff (found by a review: `op_timeout(Duration::MAX)` made
/// the first refused write-through panic in its caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_as_long_as_a_duration_holds_cause_no_panic() {
    for near in [false, true] {
        timeouts_as_long_as_a_duration_holds(near).await;
    }
}

async fn timeouts_as_long_as_a_duration_holds(near: bool) {
    let mut builder = unreachable_redis_builder();
    if near {
        builder = builder.near_cache(cached_runtime::NearCache::new());
    }
    let cache = builder
        .op_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .circuit_breaker(cached_runtime::CircuitBreaker {
            failures: 1,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::MAX,
        })
        .build()
        .expect("builds");
    let s = Service::new(cache);
    s.cache.set("k", &1u32, Duration::from_secs(60)).await;
    for id in 0..10 {
        let (got, _) = timed(Duration::from_secs(2), s.get(id)).await;
        assert_eq!(got, Ok(Placement::row(id)));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        timed(Duration::from_secs(2), s.cache.invalidate("k"))
            .await
            .0
            .is_err()
    );
}

/// The near tier with timeouts as long as a `Duration` holds: its tracking
/// connection subscribes (no sum of timeouts overflows in its task), and
/// L1 serves hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_tier_with_timeouts_as_long_as_a_duration_holds_serves_l1() {
    let server = RedisServer::start();
    let cache = cached_tests::redis_builder(&server)
        .near_cache(cached_runtime::NearCache::new())
        .op_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .build()
        .expect("builds");
    let s = Service::new(cache);
    let began = std::time::Instant::now();
    while s.cache.near_stats().expect("near").l1_hits == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "L1 never served a hit"
        );
        let (got, _) = timed(Duration::from_secs(2), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
