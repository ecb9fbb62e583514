//! Stampede protection against real `redis-server`s (and the memory backend
//! where the behaviour is per process), one module per mechanism.
//!
//! Several `Cache`s on one Redis behave as several processes do (each has
//! its own single-flight table); `child_processes` uses real child
//! processes of this test binary.

use std::time::Duration;

use cached_runtime::{Cache, cached};
use cached_tests::{Source, SourceDown};

mod child_processes;
mod early_refresh;
mod leases;
mod shared_reads;
mod single_flight;
mod stale;

/// A service whose loads are slow, counted, and can be made to fail or
/// panic (see [`Source`]).
#[derive(Clone)]
struct Svc {
    cache: Cache,
    source: Source,
}

impl Svc {
    fn new(cache: Cache, delay: Duration) -> Svc {
        Svc {
            cache,
            source: Source::slow(delay),
        }
    }

    /// The same "database" behind a different cache: another process.
    fn sharing_source_with(&self, cache: Cache) -> Svc {
        Svc {
            cache,
            source: self.source.clone(),
        }
    }

    fn loads(&self) -> u32 {
        self.source.loads()
    }

    #[cached(prefix = "slow", ttl = "10s", key = id)]
    async fn slow(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }

    #[cached(prefix = "nolock", ttl = "10s", key = id, lock = false)]
    async fn unlocked(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }

    #[cached(prefix = "lease", ttl = "10s", key = id, lease = "1s", wait = "10s")]
    async fn short_lease(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }

    #[cached(prefix = "bounded", ttl = "10s", key = id, wait = "300ms")]
    async fn bounded(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }

    #[cached(prefix = "swr", ttl = "300ms", stale = "1m", key = id)]
    async fn swr(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }

    #[cached(prefix = "early", ttl = "2s", early_refresh = true, key = id)]
    async fn early(&self, id: u64) -> Result<u64, SourceDown> {
        let _ = id;
        self.source.load().await
    }
}

async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task completes"));
    }
    out
}

/// How many of the `names` commands the server has run to completion
/// (`INFO commandstats`: calls less failed calls, so a script retried after
/// `NOSCRIPT` counts once).
fn completed(server: &cached_tests::RedisServer, names: &[&str]) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !names.contains(&name) {
                return None;
            }
            let field = |f: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some(field("calls")? - field("failed_calls").unwrap_or(0))
        })
        .sum()
}

/// A cache on `server` whose operations wait up to 2 s: for tests that
/// count the commands a call sends, which a timeout under a loaded machine
/// would change (a timed-out write is released and retried).
fn patient(server: &cached_tests::RedisServer) -> cached_runtime::Cache {
    cached_tests::redis_cache_with(server, |b| b.op_timeout(std::time::Duration::from_secs(2)))
}
