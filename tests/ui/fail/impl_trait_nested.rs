#![allow(dead_code, unused_imports)]

use cached_runtime::{cached, Cache, KeyPart};

struct Service {
    cache: Cache,
}

impl Service {
    // `&impl KeyPart` makes the function generic as `impl KeyPart` does:
    // `show(&7u32)` and `show(&"7")` would share the key `show:7`.
    #[cached(prefix = "show", ttl = "5m")]
    async fn show(&self, id: &impl KeyPart) -> String {
        String::new()
    }

    #[cached(prefix = "maybe", ttl = "5m")]
    async fn maybe(&self, id: Option<impl KeyPart>) -> String {
        String::new()
    }
}

fn main() {}
