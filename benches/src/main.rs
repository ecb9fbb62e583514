//! The benchmark harness: this framework beside the alternatives, in one run.
//!
//! ```text
//! cargo run --release -p cached-bench                 # every scenario
//! cargo run --release -p cached-bench -- seq_hit ...  # only those named
//! ```
//!
//! Starts its own `redis-server` on a free loopback port (or uses
//! `REDIS_URL`), prints a table on stderr and one JSON object per
//! measurement on stdout.

mod fixture;
mod harness;
mod scenarios;
mod systems;

use std::future::Future;
use std::pin::Pin;

use harness::{Redis, Row};

type Scenario = for<'a> fn(&'a Redis) -> Pin<Box<dyn Future<Output = Vec<Row>> + 'a>>;

/// Every scenario, in the order a full run takes them.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("memory_hit", |r| Box::pin(scenarios::hits::memory_hit(r))),
    ("near_hit", |r| Box::pin(scenarios::near::near_hit(r))),
    ("seq_hit", |r| Box::pin(scenarios::hits::seq_hit(r))),
    ("concurrent_hit", |r| {
        Box::pin(scenarios::hits::concurrent_hit(r))
    }),
    ("concurrent_hit_keys", |r| {
        Box::pin(scenarios::hits::concurrent_hit_keys(r))
    }),
    ("stampede", |r| Box::pin(scenarios::stampede::stampede(r))),
    ("stampede_processes", |r| {
        Box::pin(scenarios::stampede::stampede_processes(r))
    }),
    ("hot_key_expiry", |r| {
        Box::pin(scenarios::stampede::hot_key_expiry(r))
    }),
    ("soft_timeout", |r| {
        Box::pin(scenarios::stampede::soft_timeout(r))
    }),
    ("near_invalidation", |r| {
        Box::pin(scenarios::near::near_invalidation(r))
    }),
    ("stale_set_race", |r| {
        Box::pin(scenarios::invalidation::stale_set_race(r))
    }),
    ("invalidate_pattern", |r| {
        Box::pin(scenarios::invalidation::invalidate_pattern(r))
    }),
    ("batch_get", |r| Box::pin(scenarios::batch::batch_get(r))),
    ("batch_get_partial", |r| {
        Box::pin(scenarios::batch::batch_get_partial(r))
    }),
    ("batch_get_cold", |r| {
        Box::pin(scenarios::batch::batch_get_cold(r))
    }),
    ("large_value", |r| {
        Box::pin(scenarios::codecs::large_value(r))
    }),
    ("redis_frozen", |r| {
        Box::pin(scenarios::faults::redis_frozen(r))
    }),
    ("redis_killed", |r| {
        Box::pin(scenarios::faults::redis_killed(r))
    }),
    ("consistency", |r| {
        Box::pin(scenarios::consistency::consistency(r))
    }),
    ("cluster_failover", |r| {
        Box::pin(scenarios::cluster::cluster_failover(r))
    }),
    ("invalidate_tag", |r| {
        Box::pin(scenarios::cluster::invalidate_tag(r))
    }),
    // Last: it installs a metrics recorder for the rest of the run.
    ("memory_hit_metrics", |r| {
        Box::pin(scenarios::hits::memory_hit_metrics(r))
    }),
];

fn main() {
    // A worker process of the `consistency` scenario (this binary,
    // re-executed by the checker): nothing else runs in it.
    if let Ok(json) = std::env::var(cached_tests::consistency::WORKER_ENV) {
        cached_tests::consistency::worker_main(&json);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a Tokio runtime: {e}");
            std::process::exit(1);
        }
    };

    // `__profile SYSTEM N`: N sequential hits of `this`, `this_unshared` or
    // `raw`, for an instruction profiler; `__profile_concurrent SYSTEM N`:
    // the same shared among 64 tasks.
    if let Some(mode @ ("__profile" | "__profile_concurrent")) = args.first().map(String::as_str) {
        let concurrent = mode == "__profile_concurrent";
        let system = args.get(1).cloned().unwrap_or_default();
        let n: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
        let redis = Redis::start();
        runtime.block_on(scenarios::hits::profile(&redis, &system, n, concurrent));
        return;
    }

    // `__profile_cluster SYSTEM N`: N sequential hits on a local cluster.
    if args.first().map(String::as_str) == Some("__profile_cluster") {
        let system = args.get(1).cloned().unwrap_or_default();
        let n: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
        runtime.block_on(scenarios::cluster::profile(&system, n));
        return;
    }

    // `__profile_memory N`: N memory hits of `this`, then N of moka, for
    // an instruction profiler.
    if args.first().map(String::as_str) == Some("__profile_memory") {
        let n: u32 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
        runtime.block_on(scenarios::hits::profile_memory(n));
        return;
    }

    // `__profile_near N`: N near-tier hits of one warm key.
    if args.first().map(String::as_str) == Some("__profile_near") {
        let n: u32 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
        let redis = Redis::start();
        runtime.block_on(scenarios::near::profile(&redis, n));
        return;
    }

    // `__profile_near_keys SECS`: `this_near` of `concurrent_hit_keys`
    // alone, for a sampling profiler.
    if args.first().map(String::as_str) == Some("__profile_near_keys") {
        let secs: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
        let redis = Redis::start();
        runtime.block_on(scenarios::near::profile_keys(&redis, secs));
        return;
    }

    // `__profile_batch SYSTEM N`: N warm 100-id batch calls of `this`,
    // `raw_pipeline_getrange`, `raw_mget` or `hand_written`, for a profiler.
    if args.first().map(String::as_str) == Some("__profile_batch") {
        let system = args.get(1).cloned().unwrap_or_default();
        let n: u32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(2_000);
        let redis = Redis::start();
        runtime.block_on(scenarios::batch::profile(&redis, &system, n));
        return;
    }

    // `near_invalidation`'s reader process.
    if args.first().map(String::as_str) == Some("__near_reader") {
        if let [_, url] = args.as_slice() {
            runtime.block_on(scenarios::near::reader(url));
            return;
        }
        eprintln!("usage: __near_reader URL");
        std::process::exit(2);
    }

    // A child process of a multi-process scenario.
    if args.first().map(String::as_str) == Some("__child") {
        if let [_, _, system, url, start_at, rest @ ..] = args.as_slice() {
            let start_at = start_at.parse().unwrap_or(0);
            let cluster = rest.first().map(String::as_str);
            runtime.block_on(scenarios::stampede::child(system, url, start_at, cluster));
            return;
        }
        eprintln!("usage: __child SCENARIO SYSTEM URL START_AT_MS [CLUSTER_URLS]");
        std::process::exit(2);
    }

    let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
    let chosen: Vec<&(&str, Scenario)> = if args.is_empty() {
        SCENARIOS.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for a in &args {
            match SCENARIOS.iter().find(|(n, _)| n == a) {
                Some(s) => chosen.push(s),
                None => {
                    eprintln!("unknown scenario `{a}`; valid: {}", names.join(", "));
                    std::process::exit(2);
                }
            }
        }
        chosen
    };

    let redis = Redis::start();
    let _ = systems::CACHED_CRATE_URL.set(redis.url.clone());
    eprintln!(
        "redis: {}   value: {} bytes of JSON",
        redis.url,
        fixture::json_len()
    );

    let mut all = Vec::new();
    for (name, scenario) in chosen {
        eprintln!("running {name} ...");
        let rows = runtime.block_on(scenario(&redis));
        for row in &rows {
            println!("{}", row.json());
        }
        all.extend(rows);
    }
    eprintln!("{}", harness::table(&all));
}
