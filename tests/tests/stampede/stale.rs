//! Stale-while-revalidate and fail-safe: past its TTL an entry is served
//! at once while one caller refreshes it, and served still while the
//! source is down.

use std::time::{Duration, Instant};

use cached_tests::{Backend, RedisServer, SourceDown, on_both_backends, redis_cache};

use crate::{Svc, join_all};

on_both_backends!(stale_is_served_while_one_caller_refreshes);

cached_tests::on_cluster!(stale_is_served_while_one_caller_refreshes,);

async fn stale_is_served_while_one_caller_refreshes(backend: &Backend) {
    let svc = Svc::new(backend.cache(), Duration::from_millis(200));
    assert_eq!(svc.swr(1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await; // past the 300 ms TTL (+10% jitter)
    svc.source.set_version(2);
    let tasks = (0..20)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (s.swr(1).await, t.elapsed())
            })
        })
        .collect();
    for (value, took) in join_all(tasks).await {
        assert_eq!(value, Ok(1), "the stale value is served at once");
        assert!(
            took < Duration::from_millis(100),
            "not after a 200 ms load: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        svc.swr(1).await,
        Ok(2),
        "the background refresh stored the new value"
    );
    assert_eq!(svc.loads(), 2, "one refresh for twenty stale reads");
    let stats = svc.cache.stats_for("swr").expect("stats");
    assert!(
        stats.stale_served >= 20 && stats.stale_refreshes == 1,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_when_the_loader_fails() {
    let server = RedisServer::start();
    let svc = Svc::new(redis_cache(&server), Duration::from_millis(10));
    assert_eq!(svc.swr(2).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    svc.source.set_failing(true);
    for _ in 0..5 {
        assert_eq!(
            svc.swr(2).await,
            Ok(1),
            "the source is down: the stale value is served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.loads() >= 2, "refreshes were tried");
    assert!(svc.cache.stats_for("swr").expect("stats").load_errors >= 1);
    // Without `stale`, the same failure reaches the caller.
    assert_eq!(svc.slow(2).await, Err(SourceDown));
}

/// Reads, and scripts (lease requests travel as scripts), run so far.
fn calls(server: &RedisServer) -> (u64, u64) {
    (
        crate::completed(server, &["getrange"]),
        crate::completed(server, &["eval", "evalsha"]),
    )
}

/// A background refresh asks for the key's lease once: if another process
/// holds it (refreshing, or loading), that one refreshes, and this one
/// neither waits for it nor polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_another_process_refreshing_leaves_it_to_that_one() {
    let server = RedisServer::start();
    let svc = Svc::new(crate::patient(&server), Duration::ZERO);
    assert_eq!(svc.swr(3).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(400)).await; // stale now
    // Another process's refresh holds the lease.
    let lease = format!("{}:swr:3:~lease", cached_tests::NAMESPACE);
    server.cmd::<()>(&["SET", &lease, "4242", "PX", "5000"]);
    svc.source.set_version(2);
    let (reads, scripts) = calls(&server);
    assert_eq!(svc.swr(3).await, Ok(1), "the stale value, at once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = calls(&server);
    assert_eq!(
        (after.0 - reads, after.1 - scripts),
        (1, 1),
        "the caller's read and one lease request: no polling, no re-read"
    );
    assert_eq!(svc.loads(), 1, "the other process refreshes, not this one");
    // That process is gone: the next stale read refreshes at once.
    server.cmd::<()>(&["DEL", &lease]);
    let (_, scripts) = calls(&server);
    assert_eq!(svc.swr(3).await, Ok(1));
    // Waited for without calling again: a call that read the stale value
    // just before the refresh's write may try a refresh of its own (one
    // more lease request, refused), which is not what is counted here.
    let started = Instant::now();
    while svc.loads() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its lease ended with its write: no release after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls(&server).1 - scripts,
        2,
        "a lease request and a leased write"
    );
    assert_eq!(svc.swr(3).await, Ok(2), "refreshed");
}
