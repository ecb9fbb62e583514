//! What `#[cached]` does at run time, on both backends: each behaviour is
//! checked against the memory backend and against a real `redis-server`.

use std::sync::LazyLock;
use std::time::Duration;

use cached_runtime::{Cache, cached};
use cached_tests::{Backend, RedisServer, Source, SourceDown, on_both_backends, redis_cache_with};
use serde::{Deserialize, Serialize};

on_both_backends!(
    cache_aside_loads_once_then_hits,
    errors_go_to_the_caller_and_are_not_cached,
    none_is_cached_only_with_cache_none,
    keys_come_from_parameters_templates_and_hashes,
    entries_expire_after_their_ttl,
    uncached_twin_bypasses_the_cache,
);

cached_tests::on_cluster!(
    cache_aside_loads_once_then_hits,
    keys_come_from_parameters_templates_and_hashes,
    entries_expire_after_their_ttl,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placement {
    id: u64,
    video_id: u64,
    label: String,
}

#[derive(Debug, PartialEq)]
struct DbError(&'static str);

/// A service whose "database" counts its queries.
struct Service {
    cache: Cache,
    source: Source,
}

impl Service {
    fn new(cache: Cache) -> Self {
        Service {
            cache,
            source: Source::new(),
        }
    }

    fn queries(&self) -> u32 {
        self.source.loads()
    }

    async fn query(&self) -> Result<(), DbError> {
        match self.source.load().await {
            Ok(_version) => Ok(()),
            Err(SourceDown) => Err(DbError("down")),
        }
    }

    #[cached(prefix = "placement", ttl = "5m", key = placement_id)]
    async fn get_by_id(&self, placement_id: u64) -> Result<Option<Placement>, DbError> {
        self.query().await?;
        Ok((placement_id != 0).then(|| Placement {
            id: placement_id,
            video_id: 7,
            label: format!("p{placement_id}"),
        }))
    }

    #[cached(prefix = "negative", ttl = "5m", key = id, cache_none = "30s")]
    async fn maybe(&self, id: u64) -> Option<u64> {
        let _ = self.query().await;
        id.is_multiple_of(2).then_some(id)
    }

    #[cached(prefix = "plain", ttl = "5m")]
    async fn label(&self, id: u64, lang: String) -> String {
        let _ = self.query().await;
        format!("{lang}:{id}")
    }

    #[cached(prefix = "list", ttl = "2m", key = "video:{video_id}:placements")]
    async fn by_video(&self, video_id: u64, trace_id: String) -> Vec<u64> {
        let _ = (self.query().await, trace_id);
        vec![video_id, video_id + 1]
    }

    #[cached(prefix = "short", ttl = "300ms", key = id)]
    async fn short_lived(&self, id: u64) -> u64 {
        let _ = self.query().await;
        id
    }

    #[cached(prefix = "search", ttl = "1m", key = hashed(&query))]
    async fn search(&self, query: Query) -> Vec<u64> {
        let _ = self.query().await;
        vec![query.limit]
    }
}

#[derive(Debug, Clone, Serialize)]
struct Query {
    video_id: u64,
    text: String,
    limit: u64,
}

async fn cache_aside_loads_once_then_hits(backend: &Backend) {
    let s = Service::new(backend.cache());
    let first = s.get_by_id(42).await.expect("loads");
    assert_eq!(first.as_ref().map(|p| p.id), Some(42));
    for _ in 0..3 {
        assert_eq!(s.get_by_id(42).await.expect("hit"), first);
    }
    assert_eq!(s.queries(), 1, "three calls after the first must be hits");
    let stats = s.cache.stats_for("placement").expect("stats recorded");
    assert!(stats.hits >= 3 && stats.loads >= 1, "{stats:?}");
}

async fn errors_go_to_the_caller_and_are_not_cached(backend: &Backend) {
    let s = Service::new(backend.cache());
    s.source.set_failing(true);
    assert_eq!(s.get_by_id(500).await, Err(DbError("down")));
    s.source.set_failing(false);
    assert_eq!(
        s.get_by_id(500).await.expect("recovers").map(|p| p.id),
        Some(500)
    );
    assert_eq!(s.queries(), 2, "an error must not be cached");
    // `Ok(None)` is not cached without `cache_none`.
    assert_eq!(s.get_by_id(0).await, Ok(None));
    assert_eq!(s.get_by_id(0).await, Ok(None));
    assert_eq!(s.queries(), 4);
}

async fn none_is_cached_only_with_cache_none(backend: &Backend) {
    let s = Service::new(backend.cache());
    assert_eq!(s.maybe(3).await, None);
    assert_eq!(s.maybe(3).await, None);
    assert_eq!(s.queries(), 1, "cache_none keeps the None");
    assert_eq!(s.maybe(4).await, Some(4));
    assert_eq!(s.maybe(4).await, Some(4));
    assert_eq!(s.queries(), 2);
}

async fn keys_come_from_parameters_templates_and_hashes(backend: &Backend) {
    let s = Service::new(backend.cache());
    // Every parameter forms the key when none is given.
    assert_eq!(s.label(1, "en".into()).await, "en:1");
    assert_eq!(s.label(1, "fr".into()).await, "fr:1");
    assert_eq!(s.label(1, "en".into()).await, "en:1");
    assert_eq!(s.queries(), 2);
    assert!(
        s.cache.get::<String>("plain:1:en").await.is_some(),
        "key is {{prefix}}:{{a}}:{{b}}"
    );

    // A template ignores parameters it does not name.
    assert_eq!(s.by_video(9, "t1".into()).await, vec![9, 10]);
    assert_eq!(s.by_video(9, "t2".into()).await, vec![9, 10]);
    assert_eq!(s.queries(), 3);
    assert_eq!(
        s.cache.get::<Vec<u64>>("list:video:9:placements").await,
        Some(vec![9, 10])
    );

    // Equal queries share a hashed key; different ones do not.
    let q = Query {
        video_id: 1,
        text: "a*b".into(),
        limit: 5,
    };
    s.search(q.clone()).await;
    s.search(q.clone()).await;
    assert_eq!(s.queries(), 4);
    s.search(Query { limit: 6, ..q }).await;
    assert_eq!(s.queries(), 5);
}

async fn entries_expire_after_their_ttl(backend: &Backend) {
    let s = Service::new(backend.cache());
    assert_eq!(s.short_lived(1).await, 1);
    assert_eq!(s.short_lived(1).await, 1);
    assert_eq!(s.queries(), 1);
    // ttl 300 ms plus at most 10% jitter.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(s.short_lived(1).await, 1);
    assert_eq!(s.queries(), 2, "the entry must have expired");
}

async fn uncached_twin_bypasses_the_cache(backend: &Backend) {
    let s = Service::new(backend.cache());
    s.get_by_id(77).await.expect("loads");
    s.get_by_id_uncached(77).await.expect("loads");
    s.get_by_id_uncached(77).await.expect("loads");
    assert_eq!(s.queries(), 3, "the twin always runs the body");
}

#[tokio::test]
async fn redis_keys_are_namespace_prefix_key() {
    let server = RedisServer::start();
    let s = Service::new(redis_cache_with(&server, |b| b.namespace("app-v2")));
    s.get_by_id(5).await.expect("loads");
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connects");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
    keys.sort();
    // The entry, and the namespace's invalidation epoch its lease made.
    assert_eq!(keys, ["app-v2:placement:5", "app-v2:~epoch"]);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("app-v2:placement:5")
        .query(&mut conn)
        .expect("PTTL");
    assert!(
        (300_000..=330_000).contains(&ttl_ms),
        "5 min plus at most 10% jitter, got {ttl_ms} ms"
    );
}

static SHARED: LazyLock<Cache> = LazyLock::new(Cache::memory);
static SQUARES: LazyLock<Source> = LazyLock::new(Source::new);

#[cached(prefix = "square", ttl = "1m", key = n, cache = SHARED)]
async fn square(n: u64) -> u64 {
    SQUARES.count_load();
    n * n
}

#[tokio::test]
async fn free_functions_use_the_named_cache() {
    assert_eq!(square(12).await, 144);
    assert_eq!(square(12).await, 144);
    assert_eq!(SQUARES.loads(), 1);
    assert_eq!(SHARED.get::<u64>("square:12").await, Some(144));
}

static LATE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
static LATE_SQUARES: LazyLock<Source> = LazyLock::new(Source::new);

#[cached(prefix = "square", ttl = "1m", key = n, cache = LATE)]
async fn late_square(n: u64) -> u64 {
    LATE_SQUARES.count_load();
    n * n
}

/// A cache in a `OnceLock` used before it is set (a startup that calls a
/// cached function first): the calls run the function, uncached, rather
/// than panic (found by a review: Guarantee 4); once set, it caches.
#[tokio::test]
async fn a_cache_in_a_once_lock_not_yet_set_runs_the_function_uncached() {
    assert_eq!(late_square(5).await, 25);
    assert_eq!(late_square(5).await, 25);
    assert_eq!(LATE_SQUARES.loads(), 2, "uncached until the lock is set");
    assert!(LATE.set(Cache::memory()).is_ok());
    assert_eq!(late_square(5).await, 25);
    assert_eq!(late_square(5).await, 25);
    assert_eq!(LATE_SQUARES.loads(), 3, "cached once set");
}

#[tokio::test]
async fn glob_characters_in_user_text_are_stored_in_keys_as_they_are() {
    let s = Service::new(Cache::memory());
    assert_eq!(s.label(1, "*".into()).await, "*:1");
    assert!(s.cache.get::<String>("plain:1:*").await.is_some());
}

// ---------------------------------------------------------------------------
// Codecs and compression on Redis.

/// A large, compressible row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Big {
    id: u64,
    lines: Vec<String>,
}

struct Docs {
    cache: Cache,
    source: Source,
}

impl Docs {
    #[cached(prefix = "doc", ttl = "5m", key = id)]
    async fn get(&self, id: u64) -> Big {
        self.source.count_load();
        Big {
            id,
            lines: (0..2_000)
                .map(|i| format!("line {} of the document", i % 50))
                .collect(),
        }
    }
}

/// A fleet mid-rollout: processes writing JSON, MessagePack, and either
/// compressed, all on one Redis. Each reads what any other wrote as a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_mixed_codecs_reads_every_entry() {
    use cached_runtime::{Codec, Compression};
    let server = RedisServer::start();
    let formats = [
        (Codec::Json, Compression::None),
        (Codec::MessagePack, Compression::None),
        (Codec::Json, Compression::Lz4),
        (Codec::MessagePack, Compression::Zstd { level: 3 }),
    ];
    let fleet: Vec<Docs> = formats
        .iter()
        .map(|(codec, compression)| Docs {
            cache: redis_cache_with(&server, |b| {
                b.codec(*codec)
                    .compression(*compression, 1024)
                    .op_timeout(Duration::from_secs(2))
            }),
            source: Source::new(),
        })
        .collect();
    let mut sizes = Vec::new();
    for (writer, w) in fleet.iter().enumerate() {
        let id = writer as u64;
        let value = w.get(id).await;
        assert_eq!(w.source.loads(), 1, "writer {writer} loaded");
        sizes.push(
            server.cmd::<usize>(&["STRLEN", &format!("{}:doc:{id}", cached_tests::NAMESPACE)]),
        );
        for (reader, r) in fleet.iter().enumerate() {
            let before = r.source.loads();
            assert_eq!(r.get(id).await, value, "reader {reader} of writer {writer}");
            assert_eq!(
                r.source.loads(),
                before,
                "reader {reader} of writer {writer}: a hit"
            );
        }
    }
    // JSON, MessagePack, JSON+LZ4, MessagePack+Zstandard: each smaller.
    assert!(
        sizes[1] < sizes[0] && sizes[2] < sizes[1] / 4 && sizes[3] < sizes[2],
        "{sizes:?}"
    );
    for docs in &fleet {
        assert_eq!(docs.cache.stats_for("doc").expect("stats").errors, 0);
    }
}

