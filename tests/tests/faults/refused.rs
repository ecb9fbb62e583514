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
