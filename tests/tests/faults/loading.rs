//! A server reading its data back after a restart answers every command
//! with `-LOADING` until it is done. Callers get the loader's value at
//! once, the breaker opens on those replies as on a timeout, and hits
//! resume on the old entries once the data is in.

use std::time::{Duration, Instant};

use cached_tests::RedisServer;

use crate::support::{OP, Placement, timed, until_hit, with_breaker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_loading_its_data_opens_the_breaker_and_callers_get_the_loader() {
    let mut server = RedisServer::start();
    let s = with_breaker(&server, 3, 100, 200);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    // 2,000 keys of 1,100 bytes, each held up 1 ms as it is read back, the
    // server answering clients after every kilobyte: two seconds or more
    // of `-LOADING`, each answer within about a millisecond.
    server.cmd::<()>(&[
        "EVAL",
        "for i = 1, 2000 do redis.call('SET', 'filler:' .. i, string.rep('x', 1100)) end",
        "0",
    ]);
    server.cmd::<()>(&["SAVE"]);
    server.restart_with(&[
        "--key-load-delay",
        "1000",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    assert!(!server.ping(), "the server is still loading");

    let started = Instant::now();
    let mut calls = 0;
    let mut opened = false;
    while !server.ping() && started.elapsed() < Duration::from_secs(1) {
        let (got, took) = timed(Duration::from_secs(1), s.get(1)).await;
        assert_eq!(got, Ok(Placement::row(1)), "every call is answered");
        assert!(took < OP, "no timeout is waited out: {took:?}");
        calls += 1;
        opened |= s.cache.breaker_open();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        calls >= 5,
        "the load was over too soon to test ({calls} calls)"
    );
    assert!(
        opened,
        "-LOADING replies open the breaker ({:?})",
        s.cache.stats()
    );

    // The old entry is back with the data: hits resume without a restart
    // of the application.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.ping() {
        assert!(
            Instant::now() < deadline,
            "the server never finished loading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loads = s.loads();
    until_hit(&s, 1, Duration::from_secs(5)).await;
    assert!(s.loads() - loads <= 3, "the entry came back with the data");
}
