//! `large_value`: a 64 KiB JSON-shaped value stored on Redis as JSON and as
//! MessagePack, each plain and compressed with LZ4 and with Zstandard: the
//! bytes stored, the time of a hit (read and decode), and the time of a
//! write (encode and store), side by side.

use std::time::{Duration, Instant};

use cached_runtime::{Cache, Codec, Compression};
use serde::{Deserialize, Serialize};

use crate::harness::{Redis, Row, median, percentiles};

/// Something like a product page: records with repeated field names and
/// text, numbers, nesting. About 64 KiB as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Catalogue {
    id: u64,
    title: String,
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    name: String,
    price_cents: u64,
    in_stock: bool,
    tags: Vec<String>,
    dimensions: (f32, f32, f32),
}

fn catalogue() -> Catalogue {
    let mut rng = fastrand::Rng::with_seed(64);
    let words = [
        "steel", "oak", "linen", "compact", "deluxe", "outdoor", "kitchen", "travel", "classic",
        "modern", "blue", "graphite",
    ];
    let items = (0..380)
        .map(|i| Item {
            sku: format!("SKU-{:08}", rng.u32(..)),
            name: (0..4)
                .map(|_| words[rng.usize(..words.len())])
                .collect::<Vec<_>>()
                .join(" "),
            price_cents: rng.u64(100..100_000),
            in_stock: rng.bool(),
            tags: (0..3)
                .map(|_| words[rng.usize(..words.len())].to_owned())
                .collect(),
            dimensions: (rng.f32() * 100.0, rng.f32() * 100.0, i as f32),
        })
        .collect();
    Catalogue {
        id: 1,
        title: "The large value".into(),
        items,
    }
}

pub async fn large_value(redis: &Redis) -> Vec<Row> {
    const HITS: usize = 400;
    const WRITES: usize = 100;
    let value = catalogue();
    let json_bytes = serde_json::to_vec(&value).expect("serializes").len();
    let formats: [(&str, Codec, Compression); 6] = [
        ("json", Codec::Json, Compression::None),
        ("json+lz4", Codec::Json, Compression::Lz4),
        ("json+zstd3", Codec::Json, Compression::Zstd { level: 3 }),
        ("msgpack", Codec::MessagePack, Compression::None),
        ("msgpack+lz4", Codec::MessagePack, Compression::Lz4),
        (
            "msgpack+zstd3",
            Codec::MessagePack,
            Compression::Zstd { level: 3 },
        ),
    ];
    let mut rows = Vec::new();
    for (name, codec, compression) in formats {
        let cache = Cache::builder()
            .redis(redis.url.clone())
            .namespace(format!("bench_large_{name}"))
            .op_timeout(Duration::from_secs(2))
            .codec(codec)
            .compression(compression, 1024)
            .build()
            .expect("cache");
        let key = "catalogue:1";
        // Writes: encode, compress, store.
        let mut writes = Vec::with_capacity(WRITES);
        for _ in 0..WRITES {
            let started = Instant::now();
            cache.set(key, &value, Duration::from_secs(600)).await;
            writes.push(started.elapsed());
        }
        let stored: usize = redis.cmd(&["STRLEN", &format!("bench_large_{name}:{key}")]);
        // Hits: read, decompress, decode.
        let mut hits = Vec::with_capacity(HITS);
        for _ in 0..HITS {
            let started = Instant::now();
            let got = cache.get::<Catalogue>(key).await;
            hits.push(started.elapsed());
            assert!(got.as_ref() == Some(&value), "{name}: a hit");
        }
        let h = percentiles(&hits);
        let w = median(writes.iter().map(|d| d.as_secs_f64() * 1e6).collect());
        rows.push(
            Row::new("large_value", name)
                .with("json_bytes", json_bytes)
                .with("stored_bytes", stored)
                .with("ratio_to_json", stored as f64 / json_bytes as f64)
                .with("hit_p50_us", h.p50 * 1e3)
                .with("hit_p99_us", h.p99 * 1e3)
                .with("write_p50_us", w),
        );
    }
    rows
}
