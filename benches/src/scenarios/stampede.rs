//! `stampede`, `stampede_processes`, `hot_key_expiry`: many callers, one key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cached_runtime::{Cache, cached};
use tokio::sync::watch;

use crate::fixture::Placement;
use crate::harness::{Redis, Row, percentiles};
use crate::scenarios::hits::redis_cache;
use crate::systems::{
    CACHED_CRATE_LOAD_MS, CACHED_CRATE_LOADS, This, cached_crate_get, hand_written_get,
    seed_lock_get,
};

const CALLERS: usize = 1000;
const LOAD: Duration = Duration::from_millis(50);

/// Starts `CALLERS` tasks together and returns their latencies.
async fn together<F, Fut>(callers: usize, call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (go, ready) = watch::channel(false);
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (call, mut ready) = (call.clone(), ready.clone());
            tokio::spawn(async move {
                let _ = ready.wait_for(|go| *go).await;
                let started = Instant::now();
                call(i).await;
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await; // every task is parked on `ready`
    let _ = go.send(true);
    let mut out = Vec::with_capacity(callers);
    for t in tasks {
        out.push(t.await.unwrap_or(Duration::MAX));
    }
    out
}

fn row(scenario: &'static str, system: &str, loads: u64, latencies: &[Duration]) -> Row {
    let p = percentiles(latencies);
    Row::new(scenario, system)
        .with("loads", loads)
        .with("p50_ms", p.p50)
        .with("p99_ms", p.p99)
        .with("max_ms", p.max)
        .with("callers", latencies.len() as u64)
}

pub async fn stampede(redis: &Redis) -> Vec<Row> {
    let mut rows = Vec::new();

    let this = This::new(redis_cache(redis), LOAD);
    let t = this.clone();
    let lat = together(CALLERS, move |_| {
        let t = t.clone();
        async move {
            std::hint::black_box(t.get(4242).await);
        }
    })
    .await;
    rows.push(row(
        "stampede",
        "this",
        this.loads.load(Ordering::Relaxed),
        &lat,
    ));

    // The same on a local Redis Cluster.
    let cluster = cached_tests::RedisCluster::start();
    let this = This::new(crate::scenarios::cluster::cluster_cache(&cluster), LOAD);
    let _ = this.cache.ping().await;
    let t = this.clone();
    let lat = together(CALLERS, move |_| {
        let t = t.clone();
        async move {
            std::hint::black_box(t.get(4242).await);
        }
    })
    .await;
    rows.push(row(
        "stampede",
        "this_cluster",
        this.loads.load(Ordering::Relaxed),
        &lat,
    ));
    drop(cluster);

    let loads = Arc::new(AtomicU64::new(0));
    let conn = redis::aio::ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let (c, l) = (conn.clone(), loads.clone());
    let lat = together(CALLERS, move |_| {
        let (mut c, l) = (c.clone(), l.clone());
        async move {
            hand_written_get(&mut c, "hand:stampede", 300, || async {
                l.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(LOAD).await;
                Placement::sample(1)
            })
            .await;
        }
    })
    .await;
    rows.push(row(
        "stampede",
        "hand_written",
        loads.load(Ordering::Relaxed),
        &lat,
    ));

    let loads = Arc::new(AtomicU64::new(0));
    let (c, l) = (conn.clone(), loads.clone());
    let lat = together(CALLERS, move |_| {
        let (mut c, l) = (c.clone(), l.clone());
        async move {
            seed_lock_get(&mut c, "seed:stampede", move || {
                let l = l.clone();
                async move {
                    l.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(LOAD).await;
                    Placement::sample(1)
                }
            })
            .await;
        }
    })
    .await;
    rows.push(row(
        "stampede",
        "seed_lock",
        loads.load(Ordering::Relaxed),
        &lat,
    ));

    CACHED_CRATE_LOAD_MS.store(LOAD.as_millis() as u64, Ordering::Relaxed);
    let before = CACHED_CRATE_LOADS.load(Ordering::Relaxed);
    let lat = together(CALLERS, |_| async {
        let _ = std::hint::black_box(cached_crate_get(4242).await);
    })
    .await;
    CACHED_CRATE_LOAD_MS.store(0, Ordering::Relaxed);
    rows.push(row(
        "stampede",
        "cached_crate",
        CACHED_CRATE_LOADS.load(Ordering::Relaxed) - before,
        &lat,
    ));
    rows
}

// ---- across processes --------------------------------------------------

const PROCESSES: usize = 4;
const PER_PROCESS: usize = 250;

/// A loader that counts itself in Redis, so every process's loads add up.
#[derive(Clone)]
struct Counted {
    cache: Cache,
    conn: redis::aio::ConnectionManager,
}

impl Counted {
    async fn load(&self) -> Placement {
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = redis::cmd("INCR")
            .arg("bench:stampede_processes:loads")
            .query_async(&mut conn)
            .await;
        tokio::time::sleep(LOAD).await;
        Placement::sample(7)
    }

    #[cached(prefix = "processes", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Placement {
        let _ = id;
        self.load().await
    }
}

/// In a child process: waits for the start time, runs the callers, prints
/// their latencies (ms) as one JSON array. With `cluster` (its seed URLs,
/// comma-separated), the cache is on that cluster; `url`'s server counts
/// the loads.
pub async fn child(system: &str, url: &str, start_at_ms: u64, cluster: Option<&str>) {
    let client = redis::Client::open(url).expect("a valid URL");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connects");
    let cache = match cluster {
        Some(urls) => crate::scenarios::cluster::cluster_cache_at(urls.split(',')),
        None => Cache::builder()
            .redis(url)
            .namespace("bench")
            .build()
            .expect("builds"),
    };
    let counted = Counted { cache, conn };
    // Warm the connections before the start, as a running service would be.
    let _ = counted.cache.ping().await;
    let wait = start_at_ms.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let system = system.to_owned();
    let lat = together(PER_PROCESS, move |_| {
        let (c, system) = (counted.clone(), system.clone());
        async move {
            if system.starts_with("this") {
                std::hint::black_box(c.get(7).await);
            } else {
                let mut conn = c.conn.clone();
                hand_written_get(&mut conn, "hand:stampede_processes", 300, || c.load()).await;
            }
        }
    })
    .await;
    let ms: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!("{}", serde_json::to_string(&ms).unwrap_or_default());
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn stampede_processes(redis: &Redis) -> Vec<Row> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return vec![Row::new("stampede_processes", "this").with("error", e.to_string())],
    };
    let mut rows = Vec::new();
    let cluster = cached_tests::RedisCluster::start();
    let cluster_urls = cluster.urls().join(",");
    for system in ["this", "this_cluster", "hand_written"] {
        redis.cmd::<()>(&[
            "DEL",
            "bench:stampede_processes:loads",
            "bench:processes:7",
            "hand:stampede_processes",
        ]);
        // The callers of the (here) 4 processes start at the same instant;
        // the processes start a second before, so none is still booting.
        let start_at = now_ms() + 1500;
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let mut command = tokio::process::Command::new(&exe);
                command.args([
                    "__child",
                    "stampede_processes",
                    system,
                    &redis.url,
                    &start_at.to_string(),
                ]);
                if system == "this_cluster" {
                    command.arg(&cluster_urls);
                }
                command
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("the bench binary re-runs itself")
            })
            .collect();
        let mut lat = Vec::new();
        for child in children {
            let out = child.wait_with_output().await.expect("child exits");
            let ms: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            lat.extend(ms.into_iter().map(|m| Duration::from_secs_f64(m / 1e3)));
        }
        let loads: Option<u64> = redis.cmd(&["GET", "bench:stampede_processes:loads"]);
        rows.push(
            row("stampede_processes", system, loads.unwrap_or(0), &lat)
                .with("processes", PROCESSES as u64),
        );
    }
    rows
}

