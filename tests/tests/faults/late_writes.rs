//! Writes that land late: a write-through whose caller stopped waiting (its
//! operation timed out, or the caller was dropped) is still in a socket, a
//! proxy's buffer or a frozen server's queue, and reaches Redis after
//! another process has written a newer value. It must not replace that
//! value: the process that wrote the newer one would read its own write
//! undone, and every other process would read an older value than the
//! source's until the entry expires.
//!
//! Two caches share one server: `a` reaches it through a [`Proxy`] that
//! holds its bytes, `b` directly. Both front one source of truth, changed
//! under a row lock as a service would (`a`'s write gives up first, then
//! `b` writes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_runtime::{Cache, cache_put, cached};
use cached_tests::{Proxy, RedisServer};

use crate::support::{Placement, builder, timed};

/// A service over a source of truth that both caches' services share.
struct Rows {
    cache: Cache,
    source: Arc<Mutex<HashMap<u64, String>>>,
}

impl Rows {
    fn row(&self, id: u64) -> Placement {
        let name = self.source.lock().expect("source").get(&id).cloned();
        Placement {
            id,
            name: name.unwrap_or_else(|| "v1".to_owned()),
        }
    }

    #[cached(prefix = "row", ttl = "5m", key = id, wait = "2s")]
    async fn get(&self, id: u64) -> Placement {
        self.row(id)
    }

    /// Commits the new name, then writes the row through.
    #[cache_put(prefix = "row", ttl = "5m", key = id)]
    async fn rename(&self, id: u64, name: String) -> Placement {
        self.source.lock().expect("source").insert(id, name);
        self.row(id)
    }
}

/// `a` through a proxy, `b` direct, on one server and one source.
fn two_processes(server: &RedisServer, proxy: &Proxy) -> (Rows, Rows) {
    let source = Arc::new(Mutex::new(HashMap::new()));
    let a = Rows {
        cache: builder(server).redis(proxy.url()).build().expect("a cache"),
        source: Arc::clone(&source),
    };
    let b = Rows {
        cache: builder(server).build().expect("a cache"),
        source,
    };
    (a, b)
}

/// With `a`'s write-through held in the blackholed proxy: `a`'s process
/// goes away before it can undo anything (or its undoing travels another
/// way and arrives first), `b` changes the row and writes it through, then
/// `a`'s held bytes reach the server. `b` must still read its own write,
/// and the server must not hold `a`'s value.
async fn a_lands_after_b_writes(server: &RedisServer, proxy: &Proxy, a: Rows, b: &Rows) {
    drop(a);
    assert_eq!(b.rename(1, "v3".into()).await.name, "v3");
    assert_eq!(b.get(1).await.name, "v3");
    proxy.blackhole(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (got, _) = timed(Duration::from_secs(5), b.get(1)).await;
    assert_eq!(
        got.name, "v3",
        "a write-through that landed late replaced a newer one"
    );
    let raw: Option<Vec<u8>> = server.cmd(&["GET", "t:row:1"]);
    if let Some(raw) = raw {
        assert!(
            !String::from_utf8_lossy(&raw).contains("\"v2\""),
            "the late value is in Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_that_timed_out_does_not_land_over_a_newer_one() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let (a, b) = two_processes(&server, &proxy);
    assert_eq!(a.get(1).await.name, "v1");
    assert_eq!(b.get(1).await.name, "v1");

    // `a`'s write-through is held: it times out, and stays in the proxy.
    proxy.blackhole(true);
    let (renamed, _) = timed(Duration::from_secs(2), a.rename(1, "v2".into())).await;
    assert_eq!(renamed.name, "v2");
    a_lands_after_b_writes(&server, &proxy, a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_whose_caller_was_dropped_does_not_land_over_a_newer_one() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let (a, b) = two_processes(&server, &proxy);
    assert_eq!(a.get(1).await.name, "v1");

    // `a`'s caller gives up 5 ms into its write-through (a request
    // timeout): the body committed, the write is on its way, held.
    proxy.blackhole(true);
    let dropped = tokio::time::timeout(Duration::from_millis(5), a.rename(1, "v2".into())).await;
    assert!(dropped.is_err(), "the caller was dropped mid-write");
    a_lands_after_b_writes(&server, &proxy, a, &b).await;
}

/// A `lock = false` call takes no lease: on a miss it fills the key only
/// when no lease is held. A write-through in flight (between its claim and
/// its store) holds one, as does a leaseholder's load: the fill, which may
/// have read the source before that write, must not land under it, and it
/// must not take the key from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_fill_defers_to_a_lease_in_flight() {
    struct Plain {
        cache: Cache,
    }
    impl Plain {
        #[cached(prefix = "row", ttl = "5m", key = id, lock = false)]
        async fn get(&self, id: u64) -> Placement {
            Placement {
                id,
                name: "v1".into(),
            }
        }
    }
    let server = RedisServer::start();
    let plain = Plain {
        cache: builder(&server).build().expect("a cache"),
    };
    // Another process's claim (or load) holds the key.
    server.cmd::<()>(&["SET", "t:row:1:~lease", "12345", "PX", "60000"]);
    assert_eq!(plain.get(1).await.name, "v1", "the caller gets its load");
    let raw: Option<Vec<u8>> = server.cmd(&["GET", "t:row:1"]);
    assert!(raw.is_none(), "the fill landed under another's lease");
    let lease: Option<String> = server.cmd(&["GET", "t:row:1:~lease"]);
    assert_eq!(lease.as_deref(), Some("12345"), "the fill took the lease");
    // Without a lease, the fill stores.
    server.cmd::<()>(&["DEL", "t:row:1:~lease"]);
    plain.get(1).await;
    let raw: Option<Vec<u8>> = server.cmd(&["GET", "t:row:1"]);
    assert!(raw.is_some(), "a fill with no lease in the way stores");
}
