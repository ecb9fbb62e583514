#![deny(warnings)]

use std::collections::HashMap;

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Doc {
    id: u64,
    draft: bool,
}

impl Doc {
    fn is_draft(&self) -> bool {
        self.draft
    }
}

fn publishable(d: &Doc) -> bool {
    !d.draft
}

struct Service {
    cache: Cache,
}

impl Service {
    #[cached(prefix = "doc", ttl = "5m", key = id, unless = Doc::is_draft)]
    async fn a(&self, id: u64) -> Doc {
        Doc { id, draft: false }
    }

    #[cached(prefix = "doc", ttl = "5m", key = id, cache_if = publishable)]
    async fn b(&self, id: u64) -> Result<Option<Doc>, String> {
        Ok(Some(Doc { id, draft: false }))
    }

    #[cached(prefix = "doc", ttl = "5m", key = ids, batch, cache_if = |d: &Doc| !d.draft)]
    async fn many(&self, ids: Vec<u64>) -> HashMap<u64, Doc> {
        ids.into_iter().map(|id| (id, Doc { id, draft: false })).collect()
    }
}

fn main() {
    let s = Service { cache: Cache::memory() };
    let _ = s.a(1);
    let _ = s.b(1);
    let _ = s.many(vec![1]);
}