// ---- a hot key expiring, with and without early refresh ----------------

pub async fn hot_key_expiry(redis: &Redis) -> Vec<Row> {
    const TASKS: usize = 64;
    const RUN: Duration = Duration::from_secs(10);
    let mut rows = Vec::new();
    for (system, early) in [("this", true), ("this_no_early", false)] {
        let this = This::new(redis_cache(redis), Duration::from_millis(20));
        let key = if early { 1 } else { 2 };
        let warm = move |t: This| async move {
            if early {
                t.get_early(key).await
            } else {
                t.get_hot(key).await
            }
        };
        warm(this.clone()).await;
        let misses_before = this.cache.stats_for("hot").map_or(0, |s| s.misses);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (t, stop) = (this.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        std::hint::black_box(warm(t.clone()).await);
                        lat.push(started.elapsed());
                    }
                    lat
                })
            })
            .collect();
        tokio::time::sleep(RUN).await;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap_or_default());
        }
        let stats = this.cache.stats_for("hot").unwrap_or_default();
        let p = percentiles(&lat);
        rows.push(
            Row::new("hot_key_expiry", system)
                .with("misses_after_warmup", stats.misses - misses_before)
                .with("loads", this.loads.load(Ordering::Relaxed))
                .with("early_refreshes", stats.early_refreshes)
                .with("calls", lat.len() as u64)
                .with("p99_ms", p.p99)
                .with("max_ms", p.max)
                .with("load_ms", 20u64),
        );
    }
    rows
}

