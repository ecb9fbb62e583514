#![deny(warnings)]

//! Every form of a run-time `ttl`, and `soft_timeout`.

use std::collections::HashMap;
use std::time::Duration;

use cached_runtime::{cache_put, cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Doc {
    id: u64,
    archived: bool,
}

impl Doc {
    fn ttl(&self) -> Duration {
        if self.archived {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(60)
        }
    }
}

fn doc_ttl(d: &Doc) -> Duration {
    d.ttl()
}

const TTL: Duration = Duration::from_secs(90);

static LAZY_TTL: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| Duration::from_secs(45));

#[derive(Debug, Clone)]
struct Timeout;

impl From<cached_runtime::LoadTimeout> for Timeout {
    fn from(_: cached_runtime::LoadTimeout) -> Self {
        Timeout
    }
}

#[derive(Clone)]
struct Service {
    cache: Cache,
    ttl: Duration,
}

impl Service {
    // A closure of the stored value, annotated or not.
    #[cached(prefix = "doc", ttl = |d: &Doc| d.ttl(), max_ttl = "1h", key = id)]
    async fn a(&self, id: u64) -> Doc {
        Doc { id, archived: false }
    }

    #[cached(prefix = "doc", ttl = |d| doc_ttl(d), max_ttl = "1h", key = id, cache_none = "10s")]
    async fn b(&self, id: u64) -> Option<Doc> {
        Some(Doc { id, archived: true })
    }

    // A path: a method, a function, a constant.
    #[cached(prefix = "doc", ttl = Doc::ttl, max_ttl = "1h", key = id, tags = ["doc:{id}"])]
    async fn c(&self, id: u64) -> Result<Doc, Timeout> {
        Ok(Doc { id, archived: true })
    }

    #[cached(prefix = "doc", ttl = doc_ttl, max_ttl = "1h", batch)]
    async fn d(&self, ids: Vec<u64>) -> HashMap<u64, Doc> {
        ids.into_iter().map(|id| (id, Doc { id, archived: false })).collect()
    }

    #[cached(prefix = "n", ttl = TTL, max_ttl = "1h", key = id)]
    async fn e(&self, id: u64) -> u64 {
        id
    }

    // Per call: a field, a parameter, a call.
    #[cached(prefix = "n", ttl = self.ttl, max_ttl = "1h", key = id)]
    async fn f(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "n", ttl = ttl, max_ttl = "1h", key = id)]
    async fn g(&self, id: u64, ttl: Duration) -> u64 {
        let _ = ttl;
        id
    }

    #[cached(prefix = "n", ttl = Duration::from_secs(self.ttl.as_secs() * 2), max_ttl = "1h", key = id)]
    async fn h(&self, id: u64) -> u64 {
        id
    }

    #[cached(prefix = "n", ttl = *LAZY_TTL, max_ttl = "1h", key = id)]
    async fn k(&self, id: u64) -> u64 {
        id
    }

    // Write-through by the value's TTL.
    #[cache_put(prefix = "doc", ttl = Doc::ttl, max_ttl = "1h", key = doc.id)]
    async fn save(&self, doc: Doc) -> Doc {
        doc
    }

    // `soft_timeout` with `stale`, and with `hard_timeout` after it.
    #[cached(prefix = "doc", ttl = "5m", stale = "1h", soft_timeout = "20ms", key = id)]
    async fn i(&self, id: u64) -> Doc {
        Doc { id, archived: false }
    }

    #[cached(prefix = "doc", ttl = "5m", stale = "1h", soft_timeout = "20ms",
             hard_timeout = "2s", key = id)]
    async fn j(&self, id: u64) -> Result<Doc, Timeout> {
        Ok(Doc { id, archived: false })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = Service {
        cache: Cache::memory(),
        ttl: Duration::from_secs(30),
    };
    let _ = s.a(1).await;
    let _ = s.b(1).await;
    let _ = s.c(1).await;
    let _ = s.d(vec![1]).await;
    let _ = s.e(1).await;
    let _ = s.f(1).await;
    let _ = s.g(1, Duration::from_secs(5)).await;
    let _ = s.h(1).await;
    let _ = s.save(Doc { id: 1, archived: true }).await;
    let _ = s.i(1).await;
    let _ = s.j(1).await;
    let _ = s.k(1).await;
    s.a_prime(&1, &Doc { id: 1, archived: false }).await;
    let _ = s.f_refresh(1).await;
}
