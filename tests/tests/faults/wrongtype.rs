//! A key that holds a Redis value of another kind (a list): every command
//! on it answers WRONGTYPE.

use std::time::Duration;

use cached_tests::RedisServer;

use crate::support::{Placement, key, service, until_hit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_under_the_key_is_a_counted_miss_and_is_overwritten() {
    let server = RedisServer::start();
    server.cmd::<i64>(&["RPUSH", &key(1), "a", "b"]);
    let s = service(&server);
    assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    assert_eq!(
        server.cmd::<String>(&["TYPE", &key(1)]),
        "string",
        "overwritten"
    );
    until_hit(&s, 1, Duration::from_secs(2)).await;
    assert_eq!(s.loads(), 1, "one load: the next call was a hit");
    let stats = s.cache.stats_for("placement").expect("stats");
    assert!(stats.errors >= 1, "the WRONGTYPE was counted: {stats:?}");
    assert!(!s.cache.breaker_open(), "a bad key is not an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_and_eviction_over_a_list_work() {
    let server = RedisServer::start();
    let s = service(&server);
    server.cmd::<i64>(&["RPUSH", &key(2), "a"]);
    let renamed = s.rename(2, "renamed".into()).await.expect("renamed");
    assert_eq!(s.get(2).await, Ok(renamed));
    assert_eq!(s.loads(), 0);
    server.cmd::<i64>(&["RPUSH", &key(3), "a"]);
    assert_eq!(s.delete(3).await, Ok(()));
    assert_eq!(server.cmd::<i64>(&["EXISTS", &key(3)]), 0);
}
