//! A test kit for parties (feature `testing`): runs a party's room in the test's own tokio
//! runtime, without sockets, servers or Redis, the way a gateway would drive it.
//!
//! - [`TestRoom`]: one room of a party on an in-memory store. Clients connect to it
//!   ([`TestRoom::connect`], or [`Connect`] for an id, a query and headers), send, receive and
//!   close ([`TestClient`]); HTTP requests reach `on_request` ([`TestRoom::request`]); the alarm
//!   can be run as if its time had come ([`TestRoom::run_alarm`]); storage can be read
//!   ([`TestRoom::stored`]); and [`TestRoom::restart`] starts the room again on the same storage,
//!   as after an unload, a crash or a move.
//! - [`Hooks`]: the static hooks (`on_before_connect`, `on_before_request`, `on_fetch`).
//! - [`Link`]: the gateway's view, message by message (`ToRoom` in, `FromRoom` out), for tests
//!   of the runtime itself or of what exactly a room emits.
//!
//! Every wait has a time limit ([`WAIT`]), so a party that never answers fails its test
//! instead of hanging it.
//!
//! ```
//! use partyline::testing::TestRoom;
//! use partyline::{Connection, Message, Party, Room};
//!
//! struct Echo(Room);
//!
//! impl Party for Echo {
//!     fn new(room: Room) -> Self {
//!         Echo(room)
//!     }
//!     async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
//!         sender.send(message);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let room = TestRoom::new::<Echo>("main", "r1");
//! let mut a = room.connect("a").await;
//! a.send("hello").await;
//! assert_eq!(a.recv_text().await, "hello");
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::party::{Before, Lobby, PartyFactory, PartyRegistry};
use crate::room::{Env, Parties, PartiesClient};
use crate::runtime::actor::spawn_room;
use crate::runtime::handle::{LinkSender, RoomConfig, RoomExit, RoomHandle};
use crate::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use crate::store::{ListOptions, MemoryStore, RoomKey, Store};
use crate::web::{Request, Response};
use crate::{async_trait, Limits, Message, Party};

/// How long the kit waits for one answer from a room before it fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A request with `method`, `uri` (a path and query, e.g. `/parties/main/r?x=1`) and `body`.
pub fn request(method: &str, uri: &str, body: impl Into<Bytes>) -> Request {
    http::Request::builder().method(method).uri(uri).body(body.into()).expect("a valid request")
}

/// A response's body as text (panics when it is not UTF-8).
pub fn body_text(res: &Response) -> &str {
    std::str::from_utf8(res.body()).expect("a UTF-8 body")
}

/// Other rooms, for tests: every call fails with a clear error.
pub fn no_parties() -> Parties {
    Parties::new(Arc::new(NoParties))
}

struct NoParties;

#[async_trait]
impl PartiesClient for NoParties {
    async fn fetch(&self, room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        anyhow::bail!("a test room has no other rooms to call (it asked for {room}); give the TestRoom parties")
    }

    fn has_party(&self, _party: &str) -> bool {
        false
    }
}

fn factory_of<P: Party>(party: &str) -> Arc<dyn PartyFactory> {
    PartyRegistry::new().with::<P>(party).get(party).expect("just registered").clone()
}

/// How a [`TestRoom`] is set up; from [`TestRoom::builder`] or [`TestRoom::with_factory`].
pub struct TestRoomBuilder {
    key: RoomKey,
    factory: Arc<dyn PartyFactory>,
    store: Arc<dyn Store>,
    limits: Limits,
    env: Env,
    parties: Parties,
}

impl TestRoomBuilder {
    /// Storage (default: a fresh [`MemoryStore`]); share one between rooms to test what a
    /// restarted or another room reads.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self
    }

    /// Limits (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Party variables (`room.env()`; default: none).
    pub fn env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    /// Other rooms (`room.parties()`; default: [`no_parties`]).
    pub fn parties(mut self, parties: Parties) -> Self {
        self.parties = parties;
        self
    }

    /// Starts the room (its `on_start` runs with the first event, as in a server).
    pub fn start(self) -> TestRoom {
        let mut room = TestRoom { setup: self, handle: None, task: None, next_sid: Arc::new(AtomicU64::new(1)) };
        room.spawn();
        room
    }
}

/// One room of a party, run in the test; see the [module docs](self).
pub struct TestRoom {
    setup: TestRoomBuilder,
    handle: Option<RoomHandle>,
    task: Option<JoinHandle<RoomExit>>,
    next_sid: Arc<AtomicU64>,
}

