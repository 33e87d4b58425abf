//! `room.storage.transaction(fn)` (writes applied together when `fn` resolves, dropped when it
//! throws or calls `txn.rollback()`, reads that see the transaction's own writes), and sockets
//! from a room to another (`room.parties.<name>.get(id).socket()`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use partyline::room_socket::RoomSocket;
use partyline::runtime::handle::RoomHandle;
use partyline::testing::{body_text, TestRoom, WAIT};
use partyline::{Limits, Parties, PartiesClient, PartyRegistry, Request, Response, RoomKey};
use partyline_js::{JsSettings, Project};

/// A project in a temporary directory: `partykit.json` and the given files.
fn project(config: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("partykit.json"), config).expect("writing partykit.json");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("writing a module");
    }
    dir
}

/// Loads the project in `dir`.
async fn load(dir: &tempfile::TempDir) -> PartyRegistry {
    let project = Project::load(&dir.path().join("partykit.json"), &Limits::default(), &JsSettings::default())
        .await
        .expect("the project loads");
    project.registry(PartyRegistry::new()).expect("the registry")
}

/// Starts room `room` of party `party` of `registry`.
fn start(registry: &PartyRegistry, party: &str, room: &str) -> TestRoom {
    let factory: Arc<dyn partyline::party::PartyFactory> = registry.get(party).expect("the party").clone();
    TestRoom::with_factory(party, room, factory).start()
}

/// Rooms of a test that reach one another (requests and sockets), as in one process.
#[derive(Default)]
struct Rooms {
    handles: Mutex<HashMap<RoomKey, RoomHandle>>,
}

impl Rooms {
    /// Starts room `room` of party `party`; the other rooms reach it through `this`.
    fn start(this: &Arc<Rooms>, registry: &PartyRegistry, party: &str, room: &str) -> TestRoom {
        let factory: Arc<dyn partyline::party::PartyFactory> = registry.get(party).expect("the party").clone();
        let room = TestRoom::with_factory(party, room, factory).parties(Parties::new(this.clone())).start();
        this.handles.lock().expect("the rooms").insert(room.key().clone(), room.handle().clone());
        room
    }

    fn handle(&self, room: &RoomKey) -> anyhow::Result<RoomHandle> {
        let handle = self.handles.lock().expect("the rooms").get(room).cloned();
        handle.ok_or_else(|| anyhow::anyhow!("no room {room} in this test"))
    }
}

#[async_trait]
impl PartiesClient for Rooms {
    async fn fetch(&self, room: RoomKey, req: Request) -> anyhow::Result<Response> {
        let handle = self.handle(&room)?;
        Ok(handle.request(partyline::web::room_request(&room, req)).await?)
    }

    fn has_party(&self, party: &str) -> bool {
        self.handles.lock().expect("the rooms").keys().any(|k| k.party == party)
    }

    async fn socket(&self, room: RoomKey, id: String, req: Request) -> anyhow::Result<RoomSocket> {
        let handle = self.handle(&room)?;
        RoomSocket::open(&handle, &id, partyline::web::room_request(&room, req)).await
    }
}

const MAIN: &str = r#"{ "main": "server.js" }"#;

/// A party whose requests run transactions: `?op=<name>` picks one, the answer is JSON.
const TXN: &str = r#"
export default class T {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    const s = this.room.storage;
    const op = new URL(req.url, "http://host").searchParams.get("op");
    const out = {};
    if (op === "seed") {
      await s.put({ a: 1, b: 2, c: 3 });
    } else if (op === "throw") {
      try {
        await s.transaction(async (txn) => {
          await txn.put("a", 100);
          await txn.put("x", "new");
          await txn.delete("b");
          out.inside = [await txn.get("a"), await txn.get("x"), await txn.get("b")];
          throw new Error("boom");
        });
      } catch (e) {
        out.error = e.message;
      }
    } else if (op === "ok") {
      out.result = await s.transaction(async (txn) => {
        await txn.put("a", 10);
        await txn.put({ y: [1, 2], z: { k: true } });
        out.deleted = await txn.delete("b");
        out.deletedAgain = await txn.delete("b");
        out.many = [...(await txn.get(["a", "b", "c", "y"]))];
        out.list = [...(await txn.list())];
        out.limited = [...(await txn.list({ limit: 2 }))];
        out.reversed = [...(await txn.list({ reverse: true, limit: 2 }))].map(([k]) => k);
        out.prefixed = [...(await txn.list({ prefix: "y" }))].map(([k]) => k);
        return "done";
      });
    } else if (op === "rollback") {
      out.result = await s.transaction(async (txn) => {
        await txn.put("c", 30);
        await txn.delete("a");
        txn.rollback();
        try { await txn.put("c", 31); } catch (e) { out.after = e.message; }
        return "rolled back";
      });
    }
    out.now = [...(await s.list())];
    return Response.json(out);
  }
}
"#;

