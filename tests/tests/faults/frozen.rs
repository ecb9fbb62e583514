//! A frozen server (SIGSTOP): connections stay open and nothing answers,
//! the worst case for a client (no error, only silence).

use std::time::Duration;

use cached_tests::RedisServer;

use crate::support::{OP, Placement, median, service, timed, until_hit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_costs_one_timeout_then_nothing_and_hits_resume_after_the_thaw() {
    let mut server = RedisServer::start();
    let s = service(&server);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    until_hit(&s, 1, Duration::from_secs(2)).await;

    server.freeze();
    // The first call waits out the operation timeout, no more: it is
    // answered by the loader, and the error is counted, not returned.
    let (got, first) = timed(Duration::from_secs(2), s.get(1)).await;
    assert_eq!(got, Ok(Placement::row(1)));
    assert!(first >= OP, "{first:?}: the read was not even tried");
    assert!(
        first < OP * 6,
        "{first:?} for one call against a frozen server"
    );

    // Then the breaker opens and calls stop waiting at all.
    let mut took = Vec::new();
    for _ in 0..40 {
        let (got, t) = timed(Duration::from_secs(2), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        took.push(t);
    }
    let late = median(took[20..].to_vec());
    assert!(
        late < OP / 2,
        "calls still wait on the frozen server: median {late:?}"
    );
    let stats = s.cache.stats_for("placement").expect("stats");
    assert!(stats.errors >= 1, "{stats:?}");
    assert!(stats.skipped >= 1, "{stats:?}");
    assert!(s.cache.breaker_open());

    server.thaw();
    let back = until_hit(&s, 1, Duration::from_secs(3)).await;
    assert!(!s.cache.breaker_open(), "hits are back after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_on_a_frozen_server_all_get_the_loaders_value() {
    let mut server = RedisServer::start();
    let s = std::sync::Arc::new(service(&server));
    server.freeze();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { timed(Duration::from_secs(3), s.get(i % 4)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let (got, _) = call.await.expect("no panic");
        assert_eq!(got, Ok(Placement::row(i as u64 % 4)));
    }
    server.thaw();
}
