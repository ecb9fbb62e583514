//! `redis_frozen`: graceful degradation while Redis does not answer.
//!
//! Warm a key, freeze Redis (SIGSTOP), make 200 sequential calls, thaw it,
//! make 200 more. Each system has a server of its own. Figures:
//! `ok_calls` (calls answered with the loader's value), `first_failure_ms`
//! (the first call after the freeze, which meets the timeout),
//! `p99_added_ms_while_open` (latency over the loader's own while the
//! breaker is open; for systems without one, every frozen call after the
//! first), and `recovered_after_ms` (from the thaw until a call is served
//! from Redis again).

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
