//! Restarts: hits resume without restarting the application, whether the
//! server comes back empty or with its data, and a restart in the middle
//! of a request does not reach the caller.

use std::sync::Arc;
use std::time::Duration;

use cached_tests::RedisServer;

use crate::support::{Placement, key, service, timed, until_hit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_resume_after_a_restart_with_an_empty_server() {
    let mut server = RedisServer::start();
    let s = service(&server);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    server.kill();
    for _ in 0..5 {
        assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    }
    server.restart();
    let took = until_hit(&s, 1, Duration::from_secs(5)).await;
    assert!(!s.cache.breaker_open(), "hits back after {took:?}");
    assert_eq!(server.cmd::<i64>(&["EXISTS", &key(1)]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_resume_after_a_restart_that_kept_the_data_without_a_load() {
    let mut server = RedisServer::start();
    let s = service(&server);
    until_hit(&s, 1, Duration::from_secs(2)).await;
    server.cmd::<()>(&["SAVE"]);
    server.restart();
    assert_eq!(
        server.cmd::<i64>(&["EXISTS", &key(1)]),
        1,
        "the data came back"
    );
    let loads = s.loads();
    // The first calls may find the old connection dead; within a few
    // seconds they are hits again, on the old entry.
    until_hit(&s, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = s.loads();
    for _ in 0..5 {
        assert_eq!(s.get(1).await, Ok(Placement::row(1)));
    }
    assert_eq!(s.loads(), before, "all hits once reconnected");
    assert!(
        before - loads <= 3,
        "{} loads around the restart",
        before - loads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_request_is_not_the_callers_problem() {
    let server = Arc::new(std::sync::Mutex::new(RedisServer::start()));
    let s = Arc::new(service(&server.lock().expect("server")));
    // A slow load holds the lease while the server goes away and comes back.
    let slow = {
        let s = s.clone();
        tokio::spawn(async move {
            s.cache
                .get_or_load("placement:slow", Duration::from_secs(60), || async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Placement::row(9))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.lock().expect("server").restart())
            .await
            .expect("restarted");
    }
    let (got, _) = timed(Duration::from_secs(3), slow).await;
    assert_eq!(
        got.expect("no panic").expect("the loader's value"),
        Placement::row(9)
    );
    let s = Arc::try_unwrap(s).ok().expect("one owner");
    until_hit(&s, 2, Duration::from_secs(5)).await;
}
