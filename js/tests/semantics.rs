//! Durable Object semantics of JS parties: handlers interleave at awaits that are not storage
//! operations (the input gate is closed only around storage and `blockConcurrencyWhile`), the
//! static hooks run concurrently, and the smaller PartyKit behaviours a party relies on (instance
//! options, close codes, room calls with a query, timers after a time limit, storage order,
//! unhandled rejections, errors with an HTTP status).
//!
//! Every test is decided by what happens, never by how long it took: a room that should not be
//! held up is asked to do something only it can do while the other handler still waits, and
//! the generous timeouts of `partyline::testing` only turn a hang into a failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use partyline::party::PartyFactory;
use partyline::runtime::handle::RoomHandle;
use partyline::store::{Fence, ListOptions, MemoryStore, RoomKey, Store, StoreError, WriteOp};
use partyline::testing::{body_text, request, TestRoom};
use partyline::{Before, Env, Limits, Lobby, Parties, PartiesClient, PartyRegistry, Request, Response};
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

/// Loads the project in `dir` with `limits`.
async fn load(dir: &tempfile::TempDir, limits: &Limits) -> PartyRegistry {
    let project = Project::load(&dir.path().join("partykit.json"), limits, &JsSettings::default())
        .await
        .expect("the project loads");
    project.registry(PartyRegistry::new()).expect("the registry")
}

/// The factory of party `name`.
fn factory(registry: &PartyRegistry, name: &str) -> Arc<dyn PartyFactory> {
    registry.get(name).expect("the party is registered").clone()
}

/// Rooms of the test, reachable from one another (and from the static hooks) by their key.
#[derive(Default)]
struct Rooms {
    handles: Mutex<HashMap<RoomKey, RoomHandle>>,
}

impl Rooms {
    /// Starts room `room` of party `party` with `limits`; other rooms reach it through `this`.
    fn start(this: &Arc<Rooms>, registry: &PartyRegistry, party: &str, room: &str, limits: Limits) -> TestRoom {
        TestRoom::with_factory(party, room, factory(registry, party))
            .parties(this.parties())
            .limits(limits)
            .start()
            .register(this)
    }

    fn parties(self: &Arc<Self>) -> Parties {
        Parties::new(self.clone())
    }
}

/// Registers a started room with [`Rooms`].
trait Register {
    fn register(self, rooms: &Arc<Rooms>) -> Self;
}

impl Register for TestRoom {
    fn register(self, rooms: &Arc<Rooms>) -> Self {
        rooms.handles.lock().expect("the rooms").insert(self.key().clone(), self.handle().clone());
        self
    }
}

#[async_trait]
impl PartiesClient for Rooms {
    async fn fetch(&self, room: RoomKey, req: Request) -> anyhow::Result<Response> {
        let handle = self.handles.lock().expect("the rooms").get(&room).cloned();
        let handle = handle.ok_or_else(|| anyhow::anyhow!("no room {room} in this test"))?;
        Ok(handle.request(partyline::web::room_request(&room, req)).await?)
    }

    fn has_party(&self, party: &str) -> bool {
        self.handles.lock().expect("the rooms").keys().any(|k| k.party == party)
    }
}

/// A party that hands out values: `GET /wait` answers once `POST /give` was made (before or
/// after), `GET /waiting` says how many wait. Its request handler awaits an event of its own
/// room, so it only works when requests interleave.
const GATE: &str = r#"
let given = false;
const waiters = [];
export default class Gate {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    const path = new URL(req.url, "http://host").pathname;
    if (path.endsWith("/give")) {
      given = true;
      for (const w of waiters.splice(0)) w();
      return new Response("given");
    }
    if (path.endsWith("/waiting")) return new Response(String(waiters.length));
    if (!given) await new Promise((resolve) => waiters.push(resolve));
    return new Response("released");
  }
}
"#;

