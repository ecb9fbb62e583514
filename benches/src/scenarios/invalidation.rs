//! `stale_set_race` and `invalidate_pattern`: invalidation that holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cache_evict, cached};
use redis::AsyncCommands as _;

use crate::harness::{Redis, Row};
use crate::scenarios::hits::redis_cache;

const KEYS: usize = 50;
const READERS: usize = 32;
const WRITERS: usize = 4;
const RUN: Duration = Duration::from_secs(3);
const RUNS: usize = 5;

/// The source of truth: a version per key.
type Versions = Arc<Mutex<Vec<u64>>>;

/// Reads the row, then takes up to 3 ms: a query a write can overtake.
async fn slow_read(versions: &Versions, id: usize) -> u64 {
    let version = versions.lock().map(|v| v[id]).unwrap_or(0);
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
    version
}

/// `this`: `#[cached]` and `#[cache_evict]`.
#[derive(Clone)]
struct This {
    cache: Cache,
    versions: Versions,
}

impl This {
    #[cached(prefix = "race", ttl = "5m", key = id)]
    async fn read(&self, id: usize) -> u64 {
        slow_read(&self.versions, id).await
    }

    #[cache_evict(keys = ["race:{id}"])]
    async fn write(&self, id: usize) {
        if let Ok(mut v) = self.versions.lock() {
            v[id] += 1;
        }
    }
}

/// Where `hand_written` keeps entries: the seed's code on Redis, or the
/// same pattern on moka.
#[derive(Clone)]
enum Store {
    Redis(redis::aio::ConnectionManager),
    Memory(moka::future::Cache<usize, u64>),
}

impl Store {
    async fn get(&self, id: usize) -> Option<u64> {
        match self {
            Store::Redis(c) => c
                .clone()
                .get(format!("hand:race:{id}"))
                .await
                .ok()
                .flatten(),
            Store::Memory(m) => m.get(&id).await,
        }
    }

    async fn set(&self, id: usize, v: u64) {
        match self {
            Store::Redis(c) => {
                let _: Result<(), _> = c.clone().set_ex(format!("hand:race:{id}"), v, 300).await;
            }
            Store::Memory(m) => m.insert(id, v).await,
        }
    }

    async fn delete(&self, id: usize) {
        match self {
            Store::Redis(c) => {
                let _: Result<(), _> = c.clone().del(format!("hand:race:{id}")).await;
            }
            Store::Memory(m) => m.invalidate(&id).await,
        }
    }
}