/// Runs `op` on `room` and returns its JSON answer.
async fn run(room: &TestRoom, op: &str) -> serde_json::Value {
    let res = get(room, &format!("op={op}")).await;
    assert_eq!(res.status(), 200, "{}", body_text(&res));
    serde_json::from_str(body_text(&res)).expect("a JSON answer")
}

/// `GET` of the room's path with `query`.
async fn get(room: &TestRoom, query: &str) -> Response {
    room.get(Some(&format!("/parties/{}/{}?{query}", room.key().party, room.key().room))).await
}

/// The writes of a transaction whose callback throws are dropped; the error reaches the caller;
/// inside, reads saw the transaction's own writes.
#[tokio::test]
async fn a_throwing_transaction_leaves_storage_as_it_was() {
    let dir = project(MAIN, &[("server.js", TXN)]);
    let registry = load(&dir).await;
    let room = start(&registry, "main", "r");
    run(&room, "seed").await;
    let out = run(&room, "throw").await;
    assert_eq!(out["error"], "boom");
    assert_eq!(out["inside"], serde_json::json!([100, "new", null]), "reads inside see the transaction's writes");
    assert_eq!(out["now"], serde_json::json!([["a", 1], ["b", 2], ["c", 3]]));
    let again = run(&room, "").await;
    assert_eq!(again["now"], serde_json::json!([["a", 1], ["b", 2], ["c", 3]]), "a second request sees none of it");
    assert_eq!(room.stored::<i64>("a").await, Some(1));
    assert_eq!(room.stored::<i64>("b").await, Some(2));
    assert_eq!(room.stored::<String>("x").await, None);
}

/// The writes of a transaction that resolves are all applied; its reads (get, get of many keys,
/// list with a limit, reversed, by prefix) see them over the room's storage.
#[tokio::test]
async fn a_successful_transaction_applies_its_writes() {
    let dir = project(MAIN, &[("server.js", TXN)]);
    let registry = load(&dir).await;
    let room = start(&registry, "main", "r");
    run(&room, "seed").await;
    let out = run(&room, "ok").await;
    assert_eq!(out["result"], "done");
    assert_eq!(out["deleted"], true);
    assert_eq!(out["deletedAgain"], false, "a key the transaction deleted is gone for it");
    assert_eq!(out["many"], serde_json::json!([["a", 10], ["c", 3], ["y", [1, 2]]]));
    let all = serde_json::json!([["a", 10], ["c", 3], ["y", [1, 2]], ["z", { "k": true }]]);
    assert_eq!(out["list"], all);
    assert_eq!(out["limited"], serde_json::json!([["a", 10], ["c", 3]]));
    assert_eq!(out["reversed"], serde_json::json!(["z", "y"]));
    assert_eq!(out["prefixed"], serde_json::json!(["y"]));
    assert_eq!(out["now"], all);
    assert_eq!(run(&room, "").await["now"], all, "a second request sees the writes");
    assert_eq!(room.stored::<i64>("a").await, Some(10));
    assert_eq!(room.stored::<i64>("b").await, None);
    assert_eq!(room.stored::<Vec<i64>>("y").await, Some(vec![1, 2]));
}

/// `txn.rollback()` drops the writes made before it; the callback's value is still returned, and
/// the transaction takes no more operations.
#[tokio::test]
async fn rollback_discards_the_writes() {
    let dir = project(MAIN, &[("server.js", TXN)]);
    let registry = load(&dir).await;
    let room = start(&registry, "main", "r");
    run(&room, "seed").await;
    let out = run(&room, "rollback").await;
    assert_eq!(out["result"], "rolled back");
    assert_eq!(out["after"], "this transaction was rolled back");
    assert_eq!(out["now"], serde_json::json!([["a", 1], ["b", 2], ["c", 3]]));
    assert_eq!(room.stored::<i64>("a").await, Some(1));
    assert_eq!(room.stored::<i64>("c").await, Some(3));
}

/// Room A: `?do=open` opens a socket to room `b` of party `echo` and sends "hello" on it,
/// `?do=send&text=…` sends, `?do=close` closes it; `?do=log` tells what its listeners saw.
const OPENER: &str = r#"
const log = [];
export default class A {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    const q = new URL(req.url, "http://host").searchParams;
    switch (q.get("do")) {
      case "open": {
        const ws = await this.room.parties.echo.get("b").socket("/path?x=1&_pk=from-a");
        this.ws = ws;
        ws.addEventListener("open", () => log.push("open"));
        ws.addEventListener("message", (e) => log.push("message " + e.data));
        ws.addEventListener("close", (e) => log.push(`close ${e.code} ${e.reason} ${ws.readyState}`));
        ws.send("hello");
        return new Response(String(ws.readyState));
      }
      case "connect": {
        const ws = await this.room.parties.echo.get("b").connect();
        ws.onmessage = (e) => log.push("connect got " + e.data);
        return new Response("connected");
      }
      case "send": this.ws.send(q.get("text")); return new Response("sent");
      case "close": this.ws.close(1000, "bye"); return new Response("closing");
      case "missing":
        try { await this.room.parties.nothere.get("x").socket(); return new Response("opened?"); }
        catch (e) { return new Response(e.message); }
      default: return Response.json(log);
    }
  }
}
"#;