/// Waits until `n` requests wait at the gate room.
async fn until_waiting(gate: &TestRoom, n: usize) {
    loop {
        let res = gate.request(request("GET", &room_path(gate, "/waiting"), Bytes::new())).await;
        if body_text(&res) == n.to_string() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn room_path(room: &TestRoom, rest: &str) -> String {
    format!("/parties/{}/{}{rest}", room.key().party, room.key().room)
}

const TWO_PARTIES: &str = r#"{ "main": "server.js", "parties": { "gate": "gate.js" } }"#;

/// While a message handler awaits a call to another room, the room handles its next message.
#[tokio::test]
async fn a_handler_awaiting_another_room_does_not_hold_up_its_room() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; }
  async onMessage(msg, conn) {
    if (msg === "wait") {
      const res = await this.room.context.parties.gate.get("g").fetch("/wait");
      conn.send("after wait: " + (await res.text()));
    } else {
      conn.send("pong");
    }
  }
}
"#;
    let dir = project(TWO_PARTIES, &[("server.js", server), ("gate.js", GATE)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let main = Rooms::start(&rooms, &registry, "main", "a", Limits::default());
    let gate = Rooms::start(&rooms, &registry, "gate", "g", Limits::default());
    let mut client = main.connect("c").await;
    client.send("wait").await;
    until_waiting(&gate, 1).await;
    client.send("ping").await;
    assert_eq!(client.recv_text().await, "pong", "the room answers while the first handler waits");
    gate.request(request("POST", &room_path(&gate, "/give"), Bytes::new())).await;
    assert_eq!(client.recv_text().await, "after wait: released");
}

/// Room A's request handler calls room B, whose handler calls room A back: both complete.
#[tokio::test]
async fn a_room_called_back_by_the_room_it_calls_answers() {
    let a = r#"
export default class A {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    if (new URL(req.url, "http://host").pathname.endsWith("/value")) return new Response("42");
    const res = await this.room.context.parties.b.get("b").fetch("/");
    return new Response("a got " + (await res.text()));
  }
  async onMessage(msg, conn) {
    const res = await this.room.context.parties.b.get("b").fetch("/");
    conn.send("a got " + (await res.text()));
  }
}
"#;
    let b = r#"
export default class B {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    const res = await this.room.context.parties.main.get("a").fetch("/value");
    return new Response("b got " + (await res.text()));
  }
}
"#;
    let config = r#"{ "main": "a.js", "parties": { "b": "b.js" } }"#;
    let dir = project(config, &[("a.js", a), ("b.js", b)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let room_a = Rooms::start(&rooms, &registry, "main", "a", Limits::default());
    let _room_b = Rooms::start(&rooms, &registry, "b", "b", Limits::default());
    let res = room_a.get(None).await;
    assert_eq!(res.status(), 200, "{}", body_text(&res));
    assert_eq!(body_text(&res), "a got b got 42");
    let mut client = room_a.connect("c").await;
    client.send("go").await;
    assert_eq!(client.recv_text().await, "a got b got 42");
}

/// A hibernating room stays loaded while a handler that went on in the background waits for
/// another room, so the handler finishes.
#[tokio::test]
async fn a_room_does_not_hibernate_under_a_waiting_handler() {
    let server = r#"
export default class S {
  static options = { hibernate: true };
  constructor(room) { this.room = room; }
  async onMessage(msg, conn) {
    const res = await this.room.context.parties.gate.get("g").fetch("/wait");
    conn.send("after wait: " + (await res.text()));
  }
}
"#;
    let dir = project(TWO_PARTIES, &[("server.js", server), ("gate.js", GATE)]);
    let limits = Limits { hibernate_idle: Duration::from_millis(20), ..Limits::default() };
    let registry = load(&dir, &limits).await;
    let rooms = Arc::new(Rooms::default());
    let main = Rooms::start(&rooms, &registry, "main", "a", limits.clone());
    let gate = Rooms::start(&rooms, &registry, "gate", "g", Limits::default());
    let mut client = main.connect("c").await;
    client.send("wait").await;
    until_waiting(&gate, 1).await;
    // Many times the hibernation delay (what it does not do decides nothing here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.request(request("POST", &room_path(&gate, "/give"), Bytes::new())).await;
    assert_eq!(client.recv_text().await, "after wait: released");
}

/// An error thrown by a message handler after it went on in the background reaches onError.
#[tokio::test]
async fn an_error_after_an_await_still_reaches_on_error() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; }
  async onMessage(msg, conn) {
    await this.room.context.parties.gate.get("g").fetch("/wait");
    throw new Error("late failure");
  }
  onError(conn, err) { conn.send("onError: " + err.message); }
}
"#;
    let dir = project(TWO_PARTIES, &[("server.js", server), ("gate.js", GATE)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let main = Rooms::start(&rooms, &registry, "main", "a", Limits::default());
    let gate = Rooms::start(&rooms, &registry, "gate", "g", Limits::default());
    gate.request(request("POST", &room_path(&gate, "/give"), Bytes::new())).await;
    let mut client = main.connect("c").await;
    client.send("go").await;
    let text = client.recv_text().await;
    assert!(text.starts_with("onError: ") && text.contains("late failure"), "{text}");
}

/// Two `onBeforeConnect` calls of one party run at the same time: the first waits for what
/// only the second provides.
#[tokio::test]
async fn static_hooks_run_concurrently() {
    let server = r#"
export default class S {
  static async onBeforeConnect(req, lobby) {
    const role = new URL(req.url, "http://host").searchParams.get("role");
    const res = await lobby.parties.gate.get("g").fetch(role === "give" ? "/give" : "/wait", { method: role === "give" ? "POST" : "GET" });
    return new Response(role + ": " + (await res.text()), { status: 403 });
  }
  static async onFetch(req, lobby) {
    const role = new URL(req.url, "http://host").searchParams.get("role");
    const res = await lobby.parties.gate.get("h").fetch(role === "give" ? "/give" : "/wait", { method: role === "give" ? "POST" : "GET" });
    return new Response(role + ": " + (await res.text()));
  }
}
"#;
    let dir = project(TWO_PARTIES, &[("server.js", server), ("gate.js", GATE)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let _gate = Rooms::start(&rooms, &registry, "gate", "g", Limits::default());
    let _gate2 = Rooms::start(&rooms, &registry, "gate", "h", Limits::default());
    let main = factory(&registry, "main");
    let lobby = |id: Option<&str>| Lobby {
        id: id.map(String::from),
        party: "main".into(),
        env: Env::default(),
        parties: rooms.parties(),
    };
    let upgrade = |role: &str| request("GET", &format!("/parties/main/r?role={role}"), Bytes::new());
    let guard = partyline::testing::WAIT;
    let (wait, give) = tokio::time::timeout(
        guard,
        futures::future::join(
            main.on_before_connect(upgrade("wait"), lobby(Some("r"))),
            main.on_before_connect(upgrade("give"), lobby(Some("r"))),
        ),
    )
    .await
    .expect("both hooks finish");
    let text = |b: anyhow::Result<Before>| match b.expect("the hook ran") {
        Before::Respond(res) => body_text(&res).to_string(),
        Before::Continue(_) => panic!("the hook answers"),
    };
    assert_eq!(text(wait), "wait: released");
    assert_eq!(text(give), "give: given");

    let fetch = |role: &str| request("GET", &format!("/somewhere?role={role}"), Bytes::new());
    let (wait, give) = tokio::time::timeout(
        guard,
        futures::future::join(main.on_fetch(fetch("wait"), lobby(None)), main.on_fetch(fetch("give"), lobby(None))),
    )
    .await
    .expect("both hooks finish");
    assert_eq!(body_text(&wait.expect("an answer")), "wait: released");
    assert_eq!(body_text(&give.expect("an answer")), "give: given");
}

/// No other event of the room starts before `blockConcurrencyWhile`'s function settles.
#[tokio::test]
async fn block_concurrency_while_holds_the_other_events() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; this.log = []; }
  async onMessage(msg, conn) {
    if (msg === "block") {
      await this.room.blockConcurrencyWhile(async () => {
        await this.room.context.parties.gate.get("g").fetch("/wait");
        this.log.push("block done");
      });
    } else {
      conn.send("pong after [" + this.log.join(",") + "]");
    }
  }
}
"#;
    let dir = project(TWO_PARTIES, &[("server.js", server), ("gate.js", GATE)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let main = Rooms::start(&rooms, &registry, "main", "a", Limits::default());
    let gate = Rooms::start(&rooms, &registry, "gate", "g", Limits::default());
    let mut client = main.connect("c").await;
    client.send("block").await;
    until_waiting(&gate, 1).await;
    client.send("ping").await;
    // Held: no answer can come while the block waits (this is not what decides the test).
    client.expect_nothing(Duration::from_millis(100)).await;
    gate.request(request("POST", &room_path(&gate, "/give"), Bytes::new())).await;
    assert_eq!(client.recv_text().await, "pong after [block done]");
}

/// The instance field form of the options (`options = { hibernate: true }`) is honoured, as the
/// static one is.
#[tokio::test]
async fn instance_options_are_honoured() {
    let files = [
        ("field.js", "export default class F {\n  options = { hibernate: true };\n  constructor(room) { this.room = room; }\n}\n"),
        (
            "ctor.js",
            "export default class C {\n  constructor(room) { this.options = { hibernate: true }; room.storage; setTimeout(() => {}, 1000); }\n}\n",
        ),
        ("stat.js", "export default class S {\n  static options = { hibernate: true };\n}\n"),
        ("none.js", "export default class N {\n  constructor(room) { this.room = room; }\n}\n"),
        ("throws.js", "export default class T {\n  options = { hibernate: true };\n  constructor(room) { throw new Error(\"no\"); }\n}\n"),
    ];
    let config = r#"{ "main": "none.js", "parties": { "field": "field.js", "ctor": "ctor.js", "stat": "stat.js", "throws": "throws.js" } }"#;
    let dir = project(config, &files);
    let registry = load(&dir, &Limits::default()).await;
    assert!(factory(&registry, "field").options().hibernate, "instance field");
    assert!(factory(&registry, "ctor").options().hibernate, "set in the constructor");
    assert!(factory(&registry, "stat").options().hibernate, "static field");
    assert!(!factory(&registry, "main").options().hibernate, "no options");
    assert!(!factory(&registry, "throws").options().hibernate, "a constructor that throws leaves the default");
}

/// Close listeners get the code and reason the party closed the connection with.
#[tokio::test]
async fn close_listeners_get_the_close_code() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; this.closes = []; }
  onConnect(conn) {
    conn.addEventListener("close", (e) => this.closes.push(e.code + ":" + e.reason + ":" + e.wasClean));
  }
  onMessage(msg, conn) { conn.close(4001, "bye now"); }
  onRequest() { return new Response(this.closes.join(";")); }
}
"#;
    let dir = project(r#"{ "main": "server.js" }"#, &[("server.js", server)]);
    let registry = load(&dir, &Limits::default()).await;
    let room = TestRoom::with_factory("main", "r", factory(&registry, "main")).start();
    let mut client = room.connect("c").await;
    client.send("bye").await;
    assert_eq!(client.recv_close().await, (4001, "bye now".to_string()));
    let res = room.get(None).await;
    assert_eq!(body_text(&res), "4001:bye now:true");
}