/// Runs the workload once; returns how many keys are stale afterwards.
async fn race(this: Option<This>, hand: Option<Store>, versions: Versions) -> usize {
    let until = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let (this, hand, versions) = (this.clone(), hand.clone(), versions.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let id = fastrand::usize(0..KEYS);
                match (&this, &hand) {
                    (Some(t), _) => {
                        t.read(id).await;
                    }
                    (None, Some(h)) => {
                        if h.get(id).await.is_none() {
                            let v = slow_read(&versions, id).await;
                            h.set(id, v).await;
                        }
                    }
                    (None, None) => return,
                }
            }
        }));
    }
    for _ in 0..WRITERS {
        let (this, hand, versions) = (this.clone(), hand.clone(), versions.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let id = fastrand::usize(0..KEYS);
                match (&this, &hand) {
                    (Some(t), _) => t.write(id).await,
                    (None, Some(h)) => {
                        if let Ok(mut v) = versions.lock() {
                            v[id] += 1;
                        }
                        h.delete(id).await;
                    }
                    (None, None) => return,
                }
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Quiesced. A key is stale if the cache holds another version than the source.
    let truth = versions.lock().map(|v| v.clone()).unwrap_or_default();
    let mut stale = 0;
    for (id, version) in truth.iter().enumerate() {
        let cached = match (&this, &hand) {
            (Some(t), _) => t.cache.get::<u64>(&format!("race:{id}")).await,
            (None, Some(h)) => h.get(id).await,
            (None, None) => None,
        };
        if cached.is_some_and(|c| c != *version) {
            stale += 1;
        }
    }
    stale
}

pub async fn stale_set_race(redis: &Redis) -> Vec<Row> {
    let mut rows = Vec::new();
    for backend in ["redis", "memory", "near"] {
        for system in ["this", "hand_written"] {
            if backend == "near" && system == "hand_written" {
                // The control has no near tier.
                continue;
            }
            let mut per_run = Vec::new();
            for _ in 0..RUNS {
                redis.cmd::<()>(&["FLUSHALL"]);
                let versions: Versions = Arc::new(Mutex::new(vec![0; KEYS]));
                let stale = if system == "this" {
                    let cache = match backend {
                        "redis" => redis_cache(redis),
                        "near" => crate::scenarios::near::near_cache(redis),
                        _ => Cache::memory(),
                    };
                    race(
                        Some(This {
                            cache,
                            versions: versions.clone(),
                        }),
                        None,
                        versions,
                    )
                    .await
                } else {
                    let store = if backend == "redis" {
                        Store::Redis(
                            redis::aio::ConnectionManager::new(redis.client())
                                .await
                                .expect("connects"),
                        )
                    } else {
                        Store::Memory(moka::future::Cache::new(10_000))
                    };
                    race(None, Some(store), versions).await
                };
                per_run.push(stale as u64);
            }
            rows.push(
                Row::new(
                    "stale_set_race",
                    if backend == "near" {
                        "this_near/redis".to_owned()
                    } else {
                        format!("{system}/{backend}")
                    },
                )
                .with("stale_keys_after_quiesce", serde_json::json!(per_run))
                .with("max_stale_keys", per_run.iter().copied().max().unwrap_or(0))
                .with("keys", KEYS as u64)
                .with("seconds_per_run", RUN.as_secs()),
            );
        }
    }
    rows
}

pub async fn invalidate_pattern(redis: &Redis) -> Vec<Row> {
    const N: usize = 100_000;
    redis.cmd::<()>(&["FLUSHALL"]);
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("bench:doomed:{i}"))
                .arg("x")
                .ignore();
        }
        let _: Result<(), _> = pipe.query_async(&mut conn).await;
    }
    // Keys outside the pattern, which must survive.
    for i in 0..1000 {
        let _: Result<(), _> = conn.set(format!("bench:kept:{i}"), "x").await;
    }
    // Log every command with its duration, to find the slowest one.
    redis.cmd::<()>(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    redis.cmd::<()>(&["CONFIG", "SET", "slowlog-max-len", "100000"]);
    redis.cmd::<()>(&["SLOWLOG", "RESET"]);

    let cache = redis_cache(redis);
    let started = Instant::now();
    let removed = cache.invalidate_pattern("doomed:*").await.unwrap_or(0);
    let took = started.elapsed();

    let log: Vec<redis::Value> = redis.cmd(&["SLOWLOG", "GET", "100000"]);
    redis.cmd::<()>(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"]);
    let mut max_us = 0u64;
    let mut commands = 0u64;
    let mut over_10ms = 0u64;
    for entry in log {
        // [id, timestamp, duration µs, [command, args...], ...]
        if let redis::Value::Array(fields) = entry
            && let (Some(redis::Value::Int(us)), Some(redis::Value::Array(argv))) =
                (fields.get(2), fields.get(3))
            && let Some(redis::Value::BulkString(name)) = argv.first()
        {
            let name = String::from_utf8_lossy(name).to_uppercase();
            if name == "SCAN" || name == "UNLINK" {
                commands += 1;
                let us = u64::try_from(*us).unwrap_or(0);
                max_us = max_us.max(us);
                if us > 10_000 {
                    over_10ms += 1;
                }
            }
        }
    }
    let kept: usize = redis.cmd(&["DBSIZE"]);
    vec![
        Row::new("invalidate_pattern", "this")
            .with("keys", removed)
            .with("seconds", took.as_secs_f64())
            .with("keys_per_s", removed as f64 / took.as_secs_f64())
            .with("commands", commands)
            .with("max_command_ms", max_us as f64 / 1e3)
            .with("commands_over_10ms", over_10ms)
            .with("other_keys_left", kept as u64),
    ]
}
