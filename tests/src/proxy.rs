//! A loopback TCP proxy that a test puts between a client and a server to
//! inject network faults the server itself cannot: a latency spike, a
//! silent partition (a blackhole), and connections cut from under the
//! client.
//!
//! Plain threads and blocking sockets, so it works whatever runtime the
//! test runs (and while that runtime is busy). Each connection has a reader
//! and a writer thread per direction: the reader takes bytes off one socket
//! as they come, stamped with when they came; the writer hands them to the
//! other socket once their delay has passed and while no blackhole is on.
//! Bytes are never dropped or reordered inside a connection (TCP would not),
//! so a client that outlives a blackhole gets every answer, late.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a held writer looks again at the proxy's settings.
const POLL: Duration = Duration::from_millis(1);

/// A loopback TCP proxy to one upstream address, with fault controls.
/// Stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// The added one-way delay, in microseconds.
    delay_us: AtomicU64,
    blackhole: AtomicBool,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections: both sockets, and whether they are being torn down.
    conns: Mutex<HashMap<u64, Conn>>,
}

#[derive(Debug)]
struct Conn {
    client: TcpStream,
    server: TcpStream,
    closed: Arc<AtomicBool>,
    /// Silently dead for good: bytes are held for ever, sockets kept open.
    stranded: Arc<AtomicBool>,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream` (a port on 127.0.0.1, or any address).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(upstream: impl Into<Upstream>) -> Proxy {
        let upstream = upstream.into().0;
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds a loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        let shared = Arc::new(Shared {
            upstream,
            delay_us: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("the proxy's accept thread starts")
        };
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`: the proxy's address as a Redis URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds every byte this long before passing it on, in both directions
    /// (so a round trip takes twice `delay` more). Zero turns it off; bytes
    /// already held keep the delay they were read with.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::SeqCst);
    }

    /// Stops passing bytes on (`true`) while keeping every socket open, as a
    /// silent network partition does; `false` delivers what was held, in
    /// order, and resumes. New connections are accepted but get no answer
    /// while it is on.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Strands every connection open now: from here on they pass no byte,
    /// ever, and stay open (a NAT or firewall that forgot them, a peer gone
    /// without a word), while later connections are proxied as usual. Only
    /// a client that gives up on a connection and makes a new one recovers.
    pub fn strand(&self) {
        for conn in lock(&self.shared.conns).values() {
            conn.stranded.store(true, Ordering::SeqCst);
        }
    }

    /// Closes every connection open now (both sockets); later connections
    /// are proxied as usual.
    pub fn cut(&self) {
        let conns: Vec<Conn> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for conn in &conns {
            conn.close();
        }
    }

    /// How many connections are open through the proxy.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.cut();
    }
}

/// Where a [`Proxy`] forwards to: a `SocketAddr`, or a port on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Upstream(SocketAddr);

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Upstream {
        Upstream(addr)
    }
}

impl From<u16> for Upstream {
    fn from(port: u16) -> Upstream {
        Upstream(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        // Upstream down (killed): the client sees its connection closed.
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(1))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(e) = open(shared, client, server) {
            eprintln!("proxy: could not proxy a connection: {e}");
        }
    }
}

/// Registers a connection and starts its four threads.
fn open(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) -> std::io::Result<()> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let closed = Arc::new(AtomicBool::new(false));
    let stranded = Arc::new(AtomicBool::new(false));
    let conn = Conn {
        client: client.try_clone()?,
        server: server.try_clone()?,
        closed: Arc::clone(&closed),
        stranded: Arc::clone(&stranded),
    };
    lock(&shared.conns).insert(id, conn);
    let ends = Arc::new(AtomicU64::new(0));
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = {
            let shared = Arc::clone(shared);
            move || read_side(from, &tx, &shared)
        };
        let writer = {
            let (shared, closed, stranded, ends) = (
                Arc::clone(shared),
                Arc::clone(&closed),
                Arc::clone(&stranded),
                Arc::clone(&ends),
            );
            move || {
                write_side(to, &rx, &shared, &closed, &stranded);
                // The last direction to end removes the connection.
                if ends.fetch_add(1, Ordering::SeqCst) == 1
                    && let Some(conn) = lock(&shared.conns).remove(&id)
                {
                    conn.close();
                }
            }
        };
        std::thread::Builder::new()
            .name("proxy-read".into())
            .spawn(reader)?;
        std::thread::Builder::new()
            .name("proxy-write".into())
            .spawn(writer)?;
    }
    Ok(())
}

