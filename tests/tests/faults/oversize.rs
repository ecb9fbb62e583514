//! Values over the cache's size limit: returned, not stored, counted; a
//! write-through that is too large removes the older value rather than
//! leave it behind.

use cached_tests::RedisServer;

use crate::support::{Placement, Service, key, service_with};

const LIMIT: usize = 2_000;

/// A service whose cache stores values of up to `LIMIT` bytes.
fn limited(server: &RedisServer) -> Service {
    service_with(server, |b| b.max_value_bytes(LIMIT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_limit_is_returned_but_not_stored() {
    let server = RedisServer::start();
    let s = limited(&server);
    let big = s.big(1, LIMIT * 2).await;
    assert_eq!(big.name.len(), LIMIT * 2);
    assert_eq!(server.cmd::<i64>(&["EXISTS", "t:big:1"]), 0, "not stored");
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", "t:big:1:~lease"]),
        0,
        "and its lease ended at once, so others load without waiting"
    );
    let _ = s.big(1, LIMIT * 2).await;
    assert_eq!(s.loads(), 2, "nothing cached, so a second load");
    assert_eq!(s.cache.stats_for("big").expect("stats").oversize, 2);

    // Within the limit, the same function caches.
    let _ = s.big(2, 100).await;
    let _ = s.big(2, 100).await;
    assert_eq!(s.loads(), 3);
    assert_eq!(server.cmd::<i64>(&["EXISTS", "t:big:2"]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_write_through_removes_the_older_value() {
    let server = RedisServer::start();
    let s = limited(&server);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    assert_eq!(server.cmd::<i64>(&["EXISTS", &key(1)]), 1);
    s.rename(1, "y".repeat(LIMIT * 2)).await.expect("renamed");
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", &key(1)]),
        0,
        "the old row must not outlive the write"
    );
    assert_eq!(s.cache.stats_for("placement").expect("stats").oversize, 1);
    // Nothing is left to retry (the old value is gone): the next load
    // stores again and the call after it hits, rather than both loading
    // while a pending change keeps the key from the cache.
    let loads = s.loads();
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    assert_eq!(s.loads(), loads + 1, "the key is cached again at once");
}
