//! A Partyline cluster on a real Redis Cluster (3 primaries): room data spread over the
//! primaries, a slot migrating while rooms write, a primary failing over to its replica, a
//! primary that lost its data, and a failover to a replica that lagged behind, with and without
//! `--redis-min-replicas 1`. (The whole cluster suite also runs on Redis Cluster with
//! `PARTYLINE_TEST_REDIS=cluster`; scripts/test.sh does that too.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline::runtime::placement::shard_of;
use partyline::RoomKey;
use partyline_cluster::redis::testing::RedisCluster;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::{TestCluster, TestRedis};
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

/// Sends `msg` in a chat room and waits for its echo: the chat party broadcasts a message only
/// once it is stored, so an echo is the acknowledgement. `Err` says what came instead.
async fn acknowledged(client: &mut Client, msg: &str) -> Result<(), String> {
    client.send_text(msg).await;
    match client.recv_within(Duration::from_secs(10)).await {
        Some(Received::Text(t)) if t == msg => Ok(()),
        Some(other) => Err(format!("{other:?}")),
        None => Err("no answer within 10 s".into()),
    }
}

/// The room's chat history as the node on `port` holds it (a replica answers too: `READONLY`).
fn history_on(cluster: &RedisCluster, port: u16, values_key: &str) -> Vec<String> {
    let mut c = cluster.conn(port);
    let _: () = ::redis::cmd("READONLY").query(&mut c).expect("READONLY");
    let stored: Option<Vec<u8>> = ::redis::cmd("HGET")
        .arg(values_key)
        .arg(partyline_examples::chat::HISTORY_KEY)
        .query(&mut c)
        .expect("HGET the history");
    stored.map(|v| serde_json::from_slice(&v).expect("a JSON history")).unwrap_or_default()
}

/// What [`failover_with_replication_held`] saw.
struct HeldFailover {
    /// Acknowledged before replication was held (and on the replica by then).
    before: Vec<String>,
    /// Acknowledged while replication was held.
    held_acked: Vec<String>,
    /// Sent while replication was held and not acknowledged, with what the client got instead.
    held_refused: Vec<(String, String)>,
    /// The room's history in storage once the replica was promoted.
    after: Vec<String>,
    /// The cluster, for more checks.
    cluster: TestCluster,
    /// The room.
    room: String,
    /// The port of the primary that was killed.
    old_primary: u16,
}