/// `stub.fetch` keeps the query string, from a `Request`, a `URL` or a path with `init`.
#[tokio::test]
async fn room_calls_keep_the_query_string() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; }
  async onRequest() {
    const stub = this.room.context.parties.echo.get("e");
    const a = await (await stub.fetch(new Request("http://ignored/one?x=1&y=2", { method: "POST", body: "hi" }))).text();
    const b = await (await stub.fetch("/two?z=3", { method: "PUT" })).text();
    const c = await (await stub.fetch(new URL("http://ignored/three?w=4"))).text();
    return new Response([a, b, c].join("|"));
  }
}
"#;
    let echo = r#"
export default class E {
  async onRequest(req) {
    const u = new URL(req.url, "http://host");
    return new Response(req.method + " " + u.pathname.split("/").pop() + u.search + " " + (await req.text()));
  }
}
"#;
    let config = r#"{ "main": "server.js", "parties": { "echo": "echo.js" } }"#;
    let dir = project(config, &[("server.js", server), ("echo.js", echo)]);
    let registry = load(&dir, &Limits::default()).await;
    let rooms = Arc::new(Rooms::default());
    let main = Rooms::start(&rooms, &registry, "main", "a", Limits::default());
    let _echo = Rooms::start(&rooms, &registry, "echo", "e", Limits::default());
    let res = main.get(None).await;
    assert_eq!(body_text(&res), "POST one?x=1&y=2 hi|PUT two?z=3 |GET three?w=4 ");
}

