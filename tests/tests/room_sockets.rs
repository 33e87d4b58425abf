//! PartyKit's `stub.socket()` in a cluster: a room opens a WebSocket to a room that lives on
//! another node, as one of its clients, over real processes (a `redis-server`, two
//! `partyline node`s and a `partyline gateway` serving a JS project written by the test).
//!
//! The caller room is driven over HTTP through the gateway (`/open`, `/send`, `/close`) and
//! keeps what its socket received (`/log`); the target room answers its clients and lists them
//! (`/clients`). Times are never asserted: every wait is for an outcome, bounded by
//! [`within`].

use std::net::SocketAddr;
use std::time::Duration;

use partyline::RoomKey;
use partyline_test_macros::timed_test;
use partyline_tests::procs::ProcCluster;
use partyline_tests::{http, within};

/// The JS party of both rooms: any room can call and be called.
const SERVER: &str = r#"
export default class Server {
  constructor(room) {
    this.room = room;
    this.ws = null;
    this.log = [];
  }
  onConnect(conn) {
    conn.send(`welcome ${conn.id} to ${this.room.id}`);
  }
  onMessage(message, sender) {
    if (message === "close me") {
      sender.close(4001, "as asked");
      return;
    }
    sender.send(`${this.room.id} echo ${message}`);
  }
  async onRequest(req) {
    const url = new URL(req.url);
    const what = url.pathname.split("/").pop();
    if (what === "open") {
      const target = url.searchParams.get("target");
      const party = url.searchParams.get("party") || "main";
      const ws = await this.room.context.parties[party].get(target).socket(`/ws?_pk=from-${this.room.id}`);
      this.ws = ws;
      const log = [];
      this.log = log;
      ws.addEventListener("message", (e) => log.push(`message ${e.data}`));
      ws.addEventListener("close", (e) => log.push(`close ${e.code} ${e.reason}`));
      ws.send("hi");
      ws.send("there");
      return new Response("opened");
    }
    if (what === "send") {
      this.ws.send(url.searchParams.get("text"));
      return new Response("sent");
    }
    if (what === "close") {
      this.ws.close(1000, "done");
      return new Response("closed");
    }
    if (what === "log") return Response.json(this.log);
    if (what === "clients") return Response.json([...this.room.getConnections()].map((c) => c.id));
    return new Response("not found", { status: 404 });
  }
}
"#;

/// The same party, hibernating: a room that moves pauses its links (the sockets move with it).
const HIBERNATING: &str = r#"
import Server from "./server.js";
export default class Hibernating extends Server {
  static options = { hibernate: true };
}
"#;

/// The project, in a temporary directory: `main` and `hib` (hibernating).
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = r#"{ "name": "room-sockets", "main": "server.js", "parties": { "hib": "hib.js" } }"#;
    std::fs::write(dir.path().join("partykit.json"), config).expect("write partykit.json");
    std::fs::write(dir.path().join("server.js"), SERVER).expect("write server.js");
    std::fs::write(dir.path().join("hib.js"), HIBERNATING).expect("write hib.js");
    dir
}

/// Two nodes and a gateway on the project; no rebalancing, so that no room moves during a test
/// (a move closes a room socket with 1012, by design).
async fn cluster(project: &tempfile::TempDir) -> ProcCluster {
    let config = project.path().join("partykit.json");
    ProcCluster::builder()
        .nodes(2)
        .gateways(1)
        .env("PARTYLINE_CONFIG", config.to_str().expect("a UTF-8 path"))
        .env("PARTYLINE_REBALANCE_MAX_SHARDS", "0")
        .start()
        .await
}

/// `GET /parties/main/<room>/<what>` through the gateway; asserts a 200 and returns the body.
async fn get(gw: SocketAddr, room: &str, what: &str) -> String {
    let path = format!("/parties/main/{room}/{what}");
    let res = http(gw, "GET", &path, &[], b"").await;
    let body = res.text();
    assert_eq!(res.status, 200, "GET {path}: {body}");
    body
}

/// The caller room's log of its socket's events.
async fn log(gw: SocketAddr, room: &str) -> Vec<String> {
    serde_json::from_str(&get(gw, room, "log").await).expect("a JSON log")
}

