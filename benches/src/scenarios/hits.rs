//! `memory_hit`, `seq_hit`, `concurrent_hit`: the cost of a hit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cached_runtime::Cache;

use crate::fixture::{Placement, json_len};
use crate::harness::{Redis, Row, median};
use crate::systems::{This, cached_crate_get, hand_written_get, raw_get};

const REPEATS: usize = 5;

/// A warm key read in a loop on one task; median over repeats, in ns.
async fn time_loop<F, Fut>(ops: u32, mut op: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let started = Instant::now();
        for _ in 0..ops {
            op().await;
        }
        samples.push(started.elapsed().as_nanos() as f64 / f64::from(ops));
    }
    median(samples)
}

/// A warm memory hit through `get`, then moka's own `get`, in ns per op.
async fn this_and_moka<F, Fut>(get: F) -> (f64, f64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Placement>,
{
    const OPS: u32 = 1_000_000;
    get(1).await;
    let this_ns = time_loop(OPS, || async {
        std::hint::black_box(get(std::hint::black_box(1)).await);
    })
    .await;

    let moka: moka::future::Cache<u64, Placement> = moka::future::Cache::new(100_000);
    moka.insert(1, Placement::sample(1)).await;
    let moka_ns = time_loop(OPS, || async {
        std::hint::black_box(moka.get(&std::hint::black_box(1)).await);
    })
    .await;
    (this_ns, moka_ns)
}

pub async fn memory_hit(_redis: &Redis) -> Vec<Row> {
    let this = This::new(Cache::memory(), Duration::ZERO);
    let (this_ns, moka_ns) = this_and_moka(|id| this.get(id)).await;

    vec![
        Row::new("memory_hit", "this")
            .with("ns_per_op", this_ns)
            .with("ratio_vs_moka", this_ns / moka_ns)
            .with("value_bytes", json_len() as u64),
        Row::new("memory_hit", "moka")
            .with("ns_per_op", moka_ns)
            .with("value_bytes", json_len() as u64),
    ]
}

/// A call site of its own for `memory_hit_metrics`, so that its counters are
/// made after the recorder is installed (handles made before record
/// nothing).
struct WithMetrics {
    cache: Cache,
}

impl WithMetrics {
    #[cached_runtime::cached(prefix = "placement_m", ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> Placement {
        Placement::sample(id)
    }
}

