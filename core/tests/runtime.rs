//! Behaviour tests of the room runtime (`partyline::actor`), driven the way a gateway drives a
//! room: a `RoomHandle` from `spawn_room`, one `LinkSender` per gateway link, and the `FromRoom`
//! messages the room answers with. Parties are small scripted types defined here; what they do
//! is chosen by the text of the messages they get, and what they see is reported to the test
//! through a per-room [`Fixture`] (found by room id, so every test uses its own room id).
//!
//! Every receive has a timeout, so a hang fails the test instead of stalling it. Tests that
//! depend on idle timers run with paused tokio time; alarms use the wall clock
//! (`partyline::storage::now_ms`), so the alarm tests run in real time with generous bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use partyline::actor::{spawn_room, LinkSender, RoomConfig, RoomExit, RoomHandle};
use partyline::http::{self, StatusCode};
use partyline::link::{close_code, FromRoom, SocketId, ToRoom};
use partyline::storage::now_ms;
use partyline::store::{Fence, StoreError, WriteOp};
use partyline::web::{self, query_param};
use partyline::{
    async_trait, Bytes, Connection, ConnectionContext, Env, HttpError, Limits, ListOptions, MemoryStore, Message,
    Parties, PartiesClient, Party, PartyFactory, PartyOptions, PartyRegistry, Request, Response, Room, RoomKey,
    Storage, StorageError, Store,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a test waits for one answer before it fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Fixtures: what a test tells its party, and what the party reports back.
// ---------------------------------------------------------------------------------------------

/// Per-room knobs and observations shared between a test and the party instances of its room.
#[derive(Default)]
struct Fixture {
    events: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Party values created (`new`).
    news: AtomicU32,
    /// `on_start` calls.
    starts: AtomicU32,
    /// `on_alarm` calls.
    alarms: AtomicU32,
    /// Fail the first N `on_start` calls.
    fail_start_first: AtomicU32,
    /// When non-zero, fail every `on_start` call after the Nth.
    fail_start_after: AtomicU32,
    /// Fail the first N `on_alarm` calls.
    fail_alarms: AtomicU32,
    /// Keep every `Room` the party is created with (in `rooms`).
    stash: AtomicBool,
    rooms: Mutex<Vec<Room>>,
}

static FIXTURES: LazyLock<Mutex<HashMap<String, Arc<Fixture>>>> = LazyLock::new(Default::default);

/// The fixture of room `id` (created empty on first use).
fn fixture(id: &str) -> Arc<Fixture> {
    FIXTURES.lock().unwrap().entry(id.to_string()).or_default().clone()
}

impl Fixture {
    /// A fresh fixture for room `id`.
    fn register(id: &str) -> Arc<Fixture> {
        let fx = Arc::new(Fixture::default());
        FIXTURES.lock().unwrap().insert(id.to_string(), fx.clone());
        fx
    }

    /// Starts recording the party's events.
    fn events(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.events.lock().unwrap() = Some(tx);
        Events(rx)
    }

    fn log(&self, event: String) {
        if let Some(tx) = &*self.events.lock().unwrap() {
            let _ = tx.send(event);
        }
    }

    fn count(&self, c: &AtomicU32) -> u32 {
        c.load(Ordering::SeqCst)
    }

    fn room(&self) -> Room {
        self.rooms.lock().unwrap().last().cloned().expect("the party stashed its room")
    }
}

/// The events a party reported, in the order its handlers ran.
struct Events(mpsc::UnboundedReceiver<String>);

impl Events {
    async fn next(&mut self) -> String {
        match timeout(WAIT, self.0.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the event channel closed"),
            Err(_) => panic!("no party event within {WAIT:?}"),
        }
    }

    /// Events up to and including the first one that `pred` accepts.
    async fn until(&mut self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = pred(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Events up to and including `event`.
    async fn until_eq(&mut self, event: &str) -> Vec<String> {
        self.until(|e| e == event).await
    }

    /// The events already reported.
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = self.0.try_recv() {
            out.push(e);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted party.
// ---------------------------------------------------------------------------------------------

/// A connection's state, as `setstate:` stores it.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct St {
    text: String,
}

/// A party whose `on_message` runs the `|`-separated ops of the message text (see `run`), whose
/// `on_request` runs the op named by the request path, and whose other handlers report to the
/// room's fixture. `H` is `PartyOptions::hibernate`.
struct Scripted<const H: bool> {
    room: Room,
    fx: Arc<Fixture>,
}

impl<const H: bool> Scripted<H> {
    fn same_id(&self, conn: &Connection) -> usize {
        self.room.get_connections(None).iter().filter(|c| c.id() == conn.id()).count()
    }

    async fn run(&self, op: &str, sender: &Connection) -> anyhow::Result<()> {
        let (name, arg) = op.split_once(':').unwrap_or((op, ""));
        let storage = self.room.storage();
        match name {
            "send" => sender.send(arg),
            "broadcast" => self.room.broadcast(arg, &[]),
            "broadcast_without" => {
                let (msg, ids) = arg.split_once(':').expect("broadcast_without:MSG:ID,ID");
                let ids: Vec<&str> = ids.split(',').collect();
                self.room.broadcast(msg, &ids);
            }
            "put" => {
                let (k, v) = arg.split_once(':').expect("put:K:V");
                storage.put(k, v).await?;
            }
            "get" => {
                let v: Option<String> = storage.get(arg).await?;
                sender.send(format!("got:{}", v.as_deref().unwrap_or("<none>")));
            }
            "log" => self.fx.log(format!("log:{arg}")),
            "panic" => panic!("party panic: on purpose"),
            "error" => anyhow::bail!("{arg}"),
            "hang" => std::future::pending::<()>().await,
            "close" => {
                let (code, reason) = arg.split_once(':').expect("close:CODE:REASON");
                sender.close(code.parse()?, reason);
            }
            "ids" => {
                let tag = (!arg.is_empty()).then_some(arg);
                let ids: Vec<String> = self.room.get_connections(tag).iter().map(|c| c.id().to_string()).collect();
                sender.send(format!("ids:{}", ids.join(",")));
            }
            "setstate" => sender.set_state(&St { text: arg.to_string() })?,
            "whoami" => {
                let who = serde_json::json!({
                    "id": sender.id(),
                    "tags": sender.tags(),
                    "state": sender.state::<St>().map(|s| s.text),
                });
                sender.send(who.to_string());
            }
            "alarm" => storage.set_alarm(now_ms() + arg.parse::<i64>()?).await?,
            "alarm_at" => storage.set_alarm(arg.parse::<i64>()?).await?,
            "fetch" => {
                let res = self.room.parties().get("other", arg).fetch(request("/")).await?;
                sender.send(format!("fetched:{}", body(&res)));
            }
            "burst" => {
                for i in 0..arg.parse::<u32>()? {
                    sender.send(i.to_string());
                }
            }
            other => anyhow::bail!("unknown op {other:?}"),
        }
        Ok(())
    }
}

#[async_trait]
impl<const H: bool> Party for Scripted<H> {
    fn new(room: Room) -> Self {
        let fx = fixture(room.id());
        let n = fx.news.fetch_add(1, Ordering::SeqCst) + 1;
        if fx.stash.load(Ordering::SeqCst) {
            fx.rooms.lock().unwrap().push(room.clone());
        }
        fx.log(format!("new:{n}"));
        Scripted { room, fx }
    }

    fn options() -> PartyOptions {
        PartyOptions { hibernate: H }
    }

    async fn on_start(&mut self) -> anyhow::Result<()> {
        let n = self.fx.starts.fetch_add(1, Ordering::SeqCst) + 1;
        self.fx.log(format!("start:{n}"));
        let after = self.fx.count(&self.fx.fail_start_after);
        if n <= self.fx.count(&self.fx.fail_start_first) || (after > 0 && n > after) {
            anyhow::bail!("start failure {n}");
        }
        Ok(())
    }

    async fn get_connection_tags(
        &mut self,
        _conn: &Connection,
        ctx: &ConnectionContext,
    ) -> anyhow::Result<Vec<String>> {
        Ok(match query_param(ctx.request.uri(), "tags") {
            Some(tags) => tags.split(',').map(str::to_string).collect(),
            None => Vec::new(),
        })
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        let uri = ctx.request.uri();
        self.fx.log(format!("connect:{}:{}", conn.id(), self.same_id(conn)));
        if let Some(reason) = query_param(uri, "fail") {
            anyhow::bail!("{reason}");
        }
        if query_param(uri, "welcome").is_some() {
            conn.send("welcome");
        }
        if let Some(code) = query_param(uri, "close") {
            conn.close(code.parse()?, "closed in on_connect");
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        let text = message.as_text().unwrap_or_default().to_string();
        for op in text.split('|') {
            self.run(op, sender).await?;
        }
        Ok(())
    }

    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.fx.log(format!("close:{}:open={}:same={}", conn.id(), conn.is_open(), self.same_id(conn)));
        Ok(())
    }

    async fn on_error(&mut self, conn: &Connection, error: &anyhow::Error) -> anyhow::Result<()> {
        self.fx.log(format!("error:{}:{error}", conn.id()));
        conn.send(format!("on_error:{error}"));
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        let path = req.uri().path().trim_start_matches('/').to_string();
        let (cmd, arg) = path.split_once('/').unwrap_or((path.as_str(), ""));
        match cmd {
            "write" => {
                self.room.storage().put("http", "written").await?;
                Ok(web::text(StatusCode::OK, "written"))
            }
            "panic" => panic!("request panic: on purpose"),
            "teapot" => Err(HttpError::new(StatusCode::IM_A_TEAPOT, "short and stout").into()),
            "alarm" => {
                self.room.storage().set_alarm(now_ms() + arg.parse::<i64>()?).await?;
                Ok(web::text(StatusCode::OK, "alarm set"))
            }
            _ => Ok(web::text(StatusCode::OK, "ok")),
        }
    }

    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        let n = self.fx.alarms.fetch_add(1, Ordering::SeqCst) + 1;
        self.fx.log(format!("alarm:{n}:{}", now_ms()));
        if n <= self.fx.count(&self.fx.fail_alarms) {
            anyhow::bail!("alarm failure {n}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A store whose commits the test can hold back or make fail.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum FailMode {
    Fenced,
    Backend,
}

/// `MemoryStore` behind a gate: while held, `commit` waits; when a failure is set, `commit`
/// (once let through) refuses with it and writes nothing.
struct TestStore {
    inner: MemoryStore,
    hold: watch::Sender<bool>,
    started: watch::Sender<usize>,
    fail: Mutex<Option<FailMode>>,
}

impl TestStore {
    fn new() -> Arc<Self> {
        Arc::new(TestStore {
            inner: MemoryStore::new(),
            hold: watch::channel(false).0,
            started: watch::channel(0).0,
            fail: Mutex::new(None),
        })
    }

    fn hold(&self) {
        self.hold.send_replace(true);
    }

    fn release(&self) {
        self.hold.send_replace(false);
    }

    fn fail_with(&self, mode: FailMode) {
        *self.fail.lock().unwrap() = Some(mode);
    }

    fn commits(&self) -> usize {
        *self.started.borrow()
    }

    /// Waits until `n` commits have started (reached the store).
    async fn wait_commits(&self, n: usize) {
        let mut rx = self.started.subscribe();
        timeout(WAIT, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} commits reached the store within {WAIT:?}"))
            .expect("the store is alive");
    }

    /// The committed value of `key` in `room`.
    async fn value(&self, room: &RoomKey, key: &str) -> Option<Bytes> {
        self.inner.get(room, &[key.to_string()]).await.unwrap().remove(0)
    }
}

#[async_trait]
impl Store for TestStore {
    async fn get_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.get(room, keys).await
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.list(room, opts).await
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, _fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        self.get_alarm(room).await
    }

    async fn get(&self, room: &RoomKey, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.inner.get(room, keys).await
    }

    async fn list(&self, room: &RoomKey, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.inner.list(room, opts).await
    }

    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.started.send_modify(|c| *c += 1);
        let mut rx = self.hold.subscribe();
        let _ = rx.wait_for(|held| !*held).await;
        let fail = *self.fail.lock().unwrap();
        match fail {
            Some(FailMode::Fenced) => Err(StoreError::Fenced { lease: "shard-7".into(), epoch: 3 }),
            Some(FailMode::Backend) => Err(StoreError::Backend("disk on fire".into())),
            None => self.inner.commit(room, fence, ops).await,
        }
    }

    async fn get_alarm(&self, room: &RoomKey) -> Result<Option<i64>, StoreError> {
        self.inner.get_alarm(room).await
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.inner.due_alarms(now_ms, limit).await
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning rooms and driving them like a gateway.
// ---------------------------------------------------------------------------------------------

struct NoParties;

#[async_trait]
impl PartiesClient for NoParties {
    async fn fetch(&self, room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        anyhow::bail!("no other rooms here (asked for {room})")
    }

    fn has_party(&self, _party: &str) -> bool {
        false
    }
}

/// How to spawn a test room.
struct Opts {
    hibernate: bool,
    store: Arc<dyn Store>,
    fence: Option<Fence>,
    limits: Limits,
    may_exit: Box<dyn Fn() -> bool + Send + Sync>,
    parties: Arc<dyn PartiesClient>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            hibernate: false,
            store: Arc::new(MemoryStore::new()),
            fence: None,
            limits: Limits::default(),
            may_exit: Box::new(|| false),
            parties: Arc::new(NoParties),
        }
    }
}

fn factory(hibernate: bool) -> Arc<dyn PartyFactory> {
    let registry = PartyRegistry::new().with::<Scripted<false>>("scripted").with::<Scripted<true>>("hibernating");
    registry.get(if hibernate { "hibernating" } else { "scripted" }).expect("registered").clone()
}

fn key(id: &str) -> RoomKey {
    RoomKey::new("scripted", id)
}

/// Starts room `id` of the scripted party.
fn spawn(id: &str, opts: Opts) -> (RoomHandle, JoinHandle<RoomExit>) {
    spawn_room(RoomConfig {
        key: key(id),
        factory: factory(opts.hibernate),
        store: opts.store,
        fence: opts.fence,
        limits: Arc::new(opts.limits),
        env: Env::default(),
        parties: Parties::new(opts.parties),
        may_exit: opts.may_exit,
        observer: None,
        on_exit: None,
    })
}

fn request(path: &str) -> Request {
    http::Request::builder().method("POST").uri(path).body(Bytes::new()).expect("a valid request")
}

async fn call(room: &RoomHandle, path: &str) -> Response {
    timeout(WAIT, room.request(request(path)))
        .await
        .unwrap_or_else(|_| panic!("no response to {path} within {WAIT:?}"))
        .expect("the room is running")
}

fn body(res: &Response) -> &str {
    std::str::from_utf8(res.body()).expect("a UTF-8 body")
}

/// The room task's result, within `wait`.
async fn exit_within(exit: &mut JoinHandle<RoomExit>, wait: Duration) -> RoomExit {
    timeout(wait, exit).await.expect("the room task did not end in time").expect("the room task did not panic")
}

/// One gateway link into a room.
struct Gw {
    link: LinkSender,
    rx: mpsc::Receiver<FromRoom>,
}

impl Gw {
    async fn open(room: &RoomHandle) -> Gw {
        let (tx, rx) = mpsc::channel(1024);
        let link = timeout(WAIT, room.open_link(tx)).await.expect("open_link hung").expect("the room is running");
        Gw { link, rx }
    }

    /// Asks the room to connect socket `sid` with connection id `id`; `query` is added to the
    /// upgrade request's query (`tags=a,b`, `welcome=1`, `fail=reason`, `close=code`).
    async fn connect(&self, sid: SocketId, id: &str, query: &str) {
        let path = format!("/parties/scripted/room?_pk={id}&{query}");
        let request = http::Request::builder().uri(path.as_str()).body(Bytes::new()).expect("a valid request");
        let uri = format!("http://localhost{path}");
        self.link
            .send(ToRoom::Connect { sid, id: id.to_string(), uri, request: Box::new(request) })
            .await
            .expect("the room is running");
    }

    /// Messages up to the verdict on `sid` (`Accepted`, `Refused` or `Failed`), and the verdict.
    async fn verdict(&mut self, sid: SocketId) -> (Vec<FromRoom>, FromRoom) {
        let mut before = Vec::new();
        loop {
            let msg = self.next().await;
            match msg {
                FromRoom::Accepted { sid: s, .. }
                | FromRoom::Refused { sid: s, .. }
                | FromRoom::Failed { sid: s, .. }
                    if s == sid =>
                {
                    return (before, msg)
                }
                other => before.push(other),
            }
        }
    }

    /// Connects `sid` and expects it accepted; returns its tags.
    async fn join(&mut self, sid: SocketId, id: &str, query: &str) -> Vec<String> {
        self.connect(sid, id, query).await;
        match self.verdict(sid).await.1 {
            FromRoom::Accepted { tags, .. } => tags,
            other => panic!("socket {sid} ({id}) was not accepted: {other:?}"),
        }
    }

    async fn send(&self, sid: SocketId, text: &str) {
        self.link.send(ToRoom::Message { sid, msg: Message::from(text) }).await.expect("the room is running");
    }

    async fn closed(&self, sid: SocketId, error: Option<&str>) {
        self.link.send(ToRoom::Closed { sid, error: error.map(str::to_string) }).await.expect("the room is running");
    }

    async fn next(&mut self) -> FromRoom {
        match timeout(WAIT, self.rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("the room closed the link"),
            Err(_) => panic!("no message from the room within {WAIT:?}"),
        }
    }

    /// The next message, skipping `State`; it must be a frame for `sid`: its text.
    async fn text(&mut self, sid: SocketId) -> String {
        loop {
            let msg = self.next().await;
            match &msg {
                FromRoom::State { .. } => continue,
                FromRoom::Send { sid: s, msg: m } if *s == sid => {
                    return m.as_text().expect("a text frame").to_string()
                }
                FromRoom::Broadcast { msg: m, except } if !except.contains(&sid) => {
                    return m.as_text().expect("a text frame").to_string()
                }
                _ => panic!("expected a frame for socket {sid}, got {msg:?}"),
            }
        }
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self, wait: Duration) {
        if let Ok(msg) = timeout(wait, self.rx.recv()).await {
            panic!("expected nothing from the room, got {msg:?}");
        }
    }

    /// Everything until the room drops the link.
    async fn rest(&mut self) -> Vec<FromRoom> {
        let mut out = Vec::new();
        loop {
            match timeout(WAIT, self.rx.recv()).await {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => return out,
                Err(_) => panic!("the room did not drop the link within {WAIT:?}; got {out:?}"),
            }
        }
    }
}

fn assert_send(msg: &FromRoom, sid: SocketId, text: &str) {
    assert!(
        matches!(msg, FromRoom::Send { sid: s, msg } if *s == sid && msg.as_text() == Some(text)),
        "expected Send {{ sid: {sid}, {text:?} }}, got {msg:?}"
    );
}

fn assert_close(msg: &FromRoom, sid: SocketId, code: u16) -> String {
    match msg {
        FromRoom::Close { sid: s, code: c, reason } if *s == sid && *c == code => reason.clone(),
        other => panic!("expected Close {{ sid: {sid}, code: {code} }}, got {other:?}"),
    }
}

// =============================================================================================
// 1. Output gate (invariant 2)
// =============================================================================================

#[tokio::test]
async fn output_gate_holds_frames_that_follow_a_write_until_the_commit_is_acked() {
    let id = "gate_frames";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    let mut b = Gw::open(&room).await;
    b.join(2, "b", "").await;
    assert_eq!(store.commits(), 0, "connecting wrote nothing");

    store.hold();
    a.send(1, "send:before|put:k:v|broadcast:after").await;
    // The frame sent before the write is not held.
    assert_send(&a.next().await, 1, "before");
    store.wait_commits(1).await;
    // The broadcast follows the write: nobody sees it while the commit is pending.
    a.quiet(QUIET).await;
    b.quiet(QUIET).await;
    assert_eq!(store.value(&key(id), "k").await, None);

    store.release();
    assert_eq!(a.text(1).await, "after");
    assert_eq!(b.text(2).await, "after");
    assert_eq!(store.value(&key(id), "k").await, Some(Bytes::from("\"v\"")));
}

#[tokio::test]
async fn output_gate_holds_later_frames_behind_a_held_one_in_order() {
    let id = "gate_order";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;

    store.hold();
    a.send(1, "send:1|put:k:v|send:2").await;
    // A later handler that writes nothing still may not overtake the held frame.
    a.send(1, "send:3").await;
    assert_eq!(a.text(1).await, "1");
    store.wait_commits(1).await;
    a.quiet(QUIET).await;
    store.release();
    assert_eq!(a.text(1).await, "2");
    assert_eq!(a.text(1).await, "3");
}

#[tokio::test]
async fn output_gate_holds_an_http_response_until_the_commit_is_acked() {
    let id = "gate_http";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });

    store.hold();
    let r = room.clone();
    let pending = tokio::spawn(async move { r.request(request("/write")).await });
    store.wait_commits(1).await;
    tokio::time::sleep(QUIET).await;
    assert!(!pending.is_finished(), "the response was released before its write was durable");
    assert_eq!(store.value(&key(id), "http").await, None);

    store.release();
    let res = timeout(WAIT, pending).await.expect("no response after the commit").unwrap().expect("room running");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(&res), "written");
    assert_eq!(store.value(&key(id), "http").await, Some(Bytes::from("\"written\"")));
}

// =============================================================================================
// 2. Fencing and storage failure
// =============================================================================================

#[tokio::test]
async fn a_fenced_write_drops_the_room_with_1012_and_discards_what_followed() {
    let id = "fenced";
    let fx = Fixture::register(id);
    fx.stash.store(true, Ordering::SeqCst);
    let mut events = fx.events();
    let store = TestStore::new();
    let fence = Some(Fence { lease: "shard-7".into(), epoch: 3 });
    let (room, mut exit) = spawn(id, Opts { store: store.clone(), fence, ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    let mut b = Gw::open(&room).await;
    b.join(2, "b", "").await;
    let mut c = Gw::open(&room).await; // a link with no sockets

    store.fail_with(FailMode::Fenced);
    store.hold();
    a.send(1, "send:before|put:k:v|broadcast:after|send:after-send").await;
    assert_send(&a.next().await, 1, "before");
    // A handler that writes nothing, after the refused write: its frame must not leave either.
    b.send(2, "send:later|log:later-done").await;
    events.until_eq("log:later-done").await;
    store.wait_commits(1).await;
    store.release();

    for (name, gw) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        let rest = gw.rest().await;
        assert!(
            matches!(rest.as_slice(), [FromRoom::Gone { code: close_code::SERVICE_RESTART, .. }]),
            "link {name}: expected only Gone 1012, got {rest:?}"
        );
    }
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: true });
    assert_eq!(store.value(&key(id), "k").await, None);

    // This instance can no longer use storage.
    let storage = fx.room().storage().clone();
    assert!(matches!(storage.get::<String>("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.put("k", "again").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.delete("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.set_alarm(now_ms()).await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.sync().await, Err(StorageError::Failed(_))));
    assert!(room.request(request("/ping")).await.is_err(), "the room still answers");
}

#[tokio::test]
async fn a_failed_backend_write_drops_the_room_with_1011() {
    let id = "backend_failed";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, mut exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;

    store.fail_with(FailMode::Backend);
    store.hold();
    let r = room.clone();
    let pending = tokio::spawn(async move { r.request(request("/write")).await });
    store.wait_commits(1).await;
    store.release();

    let res = timeout(WAIT, pending).await.expect("the request hung").unwrap();
    assert!(res.is_err(), "a response revealing a failed write was released: {res:?}");
    let rest = a.rest().await;
    match rest.as_slice() {
        [FromRoom::Gone { code: close_code::INTERNAL_ERROR, reason }] => {
            assert!(reason.contains("disk on fire"), "reason: {reason}")
        }
        other => panic!("expected only Gone 1011, got {other:?}"),
    }
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: false });
}

