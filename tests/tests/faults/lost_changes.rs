//! Changes that do not reach Redis: a write-through or an invalidation
//! refused (`-OOM` under `maxmemory` with `noeviction`, `-READONLY` on a
//! replica) or lost (the server killed, then restarted from a snapshot taken
//! before the change). The process that made the change must never serve
//! the value it replaced, and once Redis takes writes again the change is
//! retried until it lands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use cached_tests::{RedisServer, free_port};

use crate::support::{Placement, builder, timed};

/// A service over a source of truth that writers change (shared with
/// `pending_reads`).
pub(crate) struct Rows {
    pub(crate) cache: Cache,
    source: Mutex<HashMap<u64, String>>,
}

impl Rows {
    pub(crate) fn new(cache: Cache) -> Rows {
        Rows {
            cache,
            source: Mutex::new(HashMap::new()),
        }
    }

    fn row(&self, id: u64) -> Placement {
        let name = self.source.lock().expect("source").get(&id).cloned();
        Placement {
            id,
            name: name.unwrap_or_else(|| format!("v1 of {id}")),
        }
    }

    #[cached(prefix = "row", ttl = "5m", key = id)]
    pub(crate) async fn get(&self, id: u64) -> Placement {
        self.row(id)
    }

    /// Commits the new name, then writes the row through.
    #[cache_put(prefix = "row", ttl = "5m", key = id)]
    pub(crate) async fn rename(&self, id: u64, name: String) -> Placement {
        self.source.lock().expect("source").insert(id, name);
        self.row(id)
    }

    /// Commits the new name, then evicts the row.
    #[cache_evict(keys = ["row:{id}"])]
    async fn rename_and_evict(&self, id: u64, name: String) {
        self.source.lock().expect("source").insert(id, name);
    }

