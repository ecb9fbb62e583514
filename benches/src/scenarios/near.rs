//! `near_hit` and `near_invalidation`: the near tier (an in-process L1 in
//! front of Redis, kept by `CLIENT TRACKING`). Its rows in
//! `concurrent_hit_keys` and `stale_set_race` are in those scenarios.

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cached_runtime::{Cache, NearCache};
use serde::{Deserialize, Serialize};

use crate::harness::{Redis, Row};
use crate::systems::This;

/// A cache on `redis` with the near tier (default settings), namespace
/// `bench` (the same entries as `hits::redis_cache`).
pub fn near_cache(redis: &Redis) -> Cache {
    near_cache_at(&redis.url)
}

fn near_cache_at(url: &str) -> Cache {
    Cache::builder()
        .redis(url)
        .namespace("bench")
        .near_cache(NearCache::new())
        .build()
        .expect("a valid URL")
}

/// Waits until the near tier trusts its L1 (its tracking connection is
/// subscribed), for at most 5 s.
async fn until_trusted(cache: &Cache) -> bool {
    let _ = cache.ping().await;
    for _ in 0..500 {
        if cache.near_stats().is_some_and(|s| s.trusted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A warm key read through the near tier (an L1 hit each time, after the
/// first) beside moka's own `get`, ns per op.
pub async fn near_hit(redis: &Redis) -> Vec<Row> {
    redis.cmd::<()>(&["FLUSHALL"]);
    let this = This::new(near_cache(redis), Duration::ZERO);
    this.get(1).await;
    if !until_trusted(&this.cache).await {
        return vec![Row::new("near_hit", "this_near").with("error", "never subscribed")];
    }
    // Read once from Redis into L1, now that L1 is trusted.
    this.get(1).await;
    let (near_ns, moka_ns) = super::hits::this_and_moka(|id| this.get(id)).await;
    let stats = this.cache.near_stats().unwrap_or_default();
    vec![
        Row::new("near_hit", "this_near")
            .with("ns_per_op", near_ns)
            .with("ratio_vs_moka", near_ns / moka_ns)
            .with("l1_hits", stats.l1_hits)
            .with("l2_hits", stats.l2_hits),
        Row::new("near_hit", "moka").with("ns_per_op", moka_ns),
    ]
}

/// Writes made by the parent process.
const WRITES: u64 = 1_000;
/// How long after a write's return another process may still serve the
/// older value without it counting as a stale read.
const BOUND: Duration = Duration::from_millis(2);

/// One run of consecutive reads of the reader process that returned the
/// same version: its first and last read, times in ns since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRun {
    version: u64,
    reads: u64,
    first_start: u64,
    last_start: u64,
    last_end: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The source of truth: a key outside the cache's namespace, which the
/// writer sets before it writes the cache through, and loads read.
const SOURCE: &str = "near_inv_source";

#[derive(Clone)]
struct Versioned {
    cache: Cache,
    source: redis::aio::MultiplexedConnection,
}

impl Versioned {
    async fn new(url: &str, cache: Cache) -> Versioned {
        let source = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        Versioned { cache, source }
    }

    /// The reader's view: a hit, or (while a write-through holds the key,
    /// say) a load of the source's current version.
    #[cached_runtime::cached(prefix = "near_inv", ttl = "1h", key = id)]
    async fn read(&self, id: u64) -> u64 {
        let _ = id;
        let mut source = self.source.clone();
        redis::cmd("GET")
            .arg(SOURCE)
            .query_async::<Option<u64>>(&mut source)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Commits `version` to the source, then writes it through.
    #[cached_runtime::cache_put(prefix = "near_inv", ttl = "1h", key = id)]
    async fn write(&self, id: u64, version: u64) -> u64 {
        let _ = id;
        let mut source = self.source.clone();
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(SOURCE)
            .arg(version)
            .query_async(&mut source)
            .await;
        version
    }
}

/// The reader process of `near_invalidation`: reads the key in a loop
/// (20 µs apart) through its own near tier until its stdin closes, then prints its runs
/// of equal reads as JSON. Prints `ready` once it reads through a trusted
/// L1.
pub async fn reader(url: &str) {
    let cache = near_cache_at(url);
    let svc = Versioned::new(url, cache.clone()).await;
    svc.read(1).await;
    if !until_trusted(&cache).await {
        eprintln!("the reader's near tier never subscribed");
        std::process::exit(1);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut runs: Vec<ReadRun> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // A pause of 20 µs between reads (a read every ~25 µs, far finer
        // than the 2 ms bound): a reader spinning on one of this machine's
        // two cores starves the thread that receives the pushes, and the
        // figure would measure the scheduler.
        std::thread::sleep(Duration::from_micros(20));
        let start = now_ns();
        let version = svc.read(1).await;
        let end = now_ns();
        match runs.last_mut() {
            Some(run) if run.version == version => {
                run.reads += 1;
                run.last_start = start;
                run.last_end = end;
            }
            _ => runs.push(ReadRun {
                version,
                reads: 1,
                first_start: start,
                last_start: start,
                last_end: end,
            }),
        }
    }
    let stats = cache.near_stats().unwrap_or_default();
    eprintln!(
        "reader: {} L1 hits, {} L2 hits, {} invalidations received",
        stats.l1_hits, stats.l2_hits, stats.invalidations_received
    );
    println!("{}", serde_json::to_string(&runs).unwrap_or_default());
}

/// Two processes on one Redis, each with the near tier: this one writes
/// 1,000 versions of one key (`#[cache_put]`, 1-4 ms apart); a child reads
/// it in a loop. For each write: how long after it returned the child
/// still served an older version (`p99_ms`), and whether it did so more
/// than 2 ms after (`stale_reads_after`: writes for which it did).
pub async fn near_invalidation(redis: &Redis) -> Vec<Row> {
    redis.cmd::<()>(&["FLUSHALL"]);
    let writer = Versioned::new(&redis.url, near_cache(redis)).await;
    writer.write(1, 1).await;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return vec![Row::new("near_invalidation", "this_near").with("error", e.to_string())];
        }
    };
    let mut child = std::process::Command::new(exe)
        .args(["__near_reader", &redis.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the bench binary re-runs itself");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped");
    // The child's output is read on a thread of its own: `ready`, then
    // (after its stdin closes) its runs.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
    let output = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = ready_tx.send(line.trim() == "ready");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let _ = child.wait();
        rest
    });
    if !ready_rx.await.unwrap_or(false) {
        drop(stdin);
        return vec![
            Row::new("near_invalidation", "this_near").with("error", "the reader did not start"),
        ];
    }
    // Let the reader fill its L1 and settle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut returned = Vec::with_capacity(WRITES as usize);
    for version in 2..WRITES + 2 {
        writer.write(1, version).await;
        returned.push((version, now_ns()));
        tokio::time::sleep(Duration::from_micros(fastrand::u64(1_000..4_000))).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stdin);
    let rest = output.await.unwrap_or_default();
    let runs: Vec<ReadRun> = serde_json::from_str(rest.trim()).unwrap_or_default();
    if runs.is_empty() {
        return vec![Row::new("near_invalidation", "this_near").with("error", "no reads reported")];
    }

    // For write v (returned at t): the reads that began after t and still
    // returned a version older than v. Their last end is how long the
    // older value was still served.
    let mut delays_ms = Vec::with_capacity(returned.len());
    let mut stale_after = 0u64;
    let mut reads = 0u64;
    for run in &runs {
        reads += run.reads;
    }
    for &(version, t) in &returned {
        let last_older = runs
            .iter()
            .filter(|r| r.version < version && r.last_start > t)
            .map(|r| (r.last_start, r.last_end))
            .max();
        match last_older {
            Some((start, end)) => {
                delays_ms.push((end - t) as f64 / 1e6);
                if start > t + BOUND.as_nanos() as u64 {
                    stale_after += 1;
                }
            }
            None => delays_ms.push(0.0),
        }
    }
    delays_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| delays_ms[((delays_ms.len() - 1) as f64 * p).round() as usize];
    vec![
        Row::new("near_invalidation", "this_near")
            .with("writes", WRITES)
            .with("reader_reads", reads)
            .with("p50_ms", pct(0.5))
            .with("p99_ms", pct(0.99))
            .with("max_ms", pct(1.0))
            .with("stale_reads_after", stale_after)
            .with("bound_ms", BOUND.as_secs_f64() * 1e3),
    ]
}

/// `__profile_near N`: N near-tier hits of one warm key, for an instruction
/// profiler.
pub async fn profile(redis: &Redis, n: u32) {
    let this = This::new(near_cache(redis), Duration::ZERO);
    this.get(1).await;
    if !until_trusted(&this.cache).await {
        eprintln!("never subscribed");
        return;
    }
    this.get(1).await;
    near_hits(&this, n).await;
}

#[inline(never)]
async fn near_hits(this: &This, n: u32) {
    for _ in 0..n {
        std::hint::black_box(this.get(std::hint::black_box(1)).await);
    }
}

/// `__profile_near_keys SECS`: `concurrent_hit_keys`'s `this_near` alone,
/// 64 tasks for SECS seconds, for a sampling profiler.
pub async fn profile_keys(redis: &Redis, secs: u64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let this = Arc::new(This::new(near_cache(redis), Duration::ZERO));
    this.get(1).await;
    if !until_trusted(&this.cache).await {
        eprintln!("never subscribed");
        return;
    }
    let keys = Arc::new(super::hits::Zipf::new(10_000, 1.0));
    for id in 1..=10_000 {
        this.get(id).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let (this, keys, stop, total) =
                (this.clone(), keys.clone(), stop.clone(), total.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(this.get(keys.sample(&mut rng)).await);
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = total.load(Ordering::Relaxed);
    eprintln!("{:.0} ops/s", n as f64 / secs as f64);
}
