//! Faults the orchestrator injects while the workers run, one window at a
//! time, each recorded from when it began until it was healed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proxy, RedisServer};

use super::history::{FaultWindow, now_ns};
use super::worker::{ENV, WorkerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Random cancellation only (every case has it).
    None,
    /// The cache's Redis stopped (SIGSTOP) and continued (SIGCONT).
    Freeze,
    /// Killed, and restarted empty.
    KillEmpty,
    /// Killed, and restarted with its data (append-only file, same dir).
    KillData,
    /// Writes refused with `-OOM` (maxmemory under the memory used,
    /// `noeviction`); reads and deletes go on.
    RefuseOom,
    /// Writes refused with `-READONLY` (a replica of a dead master); reads go on.
    RefuseReadonly,
    /// Keys evicted at random (`allkeys-random`, maxmemory under the memory
    /// used): values, leases, tag indexes and epochs alike, as a full
    /// server under an eviction policy does.
    Evict,
    /// The proxy passes nothing on, sockets stay open (a silent partition).
    Blackhole,
    /// The proxy holds every byte 20-150 ms each way.
    Latency,
    /// The proxy closes every connection.
    Cut,
    /// A worker process SIGKILLed (perhaps holding a lease), and replaced.
    WorkerKill,
    /// Any of the above, one after another.
    Mixed,
    /// On a Redis Cluster: a primary SIGKILLed, and its replica promoted.
    KillPrimary,
}

/// What `Mixed` picks from.
const MIXED: [Fault; 8] = [
    Fault::Freeze,
    Fault::KillData,
    Fault::RefuseOom,
    Fault::RefuseReadonly,
    Fault::Blackhole,
    Fault::Latency,
    Fault::Cut,
    Fault::WorkerKill,
];

/// No worker is killed this close to the end of the run, so that its
/// leases have expired by the recovery check.
pub const NO_KILL_BEFORE_END: Duration = Duration::from_millis(1500);

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Freeze => "freeze",
            Fault::KillEmpty => "kill_empty",
            Fault::KillData => "kill_data",
            Fault::RefuseOom => "refuse_oom",
            Fault::RefuseReadonly => "refuse_readonly",
            Fault::Evict => "evict",
            Fault::Blackhole => "blackhole",
            Fault::Latency => "latency",
            Fault::Cut => "cut",
            Fault::WorkerKill => "worker_kill",
            Fault::Mixed => "mixed",
            Fault::KillPrimary => "kill_primary",
        }
    }

    /// Whether the cache's Redis keeps an append-only file.
    pub fn needs_aof(self) -> bool {
        matches!(self, Fault::KillData | Fault::Mixed)
    }
}

/// The worker processes of a case.
pub struct Workers {
    template: WorkerConfig,
    dir: std::path::PathBuf,
    next_proc: u32,
    pub running: Vec<(u32, Child)>,
    /// Processes killed by a fault.
    pub killed: Vec<u32>,
}

impl Workers {
    pub fn new(template: WorkerConfig, dir: &std::path::Path) -> Workers {
        Workers {
            template,
            dir: dir.to_owned(),
            next_proc: 1,
            running: Vec::new(),
            killed: Vec::new(),
        }
    }

