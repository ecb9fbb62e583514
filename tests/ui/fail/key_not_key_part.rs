#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

struct Filter {
    video_id: u64,
}

impl Service {
    #[cached(prefix = "placements", ttl = "1m", key = filter)]
    async fn list(&self, filter: Filter) -> Vec<Placement> {
        vec![Placement { id: filter.video_id }]
    }
}

fn main() {}