#[tokio::test]
async fn storage_fails_for_good_after_a_failed_commit() {
    let store = TestStore::new();
    store.fail_with(FailMode::Backend);
    let storage = Storage::new(key("direct_failed"), store.clone(), None, Arc::new(Limits::default()));
    storage.put("k", "v").await.unwrap();
    match timeout(WAIT, storage.sync()).await.expect("sync hung") {
        Err(StorageError::Failed(msg)) => assert!(msg.contains("disk on fire"), "{msg}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(matches!(storage.get::<String>("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.put("k", "v2").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.delete_all().await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.get_alarm().await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.list(ListOptions::default()).await, Err(StorageError::Failed(_))));
}

// =============================================================================================
// 3. Handler containment
// =============================================================================================

#[tokio::test]
async fn a_panic_in_on_message_closes_that_socket_with_1011_and_the_room_goes_on() {
    let id = "panic_message";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "p1", "").await;
    gw.join(2, "p2", "").await;

    gw.send(1, "panic").await;
    let reason = assert_close(&gw.next().await, 1, close_code::INTERNAL_ERROR);
    assert!(reason.contains("panic"), "reason: {reason}");
    events.until_eq("close:p1:open=false:same=0").await;

    gw.send(2, "send:still here").await;
    assert_eq!(gw.text(2).await, "still here");
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:p2");
}

