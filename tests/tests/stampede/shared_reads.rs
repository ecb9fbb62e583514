//! Shared reads: concurrent callers of a warm key share one GET in flight,
//! never one that began before an invalidation, and callers of two return
//! types on one key each get their hit.

use std::sync::LazyLock;
use std::time::Duration;

use cached_runtime::{Cache, cached};
use cached_tests::{RedisServer, Source, SourceDown, redis_cache_with};

use crate::{Svc, join_all};

/// How many reads (GETRANGE: a read bounded by the size limit) the server
/// has answered.
fn get_calls(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_getrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A cache that waits out the server's pauses (2 s per operation).
fn patient_cache(server: &RedisServer) -> Cache {
    redis_cache_with(server, |b| b.op_timeout(Duration::from_secs(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_of_a_warm_key_share_one_read_on_redis() {
    let server = RedisServer::start();
    let svc = Svc::new(patient_cache(&server), Duration::ZERO);
    assert_eq!(svc.slow(7).await, Ok(1));
    assert_eq!(svc.unlocked(7).await, Ok(1));

    // The server holds every command back while 100 callers arrive: all
    // but the first find its read in flight and wait for it.
    let gets = paused_gets(&server, &svc, |s| async move { s.slow(7).await }).await;
    assert_eq!(gets, 1, "one GET for 100 callers");
    let stats = svc.cache.stats_for("slow").expect("stats");
    assert_eq!((stats.hits, stats.misses), (100, 1), "{stats:?}");
    assert_eq!(svc.loads(), 2);

    // The control: `lock = false` opts out of sharing, and each caller reads.
    let gets = paused_gets(&server, &svc, |s| async move { s.unlocked(7).await }).await;
    assert_eq!(gets, 100);
}

/// Starts 100 callers of `call` while the server holds every command back
/// for 300 ms; checks each got `Ok(1)` and returns how many GETs it served.
async fn paused_gets<F, Fut>(server: &RedisServer, svc: &Svc, call: F) -> u64
where
    F: Fn(Svc) -> Fut,
    Fut: Future<Output = Result<u64, SourceDown>> + Send + 'static,
{
    let before = get_calls(server);
    server.cmd::<()>(&["CLIENT", "PAUSE", "300", "ALL"]);
    let tasks = (0..100).map(|_| tokio::spawn(call(svc.clone()))).collect();
    for value in join_all(tasks).await {
        assert_eq!(value, Ok(1));
    }
    get_calls(server) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_an_invalidation_never_shares_a_read_from_before_it() {
    let server = RedisServer::start();
    let svc = Svc::new(patient_cache(&server), Duration::ZERO);
    assert_eq!(svc.slow(8).await, Ok(1));
    svc.source.set_version(2);

    // A read is held in flight; the invalidation queues behind it.
    server.cmd::<()>(&["CLIENT", "PAUSE", "300", "ALL"]);
    let early = {
        let s = svc.clone();
        tokio::spawn(async move { s.slow(8).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.cache.invalidate("slow:8").await.expect("invalidates");
    // Whether or not the early read has landed, this caller starts afresh.
    assert_eq!(svc.slow(8).await, Ok(2), "the value after the invalidation");
    assert_eq!(early.await.expect("completes"), Ok(1), "it began before");
}

static MIXED: LazyLock<Source> = LazyLock::new(Source::new);

#[cached(prefix = "mixed", ttl = "1m", key = id, cache = cache)]
async fn mixed_value(cache: &Cache, id: u64) -> u64 {
    MIXED.count_load();
    id
}

#[cached(prefix = "mixed", ttl = "1m", key = id, cache = cache)]
async fn mixed_option(cache: &Cache, id: u64) -> Option<u64> {
    MIXED.count_load();
    Some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_two_return_types_on_one_key_each_get_a_hit() {
    let server = RedisServer::start();
    let cache = patient_cache(&server);
    assert_eq!(mixed_value(&cache, 3).await, 3);
    assert_eq!(MIXED.loads(), 1);
    // A caller handed a hit it cannot use (the other return type) reads
    // the entry for itself: nobody goes to the source.
    server.cmd::<()>(&["CLIENT", "PAUSE", "200", "ALL"]);
    let tasks = (0..20)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    Some(mixed_value(&cache, 3).await)
                } else {
                    mixed_option(&cache, 3).await
                }
            })
        })
        .collect();
    for got in join_all(tasks).await {
        assert_eq!(got, Some(3));
    }
    assert_eq!(MIXED.loads(), 1, "all hits");
}
