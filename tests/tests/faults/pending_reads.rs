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
