#![allow(dead_code, unused_imports, unused_variables)]

use cached_runtime::{cached, Cache};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Placement {
    id: u64,
}

#[derive(Clone)]
struct Service {
    cache: Cache,
}

impl Service {
    // Every id would share the tenant's one entry.
    #[cached(prefix = "placement", ttl = "5m", key = tenant, batch = ids)]
    async fn get_many(
        &self,
        tenant: String,
        ids: Vec<u64>,
    ) -> std::collections::HashMap<u64, Placement> {
        Default::default()
    }

    #[cached(prefix = "placement", ttl = "5m", key = "{tenant}:all", batch = ids)]
    async fn get_many_templated(
        &self,
        tenant: String,
        ids: Vec<u64>,
    ) -> std::collections::HashMap<u64, Placement> {
        Default::default()
    }

    // Each id's key holds the id: fine.
    #[cached(prefix = "placement", ttl = "5m", key = (tenant, ids), batch = ids)]
    async fn get_many_keyed(
        &self,
        tenant: String,
        ids: Vec<u64>,
    ) -> std::collections::HashMap<u64, Placement> {
        Default::default()
    }
}

fn main() {}