#[tokio::test]
async fn an_error_from_on_message_reaches_on_error() {
    let id = "error_message";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "e1", "").await;

    gw.send(1, "error:boom").await;
    assert_eq!(gw.text(1).await, "on_error:boom");
    events.until_eq("error:e1:boom").await;
    // The socket stays open.
    gw.send(1, "send:still open").await;
    assert_eq!(gw.text(1).await, "still open");
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_time_limit_closes_its_socket_with_1011() {
    let id = "handler_timeout";
    Fixture::register(id);
    let limits = Limits { handler_timeout: Duration::from_millis(200), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "slow", "").await;
    gw.join(2, "fast", "").await;

    gw.send(1, "hang").await;
    let reason = assert_close(&gw.next().await, 1, close_code::INTERNAL_ERROR);
    assert!(reason.contains("timed out") || reason.contains("time limit"), "reason: {reason}");
    gw.send(2, "send:alive").await;
    assert_eq!(gw.text(2).await, "alive");
}

#[tokio::test]
async fn an_on_connect_error_fails_the_connection_with_its_text() {
    let id = "connect_error";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "bad", "fail=no+entry+for+you").await;
    match gw.verdict(1).await.1 {
        FromRoom::Failed { reason, .. } => assert!(reason.contains("no entry for you"), "reason: {reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    gw.join(2, "good", "").await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:good");
}

