//! Test support: real `redis-server` processes on free loopback ports, which
//! a test can freeze, thaw, kill and restart to inject faults.
//!
//! No mocks: every Redis test talks to a real server that it owns, so tests
//! share no state and can run in parallel. [`Proxy`] goes between a client
//! and a server for the network faults a server cannot make itself.
//! [`consistency`] is the randomized consistency checker that the
//! `consistency` test and the benchmark harness run.
//!
//! What the integration tests share: caches built one way on either backend
//! ([`backend`]), the one way to run a test on both
//! ([`on_both_backends!`]), and a counting "database" for loaders
//! ([`Source`]).

pub mod backend;
pub mod cluster;
pub mod consistency;
pub mod proxy;
pub mod source;
pub mod tls;
pub use backend::{
    ACL_PASSWORD, ACL_USER, Backend, NAMESPACE, acl_user_args, behind_a_proxy, memory_builder,
    redis_builder, redis_builder_at, redis_cache, redis_cache_with, unreachable_redis_builder,
};
pub use cluster::RedisCluster;
pub use proxy::Proxy;
pub use source::{Source, SourceDown};
pub use tls::{ClientAuth, Pki};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by one test, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    frozen: bool,
    /// Arguments every start of this server gets (see [`RedisServer::start_with`]).
    base: Vec<String>,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    /// A TLS-only server's Unix socket: it has no plain TCP port, and the
    /// test's own commands ([`RedisServer::cmd`]) and pings go there.
    unix: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (the message says how to install
    /// it), or when no server comes up: tests never skip silently.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// [`RedisServer::start`] with `extra` arguments, which override the
    /// defaults (`--appendonly yes`, say) and are kept for every restart, so
    /// a server started with an append-only file comes back with its data.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_configured(extra, None, free_port)
    }

    /// A server that also listens for TLS on a port of its own (see
    /// [`RedisServer::tls_url`]), with `pki`'s server certificate, trusting
    /// `pki`'s CA for client certificates, which it requires or not as
    /// `clients` says. The plain port stays open for the test's own
    /// commands ([`RedisServer::cmd`]).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], and when this `redis-server` was built
    /// without TLS (its log says so).
    pub fn start_tls(pki: &Pki, clients: ClientAuth) -> RedisServer {
        RedisServer::start_tls_with(pki, clients, &[])
    }

    /// [`RedisServer::start_tls`] with `extra` arguments (an ACL user, say:
    /// [`acl_user_args`]).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start_tls`].
    pub fn start_tls_with(pki: &Pki, clients: ClientAuth, extra: &[&str]) -> RedisServer {
        RedisServer::start_configured(extra, Some((pki, clients)), free_port)
    }

    /// A cluster node (`--cluster-enabled yes` among `extra`): on a port
    /// whose cluster bus port (the port + 10000) is free and in range.
    pub(crate) fn start_cluster_node(extra: &[&str]) -> RedisServer {
        RedisServer::start_configured(extra, None, free_port_with_bus)
    }

    /// A TLS-only cluster node: its one TCP port speaks TLS (clients, and
    /// with `--tls-cluster yes` among `tls_args` the cluster bus on the
    /// port + 10000), no plain TCP port is open, and the test's own
    /// commands go over a Unix socket in the server's directory. `tls_args`
    /// (given the server's directory and TLS port) name its TLS settings.
    pub(crate) fn start_tls_cluster_node(
        extra: &[&str],
        tls_args: impl Fn(&Path, u16) -> Vec<String>,
    ) -> RedisServer {
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            let port = free_port_with_bus();
            let unix = dir.path().join("redis.sock");
            let mut base: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
            base.extend(tls_args(dir.path(), port));
            base.extend([
                "--unixsocket".to_owned(),
                unix.display().to_string(),
                "--unixsocketperm".to_owned(),
                "700".to_owned(),
            ]);
            let mut server = RedisServer {
                port,
                child: None,
                dir,
                frozen: false,
                base,
                tls_port: Some(port),
                unix: Some(unix),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!(
            "a TLS-only redis-server did not start on a free loopback port; its log:\n{last_log}"
        );
    }

    fn start_configured(
        extra: &[&str],
        tls: Option<(&Pki, ClientAuth)>,
        pick_port: fn() -> u16,
    ) -> RedisServer {
        // A port can be taken between choosing and binding it; try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            let mut base: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
            let mut tls_port = None;
            if let Some((pki, clients)) = tls {
                let port = free_port();
                base.extend(pki.server_args(dir.path(), port, clients));
                tls_port = Some(port);
            }
            let mut server = RedisServer {
                port: pick_port(),
                child: None,
                dir,
                frozen: false,
                base,
                tls_port,
                unix: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start on a free loopback port; its log:\n{last_log}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the process on `self.port`; on failure returns its log.
    fn spawn(&mut self) -> Result<(), String> {
        self.spawn_with(&[], RedisServer::ping)
    }

    /// Starts the process with `extra` arguments and waits until `ready`.
    fn spawn_with(
        &mut self,
        extra: &[&str],
        ready: fn(&RedisServer) -> bool,
    ) -> Result<(), String> {
        // Later arguments win: the defaults, then the server's own, then
        // this start's.
        // A TLS-only server listens on its TLS port alone (in `base`).
        let plain = if self.unix.is_some() { 0 } else { self.port };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &plain.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.base)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and these tests need a real one.\n\
                 Install it (Debian/Ubuntu: `apt-get install redis-server`), or run `scripts/test`, \
                 which installs it."
            ),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        self.child = Some(child);
        self.frozen = false;
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_exited)) = child.try_wait()
            {
                self.child = None;
                return Err(std::fs::read_to_string(self.log_path()).unwrap_or_default());
            }
            if ready(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        self.stop();
        Err(format!("no answer to PING within {READY_TIMEOUT:?}\n{log}"))
    }

    /// `redis://127.0.0.1:{port}` (a TLS-only cluster node has no plain
    /// port: see [`RedisServer::tls_url`]).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Where the test's own commands go: the plain port, or a TLS-only
    /// server's Unix socket.
    fn admin_url(&self) -> String {
        match &self.unix {
            Some(path) => format!("redis+unix://{}", path.display()),
            None => self.url(),
        }
    }

    /// The port the server listens on (a TLS-only cluster node's TLS port,
    /// the one the cluster announces).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:{tls port}`.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{port}")
    }

    /// Whether the server answers PING within 200 ms (a plain socket, so it
    /// works while the caller's runtime is busy).
    pub fn ping(&self) -> bool {
        self.ping_reply::<7>().is_some_and(|r| &r == b"+PONG\r\n")
    }

    /// Whether the server answers PING at all (`+PONG`, or an error such as
    /// `-LOADING` while it reads its data).
    pub fn answers(&self) -> bool {
        self.ping_reply::<1>()
            .is_some_and(|r| matches!(&r, b"+" | b"-"))
    }

    /// The first `N` bytes of the server's answer to PING, within 200 ms.
    fn ping_reply<const N: usize>(&self) -> Option<[u8; N]> {
        let limit = Duration::from_millis(200);
        let mut buf = [0u8; N];
        if let Some(path) = &self.unix {
            // Connecting to a Unix socket does not wait on the server.
            let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
            let _ = s.set_read_timeout(Some(limit));
            s.write_all(b"PING\r\n").ok()?;
            s.read_exact(&mut buf).ok()?;
            return Some(buf);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, limit).ok()?;
        let _ = s.set_read_timeout(Some(limit));
        s.write_all(b"PING\r\n").ok()?;
        s.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    /// Runs one command on a fresh connection and returns its reply.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the reply is not a `T`.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.admin_url()).expect("valid URL");
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connects to the test redis-server");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// How many bytes the server has sent to its clients so far (`INFO
    /// stats`' `total_net_output_bytes`): the difference across a call is
    /// what it read.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::cmd`], or when `INFO` lacks the figure.
    pub fn bytes_sent(&self) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats has total_net_output_bytes")
    }

    /// Writes raw bytes under `key`, bypassing every envelope.
    pub fn set_raw(&self, key: &str, value: &[u8]) {
        let client = redis::Client::open(self.admin_url()).expect("valid URL");
        let mut conn = client
            .get_connection()
            .expect("connects to the test redis-server");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut conn)
            .expect("SET");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("`kill` runs");
            assert!(status.success(), "kill {sig} failed");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    /// Freezes the server (SIGSTOP) until the returned guard is dropped or
    /// [thawed](FrozenServer::thaw): a test that panics mid-freeze still
    /// thaws it as it unwinds.
    pub fn freeze_guarded(&mut self) -> FrozenServer<'_> {
        self.freeze();
        FrozenServer { server: self }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port, empty, and waits for it.
    ///
    /// # Panics
    ///
    /// When it does not come back.
    pub fn restart(&mut self) {
        self.respawn(&[], RedisServer::ping);
    }

    /// Starts the server again on the same port with `extra` arguments
    /// (`--key-load-delay`, say), returning as soon as it answers, which may
    /// be while it is still loading its data.
    ///
    /// # Panics
    ///
    /// When it does not come back.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.respawn(extra, RedisServer::answers);
    }

    /// Stops the server and starts it again on the same port until `ready`.
    fn respawn(&mut self, extra: &[&str], ready: fn(&RedisServer) -> bool) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_with(extra, ready) {
                Ok(()) => return,
                // The old socket may linger a moment after the kill.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(log) => panic!("redis-server did not restart on port {}:\n{log}", self.port),
            }
        }
    }

    fn stop(&mut self) {
        if self.frozen {
            self.signal("-CONT");
            self.frozen = false;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server frozen by [`RedisServer::freeze_guarded`], thawed (SIGCONT)
/// when this is dropped.
#[derive(Debug)]
pub struct FrozenServer<'a> {
    server: &'a mut RedisServer,
}

impl FrozenServer<'_> {
    /// Thaws the server now.
    pub fn thaw(self) {
        drop(self);
    }
}

