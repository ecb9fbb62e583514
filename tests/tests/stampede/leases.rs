//! Leases across caches on one Redis (processes, in effect): a holder that
//! is gone delays others only until its lease expires, a lease is released
//! only by its owner, and a waiter stops waiting at its bound.

use std::time::{Duration, Instant};

use cached_tests::{RedisServer, SourceDown, redis_cache};

use crate::Svc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaseholder_delays_others_only_until_its_lease_expires() {
    let server = RedisServer::start();
    let holder = Svc::new(redis_cache(&server), Duration::from_secs(60));
    // The holder takes the lease and then is gone for good, as a process
    // killed mid-load would be: its loader never returns and never releases.
    let stuck = tokio::spawn({
        let h = holder.clone();
        async move { h.short_lease(5).await }
    });
    let lease_key = "t:lease:5:~lease";
    let deadline = Instant::now() + Duration::from_secs(5);
    // Its load begun, not only its lease taken: the source's delay is
    // shared, and a holder that read it after the change below would load
    // in 10 ms and store (seen once on a loaded machine).
    while server.cmd::<Option<String>>(&["GET", lease_key]).is_none() || holder.loads() == 0 {
        assert!(Instant::now() < deadline, "the holder never took the lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(stuck); // never polled to completion, never dropped

    let other = holder.sharing_source_with(redis_cache(&server));
    other.source.set_delay(Duration::from_millis(10));
    let started = Instant::now();
    assert_eq!(other.short_lease(5).await, Ok(1));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1600),
        "waited {waited:?} for a 1 s lease"
    );
    assert_eq!(
        other.loads(),
        2,
        "the stuck holder's load and the other's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_released_only_by_its_owner() {
    let server = RedisServer::start();
    // A's load outlives its 1 s lease; B takes the lease and loads slowly.
    let a = Svc::new(redis_cache(&server), Duration::from_millis(1300));
    let b = a.sharing_source_with(redis_cache(&server));
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { a.short_lease(3).await }
    });
    tokio::time::sleep(Duration::from_millis(1100)).await; // A's lease has expired
    a.source.set_version(2);
    b.source.set_delay(Duration::from_millis(600)); // within its own 1 s lease
    let b_task = tokio::spawn({
        let b = b.clone();
        async move { b.short_lease(3).await }
    });
    // A finishes at ~1.3 s while B holds the lease: A must neither store its
    // value nor end B's lease.
    assert_eq!(a_task.await.expect("joins"), Ok(1));
    let holder: Option<String> = server.cmd(&["GET", "t:lease:3:~lease"]);
    assert!(holder.is_some(), "A's finish must leave B's lease in place");
    assert_eq!(
        a.cache.stats_for("lease").expect("stats").leases_lost,
        1,
        "A's write was refused"
    );

    // A third caller sees B's lease, waits, and gets B's value without loading.
    let c = a.sharing_source_with(redis_cache(&server));
    let before = c.loads();
    assert_eq!(c.short_lease(3).await, Ok(2));
    assert_eq!(
        c.loads(),
        before,
        "the third caller waited for B instead of loading"
    );
    assert_eq!(b_task.await.expect("joins"), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_stops_waiting_at_its_bound_and_loads_itself() {
    let server = RedisServer::start();
    let holder = Svc::new(redis_cache(&server), Duration::from_secs(60));
    tokio::spawn({
        let h = holder.clone();
        async move { h.bounded(4).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = holder.sharing_source_with(redis_cache(&server));
    waiter.source.set_delay(Duration::from_millis(10));
    let started = Instant::now();
    assert_eq!(waiter.bounded(4).await, Ok(1));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(290)..Duration::from_millis(1000)).contains(&waited),
        "a 300 ms bound, waited {waited:?}"
    );
    assert_eq!(
        waiter
            .cache
            .stats_for("bounded")
            .expect("stats")
            .wait_timeouts,
        1
    );
}

/// A load that fails ends its lease with one release: not again from its
/// guard, and not as a pending change retried in the background (both are
/// for a release that did not reach the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_releases_its_lease_once() {
    let server = RedisServer::start();
    let svc = Svc::new(crate::patient(&server), Duration::ZERO);
    svc.source.set_failing(true);
    let scripts = || crate::completed(&server, &["eval", "evalsha"]);
    let before = scripts();
    let lease = format!("{}:slow:5:~lease", cached_tests::NAMESPACE);
    assert_eq!(svc.slow(5).await, Err(SourceDown));
    // Released before the call returned, not later by a retry.
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", &lease]),
        0,
        "released at once"
    );
    // Time for a guard's release task and a retry round, were there any.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(scripts() - before, 2, "one lease request, one release");
}

/// A leader cancelled mid-load releases its lease once, from its guard:
/// nothing is left pending to release it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_releases_its_lease_once() {
    let server = RedisServer::start();
    let svc = Svc::new(crate::patient(&server), Duration::from_secs(10));
    let scripts = || crate::completed(&server, &["eval", "evalsha"]);
    let before = scripts();
    let lease = format!("{}:slow:6:~lease", cached_tests::NAMESPACE);
    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { svc.slow(6).await }
    });
    let started = Instant::now();
    while server.cmd::<i64>(&["EXISTS", &lease]) == 0 {
        assert!(started.elapsed() < Duration::from_secs(2), "no lease taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader.abort();
    let _ = leader.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.cmd::<i64>(&["EXISTS", &lease]), 0, "released");
    assert_eq!(scripts() - before, 2, "one lease request, one release");
}
