//! Early refresh (XFetch): shortly before expiry one caller refreshes in
//! the background and nobody waits for it.

use std::time::{Duration, Instant};

use cached_tests::{Backend, on_both_backends};

use crate::{Svc, join_all};

on_both_backends!(early_refresh_fires_once_for_many_callers);

cached_tests::on_cluster!(early_refresh_fires_once_for_many_callers,);

async fn early_refresh_fires_once_for_many_callers(backend: &Backend) {
    // No jitter, so the expiry this test aims at is exact.
    let cache = backend.cache_with(|b| b.ttl_jitter(0.0));
    let svc = Svc::new(cache, Duration::from_millis(200));
    assert_eq!(svc.early(1).await, Ok(1));
    svc.source.set_version(2);
    // 100 ms before expiry with 200 ms loads, XFetch (beta 1) fires for
    // about 60% of callers: one refresh must run, and nobody waits for it.
    let expires = Duration::from_millis(2000);
    tokio::time::sleep(expires - Duration::from_millis(100) - Duration::from_millis(200)).await;
    let tasks = (0..64)
        .map(|_| {
            let s = svc.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let v = s.early(1).await;
                (v, t.elapsed())
            })
        })
        .collect();
    for (value, took) in join_all(tasks).await {
        assert_eq!(value, Ok(1));
        assert!(
            took < Duration::from_millis(100),
            "a hit, not a load: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(svc.early(1).await, Ok(2), "refreshed before it expired");
    let stats = svc.cache.stats_for("early").expect("stats");
    assert_eq!(stats.early_refreshes, 1, "{stats:?}");
    assert_eq!(svc.loads(), 2);
}
