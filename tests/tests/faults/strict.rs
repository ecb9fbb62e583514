//! Strict mode, for tests: what is otherwise logged and skipped panics at
//! the call, so a test cannot pass on a silently broken cache.

use std::sync::Arc;

use cached_tests::RedisServer;

use std::time::Duration;

use crate::support::{Placement, key, service, service_with, timed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_surfaces_an_unreadable_entry() {
    let server = RedisServer::start();
    server.set_raw(&key(1), b"garbage");
    let s = Arc::new(service_with(&server, |b| b.strict(true)));
    let call = {
        let s = s.clone();
        tokio::spawn(async move { s.get(1).await })
    };
    let (joined, _) = timed(Duration::from_secs(5), call).await;
    let err = joined.expect_err("strict mode panics");
    assert!(err.is_panic());
    // Not strict: the same entry is a quiet miss.
    let lenient = service(&server);
    assert_eq!(lenient.get(1).await, Ok(Placement::row(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_surfaces_a_frozen_server() {
    let mut server = RedisServer::start();
    let s = Arc::new(service_with(&server, |b| b.strict(true)));
    server.freeze();
    let call = {
        let s = s.clone();
        tokio::spawn(async move { s.get(1).await })
    };
    let (joined, _) = timed(Duration::from_secs(5), call).await;
    assert!(joined.expect_err("strict mode panics").is_panic());
    server.thaw();
}
