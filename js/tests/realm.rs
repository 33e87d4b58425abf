//! The rooms of a JS party share one realm per process (a QuickJS runtime and context with the
//! prelude and the party's module evaluated once), as a Workers isolate holds many Durable
//! Objects: module state is shared, instance state is each room's own, and a realm that runs out
//! of memory is replaced, its rooms restarted.

use std::time::Duration;

use bytes::Bytes;
use partyline::testing::{body_text, request, TestRoom};
use partyline::{Limits, PartyRegistry};
use partyline_js::{JsSettings, Project};

/// A project in a temporary directory: `partykit.json` and `server.js`.
fn project(server: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("partykit.json"), r#"{ "main": "server.js" }"#).expect("writing partykit.json");
    std::fs::write(dir.path().join("server.js"), server).expect("writing the server");
    dir
}

async fn load(dir: &tempfile::TempDir, limits: &Limits, settings: &JsSettings) -> PartyRegistry {
    let project = Project::load(&dir.path().join("partykit.json"), limits, settings).await.expect("the project loads");
    project.registry(PartyRegistry::new()).expect("the registry")
}

fn room(registry: &PartyRegistry, name: &str, limits: &Limits) -> TestRoom {
    let factory = registry.get("main").expect("the party is registered").clone();
    TestRoom::with_factory("main", name, factory).limits(limits.clone()).start()
}

async fn get(room: &TestRoom) -> String {
    let path = format!("/parties/main/{}", room.key().room);
    body_text(&room.request(request("GET", &path, Bytes::new())).await).to_string()
}

/// The module is evaluated once for the party's rooms in the process (its top-level code runs
/// once, its variables are shared); each room has its own instance.
#[tokio::test]
async fn the_rooms_of_a_party_share_the_module_and_keep_their_own_instance() {
    let server = r#"
let evaluated = 0;
evaluated++;
let instances = 0;
export default class Counter {
  // (The instance made once with no room, id "", to read instance options is not counted.)
  constructor(room) { this.room = room; this.n = room.id ? ++instances : 0; this.requests = 0; }
  onRequest() {
    this.requests++;
    return new Response(`module ${evaluated}, instance ${this.n} of ${instances}, requests ${this.requests}`);
  }
}
"#;
    let dir = project(server);
    let limits = Limits::default();
    let registry = load(&dir, &limits, &JsSettings::default()).await;
    let a = room(&registry, "a", &limits);
    assert_eq!(get(&a).await, "module 1, instance 1 of 1, requests 1");
    let b = room(&registry, "b", &limits);
    assert_eq!(get(&b).await, "module 1, instance 2 of 2, requests 1");
    assert_eq!(get(&a).await, "module 1, instance 1 of 2, requests 2");
}

/// A realm over its heap limit is replaced: the room whose code ran out of memory and the other
/// rooms of the party are restarted (their sockets closed with 1011, "room restarted"), and they
/// come back on a new realm, with the module evaluated afresh.
#[tokio::test]
async fn a_realm_out_of_memory_restarts_the_rooms_of_its_party() {
    let server = r#"
let evaluated = 0;
evaluated++;
const hoard = [];
export default class Grower {
  onMessage(msg, conn) {
    if (msg === "grow") for (;;) hoard.push(new Array(100000).fill(1));
    conn.send(`module ${evaluated}: ${msg}`);
  }
}
"#;
    let dir = project(server);
    let limits = Limits { handler_timeout: Duration::from_secs(5), ..Limits::default() };
    let settings = JsSettings { memory_bytes: 32 << 20, ..JsSettings::default() };
    let registry = load(&dir, &limits, &settings).await;
    let a = room(&registry, "a", &limits);
    let b = room(&registry, "b", &limits);
    let mut x = a.connect("x").await;
    let mut y = b.connect("y").await;
    y.send("hello").await;
    assert_eq!(y.recv_text().await, "module 1: hello");
    x.send("grow").await;
    let (code, reason) = x.recv_close().await;
    assert_eq!((code, reason.as_str()), (1011, partyline::client_text::ROOM_RESTARTED));
    // The other room finds its realm gone at its next event.
    y.send("again").await;
    let (code, reason) = y.recv_close().await;
    assert_eq!((code, reason.as_str()), (1011, partyline::client_text::ROOM_RESTARTED));
    let mut z = b.connect("z").await;
    z.send("back").await;
    assert_eq!(z.recv_text().await, "module 1: back");
}

/// A room that stopped and runs again may have run on another node meanwhile: it does not find
/// what its earlier run left in module variables (it gets a new realm), while a room that never
/// stopped keeps the realm it has.
#[tokio::test]
async fn a_room_that_runs_again_does_not_see_the_module_state_of_its_earlier_run() {
    let server = r#"
const seen = new Map();
export default class Remembers {
  constructor(room) { this.room = room; }
  onRequest() {
    const before = seen.get(this.room.id) || 0;
    seen.set(this.room.id, before + 1);
    return new Response(`${before} before`);
  }
}
"#;
    let dir = project(server);
    let limits = Limits::default();
    let registry = load(&dir, &limits, &JsSettings::default()).await;
    let mut a = room(&registry, "a", &limits);
    let b = room(&registry, "b", &limits);
    assert_eq!(get(&a).await, "0 before");
    assert_eq!(get(&a).await, "1 before");
    assert_eq!(get(&b).await, "0 before");
    a.restart().await;
    assert_eq!(get(&a).await, "0 before", "the run after the restart sees module state of the earlier run");
    assert_eq!(get(&b).await, "1 before", "a room that kept running keeps its module state");
}

/// A handler stopped at the time limit leaves nothing behind in the realm, which outlives it: the
/// timers it set are cancelled and their callbacks dropped with what they hold. Each stopped
/// handler here holds 8 MB in a timer; if those stayed, the fourth would take the 32 MiB realm
/// over its limit and restart the room (its module state, the count, would start again).
#[tokio::test]
async fn a_stopped_handler_leaves_no_timers_in_the_realm() {
    let server = r#"
let spins = 0;
export default class Spinner {
  onRequest(req) {
    if (req.url.endsWith("?spin")) {
      spins++;
      const held = new Float64Array(1 << 20);
      setTimeout(() => held.length, 60000);
      for (;;) {}
    }
    return new Response(`spins ${spins}`);
  }
}
"#;
    let dir = project(server);
    let limits = Limits { handler_timeout: Duration::from_millis(200), ..Limits::default() };
    let settings = JsSettings { memory_bytes: 32 << 20, ..JsSettings::default() };
    let registry = load(&dir, &limits, &settings).await;
    let room = room(&registry, "a", &limits);
    let path = format!("/parties/main/{}?spin", room.key().room);
    for _ in 0..6 {
        let res = room.request(request("GET", &path, Bytes::new())).await;
        assert!(res.status().is_server_error(), "a spinning handler answers {}", res.status());
    }
    assert_eq!(get(&room).await, "spins 6");
}