impl TestRoom {
    /// Room `room` of party type `P` served as `party`, on a fresh in-memory store.
    pub fn new<P: Party>(party: &str, room: &str) -> TestRoom {
        Self::builder::<P>(party, room).start()
    }

    /// Like [`TestRoom::new`], with the setup to change before [`TestRoomBuilder::start`].
    pub fn builder<P: Party>(party: &str, room: &str) -> TestRoomBuilder {
        Self::with_factory(party, room, factory_of::<P>(party))
    }

    /// A room of a party from a registry (`registry.get(party)`).
    pub fn with_factory(party: &str, room: &str, factory: Arc<dyn PartyFactory>) -> TestRoomBuilder {
        TestRoomBuilder {
            key: RoomKey::new(party, room),
            factory,
            store: Arc::new(MemoryStore::new()),
            limits: Limits::default(),
            env: Env::default(),
            parties: no_parties(),
        }
    }

    fn spawn(&mut self) {
        let s = &self.setup;
        let (handle, task) = spawn_room(RoomConfig {
            key: s.key.clone(),
            factory: s.factory.clone(),
            store: s.store.clone(),
            fence: None,
            limits: Arc::new(s.limits.clone()),
            env: s.env.clone(),
            parties: s.parties.clone(),
            may_exit: Box::new(|| false),
            observer: None,
            on_exit: None,
        });
        self.handle = Some(handle);
        self.task = Some(task);
    }

    /// The room's party and id.
    pub fn key(&self) -> &RoomKey {
        &self.setup.key
    }

    /// The runtime's handle of the room.
    pub fn handle(&self) -> &RoomHandle {
        self.handle.as_ref().expect("the room is running")
    }

    /// The room's storage backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.setup.store
    }

    fn path(&self) -> String {
        format!("/parties/{}/{}", self.setup.key.party, self.setup.key.room)
    }

    /// Connects a client with connection id `id`; panics when the room refuses it.
    pub async fn connect(&self, id: &str) -> TestClient {
        self.connect_with(Connect::new(id)).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects a client as `connect` says; the refusal or failure if the room did not accept
    /// it (the request does not go through `on_before_connect`: see [`Hooks`]).
    pub async fn connect_with(&self, connect: Connect) -> Result<TestClient, Refused> {
        let mut link = Link::open(self.handle()).await;
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let path = connect.path.unwrap_or_else(|| self.path());
        let uri = match connect.query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut req = request("GET", &uri, Bytes::new());
        for (k, v) in connect.headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("a valid header name"),
                http::HeaderValue::from_str(&v).expect("a valid header value"),
            );
        }
        let connected = link.connect_with(sid, &connect.id, req).await;
        let tags = match &connected.verdict {
            FromRoom::Accepted { tags, .. } => tags.clone(),
            FromRoom::Refused { status, reason, .. } => {
                return Err(Refused { status: Some(*status), reason: reason.clone() });
            }
            FromRoom::Failed { reason, .. } => return Err(Refused { status: None, reason: reason.clone() }),
            other => unreachable!("not a verdict: {other:?}"),
        };
        let mut client = TestClient { link, sid, id: connect.id, tags, pending: Default::default(), state: None };
        for msg in connected.before {
            client.take(msg);
        }
        Ok(client)
    }

    /// Sends an HTTP request to the room's `on_request` (after the output gate, as a server
    /// answers it). The request does not go through `on_before_request`: see [`Hooks`].
    pub async fn request(&self, req: Request) -> Response {
        match tokio::time::timeout(WAIT, self.handle().request(req)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => panic!("the request did not reach the room: {e}"),
            Err(_) => panic!("no response from the room within {WAIT:?}"),
        }
    }

    /// `GET` of `path_and_query` (`None`: the room's own path).
    pub async fn get(&self, path_and_query: Option<&str>) -> Response {
        let uri = path_and_query.map_or_else(|| self.path(), str::to_string);
        self.request(request("GET", &uri, Bytes::new())).await
    }

    /// `POST` of `body` to the room's path.
    pub async fn post(&self, body: impl Into<Bytes>) -> Response {
        self.request(request("POST", &self.path(), body)).await
    }

    /// The alarm the room has set (ms since the Unix epoch), once its writes so far are stored.
    pub async fn alarm(&self) -> Option<i64> {
        self.sync().await;
        self.setup.store.get_alarm(&self.setup.key).await.expect("the store answers")
    }

    /// Runs the room's alarm now if one is set, as if the clock had reached it; returns its
    /// time, or `None` when no alarm is set (then `on_alarm` does not run). Waits until
    /// `on_alarm` and its writes are done.
    pub async fn run_alarm(&self) -> Option<i64> {
        self.sync().await;
        let at = self.setup.store.get_alarm(&self.setup.key).await.expect("the store answers")?;
        self.handle().alarm_as_of(at).await.expect("the room is running");
        self.sync().await;
        Some(at)
    }

    /// Waits until the room has handled everything sent to it before, and its writes are stored.
    pub async fn sync(&self) {
        match tokio::time::timeout(WAIT, self.handle().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the room stopped: {e}"),
            Err(_) => panic!("the room did not catch up within {WAIT:?}"),
        }
    }

    /// The stored value of `key` (raw bytes), once the room's writes so far are stored.
    pub async fn stored_bytes(&self, key: &str) -> Option<Bytes> {
        self.sync().await;
        let got = self.setup.store.get(&self.setup.key, &[key.to_string()]).await.expect("the store answers");
        got.into_iter().next().flatten()
    }

    /// The stored value of `key` decoded from JSON (how `room.storage().put` stores it).
    pub async fn stored<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.stored_bytes(key).await?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("stored value of {key:?} is not that type: {e}")))
    }

    /// Every stored key and raw value, in key order.
    pub async fn stored_all(&self) -> Vec<(String, Bytes)> {
        self.sync().await;
        self.setup.store.list(&self.setup.key, &ListOptions::default()).await.expect("the store answers")
    }

    /// Stops the room (its sockets close with 1001) and waits until it ended.
    pub async fn stop(&mut self) -> RoomExit {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown(close_code::GOING_AWAY, "the test stopped the room").await;
        }
        let task = self.task.take().expect("the room was started");
        match tokio::time::timeout(WAIT, task).await {
            Ok(Ok(exit)) => exit,
            Ok(Err(e)) => panic!("the room task failed: {e}"),
            Err(_) => panic!("the room did not stop within {WAIT:?}"),
        }
    }

    /// Stops the room and starts it again on the same storage: a fresh party value whose
    /// `on_start` reads what the last one stored.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn();
    }

    /// The task running the room, to watch how it ends (taken once).
    pub fn take_task(&mut self) -> JoinHandle<RoomExit> {
        self.task.take().expect("the room task was already taken")
    }

    /// A gateway-level link into the room.
    pub async fn link(&self) -> Link {
        Link::open(self.handle()).await
    }
}

