//! Single flight: concurrent callers of one key share one load, in one
//! process and, through the lease, across caches on one Redis; a leader
//! that is cancelled or panics leaves no waiter hanging and no lease behind.

use std::time::{Duration, Instant};

use cached_runtime::Cache;
use cached_tests::{Backend, RedisServer, on_both_backends, redis_cache};

use crate::{Svc, join_all};

on_both_backends!(
    concurrent_callers_share_one_load,
    a_cancelled_leader_wakes_its_waiters_and_releases_its_lease,
);

cached_tests::on_cluster!(
    concurrent_callers_share_one_load,
    a_cancelled_leader_wakes_its_waiters_and_releases_its_lease,
);

async fn concurrent_callers_share_one_load(backend: &Backend) {
    let svc = Svc::new(backend.cache(), Duration::from_millis(50));
    let tasks = (0..200)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move { s.slow(1).await })
        })
        .collect();
    let results = join_all(tasks).await;
    assert!(
        results.iter().all(|r| r == &Ok(1)),
        "every caller gets the one value"
    );
    assert_eq!(
        svc.loads(),
        1,
        "200 concurrent callers of a cold key load once"
    );
    assert!(svc.cache.stats_for("slow").expect("stats").coalesced >= 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lock_every_caller_loads() {
    // The control for the test above: it can tell one load from many.
    let svc = Svc::new(Cache::memory(), Duration::from_millis(50));
    let tasks = (0..20)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move { s.unlocked(1).await })
        })
        .collect();
    join_all(tasks).await;
    assert_eq!(svc.loads(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_caches_on_one_redis_share_one_load_through_the_lease() {
    let server = RedisServer::start();
    let first = Svc::new(redis_cache(&server), Duration::from_millis(100));
    let services: Vec<Svc> = (0..4)
        .map(|_| first.sharing_source_with(redis_cache(&server)))
        .collect();
    let tasks = services
        .iter()
        .flat_map(|s| (0..25).map(move |_| s.clone()))
        .map(|s| tokio::spawn(async move { s.slow(7).await }))
        .collect();
    let results = join_all(tasks).await;
    assert!(results.iter().all(|r| r == &Ok(1)));
    assert_eq!(
        first.loads(),
        1,
        "four caches, one Redis: one load in total"
    );
}

// ---- cancellation and panics --------------------------------------------

async fn a_cancelled_leader_wakes_its_waiters_and_releases_its_lease(backend: &Backend) {
    let svc = Svc::new(backend.cache(), Duration::from_secs(60));
    let leader = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(11).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(11).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.source.set_delay(Duration::from_millis(10));
    leader.abort(); // the caller's future is dropped mid-load
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert!(
        matches!(got, Ok(Ok(Ok(1)))),
        "the waiter must go on without the leader: {got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "and not wait out the 10 s lease"
    );
    if let Some(server) = backend.server() {
        // And nothing is left holding the key.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            server.cmd::<Option<String>>(&["GET", "t:slow:11:~lease"]),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_leaves_no_lease_and_no_waiter_hanging() {
    let server = RedisServer::start();
    let svc = Svc::new(redis_cache(&server), Duration::from_millis(200));
    svc.source.set_panicking(true);
    let leader = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(12).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn({
        let s = svc.clone();
        async move { s.slow(12).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.source.set_panicking(false);
    assert!(
        leader.await.is_err(),
        "the panic reaches the caller that ran the loader"
    );
    let got = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert!(
        matches!(got, Ok(Ok(Ok(1)))),
        "the waiter must not hang: {got:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.cmd::<Option<String>>(&["GET", "t:slow:12:~lease"]),
        None
    );
}