#[tokio::test]
async fn on_request_panics_answer_500_and_http_errors_their_status() {
    let id = "request_errors";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let res = call(&room, "/panic").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let res = call(&room, "/teapot").await;
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(body(&res), "short and stout");
    let res = call(&room, "/ping").await;
    assert_eq!(res.status(), StatusCode::OK, "the room goes on after a panic");
}

#[tokio::test]
async fn a_failed_on_start_fails_the_first_event_and_the_next_event_retries() {
    let id = "start_retry";
    let fx = Fixture::register(id);
    fx.fail_start_first.store(1, Ordering::SeqCst);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;

    gw.connect(1, "first", "").await;
    match gw.verdict(1).await.1 {
        FromRoom::Failed { reason, .. } => assert!(reason.contains("start failure 1"), "reason: {reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    gw.join(2, "second", "").await;
    let seen = events.until(|e| e.starts_with("connect:")).await;
    assert_eq!(seen, ["new:1", "start:1", "new:2", "start:2", "connect:second:1"]);

    // Same through HTTP: 500 first, then served.
    let id = "start_retry_http";
    let fx = Fixture::register(id);
    fx.fail_start_first.store(1, Ordering::SeqCst);
    let (room, _exit) = spawn(id, Opts::default());
    let res = call(&room, "/ping").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body(&res).contains("start failure 1"), "body: {}", body(&res));
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.starts), 2);
}

// =============================================================================================
// 4. Connection table
// =============================================================================================

#[tokio::test]
async fn a_second_connection_with_the_same_id_replaces_the_first() {
    let id = "duplicate_id";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "dup", "").await;
    a.join(3, "other", "").await;
    b.join(4, "bee", "").await;
    events.until_eq("connect:bee:1").await;

    // The same id again, over another link.
    b.connect(2, "dup", "").await;
    let reason = assert_close(&a.next().await, 1, close_code::REPLACED);
    assert!(!reason.is_empty());
    assert!(matches!(b.verdict(2).await.1, FromRoom::Accepted { .. }));
    // on_close ran for the first before the second joined: no handler ever saw both.
    let seen = events.until(|e| e.starts_with("connect:dup")).await;
    assert_eq!(seen, ["close:dup:open=false:same=0", "connect:dup:1"]);
    b.send(2, "ids").await;
    assert_eq!(b.text(2).await, "ids:other,bee,dup");

    // The gateway reports the replaced socket closed: that must not touch the new one.
    a.closed(1, None).await;
    b.send(2, "whoami").await;
    let who: serde_json::Value = serde_json::from_str(&b.text(2).await).unwrap();
    assert_eq!(who["id"], "dup");
    assert!(events.drain().is_empty(), "a second on_close ran");

    // Excluding the id excludes the socket that holds it now (sid 2 on link b, not sid 1).
    a.send(3, "broadcast_without:hi:dup").await;
    match b.next().await {
        FromRoom::Broadcast { except, msg } => {
            assert_eq!(except, vec![2]);
            assert_eq!(msg.as_text(), Some("hi"));
        }
        other => panic!("link b: expected a broadcast, got {other:?}"),
    }
    match a.next().await {
        FromRoom::Broadcast { except, msg } => {
            assert!(except.is_empty(), "link a: except {except:?}");
            assert_eq!(msg.as_text(), Some("hi"));
        }
        other => panic!("link a: expected a broadcast, got {other:?}"),
    }
}

#[tokio::test]
async fn broadcast_without_excludes_by_id_and_skips_links_with_no_recipient() {
    let id = "broadcast_without";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "a1", "").await;
    a.join(2, "a2", "").await;
    b.join(3, "b1", "").await;

    b.send(3, "broadcast_without:one:a2").await;
    match a.next().await {
        FromRoom::Broadcast { msg, except } => {
            assert_eq!(msg.as_text(), Some("one"));
            assert_eq!(except, vec![2]);
        }
        other => panic!("expected a broadcast, got {other:?}"),
    }
    match b.next().await {
        FromRoom::Broadcast { except, .. } => assert!(except.is_empty()),
        other => panic!("expected a broadcast, got {other:?}"),
    }

    // Every recipient on link b excluded: b gets nothing, a gets the frame.
    b.send(3, "broadcast_without:two:b1|send:done").await;
    assert_eq!(a.text(1).await, "two");
    assert_eq!(b.text(3).await, "done");
    b.quiet(QUIET).await;
}

#[tokio::test]
async fn broadcast_without_a_repeated_id_still_reaches_the_others() {
    let id = "broadcast_without_repeat";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "a1", "").await;
    a.join(2, "a2", "").await;
    b.join(3, "b1", "").await;

    b.send(3, "broadcast_without:hi:a1,a1").await;
    b.send(3, "broadcast:end").await;
    // a2 is not excluded, so link a must get "hi" (before "end").
    assert_eq!(a.text(2).await, "hi");
    assert_eq!(a.text(2).await, "end");
}

#[tokio::test]
async fn tags_are_validated_and_filter_get_connections() {
    let id = "tags";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;

    assert_eq!(gw.join(1, "t1", "tags=red,blue").await, ["t1", "red", "blue"]);
    assert_eq!(gw.join(2, "t2", "tags=red").await, ["t2", "red"]);
    assert_eq!(gw.join(3, "t3", "").await, ["t3"]);

    // Nine tags besides the id fit the default limit of ten; ten do not.
    let nine: Vec<String> = (0..9).map(|i| format!("x{i}")).collect();
    assert_eq!(gw.join(4, "t4", &format!("tags={}", nine.join(","))).await.len(), 10);
    let ten: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
    gw.connect(5, "t5", &format!("tags={}", ten.join(","))).await;
    assert!(matches!(gw.verdict(5).await.1, FromRoom::Failed { .. }), "eleven tags were accepted");
    // An empty tag.
    gw.connect(6, "t6", "tags=").await;
    assert!(matches!(gw.verdict(6).await.1, FromRoom::Failed { .. }), "an empty tag was accepted");
    gw.connect(7, "t7", "tags=a,,b").await;
    assert!(matches!(gw.verdict(7).await.1, FromRoom::Failed { .. }), "an empty tag was accepted");
    // A tag longer than the limit.
    gw.connect(8, "t8", &format!("tags={}", "y".repeat(257))).await;
    assert!(matches!(gw.verdict(8).await.1, FromRoom::Failed { .. }), "a 257-byte tag was accepted");

    for (query, want) in
        [("ids", "ids:t1,t2,t3,t4"), ("ids:red", "ids:t1,t2"), ("ids:blue", "ids:t1"), ("ids:t3", "ids:t3")]
    {
        gw.send(3, query).await;
        assert_eq!(gw.text(3).await, want, "{query}");
    }
}