/// Writes to one chat room through a node whose commits wait for `min_replicas` replicas; holds
/// replication to the room's replica (SIGSTOP, and the primary drops its link), writes again, then kills the primary and
/// promotes the replica without letting it catch up (`CLUSTER FAILOVER TAKEOVER`, as an
/// automatic failover after the primary died does).
async fn failover_with_replication_held(min_replicas: u32) -> HeldFailover {
    const HELD_WRITES: usize = 3;
    let mut c = TestCluster::builder()
        .nodes(1)
        .gateways(1)
        .redis_cluster_with_replicas()
        .redis_min_replicas(min_replicas, Duration::from_millis(300))
        .start()
        .await;
    let redis = c.redis().await;
    let room = format!("lagging-{min_replicas}");
    let key = RoomKey::new("main", room.clone());
    let values_key = redis.keys().room_values(shard_of(&key), &key);
    let (primary, replica) = {
        let cluster = c.redis_cluster();
        let primary = cluster.primary_of(cluster.slot_of(&values_key));
        (primary, cluster.replica_of(primary).expect("the primary has a replica"))
    };
    let path = format!("/parties/main/{room}?_pk=a");
    let mut a = c.connect(0, &path).await;
    assert_eq!(a.recv_text().await, "[]");
    let mut before = Vec::new();
    for i in 0..5 {
        let msg = format!("before-{i}");
        acknowledged(&mut a, &msg).await.unwrap_or_else(|e| panic!("{msg} was not acknowledged: {e}"));
        before.push(msg);
    }
    // Replication is asynchronous without WAIT: let the replica catch up before holding it.
    within(20, "the replica to hold the writes made so far", async {
        while history_on(c.redis_cluster(), replica, &values_key) != before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Hold replication: the replica is frozen and its link dropped by the primary (otherwise
    // whatever the primary sent into the link's socket buffers would still reach the replica
    // once it is thawed, even with the primary dead). The primary serves on, replicating nothing.
    c.redis_cluster().pause(replica);
    let _: () = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut c.redis_cluster().conn(primary))
        .expect("CLIENT KILL TYPE replica");
    let (mut held_acked, mut held_refused) = (Vec::new(), Vec::new());
    for i in 0..HELD_WRITES {
        let msg = format!("held-{i}");
        match acknowledged(&mut a, &msg).await {
            Ok(()) => held_acked.push(msg),
            Err(got) => {
                held_refused.push((msg, got));
                // The room reset: a new socket gets it back (reads need no replica).
                a = c.connect(0, &path).await;
                a.recv_text().await;
            }
        }
    }

    // The primary dies; the replica, thawed, is promoted without catching up.
    let TestRedis::Cluster(cluster) = &mut c.redis else { unreachable!("a Redis Cluster") };
    cluster.kill(primary);
    cluster.resume(replica);
    tokio::task::block_in_place(|| cluster.takeover(replica));
    assert_eq!(cluster.primary_of(cluster.slot_of(&values_key)), replica);
    let after = history_on(cluster, replica, &values_key);
    drop(a);
    HeldFailover { before, held_acked, held_refused, after, cluster: c, room, old_primary: primary }
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 90)]
async fn with_one_replica_required_every_acknowledged_write_survives_a_failover_to_a_lagging_replica() {
    let run = failover_with_replication_held(1).await;
    println!("acknowledged before the hold: {:?}", run.before);
    println!("refused while replication was held: {:?}", run.held_refused);
    println!("after the promotion: {:?}", run.after);
    // Nothing was acknowledged that the replica did not hold: every write made while
    // replication was held failed (the room reset, 1011) instead.
    assert!(run.held_acked.is_empty(), "acknowledged without the replica: {:?}", run.held_acked);
    assert_eq!(run.held_refused.len(), 3);
    for (msg, got) in &run.held_refused {
        assert!(got.starts_with("Close(1011"), "{msg}: {got}");
    }
    // Every acknowledged write is on the promoted replica.
    assert_eq!(run.after, run.before, "acknowledged writes lost in the failover");

    // The new primary has no replica until the old one comes back as its replica: writes wait
    // for it, then go on, from what was acknowledged.
    let mut c = run.cluster;
    let TestRedis::Cluster(cluster) = &mut c.redis else { unreachable!("a Redis Cluster") };
    tokio::task::block_in_place(|| {
        cluster.restart(run.old_primary);
        cluster.wait_healthy()
    })
    .expect("the old primary rejoins as a replica");
    let path = format!("/parties/main/{}?_pk=b", run.room);
    let greeting = within(30, "the room to take writes again", async {
        loop {
            let mut b = c.connect(0, &path).await;
            let greeting = b.recv_text().await;
            if acknowledged(&mut b, "after").await.is_ok() {
                return greeting;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(serde_json::from_str::<Vec<String>>(&greeting).unwrap(), run.before);
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 90)]
async fn with_no_replica_required_writes_acknowledged_while_replication_was_held_are_lost_in_a_failover() {
    let run = failover_with_replication_held(0).await;
    println!("acknowledged before the hold: {:?}", run.before);
    println!("acknowledged while replication was held: {:?}", run.held_acked);
    println!("after the promotion: {:?}", run.after);
    // Every write was acknowledged, the held ones included...
    assert!(run.held_refused.is_empty(), "{:?}", run.held_refused);
    assert_eq!(run.held_acked, ["held-0", "held-1", "held-2"]);
    // ...and exactly those made while replication was held are gone.
    assert_eq!(run.after, run.before, "the promoted replica's history");

    // What the cluster does then: the replica's copies of the cluster marker and of the lease
    // are there, so nothing looks lost, and the room serves and takes writes again. From which
    // history depends on a race the test does not control: the room instance that acknowledged
    // the held writes has them in memory, and it is reset when its next write is the first
    // command to meet the dead primary's connection (then the fresh instance serves the
    // promoted replica's history, without them); when another command (a gateway's record, a
    // heartbeat) met it first and the connection moved to the promoted replica, the instance
    // lives on and its next write stores its whole history again, the held writes included.
    // Either way the room serves exactly what storage then holds.
    let c = run.cluster;
    let redis = c.redis().await;
    let key = RoomKey::new("main", run.room.clone());
    let values_key = redis.keys().room_values(shard_of(&key), &key);
    let with_held: Vec<String> = run.before.iter().chain(&run.held_acked).cloned().collect();
    let path = format!("/parties/main/{}?_pk=b", run.room);
    let greeting = within(30, "the room to serve again", async {
        loop {
            let mut b = c.connect(0, &path).await;
            let greeting = b.recv_text().await;
            if acknowledged(&mut b, "after").await.is_ok() {
                return greeting;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let served: Vec<String> = serde_json::from_str(&greeting).unwrap();
    assert!(served == run.before || served == with_held, "served {served:?}");
    println!("served after the promotion: {served:?}");
    let stored = {
        let cluster = c.redis_cluster();
        history_on(cluster, cluster.primary_of(cluster.slot_of(&values_key)), &values_key)
    };
    let expected: Vec<String> = served.iter().cloned().chain(["after".to_string()]).collect();
    assert_eq!(stored, expected, "what the room served, and the write after it, is what storage holds");
    let members = redis.membership().live().await.unwrap();
    assert!(members.iter().all(|n| !n.refusing), "a node refused: {members:?}");
}
