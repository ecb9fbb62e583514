//! Guarantees an outside user broke, each tried on both backends: keys of
//! distinct arguments never collide (the tenant leak), an eviction removes
//! exactly what it names, and "never expires" durations do not panic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cached_runtime::{Cache, cache_evict, cached};
use cached_tests::RedisServer;

/// Runs `check` on a memory cache, then on a Redis cache of its own server.
async fn on_both<F, Fut>(check: F)
where
    F: Fn(Cache) -> Fut,
    Fut: Future<Output = ()>,
{
    check(Cache::builder().namespace("g").build().expect("builds")).await;
    let server = RedisServer::start();
    let redis = Cache::builder()
        .redis(server.url())
        .namespace("g")
        .build()
        .expect("builds");
    check(redis).await;
}

struct Docs {
    cache: Cache,
    loads: AtomicU32,
}

impl Docs {
    fn new(cache: Cache) -> Docs {
        Docs {
            cache,
            loads: AtomicU32::new(0),
        }
    }

    /// Whose document this is: the loader returns its own arguments.
    #[cached(prefix = "doc", ttl = "5m", key = (tenant, name))]
    async fn doc(&self, tenant: String, name: String) -> String {
        self.loads.fetch_add(1, Ordering::SeqCst);
        format!("{tenant}|{name}")
    }

    #[cached(prefix = "video", ttl = "5m", key = "{video_id}:placements")]
    async fn placements(&self, video_id: String) -> String {
        self.loads.fetch_add(1, Ordering::SeqCst);
        format!("placements of {video_id}")
    }

    #[cached(prefix = "video", ttl = "5m", key = video_id)]
    async fn video(&self, video_id: String) -> String {
        self.loads.fetch_add(1, Ordering::SeqCst);
        format!("video {video_id}")
    }

    #[cache_evict(patterns = ["video:{video_id}:*"])]
    async fn changed(&self, video_id: String) {
        let _ = video_id;
    }

    #[cached(prefix = "products", ttl = "1h")]
    async fn all_products(&self) -> Vec<u32> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        vec![1, 2, 3]
    }

    #[cache_evict(prefixes = ["products"])]
    async fn products_changed(&self) {}

    /// The first load takes 3 s (a slow query); later ones are quick.
    #[cached(prefix = "slow", ttl = "5m", key = id, wait = "100ms")]
    async fn slow_first(&self, id: u32) -> u32 {
        if self.loads.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        id
    }

    fn loads(&self) -> u32 {
        self.loads.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_tenant_never_reads_another_tenants_entry() {
    on_both(|cache| async move {
        let docs = Docs::new(cache);
        // Under plain `:` joining these were one key, so the second caller
        // got the first tenant's document.
        assert_eq!(docs.doc("a:b".into(), "c".into()).await, "a:b|c");
        assert_eq!(docs.doc("a".into(), "b:c".into()).await, "a|b:c");
        assert_eq!(docs.doc("a\\".into(), ":c".into()).await, "a\\|:c");
        assert_eq!(docs.doc("a".into(), "\\:c".into()).await, "a|\\:c");
        assert_eq!(docs.loads(), 4, "four arguments, four entries");
        assert_eq!(docs.doc("a:b".into(), "c".into()).await, "a:b|c");
        assert_eq!(docs.loads(), 4, "and each is a hit afterwards");
    })
    .await;
}

#[tokio::test]
async fn a_key_part_holding_the_separator_is_not_a_template_key() {
    on_both(|cache| async move {
        let docs = Docs::new(cache);
        // `video` with key "7:placements" must not be the list of video 7.
        assert_eq!(
            docs.video("7:placements".into()).await,
            "video 7:placements"
        );
        assert_eq!(docs.placements("7".into()).await, "placements of 7");
        assert_eq!(docs.loads(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_pattern_eviction_removes_only_the_entity_it_names() {
    on_both(|cache| async move {
        let docs = Docs::new(cache);
        docs.placements("7".into()).await;
        docs.placements("7:x".into()).await;
        docs.placements("*".into()).await;
        assert_eq!(docs.loads(), 3);
        docs.changed("7".into()).await;
        docs.placements("7:x".into()).await;
        docs.placements("*".into()).await;
        assert_eq!(docs.loads(), 3, "other videos' entries survive");
        docs.placements("7".into()).await;
        assert_eq!(docs.loads(), 4, "video 7's entry was removed");
        docs.changed("*".into()).await;
        docs.placements("7".into()).await;
        assert_eq!(docs.loads(), 4, "a `*` id is text, not a wildcard");
    })
    .await;
}

#[tokio::test]
async fn a_prefix_eviction_removes_the_entry_of_a_function_without_key_parameters() {
    on_both(|cache| async move {
        let docs = Docs::new(cache);
        docs.all_products().await;
        docs.all_products().await;
        assert_eq!(docs.loads(), 1);
        docs.products_changed().await;
        docs.all_products().await;
        assert_eq!(docs.loads(), 2, "the prefix's own key was evicted");
    })
    .await;
}

#[tokio::test]
async fn duration_max_means_never_expires_and_never_panics() {
    on_both(|cache| async move {
        cache.set("forever", &7u32, Duration::MAX).await;
        assert_eq!(cache.get::<u32>("forever").await, Some(7));
        let loaded: Result<u32, ()> = cache
            .get_or_load("forever-loaded", Duration::MAX, || async { Ok(8) })
            .await;
        assert_eq!(loaded, Ok(8));
        assert_eq!(cache.get::<u32>("forever-loaded").await, Some(8));
    })
    .await;
}

#[tokio::test]
async fn a_caller_waits_on_a_load_in_its_own_process_no_longer_than_wait() {
    on_both(|cache| async move {
        let docs = std::sync::Arc::new(Docs::new(cache));
        let first = tokio::spawn({
            let docs = std::sync::Arc::clone(&docs);
            async move { docs.slow_first(1).await }
        });
        // Let the first caller lead the load.
        while docs.loads() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = std::time::Instant::now();
        assert_eq!(docs.slow_first(1).await, 1);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(1500),
            "waited {waited:?} on another caller's 3 s load; `wait` is 100 ms"
        );
        assert_eq!(docs.loads(), 2, "after its wait it loaded for itself");
        assert_eq!(
            docs.cache.stats_for("slow").map(|s| s.wait_timeouts),
            Some(1),
            "the wait that ran out is counted"
        );
        assert_eq!(first.await.expect("the leader finishes"), 1);
    })
    .await;
}