#[tokio::test]
async fn joined_comes_before_accepted_with_on_connect_frames_between() {
    let id = "handshake_order";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "w", "welcome=1&tags=vip").await;
    let first = gw.next().await;
    assert!(matches!(first, FromRoom::Joined { sid: 1 }), "got {first:?}");
    assert_send(&gw.next().await, 1, "welcome");
    match gw.next().await {
        FromRoom::Accepted { sid: 1, tags } => assert_eq!(tags, ["w", "vip"]),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn closing_a_connection_from_party_code_closes_the_socket_then_runs_on_close() {
    let id = "party_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "c1", "").await;
    gw.join(2, "c2", "").await;

    gw.send(1, "close:4000:bye").await;
    let reason = assert_close(&gw.next().await, 1, 4000);
    assert_eq!(reason, "bye");
    let seen = events.until(|e| e.starts_with("close:")).await;
    assert_eq!(seen.last().unwrap(), "close:c1:open=false:same=0");
    // Frames from the closed socket are ignored; the gateway's late Closed runs nothing.
    gw.send(1, "send:zombie").await;
    gw.closed(1, None).await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:c2");
    assert!(events.drain().is_empty(), "on_close ran twice");
}

#[tokio::test]
async fn closing_a_connection_in_on_connect_closes_it_and_runs_on_close() {
    let id = "connect_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "nope", "close=4001").await;
    let mut got = Vec::new();
    while !got.iter().any(|m| matches!(m, FromRoom::Close { sid: 1, code: 4001, .. })) {
        got.push(gw.next().await);
    }
    events.until_eq("close:nope:open=false:same=0").await;
    gw.join(2, "yes", "").await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:yes");
}

#[tokio::test]
async fn a_socket_that_failed_runs_on_error_then_on_close() {
    let id = "socket_error";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "s1", "").await;
    events.until_eq("connect:s1:1").await;

    gw.closed(1, Some("connection reset")).await;
    let seen = events.until(|e| e.starts_with("close:")).await;
    assert_eq!(seen, ["error:s1:connection reset", "close:s1:open=false:same=0"]);
}

#[tokio::test]
async fn closing_a_link_runs_on_close_for_each_of_its_sockets() {
    let id = "link_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    let mut c = Gw::open(&room).await;
    a.join(1, "l1", "").await;
    a.join(2, "l2", "").await;
    b.join(3, "l3", "").await;
    c.join(4, "l4", "").await;
    events.until_eq("connect:l4:1").await;

    // Dropping the sender closes the link.
    let Gw { link, mut rx } = a;
    drop(link);
    let mut closed = vec![events.next().await, events.next().await];
    closed.sort();
    assert_eq!(closed, ["close:l1:open=false:same=0", "close:l2:open=false:same=0"]);
    assert!(timeout(WAIT, rx.recv()).await.expect("the link stayed open").is_none());

    // So does close().
    b.link.close().await;
    assert_eq!(events.next().await, "close:l3:open=false:same=0");
    assert!(b.rest().await.is_empty());

    c.send(4, "ids").await;
    assert_eq!(c.text(4).await, "ids:l4");
}

#[tokio::test]
async fn connections_past_the_room_limit_are_refused_with_503() {
    let id = "room_full";
    Fixture::register(id);
    let limits = Limits { max_connections_per_room: 2, ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "f1", "").await;
    gw.join(2, "f2", "").await;
    gw.connect(3, "f3", "").await;
    match gw.verdict(3).await {
        (before, FromRoom::Refused { status: 503, .. }) => assert!(before.is_empty(), "before: {before:?}"),
        other => panic!("expected Refused 503, got {other:?}"),
    }
    gw.closed(1, None).await;
    gw.join(4, "f4", "").await;
}

// =============================================================================================
// 5. Storage semantics
// =============================================================================================

fn direct(id: &str, store: Arc<dyn Store>, limits: Limits) -> Storage {
    Storage::new(key(id), store, None, Arc::new(limits))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn storage_reads_its_own_writes_before_they_are_committed() {
    let store = TestStore::new();
    let storage = direct("ryw", store.clone(), Limits::default());
    store.hold();
    storage.put("k", &1).await.unwrap();
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(1));
    assert_eq!(store.commits(), 0);

    let s = storage.clone();
    let first = tokio::spawn(async move { s.sync().await });
    store.wait_commits(1).await;
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(1), "a commit in flight hides the value");
    storage.put("k", &2).await.unwrap();
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(2));
    assert!(storage.delete("k").await.unwrap());
    assert_eq!(storage.get::<i32>("k").await.unwrap(), None);
    assert_eq!(store.value(&key("ryw"), "k").await, None);

    store.release();
    timeout(WAIT, first).await.expect("sync hung").unwrap().unwrap();
    timeout(WAIT, storage.sync()).await.expect("sync hung").unwrap();
    assert_eq!(store.value(&key("ryw"), "k").await, None);
}

#[tokio::test]
async fn storage_delete_reports_whether_the_key_existed() {
    let store = Arc::new(MemoryStore::new());
    let room = key("delete");
    store.commit(&room, None, &[WriteOp::Put("stored".into(), b("1"))]).await.unwrap();
    let storage = direct("delete", store.clone(), Limits::default());

    assert!(storage.delete("stored").await.unwrap(), "a key only in the store existed");
    assert!(!storage.delete("stored").await.unwrap());
    assert!(!storage.delete("never").await.unwrap());
    storage.put("buffered", "x").await.unwrap();
    assert!(storage.delete("buffered").await.unwrap(), "a buffered key existed");
    storage.put_bytes("a", b("1")).await.unwrap();
    assert_eq!(storage.delete_many(["a", "b", "buffered"]).await.unwrap(), 1);
    storage.sync().await.unwrap();
    assert_eq!(store.get(&room, &["stored".into(), "buffered".into()]).await.unwrap(), vec![None, None]);
}

#[tokio::test]
async fn storage_delete_all_hides_every_key_while_the_commit_is_pending() {
    let store = TestStore::new();
    let room = key("delete_all");
    store
        .commit(&room, None, &[WriteOp::Put("seen".into(), b("1")), WriteOp::Put("unseen".into(), b("2"))])
        .await
        .unwrap();
    let storage = direct("delete_all", store.clone(), Limits::default());
    assert_eq!(storage.get_bytes("seen").await.unwrap(), Some(b("1")));
    storage.set_alarm(12_345).await.unwrap();
    storage.sync().await.unwrap();

    store.hold();
    storage.delete_all().await.unwrap();
    let s = storage.clone();
    let pending = tokio::spawn(async move { s.sync().await });
    store.wait_commits(3).await;
    assert_eq!(storage.get_bytes("seen").await.unwrap(), None);
    assert_eq!(storage.get_bytes("unseen").await.unwrap(), None, "a key never read came back from the store");
    assert!(store.value(&room, "unseen").await.is_some(), "the store changed before the commit");
    storage.put("new", "n").await.unwrap();
    assert_eq!(storage.get::<String>("new").await.unwrap().as_deref(), Some("n"));

    store.release();
    timeout(WAIT, pending).await.expect("sync hung").unwrap().unwrap();
    storage.sync().await.unwrap();
    let keys: Vec<String> =
        store.list(&room, &ListOptions::default()).await.unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(keys, ["new"]);
    assert_eq!(store.get_alarm(&room).await.unwrap(), Some(12_345), "delete_all keeps the alarm");
}