/// Waits until the caller's log has `n` entries; returns it.
async fn log_of_len(gw: SocketAddr, room: &str, n: usize) -> Vec<String> {
    within(60, &format!("{n} events on {room}'s socket"), async {
        loop {
            let log = log(gw, room).await;
            if log.len() >= n {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A caller room (of `main`) and a target room (of `party`) owned by different nodes (each
/// loaded once, so its shard is leased), with the caller's node id and the target's.
async fn rooms_on_two_nodes(
    c: &ProcCluster,
    gw: SocketAddr,
    tag: &str,
    party: &str,
) -> (String, String, String, String) {
    let owner = |key: RoomKey| async move {
        within(30, "the room's owner", async {
            loop {
                if let Some(owner) = c.owner_of(&key).await {
                    return owner;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    };
    let caller = format!("{tag}-caller");
    get(gw, &caller, "log").await;
    let caller_node = owner(RoomKey::new("main", &caller)).await;
    let mut seen = Vec::new();
    for i in 0..64 {
        let target = format!("{tag}-{i}");
        let res = http(gw, "GET", &format!("/parties/{party}/{target}/log"), &[], b"").await;
        assert_eq!(res.status, 200, "{}", res.text());
        let target_node = owner(RoomKey::new(party, &target)).await;
        if target_node != caller_node {
            return (caller, caller_node, target, target_node);
        }
        seen.push(target);
    }
    panic!("the caller and 64 rooms all on {caller_node}: {seen:?}");
}

#[timed_test(secs = 110)]
async fn a_room_talks_to_a_room_on_another_node_over_a_socket() {
    let dir = project();
    let c = cluster(&dir).await;
    let gw = c.gateway(0).addr();
    let (caller, caller_node, target, target_node) = rooms_on_two_nodes(&c, gw, "talk", "main").await;
    println!("caller {caller} on {caller_node}, target {target} on {target_node}");

    assert_eq!(get(gw, &caller, &format!("open?target={target}")).await, "opened");
    // onConnect's frame first, then the answers to the frames in the order they were sent.
    let log = log_of_len(gw, &caller, 3).await;
    assert_eq!(
        log,
        [
            format!("message welcome from-{caller} to {target}"),
            format!("message {target} echo hi"),
            format!("message {target} echo there"),
        ]
    );
    // The target counts the caller among its clients.
    let clients: Vec<String> = serde_json::from_str(&get(gw, &target, "clients").await).unwrap();
    assert_eq!(clients, [format!("from-{caller}")]);

    // More frames, in order.
    for i in 0..20 {
        assert_eq!(get(gw, &caller, &format!("send?text=n{i}")).await, "sent");
    }
    let log = log_of_len(gw, &caller, 23).await;
    let echoes: Vec<String> = (0..20).map(|i| format!("message {target} echo n{i}")).collect();
    assert_eq!(log[3..], echoes[..]);

    // The target closes the socket: the caller sees that close.
    assert_eq!(get(gw, &caller, "send?text=close%20me").await, "sent");
    let log = log_of_len(gw, &caller, 24).await;
    assert_eq!(log[23], "close 4001 as asked", "{log:?}");
    no_clients_left(gw, &target, "the target to forget the caller").await;

    // The caller closes a new socket: the target's client leaves.
    assert_eq!(get(gw, &caller, &format!("open?target={target}")).await, "opened");
    log_of_len(gw, &caller, 3).await;
    assert_eq!(get(gw, &caller, "close").await, "closed");
    no_clients_left(gw, &target, "the target to see the caller leave").await;
}

/// Waits until room `target` has no client left.
async fn no_clients_left(gw: SocketAddr, target: &str, what: &str) {
    within(30, what, async {
        loop {
            let clients: Vec<String> = serde_json::from_str(&get(gw, target, "clients").await).unwrap();
            if clients.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[timed_test(secs = 110)]
async fn a_socket_to_a_room_whose_node_dies_closes() {
    let dir = project();
    let mut c = cluster(&dir).await;
    let gw = c.gateway(0).addr();
    let (caller, caller_node, target, target_node) = rooms_on_two_nodes(&c, gw, "crash", "main").await;
    println!("caller {caller} on {caller_node}, target {target} on {target_node}");
    assert_eq!(get(gw, &caller, &format!("open?target={target}")).await, "opened");
    log_of_len(gw, &caller, 3).await;

    let i = c.node_index(&target_node).expect("the target's node");
    c.node(i).sigkill();
    assert!(c.node_mut(i).wait_exit(Duration::from_secs(10)).await.is_some(), "{target_node} did not exit");

    // The caller's socket ends with a close event (not a hang): 1006 when the stream broke,
    // 1012 when the caller's node saw the target's node leave first.
    let log = log_of_len(gw, &caller, 4).await;
    println!("after the kill: {}", log[3]);
    assert!(log[3] == "close 1006 " || log[3] == "close 1012 room moved", "{log:?}");

    // A new socket reaches the room once the surviving node has taken it over.
    assert_eq!(get(gw, &caller, &format!("open?target={target}")).await, "opened");
    let log = log_of_len(gw, &caller, 3).await;
    assert_eq!(log[0], format!("message welcome from-{caller} to {target}"));
    assert_eq!(log[1..3], [format!("message {target} echo hi"), format!("message {target} echo there")]);
}

#[timed_test(secs = 110)]
async fn a_socket_to_a_room_that_moves_closes_with_1012() {
    let dir = project();
    let mut c = cluster(&dir).await;
    let gw = c.gateway(0).addr();
    // Hibernating, so that its move pauses the link (a room that does not hibernate says it is
    // gone instead): both close the socket with 1012.
    let (caller, caller_node, target, target_node) = rooms_on_two_nodes(&c, gw, "move", "hib").await;
    println!("caller {caller} on {caller_node}, target hib/{target} on {target_node}");
    let open = format!("open?party=hib&target={target}");
    assert_eq!(get(gw, &caller, &open).await, "opened");
    log_of_len(gw, &caller, 3).await;

    // The target's node drains: its rooms move to the caller's node.
    let i = c.node_index(&target_node).expect("the target's node");
    c.node(i).sigterm();
    assert!(c.node_mut(i).wait_exit(Duration::from_secs(60)).await.is_some(), "{target_node} did not exit");
    let log = log_of_len(gw, &caller, 4).await;
    assert_eq!(log[3], "close 1012 room moved", "{log:?}");

    // A new socket reaches the room at its new owner.
    assert_eq!(get(gw, &caller, &open).await, "opened");
    let log = log_of_len(gw, &caller, 3).await;
    assert_eq!(
        log,
        [
            format!("message welcome from-{caller} to {target}"),
            format!("message {target} echo hi"),
            format!("message {target} echo there"),
        ]
    );
}
