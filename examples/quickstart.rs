//! The quick start: one cached function, a miss, then hits, then the counts.
//!
//! ```text
//! cargo run --example quickstart                                  # memory backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart # Redis
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placement {
    id: u64,
    video_id: u64,
    label: String,
}

#[derive(Debug)]
struct NotFound;

struct PlacementService {
    cache: Cache,
    queries: AtomicU32,
}

impl PlacementService {
    /// Pretends to be a slow database query.
    #[cached(prefix = "placement", ttl = "5m", key = placement_id)]
    async fn get_by_id(&self, placement_id: u64) -> Result<Option<Placement>, NotFound> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Some(Placement {
            id: placement_id,
            video_id: 7,
            label: format!("placement #{placement_id}"),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = Cache::builder()
        .from_env()
        .namespace("quickstart")
        .build()?;
    println!("backend: {}", cache.backend_kind());
    if cache.backend_kind() == "redis" {
        if let Err(e) = cache.ping().await {
            println!("warning: Redis does not answer ({e}); every call will go to the loader");
        }
        // Start from a cold key so the first call is a miss on every run.
        let _ = cache.invalidate("placement:42").await;
    }
    let service = PlacementService {
        cache,
        queries: AtomicU32::new(0),
    };

    let hits = |s: &PlacementService| s.cache.stats_for("placement").map_or(0, |st| st.hits);
    for call in 1..=4 {
        let hits_before = hits(&service);
        let started = Instant::now();
        let placement = service.get_by_id(42).await.map_err(|_| "not found")?;
        let took = started.elapsed();
        let label = placement.map(|p| p.label).unwrap_or_default();
        let kind = if hits(&service) > hits_before {
            "hit"
        } else {
            "miss (loaded)"
        };
        println!(
            "call {call}: {label:<16} {kind:<14} {:>8.3} ms",
            took.as_secs_f64() * 1e3
        );
    }

    let stats = service.cache.stats_for("placement").ok_or("no stats")?;
    println!(
        "placement cache: {} hits, {} misses, {} loads, hit rate {:.0}%; database queried {} time(s)",
        stats.hits,
        stats.misses,
        stats.loads,
        stats.hit_rate() * 100.0,
        service.queries.load(Ordering::Relaxed)
    );
    Ok(())
}