/// How a [`TestClient`] connects: its connection id, query string and headers.
#[derive(Clone, Debug)]
pub struct Connect {
    id: String,
    path: Option<String>,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

impl Connect {
    /// A client with connection id `id` (PartySocket's `id`, `_pk` in its query).
    pub fn new(id: &str) -> Self {
        Connect { id: id.to_string(), path: None, query: None, headers: Vec::new() }
    }

    /// The query string, without `?` (e.g. `token=abc`).
    pub fn query(mut self, query: &str) -> Self {
        self.query = Some(query.to_string());
        self
    }

    /// The request path (default: `/parties/<party>/<room>`).
    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_string());
        self
    }

    /// A request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Why a room did not accept a connection.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the room did not accept the connection: {} {reason}", status.map_or("failed:".to_string(), |s| s.to_string()))]
pub struct Refused {
    /// The HTTP status of a refusal (a full room: 503); `None` when `on_connect` failed.
    pub status: Option<u16>,
    /// Its reason.
    pub reason: String,
}

/// What a [`TestClient`] received.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A frame.
    Frame(Message),
    /// The room closed the connection.
    Closed {
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
}

/// A connected client of a [`TestRoom`].
pub struct TestClient {
    link: Link,
    sid: SocketId,
    id: String,
    tags: Vec<String>,
    pending: std::collections::VecDeque<Event>,
    state: Option<Option<Bytes>>,
}

impl TestClient {
    /// Its connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tags the room gave it.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The last connection state the room set for it (`conn.set_state`), as JSON.
    pub fn state(&self) -> Option<serde_json::Value> {
        self.state.clone().flatten().map(|b| serde_json::from_slice(&b).expect("state is JSON"))
    }