/// Takes bytes off `from` as they arrive, stamped with when they are due.
fn read_side(mut from: TcpStream, tx: &mpsc::Sender<(Instant, Vec<u8>)>, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return, // the sender's end closes the writer
            Ok(n) => {
                let delay = Duration::from_micros(shared.delay_us.load(Ordering::SeqCst));
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Hands the bytes to `to` in order once due, holding them while the
/// blackhole is on; when the reader ends, closes the whole connection (a
/// Redis client never half-closes).
fn write_side(
    mut to: TcpStream,
    rx: &mpsc::Receiver<(Instant, Vec<u8>)>,
    shared: &Shared,
    closed: &AtomicBool,
    stranded: &AtomicBool,
) {
    while let Ok((due, bytes)) = rx.recv() {
        loop {
            if closed.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            if shared.blackhole.load(Ordering::SeqCst) || stranded.load(Ordering::SeqCst) {
                std::thread::sleep(POLL);
            } else if now < due {
                std::thread::sleep((due - now).min(POLL * 5));
            } else {
                break;
            }
        }
        if to.write_all(&bytes).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    fn ping(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connects to the proxy");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a read timeout");
        s
    }

    #[test]
    fn forwards_a_ping_and_a_redis_client() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let mut s = connect(&proxy);
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        // A real client, through the URL.
        let client = redis::Client::open(proxy.url()).expect("a valid URL");
        let mut conn = client.get_connection().expect("connects");
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut conn)
            .expect("SET");
        assert_eq!(server.cmd::<String>(&["GET", "k"]), "v");
        assert_eq!(proxy.connections(), 2);
    }

    #[test]
    fn a_blackhole_makes_a_ping_hang_and_delivers_it_when_lifted() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let mut s = connect(&proxy);
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        proxy.blackhole(true);
        let err = ping(&mut s).expect_err("no answer through a blackhole");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a timeout, not a closed connection: {err}"
        );
        proxy.blackhole(false);
        // The held PING is delivered, then its PONG: the stream stays in step.
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).expect("the held answer");
        assert_eq!(&buf, b"+PONG\r\n");
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
    }

    #[test]
    fn a_stranded_connection_stays_silent_and_new_ones_work() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let mut s = connect(&proxy);
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        proxy.strand();
        ping(&mut s).expect_err("no answer on a stranded connection");
        let mut again = connect(&proxy);
        assert_eq!(ping(&mut again).expect("PONG"), b"+PONG\r\n");
        ping(&mut s).expect_err("and the old one stays silent");
    }

    #[test]
    fn cut_drops_the_connection_and_new_ones_work() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let mut s = connect(&proxy);
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        proxy.cut();
        let mut buf = [0u8; 1];
        let closed = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(closed, "the cut connection is closed");
        let mut again = connect(&proxy);
        assert_eq!(ping(&mut again).expect("PONG"), b"+PONG\r\n");
    }

    #[test]
    fn a_delay_holds_each_direction() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        let mut s = connect(&proxy);
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("a read timeout");
        proxy.set_delay(Duration::from_millis(60));
        let started = Instant::now();
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(120), "{took:?}");
        proxy.set_delay(Duration::ZERO);
        let started = Instant::now();
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
        assert!(started.elapsed() < Duration::from_millis(60));
    }

    #[test]
    fn an_upstream_that_is_down_closes_the_client() {
        let mut server = RedisServer::start();
        let proxy = Proxy::start(server.port());
        server.kill();
        let mut s = connect(&proxy);
        assert!(ping(&mut s).is_err(), "nothing answers");
        server.restart();
        let mut s = connect(&proxy);
        assert_eq!(ping(&mut s).expect("PONG"), b"+PONG\r\n");
    }
}
