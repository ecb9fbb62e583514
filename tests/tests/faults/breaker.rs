//! The circuit breaker: opens after failures in a row, skips the backend
//! while open (no added wait), probes in the background with backoff,
//! closes on its own; write-throughs and invalidations are still attempted
//! while it is open, so that no old value survives the outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cached_runtime::CircuitBreaker;
use cached_tests::RedisServer;

use crate::support::{
    OP, Placement, Service, builder, key, median, service, timed, until_closed, until_hit,
    with_breaker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_breaker_every_call_waits_out_the_timeout() {
    // The control: what the breaker saves.
    let mut server = RedisServer::start();
    let s = Service::new(
        builder(&server)
            .circuit_breaker(CircuitBreaker::disabled())
            .build()
            .expect("cache"),
    );
    server.freeze();
    let mut took = Vec::new();
    for _ in 0..8 {
        let (got, t) = timed(Duration::from_secs(2), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        took.push(t);
    }
    assert!(median(took) >= OP, "each call waits for the frozen server");
    assert!(!s.cache.breaker_open());
    server.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_after_the_configured_failures_and_probes_until_the_server_is_back() {
    let mut server = RedisServer::start();
    let s = with_breaker(&server, 3, 100, 400);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    server.freeze();
    for i in 0..3 {
        assert!(!s.cache.breaker_open(), "open after {i} failures");
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
    }
    assert!(s.cache.breaker_open(), "3 failures in a row open it");
    // Stays open over several probes while the server is frozen.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        let (got, t) = timed(Duration::from_secs(1), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)));
        assert!(t < OP, "a probe must not make a caller wait: {t:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.cache.breaker_open());
    server.thaw();
    // The next probe is at most max_backoff away.
    until_closed(&s, 1, Duration::from_secs(2), "the breaker never closed").await;
    until_hit(&s, 1, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_an_outage_leave_no_old_row_when_the_server_comes_back() {
    let mut server = RedisServer::start();
    let s = service(&server);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    until_hit(&s, 2, Duration::from_secs(2)).await;
    server.freeze();
    for _ in 0..10 {
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
    }
    assert!(s.cache.breaker_open());
    // Both are attempted although the breaker is open: they reach the
    // server when it wakes. Their answers were lost to the timeout, so each
    // is also retried as an invalidation until it lands: the entry ends
    // absent or renamed, never the old row.
    let (renamed, _) = timed(Duration::from_secs(2), s.rename(1, "renamed".into())).await;
    assert_eq!(renamed.expect("renamed").name, "renamed");
    assert_eq!(timed(Duration::from_secs(2), s.delete(2)).await.0, Ok(()));
    server.thaw();
    until_closed(&s, 3, Duration::from_secs(3), "never closed").await;
    let raw: Option<Vec<u8>> = server.cmd(&["GET", &key(1)]);
    assert!(
        raw.is_none_or(|b| String::from_utf8_lossy(&b).contains("renamed")),
        "the old row of 1 survived the outage"
    );
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", &key(2)]),
        0,
        "the eviction landed"
    );
    let loads = s.loads();
    assert_eq!(s.get(2).await, Ok(Placement::row(2)));
    assert_eq!(s.loads(), loads + 1, "so the next read loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_open_callers_of_one_key_still_share_one_load() {
    let mut server = RedisServer::start();
    let s = Arc::new(service(&server));
    server.freeze();
    for _ in 0..6 {
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
    }
    assert!(s.cache.breaker_open());
    let loads = s.loads();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { timed(Duration::from_secs(2), s.slow(2)).await.0 })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("no panic"), Placement::row(2));
    }
    assert_eq!(
        s.loads() - loads,
        1,
        "the database sees one load, not one per caller"
    );
    server.thaw();
}

#[test]
fn a_probe_cut_off_by_its_runtime_ending_does_not_leave_the_breaker_waiting() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let mut server = RedisServer::start();
    let s = with_breaker(&server, 1, 50, 100);
    runtime().block_on(async {
        let _ = s.get(1).await; // connects
    });
    server.freeze();
    // A runtime that opens the breaker, starts a probe (its PING hangs on
    // the frozen server), and ends with the probe in flight.
    runtime().block_on(async {
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
        assert!(s.cache.breaker_open());
        tokio::time::sleep(Duration::from_millis(80)).await;
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
    });
    server.thaw();
    runtime().block_on(until_closed(
        &s,
        1,
        Duration::from_secs(3),
        "the breaker still waits for a probe that will never report",
    ));
}

/// A probe started from a runtime that is then kept but no longer polled
/// (a `current_thread` runtime driven now and then by `block_on`, as a
/// synchronous program's) cannot report: the breaker must not wait for it
/// forever, skipping Redis on every call. Past the probe's own bound, a
/// caller starts another, on its own runtime.
#[test]
fn a_probe_on_a_runtime_no_longer_polled_does_not_leave_the_breaker_waiting() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut server = RedisServer::start();
    let s = with_breaker(&server, 1, 50, 100);
    main.block_on(async {
        let _ = s.get(1).await; // connects
    });
    server.freeze();
    main.block_on(async {
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
        assert!(s.cache.breaker_open());
        tokio::time::sleep(Duration::from_millis(80)).await;
    });
    // The probe is due: a call on another runtime starts it there, and that
    // runtime is never polled again.
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    idle.block_on(async {
        let _ = timed(Duration::from_secs(2), s.get(1)).await;
    });
    server.thaw();
    main.block_on(until_closed(
        &s,
        1,
        Duration::from_secs(5),
        "the breaker still waits for a probe on a runtime nobody polls",
    ));
    drop(idle);
}

/// While a probe runs (within its bound), callers do not start more: one
/// probe's connection, not one per call, however many calls come while the
/// backend stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_start_one_probe_at_a_time_while_it_runs() {
    let (_server, proxy, builder) = cached_tests::behind_a_proxy(
        Duration::from_millis(100),
        1,
        Some(Duration::from_millis(50)),
    );
    let s = Service::new(builder.build().expect("builds"));
    let _ = s.get(1).await; // connects
    proxy.blackhole(true);
    let _ = timed(Duration::from_secs(2), s.get(2)).await;
    assert!(s.cache.breaker_open());
    let before = proxy.connections();
    tokio::time::sleep(Duration::from_millis(70)).await;
    for id in 0..20 {
        let _ = timed(Duration::from_secs(2), s.get(id)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let probes = proxy.connections() - before;
    proxy.blackhole(false);
    assert!(
        (1..=2).contains(&probes),
        "{probes} connections opened by probes while one ran"
    );
}
