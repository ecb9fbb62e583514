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

/// A service whose entries are tagged `videos`.
struct Videos {
    cache: cached_runtime::Cache,
    loads: std::sync::atomic::AtomicU32,
}

impl Videos {
    #[cached_runtime::cached(prefix = "video", ttl = "5m", key = id, tags = ["videos"])]
    async fn get(&self, id: u64) -> u64 {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        id
    }

    /// The service over a cache on `server`, and that cache.
    fn on(server: &RedisServer) -> (cached_runtime::Cache, Videos) {
        let cache = crate::support::builder(server).build().expect("builds");
        let videos = Videos {
            cache: cache.clone(),
            loads: Default::default(),
        };
        (cache, videos)
    }

    fn loads(&self) -> u32 {
        self.loads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Values of another kind where the cache keeps its own records (written
/// by hand: the names are the cache's): a tag's index holding a string,
/// the namespace's epoch holding text or a list. Each is replaced, so
/// entries are stored and served again, and a change lands rather than
/// stay pending (which keeps every read of the process from the cache).
///
/// Broken runtime this catches: the lease script failed on the tag's index
/// after taking the lease (nothing was ever stored, and the lease held the
/// key for each load); `SSCAN` of the index failed, so the tag's
/// invalidation was pending for ever; `INCR` of the epoch failed, so every
/// pattern invalidation was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_where_the_cache_keeps_its_records_are_replaced() {
    let server = RedisServer::start();
    let (cache, videos) = Videos::on(&server);
    let index = "t:~tag:videos";
    let () = server.cmd(&["SET", index, "not a set"]);
    assert_eq!(videos.get(1).await, 1);
    assert_eq!(videos.get(1).await, 1);
    assert_eq!(videos.loads(), 1, "stored under its tag, then a hit");
    assert_eq!(server.cmd::<String>(&["TYPE", index]), "set");
    assert_eq!(server.cmd::<i64>(&["EXISTS", "t:video:1:~lease"]), 0);

    let () = server.cmd(&["SET", index, "not a set"]);
    cache.invalidate_tag("videos").await.expect("lands");
    assert_eq!(videos.get(1).await, 1);
    assert_eq!(videos.loads(), 2, "not served under the replaced index");
    assert_eq!(videos.get(1).await, 1);
    assert_eq!(videos.loads(), 2, "stored again");

    let s = crate::support::Service::new(cache.clone());
    for foreign in [
        &["SET", "t:~epoch", "not a number"][..],
        &["RPUSH", "t:~epoch", "a"],
    ] {
        let _: redis::Value = server.cmd(&["DEL", "t:~epoch"]);
        let _: redis::Value = server.cmd(foreign);
        cache
            .invalidate_pattern("placement:*")
            .await
            .expect("lands");
        let _: redis::Value = server.cmd(&["DEL", "t:~epoch"]);
        let _: redis::Value = server.cmd(foreign);
        let before = s.loads();
        assert_eq!(s.get(7).await, Ok(Placement::row(7)));
        until_hit(&s, 7, Duration::from_secs(2)).await;
        assert_eq!(
            s.loads(),
            before + 1,
            "{foreign:?}: stored by the first load"
        );
        cache
            .invalidate_pattern("placement:*")
            .await
            .expect("lands");
    }
}

/// A key under the namespace whose name is not UTF-8 (written by another
/// program: the cache's keys are text), matched by a pattern or listed
/// under a tag: the invalidation still removes the cache's own entries,
/// leaves that key alone, and lands.
///
/// Broken runtime this catches: the scan read every name as text, so the
/// one name failed the whole scan; the invalidation was pending for ever,
/// and kept every read of the keys it names from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_name_is_not_text_fails_no_invalidation() {
    let server = RedisServer::start();
    let (cache, videos) = Videos::on(&server);
    let foreign: &[u8] = b"t:video:\xff\xfe";
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connects");
    let () = redis::cmd("SET")
        .arg(foreign)
        .arg("theirs")
        .query(&mut conn)
        .expect("SET");
    let _: i64 = redis::cmd("SADD")
        .arg("t:~tag:videos")
        .arg(foreign)
        .query(&mut conn)
        .expect("SADD");
    for (n, by_tag) in [(1, false), (2, true)] {
        assert_eq!(videos.get(n).await, n);
        if by_tag {
            cache.invalidate_tag("videos").await.expect("lands");
        } else {
            cache.invalidate_pattern("video:*").await.expect("lands");
        }
        let loads = videos.loads();
        assert_eq!(videos.get(n).await, n);
        assert_eq!(videos.loads(), loads + 1, "removed by the invalidation");
        assert_eq!(videos.get(n).await, n);
        assert_eq!(videos.loads(), loads + 1, "cached again: nothing pending");
    }
    let kept: Option<Vec<u8>> = redis::cmd("GET")
        .arg(foreign)
        .query(&mut conn)
        .expect("GET");
    assert_eq!(kept.as_deref(), Some(&b"theirs"[..]), "left alone");
}
