//! A Redis Cluster on loopback, for tests and benches: three primaries and
//! three replicas, each a [`RedisServer`] with `--cluster-enabled yes` on a
//! free port, joined by `redis-cli --cluster create` (Debian's
//! `redis-tools`, which `redis-server` depends on). Torn down when dropped.
//! `scripts/cluster` starts the same cluster for a user who wants to try it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::RedisServer;

/// How long the cluster may take to form, or a replica to take over.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running local cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

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
        // The bus port is the port + 10000: chosen free and in range.
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_cluster_node(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica that never synced cannot take over; start
                    // its first sync at once, not after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
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
        let cluster = RedisCluster { nodes };
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

    /// `redis://127.0.0.1:{port}` of every node, primaries and replicas.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
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
