//! The cluster: gateways and nodes over gRPC, shard leases and fenced storage in a real Redis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use partyline::runtime::placement::shard_of;
use partyline::RoomKey;
use partyline_proto::pb;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::{TestCluster, SECRET};
use partyline_tests::{raw_upgrade, run_partysocket_checks, within, Received};
use serde_json::json;

#[timed_test]
async fn one_room_through_two_gateways_is_one_room() {
    let c = TestCluster::builder().nodes(3).gateways(2).start().await;
    let mut a = c.connect(0, "/parties/main/shared?_pk=a").await;
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("first").await;
    assert_eq!(a.recv_text().await, "first");
    let mut b = c.connect(1, "/parties/main/shared?_pk=b").await;
    assert_eq!(b.recv_json().await, json!(["first"]), "the same history through the other gateway");
    let mut a2 = c.connect(0, "/parties/main/shared?_pk=a2").await;
    assert_eq!(a2.recv_json().await, json!(["first"]));
    let mut b2 = c.connect(1, "/parties/main/shared?_pk=b2").await;
    assert_eq!(b2.recv_json().await, json!(["first"]));

    // Interleaved senders on both gateways: everyone sees every message exactly once, in the
    // same order.
    let n = 50;
    for i in 0..n {
        a.send_text(&format!("a{i}")).await;
        b.send_text(&format!("b{i}")).await;
    }
    let mut seen = Vec::new();
    for client in [&mut a, &mut b, &mut a2, &mut b2] {
        let mut got = Vec::new();
        while got.len() < 2 * n {
            got.push(client.recv_text().await);
        }
        assert_eq!(client.recv_within(Duration::from_millis(300)).await, None, "no duplicates");
        seen.push(got);
    }
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "every client sees one order");
    }
    let set: HashSet<&String> = seen[0].iter().collect();
    assert_eq!(set.len(), 2 * n);
    // Per sender, in the order sent.
    let a_order: Vec<&String> = seen[0].iter().filter(|m| m.starts_with('a')).collect();
    assert_eq!(a_order, (0..n).map(|i| format!("a{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    // The room's history agrees, read through either gateway over HTTP.
    let h0 = c.http(0, "GET", "/parties/main/shared", b"").await;
    let h1 = c.http(1, "GET", "/parties/main/shared", b"").await;
    assert_eq!(h0.body, h1.body);
    let history: Vec<String> = serde_json::from_slice(&h0.body).unwrap();
    assert_eq!(history.len(), 1 + 2 * n);
    assert_eq!(&history[1..], seen[0].as_slice());
}

#[timed_test]
async fn rooms_spread_over_three_nodes_with_one_owner_each() {
    let c = TestCluster::builder().nodes(3).gateways(1).start().await;
    let rooms = 90;
    for i in 0..rooms {
        let res = c.http(0, "POST", &format!("/parties/main/spread-{i}"), br#""hello""#).await;
        assert_eq!((res.status, res.text().as_str()), (200, "OK"), "room {i}");
    }
    // Every room's shard has exactly one lease holder, and that holder runs the room.
    let redis = c.redis().await;
    let leases = redis.leases();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..rooms {
        let shard = shard_of(&RoomKey::new("main", format!("spread-{i}")));
        let owner = leases.owner(shard).await.unwrap().expect("the shard is leased");
        *per_node.entry(owner.owner).or_default() += 1;
    }
    let mut running = 0;
    for i in 0..3 {
        let info = c.node_info(i).await;
        running += info.rooms as usize;
        assert_eq!(per_node.get(&info.node_id).copied().unwrap_or(0), info.rooms as usize, "{info:?} vs {per_node:?}");
    }
    assert_eq!(running, rooms, "each room runs on exactly one node");
    println!("rooms per node: {per_node:?}");
    // The preference over all shards, which is what many rooms converge to.
    let mut shards_per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for shard in 0..partyline::runtime::placement::SHARDS {
        let p = partyline::runtime::placement::preferred(shard, ["node-1", "node-2", "node-3"]).unwrap();
        *shards_per_node.entry(p).or_default() += 1;
    }
    println!("preferred shards per node: {shards_per_node:?}");
    let max = *shards_per_node.values().max().unwrap() as f64;
    assert!(max / (4096.0 / 3.0) < 1.05, "shards are balanced: {shards_per_node:?}");
    assert_eq!(per_node.len(), 3, "every node got rooms: {per_node:?}");
    assert!(per_node.values().all(|&n| n >= rooms / 6), "a very uneven spread: {per_node:?}");
}

#[timed_test]
async fn http_reaches_the_same_room_through_any_gateway() {
    let c = TestCluster::builder().nodes(2).gateways(2).start().await;
    let mut ws = c.connect(1, "/parties/main/web").await;
    assert_eq!(ws.recv_text().await, "[]");
    let res = c.http(0, "POST", "/parties/main/web", br#""via gateway 0""#).await;
    assert_eq!((res.status, res.text().as_str()), (200, "OK"));
    assert_eq!(ws.recv_text().await, "via gateway 0", "the write reached the socket on the other gateway");
    let res = c.http(1, "GET", "/parties/main/web", b"").await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), json!(["via gateway 0"]));
    assert_eq!(res.header("content-type"), Some("application/json"));
    let res = c.http(0, "GET", "/parties/nope/web", b"").await;
    assert_eq!((res.status, res.text()), (404, partyline::client_text::party_not_found("nope")));
}

#[timed_test]
async fn hooks_run_at_the_gateway_and_rejected_connections_never_reach_a_node() {
    let c = TestCluster::builder().nodes(2).gateways(1).start().await;
    for _ in 0..5 {
        let (_s, head) = raw_upgrade(c.gateway(0), "/parties/private/secret-room", "").await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    let res = c.http(0, "GET", "/parties/private/secret-room", b"").await;
    assert_eq!(res.status, 401);
    for i in 0..2 {
        assert_eq!(c.node_info(i).await.rooms, 0, "node {i} never saw the rejected room");
    }
    let mut ok = c.connect(0, "/parties/private/secret-room?token=carol").await;
    assert_eq!(ok.recv_text().await, "welcome, carol", "the header set by the hook reached the room");
    let rooms: u32 = [c.node_info(0).await.rooms, c.node_info(1).await.rooms].iter().sum();
    assert_eq!(rooms, 1);
}

#[timed_test]
async fn a_node_refuses_callers_without_the_cluster_secret() {
    let c = TestCluster::builder().nodes(1).gateways(0).start().await;
    let mut wrong = c.node_client(0, "not-the-secret").await;
    let err = wrong.info(pb::InfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut none = pb::node_client::NodeClient::new(channel);
    let err = none.info(pb::InfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let req = pb::RoomRequest {
        room: Some(pb::RoomRef { party: "main".into(), room: "x".into() }),
        head: Some(pb::HttpHead { method: "GET".into(), uri: "/parties/main/x".into(), headers: vec![] }),
        body: Default::default(),
        hops: 0,
        avoid: vec![],
    };
    assert_eq!(none.request(req).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut right = c.node_client(0, SECRET).await;
    assert_eq!(right.info(pb::InfoRequest {}).await.unwrap().into_inner().node_id, "node-1");
}

#[timed_test]
async fn a_stale_view_still_reaches_the_owner_through_redirects() {
    // No rebalancing: the leases stay where they are while the test asks around.
    let mut c = TestCluster::builder().nodes(2).gateways(1).no_rebalance().start().await;
    // Place rooms while two nodes exist.
    let rooms: Vec<String> = (0..40).map(|i| format!("stale-{i}")).collect();
    for r in &rooms {
        let res = c.http(0, "POST", &format!("/parties/main/{r}"), br#""one""#).await;
        assert_eq!(res.status, 200);
    }
    // A third node joins: rendezvous hashing now prefers it for some of those shards, but the
    // leases stay where they are, so routing by the new view lands on non-owners.
    c.add_node().await;
    c.wait_for_members(3).await;
    let redis = c.redis().await;
    let leases = redis.leases();
    let node3 = c.nodes[2].addr.to_string();
    let mut redirected = 0;
    for r in &rooms {
        let key = RoomKey::new("main", r.clone());
        let owner = leases.owner(shard_of(&key)).await.unwrap().unwrap();
        // Ask node 3 directly, as a gateway with a view that prefers it would.
        let mut n3 = c.node_client(2, SECRET).await;
        let req = pb::RoomRequest {
            room: Some(pb::RoomRef { party: "main".into(), room: r.clone() }),
            head: Some(pb::HttpHead { method: "GET".into(), uri: format!("/parties/main/{r}"), headers: vec![] }),
            body: Default::default(),
            hops: 0,
            avoid: vec![],
        };
        match n3.request(req).await.unwrap().into_inner().kind {
            Some(pb::room_response::Kind::NotOwner(n)) => {
                assert_eq!(n.addr, owner.addr, "the redirect names the lease holder");
                assert_ne!(n.addr, node3);
                redirected += 1;
            }
            Some(pb::room_response::Kind::Response(_)) => panic!("node 3 served room {r} it does not own"),
            None => panic!("empty answer"),
        }
        // And through the gateway (whatever its view), the room answers with its state.
        let res = c.http(0, "GET", &format!("/parties/main/{r}"), b"").await;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), json!(["one"]), "room {r}");
    }
    assert_eq!(redirected, rooms.len());
    assert_eq!(c.node_info(2).await.rooms, 0, "node 3 never ran a room it does not own");
}

#[timed_test]
async fn partysocket_works_against_both_gateways_of_a_cluster() {
    let c = TestCluster::builder().nodes(3).gateways(2).start().await;
    run_partysocket_checks(c.gateway(0)).await;
    run_partysocket_checks(c.gateway(1)).await;
}

#[timed_test]
async fn the_counter_party_and_its_alarm_work_in_the_cluster() {
    let c = TestCluster::builder().nodes(2).gateways(2).start().await;
    let mut a = c.connect(0, "/parties/counter/alarmed?_pk=x&role=r").await;
    assert_eq!(a.recv_json().await, json!({"count": 0}));
    let mut b = c.connect(1, "/parties/counter/alarmed?_pk=y").await;
    assert_eq!(b.recv_json().await, json!({"count": 0}));
    a.send_text("inc").await;
    assert_eq!(a.recv_json().await["count"], json!(1));
    assert_eq!(b.recv_json().await["count"], json!(1));
    a.send_text("alarm 300").await;
    assert!(a.recv_json().await["alarm_at"].is_i64());
    let fired = within(15, "the alarm", async {
        loop {
            if let Received::Text(t) = b.recv().await {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["alarm"] == json!(true) {
                    return v;
                }
            }
        }
    })
    .await;
    assert_eq!(fired["count"], json!(1));
}

/// Reads one counter from a gateway's `/_partyline/metrics`.
async fn counter(c: &TestCluster, gw: usize, name: &str) -> u64 {
    let res = c.http(gw, "GET", "/_partyline/metrics", b"").await;
    assert_eq!(res.status, 200);
    let text = res.text();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("partyline_gateway_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[timed_test]
async fn a_broadcast_crosses_to_each_gateway_once_whatever_the_room_size() {
    let c = TestCluster::builder().nodes(2).gateways(2).start().await;
    let mut on_0 = Vec::new();
    for i in 0..40 {
        on_0.push(c.connect(0, &format!("/parties/broadcast/big?_pk=g0-{i}")).await);
    }
    let mut on_1 = Vec::new();
    for i in 0..10 {
        on_1.push(c.connect(1, &format!("/parties/broadcast/big?_pk=g1-{i}")).await);
    }
    let (b0, f0) = (counter(&c, 0, "room_broadcasts_total").await, counter(&c, 0, "frames_to_clients_total").await);
    let (b1, f1) = (counter(&c, 1, "room_broadcasts_total").await, counter(&c, 1, "frames_to_clients_total").await);
    on_1[0].send_text("to everyone").await;
    for client in on_0.iter_mut().chain(on_1.iter_mut()) {
        assert_eq!(client.recv_text().await, "to everyone");
    }
    assert_eq!(counter(&c, 0, "room_broadcasts_total").await - b0, 1, "one message over the link to gateway 0");
    assert_eq!(counter(&c, 1, "room_broadcasts_total").await - b1, 1, "one message over the link to gateway 1");
    assert_eq!(counter(&c, 0, "frames_to_clients_total").await - f0, 40);
    assert_eq!(counter(&c, 1, "frames_to_clients_total").await - f1, 10);
    assert_eq!(counter(&c, 0, "open_sockets").await, 40);
}

#[timed_test]
async fn a_room_whose_lease_is_taken_over_is_fenced_and_reveals_nothing() {
    use partyline::store::Store;
    use partyline_cluster::redis::Acquire;

    let c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let mut a = c.connect(0, "/parties/main/fenced?_pk=a").await;
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("kept").await;
    assert_eq!(a.recv_text().await, "kept");

    // Another incarnation takes the shard's lease (as if the node had paused past its TTL).
    let redis = c.redis().await;
    let key = RoomKey::new("main", "fenced");
    let shard = shard_of(&key);
    let lease_key = redis.keys().lease(shard);
    let mut conn = redis.connection();
    let _: () = ::redis::cmd("DEL").arg(&lease_key).query_async(&mut conn).await.unwrap();
    let taken =
        redis.leases().acquire(shard, "intruder", "intruder-1", "127.0.0.1:9", Duration::from_secs(30)).await.unwrap();
    assert!(matches!(taken, Acquire::Granted { .. }));

    // The old owner's next write is refused by Redis: the room is dropped, the client is closed
    // with 1012, and the message it sent is neither broadcast nor stored.
    a.send_text("lost").await;
    match a.recv().await {
        Received::Close(code, _) => assert_eq!(code, 1012),
        other => panic!("expected the close, got {other:?} first"),
    }
    let stored = redis.store().get(&key, &["messages".to_string()]).await.unwrap();
    let history: Vec<String> = serde_json::from_slice(stored[0].as_ref().unwrap()).unwrap();
    assert_eq!(history, vec!["kept".to_string()], "the fenced write left no trace");
}

/// The node holding `room`'s shard lease.
async fn owner_of(c: &TestCluster, room: &RoomKey) -> String {
    let redis = c.redis().await;
    redis.leases().owner(shard_of(room)).await.unwrap().expect("the room's shard is leased").owner
}

#[timed_test]
async fn a_draining_node_hands_a_hibernating_room_over_without_a_disconnect() {
    let mut c = TestCluster::builder().nodes(2).gateways(2).start().await;
    let key = RoomKey::new("counter", "moving");
    let mut a = c.connect(0, "/parties/counter/moving?_pk=a&role=r").await;
    let mut b = c.connect(1, "/parties/counter/moving?_pk=b").await;
    assert_eq!(a.recv_json().await, json!({"count": 0}));
    assert_eq!(b.recv_json().await, json!({"count": 0}));
    let owner = owner_of(&c, &key).await;
    let i = c.nodes.iter().position(|n| n.id == owner).unwrap();

    // Both clients keep incrementing while the owner drains.
    let total = 60;
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    let mut stopping = None;
    for n in 0..total {
        if n == 10 {
            // Graceful stop in the background: the room moves while the clients talk.
            let mut node = c.nodes.remove(i);
            stopping = Some(tokio::spawn(async move { node.stop().await }));
        }
        let sender = if n % 2 == 0 { &mut a } else { &mut b };
        sender.send_text("inc").await;
        for (client, seen) in [(&mut a, &mut seen_a), (&mut b, &mut seen_b)] {
            match client.recv().await {
                Received::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    seen.push(v["count"].as_i64().unwrap());
                }
                other => panic!("a client of a hibernating room saw {other:?} during the move"),
            }
        }
    }
    within(20, "the drain", stopping.unwrap()).await.unwrap();
    let want: Vec<i64> = (1..=total).collect();
    assert_eq!(seen_a, want, "every count once, in order, no gap");
    assert_eq!(seen_b, want);
    assert_ne!(owner_of(&c, &key).await, owner, "the room lives on the other node now");
    assert_eq!(counter(&c, 0, "links_moved_total").await, 1, "gateway 0 handed its socket over");
    assert_eq!(counter(&c, 1, "links_moved_total").await, 1, "gateway 1 handed its socket over");
    // Ids, tags and state came along: the connection still counts its own messages.
    a.send_text("who").await;
    let who = a.recv_json().await;
    assert_eq!(who["id"], json!("a"));
    assert_eq!(who["tags"], json!(["a", "role:r"]));
    assert_eq!(who["mine"], json!(total / 2 + 1), "state kept across the move: {who}");
    assert!(b.recv_within(Duration::from_millis(300)).await.is_none());
}

#[timed_test]
async fn a_draining_node_closes_other_rooms_with_1012_and_nothing_acknowledged_is_lost() {
    let mut c = TestCluster::builder().nodes(2).gateways(1).start().await;
    let key = RoomKey::new("main", "drained-chat");
    let mut a = c.connect(0, "/parties/main/drained-chat?_pk=a").await;
    assert_eq!(a.recv_text().await, "[]");
    for i in 0..5 {
        a.send_text(&format!("m{i}")).await;
        assert_eq!(a.recv_text().await, format!("m{i}"));
    }
    let owner = owner_of(&c, &key).await;
    let i = c.nodes.iter().position(|n| n.id == owner).unwrap();
    within(15, "the drain", c.nodes[i].stop()).await;
    assert_eq!(a.expect_close().await.0, 1012);
    let mut a = c.connect(0, "/parties/main/drained-chat?_pk=a").await;
    assert_eq!(a.recv_json().await, json!(["m0", "m1", "m2", "m3", "m4"]));
}

#[timed_test]
async fn a_request_that_ran_is_never_sent_again_even_when_its_room_fails() {
    use partyline_cluster::redis::Acquire;
    use partyline_tests::parties::SLOW_WRITES;
    use std::sync::atomic::Ordering;

    let c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let key = RoomKey::new("faulty", "once");
    // Start the room, so its shard is leased.
    assert_eq!(c.http(0, "GET", "/parties/faulty/once", b"").await.status, 200);
    let before = SLOW_WRITES.load(Ordering::SeqCst);
    let gw = c.gateway(0);
    let call =
        tokio::spawn(
            async move { partyline_tests::http(gw, "POST", "/parties/faulty/once/slow-write", &[], b"").await },
        );
    // While the handler runs, another incarnation takes the shard: the handler's write is then
    // refused, the room fails, and the request must not run a second time anywhere.
    within(10, "the request to start", async {
        while SLOW_WRITES.load(Ordering::SeqCst) == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let redis = c.redis().await;
    let shard = shard_of(&key);
    let _: () = ::redis::cmd("DEL").arg(redis.keys().lease(shard)).query_async(&mut redis.connection()).await.unwrap();
    let taken =
        redis.leases().acquire(shard, "intruder", "intruder-1", "127.0.0.1:9", Duration::from_secs(2)).await.unwrap();
    assert!(matches!(taken, Acquire::Granted { .. }));
    let res = within(30, "the answer", call).await.unwrap();
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(SLOW_WRITES.load(Ordering::SeqCst) - before, 1, "the request ran once");
}

#[timed_test]
async fn a_node_that_joins_takes_its_share_and_hibernating_clients_stay_connected() {
    let mut c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let rooms: Vec<String> = (0..24).map(|i| format!("share-{i}")).collect();
    let mut clients = Vec::new();
    for r in &rooms {
        let mut client = c.connect(0, &format!("/parties/counter/{r}?_pk=x")).await;
        assert_eq!(client.recv_json().await, json!({"count": 0}));
        clients.push(client);
    }
    c.add_node().await;
    c.wait_for_members(2).await;
    // The rooms whose shards rendezvous hashing now prefers on node 2 move there, a few at a
    // time, without closing their sockets.
    let redis = c.redis().await;
    let leases = redis.leases();
    within(30, "rooms to move to the new node", async {
        loop {
            let mut on_new = 0;
            for r in &rooms {
                let owner = leases.owner(shard_of(&RoomKey::new("counter", r.clone()))).await.unwrap();
                if owner.is_some_and(|o| o.owner == "node-2") {
                    on_new += 1;
                }
            }
            if on_new > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    for (client, r) in clients.iter_mut().zip(&rooms) {
        client.send_text("inc").await;
        match client.recv().await {
            Received::Text(t) => assert_eq!(serde_json::from_str::<serde_json::Value>(&t).unwrap()["count"], json!(1)),
            other => panic!("room {r}: {other:?}"),
        }
    }
}
