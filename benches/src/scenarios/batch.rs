//! `batch_get`: 100 warm ids read by one `#[cached(batch)]` call, beside a
//! raw `MGET` + decode of the same 100 values, a raw pipeline of 100 `GET`s
//! (and of 100 bounded `GETRANGE`s, as the framework reads) + decode, the
//! two bounded reads a Lua script can make (100 `GETRANGE`s; one `MGET`
//! dropping values over the bound) + decode, 100 sequential single-key
//! cached calls, and `hand_written`: the keys built, one `MGET`, and the
//! values decoded into the map returned, as a developer would write it.
//! `this_tagged`: the batch with `tags` per id, each id read, leased and
//! stored as a single tagged call is (on one server, every id's read in
//! one script call; the leases and the writes each in one pipeline).
//!
//! `batch_get_partial`: 100 ids of which 10 are missing, through a loopback
//! proxy that delays every packet, so each round trip to Redis shows as
//! that delay: how many calls of the function, with which ids, and how
//! many round trips before the function was called and after it returned;
//! the batch untagged (`this`) and tagged (`this_tagged`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use cached_tests::Proxy;
use redis::aio::ConnectionManager;

use crate::fixture::Placement;
use crate::harness::{Redis, Row, median};

/// Ids per batch.
const IDS: u64 = 100;

/// One call of a batch body: the ids asked, when it began and ended.
type BodyCall = (Vec<u64>, Instant, Instant);

/// A service with a single-key reader and a batch reader of the same
/// entries, recording every call of the batch body.
#[derive(Clone)]
struct Placements {
    cache: Cache,
    calls: Arc<Mutex<Vec<BodyCall>>>,
}

impl Placements {
    fn new(cache: Cache) -> Placements {
        Placements {
            cache,
            calls: Arc::default(),
        }
    }

    #[cached(prefix = "placement", ttl = "1h", key = id)]
    async fn get(&self, id: u64) -> Placement {
        Placement::sample(id)
    }

    #[cached(prefix = "placement", ttl = "1h", batch)]
    async fn get_many(&self, ids: Vec<u64>) -> HashMap<u64, Placement> {
        self.rows(ids)
    }

    /// The batch bodies' query: every id's row, the call recorded.
    fn rows(&self, ids: Vec<u64>) -> HashMap<u64, Placement> {
        let began = Instant::now();
        let found: HashMap<u64, Placement> =
            ids.iter().map(|&id| (id, Placement::sample(id))).collect();
        let mut asked = ids;
        asked.sort_unstable();
        self.calls
            .lock()
            .expect("calls")
            .push((asked, began, Instant::now()));
        found
    }
}

/// The same batch with its ids tagged, each under a tag of the list and
/// one of its own, on entries of their own.
impl Placements {
    #[cached(
        prefix = "placement_tagged",
        ttl = "1h",
        batch,
        tags = ["placements", "placement:{ids}"]
    )]
    async fn get_many_tagged(&self, ids: Vec<u64>) -> HashMap<u64, Placement> {
        self.rows(ids)
    }
}

fn cache(url: &str, namespace: &str) -> Cache {
    Cache::builder()
        .redis(url)
        .namespace(namespace)
        .op_timeout(Duration::from_secs(2))
        .build()
        .expect("a valid URL")
}

/// Rounds: each times every system in turn.
const ROUNDS: usize = 9;

pub async fn batch_get(redis: &Redis) -> Vec<Row> {
    const CALLS: u32 = 200;
    let ids: Vec<u64> = (1..=IDS).collect();
    let this = Placements::new(cache(&redis.url, "bench_batch"));
    this.get_many(ids.clone()).await;
    this.get_many_tagged(ids.clone()).await;
    // The raw systems read plain JSON under keys of their own.
    let (mut conn, raw_keys) = raw_rows(redis, &ids).await;

    let systems = [
        "this",
        "raw_mget",
        "raw_pipeline",
        "raw_pipeline_getrange",
        "raw_script_getrange",
        "sequential_single",
        "raw_script_mget",
        "hand_written",
        "this_tagged",
    ];
    let mut samples = vec![Vec::with_capacity(ROUNDS); systems.len()];
    for _ in 0..ROUNDS {
        for (i, system) in systems.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..CALLS {
                let got = match *system {
                    "this" => this.get_many(ids.clone()).await.len(),
                    "raw_mget" => raw_mget(&mut conn, &raw_keys).await,
                    "raw_pipeline" => raw_pipeline(&mut conn, &raw_keys, false).await,
                    "raw_pipeline_getrange" => raw_pipeline(&mut conn, &raw_keys, true).await,
                    "raw_script_getrange" => {
                        raw_script(&mut conn, &raw_keys, &SCRIPT_GETRANGE).await
                    }
                    "raw_script_mget" => raw_script(&mut conn, &raw_keys, &SCRIPT_MGET).await,
                    "hand_written" => hand_written(&mut conn, &ids).await.len(),
                    "this_tagged" => this.get_many_tagged(ids.clone()).await.len(),
                    _ => {
                        let mut n = 0;
                        for id in &ids {
                            std::hint::black_box(this.get(*id).await);
                            n += 1;
                        }
                        n
                    }
                };
                assert_eq!(got, IDS as usize, "{system}: every id");
            }
            samples[i].push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS));
        }
    }
    assert_eq!(
        this.calls.lock().expect("calls").len(),
        2,
        "warm: each batch body ran once, to warm it"
    );
    let ratio = |a: usize, b: usize| {
        median(
            samples[a]
                .iter()
                .zip(&samples[b])
                .map(|(x, y)| x / y)
                .collect(),
        )
    };
    systems
        .iter()
        .enumerate()
        .map(|(i, system)| {
            Row::new("batch_get", *system)
                .with("ids", IDS)
                .with("us_per_call", median(samples[i].clone()))
                .with("ratio_vs_raw_mget", ratio(i, 1))
                .with("ratio_vs_hand_written", ratio(i, 7))
                .with("sequential_over_this", ratio(5, i))
        })
        .collect()
}