#[tokio::test]
async fn storage_list_sees_buffered_writes() {
    let store = Arc::new(MemoryStore::new());
    let room = key("list");
    let seed: Vec<WriteOp> = ["a1", "a2", "b1", "c1"].iter().map(|k| WriteOp::Put(k.to_string(), b(k))).collect();
    store.commit(&room, None, &seed).await.unwrap();
    let storage = direct("list", store.clone(), Limits::default());
    storage.put_bytes("a3", b("a3")).await.unwrap();
    storage.put_bytes("b0", b("b0")).await.unwrap();
    assert!(storage.delete("a1").await.unwrap());

    let keys = |entries: Vec<(String, Bytes)>| entries.into_iter().map(|e| e.0).collect::<Vec<_>>();
    let list = |opts: ListOptions| {
        let storage = storage.clone();
        async move { keys(storage.list(opts).await.unwrap()) }
    };
    assert_eq!(list(ListOptions::default()).await, ["a2", "a3", "b0", "b1", "c1"]);
    assert_eq!(list(ListOptions { prefix: Some("a".into()), ..Default::default() }).await, ["a2", "a3"]);
    assert_eq!(
        list(ListOptions { start: Some("a3".into()), end: Some("c1".into()), ..Default::default() }).await,
        ["a3", "b0", "b1"]
    );
    assert_eq!(
        list(ListOptions { start_after: Some("a2".into()), limit: Some(2), ..Default::default() }).await,
        ["a3", "b0"]
    );
    assert_eq!(list(ListOptions { reverse: true, limit: Some(2), ..Default::default() }).await, ["c1", "b1"]);
    assert_eq!(
        list(ListOptions { prefix: Some("a".into()), reverse: true, limit: Some(1), ..Default::default() }).await,
        ["a3"]
    );
    // Writes made after a list are seen by the next one.
    storage.delete("c1").await.unwrap();
    storage.put_bytes("c2", b("c2")).await.unwrap();
    assert_eq!(list(ListOptions { start: Some("c".into()), ..Default::default() }).await, ["c2"]);
}

