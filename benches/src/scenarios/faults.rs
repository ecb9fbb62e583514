//! Graceful degradation when Redis fails, each system with a server of its
//! own.
//!
//! `redis_frozen`: while Redis does not answer. Warm a key, freeze Redis
//! (SIGSTOP), make 200 sequential calls, thaw it, make 200 more. Figures:
//! `ok_calls` (calls answered with the loader's value), `first_failure_ms`
//! (the first call after the freeze, which meets the timeout),
//! `p99_added_ms_while_open` (latency over the loader's own while the
//! breaker is open; for systems without one, every frozen call after the
//! first), and `recovered_after_ms` (from the thaw until a call is served
//! from Redis again).
//!
//! `redis_killed`: Redis SIGKILLed under steady calls, restarted empty
//! after 2 s. One task calls a warm key 250 times a second (a call every
//! 4 ms, or at once after a slower one); 1 s in, the server is killed
//! (its connections close, new ones are refused), 2 s later restarted on
//! its port; the calls go on until one is a hit again (at most 10 s) and
//! for 1 s more. Figures: `calls`, `ok_calls` and `failed_calls` (every
//! call must be answered with the loader's value), `first_call_after_kill_ms`
//! (the first call to return after the kill, which meets the dead
//! connection), `max_added_ms_after_refused` and
//! `p99_added_ms_after_refused` (over every call begun after that one
//! returned, through the restart and recovery: its time beyond its own
//! loader's), `max_added_ms_from_kill` (the same, that first call
//! included), `down_ms` (from the kill until the restarted server answers
//! PING), `calls_while_down` (calls begun in that time: fewer than 500 when
//! calls block), and `recovered_after_ms` (from that PING until a call is a
//! hit again).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use redis::aio::ConnectionManager;

use crate::fixture::Placement;
use crate::harness::{Redis, Row, percentiles};
use crate::systems::{self, BenchError};

const CALLS: usize = 200;
/// The loader: a quick database read.
const LOAD: Duration = Duration::from_millis(2);
/// How long to keep calling after the 200 if no hit has come back yet.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
const ID: u64 = 7;

/// Counts a system's loads and times the last one.
#[derive(Default)]
pub struct Probe {
    loads: AtomicU64,
    last_ns: AtomicU64,
}

impl Probe {
    async fn load(&self, id: u64) -> Placement {
        self.loads.fetch_add(1, Relaxed);
        let started = Instant::now();
        tokio::time::sleep(LOAD).await;
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Relaxed);
        Placement::sample(id)
    }
}

/// The `cached` crate's function is a free one, so its probe is a static.
static CACHED_CRATE_PROBE: Probe = Probe {
    loads: AtomicU64::new(0),
    last_ns: AtomicU64::new(0),
};

/// The loader behind `systems::cached_crate_frozen_get`.
pub async fn load(id: u64) -> Result<Placement, BenchError> {
    Ok(CACHED_CRATE_PROBE.load(id).await)
}

struct ThisService {
    cache: Cache,
    probe: Arc<Probe>,
}

impl ThisService {
    #[cached(prefix = "frozen", ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> Placement {
        self.probe.load(id).await
    }
}

/// One call as seen from outside: answered correctly or not, how long it
/// took, how long its load took (if it loaded).
struct Seen {
    ok: bool,
    took: Duration,
    load: Option<Duration>,
    open: bool,
}

async fn call_once<F, Fut>(probe: &Probe, call: &mut F, open: bool) -> Seen
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let loads = probe.loads.load(Relaxed);
    let started = Instant::now();
    let ok = call().await;
    let took = started.elapsed();
    let load = (probe.loads.load(Relaxed) != loads)
        .then(|| Duration::from_nanos(probe.last_ns.load(Relaxed)));
    Seen {
        ok,
        took,
        load,
        open,
    }
}

/// Runs the scenario for one system. `call` makes one call and says whether
/// it was answered with the right value; `open` says whether the system's
/// breaker is open (systems without one: `None`).
async fn run_system<F, Fut>(
    system: &str,
    server: &mut Redis,
    probe: &Probe,
    mut call: F,
    open: Option<&(dyn Fn() -> bool + Sync)>,
) -> Row
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    // Warm: until a call is served without a load.
    for _ in 0..50 {
        if call_once(probe, &mut call, false).await.load.is_none() {
            break;
        }
    }

    server.freeze();
    let mut frozen = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let is_open = match open {
            Some(open) => open(),
            None => i > 0,
        };
        frozen.push(call_once(probe, &mut call, is_open).await);
    }
    server.thaw();
    let thawed = Instant::now();
    let mut after = Vec::with_capacity(CALLS);
    let mut recovered = None;
    for _ in 0..CALLS {
        let seen = call_once(probe, &mut call, false).await;
        if recovered.is_none() && seen.ok && seen.load.is_none() {
            recovered = Some(thawed.elapsed());
        }
        after.push(seen);
    }
    while recovered.is_none() && thawed.elapsed() < RECOVERY_LIMIT {
        let seen = call_once(probe, &mut call, false).await;
        if seen.ok && seen.load.is_none() {
            recovered = Some(thawed.elapsed());
        }
    }

    let ok_calls = frozen.iter().chain(&after).filter(|s| s.ok).count();
    let added: Vec<Duration> = frozen
        .iter()
        .filter(|s| s.open)
        .map(|s| s.took.saturating_sub(s.load.unwrap_or_default()))
        .collect();
    let added = percentiles(&added);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let first = frozen.first().map(|s| ms(s.took)).unwrap_or(f64::NAN);
    let calls_open = frozen.iter().filter(|s| s.open).count();
    Row::new("redis_frozen", system)
        .with("ok_calls", ok_calls as u64)
        .with("first_failure_ms", first)
        .with("p99_added_ms_while_open", added.p99)
        .with("calls_open", calls_open as u64)
        .with(
            "recovered_after_ms",
            recovered.map(ms).unwrap_or(f64::INFINITY),
        )
        .with(
            "frozen_phase_s",
            frozen.iter().map(|s| s.took.as_secs_f64()).sum::<f64>(),
        )
}