/// Room B: greets each client with its id and `x`, echoes, closes on "kick"; `GET` tells what
/// it saw.
const ECHO: &str = r#"
const log = [];
export default class B {
  constructor(room) { this.room = room; }
  onConnect(conn) {
    log.push("connect " + conn.id);
    conn.send("welcome " + conn.id + " x=" + new URL(conn.uri).searchParams.get("x"));
  }
  onMessage(msg, conn) {
    log.push("message " + msg);
    if (msg === "kick") return conn.close(4000, "kicked");
    conn.send("echo " + msg);
  }
  onClose(conn) { log.push("close " + conn.id); }
  onRequest() { return Response.json(log); }
}
"#;

const SOCKETS: &str = r#"{ "main": "a.js", "parties": { "echo": "b.js" } }"#;

/// Waits until `room`'s log (its answer to `?do=log`) has an entry starting with `entry`;
/// returns the log.
async fn until_logged(room: &TestRoom, entry: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let res = get(room, "do=log").await;
        let log: Vec<String> = serde_json::from_str(body_text(&res)).expect("a JSON log");
        if log.iter().any(|e| e.starts_with(entry)) {
            return log;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entry:?} never logged: {log:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A room opens a socket to another, which sees a client with the path's id and query: frames
/// go both ways, the socket's listeners run as the room's events; closing it from the opener
/// fires its close listener and the other room's `onClose`.
#[tokio::test]
async fn a_room_talks_to_another_over_a_socket_and_closes_it() {
    let dir = project(SOCKETS, &[("a.js", OPENER), ("b.js", ECHO)]);
    let registry = load(&dir).await;
    let rooms = Arc::new(Rooms::default());
    let a = Rooms::start(&rooms, &registry, "main", "a");
    let b = Rooms::start(&rooms, &registry, "echo", "b");
    let res = get(&a, "do=open").await;
    assert_eq!(body_text(&res), "1", "the socket is open once socket() resolved");
    let log = until_logged(&a, "message echo hello").await;
    assert_eq!(log, ["open", "message welcome from-a x=1", "message echo hello"]);
    get(&a, "do=send&text=again").await;
    until_logged(&a, "message echo again").await;
    get(&a, "do=close").await;
    let log = until_logged(&a, "close 1000 bye 3").await;
    assert_eq!(log.len(), 5, "{log:?}");
    until_logged(&b, "close from-a").await;
    let log = until_logged(&b, "message again").await;
    assert_eq!(log, ["connect from-a", "message hello", "message again", "close from-a"]);
}

/// The other room closing the socket fires the opener's close listener with its code and
/// reason; `connect()` is the same as `socket()`.
#[tokio::test]
async fn the_other_room_closing_the_socket_reaches_the_opener() {
    let dir = project(SOCKETS, &[("a.js", OPENER), ("b.js", ECHO)]);
    let registry = load(&dir).await;
    let rooms = Arc::new(Rooms::default());
    let a = Rooms::start(&rooms, &registry, "main", "a");
    let b = Rooms::start(&rooms, &registry, "echo", "b");
    get(&a, "do=open").await;
    until_logged(&a, "message echo hello").await;
    get(&a, "do=send&text=kick").await;
    let log = until_logged(&a, "close 4000 kicked 3").await;
    assert_eq!(log.last().map(String::as_str), Some("close 4000 kicked 3"), "{log:?}");
    until_logged(&b, "close from-a").await;
    assert_eq!(body_text(&get(&a, "do=connect").await), "connected");
    let log = until_logged(&a, "connect got welcome ").await;
    assert!(log.last().is_some_and(|e| e.ends_with(" x=null")), "{log:?}");
}

/// A socket to a party that does not exist is refused with a clear error.
#[tokio::test]
async fn a_socket_to_a_missing_party_is_refused() {
    let dir = project(SOCKETS, &[("a.js", OPENER), ("b.js", ECHO)]);
    let registry = load(&dir).await;
    let rooms = Arc::new(Rooms::default());
    let a = Rooms::start(&rooms, &registry, "main", "a");
    assert_eq!(body_text(&get(&a, "do=missing").await), "Party nothere not found");
}