/// A connection for the raw systems, and the keys under which it stored
/// each id's row as plain JSON.
async fn raw_rows(redis: &Redis, ids: &[u64]) -> (ConnectionManager, Vec<String>) {
    let raw_keys: Vec<String> = ids.iter().map(|id| format!("raw_batch:{id}")).collect();
    let mut conn = ConnectionManager::new(redis.client())
        .await
        .expect("connects");
    let mut set = redis::pipe();
    for (id, key) in ids.iter().zip(&raw_keys) {
        let json = serde_json::to_vec(&Placement::sample(*id)).expect("serializes");
        set.set(key, json).ignore();
    }
    let () = set.query_async(&mut conn).await.expect("stores");
    (conn, raw_keys)
}

/// `MGET` of every key and a decode of each value.
async fn raw_mget(conn: &mut ConnectionManager, keys: &[String]) -> usize {
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(keys)
        .query_async(conn)
        .await
        .expect("reads");
    decode_all(values)
}

/// A pipeline of one `GET` per key (or, `bounded`, one `GETRANGE` of at
/// most 1 MiB, as the framework reads) and a decode of each value.
async fn raw_pipeline(conn: &mut ConnectionManager, keys: &[String], bounded: bool) -> usize {
    let mut pipe = redis::pipe();
    for key in keys {
        if bounded {
            pipe.getrange(key, 0, 1 << 20);
        } else {
            pipe.get(key);
        }
    }
    let values: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await.expect("reads");
    decode_all(values)
}

/// 100 bounded `GETRANGE`s in one Lua script.
static SCRIPT_GETRANGE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('GETRANGE', k, 0, ARGV[1]) end return out",
    )
});

/// One `MGET` in a Lua script that drops values over the bound (so only
/// bounded values cross the network).
static SCRIPT_MGET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local v = redis.call('MGET', unpack(KEYS)) local max = tonumber(ARGV[1]) for i = 1, #v do if v[i] and #v[i] > max then v[i] = false end end return v",
    )
});

/// One of the scripts above over every key (bound 1 MiB) and a decode of
/// each value.
async fn raw_script(
    conn: &mut ConnectionManager,
    keys: &[String],
    script: &redis::Script,
) -> usize {
    let mut call = script.key(keys);
    call.arg(1 << 20);
    let values: Vec<Option<Vec<u8>>> = call.invoke_async(conn).await.expect("reads");
    decode_all(values)
}

/// What a developer writes by hand for `get_many` when every id is warm:
/// the keys built for this call, one `MGET`, each value decoded into the
/// map the function returns (so the values live as long as the caller's,
/// unlike `decode_all`'s).
async fn hand_written(conn: &mut ConnectionManager, ids: &[u64]) -> HashMap<u64, Placement> {
    let keys: Vec<String> = ids.iter().map(|id| format!("raw_batch:{id}")).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(conn)
        .await
        .expect("reads");
    ids.iter()
        .zip(values)
        .filter_map(|(id, v)| Some((*id, serde_json::from_slice::<Placement>(&v?).ok()?)))
        .collect()
}

fn decode_all(values: Vec<Option<Vec<u8>>>) -> usize {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_slice::<Placement>(&v?).ok())
        .map(std::hint::black_box)
        .count()
}