    fn take(&mut self, msg: FromRoom) {
        match msg {
            FromRoom::Send { sid, msg } if sid == self.sid => self.pending.push_back(Event::Frame(msg)),
            FromRoom::Broadcast { msg, except } if !except.contains(&self.sid) => {
                self.pending.push_back(Event::Frame(msg))
            }
            FromRoom::Close { sid, code, reason } if sid == self.sid => {
                self.pending.push_back(Event::Closed { code, reason })
            }
            FromRoom::Gone { code, reason } => self.pending.push_back(Event::Closed { code, reason }),
            FromRoom::State { sid, state } if sid == self.sid => self.state = Some(state),
            _ => {}
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, msg: impl Into<Message>) {
        self.link.send(self.sid, msg).await;
    }

    /// Sends `value` as a JSON text frame.
    pub async fn send_json(&mut self, value: &impl serde::Serialize) {
        self.send(serde_json::to_string(value).expect("serializable")).await;
    }

    /// The next thing received: a frame or the close; panics after [`WAIT`].
    pub async fn recv_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            let msg = self.link.next().await;
            self.take(msg);
        }
    }

    /// The next frame; panics on a close or after [`WAIT`].
    pub async fn recv(&mut self) -> Message {
        match self.recv_event().await {
            Event::Frame(m) => m,
            Event::Closed { code, reason } => panic!("closed by the room ({code} {reason}) instead of a frame"),
        }
    }

    /// The next frame as text; panics on a binary frame.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame decoded from JSON.
    pub async fn recv_json<T: DeserializeOwned>(&mut self) -> T {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("expected JSON of that type, got {text:?}: {e}"))
    }

    /// Waits for the room to close this connection: its code and reason.
    pub async fn recv_close(&mut self) -> (u16, String) {
        match self.recv_event().await {
            Event::Closed { code, reason } => (code, reason),
            Event::Frame(m) => panic!("expected the close, got a frame {m:?}"),
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Some(e) = self.pending.pop_front() {
            panic!("expected nothing, got {e:?}");
        }
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.link.next()).await {
            self.take(msg);
            if let Some(e) = self.pending.pop_front() {
                panic!("expected nothing, got {e:?}");
            }
        }
    }

    /// Closes the connection from the client's side (`on_close` runs).
    pub async fn close(self) {
        self.link.close(self.sid).await;
    }

    /// Drops the connection with a socket error (`on_error`, then `on_close` run).
    pub async fn fail(self, error: &str) {
        self.link.send_raw(ToRoom::Closed { sid: self.sid, error: Some(error.to_string()) }).await;
    }
}

/// A party's static hooks, as a gateway runs them before a room is reached.
pub struct Hooks {
    party: String,
    factory: Arc<dyn PartyFactory>,
    env: Env,
    parties: Parties,
}

impl Hooks {
    /// The hooks of party type `P` served as `party`.
    pub fn of<P: Party>(party: &str) -> Hooks {
        Self::with_factory(party, factory_of::<P>(party))
    }

    /// The hooks of a party from a registry.
    pub fn with_factory(party: &str, factory: Arc<dyn PartyFactory>) -> Hooks {
        Hooks { party: party.to_string(), factory, env: Env::default(), parties: no_parties() }
    }

    /// Party variables the hooks see (default: none).
    pub fn env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    /// What the hooks see for room `room` (`None`: `on_fetch`).
    pub fn lobby(&self, room: Option<&str>) -> Lobby {
        Lobby {
            id: room.map(str::to_string),
            party: self.party.clone(),
            env: self.env.clone(),
            parties: self.parties.clone(),
        }
    }

    /// Runs `on_before_connect` for a WebSocket upgrade `req` to room `room`.
    pub async fn before_connect(&self, room: &str, req: Request) -> anyhow::Result<Before> {
        self.factory.on_before_connect(req, self.lobby(Some(room))).await
    }

    /// Runs `on_before_request` for an HTTP request `req` to room `room`.
    pub async fn before_request(&self, room: &str, req: Request) -> anyhow::Result<Before> {
        self.factory.on_before_request(req, self.lobby(Some(room))).await
    }

    /// Runs `on_fetch` for `req` (a request to no room).
    pub async fn fetch(&self, req: Request) -> Option<Response> {
        self.factory.on_fetch(req, self.lobby(None)).await
    }
}

/// The frames for socket `sid` in `msg`, if any.
pub fn frame_for(msg: &FromRoom, sid: SocketId) -> Option<&Message> {
    match msg {
        FromRoom::Send { sid: s, msg } if *s == sid => Some(msg),
        FromRoom::Broadcast { msg, except } if !except.contains(&sid) => Some(msg),
        _ => None,
    }
}

/// One gateway link into a room: it sends socket events and reads what the room answers, one
/// `FromRoom` message at a time.
pub struct Link {
    link: LinkSender,
    rx: mpsc::Receiver<FromRoom>,
}

/// What the room answered to a connect: everything up to the verdict.
#[derive(Debug)]
pub struct Connected {
    /// Messages before the verdict (`Joined`, frames sent in `on_connect`, `State`).
    pub before: Vec<FromRoom>,
    /// `Accepted`, `Refused` or `Failed`.
    pub verdict: FromRoom,
}