    /// Reads the source, then takes 300 ms more.
    #[cached(prefix = "row", ttl = "5m", key = id)]
    pub(crate) async fn read_then_sleep(&self, id: u64) -> Placement {
        let row = self.row(id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        row
    }

    /// A tagged reader of its own entries.
    #[cached(prefix = "trow", ttl = "5m", key = "{id}:row", tags = ["rows"])]
    pub(crate) async fn tagged(&self, id: u64) -> Placement {
        self.row(id)
    }

    /// A batch reader of the same entries (a batch takes no tags).
    #[cached(prefix = "trow", ttl = "5m", key = "{ids}:row", batch = ids)]
    pub(crate) async fn tagged_many(&self, ids: Vec<u64>) -> HashMap<u64, Placement> {
        ids.into_iter().map(|id| (id, self.row(id))).collect()
    }

    /// Commits, then evicts every entry under the tag.
    #[cache_evict(tags = ["rows"])]
    pub(crate) async fn rename_all_tagged(&self, id: u64, name: String) {
        self.source.lock().expect("source").insert(id, name);
    }

    /// A slow query of the row.
    #[cached(prefix = "row", ttl = "5m", key = id)]
    async fn slow_get(&self, id: u64) -> Placement {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.row(id)
    }

    /// Every row's name (a list that a rename changes).
    #[cached(prefix = "list", ttl = "5m", key = page)]
    async fn list(&self, page: u32) -> Vec<String> {
        let _ = page;
        (1..=3).map(|id| self.row(id).name).collect()
    }

    /// Commits the new name, then evicts the row and every list.
    #[cache_evict(keys = ["row:{id}"], patterns = ["list:*"])]
    async fn rename_everywhere(&self, id: u64, name: String) {
        self.source.lock().expect("source").insert(id, name);
    }

    /// Commits the new name, then evicts every row by pattern.
    #[cache_evict(patterns = ["row:*"])]
    async fn rename_all(&self, id: u64, name: String) {
        self.source.lock().expect("source").insert(id, name);
    }
}

fn rows(server: &RedisServer) -> Rows {
    Rows::new(builder(server).build().expect("a valid cache"))
}

/// Asserts every read of `id` for `for_how_long` sees `name`.
async fn reads_stay(s: &Rows, id: u64, name: &str, for_how_long: Duration) {
    let started = Instant::now();
    while started.elapsed() < for_how_long {
        let got = timed(Duration::from_secs(2), s.get(id)).await.0;
        assert_eq!(
            got.name, name,
            "a read served the value the change replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the entry of `id` in Redis is gone or holds `name`.
async fn until_converged(server: &RedisServer, id: u64, name: &str) {
    let started = Instant::now();
    loop {
        let raw: Option<Vec<u8>> = server.cmd(&["GET", &format!("t:row:{id}")]);
        let converged = match raw {
            None => true,
            Some(bytes) => String::from_utf8_lossy(&bytes).contains(name),
        };
        if converged {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the old entry was never replaced or removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_refused_for_memory_is_not_undone_by_reads() {
    let server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.get(1).await.name, "v1 of 1");
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "1"]);
    s.rename(1, "v2".into()).await;
    reads_stay(&s, 1, "v2", Duration::from_millis(300)).await;
    let typed = s.cache.get::<Placement>("row:1").await.map(|p| p.name);
    assert_ne!(typed.as_deref(), Some("v1 of 1"), "the typed API served it");
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
    until_converged(&server, 1, "v2").await;
    reads_stay(&s, 1, "v2", Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_refused_by_a_read_only_replica_are_retried_once_it_takes_writes() {
    let server = RedisServer::start();
    let s = rows(&server);
    for id in [1, 2, 3] {
        assert_eq!(s.get(id).await.name, format!("v1 of {id}"));
    }
    // A replica of a master that is not there: reads work, writes are
    // refused with -READONLY.
    let nobody = free_port().to_string();
    server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
    s.rename(1, "v2".into()).await;
    s.rename_and_evict(2, "v2".into()).await;
    s.rename_all(3, "v2".into()).await;
    for id in [1, 2, 3] {
        reads_stay(&s, id, "v2", Duration::from_millis(200)).await;
    }
    server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
    for id in [1, 2, 3] {
        until_converged(&server, id, "v2").await;
        reads_stay(&s, id, "v2", Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_lost_while_redis_was_down_is_not_undone_by_its_restored_data() {
    let mut server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.get(1).await.name, "v1 of 1");
    // A snapshot holding v1, then the server dies.
    server.cmd::<()>(&["SAVE"]);
    server.kill();
    s.rename(1, "v2".into()).await;
    // It comes back with the snapshot: the change never reached it.
    server.restart();
    reads_stay(&s, 1, "v2", Duration::from_millis(1500)).await;
    until_converged(&server, 1, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_whose_caller_is_dropped_after_the_commit_still_lands() {
    let mut server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.list(1).await[0], "v1 of 1");
    // The body commits at once; the invalidations wait on a frozen server,
    // and the caller gives up (a client gone, a request timeout) before
    // the pattern's turn comes.
    server.freeze();
    let dropped = tokio::time::timeout(
        Duration::from_millis(20),
        s.rename_everywhere(1, "v2".into()),
    )
    .await;
    assert!(dropped.is_err(), "the caller was dropped mid-eviction");
    server.thaw();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        let list = timed(Duration::from_secs(2), s.list(1)).await.0;
        assert_eq!(
            list[0], "v2",
            "the list evicted by a dropped caller was served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_request_that_timed_out_is_released_not_left_to_block_the_key() {
    let server = RedisServer::start();
    let s = rows(&server);
    // Another key's load first, so the server knows the lease script and
    // runs the delayed request itself, not a NOSCRIPT error.
    assert_eq!(s.get(8).await.name, "v1 of 8");
    // Reads answer, writes (the lease request is a script that writes)
    // wait: the request times out, but the server runs it afterwards.
    server.cmd::<()>(&["CLIENT", "PAUSE", "300", "WRITE"]);
    assert_eq!(s.get(9).await.name, "v1 of 9", "the caller loaded anyway");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", "t:row:9:~lease"]),
        0,
        "the lease taken after its request timed out was left behind"
    );
    let (got, took) = timed(Duration::from_secs(10), s.get(9)).await;
    assert_eq!(got.name, "v1 of 9");
    assert!(
        took < Duration::from_secs(1),
        "the next caller waited {took:?} on an orphaned lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_release_was_refused_is_released_once_redis_takes_writes() {
    let server = RedisServer::start();
    let s = std::sync::Arc::new(rows(&server));
    assert_eq!(s.get(8).await.name, "v1 of 8");
    let load = tokio::spawn({
        let s = std::sync::Arc::clone(&s);
        async move { s.slow_get(5).await }
    });
    // The load holds its lease; then Redis turns read-only, so neither its
    // write nor its release can land.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let nobody = free_port().to_string();
    server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
    assert_eq!(load.await.expect("the load").name, "v1 of 5");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", "t:row:5:~lease"]),
        1,
        "held while read-only"
    );
    server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
    let started = Instant::now();
    while server.cmd::<i64>(&["EXISTS", "t:row:5:~lease"]) == 1 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the lease was left to expire: every caller of the key waits on it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A change the server keeps refusing (here `NOPERM`: the user may not
/// `UNLINK`) is retried with a backoff of 10 ms doubling to 100 ms: about
/// fourteen tries in its first 1.2 s, never a busy loop against the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_is_retried_with_backoff_not_in_a_loop() {
    let rule: Vec<String> = cached_tests::acl_user_args(cached_tests::NAMESPACE)
        .into_iter()
        .filter(|a| a != "+unlink")
        .collect();
    let args: Vec<&str> = rule.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(&args);
    let cache = builder(&server)
        .redis_username(cached_tests::ACL_USER)
        .redis_password(cached_tests::ACL_PASSWORD)
        .build()
        .expect("cache");
    let e = cache.invalidate("row:1").await.expect_err("refused");
    assert_eq!(e.kind(), "permission", "{e}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let log: redis::Value = server.cmd(&["ACL", "LOG"]);
    let tries = unlink_denials(&log);
    assert!(
        (5..=40).contains(&tries),
        "{tries} UNLINKs refused in 1.2 s: {log:?}"
    );
}

/// The `count` of `ACL LOG`'s entries for `unlink`.
fn unlink_denials(log: &redis::Value) -> u64 {
    let redis::Value::Array(entries) = log else {
        return 0;
    };
    entries
        .iter()
        .filter_map(|entry| {
            let fields: Vec<(String, redis::Value)> = match entry {
                redis::Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((redis::from_redis_value_ref::<String>(k).ok()?, v.clone()))
                    })
                    .collect(),
                redis::Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|kv| {
                        Some((
                            redis::from_redis_value_ref::<String>(&kv[0]).ok()?,
                            kv[1].clone(),
                        ))
                    })
                    .collect(),
                _ => return None,
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let object: String = redis::from_redis_value(field("object")?).ok()?;
            (object == "unlink").then(|| redis::from_redis_value::<u64>(field("count")?).ok())?
        })
        .sum()
}

/// A pattern eviction whose on-time attempt removed nothing (Redis refused
/// it for another reason: read-only, as a replica is), retried while Redis
/// refuses it so a few times, then once memory is full: a retry must then
/// remove what matches, once, rather than stop at the refused epoch while
/// memory stays full (as a caller dropped before its attempt reached Redis
/// leaves it too).
///
/// Broken runtimes this catches: only the on-time attempt swept under
/// `-OOM`; every retry stopped at the epoch, and the rows stayed, served to
/// other processes, for as long as memory was full. One that took any
/// failed retry for a sweep (cargo-mutants' `&&` to `||`) leaves them too;
/// one that sweeps on every retry scans again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_eviction_retried_while_memory_is_full_removes_what_it_matches_once() {
    let server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.get(1).await.name, "v1 of 1");
    let nobody = free_port().to_string();
    server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &nobody]);
    s.rename_all(1, "v2".into()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "1"]);
    server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
    let exists = || server.cmd::<i64>(&["EXISTS", &format!("{}:row:1", cached_tests::NAMESPACE)]);
    let began = Instant::now();
    while exists() > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the row is still there while memory is full"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = scans(&server);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(scans(&server), before, "swept once, it scanned again");
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
    until_converged(&server, 1, "v2").await;
}

/// Under `maxmemory` with `noeviction` Redis refuses writes (`-OOM`) but
/// still takes deletions. A pattern eviction begins with a write (the
/// namespace's epoch, which outdates leases taken before it): refused, it
/// must still remove what it matches now, while it is retried for the
/// rest, rather than leave other processes the old entries for as long as
/// memory stays full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_eviction_refused_for_memory_still_removes_what_it_matches() {
    let server = RedisServer::start();
    let s = rows(&server);
    assert_eq!(s.get(1).await.name, "v1 of 1");
    assert_eq!(s.list(1).await.len(), 3);
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "1"]);
    s.rename_everywhere(1, "v2".into()).await;
    let full = |k: &str| format!("{}:{k}", cached_tests::NAMESPACE);
    let exists = |k: &str| server.cmd::<i64>(&["EXISTS", &full(k)]);
    let began = Instant::now();
    while exists("row:1") + exists("list:1") > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "still there with memory full: row:1 {}, list:1 {}",
            exists("row:1"),
            exists("list:1")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retried meanwhile (every 100 ms at most), it stops at the epoch: no
    // scan of the keyspace per retry against a server short of memory.
    let before = scans(&server);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(scans(&server), before, "a retry scanned again");
    server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
    until_converged(&server, 1, "v2").await;
}

/// How many `SCAN`s `server` has run.
fn scans(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse::<u64>().expect("a count"))
}
