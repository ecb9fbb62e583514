//! A Redis Cluster on loopback, for tests and benches: three primaries and
//! three replicas, each a [`RedisServer`] with `--cluster-enabled yes` on a
//! free port, joined by `redis-cli --cluster create` (Debian's
//! `redis-tools`, which `redis-server` depends on). Torn down when dropped.
//! `scripts/cluster` starts the same cluster for a user who wants to try it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ClientAuth, Pki, RedisServer};

/// How long the cluster may take to form, or a replica to take over.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running local cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// A TLS-only cluster's client files (the CA, and the client
    /// certificate `redis-cli` presents), kept while the cluster runs.
    tls: Option<tempfile::TempDir>,
    /// The arguments each node was started with (`None` on a TLS
    /// cluster, whose nodes take files of their own), for a node added
    /// later ([`RedisCluster::add_primary`]).
    args: Option<Vec<String>>,
}

/// The arguments every node gets: cluster mode, a 1 s node timeout (a
/// later `--cluster-node-timeout` among a caller's arguments wins), and
/// replicas that sync at once.
const NODE_ARGS: [&str; 8] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    // A replica that never synced cannot take over; start its first sync
    // at once, not after 5 s.
    "--repl-diskless-sync-delay",
    "0",
];

impl RedisCluster {
    /// Starts six nodes and joins them into three primaries with one
    /// replica each; returns once every node reports `cluster_state:ok`
    /// with all 16384 slots assigned and every replica has synced.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing, or the cluster does
    /// not form within 30 s (the message holds `redis-cli`'s output).
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(&[])
    }

    /// [`RedisCluster::start`], each node started with `extra` arguments
    /// too (an ACL user, say).
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start`].
    pub fn start_with(extra: &[&str]) -> RedisCluster {
        let args: Vec<&str> = NODE_ARGS.iter().chain(extra).copied().collect();
        // The bus port is the port + 10000: chosen free and in range.
        let nodes = (0..6)
            .map(|_| RedisServer::start_cluster_node(&args))
            .collect();
        let mut cluster = RedisCluster::form(nodes, None, &[]);
        cluster.args = Some(args.iter().map(|a| (*a).to_owned()).collect());
        cluster
    }

    /// [`RedisCluster::start`] over TLS only: each node's one TCP port
    /// speaks TLS with `pki`'s server certificate (its `rediss://` URLs:
    /// [`RedisCluster::urls`]), the cluster bus (that port + 10000) and
    /// replication run over TLS too (`--tls-cluster yes`,
    /// `--tls-replication yes`, the nodes presenting `pki`'s client
    /// certificate to each other), and clients' certificates are required
    /// or not as `clients` says. No plain TCP port is open; the harness's
    /// own commands ([`RedisServer::cmd`]) reach each node over a Unix
    /// socket. Returns once the cluster formed as
    /// [`RedisCluster::start`]'s does, replicas synced over TLS included.
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start`], and when `redis-server` or `redis-cli`
    /// was built without TLS.
    pub fn start_tls(pki: &Pki, clients: ClientAuth) -> RedisCluster {
        RedisCluster::start_tls_with(pki, clients, &[])
    }

    /// [`RedisCluster::start_tls`], each node started with `extra`
    /// arguments too.
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start_tls`].
    pub fn start_tls_with(pki: &Pki, clients: ClientAuth, extra: &[&str]) -> RedisCluster {
        let args: Vec<&str> = NODE_ARGS.iter().chain(extra).copied().collect();
        let nodes = (0..6)
            .map(|_| {
                RedisServer::start_tls_cluster_node(&args, |dir, port| {
                    pki.cluster_node_args(dir, port, clients)
                })
            })
            .collect();
        let dir = tempfile::tempdir().expect("a directory for the client's TLS files");
        let (ca, cert, key) = pki.write(dir.path());
        let path = |p: std::path::PathBuf| p.display().to_string();
        let cli = [
            "--tls".to_owned(),
            "--cacert".to_owned(),
            path(ca),
            "--cert".to_owned(),
            path(cert),
            "--key".to_owned(),
            path(key),
        ];
        RedisCluster::form(nodes, Some(dir), &cli)
    }

    /// Joins six started nodes into three primaries with a replica each
    /// (`redis-cli --cluster create`, with `cli` arguments before it), and
    /// waits until the cluster is whole.
    fn form(
        nodes: Vec<RedisServer>,
        tls: Option<tempfile::TempDir>,
        cli: &[String],
    ) -> RedisCluster {
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("could not run redis-cli ({e}); install redis-tools, or run scripts/test")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            tls,
            args: None,
        };
        cluster.wait_until("formed", |c| {
            c.nodes.iter().all(|n| {
                let info = n.cmd::<String>(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            }) && c.primaries().len() == 3
                && c.nodes.iter().all(|n| {
                    let replication: String = n.cmd(&["INFO", "replication"]);
                    replication.contains("role:master")
                        || replication.contains("master_link_status:up")
                })
        });
        cluster
    }

    /// `redis://127.0.0.1:{port}` of every node, primaries and replicas
    /// (`rediss://` on a cluster started with [`RedisCluster::start_tls`]).
    pub fn urls(&self) -> Vec<String> {
        if self.tls.is_some() {
            self.nodes.iter().map(RedisServer::tls_url).collect()
        } else {
            self.nodes.iter().map(RedisServer::url).collect()
        }
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, to freeze, kill or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The indexes of the nodes that are primaries now (`ROLE`), skipping
    /// nodes that do not answer (killed or frozen).
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].answers() && self.role(i) == "master")
            .collect()
    }

    /// Kills primary `i` (SIGKILL) and waits until one of its replicas has
    /// taken its slots: three primaries answer and every live node reports
    /// `cluster_state:ok` again. Returns how long that took.
    ///
    /// # Panics
    ///
    /// When `i` is not a primary, or no replica takes over within 30 s.
    pub fn kill_primary(&mut self, i: usize) -> Duration {
        assert_eq!(self.role(i), "master", "node {i} is not a primary");
        let started = Instant::now();
        self.nodes[i].kill();
        self.wait_until("a replica took over", |c| {
            c.primaries().len() == 3
                && c.nodes.iter().filter(|n| n.answers()).all(|n| {
                    n.cmd::<String>(&["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                })
        });
        started.elapsed()
    }

    /// Freezes primary `i` (SIGSTOP) until one of its replicas has taken
    /// its slots (a stall longer than the node timeout: a GC or VM pause),
    /// then thaws it (SIGCONT) and waits until it has rejoined as a
    /// replica of the node that took over, its link up, and every node
    /// reports `cluster_state:ok`. Returns how long it was frozen. The node
    /// is thawed even when a wait panics.
    ///
    /// # Panics
    ///
    /// When `i` is not a primary, or no replica takes over, or the old
    /// primary does not rejoin, within 30 s each.
    pub fn freeze_primary_until_failover(&mut self, i: usize) -> Duration {
        self.freeze_primary_until_failover_then(i, || {})
    }

    /// [`RedisCluster::freeze_primary_until_failover`], running
    /// `before_thaw` once the replica has taken over and before the old
    /// primary is thawed (which it is even if `before_thaw` panics).
    pub fn freeze_primary_until_failover_then(
        &mut self,
        i: usize,
        before_thaw: impl FnOnce(),
    ) -> Duration {
        assert_eq!(self.role(i), "master", "node {i} is not a primary");
        let started = Instant::now();
        self.nodes[i].freeze();
        let taken_over = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_until("a replica took over from a frozen primary", |c| {
                c.primaries().len() == 3
                    && c.nodes.iter().filter(|n| n.answers()).all(|n| {
                        n.cmd::<String>(&["CLUSTER", "INFO"])
                            .contains("cluster_state:ok")
                    })
            });
            before_thaw();
        }));
        self.nodes[i].thaw();
        let frozen_for = started.elapsed();
        if let Err(panic) = taken_over {
            std::panic::resume_unwind(panic);
        }
        self.wait_until("the thawed primary rejoined as a replica", |c| {
            let replication: String = c.nodes[i].cmd(&["INFO", "replication"]);
            replication.contains("role:slave")
                && replication.contains("master_link_status:up")
                && c.nodes.iter().all(|n| {
                    n.cmd::<String>(&["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                })
        });
        frozen_for
    }

    /// The index of the primary that serves `key`'s slot now, by
    /// `CLUSTER SLOTS` as a live node reports it.
    ///
    /// # Panics
    ///
    /// When no live node answers or none serves the slot.
    pub fn owner_of(&self, key: &str) -> usize {
        self.owner_of_slot(self.slot_of(key))
    }

    /// The index of the primary that serves `slot` now, by `CLUSTER SLOTS`
    /// as a live node reports it.
    ///
    /// # Panics
    ///
    /// When no live node answers or none serves the slot.
    pub fn owner_of_slot(&self, slot: usize) -> usize {
        let ranges: Vec<Vec<redis::Value>> = self.answering().cmd(&["CLUSTER", "SLOTS"]);
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            other => panic!("CLUSTER SLOTS: {other:?}"),
        };
        let port = ranges
            .iter()
            .find(|r| int(&r[0]) <= slot && slot <= int(&r[1]))
            .and_then(|r| match &r[2] {
                redis::Value::Array(node) => node.get(1).map(int),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
        self.nodes
            .iter()
            .position(|n| usize::from(n.port()) == port)
            .unwrap_or_else(|| panic!("port {port} is not one of this cluster's nodes"))
    }

    /// The slot of `key`, as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> usize {
        let slot: i64 = self.answering().cmd(&["CLUSTER", "KEYSLOT", key]);
        usize::try_from(slot).expect("a slot")
    }

    fn answering(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.answers())
            .expect("a node of the cluster answers")
    }

    /// Moves `slots` to primary `to`, one slot at a time, as `redis-cli
    /// --cluster reshard` does: the target marks the slot importing, its
    /// owner migrating, the keys go over with `MIGRATE` a hundred at a
    /// time, and then every primary is told the slot's new owner. While a
    /// slot moves, clients meet `ASK` (a key already moved) and `TRYAGAIN`
    /// (a multi-key command whose keys are split); after, `MOVED`. Returns
    /// how long it took. Slots `to` already serves are skipped.
    ///
    /// # Panics
    ///
    /// When a node refuses a step.
    pub fn move_slots(&self, slots: &[usize], to: usize) -> Duration {
        let started = Instant::now();
        for &slot in slots {
            let from = self.owner_of_slot(slot);
            if from == to {
                continue;
            }
            self.open_migration(slot, from, to);
            while self.migrate_keys(slot, from, to, 100) > 0 {}
            self.finish_migration(slot, from, to);
        }
        started.elapsed()
    }

    /// Starts one more node, with the arguments the others were started
    /// with, and joins it to the cluster as a primary that serves no slot
    /// yet, as an operator adds a node before resharding slots onto it
    /// (it is in `CLUSTER NODES`, not in `CLUSTER SLOTS`). Returns its
    /// index once every node knows it and it knows the slots' owners. (The failover helpers,
    /// [`RedisCluster::kill_primary`] and the freezes, expect three
    /// primaries: not after this.)
    ///
    /// # Panics
    ///
    /// On a TLS cluster, or when the node does not join within 30 s.
    pub fn add_primary(&mut self) -> usize {
        let args = self
            .args
            .as_ref()
            .expect("add_primary: not on a TLS cluster");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = RedisServer::start_cluster_node(&args);
        let port = node.port().to_string();
        let id: String = node.cmd(&["CLUSTER", "MYID"]);
        let () = self.nodes[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &port]);
        self.nodes.push(node);
        let count = self.nodes.len();
        self.wait_until("the new node joined", |c| {
            c.nodes.iter().filter(|n| n.answers()).all(|n| {
                let nodes: String = n.cmd(&["CLUSTER", "NODES"]);
                let info: String = n.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && nodes.lines().count() == count
                    && !nodes.contains("handshake")
                    && nodes
                        .lines()
                        .any(|line| line.starts_with(&id) && !line.contains("fail"))
            })
        });
        count - 1
    }

    /// The first step of moving `slot` from primary `from` to `to`: the
    /// target marks it importing, then its owner migrating.
    ///
    /// # Panics
    ///
    /// When a node refuses a step.
    pub fn open_migration(&self, slot: usize, from: usize, to: usize) {
        let slot = slot.to_string();
        let () = self.nodes[to].cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &self.id(from)]);
        let () = self.nodes[from].cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &self.id(to)]);
    }

    /// Moves up to `count` keys of `slot` (opened by [`Self::open_migration`])
    /// from `from` to `to` with one `MIGRATE`. Returns how many it moved.
    ///
    /// # Panics
    ///
    /// When a node refuses a step.
    pub fn migrate_keys(&self, slot: usize, from: usize, to: usize, count: usize) -> usize {
        let source = &self.nodes[from];
        let keys: Vec<String> = source.cmd(&[
            "CLUSTER",
            "GETKEYSINSLOT",
            &slot.to_string(),
            &count.to_string(),
        ]);
        if keys.is_empty() {
            return 0;
        }
        let target_port = self.nodes[to].port().to_string();
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            &target_port,
            "",
            "0",
            "5000",
            "REPLACE",
            "KEYS",
        ];
        args.extend(keys.iter().map(String::as_str));
        let _: redis::Value = source.cmd(&args);
        keys.len()
    }

    /// The last step of moving `slot` from `from` to `to`: the target is
    /// told it serves the slot, then the source, then every other primary.
    ///
    /// # Panics
    ///
    /// When a node refuses a step.
    pub fn finish_migration(&self, slot: usize, from: usize, to: usize) {
        let (slot, target_id) = (slot.to_string(), self.id(to));
        let mut told = vec![to, from];
        told.extend(
            self.primaries()
                .into_iter()
                .filter(|&i| i != to && i != from),
        );
        for i in told {
            let () = self.nodes[i].cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        }
    }

    /// Node `i`'s cluster node id.
    fn id(&self, i: usize) -> String {
        self.nodes[i].cmd(&["CLUSTER", "MYID"])
    }

    fn role(&self, i: usize) -> String {
        let role: Vec<redis::Value> = self.nodes[i].cmd(&["ROLE"]);
        match role.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            other => panic!("ROLE answered {other:?}"),
        }
    }

    fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        while !done(self) {
            if Instant::now() >= deadline {
                let nodes: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        if n.answers() {
                            n.cmd::<String>(&["CLUSTER", "NODES"])
                        } else {
                            format!("127.0.0.1:{} does not answer\n", n.port())
                        }
                    })
                    .collect();
                panic!(
                    "the local cluster was not {what} within {FORM_TIMEOUT:?}; CLUSTER NODES of each node:\n{}",
                    nodes.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What [`disrupt_under_load`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverReport {
    /// Calls the readers made.
    pub calls: u64,
    /// Calls that returned an error (the loader never fails, so any error
    /// came from the cache).
    pub errors: u64,
    /// Rows the writer changed (each then invalidated).
    pub writes: u64,
    /// Reads that returned a version older than one whose invalidation
    /// had been acknowledged before the read started.
    pub stale_reads: u64,
    /// Cached rows that differ from the database once the run is over.
    pub stale_after: u64,
    /// How long the disruption took: from the kill until a replica served
    /// the primary's slots, or the slots' migration.
    pub failover: Duration,
    /// From then until caching resumed: a key read twice is loaded once.
    pub recovered_after: Duration,
}

/// Kills a primary of `cluster` under load: [`disrupt_under_load`] with
/// [`RedisCluster::kill_primary`] of the first primary; `disrupted` is the
/// failover's time.
///
/// # Panics
///
/// As [`disrupt_under_load`] and [`RedisCluster::kill_primary`].
pub async fn failover_under_load(
    cluster: RedisCluster,
    cache: cached_runtime::Cache,
    readers: usize,
    keys: u64,
) -> (RedisCluster, FailoverReport) {
    disrupt_under_load(cluster, cache, readers, keys, |cluster| {
        let victim = cluster.primaries()[0];
        cluster.kill_primary(victim)
    })
    .await
}

/// Runs `disrupt` on `cluster` (on a blocking thread; it returns how long
/// the disruption took) while `readers` tasks read `keys` rows through
/// `cache` (`get_or_load` of `row:{k}`, a loader that never fails) and a
/// writer changes rows and invalidates each, by key or (every third) by a
/// pattern naming it, retrying until the invalidation is acknowledged, as
/// a careful service does. Returns the cluster and what was seen.
///
/// # Panics
///
/// When caching does not resume within 30 s of the disruption.
pub async fn disrupt_under_load(
    cluster: RedisCluster,
    cache: cached_runtime::Cache,
    readers: usize,
    keys: u64,
    disrupt: impl FnOnce(&mut RedisCluster) -> Duration + Send + 'static,
) -> (RedisCluster, FailoverReport) {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    type Rows = Arc<Mutex<HashMap<u64, u64>>>;
    let rows: Rows = Arc::new(Mutex::new((0..keys).map(|k| (k, 0)).collect()));
    // The version each row's last acknowledged invalidation made current.
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let loads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // For a failure's report: each acknowledged change (row, version, by
    // pattern, when), and each stale read (row, version read, floor, when).
    let began = Instant::now();
    type Log<T> = Arc<Mutex<Vec<T>>>;
    let changes: Log<(u64, u64, bool, Duration)> = Arc::default();
    let stale_seen: Log<(u64, u64, u64, Duration)> = Arc::default();
    let read = |cache: cached_runtime::Cache, rows: Rows, loads: Arc<AtomicU64>, k: u64| async move {
        cache
            .get_or_load(
                &format!("row:{k}"),
                Duration::from_secs(60),
                || async move {
                    loads.fetch_add(1, SeqCst);
                    let version = rows.lock().map(|rows| rows[&k]).unwrap_or(0);
                    Ok::<u64, ()>(version)
                },
            )
            .await
    };
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let (cache, rows, committed, loads, stop, stale_seen) = (
                cache.clone(),
                rows.clone(),
                committed.clone(),
                loads.clone(),
                stop.clone(),
                stale_seen.clone(),
            );
            tokio::spawn(async move {
                let (mut calls, mut errors, mut stale) = (0u64, 0u64, 0u64);
                while !stop.load(SeqCst) {
                    let k = fastrand::u64(..keys);
                    let floor = committed[k as usize].load(SeqCst);
                    match read(cache.clone(), rows.clone(), loads.clone(), k).await {
                        Ok(got) if got < floor => {
                            stale += 1;
                            if let Ok(mut seen) = stale_seen.lock() {
                                seen.push((k, got, floor, began.elapsed()));
                            }
                        }
                        Ok(_) => {}
                        Err(()) => errors += 1,
                    }
                    calls += 1;
                }
                (calls, errors, stale)
            })
        })
        .collect();
    let writer = {
        let (cache, rows, committed, stop, changes) = (
            cache.clone(),
            rows.clone(),
            committed.clone(),
            stop.clone(),
            changes.clone(),
        );
        tokio::spawn(async move {
            let mut writes = 0u64;
            while !stop.load(SeqCst) {
                let k = fastrand::u64(..keys);
                let version = {
                    let mut rows = rows.lock().expect("rows");
                    let v = rows.get_mut(&k).expect("row");
                    *v += 1;
                    *v
                };
                let key = format!("row:{k}");
                loop {
                    let done = if writes % 3 == 2 {
                        cache.invalidate_pattern(&key).await.map(|_| ())
                    } else {
                        cache.invalidate(&key).await
                    };
                    if done.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                committed[k as usize].store(version, SeqCst);
                if let Ok(mut changes) = changes.lock() {
                    changes.push((k, version, writes % 3 == 2, began.elapsed()));
                }
                writes += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (cluster, failover) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let took = disrupt(&mut cluster);
        (cluster, took)
    })
    .await
    .expect("the disruption joins");
    let resumed = Instant::now();
    loop {
        for _ in 0..2 {
            for k in 0..20 {
                let _ = read(cache.clone(), rows.clone(), loads.clone(), k).await;
            }
        }
        let before = loads.load(SeqCst);
        for k in 0..20 {
            let _ = read(cache.clone(), rows.clone(), loads.clone(), k).await;
        }
        if loads.load(SeqCst) == before {
            break;
        }
        assert!(
            resumed.elapsed() < FORM_TIMEOUT,
            "caching did not resume within {FORM_TIMEOUT:?} of the disruption"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_after = resumed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    let writes = writer.await.expect("the writer joins");
    let (mut calls, mut errors, mut stale_reads) = (0, 0, 0);
    for task in tasks {
        let (c, e, s) = task.await.expect("a reader joins");
        calls += c;
        errors += e;
        stale_reads += s;
    }
    let mut stale_after = 0;
    let mut stale_rows: Vec<u64> = Vec::new();
    for k in 0..keys {
        let want = rows.lock().expect("rows")[&k];
        if cache
            .get::<u64>(&format!("row:{k}"))
            .await
            .is_some_and(|got| got != want)
        {
            stale_after += 1;
            stale_rows.push(k);
        }
    }
    // What a failure needs to be told apart: which change each stale row
    // followed (by key or by pattern), and when, beside the disruption.
    let seen = stale_seen.lock().map(|s| s.clone()).unwrap_or_default();
    stale_rows.extend(seen.iter().map(|s| s.0));
    stale_rows.sort_unstable();
    stale_rows.dedup();
    for k in stale_rows {
        let row_changes: Vec<_> = changes
            .lock()
            .map(|c| c.iter().filter(|c| c.0 == k).copied().collect())
            .unwrap_or_default();
        let reads: Vec<_> = seen.iter().filter(|s| s.0 == k).take(5).collect();
        eprintln!(
            "row {k} stale: disruption took {failover:?} from 1.5 s; changes (version, by pattern, acknowledged at) {:?}; first stale reads (version read, floor, at) {:?}",
            row_changes
                .iter()
                .map(|c| (c.1, c.2, c.3))
                .collect::<Vec<_>>(),
            reads.iter().map(|s| (s.1, s.2, s.3)).collect::<Vec<_>>(),
        );
    }
    let report = FailoverReport {
        calls,
        errors,
        writes,
        stale_reads,
        stale_after,
        failover,
        recovered_after,
    };
    (cluster, report)
}