#[tokio::test]
async fn storage_enforces_key_value_and_batch_limits() {
    let limits = Limits { max_key_bytes: 8, max_value_bytes: 16, max_batch_keys: 3, ..Limits::default() };
    let store = Arc::new(MemoryStore::new());
    let storage = direct("limits", store.clone(), limits);
    let long_key = "k".repeat(9);

    assert!(matches!(storage.put(&long_key, "v").await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(matches!(storage.get::<String>(&long_key).await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(matches!(storage.delete(&long_key).await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(storage.put(&"k".repeat(8), "v").await.is_ok(), "a key at the limit");

    assert!(matches!(
        storage.put_bytes("v", vec![0u8; 17]).await,
        Err(StorageError::ValueTooLarge { len: 17, max: 16, .. })
    ));
    // JSON encoding counts: "aaaaaaaaaaaaaaa" is 17 bytes with its quotes.
    assert!(matches!(storage.put("v", &"a".repeat(15)).await, Err(StorageError::ValueTooLarge { len: 17, .. })));
    assert!(storage.put_bytes("v", vec![0u8; 16]).await.is_ok(), "a value at the limit");

    let four = |p: &str| (0..4).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert!(matches!(storage.get_many(four("g")).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    assert!(matches!(storage.delete_many(four("d")).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    let entries: Vec<(String, Bytes)> = four("p").into_iter().map(|k| (k, b("x"))).collect();
    assert!(matches!(storage.put_many(entries).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    // A refused batch writes nothing, not even its valid entries.
    let mixed = vec![("ok".to_string(), b("x")), ("big".to_string(), Bytes::from(vec![0u8; 17]))];
    assert!(matches!(storage.put_many(mixed).await, Err(StorageError::ValueTooLarge { .. })));
    assert_eq!(storage.get_bytes("ok").await.unwrap(), None);
    assert_eq!(storage.get_bytes("p0").await.unwrap(), None);
}

#[tokio::test]
async fn storage_json_get_of_a_non_json_value_is_a_json_error() {
    let storage = direct("json", Arc::new(MemoryStore::new()), Limits::default());
    storage.put_bytes("raw", Bytes::from_static(&[0xff, 0x00, 0x01])).await.unwrap();
    match storage.get::<String>("raw").await {
        Err(StorageError::Json { key, .. }) => assert_eq!(key, "raw"),
        other => panic!("expected a JSON error, got {other:?}"),
    }
    storage.put("text", "hello").await.unwrap();
    assert!(matches!(storage.get::<u32>("text").await, Err(StorageError::Json { .. })));
    assert_eq!(storage.get_bytes("raw").await.unwrap(), Some(Bytes::from_static(&[0xff, 0x00, 0x01])));
}

#[tokio::test]
async fn storage_sync_resolves_only_once_the_store_has_the_data() {
    let store = TestStore::new();
    let room = key("sync");
    let storage = direct("sync", store.clone(), Limits::default());
    timeout(WAIT, storage.sync()).await.expect("sync with nothing written hung").unwrap();

    store.hold();
    storage.put("k", "v").await.unwrap();
    let s = storage.clone();
    let pending = tokio::spawn(async move { s.sync().await });
    store.wait_commits(1).await;
    tokio::time::sleep(QUIET).await;
    assert!(!pending.is_finished(), "sync resolved while the commit was held");
    assert_eq!(store.value(&room, "k").await, None);

    store.release();
    timeout(WAIT, pending).await.expect("sync hung").unwrap().unwrap();
    assert_eq!(store.value(&room, "k").await, Some(b("\"v\"")));
}

#[tokio::test]
async fn storage_alarm_round_trips_and_reaches_the_store() {
    let store = Arc::new(MemoryStore::new());
    let room = key("alarm_rt");
    let storage = direct("alarm_rt", store.clone(), Limits::default());
    assert_eq!(storage.get_alarm().await.unwrap(), None);

    storage.set_alarm(1_000_000).await.unwrap();
    assert_eq!(storage.get_alarm().await.unwrap(), Some(1_000_000));
    storage.sync().await.unwrap();
    assert_eq!(store.get_alarm(&room).await.unwrap(), Some(1_000_000));

    // A fresh instance reads it from the store.
    let again = direct("alarm_rt", store.clone(), Limits::default());
    assert_eq!(again.get_alarm().await.unwrap(), Some(1_000_000));

    storage.delete_alarm().await.unwrap();
    assert_eq!(storage.get_alarm().await.unwrap(), None);
    storage.sync().await.unwrap();
    assert_eq!(store.get_alarm(&room).await.unwrap(), None);
}

// =============================================================================================
// 6. Alarms (wall clock)
// =============================================================================================

/// Polls the store until the room's alarm is `want`.
async fn wait_store_alarm(store: &dyn Store, room: &RoomKey, want: Option<i64>) {
    wait_store_alarm_where(store, room, |a| a == want).await;
}

/// Polls the store until the room's alarm satisfies `pred`.
async fn wait_store_alarm_where(store: &dyn Store, room: &RoomKey, pred: impl Fn(Option<i64>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = store.get_alarm(room).await.unwrap();
        if pred(got) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the store alarm stayed {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alarm_time(event: &str) -> i64 {
    event.rsplit(':').next().unwrap().parse().expect("alarm:N:TIME")
}

#[tokio::test]
async fn an_alarm_fires_once_and_is_then_deleted() {
    let id = "alarm_once";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;

    let set_at = now_ms();
    gw.send(1, "alarm:300|send:set").await;
    assert_eq!(gw.text(1).await, "set");
    let fired = events.until(|e| e.starts_with("alarm:")).await;
    let fired = fired.last().unwrap();
    assert!(fired.starts_with("alarm:1:"), "{fired}");
    assert!(alarm_time(fired) >= set_at + 300, "fired early: {fired} (set at {set_at})");
    wait_store_alarm(store.as_ref(), &key(id), None).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.count(&fx.alarms), 1, "the alarm fired again");
}

#[tokio::test]
async fn a_failing_alarm_is_retried_with_backoff_and_then_deleted() {
    let id = "alarm_retry";
    let fx = Fixture::register(id);
    fx.fail_alarms.store(1, Ordering::SeqCst);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    assert_eq!(call(&room, "/alarm/100").await.status(), StatusCode::OK);

    let first = events.until(|e| e.starts_with("alarm:")).await.pop().unwrap();
    assert!(first.starts_with("alarm:1:"), "{first}");
    // The retry is stored, so it would survive the room.
    let retry_after = alarm_time(&first) + 2000;
    wait_store_alarm_where(store.as_ref(), &key(id), |a| a.is_some_and(|t| t >= retry_after)).await;
    let second = events.until(|e| e.starts_with("alarm:")).await.pop().unwrap();
    assert!(second.starts_with("alarm:2:"), "{second}");
    let gap = alarm_time(&second) - alarm_time(&first);
    assert!(gap >= 1900, "retried after {gap} ms; the first backoff is 2 s");
    wait_store_alarm(store.as_ref(), &key(id), None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.count(&fx.alarms), 2);
}

#[tokio::test]
async fn the_alarm_command_runs_on_alarm_only_when_an_alarm_is_due() {
    // No alarm at all.
    let id = "alarm_cmd_none";
    let fx = Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    room.alarm().await.unwrap();
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.alarms), 0);

    // An alarm an hour ahead.
    let id = "alarm_cmd_later";
    let fx = Fixture::register(id);
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    call(&room, "/alarm/3600000").await;
    let at = store.get_alarm(&key(id)).await.unwrap().expect("the alarm reached the store");
    room.alarm().await.unwrap();
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.alarms), 0);
    assert_eq!(store.get_alarm(&key(id)).await.unwrap(), Some(at));

    // A due alarm in the store of a room that has not started (the host scheduler's case).
    let id = "alarm_cmd_due";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    store.commit(&key(id), None, &[WriteOp::SetAlarm(now_ms() - 1000)]).await.unwrap();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    room.alarm().await.unwrap();
    events.until(|e| e.starts_with("alarm:1:")).await;
    wait_store_alarm(store.as_ref(), &key(id), None).await;
}

#[tokio::test]
async fn an_alarm_far_in_the_past_fires_at_once() {
    let id = "alarm_min";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, mut exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    gw.send(1, &format!("alarm_at:{}", i64::MIN)).await;
    tokio::select! {
        _ = events.until(|e| e.starts_with("alarm:1:")) => {}
        r = &mut exit => panic!("the room task ended: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_room_whose_on_start_fails_on_an_alarm_does_not_spin() {
    let id = "alarm_start_spin";
    let fx = Fixture::register(id);
    fx.fail_start_after.store(1, Ordering::SeqCst); // the first start works, every later one fails
    let limits = Limits { hibernate_idle: Duration::from_millis(100), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { hibernate: true, limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    gw.send(1, "alarm:500|send:set").await;
    assert_eq!(gw.text(1).await, "set");
    // The room hibernates after 100 ms; at 500 ms the alarm wakes it and on_start fails.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let starts = fx.count(&fx.starts);
    let _ = room.shutdown(close_code::GOING_AWAY, "test over").await;
    assert!(starts <= 10, "on_start ran {starts} times in 2.5 s");
}

// =============================================================================================
// 7. Hibernation and idle exit (paused time)
// =============================================================================================

async fn idle_then_whoami(hibernate: bool, id: &str) -> (Arc<Fixture>, serde_json::Value) {
    let fx = Fixture::register(id);
    // Both idle timers run out before the test's next message.
    let limits =
        Limits { hibernate_idle: Duration::from_secs(2), room_idle: Duration::from_secs(4), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { hibernate, limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    assert_eq!(gw.join(1, "h1", "tags=red,blue").await, ["h1", "red", "blue"]);
    gw.send(1, "setstate:kept|put:k:v|send:set").await;
    match gw.next().await {
        FromRoom::State { sid: 1, state: Some(state) } => assert_eq!(state, Bytes::from(r#"{"text":"kept"}"#)),
        other => panic!("expected a state update, got {other:?}"),
    }
    assert_eq!(gw.text(1).await, "set");
    assert_eq!((fx.count(&fx.news), fx.count(&fx.starts)), (1, 1));

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fx.count(&fx.news), 1, "idling created a party value");
    gw.send(1, "whoami").await;
    let who = serde_json::from_str(&gw.text(1).await).unwrap();
    gw.send(1, "get:k|ids").await;
    assert_eq!(gw.text(1).await, "got:v", "storage after idling");
    assert_eq!(gw.text(1).await, "ids:h1");
    (fx, who)
}

#[tokio::test(start_paused = true)]
async fn a_hibernating_room_wakes_with_connection_ids_tags_and_state_intact() {
    let (fx, who) = idle_then_whoami(true, "hibernate_wake").await;
    assert_eq!(who, serde_json::json!({"id": "h1", "tags": ["h1", "red", "blue"], "state": "kept"}));
    assert_eq!(fx.count(&fx.news), 2, "the party was not re-created after hibernating");
    assert_eq!(fx.count(&fx.starts), 2, "on_start did not run again");
}

#[tokio::test(start_paused = true)]
async fn a_non_hibernating_room_keeps_its_party_value_when_idle() {
    let (fx, who) = idle_then_whoami(false, "no_hibernate").await;
    assert_eq!(who, serde_json::json!({"id": "h1", "tags": ["h1", "red", "blue"], "state": "kept"}));
    assert_eq!(fx.count(&fx.news), 1);
    assert_eq!(fx.count(&fx.starts), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_room_with_nothing_attached_exits_when_the_host_allows() {
    let id = "idle_exit";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let room_idle = Duration::from_secs(5);
    let limits = Limits { room_idle, ..Limits::default() };
    let may_exit = Box::new(move || {
        asked2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let (room, mut exit) = spawn(id, Opts { limits, may_exit, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "x", "").await;

    // A connection keeps it; so does an open link with no connection.
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited with a connection");
    gw.closed(1, None).await;
    events.until_eq("close:x:open=false:same=0").await;
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited with a link open");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "may_exit asked while something was attached");

    gw.link.close().await;
    let closed_at = tokio::time::Instant::now();
    assert_eq!(exit_within(&mut exit, room_idle * 6).await, RoomExit::Idle);
    assert!(closed_at.elapsed() >= room_idle, "exited after {:?}", closed_at.elapsed());
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(room.request(request("/ping")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn an_idle_room_stays_when_the_host_says_no() {
    let id = "idle_stay";
    Fixture::register(id);
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let room_idle = Duration::from_secs(5);
    let limits = Limits { room_idle, ..Limits::default() };
    let may_exit = Box::new(move || {
        asked2.fetch_add(1, Ordering::SeqCst);
        false
    });
    let (room, mut exit) = spawn(id, Opts { limits, may_exit, ..Opts::default() });
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited although told to stay");
    assert!(asked.load(Ordering::SeqCst) >= 1, "may_exit was never asked");
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_tells_every_link_the_room_is_gone() {
    let id = "shutdown";
    Fixture::register(id);
    let (room, mut exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    room.shutdown(close_code::SERVICE_RESTART, "moving").await.unwrap();
    let rest = a.rest().await;
    assert!(
        matches!(rest.as_slice(), [FromRoom::Gone { code: close_code::SERVICE_RESTART, reason }] if reason == "moving"),
        "got {rest:?}"
    );
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Shutdown);
}

// =============================================================================================
// 8. Per-connection order (invariant 3)
// =============================================================================================

#[tokio::test]
async fn messages_from_one_socket_reach_on_message_in_order() {
    let id = "order_in";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "o", "").await;
    events.until_eq("connect:o:1").await;
    for i in 0..500 {
        gw.send(1, &format!("log:{i}")).await;
    }
    for i in 0..500 {
        assert_eq!(events.next().await, format!("log:{i}"));
    }
}

#[tokio::test]
async fn frames_to_one_socket_arrive_in_the_order_sent() {
    let id = "order_out";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "o", "").await;
    gw.send(1, "burst:500").await;
    for i in 0..500 {
        assert_eq!(gw.text(1).await, i.to_string());
    }
    // Sends and broadcasts interleaved keep their order too.
    gw.send(1, "send:1|broadcast:2|send:3|broadcast:4").await;
    for want in ["1", "2", "3", "4"] {
        assert_eq!(gw.text(1).await, want);
    }
}

// =============================================================================================
// Moves between nodes (invariant 6) and at-most-once requests (invariant 2)
// =============================================================================================

/// Answers every fetch with "ok" and counts the calls.
#[derive(Default)]
struct CountingParties {
    calls: AtomicUsize,
}

#[async_trait]
impl PartiesClient for CountingParties {
    async fn fetch(&self, _room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(web::text(StatusCode::OK, "ok"))
    }

    fn has_party(&self, _party: &str) -> bool {
        true
    }
}

#[tokio::test]
async fn a_request_to_another_room_waits_for_the_callers_writes() {
    let store = TestStore::new();
    let parties = Arc::new(CountingParties::default());
    let (room, _exit) = spawn("fetch-gate", Opts { store: store.clone(), parties: parties.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.hold();
    gw.send(1, "put:k:v").await;
    store.wait_commits(1).await;
    gw.send(1, "put:k2:v2|fetch:b").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(parties.calls.load(Ordering::SeqCst), 0, "the request left before the caller's writes were durable");
    store.release();
    assert_eq!(gw.text(1).await, "fetched:ok");
    assert_eq!(parties.calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.value(&key("fetch-gate"), "k2").await.as_deref(), Some(&b"\"v2\""[..]));
}

#[tokio::test]
async fn a_fetch_after_a_refused_write_never_leaves() {
    let store = TestStore::new();
    let parties = Arc::new(CountingParties::default());
    let (room, mut exit) =
        spawn("fetch-fenced", Opts { store: store.clone(), parties: parties.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.fail_with(FailMode::Fenced);
    gw.send(1, "put:k:v|fetch:b").await;
    let rest = gw.rest().await;
    assert!(rest.iter().any(|m| matches!(m, FromRoom::Gone { code: 1012, .. })), "{rest:?}");
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: true });
    assert_eq!(parties.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_the_room_took_is_interrupted_not_undelivered_when_the_room_fails() {
    let store = TestStore::new();
    let (room, _exit) = spawn("interrupted", Opts { store: store.clone(), ..Opts::default() });
    store.hold();
    store.fail_with(FailMode::Fenced);
    let call = tokio::spawn({
        let room = room.clone();
        async move { room.request(request("/write")).await }
    });
    store.wait_commits(1).await;
    store.release();
    let res = timeout(WAIT, call).await.unwrap().unwrap();
    assert!(matches!(res, Err(partyline::actor::RequestError::Interrupted(_))), "{res:?}");
    // A request to a room that has stopped was never delivered: safe to send elsewhere.
    let res = timeout(WAIT, room.request(request("/write"))).await.unwrap();
    assert!(matches!(res, Err(partyline::actor::RequestError::NotDelivered(_))), "{res:?}");
}

#[tokio::test]
async fn a_room_that_does_not_hibernate_closes_its_links_on_a_move_once_its_writes_are_durable() {
    let store = TestStore::new();
    let (room, mut exit) = spawn("move-plain", Opts { store: store.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.hold();
    gw.send(1, "put:k:v|send:after").await;
    store.wait_commits(1).await;
    room.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    gw.quiet(Duration::from_millis(200)).await;
    store.release();
    assert_send(&gw.next().await, 1, "after");
    assert!(matches!(gw.next().await, FromRoom::Gone { code: 1012, .. }));
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
    assert!(store.value(&key("move-plain"), "k").await.is_some(), "durable before the room let go");
}

/// One socket's record as a gateway keeps it.
struct Rec {
    sid: SocketId,
    id: String,
    tags: Vec<String>,
    state: Option<Bytes>,
}

impl Gw {
    /// Hands `recs` to a new instance over this link, as a gateway does after `Moved`.
    async fn adopt(&self, recs: &[Rec], links: u32) {
        for r in recs {
            let uri = format!("http://localhost/parties/hibernating/room?_pk={}", r.id);
            let msg = ToRoom::Adopt { sid: r.sid, id: r.id.clone(), uri, tags: r.tags.clone(), state: r.state.clone() };
            self.link.send(msg).await.expect("the room is running");
        }
        self.link.send(ToRoom::Adopted { links }).await.expect("the room is running");
    }
}

#[tokio::test]
async fn a_hibernating_room_moves_its_sockets_to_a_new_instance_without_losing_a_frame() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let opts = || Opts { hibernate: true, store: store.clone(), ..Opts::default() };
    let mut events = Fixture::register("move-h").events();
    let (old, mut old_exit) = spawn("move-h", opts());
    let (mut g1, mut g2) = (Gw::open(&old).await, Gw::open(&old).await);
    g1.join(1, "a", "tags=red").await;
    g2.join(7, "b", "").await;
    g1.send(1, "setstate:alpha|put:n:1|broadcast:one").await;
    assert_eq!(g1.text(1).await, "one");
    assert_eq!(g2.text(7).await, "one");

    old.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    // Each link is asked to pause; a frame that was already on its way is still handled.
    assert!(matches!(g1.next().await, FromRoom::Pause));
    assert!(matches!(g2.next().await, FromRoom::Pause));
    g2.send(7, "put:n:2|broadcast:two").await;
    g2.link.send(ToRoom::Paused).await.unwrap();
    g1.link.send(ToRoom::Paused).await.unwrap();
    assert_eq!(g1.text(1).await, "two");
    assert_eq!(g2.text(7).await, "two");
    assert!(matches!(g1.next().await, FromRoom::Moved { links: 2 }));
    assert!(matches!(g2.next().await, FromRoom::Moved { links: 2 }));
    assert_eq!(exit_within(&mut old_exit, WAIT).await, RoomExit::Moved);

    // The next owner: the same sockets, ids, tags and state, no on_connect.
    let (new, _new_exit) = spawn("move-h", opts());
    let (mut n1, mut n2) = (Gw::open(&new).await, Gw::open(&new).await);
    let state = Some(Bytes::from(serde_json::to_vec(&serde_json::json!({"text": "alpha"})).unwrap()));
    n1.adopt(&[Rec { sid: 1, id: "a".into(), tags: vec!["a".into(), "red".into()], state }], 2).await;
    // The first link's client speaks before the second link adopted: held, so the broadcast
    // reaches both.
    n1.send(1, "broadcast:three").await;
    n2.quiet(Duration::from_millis(200)).await;
    n2.adopt(&[Rec { sid: 7, id: "b".into(), tags: vec!["b".into()], state: None }], 2).await;
    assert_eq!(n1.text(1).await, "three");
    assert_eq!(n2.text(7).await, "three");
    n1.send(1, "whoami|ids:red|get:n").await;
    let who: serde_json::Value = serde_json::from_str(&n1.text(1).await).unwrap();
    assert_eq!(who, serde_json::json!({"id": "a", "tags": ["a", "red"], "state": "alpha"}));
    assert_eq!(n1.text(1).await, "ids:a");
    assert_eq!(n1.text(1).await, "got:2", "the write made during the pause is there");
    let events = events.drain();
    let connects: Vec<&String> = events.iter().filter(|e| e.starts_with("connect:")).collect();
    assert_eq!(connects, ["connect:a:1", "connect:b:1"], "no on_connect for adopted sockets: {events:?}");
    assert_eq!(events.iter().filter(|e| e.starts_with("start:")).count(), 2, "one start per instance: {events:?}");
}

#[tokio::test]
async fn a_link_that_does_not_pause_in_time_is_closed_and_the_rest_move() {
    let (old, mut exit) = spawn("move-late", Opts { hibernate: true, ..Opts::default() });
    let (mut g1, mut g2) = (Gw::open(&old).await, Gw::open(&old).await);
    g1.join(1, "a", "").await;
    g2.join(2, "b", "").await;
    old.move_out(tokio::time::Instant::now() + Duration::from_millis(500)).await.unwrap();
    assert!(matches!(g1.next().await, FromRoom::Pause));
    assert!(matches!(g2.next().await, FromRoom::Pause));
    g1.link.send(ToRoom::Paused).await.unwrap();
    assert!(matches!(g1.next().await, FromRoom::Moved { links: 1 }));
    assert!(matches!(g2.next().await, FromRoom::Gone { code: 1012, .. }));
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
}
