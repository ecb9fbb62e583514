#![allow(dead_code, unused_imports, unused_variables)]

use std::collections::HashMap;

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
}

struct Service {
    cache: Cache,
}

impl Service {
    // Two parameters: which holds the ids?
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn by_tenant(&self, tenant: String, ids: Vec<u64>) -> HashMap<u64, Item> {
        HashMap::new()
    }

    // A name that is no parameter.
    #[cached(prefix = "item", ttl = "5m", batch = idz)]
    async fn misnamed(&self, tenant: String, ids: Vec<u64>) -> HashMap<u64, Item> {
        HashMap::new()
    }

    // No parameter at all.
    #[cached(prefix = "item", ttl = "5m", batch)]
    async fn nothing(&self) -> HashMap<u64, Item> {
        HashMap::new()
    }

    // Not a parameter's name.
    #[cached(prefix = "item", ttl = "5m", batch = "ids")]
    async fn quoted(&self, ids: Vec<u64>) -> HashMap<u64, Item> {
        HashMap::new()
    }
}

fn main() {}
