//! Behaviour tests of the room runtime (`partyline::runtime::actor`), driven the way a gateway drives a
//! room: a `RoomHandle` from `spawn_room`, one `LinkSender` per gateway link, and the `FromRoom`
//! messages the room answers with. Parties are small scripted types defined here; what they do
//! is chosen by the text of the messages they get, and what they see is reported to the test
//! through a per-room [`Fixture`] (found by room id, so every test uses its own room id).
//! The tests are split by topic into the modules below; this file holds what they share.
//!
//! Every receive has a timeout, so a hang fails the test instead of stalling it. Tests that
//! depend on idle timers run with paused tokio time; alarms use the wall clock
//! (`partyline::storage::now_ms`), so the alarm tests run in real time with generous bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use partyline::client_text;
use partyline::http::{self, StatusCode};
use partyline::runtime::actor::spawn_room;
use partyline::runtime::handle::{RoomConfig, RoomExit, RoomHandle};
use partyline::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use partyline::storage::now_ms;
use partyline::store::{Fence, StoreError, WriteOp};
use partyline::testing::{no_parties, Link};
use partyline::web::{self, query_param};
use partyline::{
    async_trait, Bytes, Connection, ConnectionContext, Env, HttpError, Limits, ListOptions, MemoryStore, Message,
    Parties, PartiesClient, Party, PartyFactory, PartyOptions, PartyRegistry, Request, Response, Room, RoomKey,
    Storage, StorageError, Store,
};
use partyline_test_macros::timed_test;
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
            "broadcast" => self.room.broadcast(arg),
            "broadcast_without" => {
                let (msg, ids) = arg.split_once(':').expect("broadcast_without:MSG:ID,ID");
                let ids: Vec<&str> = ids.split(',').collect();
                self.room.broadcast_without(msg, &ids);
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
            "sleep" => {
                self.fx.log("request:sleeping".into());
                tokio::time::sleep(Duration::from_millis(arg.parse()?)).await;
                Ok(web::text(StatusCode::OK, "slept"))
            }
            "sync" => {
                self.fx.log("request:syncing".into());
                let synced = self.room.storage().sync().await;
                Ok(web::text(StatusCode::OK, if synced.is_ok() { "synced" } else { "failed" }))
            }
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
        self.inner.get(room, keys).await
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
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

    async fn get_alarm_fenced(&self, room: &RoomKey, _fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        self.inner.get_alarm(room).await
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.inner.due_alarms(now_ms, limit).await
    }
}

// ---------------------------------------------------------------------------------------------
// Spawning rooms and driving them like a gateway.
// ---------------------------------------------------------------------------------------------

/// How to spawn a test room.
struct Opts {
    hibernate: bool,
    store: Arc<dyn Store>,
    fence: Option<Fence>,
    limits: Limits,
    may_exit: Box<dyn Fn() -> bool + Send + Sync>,
    parties: Parties,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            hibernate: false,
            store: Arc::new(MemoryStore::new()),
            fence: None,
            limits: Limits::default(),
            may_exit: Box::new(|| false),
            parties: no_parties(),
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
        parties: opts.parties,
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

/// One gateway link into a room (the test kit's [`Link`], with this file's shorthands).
struct Gw {
    link: Link,
}

impl Gw {
    async fn open(room: &RoomHandle) -> Gw {
        Gw { link: Link::open(room).await }
    }

    /// Asks the room to connect socket `sid` with connection id `id`; `query` is added to the
    /// upgrade request's query (`tags=a,b`, `welcome=1`, `fail=reason`, `close=code`).
    async fn connect(&self, sid: SocketId, id: &str, query: &str) {
        let path = format!("/parties/scripted/room?_pk={id}&{query}");
        let request = http::Request::builder().uri(path.as_str()).body(Bytes::new()).expect("a valid request");
        let uri = format!("http://localhost{path}");
        self.link.send_raw(ToRoom::Connect { sid, id: id.to_string(), uri, request: Box::new(request) }).await;
    }

    /// Messages up to the verdict on `sid` (`Accepted`, `Refused` or `Failed`), and the verdict.
    async fn verdict(&mut self, sid: SocketId) -> (Vec<FromRoom>, FromRoom) {
        let connected = self.link.verdict(sid).await;
        (connected.before, connected.verdict)
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
        self.link.send(sid, text).await;
    }

    async fn closed(&self, sid: SocketId, error: Option<&str>) {
        self.link.send_raw(ToRoom::Closed { sid, error: error.map(str::to_string) }).await;
    }

    async fn next(&mut self) -> FromRoom {
        self.link.next().await
    }

    /// The next message, skipping `State`; it must be a frame for `sid`: its text.
    async fn text(&mut self, sid: SocketId) -> String {
        self.link.frame(sid).await.as_text().expect("a text frame").to_string()
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self, wait: Duration) {
        if let Some(msg) = self.link.next_within(wait).await {
            panic!("expected nothing from the room, got {msg:?}");
        }
    }

    /// Everything until the room drops the link.
    async fn rest(&mut self) -> Vec<FromRoom> {
        self.link.rest().await
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

/// What a client sees of a failure: `text` with a reference (`text (ref 5f3a91c2)`), and nothing
/// of what went wrong (`hidden`), which is for the log.
fn assert_hidden(reason: &str, text: &str, hidden: &str) {
    assert!(reason.starts_with(&format!("{text} (ref ")), "expected {text:?} with a reference, got {reason:?}");
    assert!(client_text::is_server_text(reason), "not a client text: {reason:?}");
    assert!(!reason.contains(hidden), "the reason shows {hidden:?}: {reason:?}");
}

mod alarms;
mod connections;
mod fencing;
mod handlers;
mod hibernation;
mod order;
mod output_gate;
mod storage;