pub async fn redis_frozen(_: &Redis) -> Vec<Row> {
    let mut rows = Vec::new();

    // `this` first, alone, with the defaults.
    let mut server = Redis::start_own();
    let service = ThisService {
        cache: Cache::builder()
            .redis(server.url.as_str())
            .namespace("bench")
            .build()
            .expect("a valid URL"),
        probe: Arc::default(),
    };
    let expected = Placement::sample(ID);
    let open = || service.cache.breaker_open();
    let probe = Arc::clone(&service.probe);
    rows.push(
        run_system(
            "this",
            &mut server,
            &probe,
            || async { service.get(ID).await == expected },
            Some(&open),
        )
        .await
        .with(
            "op_timeout_ms",
            cached_runtime::DEFAULT_OP_TIMEOUT.as_millis() as u64,
        ),
    );
    drop(server);

    // The anchors wait out timeouts of hundreds of ms per call: run them
    // side by side, each against a server of its own.
    let mut hand_server = Redis::start_own();
    let mut crate_server = Redis::start_own();
    let _ = systems::CACHED_CRATE_FROZEN_URL.set(crate_server.url.clone());
    let hand = async {
        // redis-rs defaults, as the seed's code would use them.
        let conn = ConnectionManager::new(hand_server.client())
            .await
            .expect("connects");
        let probe = Probe::default();
        let key = format!("frozen:{ID}");
        let expected = Placement::sample(ID);
        run_system(
            "hand_written",
            &mut hand_server,
            &probe,
            || {
                let mut conn = conn.clone();
                let (key, probe, expected) = (&key, &probe, &expected);
                async move {
                    systems::hand_written_get(&mut conn, key, 3600, || probe.load(ID)).await
                        == *expected
                }
            },
            None,
        )
        .await
    };
    let krate = async {
        let expected = Placement::sample(ID);
        run_system(
            "cached_crate",
            &mut crate_server,
            &CACHED_CRATE_PROBE,
            || {
                let expected = &expected;
                async move {
                    matches!(systems::cached_crate_frozen_get(ID).await, Ok(p) if p == *expected)
                }
            },
            None,
        )
        .await
    };
    let (hand, krate) = tokio::join!(hand, krate);
    rows.push(hand);
    rows.push(krate);
    rows
}

/// `redis_killed`: a call every this often.
const KILLED_PERIOD: Duration = Duration::from_millis(4);
/// Calls before the kill, and how long the server stays down.
const BEFORE_KILL: Duration = Duration::from_secs(1);
const DOWN: Duration = Duration::from_secs(2);
/// Calls after the first hit following the restart.
const AFTER_RECOVERY: Duration = Duration::from_secs(1);

/// What one `redis_killed` run saw: every call (when it started), and when
/// the server was killed and answered again.
#[derive(Default)]
struct KillLog {
    calls: RefCell<Vec<(Instant, Seen)>>,
    killed: Cell<Option<Instant>>,
    ready: Cell<Option<Instant>>,
    stop: Cell<bool>,
}

impl KillLog {
    /// When the first hit after the restart completed.
    fn recovered(&self) -> Option<Instant> {
        let ready = self.ready.get()?;
        self.calls
            .borrow()
            .iter()
            .find(|(at, s)| *at >= ready && s.ok && s.load.is_none())
            .map(|(at, s)| *at + s.took)
    }
}

