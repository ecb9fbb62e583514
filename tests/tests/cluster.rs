//! The local Redis Cluster the cluster backend's tests and benches run on
//! (`cached_tests::RedisCluster`): it forms with every slot served, keys
//! route by slot, and a killed primary's replica takes over.

use cached_tests::RedisCluster;

#[test]
fn a_local_cluster_forms_routes_by_slot_and_fails_over() {
    let mut cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries");
    assert_eq!(cluster.urls().len(), 6, "and three replicas");
    let info: String = cluster.nodes()[0].cmd(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_known_nodes:6"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");

    // A key lives on the primary that serves its slot; another refuses it.
    let slot: i64 = cluster.nodes()[0].cmd(&["CLUSTER", "KEYSLOT", "{placement}:1"]);
    let owner = primaries
        .iter()
        .copied()
        .find(|&i| {
            let slots: Vec<Vec<redis::Value>> = cluster.nodes()[i].cmd(&["CLUSTER", "SLOTS"]);
            slots.iter().any(|range| {
                let bound = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n,
                    other => panic!("slot bound {other:?}"),
                };
                let port = match &range[2] {
                    redis::Value::Array(node) => bound(&node[1]),
                    other => panic!("node {other:?}"),
                };
                bound(&range[0]) <= slot
                    && slot <= bound(&range[1])
                    && port == i64::from(cluster.nodes()[i].port())
            })
        })
        .expect("a primary serves the slot");
    let () = cluster.nodes()[owner].cmd(&["SET", "{placement}:1", "v"]);
    let other = primaries
        .iter()
        .copied()
        .find(|&i| i != owner)
        .expect("another");
    let client = redis::Client::open(cluster.urls()[other].as_str()).expect("URL");
    let mut conn = client.get_connection().expect("connects");
    let refused: redis::RedisResult<String> =
        redis::cmd("GET").arg("{placement}:1").query(&mut conn);
    let err = refused.expect_err("another primary redirects");
    let moved = err.to_string();
    assert!(
        moved.to_uppercase().starts_with("MOVED")
            && moved.ends_with(&format!(":{}", cluster.nodes()[owner].port())),
        "redirected to the owner: {moved}"
    );

    // The owner dies: its replica takes its slots.
    let took = cluster.kill_primary(owner);
    assert!(took.as_secs() < 30, "{took:?}");
    let new_primaries = cluster.primaries();
    assert_eq!(new_primaries.len(), 3);
    assert!(!new_primaries.contains(&owner));
}