/// A handler stopped at the time limit does not cancel the timers others set.
#[tokio::test]
async fn a_timeout_leaves_the_other_timers() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; }
  onMessage(msg, conn) {
    if (msg === "arm") setTimeout(() => conn.send("tick"), 50);
    else for (;;) {}
  }
}
"#;
    let dir = project(r#"{ "main": "server.js" }"#, &[("server.js", server)]);
    let limits = Limits { handler_timeout: Duration::from_millis(500), ..Limits::default() };
    let registry = load(&dir, &limits).await;
    let room = TestRoom::with_factory("main", "r", factory(&registry, "main")).limits(limits).start();
    let mut armed = room.connect("armed").await;
    let spinner = room.connect("spinner").await;
    armed.send("arm").await;
    let mut spinner = spinner;
    spinner.send("spin").await;
    assert_eq!(armed.recv_text().await, "tick");
}

/// A store whose reads finish later, not at once (as a store on disk or over the network).
struct SlowReads(MemoryStore);

#[async_trait]
impl Store for SlowReads {
    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.0.commit(room, fence, ops).await
    }
    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.0.due_alarms(now_ms, limit).await
    }
    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_fenced(room, fence, keys).await
    }
    async fn list_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        tokio::task::yield_now().await;
        self.0.list_fenced(room, fence, opts).await
    }
    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_alarm_fenced(room, fence).await
    }
}

