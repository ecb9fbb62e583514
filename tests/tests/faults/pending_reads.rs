//! Guarantee 2 around pending changes in one process: a caller that began
//! after a change returned never gets what the change replaced, whether the
//! change failed, its caller was dropped mid-way, or it reaches entries
//! through a tag the reader does not name. (Both cases were found by an
//! independent review, each failing before its fix.)

use std::sync::Arc;
use std::time::Duration;

use cached_runtime::CircuitBreaker;
use cached_tests::{RedisServer, free_port};

use crate::lost_changes::Rows;
use crate::support::{Placement, builder, timed};

fn rows(server: &RedisServer) -> Rows {
    let cache = builder(server)
        .circuit_breaker(CircuitBreaker {
            failures: 0,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        })
        .build()
        .expect("a valid cache");
    Rows::new(cache)
}

/// A write-through whose caller is dropped mid-write pended the key but
/// detached nothing: a load led (loader only) by a caller kept from the
/// cache by an earlier pending change, begun before the dropped write
/// committed, is joined by a caller that began after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_leaves_no_load_begun_before_it_to_later_callers() {
    let mut server = RedisServer::start();
    let s = Arc::new(rows(&server));
    assert_eq!(s.get(1).await.name, "v1 of 1");
    let frozen = server.freeze_guarded();
    // A write-through that times out: row:1 is pending.
    let _ = timed(Duration::from_secs(2), s.rename(1, "v2".into())).await;
    // A caller kept from the cache leads a loader-only flight: it reads
    // the source (v2), then takes 300 ms.
    let slow = tokio::spawn({
        let s = Arc::clone(&s);
        async move { s.read_then_sleep(1).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A writer commits v3; its caller gives up while the write-through
    // waits on the frozen server (counts as a change: README (a2)).
    let dropped = tokio::time::timeout(Duration::from_millis(20), s.rename(1, "v3".into())).await;
    assert!(dropped.is_err(), "the writer was dropped mid-write");
    // A read begun after it.
    let got = timed(Duration::from_secs(2), s.get(1)).await.0;
    let _ = slow.await;
    drop(frozen);
    assert_eq!(
        got.name, "v3",
        "a read begun after a dropped write took a load begun before it"
    );
}

/// A tag eviction refused is pending, but only calls recorded under
/// the tag were kept from the cache: a batch reader or `Cache::get` of the
/// same entry, in the same process, served the value the eviction removed.
/// Now a pending tag keeps every read from the cache until it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tag_eviction_keeps_untagged_readers_from_what_it_removed() {
    let server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.tagged(1).await.name, "v1 of 1");
    let nobody = free_port().to_string();
    server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
    s.rename_all_tagged(1, "v2".into()).await;
    assert_eq!(
        s.tagged(1).await.name,
        "v2",
        "the tagged reader is kept from it"
    );
    let typed = s.cache.get::<Placement>("trow:1:row").await.map(|p| p.name);
    let batch = s.tagged_many(vec![1]).await.get(&1).map(|p| p.name.clone());
    server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
    assert_eq!(batch.as_deref(), Some("v2"), "the batch reader served it");
    assert_ne!(typed.as_deref(), Some("v1 of 1"), "Cache::get served it");
}

