//! A silent network failure: the connections go dead without a word (a NAT
//! or firewall that forgot them), while new connections work. redis-rs
//! re-makes a connection that fails, not one that goes silent; the cache
//! must notice and recover on its own, without a restart.

use std::time::Duration;

use cached_tests::{Proxy, RedisServer};

use crate::support::{Placement, service_with, timed, until_hit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_resume_after_the_connections_go_silently_dead() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let s = service_with(&server, |b| b.redis(proxy.url()));
    until_hit(&s, 1, Duration::from_secs(2)).await;
    proxy.strand();
    // Every call is still answered, within its bounds...
    for _ in 0..10 {
        let (got, took) = timed(Duration::from_secs(1), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        assert!(took < Duration::from_millis(200), "a call took {took:?}");
    }
    // ...and the cache finds its way back over a new connection.
    let took = until_hit(&s, 1, Duration::from_secs(3)).await;
    assert!(!s.cache.breaker_open(), "hits back after {took:?}");
}
