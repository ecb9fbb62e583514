//! `memory_hit`, `seq_hit`, `concurrent_hit`, `concurrent_hit_keys`: the
//! cost of a hit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cached_runtime::Cache;

use crate::fixture::{Placement, json_len};
use crate::harness::{Redis, Row, median};
use crate::systems::{CACHED_CRATE_LOADS, This, cached_crate_get, hand_written_get, raw_get};

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
pub(crate) async fn this_and_moka<F, Fut>(get: F) -> (f64, f64)
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

/// Rounds of `seq_hit`, at least: each a loop of every system in turn.
const SEQ_ROUNDS: usize = 9;

/// How many rounds of `systems` to run, at least `at_least`: a whole
/// number of turns of the order (see [`turn`]), so that each system runs
/// as often in each place of it.
fn balanced_rounds(systems: usize, at_least: usize) -> usize {
    at_least.div_ceil(systems) * systems
}

/// The systems of round `round` in the order they run: each round starts
/// one system later. In a fixed order the first system always ran just
/// after the last one's loop, and measured 1-2% slower than the same
/// system run third (an A/A run of `seq_hit`, `raw_redis` in both places,
/// eight runs on 2026-12-05); turning the order spreads that over all.
fn turn(round: usize, systems: usize) -> impl Iterator<Item = usize> {
    (0..systems).map(move |step| (round + step) % systems)
}