/// `max_value_bytes` is the stored size: a value too large as JSON is
/// stored once compressed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_applies_to_the_compressed_size() {
    use cached_runtime::Compression;
    let server = RedisServer::start();
    let limit = |b: cached_runtime::CacheBuilder| {
        b.max_value_bytes(16 << 10)
            .op_timeout(Duration::from_secs(2))
    };
    let plain = Docs {
        cache: redis_cache_with(&server, limit),
        source: Source::new(),
    };
    plain.get(1).await;
    plain.get(1).await;
    assert_eq!(plain.source.loads(), 2, "over 16 KiB as JSON: not stored");
    assert_eq!(plain.cache.stats_for("doc").expect("stats").oversize, 2);
    let compressed = Docs {
        cache: redis_cache_with(&server, |b| limit(b).compression(Compression::Lz4, 1024)),
        source: Source::new(),
    };
    compressed.get(2).await;
    compressed.get(2).await;
    assert_eq!(
        compressed.source.loads(),
        1,
        "stored compressed, then a hit"
    );
}

/// A compressed entry is not decompressed past the reader's
/// `max_decompressed_bytes`: a few kilobytes of LZ4 or zstd can claim tens
/// of megabytes, and a reader that believed them would allocate that much
/// on every hit (a review made 2 KB of zstd into 64 MiB hits). The entry
/// reads as a miss, counted as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_entry_is_not_decompressed_past_the_readers_bound() {
    use cached_runtime::Compression;
    let server = RedisServer::start();
    let docs = |bound: Option<usize>| Docs {
        cache: redis_cache_with(&server, |b| {
            let b = b
                .max_value_bytes(16 << 10)
                .compression(Compression::Lz4, 1024)
                .op_timeout(Duration::from_secs(2));
            match bound {
                Some(bytes) => b.max_decompressed_bytes(bytes),
                None => b,
            }
        }),
        source: Source::new(),
    };
    // About 55 KB of JSON, within the default bound (64 MiB).
    let writer = docs(None);
    let value = writer.get(1).await;
    assert_eq!(writer.get(1).await, value);
    assert_eq!(writer.source.loads(), 1, "stored compressed, then a hit");
    let stored = server.cmd::<usize>(&["STRLEN", &format!("{}:doc:1", cached_tests::NAMESPACE)]);
    assert!(stored < 16 << 10, "stored compressed: {stored} bytes");

    let reader = docs(Some(32 << 10));
    assert_eq!(reader.get(1).await, value);
    assert_eq!(
        reader.source.loads(),
        1,
        "an entry expanding past the reader's bound was decompressed"
    );
    assert!(reader.cache.stats_for("doc").expect("stats").errors > 0);
}