/// `memory_hit` with a Prometheus recorder installed (no HTTP listener: the
/// recording is what costs, not the scraping). Runs last in a full run, as
/// the recorder stays installed.
pub async fn memory_hit_metrics(_redis: &Redis) -> Vec<Row> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| eprintln!("memory_hit_metrics: {e}"))
        .ok();
    let this = WithMetrics {
        cache: Cache::memory(),
    };
    let (this_ns, moka_ns) = this_and_moka(|id| this.get(id)).await;
    // Proof that the hits were recorded, not dropped by a no-op handle.
    let recorded = handle
        .map(|h| {
            h.render()
                .lines()
                .filter(|l| l.starts_with("cache_hits_total{cache=\"placement_m\"}"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    vec![
        Row::new("memory_hit_metrics", "this")
            .with("ns_per_op", this_ns)
            .with("ratio_vs_moka", this_ns / moka_ns)
            .with("hits_recorded", recorded),
        Row::new("memory_hit_metrics", "moka").with("ns_per_op", moka_ns),
    ]
}

/// A boxed operation, so systems of different types can take turns.
type Op<'a> = Box<dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>;

/// Rounds of `seq_hit`: each a loop of every system in turn.
const SEQ_ROUNDS: usize = 9;

/// Times each system's loop in turn, round after round, so that drift in
/// the machine's speed falls on every system alike; ns per op, per system
/// and round.
async fn interleaved(ops: u32, systems: &mut [Op<'_>]) -> Vec<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(SEQ_ROUNDS); systems.len()];
    for _ in 0..SEQ_ROUNDS {
        for (i, op) in systems.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..ops {
                op().await;
            }
            samples[i].push(started.elapsed().as_nanos() as f64 / f64::from(ops));
        }
    }
    samples
}

/// The median of each round's `samples / baseline` (runs made moments
/// apart, so the machine's drift cancels out), and the lowest and highest.
fn paired_ratios(samples: &[f64], baseline: &[f64]) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = samples.iter().zip(baseline).map(|(s, b)| s / b).collect();
    ratios.sort_by(f64::total_cmp);
    let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
    (median(ratios), low, high)
}

/// The systems of `seq_hit` and `concurrent_hit`, in the order they run.
const HIT_SYSTEMS: [&str; 5] = [
    "this",
    "this_unshared",
    "raw_redis",
    "hand_written",
    "cached_crate",
];

/// One row per system of [`HIT_SYSTEMS`]: `figure` adds its median sample,
/// then the paired ratios to `raw_redis`.
fn hit_rows(
    scenario: &'static str,
    samples: Vec<Vec<f64>>,
    figure: impl Fn(Row, f64) -> Row,
) -> Vec<Row> {
    let raw = samples[2].clone();
    HIT_SYSTEMS
        .iter()
        .zip(samples)
        .map(|(system, samples)| {
            let (ratio, low, high) = paired_ratios(&samples, &raw);
            figure(Row::new(scenario, *system), median(samples))
                .with("ratio_vs_raw_redis", ratio)
                .with("ratio_min", low)
                .with("ratio_max", high)
        })
        .collect()
}

pub async fn seq_hit(redis: &Redis) -> Vec<Row> {
    const OPS: u32 = 4_000;
    let manager = || async {
        redis::aio::ConnectionManager::new(redis.client())
            .await
            .expect("connects")
    };

    let this = This::new(redis_cache(redis), Duration::ZERO);
    this.get(1).await;
    let raw = manager().await;
    let json = serde_json::to_vec(&Placement::sample(1)).expect("serializes");
    redis.cmd::<()>(&[
        "SET",
        "raw:placement:1",
        std::str::from_utf8(&json).expect("utf-8"),
    ]);
    let hand = manager().await;
    let _ = cached_crate_get(1).await;

    let mut systems: Vec<Op<'_>> = vec![
        Box::new(|| {
            let this = this.clone();
            Box::pin(async move {
                std::hint::black_box(this.get(1).await);
            })
        }),
        Box::new(|| {
            let this = this.clone();
            Box::pin(async move {
                std::hint::black_box(this.get_unshared(1).await);
            })
        }),
        Box::new(|| {
            let mut c = raw.clone();
            Box::pin(async move {
                std::hint::black_box(raw_get(&mut c, "raw:placement:1").await);
            })
        }),
        Box::new(|| {
            let mut c = hand.clone();
            Box::pin(async move {
                let load = || async { Placement::sample(1) };
                std::hint::black_box(
                    hand_written_get(&mut c, "hand:placement:1", 3600, load).await,
                );
            })
        }),
        Box::new(|| {
            Box::pin(async {
                let _ = std::hint::black_box(cached_crate_get(1).await);
            })
        }),
    ];
    let samples = interleaved(OPS, &mut systems).await;
    // `this_unshared` (`lock = false`) reads without the single flight; in
    // one task at a time nobody shares a read, so the two differ only by
    // the flight's bookkeeping.
    hit_rows("seq_hit", samples, |row, ns| {
        row.with("us_per_op", ns / 1000.0)
    })
}

/// A shareable operation for the throughput runs.
type SharedOp = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// 64 tasks hitting one warm key for 1 s, each system in turn, round after
/// round (as `interleaved`); ops/s per system and round.
async fn throughput(systems: &[SharedOp]) -> Vec<Vec<f64>> {
    const TASKS: usize = 64;
    const RUN: Duration = Duration::from_secs(1);
    const ROUNDS: usize = 7;
    let mut samples = vec![Vec::new(); systems.len()];
    for _ in 0..ROUNDS {
        for (i, op) in systems.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            op().await;
                            n += 1;
                        }
                        count.fetch_add(n, Ordering::Relaxed);
                    })
                })
                .collect();
            let started = Instant::now();
            tokio::time::sleep(RUN).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
            samples[i].push(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
        }
    }
    if std::env::var("BENCH_SAMPLES").is_ok() {
        eprintln!("samples: {samples:?}");
    }
    samples
}