/// Times each system's loop in turn, round after round, so that drift in
/// the machine's speed falls on every system alike; ns per op, per system
/// and round.
async fn interleaved(ops: u32, systems: &mut [Op<'_>]) -> Vec<Vec<f64>> {
    let rounds = balanced_rounds(systems.len(), SEQ_ROUNDS);
    let mut samples = vec![Vec::with_capacity(rounds); systems.len()];
    for round in 0..rounds {
        for i in turn(round, systems.len()) {
            let op = &mut systems[i];
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

/// The systems of `seq_hit` and `concurrent_hit`. The last, the control,
/// is `raw_redis` again, measured as another system: its ratio to
/// `raw_redis` is the harness's own noise in that run.
const HIT_SYSTEMS: [&str; 6] = [
    "this",
    "this_unshared",
    "raw_redis",
    "hand_written",
    "cached_crate",
    "raw_redis_again",
];

/// One row per system of [`HIT_SYSTEMS`]: `figure` adds its median sample,
/// then the paired ratios to `raw_redis`.
fn hit_rows(
    scenario: &'static str,
    samples: Vec<Vec<f64>>,
    figure: impl Fn(Row, f64) -> Row,
) -> Vec<Row> {
    hit_rows_of(&HIT_SYSTEMS, scenario, samples, figure)
}

/// [`hit_rows`] for these systems (`raw_redis` the third).
fn hit_rows_of(
    systems: &[&'static str],
    scenario: &'static str,
    samples: Vec<Vec<f64>>,
    figure: impl Fn(Row, f64) -> Row,
) -> Vec<Row> {
    let raw = samples[2].clone();
    systems
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
        Box::new(|| {
            let mut c = raw.clone();
            Box::pin(async move {
                std::hint::black_box(raw_get(&mut c, "raw:placement:1").await);
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

/// A read of one key, by id, borrowing its system.
type KeyFuture<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One system of [`throughput`] and [`throughput_keys`]: its state, and how it reads key `id`.
/// A call borrows the state rather than cloning an `Arc` of it: 64 tasks
/// cloning one `Arc` per call would bounce its count between the cores,
/// a cost of the harness, not of the system (it held the fastest system,
/// the near tier, to two thirds of its rate).
struct KeySystem<S> {
    state: S,
    read: for<'a> fn(&'a S, u64) -> KeyFuture<'a>,
}

/// A [`KeySystem`] of any state.
trait KeyRead: Send + Sync {
    fn read(&self, id: u64) -> KeyFuture<'_>;
}

impl<S: Send + Sync> KeyRead for KeySystem<S> {
    fn read(&self, id: u64) -> KeyFuture<'_> {
        (self.read)(&self.state, id)
    }
}

/// A shareable system of [`throughput`] and [`throughput_keys`].
type KeyOp = Arc<dyn KeyRead>;

fn key_op<S: Send + Sync + 'static>(
    state: S,
    read: for<'a> fn(&'a S, u64) -> KeyFuture<'a>,
) -> KeyOp {
    Arc::new(KeySystem { state, read })
}

/// Tasks of the throughput runs.
const TASKS: usize = 64;

/// 64 tasks hitting one warm key (id 1) for 1 s, each system in turn,
/// round after round (as `interleaved`); ops/s per system and round.
async fn throughput(systems: &[KeyOp]) -> Vec<Vec<f64>> {
    rounds(systems.len(), |i, _round, _task, stop| {
        let op = systems[i].clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                op.read(1).await;
                n += 1;
            }
            n
        }
    })
    .await
}

/// `throughput` over many keys: each call's key drawn from `keys` (by a
/// generator of each task's own, seeded by round and task, so every system
/// gets the same draws).
async fn throughput_keys(systems: &[KeyOp], keys: &Arc<Zipf>) -> Vec<Vec<f64>> {
    rounds(systems.len(), |i, round, task, stop| {
        let (op, keys) = (systems[i].clone(), Arc::clone(keys));
        let seed = (round as u64 + 1) << 32 | task as u64;
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                op.read(keys.sample(&mut rng)).await;
                n += 1;
            }
            n
        }
    })
    .await
}

/// Runs [`TASKS`] tasks of each system for 1 s, each system in turn, round
/// after round (as `interleaved`, the order turned each round);
/// `task(system, round, task, stop)` is one task's loop, returning the
/// calls it made. Ops/s per system and round.
async fn rounds<F, Fut>(systems: usize, task: F) -> Vec<Vec<f64>>
where
    F: Fn(usize, usize, usize, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    const RUN: Duration = Duration::from_secs(1);
    const ROUNDS: usize = 7;
    let mut samples = vec![Vec::new(); systems];
    for round in 0..balanced_rounds(systems, ROUNDS) {
        for i in turn(round, systems) {
            let samples = &mut samples[i];
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| tokio::spawn(task(i, round, t, stop.clone())))
                .collect();
            let started = Instant::now();
            tokio::time::sleep(RUN).await;
            stop.store(true, Ordering::Relaxed);
            let mut count = 0;
            for t in tasks {
                count += t.await.unwrap_or(0);
            }
            samples.push(count as f64 / started.elapsed().as_secs_f64());
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

    // Each call borrows its system's state, as in `concurrent_hit_keys`
    // (see [`KeySystem`]); the id is always 1.
    let systems: Vec<KeyOp> = vec![
        key_op(this.clone(), |this, id| {
            Box::pin(async move {
                std::hint::black_box(this.get(id).await);
            })
        }),
        key_op(this, |this, id| {
            Box::pin(async move {
                std::hint::black_box(this.get_unshared(id).await);
            })
        }),
        // A `ConnectionManager` takes `&mut self`: each call clones its
        // handle, as each of a service's requests would.
        key_op(raw.clone(), |raw, _| {
            let mut c = raw.clone();
            Box::pin(async move {
                std::hint::black_box(raw_get(&mut c, "raw:placement:1").await);
            })
        }),
        key_op(hand, |hand, _| {
            let mut c = hand.clone();
            Box::pin(async move {
                let load = || async { Placement::sample(1) };
                std::hint::black_box(
                    hand_written_get(&mut c, "hand:placement:1", 3600, load).await,
                );
            })
        }),
        key_op((), |(), id| {
            Box::pin(async move {
                let _ = std::hint::black_box(cached_crate_get(id).await);
            })
        }),
        key_op(raw, |raw, _| {
            let mut c = raw.clone();
            Box::pin(async move {
                std::hint::black_box(raw_get(&mut c, "raw:placement:1").await);
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

/// Keys of `concurrent_hit_keys`, and the Zipf exponent of their
/// popularity.
const KEYS: u64 = 10_000;
const ZIPF_S: f64 = 1.0;

/// Zipf(s) popularity over ids `1..=n`: id `k` is drawn with probability
/// proportional to `1 / k^s` (with s = 1 and 10,000 ids, id 1 takes 10.2%
/// of the draws, the first 100 ids 53%).
#[derive(Debug)]
pub struct Zipf {
    /// Cumulative probabilities, the last 1.
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        let mut sum = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                sum += (k as f64).powf(-s);
                sum
            })
            .collect();
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    /// An id in `1..=n`, by inverting the distribution function.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        let u = rng.f64();
        let i = self
            .cdf
            .partition_point(|c| *c <= u)
            .min(self.cdf.len() - 1);
        i as u64 + 1
    }
}

/// `concurrent_hit` over [`KEYS`] warm keys of Zipf popularity: 64 tasks,
/// each call's key drawn at random, every system drawing the same keys.
/// `this` shares a GET only among callers of one key that arrive while it is
/// in flight, so here it shares on the popular keys and not on the rest.
pub async fn concurrent_hit_keys(redis: &Redis) -> Vec<Row> {
    let this = Arc::new(This::new(redis_cache(redis), Duration::ZERO));
    // The same keys read through the near tier: a cache of its own (an L1
    // of its own) over the same Redis entries.
    let near = Arc::new(This::new(
        crate::scenarios::near::near_cache(redis),
        Duration::ZERO,
    ));
    let raw = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let hand = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let hand_loads = Arc::new(AtomicU64::new(0));
    let raw_misses = Arc::new(AtomicU64::new(0));
    let raw_again_misses = Arc::new(AtomicU64::new(0));

    // Warm every key of every system, through the system itself (raw: SET).
    let json = serde_json::to_vec(&Placement::sample(1)).expect("serializes");
    let mut pipe = redis::pipe();
    for id in 1..=KEYS {
        pipe.set(format!("raw:placement:{id}"), &json).ignore();
    }
    let mut conn = redis.client().get_connection().expect("connects");
    let () = pipe.query(&mut conn).expect("the raw keys are set");
    let mut warm = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (this, mut hand) = (this.clone(), hand.clone());
        warm.spawn(async move {
            for id in (1..=KEYS).filter(|id| id % 16 == lane) {
                this.get(id).await;
                let key = format!("hand:placement:{id}");
                hand_written_get(
                    &mut hand,
                    &key,
                    3600,
                    || async move { Placement::sample(id) },
                )
                .await;
                let _ = cached_crate_get(id).await;
            }
        });
    }
    while warm.join_next().await.is_some() {}
    // The near tier's L1, warmed by reading every key once (from Redis).
    for id in 1..=KEYS {
        near.get(id).await;
    }
    // The same keys on a local Redis Cluster: through this framework, and
    // as raw GETs of redis-rs's cluster client.
    let cluster = cached_tests::RedisCluster::start();
    let on_cluster = Arc::new(This::new(
        crate::scenarios::cluster::cluster_cache(&cluster),
        Duration::ZERO,
    ));
    let raw_cluster = redis::cluster::ClusterClient::new(cluster.urls())
        .expect("valid seed URLs")
        .get_async_connection()
        .await
        .expect("connects");
    let raw_cluster_misses = Arc::new(AtomicU64::new(0));
    let mut warm = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (this, mut raw, json) = (on_cluster.clone(), raw_cluster.clone(), json.clone());
        warm.spawn(async move {
            for id in (1..=KEYS).filter(|id| id % 16 == lane) {
                this.get(id).await;
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(format!("raw:placement:{id}"))
                    .arg(&json)
                    .query_async(&mut raw)
                    .await;
            }
        });
    }
    while warm.join_next().await.is_some() {}
    let cluster_loads = on_cluster.loads.load(Ordering::Relaxed);
    let this_loads = this.loads.load(Ordering::Relaxed);
    let crate_loads = CACHED_CRATE_LOADS.load(Ordering::Relaxed);

    // The same cache and keys, loads counted apart.
    let unshared = Arc::new(This::new(this.cache.clone(), Duration::ZERO));
    let systems: Vec<KeyOp> = vec![
        key_op(this.clone(), |this, id| {
            Box::pin(async move {
                std::hint::black_box(this.get(id).await);
            })
        }),
        key_op(unshared.clone(), |this, id| {
            Box::pin(async move {
                std::hint::black_box(this.get_unshared(id).await);
            })
        }),
        key_op((raw.clone(), raw_misses.clone()), raw_key_read),
        key_op((hand, hand_loads.clone()), |(hand, loads), id| {
            let mut c = hand.clone();
            Box::pin(async move {
                let key = format!("hand:placement:{id}");
                let load = || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    Placement::sample(id)
                };
                std::hint::black_box(hand_written_get(&mut c, &key, 3600, load).await);
            })
        }),
        key_op((), |(), id| {
            Box::pin(async move {
                let _ = std::hint::black_box(cached_crate_get(id).await);
            })
        }),
        key_op(near.clone(), |near, id| {
            Box::pin(async move {
                std::hint::black_box(near.get(id).await);
            })
        }),
        key_op(on_cluster.clone(), |this, id| {
            Box::pin(async move {
                std::hint::black_box(this.get(id).await);
            })
        }),
        key_op(
            (raw_cluster, raw_cluster_misses.clone()),
            |(raw, misses), id| {
                let mut c = raw.clone();
                Box::pin(async move {
                    let key = format!("raw:placement:{id}");
                    let got = crate::scenarios::cluster::raw_cluster_get(&mut c, &key).await;
                    if std::hint::black_box(got).is_none() {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                })
            },
        ),
        key_op((raw, raw_again_misses.clone()), raw_key_read),
    ];
    let samples = throughput_keys(&systems, &Arc::new(Zipf::new(KEYS, ZIPF_S))).await;
    let near_stats = near.cache.near_stats().unwrap_or_default();
    let near_cache_stats = near.cache.stats();
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("{near_stats:?}\n{near_cache_stats:?}");
    }
    // Calls that did not find their key (all should: the keys are warm and
    // live an hour).
    let missed = [
        this.loads.load(Ordering::Relaxed) - this_loads,
        unshared.loads.load(Ordering::Relaxed),
        raw_misses.load(Ordering::Relaxed),
        hand_loads.load(Ordering::Relaxed),
        CACHED_CRATE_LOADS.load(Ordering::Relaxed) - crate_loads,
        near.loads.load(Ordering::Relaxed),
        on_cluster.loads.load(Ordering::Relaxed) - cluster_loads,
        raw_cluster_misses.load(Ordering::Relaxed),
        raw_again_misses.load(Ordering::Relaxed),
    ];
    drop(cluster);
    // `this_cluster` beside `raw_cluster`, round by round.
    let (vs_cluster, vs_cluster_min, vs_cluster_max) = paired_ratios(&samples[6], &samples[7]);
    // Its 10,000 warm keys share prefixes with the scenarios after it (the
    // stampede's key among them): leave none behind.
    redis.cmd::<()>(&["FLUSHALL"]);
    let systems = [
        HIT_SYSTEMS[0],
        HIT_SYSTEMS[1],
        HIT_SYSTEMS[2],
        HIT_SYSTEMS[3],
        HIT_SYSTEMS[4],
        "this_near",
        "this_cluster",
        "raw_cluster",
        HIT_SYSTEMS[5],
    ];
    hit_rows_of(&systems, "concurrent_hit_keys", samples, |row, ops| {
        row.with("ops_per_s", ops)
            .with("tasks", TASKS as u64)
            .with("keys", KEYS)
            .with("zipf_s", ZIPF_S)
    })
    .into_iter()
    .zip(missed)
    .map(|(row, missed)| {
        let row = row.with("misses", missed);
        if row.system == "this_near" {
            // How many reads L1 answered (the warm-up's fills are L2 hits).
            row.with("l1_hits", near_stats.l1_hits)
                .with("l2_hits", near_stats.l2_hits)
        } else if row.system == "this_cluster" {
            row.with("ratio_vs_raw_cluster", vs_cluster)
                .with("ratio_vs_raw_cluster_min", vs_cluster_min)
                .with("ratio_vs_raw_cluster_max", vs_cluster_max)
        } else {
            row
        }
    })
    .collect()
}

/// `raw_redis`'s read of key `id` in `concurrent_hit_keys`, counting the
/// reads that found nothing.
fn raw_key_read<'a>(
    (raw, misses): &'a (redis::aio::ConnectionManager, Arc<AtomicU64>),
    id: u64,
) -> KeyFuture<'a> {
    // A `ConnectionManager` takes `&mut self`: each call clones its
    // handle, as each of a service's requests would.
    let mut c = raw.clone();
    Box::pin(async move {
        let key = format!("raw:placement:{id}");
        if std::hint::black_box(raw_get(&mut c, &key).await).is_none() {
            misses.fetch_add(1, Ordering::Relaxed);
        }
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

/// `__profile_memory`: `n` memory hits of `this`, then `n` of moka's own
/// `get`, each in a function of its own so a profile tells them apart.
pub async fn profile_memory(n: u32) {
    let this = This::new(Cache::memory(), Duration::ZERO);
    this.get(1).await;
    memory_hits_of_this(&this, n).await;
    let moka: moka::future::Cache<u64, Placement> = moka::future::Cache::new(100_000);
    moka.insert(1, Placement::sample(1)).await;
    memory_hits_of_moka(&moka, n).await;
}

#[inline(never)]
async fn memory_hits_of_this(this: &This, n: u32) {
    for _ in 0..n {
        std::hint::black_box(this.get(std::hint::black_box(1)).await);
    }
}

#[inline(never)]
async fn memory_hits_of_moka(moka: &moka::future::Cache<u64, Placement>, n: u32) {
    for _ in 0..n {
        std::hint::black_box(moka.get(&std::hint::black_box(1)).await);
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

#[cfg(test)]
mod tests {
    use super::{Zipf, balanced_rounds, turn};

    /// Over the rounds run, every system runs once a round, and as often
    /// in each place of the order as any other.
    #[test]
    fn every_system_takes_every_place_of_the_order_alike() {
        for (systems, at_least) in [(1, 7), (5, 9), (6, 9), (8, 7), (9, 7)] {
            let rounds = balanced_rounds(systems, at_least);
            assert!(rounds >= at_least, "{rounds} rounds, {at_least} asked");
            let mut places = vec![vec![0; systems]; systems];
            for round in 0..rounds {
                let order: Vec<usize> = turn(round, systems).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..systems).collect::<Vec<_>>(), "{order:?}");
                for (place, system) in order.into_iter().enumerate() {
                    places[system][place] += 1;
                }
            }
            let each = rounds / systems;
            assert!(
                places.iter().flatten().all(|&n| n == each),
                "{systems} systems, {rounds} rounds: {places:?}"
            );
        }
    }

    #[test]
    fn zipf_draws_ids_in_range_with_the_expected_head() {
        let zipf = Zipf::new(10_000, 1.0);
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 200_000;
        let (mut first, mut top100) = (0, 0);
        for _ in 0..n {
            let id = zipf.sample(&mut rng);
            assert!((1..=10_000).contains(&id), "{id} out of range");
            first += u32::from(id == 1);
            top100 += u32::from(id <= 100);
        }
        // 1 / H(10,000) = 0.102; H(100) / H(10,000) = 0.530.
        let share = |k: u32| f64::from(k) / f64::from(n);
        assert!((share(first) - 0.102).abs() < 0.005, "{}", share(first));
        assert!((share(top100) - 0.530).abs() < 0.01, "{}", share(top100));
    }
}