/// An un-awaited `delete(k)` then `put(k, v)` keeps the put.
#[tokio::test]
async fn a_delete_then_a_put_of_the_same_key_keeps_the_put() {
    let server = r#"
export default class S {
  constructor(room) { this.room = room; }
  async onRequest(req) {
    if (req.method === "POST") {
      this.room.storage.delete("k");
      this.room.storage.put("k", "v");
      return new Response("written");
    }
    return new Response(String(await this.room.storage.get("k")));
  }
}
"#;
    let dir = project(r#"{ "main": "server.js" }"#, &[("server.js", server)]);
    let registry = load(&dir, &Limits::default()).await;
    let room = TestRoom::with_factory("main", "r", factory(&registry, "main"))
        .store(Arc::new(SlowReads(MemoryStore::new())))
        .start();
    assert_eq!(body_text(&room.post("").await), "written");
    assert_eq!(body_text(&room.get(None).await), "v");
    room.sync().await;
    assert_eq!(room.stored::<String>("k").await.as_deref(), Some("v"));
}

/// Log lines captured by [`Capture`].
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

/// A `tracing` subscriber that keeps every event as a line of `field=value` pairs.
struct Capture(Lines);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={} ", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{} ", event.metadata().level());
        event.record(&mut Fields(&mut line));
        self.0 .0.lock().expect("the lines").push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// An unhandled promise rejection is logged, with where the error was made.