/// Waits (at most `within`) until `key` is gone from `server`.
async fn until_gone(server: &RedisServer, key: &str, within: Duration, what: &str) {
    let began = std::time::Instant::now();
    while server.cmd::<i64>(&["EXISTS", key]) == 1 {
        assert!(began.elapsed() < within, "{what}: {key} still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server behind a proxy, a cache through it holding the tagged row 1
/// (whose Redis key is returned), and then every connection stranded.
async fn tagged_row_then_stranded() -> (RedisServer, cached_tests::Proxy, Rows, String) {
    let server = RedisServer::start();
    let proxy = cached_tests::Proxy::start(server.port());
    let s = Rows::new(
        builder(&server)
            .redis(proxy.url())
            .build()
            .expect("a valid cache"),
    );
    assert_eq!(s.tagged(1).await.name, "v1 of 1");
    let entry = format!("{}:trow:1:row", cached_tests::NAMESPACE);
    assert_eq!(server.cmd::<i64>(&["EXISTS", &entry]), 1);
    proxy.strand();
    (server, proxy, s, entry)
}

/// A tag eviction over connections gone silent (stranded) is pending, and
/// a pending tag keeps every read of this process from the cache: no read
/// then asks the breaker, whose probe is what replaces a silent
/// connection. The retries must still get the change to Redis (other
/// processes serve the entry until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_tag_over_stranded_connections_lands() {
    let (server, _proxy, s, entry) = tagged_row_then_stranded().await;
    s.rename_all_tagged(1, "v2".into()).await;
    until_gone(
        &server,
        &entry,
        Duration::from_secs(5),
        "the tag's eviction never landed",
    )
    .await;
    assert_eq!(s.tagged(1).await.name, "v2");
}

/// Many changes pending over connections gone silent: the retry asks the
/// breaker for its probe after each change that fails, not once a whole
/// round has, so the connections are replaced within a few timeouts
/// whatever the number pending (found by a review: a round of 100 pending
/// tags waited out 100 timeouts before the first probe, 5 s, during which
/// the process read nothing from the cache and other processes served what
/// the changes removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pending_changes_over_stranded_connections_land_soon() {
    let (server, _proxy, s, entry) = tagged_row_then_stranded().await;
    let mut changes = tokio::task::JoinSet::new();
    for i in 0..100 {
        let cache = s.cache.clone();
        changes.spawn(async move { cache.invalidate_tag(&format!("other{i}")).await });
    }
    let pended = changes.join_all().await;
    assert!(pended.iter().all(Result::is_err), "each timed out, pended");
    s.rename_all_tagged(1, "v2".into()).await;
    until_gone(
        &server,
        &entry,
        Duration::from_millis(1500),
        "the tag's eviction waited behind the others' timeouts",
    )
    .await;
    assert_eq!(s.tagged(1).await.name, "v2");
}

/// `Cache::invalidate_pattern` (and its siblings) whose caller is dropped
/// mid-way (a request timeout) while Redis is frozen: what it was to
/// remove is retried, as `#[cache_evict]`'s is, not lost with the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_invalidation_by_hand_still_lands() {
    let mut server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.get(1).await.name, "v1 of 1");
    assert_eq!(s.tagged(2).await.name, "v1 of 2");
    assert_eq!(s.get(3).await.name, "v1 of 3");
    let full = |k: &str| format!("{}:{k}", cached_tests::NAMESPACE);
    {
        let _frozen = server.freeze_guarded();
        let by_pattern = tokio::time::timeout(
            Duration::from_millis(20),
            s.cache.invalidate_pattern("row:1"),
        )
        .await;
        let by_tag =
            tokio::time::timeout(Duration::from_millis(20), s.cache.invalidate_tag("rows")).await;
        let by_key =
            tokio::time::timeout(Duration::from_millis(20), s.cache.invalidate("row:3")).await;
        assert!(
            by_pattern.is_err() && by_tag.is_err() && by_key.is_err(),
            "the callers were dropped mid-way"
        );
    }
    for key in ["row:1", "trow:2:row", "row:3"] {
        until_gone(
            &server,
            &full(key),
            Duration::from_secs(5),
            "a dropped invalidation was lost",
        )
        .await;
    }
}

/// The retries run on the runtime of the change that first failed. That
/// runtime shut down (a test's, or a short-lived one of a CLI) drops the
/// task; a cache that lives on must still retry what it pends later. The
/// first runtime is a `current_thread` one, which shuts down before the
/// task it spawned is ever polled, or a multi-thread one, which may.
///
/// Broken runtime this catches: the guard that tells a dropped task's end
/// was made in the task's body, so a task dropped before its first poll
/// left the next change pended thinking a task ran: nothing was ever
/// retried (the multi-thread case failed now and then under load).
#[test]
fn a_change_pended_after_the_retrying_runtime_shut_down_is_still_retried() {
    for current_thread in [true, false] {
        changes_are_retried_after_the_first_runtime_shut_down(current_thread);
    }
}

fn changes_are_retried_after_the_first_runtime_shut_down(current_thread: bool) {
    let server = RedisServer::start();
    let s = rows(&server);
    let nobody = free_port().to_string();
    let first = if current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    } else {
        tokio::runtime::Runtime::new().expect("runtime")
    };
    first.block_on(async {
        assert_eq!(s.get(1).await.name, "v1 of 1");
        server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
        assert!(s.cache.invalidate("row:1").await.is_err(), "refused");
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        assert_eq!(s.get(2).await.name, "v1 of 2");
        assert!(s.cache.invalidate("row:2").await.is_err(), "refused");
        server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
        let full = |k: &str| format!("{}:{k}", cached_tests::NAMESPACE);
        for key in ["row:1", "row:2"] {
            until_gone(&server, &full(key), Duration::from_secs(5), "never retried").await;
        }
    });
}

/// As above, with the first runtime kept but no longer polled (a
/// `current_thread` runtime driven now and then by `block_on`): its task
/// stops beating, and a change pended from another runtime once it has
/// stalled starts one there. (The connections were made on the idle
/// runtime too, and are as stuck as its task: the breaker's probe, which
/// the retries let run, replaces them from the runtime that runs.)
#[test]
fn a_change_pended_while_the_retrying_runtime_is_idle_is_still_retried() {
    let server = RedisServer::start();
    let s = Rows::new(builder(&server).build().expect("a valid cache"));
    let nobody = free_port().to_string();
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    idle.block_on(async {
        assert_eq!(s.get(1).await.name, "v1 of 1");
        server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
        assert!(s.cache.invalidate("row:1").await.is_err(), "refused");
    });
    let other = tokio::runtime::Runtime::new().expect("runtime");
    other.block_on(async {
        // Past the stall bound (twice the op timeout, the longest backoff
        // and a second).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(s.cache.invalidate("row:2").await.is_err(), "refused");
        server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
        let full = |k: &str| format!("{}:{k}", cached_tests::NAMESPACE);
        until_gone(
            &server,
            &full("row:1"),
            Duration::from_secs(5),
            "never retried",
        )
        .await;
    });
    drop(idle);
}