pub async fn concurrent_hit(redis: &Redis) -> Vec<Row> {
    // Shared through one `Arc`, as raw shares its one connection handle.
    let this = Arc::new(This::new(redis_cache(redis), Duration::ZERO));
    if std::env::var("BENCH_SAMPLES").is_ok() {
        let raw = redis::aio::ConnectionManager::new(redis.client())
            .await
            .expect("connects");
        let mut c = raw.clone();
        eprintln!(
            "future sizes: this.get {} typed get {} raw_get {} placement {}",
            std::mem::size_of_val(&this.get(1)),
            std::mem::size_of_val(&this.cache.get::<Placement>("k")),
            std::mem::size_of_val(&raw_get(&mut c, "k")),
            std::mem::size_of::<Placement>()
        );
    }
    this.get(1).await;
    let json = serde_json::to_vec(&Placement::sample(1)).expect("serializes");
    redis.cmd::<()>(&[
        "SET",
        "raw:placement:1",
        std::str::from_utf8(&json).expect("utf-8"),
    ]);
    let raw = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let hand = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let _ = cached_crate_get(1).await;

    let unshared = this.clone();
    let systems: Vec<SharedOp> = vec![
        Arc::new(move || {
            let this = this.clone();
            Box::pin(async move {
                std::hint::black_box(this.get(1).await);
            })
        }),
        Arc::new(move || {
            let this = unshared.clone();
            Box::pin(async move {
                std::hint::black_box(this.get_unshared(1).await);
            })
        }),
        Arc::new(move || {
            let mut c = raw.clone();
            Box::pin(async move {
                std::hint::black_box(raw_get(&mut c, "raw:placement:1").await);
            })
        }),
        Arc::new(move || {
            let mut c = hand.clone();
            Box::pin(async move {
                let load = || async { Placement::sample(1) };
                std::hint::black_box(
                    hand_written_get(&mut c, "hand:placement:1", 3600, load).await,
                );
            })
        }),
        Arc::new(|| {
            Box::pin(async {
                let _ = std::hint::black_box(cached_crate_get(1).await);
            })
        }),
    ];
    let samples = throughput(&systems).await;
    // `this` shares one GET among the callers of a key that arrive while it
    // is in flight; `this_unshared` (`lock = false`) reads once per call,
    // which is the cost of a hit itself.
    hit_rows("concurrent_hit", samples, |row, ops| {
        row.with("ops_per_s", ops).with("tasks", 64)
    })
}

pub fn redis_cache(redis: &Redis) -> Cache {
    Cache::builder()
        .redis(redis.url.as_str())
        .namespace("bench")
        .build()
        .expect("a valid URL")
}

/// N hits of one system, nothing else (see `__profile`): in sequence, or
/// shared among 64 tasks.
pub async fn profile(redis: &Redis, system: &str, n: u32, concurrent: bool) {
    let json = serde_json::to_vec(&Placement::sample(1)).expect("serializes");
    redis.cmd::<()>(&[
        "SET",
        "raw:placement:1",
        std::str::from_utf8(&json).expect("utf-8"),
    ]);
    let this = This::new(redis_cache(redis), Duration::ZERO);
    this.get(1).await;
    let mut raw = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    if !concurrent {
        for _ in 0..n {
            profile_op(&this, &mut raw, system).await;
        }
        return;
    }
    let this = Arc::new(this);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (this, mut raw, system) = (this.clone(), raw.clone(), system.to_owned());
            tokio::spawn(async move {
                for _ in 0..n / 64 {
                    profile_op(&this, &mut raw, &system).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// One hit of `system` for [`profile`].
async fn profile_op(this: &This, raw: &mut redis::aio::ConnectionManager, system: &str) {
    match system {
        "this" => drop(std::hint::black_box(this.get(1).await)),
        "this_unshared" => drop(std::hint::black_box(this.get_unshared(1).await)),
        _ => drop(std::hint::black_box(raw_get(raw, "raw:placement:1").await)),
    }
}