pub async fn batch_get_partial(redis: &Redis) -> Vec<Row> {
    const RUNS: u64 = 7;
    const MISSING: u64 = 10;
    /// Added to every packet each way: a round trip takes twice this more.
    const DELAY: Duration = Duration::from_millis(10);
    let port: u16 = redis
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("the server's port");
    let proxy = Proxy::start(port);
    let this = Placements::new(cache(&proxy.url(), "bench_batch_partial"));
    // Both of the cache's connections made (a miss uses both) before any
    // delay, so that no connect or handshake is counted.
    this.get_many(vec![0]).await;
    // And the tagged scripts loaded.
    this.get_many_tagged(vec![0]).await;
    this.calls.lock().expect("calls").clear();
    proxy.set_delay(DELAY);
    let rtt = round_trip(&proxy).await;

    let mut rows = Vec::new();
    for (system, tagged) in [("this", false), ("this_tagged", true)] {
        let (mut before, mut after, mut calls_ok, mut ids_ok) = (Vec::new(), Vec::new(), 0, 0);
        for run in 0..RUNS {
            let base = 1_000 * (run + 1);
            let ids: Vec<u64> = (base..base + IDS).collect();
            // Warm 90 of them: untagged through the single-key reader,
            // tagged by a batch of those 90.
            let missing: Vec<u64> = (0..MISSING).map(|i| base + i * (IDS / MISSING)).collect();
            let direct = Placements::new(cache(&redis.url, "bench_batch_partial"));
            let warm: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| !missing.contains(id))
                .collect();
            if tagged {
                direct.get_many_tagged(warm).await;
            } else {
                for id in warm {
                    direct.get(id).await;
                }
            }
            this.calls.lock().expect("calls").clear();
            let started = Instant::now();
            let got = if tagged {
                this.get_many_tagged(ids.clone()).await
            } else {
                this.get_many(ids.clone()).await
            };
            let ended = Instant::now();
            assert_eq!(got.len(), IDS as usize, "every id");
            let calls = this.calls.lock().expect("calls").clone();
            calls_ok += usize::from(calls.len() == 1);
            if let Some((asked, began, finished)) = calls.first() {
                ids_ok += usize::from(*asked == missing);
                before.push(began.duration_since(started).as_secs_f64() / rtt.as_secs_f64());
                after.push(ended.duration_since(*finished).as_secs_f64() / rtt.as_secs_f64());
            }
        }
        let runs = RUNS as usize;
        rows.push(
            Row::new("batch_get_partial", system)
                .with("ids", IDS)
                .with("missing", MISSING)
                .with("runs", runs)
                .with("runs_with_one_call", calls_ok)
                .with("runs_asking_exactly_the_missing", ids_ok)
                .with("rtt_ms", rtt.as_secs_f64() * 1e3)
                .with("round_trips_before_load", median(before.clone()))
                .with("round_trips_after_load", median(after.clone()))
                .with(
                    "round_trips_before_max",
                    before.iter().copied().fold(0.0, f64::max),
                )
                .with(
                    "round_trips_after_max",
                    after.iter().copied().fold(0.0, f64::max),
                ),
        );
    }
    rows
}

/// `batch_get_cold`: 100 ids none of which is cached, so every id is read,
/// leased, loaded (in one call of the body, which returns at once) and
/// stored: the cost of a batch's miss path itself, untagged and tagged,
/// on a loopback Redis. Rounds alternate the two, each on ids of its own.
pub async fn batch_get_cold(redis: &Redis) -> Vec<Row> {
    const ROUNDS: u64 = 31;
    let this = Placements::new(cache(&redis.url, "bench_batch_cold"));
    // Connections made and scripts loaded before anything is timed.
    this.get_many(vec![0]).await;
    this.get_many_tagged(vec![0]).await;
    let systems = ["this", "this_tagged"];
    let mut samples = vec![Vec::new(); systems.len()];
    for round in 0..ROUNDS {
        for (i, system) in systems.iter().enumerate() {
            let base = 1_000_000 * (round + 1) + 10_000 * i as u64;
            let ids: Vec<u64> = (base..base + IDS).collect();
            let started = Instant::now();
            let got = match *system {
                "this_tagged" => this.get_many_tagged(ids).await,
                _ => this.get_many(ids).await,
            };
            samples[i].push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(got.len(), IDS as usize, "every id");
        }
    }
    let calls = this.calls.lock().expect("calls").len();
    assert_eq!(
        calls as u64,
        2 * ROUNDS + 2,
        "one call of the body per batch"
    );
    let untagged = median(samples[0].clone());
    systems
        .iter()
        .zip(samples)
        .map(|(system, samples)| {
            let us = median(samples);
            Row::new("batch_get_cold", *system)
                .with("ids", IDS)
                .with("us_per_call", us)
                .with("ratio_vs_untagged", us / untagged)
        })
        .collect()
}

/// The round trip through the proxy as it is now: the median of PINGs on
/// a connection of its own.
async fn round_trip(proxy: &Proxy) -> Duration {
    let client = redis::Client::open(proxy.url()).expect("a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let mut times = Vec::new();
    for _ in 0..11 {
        let started = Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("pongs");
        times.push(started.elapsed().as_secs_f64());
    }
    Duration::from_secs_f64(median(times))
}

/// `n` warm 100-id batch calls of `system` (`__profile_batch`).
pub async fn profile(redis: &Redis, system: &str, n: u32) {
    let ids: Vec<u64> = (1..=IDS).collect();
    let this = Placements::new(cache(&redis.url, "bench_batch_profile"));
    this.get_many(ids.clone()).await;
    let (mut conn, raw_keys) = raw_rows(redis, &ids).await;
    for _ in 0..n {
        let got = match system {
            "raw_pipeline_getrange" => raw_pipeline(&mut conn, &raw_keys, true).await,
            "raw_mget" => raw_mget(&mut conn, &raw_keys).await,
            "hand_written" => hand_written(&mut conn, &ids).await.len(),
            _ => this.get_many(ids.clone()).await.len(),
        };
        std::hint::black_box(got);
    }
}
