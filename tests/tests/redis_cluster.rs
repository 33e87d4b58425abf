//! A Partyline cluster on a real Redis Cluster (3 primaries): room data spread over the
//! primaries, a slot migrating while rooms write, a primary failing over to its replica, and a
//! primary that lost its data. (The whole cluster suite also runs on Redis Cluster with
//! `PARTYLINE_TEST_REDIS=cluster`; scripts/test.sh does that too.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline::runtime::placement::shard_of;
use partyline::RoomKey;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::TestCluster;
use partyline_tests::{run_partysocket_checks, within, Client, Received};
use serde_json::json;

/// The room's history as the chat party serves it over HTTP.
async fn history(c: &TestCluster, room: &str) -> Vec<String> {
    let res = c.http(0, "GET", &format!("/parties/main/{room}"), b"").await;
    assert_eq!(res.status, 200, "{}", res.text());
    serde_json::from_slice(&res.body).unwrap()
}

#[timed_test]
async fn partysocket_through_two_gateways_with_room_data_on_every_primary() {
    let c = TestCluster::builder().nodes(3).gateways(2).redis_cluster().start().await;
    run_partysocket_checks(c.gateway(0)).await;
    run_partysocket_checks(c.gateway(1)).await;

    // Rooms land on shards, shards on slots, slots on all three primaries.
    for i in 0..60 {
        let res = c.http(i % 2, "POST", &format!("/parties/main/spread-{i}"), br#""hello""#).await;
        assert_eq!((res.status, res.text().as_str()), (200, "OK"), "room {i}");
    }
    let cluster = c.redis_cluster();
    let redis = c.redis().await;
    let mut per_primary = Vec::new();
    for port in cluster.primaries() {
        let rooms = cluster.keys_on(port, "pl:{s*}:v:*");
        per_primary.push((port, rooms.len()));
    }
    println!("room value hashes per primary: {per_primary:?}");
    assert_eq!(per_primary.len(), 3);
    assert!(per_primary.iter().all(|(_, n)| *n >= 5), "room data is not spread: {per_primary:?}");
    // Each room's data is on the primary that serves its shard's slot.
    for i in 0..60 {
        let key = RoomKey::new("main", format!("spread-{i}"));
        let values = redis.keys().room_values(shard_of(&key), &key);
        let port = cluster.primary_of(cluster.slot_of(&values));
        assert_eq!(cluster.keys_on(port, &values), vec![values.clone()]);
    }

    // Alarms (one index per shard) fire on Redis Cluster too.
    let mut a = c.connect(0, "/parties/counter/alarmed?_pk=x").await;
    assert_eq!(a.recv_json().await, json!({"count": 0}));
    let mut b = c.connect(1, "/parties/counter/alarmed?_pk=y").await;
    assert_eq!(b.recv_json().await, json!({"count": 0}));
    a.send_text("alarm 300").await;
    assert!(a.recv_json().await["alarm_at"].is_i64());
    within(15, "the alarm", async {
        loop {
            if let Received::Text(t) = b.recv().await {
                if serde_json::from_str::<serde_json::Value>(&t).unwrap()["alarm"] == json!(true) {
                    return;
                }
            }
        }
    })
    .await;
}

/// Sends numbered messages and waits for each to come back (the chat party broadcasts a message
/// only once it is stored): what it returns was acknowledged.
async fn send_until(mut client: Client, prefix: String, stop: Arc<AtomicBool>) -> (Client, Vec<String>) {
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let msg = format!("{prefix}-{}", acked.len());
        client.send_text(&msg).await;
        match client.recv().await {
            Received::Text(t) if t == msg => acked.push(msg),
            other => panic!("{prefix}: expected the echo of {msg}, got {other:?} (the room was disrupted)"),
        }
    }
    (client, acked)
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrating_under_load_loses_nothing_acknowledged() {
    let c = TestCluster::builder().nodes(2).gateways(2).no_rebalance().redis_cluster().start().await;
    // Four chat rooms on one shard, so its slot holds a dozen keys to move.
    let shard = shard_of(&RoomKey::new("main", "mig-0"));
    let rooms: Vec<String> = (0..)
        .map(|i| format!("mig-{i}"))
        .filter(|r| shard_of(&RoomKey::new("main", r.clone())) == shard)
        .take(4)
        .collect();
    let mut senders = Vec::new();
    let mut watchers = Vec::new();
    for r in &rooms {
        let mut s = c.connect(0, &format!("/parties/main/{r}?_pk=s")).await;
        assert_eq!(s.recv_text().await, "[]");
        let mut w = c.connect(1, &format!("/parties/main/{r}?_pk=w")).await;
        assert_eq!(w.recv_text().await, "[]");
        senders.push(s);
        watchers.push(w);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> =
        senders.into_iter().zip(&rooms).map(|(s, r)| tokio::spawn(send_until(s, r.clone(), stop.clone()))).collect();

    let redis = c.redis().await;
    let cluster = c.redis_cluster();
    let slot = cluster.slot_of(&redis.keys().lease(shard));
    let from = cluster.primary_of(slot);
    let to = cluster.primaries().into_iter().find(|p| *p != from).unwrap();
    // Key by key, 40 ms apart: the rooms write through ASK redirections and TRYAGAIN answers,
    // then through MOVED once the slot has its new owner.
    let moved = tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, Duration::from_millis(40)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(moved >= 4 * 2 + 3, "only {moved} keys moved");
    assert_eq!(cluster.primary_of(slot), to);
    assert!(cluster.keys_on(from, &format!("pl:{{s{shard}}}:*")).is_empty(), "the shard left keys behind");

    for ((task, watcher), r) in tasks.into_iter().zip(watchers.iter_mut()).zip(&rooms) {
        let (_sender, acked) = within(30, "a sender to finish", task).await.unwrap();
        assert!(acked.len() >= 10, "room {r}: only {} messages went through", acked.len());
        // Every acknowledged message is stored, once, in order; the other gateway saw the same.
        assert_eq!(history(&c, r).await, acked, "room {r}");
        let mut seen = Vec::new();
        while seen.len() < acked.len() {
            seen.push(watcher.recv_text().await);
        }
        assert_eq!(seen, acked, "room {r}: what the other gateway saw");
    }
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_keeps_every_acknowledged_write_and_a_primary_that_lost_its_data_is_refused() {
    let c = TestCluster::builder().nodes(2).gateways(1).redis_cluster_with_replicas().start().await;
    let redis = c.redis().await;
    let cluster = c.redis_cluster();
    let key = RoomKey::new("main", "failover");
    let slot = cluster.slot_of(&redis.keys().lease(shard_of(&key)));
    let mut acked = Vec::new();
    let mut a = c.connect(0, "/parties/main/failover?_pk=a").await;
    assert_eq!(a.recv_text().await, "[]");
    for i in 0..5 {
        a.send_text(&format!("before-{i}")).await;
        assert_eq!(a.recv_text().await, format!("before-{i}"));
        acked.push(format!("before-{i}"));
    }

    // The replica takes over (a manual failover: it catches up first, so nothing is lost).
    let primary = cluster.primary_of(slot);
    let replica = cluster.replica_of(primary).expect("the primary has a replica");
    tokio::task::block_in_place(|| cluster.failover(replica));
    assert_eq!(cluster.primary_of(slot), replica);
    // The room goes on writing on the new primary (reconnecting if its node had to drop the
    // shard while the failover paused writes).
    for i in 0..5 {
        let msg = format!("after-{i}");
        a.send_text(&msg).await;
        match a.recv().await {
            Received::Text(t) => assert_eq!(t, msg),
            Received::Close(code, _) => {
                assert_eq!(code, 1012, "the room closed with {code}");
                a = c.connect(0, "/parties/main/failover?_pk=a").await;
                assert_eq!(serde_json::from_str::<Vec<String>>(&a.recv_text().await).unwrap(), acked);
                a.send_text(&msg).await;
                assert_eq!(a.recv_text().await, msg);
            }
            other => panic!("{other:?}"),
        }
        acked.push(msg);
    }
    assert_eq!(history(&c, "failover").await, acked, "nothing acknowledged was lost in the failover");

    // Now the new primary loses everything (as if it restarted without persistence): the
    // nodes notice, refuse to serve rather than serve rooms empty, and say so in membership.
    let membership = redis.membership();
    cluster.wipe(replica);
    within(30, "both nodes to refuse", async {
        loop {
            // A client asking for the room makes its node try the shard (and find it lost); the
            // gateway answers 503 once every node refuses.
            let url = format!("ws://{}/parties/main/failover?_pk=b", c.gateway(0));
            let _ = tokio::time::timeout(Duration::from_millis(300), Client::connect(&url)).await;
            let nodes = membership.live().await.unwrap();
            if nodes.len() == 2 && nodes.iter().all(|n| n.refusing) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let lease = redis.leases().owner(shard_of(&key)).await.unwrap();
    assert_eq!(lease, None, "no node took the shard whose data is gone");
    for i in 0..2 {
        assert_eq!(c.node_info(i).await.rooms, 0, "node {i} runs no room");
    }
}
