//! Real processes: children of this test binary, each running one ignored
//! test of this module against the parent's server. Four processes share
//! one load of a cold key (on one server, and on a local Redis Cluster),
//! and a leaseholder killed with SIGKILL holds the others only until its
//! lease expires.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use cached_tests::{NAMESPACE, RedisCluster, RedisServer, redis_builder_at, redis_cache};

use crate::Svc;

/// Set in a child's environment: the ignored tests below do nothing
/// without it (when `--ignored` runs them in the parent, say).
const CHILD_ENV: &str = "CACHED_TEST_CHILD";

/// A command that runs this binary's test `name`, of this module, alone as
/// a child process against `server`.
fn child(name: &str, server: &RedisServer) -> Command {
    // The harness names a test by its path without the crate's name.
    let module = module_path!()
        .split_once("::")
        .map_or("", |(_crate, module)| module);
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([
            &format!("{module}::{name}"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("REDIS_URL", server.url());
    command
}

/// Set in a child's environment to have its cache on these cluster nodes
/// (comma-separated); `REDIS_URL`'s server then only coordinates.
const CLUSTER_ENV: &str = "CACHED_TEST_CLUSTER";

/// The server a child was started against; `None` when this process is
/// not a child.
fn parents_server() -> Option<String> {
    std::env::var(CHILD_ENV).ok()?;
    Some(std::env::var("REDIS_URL").expect("the parent sets REDIS_URL"))
}

/// Runs in a child process (see `child_processes_share_one_load`): waits for
/// the parent's go, then 50 concurrent callers ask for one cold key.
#[test]
#[ignore = "a child process of child_processes_share_one_load"]
fn stampede_child() {
    let Some(url) = parents_server() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = match std::env::var(CLUSTER_ENV) {
            Ok(nodes) => Cache::builder()
                .redis_cluster(nodes.split(','))
                .namespace(NAMESPACE)
                .build(),
            Err(_) => redis_builder_at(url.as_str()).build(),
        }
        .expect("builds");
        // Connected before the go (on a busy machine a first connection to
        // a cluster can outlast the op timeout: that call would load
        // without the cache, correctly, and count a second load).
        let ready = tokio::time::Instant::now() + Duration::from_secs(10);
        while cache.ping().await.is_err() {
            assert!(
                tokio::time::Instant::now() < ready,
                "the cache never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        while redis::cmd("GET")
            .arg("go")
            .query_async::<Option<String>>(&mut conn)
            .await
            .expect("GET")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, conn) = (cache.clone(), conn.clone());
                tokio::spawn(async move { counted_load(&cache, conn).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("joins"), 42);
        }
    });
    println!("child done");
}

/// A load that counts itself in Redis, so the parent sees every process's loads.
#[cached(prefix = "shared", ttl = "1m", key = "the-key", cache = cache)]
async fn counted_load(cache: &Cache, conn: redis::aio::MultiplexedConnection) -> u64 {
    let mut conn = conn;
    let _: i64 = redis::cmd("INCR")
        .arg("loads")
        .query_async(&mut conn)
        .await
        .expect("INCR");
    tokio::time::sleep(Duration::from_millis(100)).await;
    42
}

#[test]
fn child_processes_share_one_load() {
    four_processes_share_one_load(None);
}

#[test]
fn child_processes_share_one_load_on_a_cluster() {
    four_processes_share_one_load(Some(&RedisCluster::start()));
}

/// Four processes of 50 callers each ask for one cold key on `cluster`, or
/// on the coordinating server itself.
fn four_processes_share_one_load(cluster: Option<&RedisCluster>) {
    let server = RedisServer::start();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut command = child("stampede_child", &server);
            if let Some(cluster) = cluster {
                command.env(CLUSTER_ENV, cluster.urls().join(","));
            }
            command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("child starts")
        })
        .collect();
    // Let every child connect and wait for the go, then start them together.
    std::thread::sleep(Duration::from_millis(500));
    server.cmd::<()>(&["SET", "go", "1"]);
    for child in children {
        let out = child.wait_with_output().expect("child exits");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child done"),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let loads: Option<i64> = server.cmd(&["GET", "loads"]);
    assert_eq!(
        loads,
        Some(1),
        "4 processes x 50 callers of a cold key: one load in total"
    );
    if let Some(cluster) = cluster {
        // The value is on the cluster, in the slot of its hash tag.
        let slot: i64 = cluster.nodes()[0].cmd(&["CLUSTER", "KEYSLOT", "{t:shared:the-key}"]);
        let slot = slot.to_string();
        let stored: i64 = cluster
            .primaries()
            .into_iter()
            .map(|i| cluster.nodes()[i].cmd::<i64>(&["CLUSTER", "COUNTKEYSINSLOT", &slot]))
            .sum();
        assert!(stored >= 1, "nothing stored in slot {slot} of the cluster");
    }
}

#[test]
fn a_leaseholder_killed_with_sigkill_holds_others_only_until_its_lease_expires() {
    let server = RedisServer::start();
    let mut child = child("lease_holder_child", &server)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .cmd::<Option<String>>(&["GET", "t:lease:9:~lease"])
        .is_none()
    {
        assert!(Instant::now() < deadline, "the child never took the lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let svc = Svc::new(redis_cache(&server), Duration::from_millis(10));
        let started = Instant::now();
        assert_eq!(svc.short_lease(9).await, Ok(1));
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(1600),
            "waited {waited:?} for a 1 s lease"
        );
        assert_eq!(svc.loads(), 1);
    });
}

/// Takes the lease on key 9 and hangs in its loader until killed.
#[test]
#[ignore = "a child process of a_leaseholder_killed_with_sigkill_..."]
fn lease_holder_child() {
    let Some(url) = parents_server() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = redis_builder_at(url.as_str()).build().expect("builds");
        let _ = Svc::new(cache, Duration::from_secs(3600))
            .short_lease(9)
            .await;
    });
}
