//! What operators see and do through a node's gRPC service (issue 20, the node side of the
//! console): `Info`, `Inspect`, `Drain`, `MoveShard` and `CloseRoom`, called over real gRPC
//! with the cluster secret, on nodes and a gateway running in this process against a real
//! Redis ([`TestCluster`]), with real WebSocket clients. Nothing is timed: every wait is a
//! generous bound, for a busy 2-core machine.

use std::time::Duration;

use partyline::runtime::placement::shard_of;
use partyline::{Limits, RoomKey};
use partyline_cluster::client::Client as NodeClient;
use partyline_cluster::redis::events::{Event, Kind};
use partyline_proto::pb;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::{TestCluster, SECRET};
use partyline_tests::within;
use serde_json::json;
use tonic::Code;

fn room(party: &str, room: &str) -> Option<pb::RoomRef> {
    Some(pb::RoomRef { party: party.into(), room: room.into() })
}

/// The index of the node holding `key`'s shard lease.
async fn owner_of(c: &TestCluster, key: &RoomKey) -> usize {
    let lease = c.redis().await.leases().owner(shard_of(key)).await.unwrap().expect("the shard is leased");
    c.nodes.iter().position(|n| n.id == lease.owner).expect("a node of this cluster holds it")
}

/// Waits (generously) until node `i`'s `Info` satisfies `ok`; returns that answer.
async fn info_until(c: &TestCluster, i: usize, what: &str, ok: impl Fn(&pb::InfoReply) -> bool) -> pb::InfoReply {
    let mut client = c.node_client(i, SECRET).await;
    within(60, what, async {
        loop {
            let info = client.info(pb::InfoRequest {}).await.expect("info").into_inner();
            if ok(&info) {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// Waits until the cluster's events hold one that `find` picks; returns it.
async fn event_where(c: &TestCluster, what: &str, find: impl Fn(&Event) -> bool) -> Event {
    let events = c.redis().await.events();
    within(30, what, async {
        loop {
            if let Some(e) = events.recent(200).await.unwrap().into_iter().find(|e| find(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

async fn inspect(client: &mut NodeClient, party: &str, name: &str, max_keys: u32) -> pb::RoomView {
    client.inspect(pb::InspectRequest { room: room(party, name), max_keys }).await.expect("inspect").into_inner()
}

#[timed_test]
async fn info_reports_state_connections_and_counters() {
    let c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let mut ws = c.connect(0, "/parties/main/info-room?_pk=alice").await;
    assert_eq!(ws.recv_text().await, "[]");
    ws.send_text("hello").await;
    assert_eq!(ws.recv_text().await, "hello");
    let res = c.http(0, "GET", "/parties/main/info-room", b"").await;
    assert_eq!(res.status, 200);

    let info = c.node_info(0).await;
    assert_eq!((info.node_id.as_str(), info.state.as_str()), ("node-1", "ready"));
    assert!(info.inc.starts_with("node-1-"), "incarnation {}", info.inc);
    assert_eq!((info.rooms, info.connections), (1, 1), "{info:?}");
    assert!(info.shards_owned >= 1);
    let now_ms = partyline::storage::now_ms() as u64;
    assert!(info.started_unix_ms > now_ms - 600_000 && info.started_unix_ms <= now_ms, "{info:?}");
    let timing = partyline_node::shards::LeaseTiming::FAST;
    assert_eq!(info.lease_ttl_ms, timing.ttl.as_millis() as u64);
    assert_eq!(info.fence_after_ms, timing.fence_after.as_millis() as u64);
    if cfg!(target_os = "linux") {
        // The node runs in this process, whose CPU time the kernel gives in whole clock ticks
        // (10 ms): a cluster this idle can be under one (a CI run saw 0.0).
        // Use one, then ask again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while partyline_node::process::cpu_seconds() == 0.0 && std::time::Instant::now() < deadline {
            std::hint::black_box((0..100_000u64).fold(0u64, |a, b| a ^ b.wrapping_mul(31)));
        }
        let info = c.node_info(0).await;
        assert!(info.rss_bytes > 0 && info.cpu_seconds > 0.0, "{info:?}");
    }
    let counters = info.counters.expect("counters");
    // A connect and a frame in; the history, the echo broadcast and the bookkeeping out.
    assert!(counters.messages_in >= 2 && counters.messages_out >= 2, "{counters:?}");
    assert!(counters.commits >= 1, "the message was stored: {counters:?}");
    assert!(counters.requests >= 1, "{counters:?}");
    assert_eq!(counters.alarms, 0, "the chat sets no alarm: {counters:?}");

    // The client leaves: its connection is no longer counted.
    ws.close(1000).await;
    info_until(&c, 0, "the connection to be gone from Info", |i| i.connections == 0).await;

    // Every operator call needs the cluster secret.
    let mut stranger = c.node_client(0, "not-the-cluster-secret-at-all").await;
    assert_eq!(stranger.info(pb::InfoRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
    let asked = stranger.inspect(pb::InspectRequest { room: room("main", "info-room"), max_keys: 1 }).await;
    assert_eq!(asked.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        stranger.drain(pb::DrainRequest { who: "mallory".into() }).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let moved = stranger.move_shard(pb::MoveShardRequest { shard: 1, who: "mallory".into() }).await;
    assert_eq!(moved.unwrap_err().code(), Code::Unauthenticated);
    let closed = stranger.close_room(close_request("main", "info-room", "mallory", 0)).await;
    assert_eq!(closed.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(c.node_info(0).await.state, "ready", "nothing a stranger asked happened");
}

#[timed_test]
async fn inspect_shows_a_running_rooms_connections_and_storage_and_any_node_its_storage() {
    let c = TestCluster::builder().nodes(2).gateways(1).start().await;
    let mut ws = c.connect(0, "/parties/faulty/inspected?_pk=alice&tags=red,blue").await;
    // Two keys, each acknowledged once durable.
    ws.send_text("putkey k1 3").await;
    assert_eq!(ws.recv_text().await, "ok");
    ws.send_text("putkey k0 5").await;
    assert_eq!(ws.recv_text().await, "ok");

    let key = RoomKey::new("faulty", "inspected");
    let owner = owner_of(&c, &key).await;
    let lease = c.redis().await.leases().owner(shard_of(&key)).await.unwrap().expect("leased");
    let view = inspect(&mut c.node_client(owner, SECRET).await, "faulty", "inspected", 10).await;
    assert_eq!(view.node_id, c.nodes[owner].id);
    assert!(view.running, "{view:?}");
    assert_eq!((view.shard, view.epoch), (shard_of(&key) as u32, lease.epoch));
    assert!(!view.hibernates);
    let gateway = c.gateways[0].id.clone();
    assert_eq!(
        view.connections,
        [pb::ConnView { id: "alice".into(), tags: vec!["alice".into(), "red".into(), "blue".into()], gateway }]
    );
    // Keys plus values: `k0` with 5 bytes, `k1` with 3.
    assert_eq!((view.storage_keys, view.storage_bytes), (2, 2 + 5 + 2 + 3));
    assert_eq!(view.keys, ["k0", "k1"]);
    assert_eq!(view.quota_bytes, Limits::default().max_room_bytes);
    assert_eq!(view.next_alarm_ms, 0);
    // As many names as asked for.
    assert_eq!(inspect(&mut c.node_client(owner, SECRET).await, "faulty", "inspected", 1).await.keys, ["k0"]);

    // The other node does not run it, but reads its storage just the same.
    let other = inspect(&mut c.node_client(1 - owner, SECRET).await, "faulty", "inspected", 10).await;
    assert_eq!(other.node_id, c.nodes[1 - owner].id);
    assert!(!other.running && other.connections.is_empty() && other.epoch == 0, "{other:?}");
    assert_eq!((other.storage_keys, other.storage_bytes, other.keys), (2, 12, vec!["k0".into(), "k1".into()]));
    drop(ws);
}

#[timed_test]
async fn inspect_of_a_stopped_room_still_shows_its_storage() {
    let c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let res = c.http(0, "POST", "/parties/main/kept", br#""remember me""#).await;
    assert_eq!((res.status, res.text().as_str()), (200, "OK"));
    let mut node = c.node_client(0, SECRET).await;
    let closed = node.close_room(close_request("main", "kept", "erin", 0)).await.expect("close").into_inner();
    assert_eq!((closed.running, closed.connections), (true, 0));
    info_until(&c, 0, "the room to stop", |i| i.rooms == 0).await;

    let view = inspect(&mut node, "main", "kept", 10).await;
    assert!(!view.running && view.connections.is_empty(), "{view:?}");
    assert_eq!((view.storage_keys, view.keys.as_slice()), (1, &["messages".to_string()][..]));
    assert!(view.storage_bytes > "messages".len() as u64 + "remember me".len() as u64, "{view:?}");
    // A room that never stored anything: nothing, and still an answer.
    let empty = inspect(&mut node, "main", "never-used", 10).await;
    assert_eq!((empty.running, empty.storage_keys, empty.storage_bytes, empty.keys.len()), (false, 0, 0, 0));
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 110)]
async fn a_drain_moves_every_shard_off_and_the_drained_node_stays_a_member() {
    // One node holds every room; the second joins without taking shards over by itself.
    let mut c = TestCluster::builder().nodes(1).gateways(1).no_rebalance().start().await;
    let rooms = 8;
    for i in 0..rooms {
        let res = c.http(0, "POST", &format!("/parties/main/drain-{i}"), format!("\"m{i}\"").as_bytes()).await;
        assert_eq!((res.status, res.text().as_str()), (200, "OK"), "room {i}");
    }
    let mut ws = c.connect(0, "/parties/main/drain-0?_pk=watcher").await;
    assert_eq!(ws.recv_json().await, json!(["m0"]));
    c.add_node().await;
    c.wait_for_members(2).await;
    // (Rooms without a client may have gone idle meanwhile; the watched one runs.)
    let before = c.node_info(0).await;
    assert!(before.rooms >= 1 && before.shards_owned >= 1, "{before:?}");

    let mut n1 = c.node_client(0, SECRET).await;
    let started = n1.drain(pb::DrainRequest { who: "alice".into() }).await.expect("drain").into_inner();
    assert!(!started.already);
    assert!(started.rooms >= 1 && started.shards >= 1, "{started:?}");
    let again = n1.drain(pb::DrainRequest { who: "bob".into() }).await.expect("drain").into_inner();
    assert!(again.already, "a second drain starts nothing");

    let drained = info_until(&c, 0, "node-1 to be drained", |i| i.state == "drained").await;
    assert_eq!((drained.shards_owned, drained.rooms, drained.connections), (0, 0, 0), "{drained:?}");
    assert!(n1.drain(pb::DrainRequest { who: "bob".into() }).await.unwrap().into_inner().already, "drained already");
    // Its chat client was moved off (a party that does not hibernate closes with 1012).
    assert_eq!(ws.expect_close().await.0, 1012);

    // Still a member, announced as draining: gateways place nothing there.
    let redis = c.redis().await;
    let live = redis.membership().live().await.unwrap();
    let me = live.iter().find(|n| n.id == "node-1").expect("node-1 is still a member");
    assert!(me.draining, "{me:?}");
    // Every room answers with its history, from the other node.
    for i in 0..rooms {
        let res = c.http(0, "GET", &format!("/parties/main/drain-{i}"), b"").await;
        assert_eq!(res.status, 200, "room {i}");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), json!([format!("m{i}")]));
        assert_eq!(owner_of(&c, &RoomKey::new("main", format!("drain-{i}"))).await, 1, "room {i}");
    }
    assert_eq!(c.node_info(0).await.state, "drained");

    // A caller that insists (redirected twice already) is refused a room there: counted, and
    // reported in the events.
    let asked = n1
        .request(pb::RoomRequest {
            room: room("main", "drain-0"),
            head: Some(pb::HttpHead { method: "GET".into(), uri: "/parties/main/drain-0".into(), headers: Vec::new() }),
            body: Default::default(),
            hops: 2,
            avoid: Vec::new(),
        })
        .await
        .expect("request")
        .into_inner();
    assert!(matches!(asked.kind, Some(pb::room_response::Kind::NotOwner(_))), "{asked:?}");
    let info = c.node_info(0).await;
    assert!(info.counters.expect("counters").rooms_refused >= 1, "{info:?}");

    let drain = event_where(&c, "the drain event", |e| e.kind == Kind::Drain && e.source == "node-1").await;
    assert_eq!(drain.who.as_deref(), Some("alice"));
    let done = event_where(&c, "the drained event", |e| e.kind == Kind::Drained && e.source == "node-1").await;
    assert_eq!(done.who.as_deref(), Some("alice"));
    assert!(done.text.contains("rooms moved"), "{done:?}");
    event_where(&c, "the refusal event", |e| e.kind == Kind::Refused && e.source == "node-1").await;

    // A later stop is a clean shutdown: nothing left to move, and the node leaves.
    c.nodes[0].stop().await;
    within(30, "node-1 to leave the membership", async {
        while redis.membership().live().await.unwrap().iter().any(|n| n.id == "node-1") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let res = c.http(0, "GET", "/parties/main/drain-3", b"").await;
    assert_eq!(res.status, 200);
}

#[timed_test]
async fn move_shard_hands_an_owned_shard_over_and_a_node_without_it_says_so() {
    let c = TestCluster::builder().nodes(2).gateways(1).no_rebalance().start().await;
    let res = c.http(0, "POST", "/parties/main/moving", br#""stay""#).await;
    assert_eq!(res.status, 200);
    // A client keeps the room running until it moves.
    let mut ws = c.connect(0, "/parties/main/moving?_pk=m").await;
    assert_eq!(ws.recv_json().await, json!(["stay"]));
    let key = RoomKey::new("main", "moving");
    let shard = shard_of(&key);
    let owner = owner_of(&c, &key).await;
    let leases = c.redis().await.leases();
    let before = leases.owner(shard).await.unwrap().expect("leased");

    let mut elsewhere = c.node_client(1 - owner, SECRET).await;
    let reply = elsewhere
        .move_shard(pb::MoveShardRequest { shard: shard as u32, who: "carol".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.held, reply.rooms), (false, 0), "a node without the shard moves nothing");

    let mut holder = c.node_client(owner, SECRET).await;
    let reply = holder
        .move_shard(pb::MoveShardRequest { shard: shard as u32, who: "carol".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.held, reply.rooms), (true, 1));
    assert_eq!(ws.expect_close().await.0, 1012, "moved (a party that does not hibernate closes its sockets)");
    // Released (or already granted again, under a new epoch).
    let after = leases.owner(shard).await.unwrap();
    assert!(after.as_ref().is_none_or(|l| l.epoch != before.epoch), "{after:?}");
    let again = holder
        .move_shard(pb::MoveShardRequest { shard: shard as u32, who: "carol".into() })
        .await
        .unwrap()
        .into_inner();
    if after.is_none() {
        assert!(!again.held, "released: nothing left to move");
    }
    // The room lives on, with its storage.
    let res = c.http(0, "GET", "/parties/main/moving", b"").await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), json!(["stay"]));

    let bad = holder.move_shard(pb::MoveShardRequest { shard: 4096, who: "carol".into() }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let moved = event_where(&c, "the move event", |e| e.kind == Kind::Action && e.shard == Some(shard)).await;
    assert_eq!((moved.who.as_deref(), moved.source.as_str()), (Some("carol"), c.nodes[owner].id.as_str()));
}

#[timed_test]
async fn close_room_closes_its_clients_with_1012_and_they_come_back_to_its_storage() {
    let c = TestCluster::builder().nodes(1).gateways(1).start().await;
    let mut ws = c.connect(0, "/parties/main/closing?_pk=a").await;
    assert_eq!(ws.recv_text().await, "[]");
    ws.send_text("before").await;
    assert_eq!(ws.recv_text().await, "before");

    let mut node = c.node_client(0, SECRET).await;
    let reply = node.close_room(close_request("main", "closing", "dave", 0)).await.expect("close").into_inner();
    assert_eq!((reply.running, reply.connections), (true, 1));
    assert_eq!(ws.expect_close().await, (1012, partyline::client_text::CLOSED_BY_OPERATOR.to_string()));
    // A client that reconnects gets a fresh instance that reloaded the storage.
    let mut back = c.connect(0, "/parties/main/closing?_pk=a").await;
    assert_eq!(back.recv_json().await, json!(["before"]));

    // A room that does not run here: nothing to close.
    let idle = node.close_room(close_request("main", "not-running", "dave", 0)).await.expect("close").into_inner();
    assert_eq!((idle.running, idle.connections), (false, 0));
    // A code no server may send.
    let bad = node.close_room(close_request("main", "closing", "dave", 1006)).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    let closed =
        event_where(&c, "the close event", |e| e.kind == Kind::Action && e.room.as_deref() == Some("main/closing"))
            .await;
    assert_eq!((closed.who.as_deref(), closed.source.as_str()), (Some("dave"), "node-1"));
    drop(back);
}

/// An operator's request to close `party/name`'s connections with `code` (0: the default).
fn close_request(party: &str, name: &str, who: &str, code: u32) -> pb::CloseRoomRequest {
    pb::CloseRoomRequest { room: room(party, name), who: who.into(), code, reason: String::new() }
}
