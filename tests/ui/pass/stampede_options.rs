#![deny(warnings, clippy::all)]

use std::sync::Arc;

use cached_runtime::{Cache, cached};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub id: u64,
}

/// A service that is cheap to clone, as background refresh needs.
#[derive(Clone)]
pub struct Service {
    cache: Cache,
    label: Arc<str>,
}

impl Service {
    /// Every stampede option at once.
    #[cached(
        prefix = "p",
        ttl = "5m",
        key = (id, lang),
        stale = "1h",
        early_refresh = 2.0,
        lease = "30s",
        wait = "2s"
    )]
    pub async fn get(&self, id: u64, lang: String) -> Result<Option<Placement>, std::io::Error> {
        let _ = (&self.label, lang);
        Ok(Some(Placement { id }))
    }

    /// Plain cache-aside, no locking.
    #[cached(prefix = "q", ttl = 60, key = id, lock = false)]
    pub async fn unlocked(&self, id: u64) -> Placement {
        Placement { id }
    }

    /// Early refresh with the default beta.
    #[cached(prefix = "r", ttl = 60, key = id, early_refresh = true)]
    pub async fn early(&self, id: u64) -> Placement {
        Placement { id }
    }
}

static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::memory);

/// A free function refreshing in the background.
#[cached(prefix = "f", ttl = "1m", key = id, stale = "10m", cache = CACHE)]
pub async fn free(id: u64) -> u64 {
    id
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = Service { cache: Cache::memory(), label: Arc::from("x") };
    assert!(s.get(1, "en".into()).await.is_ok());
    assert_eq!(s.unlocked(2).await.id, 2);
    assert_eq!(s.early(3).await.id, 3);
    assert_eq!(free(4).await, 4);
}
