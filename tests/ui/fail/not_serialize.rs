#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

struct Service {
    cache: Cache,
}

struct Report {
    total: u64,
}

impl Service {
    #[cached(prefix = "report", ttl = "5m", key = id)]
    async fn report(&self, id: u64) -> Option<Report> {
        Some(Report { total: id })
    }
}

fn main() {}
