//! Values this framework did not write, or cannot read: garbage bytes, a
//! truncated envelope, an older envelope version, a value of another type.
//! Each is a counted miss, and the next load overwrites it.

use std::time::Duration;

use cached_tests::RedisServer;

use crate::support::{Placement, key, service, until_hit};

async fn is_a_counted_miss_then_overwritten(server: &RedisServer, bytes: &[u8]) {
    server.set_raw(&key(1), bytes);
    let s = service(server);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)), "{bytes:?}");
    until_hit(&s, 1, Duration::from_secs(2)).await;
    assert_eq!(s.loads(), 1, "{bytes:?} was overwritten by the first load");
    let stats = s.cache.stats_for("placement").expect("stats");
    assert!(stats.errors >= 1, "{bytes:?} was not counted: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    is_a_counted_miss_then_overwritten(&RedisServer::start(), b"\xff\x00not json at all\x13\x37")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_written_by_another_program() {
    is_a_counted_miss_then_overwritten(&RedisServer::start(), br#"{"id":1,"name":"placement 1"}"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_envelope() {
    is_a_counted_miss_then_overwritten(&RedisServer::start(), &[0xCA, 1, 0, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_of_an_older_version() {
    let mut old = vec![0xCA, 0];
    old.extend_from_slice(&[0; 37]);
    old.extend_from_slice(br#"{"id":1}"#);
    is_a_counted_miss_then_overwritten(&RedisServer::start(), &old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_envelope_whose_payload_is_broken() {
    let server = RedisServer::start();
    let s = service(&server);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    let mut stored: Vec<u8> = server.cmd(&["GET", &key(1)]);
    let len = stored.len();
    stored.truncate(len - 5);
    drop(s);
    is_a_counted_miss_then_overwritten(&server, &stored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_another_type() {
    let server = RedisServer::start();
    let s = service(&server);
    // Another deploy cached a String where this one keeps a Placement.
    s.cache
        .set(
            "placement:1",
            &"a string".to_string(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(server.cmd::<i64>(&["EXISTS", &key(1)]), 1);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    until_hit(&s, 1, Duration::from_secs(2)).await;
    assert_eq!(s.loads(), 1);
    assert!(s.cache.stats_for("placement").expect("stats").errors >= 1);
}

/// A huge value under one of our keys (another program's, or an attack) is
/// read only up to the size limit: a counted miss that moves kilobytes, not
/// a 256 MiB transfer on every call, and the next load replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_foreign_value_costs_a_bounded_read() {
    let server = RedisServer::start();
    // 256 MiB, made on the server without sending it.
    server.cmd::<i64>(&["SETRANGE", &key(1), &((256 << 20) - 1).to_string(), "x"]);
    let sent = || server.bytes_sent();
    let before = sent();
    // Patient: a whole read would finish, and be measured, rather than
    // time out.
    let s = crate::support::service_with(&server, |b| {
        b.max_value_bytes(64 << 10)
            .op_timeout(Duration::from_secs(5))
    });
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    let moved = sent() - before;
    assert!(moved < 1 << 20, "{moved} bytes sent for one call");
    let stats = s.cache.stats_for("placement").expect("stats");
    // Counted as unreadable (its read, and the lease request's re-read).
    assert!(stats.errors >= 1, "{stats:?}");
    assert!(!s.cache.breaker_open());
    until_hit(&s, 1, Duration::from_secs(2)).await;
    assert_eq!(s.loads(), 1, "the first load replaced it");
}