impl Drop for FrozenServer<'_> {
    fn drop(&mut self) {
        if self.server.frozen {
            self.server.thaw();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now, whose port + 10000 (a
/// cluster node's bus) is free too.
fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if let Some(bus) = port.checked_add(10_000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
}

/// A load in flight: `cache.get_or_load(key)` whose loader has run (it
/// returns once it has), and answers `value` when the sender is used or
/// dropped. To change things between a load's read of the source and its
/// store. The handle gives the call's result.
pub async fn load_in_flight<T>(
    cache: &cached_runtime::Cache,
    key: &str,
    value: T,
) -> (
    tokio::task::JoinHandle<Result<T, ()>>,
    tokio::sync::oneshot::Sender<()>,
)
where
    T: cached_runtime::Cacheable,
{
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn({
        let (cache, key) = (cache.clone(), key.to_owned());
        async move {
            cache
                .get_or_load(&key, Duration::from_secs(60), || async move {
                    let _ = read_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, ()>(value)
                })
                .await
        }
    });
    read_rx.await.expect("the load reads");
    (load, go_tx)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_freezes_and_restarts() {
        let mut server = RedisServer::start();
        assert!(server.ping());
        server.freeze();
        assert!(!server.ping(), "a frozen server must not answer");
        server.thaw();
        assert!(server.ping());
        server.cmd::<()>(&["SET", "k", "v"]);
        server.kill();
        assert!(!server.ping());
        server.restart();
        assert!(server.ping());
        assert_eq!(
            server.cmd::<Option<String>>(&["GET", "k"]),
            None,
            "a restarted server is empty"
        );
    }

    #[test]
    fn a_server_with_an_append_only_file_restarts_with_its_data() {
        let mut server = RedisServer::start_with(&["--appendonly", "yes"]);
        server.cmd::<()>(&["SET", "k", "v"]);
        server.kill();
        server.restart();
        assert_eq!(
            server.cmd::<Option<String>>(&["GET", "k"]),
            Some("v".to_owned()),
            "the write came back from the append-only file"
        );
    }
}