#[tokio::test]
async fn unhandled_rejections_are_logged_with_their_location() {
    let server = "export default class S {\n  onRequest() {\n    Promise.reject(new Error(\"forgotten promise\"));\n    const p = Promise.reject(new Error(\"handled later\"));\n    p.catch(() => {});\n    return new Response(\"ok\");\n  }\n}\n";
    let dir = project(r#"{ "main": "server.js" }"#, &[("server.js", server)]);
    let registry = load(&dir, &Limits::default()).await;
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(Capture(lines.clone()));
    let room = TestRoom::with_factory("main", "r", factory(&registry, "main")).start();
    assert_eq!(body_text(&room.get(None).await), "ok");
    let lines = lines.0.lock().expect("the lines").clone();
    let logged: Vec<&String> = lines.iter().filter(|l| l.contains("unhandled promise rejection")).collect();
    assert_eq!(logged.len(), 1, "one rejection was unhandled: {lines:#?}");
    let line = logged[0];
    assert!(line.starts_with("WARN "), "{line}");
    assert!(line.contains("forgotten promise"), "{line}");
    assert!(line.contains("server.js:3"), "the file and line of the error: {line}");
}

/// An error with an HTTP status in its `code` answers with it in onRequest, onFetch,
/// onBeforeRequest and onBeforeConnect; another `code` keeps the usual answer.
#[tokio::test]
async fn an_error_code_becomes_the_status() {
    let server = r#"
function fail(code) { const e = new Error("nope " + code); e.code = code; throw e; }
export default class S {
  onRequest(req) { fail(Number(new URL(req.url, "http://host").searchParams.get("code"))); }
  static async onFetch(req) { fail(Number(new URL(req.url, "http://host").searchParams.get("code"))); }
  static async onBeforeRequest(req) { fail(Number(new URL(req.url, "http://host").searchParams.get("code"))); }
  static onBeforeConnect(req) { fail(Number(new URL(req.url, "http://host").searchParams.get("code"))); }
}
"#;
    let dir = project(r#"{ "main": "server.js" }"#, &[("server.js", server)]);
    let registry = load(&dir, &Limits::default()).await;
    let main = factory(&registry, "main");
    let room = TestRoom::with_factory("main", "r", main.clone()).start();

    let res = room.get(Some("/parties/main/r?code=403")).await;
    assert_eq!((res.status().as_u16(), body_text(&res)), (403, "nope 403"));
    let res = room.get(Some("/parties/main/r?code=1234")).await;
    assert_eq!(res.status().as_u16(), 500, "not an HTTP status: {}", body_text(&res));
    assert!(!body_text(&res).contains("nope"), "a 500 keeps the error to the log: {}", body_text(&res));

    let lobby = |id: Option<&str>| Lobby {
        id: id.map(String::from),
        party: "main".into(),
        env: Env::default(),
        parties: partyline::testing::no_parties(),
    };
    let res = main.on_fetch(request("GET", "/x?code=418", Bytes::new()), lobby(None)).await.expect("an answer");
    assert_eq!((res.status().as_u16(), body_text(&res)), (418, "nope 418"));
    let res = main.on_fetch(request("GET", "/x?code=99", Bytes::new()), lobby(None)).await.expect("an answer");
    assert_eq!(res.status().as_u16(), 500);

    for before in [true, false] {
        let req = request("GET", "/parties/main/r?code=401", Bytes::new());
        let out = if before {
            main.on_before_connect(req, lobby(Some("r"))).await
        } else {
            main.on_before_request(req, lobby(Some("r"))).await
        };
        match out.expect("the hook answers") {
            Before::Respond(res) => assert_eq!((res.status().as_u16(), body_text(&res)), (401, "nope 401")),
            Before::Continue(_) => panic!("the hook threw"),
        }
        let req = request("GET", "/parties/main/r?code=7", Bytes::new());
        let out = if before {
            main.on_before_connect(req, lobby(Some("r"))).await
        } else {
            main.on_before_request(req, lobby(Some("r"))).await
        };
        assert!(out.is_err(), "not an HTTP status: the hook's error (the gateway answers 401)");
    }
}
