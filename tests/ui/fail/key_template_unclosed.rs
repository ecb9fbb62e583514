#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "placements", ttl = "1m", key = "video:{video_id")]
    async fn list(&self, video_id: u64) -> Vec<Placement> {
        vec![Placement { id: video_id }]
    }
}

fn main() {}