/// The source of `soft_timeout`: its first load is quick, later ones take
/// `SOFT_LOAD`.
#[derive(Clone)]
struct SoftSource {
    cache: Cache,
    version: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
}

const SOFT_LOAD: Duration = Duration::from_millis(500);

impl SoftSource {
    async fn load(&self) -> u64 {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let version = self.version.load(Ordering::SeqCst);
        if version > 1 {
            tokio::time::sleep(SOFT_LOAD).await;
        }
        version
    }

    #[cached(prefix = "soft", ttl = "1s", stale = "1h", soft_timeout = "20ms", key = id)]
    async fn soft(&self, id: u64) -> u64 {
        let _ = id;
        self.load().await
    }

    #[cached(prefix = "hard_expiry", ttl = "1s", key = id)]
    async fn expiring(&self, id: u64) -> u64 {
        let _ = id;
        self.load().await
    }
}

/// `soft_timeout`: 64 callers of an entry past its TTL whose refresh takes
/// 500 ms. With `stale` and `soft_timeout = "20ms"` (`this`) they wait 20
/// ms for the refresh and are served the stale value; the entry holds the
/// refreshed value once the load is over. Beside it, the same function
/// without a stale window (`without_stale`): every caller waits the load.
pub async fn soft_timeout(redis: &Redis) -> Vec<Row> {
    const CALLERS: usize = 64;
    let cache = Cache::builder()
        .redis(redis.url.as_str())
        .namespace("bench_soft")
        .ttl_jitter(0.0)
        .build()
        .expect("a valid URL");
    let mut rows = Vec::new();
    for system in ["this", "without_stale"] {
        let s = SoftSource {
            cache: cache.clone(),
            version: Arc::new(AtomicU64::new(1)),
            loads: Arc::default(),
        };
        let _ = cache.invalidate_pattern("*").await;
        let soft = system == "this";
        let call = move |s: SoftSource| async move {
            if soft {
                s.soft(1).await
            } else {
                s.expiring(1).await
            }
        };
        call(s.clone()).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        s.version.store(2, Ordering::SeqCst);
        let stale_answers = Arc::new(AtomicU64::new(0));
        let latencies = {
            let (s, stale_answers) = (s.clone(), Arc::clone(&stale_answers));
            together(CALLERS, move |_| {
                let (s, stale_answers) = (s.clone(), Arc::clone(&stale_answers));
                async move {
                    if call(s).await == 1 {
                        stale_answers.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .await
        };
        // The load is over: the entry holds its value, read without a load.
        tokio::time::sleep(SOFT_LOAD + Duration::from_millis(200)).await;
        let loads = s.loads.load(Ordering::SeqCst);
        let replaced = call(s.clone()).await == 2 && s.loads.load(Ordering::SeqCst) == loads;
        rows.push(
            row("soft_timeout", system, loads - 1, &latencies)
                .with("stale_answers", stale_answers.load(Ordering::SeqCst))
                .with("replaced", replaced),
        );
    }
    rows
}