    /// Starts one more worker process (this binary, re-executed).
    pub fn spawn(&mut self) {
        let proc = self.next_proc;
        self.next_proc += 1;
        let mut config = self.template.clone();
        config.proc = proc;
        config.seed = super::mix(self.template.seed, u64::from(proc));
        config.history = self.dir.join(format!("p{proc}.jsonl"));
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .env(
                ENV,
                serde_json::to_string(&config).expect("config serializes"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("a worker process starts");
        self.running.push((proc, child));
    }

    /// SIGKILLs worker `index`; returns its process number.
    fn kill(&mut self, index: usize) -> u32 {
        let (proc, mut child) = self.running.remove(index);
        let _ = child.kill();
        let _ = child.wait();
        self.killed.push(proc);
        proc
    }

    /// Closes every worker's stdin (its signal to stop) and waits for them;
    /// returns what went wrong (a worker that did not stop, or failed).
    pub fn stop(&mut self, limit: Duration) -> Vec<String> {
        for (_, child) in &mut self.running {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + limit;
        let mut problems = Vec::new();
        for (proc, mut child) in self.running.drain(..) {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        problems.push(format!("worker process {proc} exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        problems.push(format!(
                            "worker process {proc} did not finish its calls within {limit:?} of the stop (a call hung)"
                        ));
                        break;
                    }
                }
            }
        }
        problems
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the faults act on.
pub struct Target<'a> {
    pub server: &'a mut RedisServer,
    pub proxy: &'a Proxy,
    pub workers: &'a mut Workers,
}

/// Injects `fault` in windows until `until`, each healed before the next;
/// returns the windows.
pub fn inject(
    fault: Fault,
    target: &mut Target<'_>,
    rng: &mut fastrand::Rng,
    until: Instant,
) -> Vec<FaultWindow> {
    let mut windows = Vec::new();
    if fault == Fault::None {
        sleep_until(until);
        return windows;
    }
    loop {
        sleep_until((Instant::now() + ms(rng.u64(200..700))).min(until));
        let left = until.saturating_duration_since(Instant::now());
        if left < ms(150) {
            break;
        }
        let mut kind = if fault == Fault::Mixed {
            MIXED[rng.usize(..MIXED.len())]
        } else {
            fault
        };
        if kind == Fault::WorkerKill && left < NO_KILL_BEFORE_END {
            if fault == Fault::WorkerKill {
                sleep_until(until);
                break;
            }
            kind = Fault::Latency;
        }
        let hold = ms(rng.u64(150..700)).min(left);
        windows.push(window(kind, target, rng, hold));
    }
    windows
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One fault, held for `hold`, then healed.
fn window(
    kind: Fault,
    target: &mut Target<'_>,
    rng: &mut fastrand::Rng,
    hold: Duration,
) -> FaultWindow {
    let server = &mut *target.server;
    let start = now_ns();
    let detail = match kind {
        Fault::Freeze => {
            server.freeze();
            std::thread::sleep(hold);
            server.thaw();
            String::new()
        }
        Fault::KillEmpty | Fault::KillData => {
            server.kill();
            std::thread::sleep(hold);
            server.restart();
            let keys: u64 = server.cmd(&["DBSIZE"]);
            format!("{keys} keys after the restart")
        }
        Fault::RefuseOom => {
            // Under the memory in use, as on a full server: with
            // `noeviction` every write is refused with -OOM. (A limit just
            // above or just under it refuses writes only now and then: the
            // clients' buffers come and go by more than the data.)
            let used = info_field(server, "memory", "used_memory").unwrap_or(1 << 20);
            let before = info_field(server, "errorstats", "errorstat_OOM").unwrap_or(0);
            let limit = (used / 2).max(1);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory", &limit.to_string()]);
            std::thread::sleep(hold);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
            let after = info_field(server, "errorstats", "errorstat_OOM").unwrap_or(0);
            format!("{} writes refused with -OOM", after.saturating_sub(before))
        }
        Fault::Evict => {
            let used = info_field(server, "memory", "used_memory").unwrap_or(1 << 20);
            let before = info_field(server, "stats", "evicted_keys").unwrap_or(0);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory", &(used / 2).max(1).to_string()]);
            std::thread::sleep(hold);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
            server.cmd::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
            let after = info_field(server, "stats", "evicted_keys").unwrap_or(0);
            format!("{} keys evicted", after.saturating_sub(before))
        }
        Fault::RefuseReadonly => {
            let before = info_field(server, "errorstats", "errorstat_READONLY").unwrap_or(0);
            let dead = crate::free_port().to_string();
            server.cmd::<()>(&["REPLICAOF", "127.0.0.1", &dead]);
            std::thread::sleep(hold);
            server.cmd::<()>(&["REPLICAOF", "NO", "ONE"]);
            let after = info_field(server, "errorstats", "errorstat_READONLY").unwrap_or(0);
            format!(
                "{} writes refused with -READONLY",
                after.saturating_sub(before)
            )
        }
        Fault::Blackhole => {
            target.proxy.blackhole(true);
            std::thread::sleep(hold);
            target.proxy.blackhole(false);
            String::new()
        }
        Fault::Latency => {
            let delay = ms(rng.u64(20..150));
            target.proxy.set_delay(delay);
            std::thread::sleep(hold);
            target.proxy.set_delay(Duration::ZERO);
            // Bytes already held keep their delay, and later ones queue
            // behind them: the fault lasts until they are through.
            std::thread::sleep(delay * 2 + ms(5));
            format!("{delay:?} each way")
        }
        Fault::Cut => {
            let n = target.proxy.connections();
            target.proxy.cut();
            std::thread::sleep(hold.min(ms(50)));
            format!("{n} connections closed")
        }
        Fault::WorkerKill => {
            let index = rng.usize(..target.workers.running.len());
            let proc = target.workers.kill(index);
            std::thread::sleep(hold);
            target.workers.spawn();
            format!("worker process {proc} SIGKILLed")
        }
        Fault::None | Fault::Mixed => unreachable!("not a single fault"),
        Fault::KillPrimary => unreachable!("a cluster's fault, injected by its case"),
    };
    FaultWindow {
        kind: kind.name(),
        start,
        end: now_ns(),
        detail,
    }
}

/// A number from `INFO {section}`.
fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<u64> {
    let info: String = server.cmd(&["INFO", section]);
    info.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        // errorstat lines read `count=N`.
        let rest = rest.strip_prefix("count=").unwrap_or(rest);
        rest.split(',').next()?.trim().parse().ok()
    })
}