/// A writer does not compress a payload longer than its
/// `max_decompressed_bytes` (no reader of its setting would read it): it
/// stores it uncompressed when it fits `max_value_bytes`, and counts it as
/// oversize when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_past_the_bound_is_stored_uncompressed_or_not_at_all() {
    use cached_runtime::Compression;
    let server = RedisServer::start();
    let docs = |max_value: usize| Docs {
        cache: redis_cache_with(&server, |b| {
            b.max_value_bytes(max_value)
                .compression(Compression::Lz4, 1024)
                .max_decompressed_bytes(32 << 10)
                .op_timeout(Duration::from_secs(2))
        }),
        source: Source::new(),
    };
    let roomy = docs(1 << 20);
    let value = roomy.get(1).await;
    assert_eq!(roomy.get(1).await, value);
    assert_eq!(roomy.source.loads(), 1, "stored, then a hit");
    let stored = server.cmd::<usize>(&["STRLEN", &format!("{}:doc:1", cached_tests::NAMESPACE)]);
    assert!(stored > 32 << 10, "stored compressed: {stored} bytes");
    assert_eq!(roomy.cache.stats_for("doc").expect("stats").errors, 0);

    let tight = docs(16 << 10);
    tight.get(2).await;
    tight.get(2).await;
    assert_eq!(
        tight.source.loads(),
        2,
        "over 16 KiB uncompressed: not stored"
    );
    assert_eq!(tight.cache.stats_for("doc").expect("stats").oversize, 2);
}

/// `build` refuses a bound over what any reader decompresses (64 MiB), and
/// one under the compression threshold.
#[test]
fn a_decompression_bound_over_64_mib_is_refused() {
    let refused = cached_tests::unreachable_redis_builder()
        .max_decompressed_bytes((64 << 20) + 1)
        .build()
        .expect_err("refused");
    assert!(
        refused.to_string().contains("max_decompressed_bytes"),
        "{refused}"
    );
    cached_tests::unreachable_redis_builder()
        .max_decompressed_bytes(64 << 20)
        .build()
        .expect("64 MiB is accepted");
    // With compression on, a bound at or under its threshold would
    // compress nothing: refused, rather than compression silently off.
    let refused = cached_tests::unreachable_redis_builder()
        .compression(cached_runtime::Compression::Lz4, 4096)
        .max_decompressed_bytes(4096)
        .build()
        .expect_err("refused");
    assert!(
        refused.to_string().contains("compression threshold"),
        "{refused}"
    );
    cached_tests::unreachable_redis_builder()
        .compression(cached_runtime::Compression::Lz4, 4096)
        .max_decompressed_bytes(4097)
        .build()
        .expect("above the threshold");
}