/// Runs `redis_killed` for one system on its own `server`.
async fn killed_system<F, Fut>(system: &str, server: Redis, probe: &Probe, mut call: F) -> Row
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    // Warm: until a call is served without a load.
    for _ in 0..50 {
        if call_once(probe, &mut call, false).await.load.is_none() {
            break;
        }
    }

    let log = KillLog::default();
    let calls = async {
        let mut tick = tokio::time::interval(KILLED_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !log.stop.get() {
            tick.tick().await;
            let at = Instant::now();
            let seen = call_once(probe, &mut call, false).await;
            log.calls.borrow_mut().push((at, seen));
        }
    };
    let faults = async {
        tokio::time::sleep(BEFORE_KILL).await;
        let (server, killed) = tokio::task::spawn_blocking(move || {
            let mut server = server;
            let killed = Instant::now();
            server.kill();
            (server, killed)
        })
        .await
        .expect("the kill");
        log.killed.set(Some(killed));
        tokio::time::sleep(DOWN).await;
        let (server, ready) = tokio::task::spawn_blocking(move || {
            let mut server = server;
            server.restart();
            (server, Instant::now())
        })
        .await
        .expect("the restart");
        log.ready.set(Some(ready));
        while log.recovered().is_none() && ready.elapsed() < RECOVERY_LIMIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(AFTER_RECOVERY).await;
        log.stop.set(true);
        server
    };
    let ((), server) = tokio::join!(calls, faults);
    drop(server);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let calls = log.calls.borrow();
    if std::env::var("BENCH_SAMPLES").is_ok() {
        for (at, s) in calls.iter() {
            eprintln!(
                "{system} {:.3} took {:.3} load {:?} ok {}",
                ms(at.duration_since(calls[0].0)),
                ms(s.took),
                s.load.map(ms),
                s.ok
            );
        }
    }
    let killed = log.killed.get().expect("killed");
    let ready = log.ready.get().expect("restarted");
    let ok_calls = calls.iter().filter(|(_, s)| s.ok).count();
    let added = |s: &Seen| s.took.saturating_sub(s.load.unwrap_or_default());
    // The first call to return after the kill (it may have been sent just
    // before) met the dead connection: the kill is detected once it has
    // returned.
    let first = calls.iter().find(|(at, s)| *at + s.took >= killed);
    let detected = first.map(|(at, s)| *at + s.took);
    let after_refused: Vec<Duration> = calls
        .iter()
        .filter(|(at, _)| detected.is_some_and(|d| *at >= d))
        .map(|(_, s)| added(s))
        .collect();
    let max = |d: &[Duration]| d.iter().max().copied().map_or(f64::NAN, ms);
    let from_kill: Vec<Duration> = calls
        .iter()
        .filter(|(at, s)| *at + s.took >= killed)
        .map(|(_, s)| added(s))
        .collect();
    let while_down = calls
        .iter()
        .filter(|(at, _)| *at >= killed && *at < ready)
        .count();
    let elapsed = calls
        .last()
        .map(|(at, s)| (*at + s.took).duration_since(calls[0].0))
        .unwrap_or_default();
    Row::new("redis_killed", system)
        .with("calls", calls.len() as u64)
        .with("ok_calls", ok_calls as u64)
        .with("failed_calls", (calls.len() - ok_calls) as u64)
        .with(
            "first_call_after_kill_ms",
            first.map_or(f64::NAN, |(_, s)| ms(s.took)),
        )
        .with("max_added_ms_after_refused", max(&after_refused))
        .with(
            "p99_added_ms_after_refused",
            percentiles(&after_refused).p99,
        )
        .with("max_added_ms_from_kill", max(&from_kill))
        .with("down_ms", ms(ready.duration_since(killed)))
        .with("calls_while_down", while_down as u64)
        .with(
            "recovered_after_ms",
            log.recovered()
                .map_or(f64::INFINITY, |r| ms(r.duration_since(ready))),
        )
        .with(
            "calls_per_s",
            calls.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        )
}

pub async fn redis_killed(_: &Redis) -> Vec<Row> {
    let mut rows = Vec::new();

    let server = Redis::start_own();
    let service = ThisService {
        cache: Cache::builder()
            .redis(server.url.as_str())
            .namespace("bench")
            .build()
            .expect("a valid URL"),
        probe: Arc::default(),
    };
    let expected = Placement::sample(ID);
    let probe = Arc::clone(&service.probe);
    rows.push(
        killed_system("this", server, &probe, || async {
            service.get(ID).await == expected
        })
        .await,
    );

    let server = Redis::start_own();
    // redis-rs defaults, as the seed's code would use them.
    let conn = ConnectionManager::new(server.client())
        .await
        .expect("connects");
    let probe = Probe::default();
    let key = format!("killed:{ID}");
    rows.push(
        killed_system("hand_written", server, &probe, || {
            let mut conn = conn.clone();
            let (key, probe, expected) = (&key, &probe, &expected);
            async move {
                systems::hand_written_get(&mut conn, key, 3600, || probe.load(ID)).await
                    == *expected
            }
        })
        .await,
    );

    let server = Redis::start_own();
    let _ = systems::CACHED_CRATE_KILLED_URL.set(server.url.clone());
    rows.push(
        killed_system("cached_crate", server, &CACHED_CRATE_PROBE, || {
            let expected = &expected;
            async move {
                matches!(systems::cached_crate_killed_get(ID).await, Ok(p) if p == *expected)
            }
        })
        .await,
    );
    rows
}