impl Connected {
    /// The tags, or a panic when the connection was not accepted.
    pub fn tags(&self) -> &[String] {
        match &self.verdict {
            FromRoom::Accepted { tags, .. } => tags,
            other => panic!("connection not accepted: {other:?}"),
        }
    }

    /// The frames sent to `sid` while it connected.
    pub fn frames(&self, sid: SocketId) -> Vec<Message> {
        self.before.iter().filter_map(|m| frame_for(m, sid)).cloned().collect()
    }
}

impl Link {
    /// Opens a link into `room`.
    pub async fn open(room: &RoomHandle) -> Link {
        let (tx, rx) = mpsc::channel(1024);
        let link = room.open_link(tx).await.expect("the room is running");
        Link { link, rx }
    }

    /// The next message from the room; panics after [`WAIT`] or when the link closed.
    pub async fn next(&mut self) -> FromRoom {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("the room closed the link"),
            Err(_) => panic!("no message from the room within {WAIT:?}"),
        }
    }

    /// The next message if one arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<FromRoom> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// Sends `msg` to the room as this link.
    pub async fn send_raw(&self, msg: ToRoom) {
        self.link.send(msg).await.expect("the room is running");
    }

    /// Connects socket `sid` with connection id `id`, `request` being the upgrade request as
    /// the static hook left it; returns what the room answered up to its verdict.
    pub async fn connect_with(&mut self, sid: SocketId, id: &str, request: Request) -> Connected {
        let uri = format!("http://localhost{}", request.uri());
        self.send_raw(ToRoom::Connect { sid, id: id.to_string(), uri, request: Box::new(request) }).await;
        self.verdict(sid).await
    }

    /// What the room answers to a connect of socket `sid` already sent (with
    /// [`Link::send_raw`]), up to its verdict.
    pub async fn verdict(&mut self, sid: SocketId) -> Connected {
        let mut before = Vec::new();
        loop {
            let msg = self.next().await;
            match msg {
                FromRoom::Accepted { sid: s, .. }
                | FromRoom::Refused { sid: s, .. }
                | FromRoom::Failed { sid: s, .. }
                    if s == sid =>
                {
                    return Connected { before, verdict: msg };
                }
                other => before.push(other),
            }
        }
    }

    /// Connects socket `sid` with connection id `id` to `path_and_query` (e.g.
    /// `/parties/main/r?_pk=a`).
    pub async fn connect(&mut self, sid: SocketId, id: &str, path_and_query: &str) -> Connected {
        self.connect_with(sid, id, request("GET", path_and_query, Bytes::new())).await
    }

    /// Sends a frame from socket `sid`.
    pub async fn send(&self, sid: SocketId, msg: impl Into<Message>) {
        self.send_raw(ToRoom::Message { sid, msg: msg.into() }).await;
    }

    /// Tells the room socket `sid` closed.
    pub async fn close(&self, sid: SocketId) {
        self.send_raw(ToRoom::Closed { sid, error: None }).await;
    }

    /// The next frame for socket `sid`, skipping `State` messages; panics on anything else.
    pub async fn frame(&mut self, sid: SocketId) -> Message {
        loop {
            let msg = self.next().await;
            if let FromRoom::State { .. } = msg {
                continue;
            }
            return frame_for(&msg, sid).cloned().unwrap_or_else(|| panic!("expected a frame for {sid}, got {msg:?}"));
        }
    }

    /// The next message, which must be a `State` update for `sid`: its JSON.
    pub async fn state(&mut self, sid: SocketId) -> serde_json::Value {
        match self.next().await {
            FromRoom::State { sid: s, state: Some(bytes) } if s == sid => {
                serde_json::from_slice(&bytes).expect("state is JSON")
            }
            other => panic!("expected a state update for {sid}, got {other:?}"),
        }
    }

    /// Everything until the room drops the link (panics after [`WAIT`]).
    pub async fn rest(&mut self) -> Vec<FromRoom> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(msg)) => out.push(msg),
                Ok(None) => return out,
                Err(_) => panic!("the room did not drop the link within {WAIT:?}; got {out:?}"),
            }
        }
    }

    /// Closes the link (the room runs `on_close` for each of its sockets).
    pub async fn close_link(&self) {
        self.link.close().await;
    }

    /// The link's sender and receiver, to drop or hold them apart.
    pub fn into_parts(self) -> (LinkSender, mpsc::Receiver<FromRoom>) {
        (self.link, self.rx)
    }
}
