//! Test helpers: Yjs rooms in the SDK's room runtime without sockets, and a yrs client that
//! speaks the protocol to them through a gateway link.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use partyline::prelude::*;
use partyline::runtime::handle::{LinkSender, RoomExit, RoomHandle};
use partyline::runtime::link::{FromRoom, ToRoom};
use partyline::testing::TestRoom;
use partyline::{Limits, MemoryStore, RoomKey};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use crate::protocol::{self, Frame};
use crate::room::{YjsOptions, YjsRoom};

/// How long a test waits for one answer.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

static OPTIONS: Mutex<Option<HashMap<String, YjsOptions>>> = Mutex::new(None);

/// Sets the options the test party uses for room `room`.
pub(crate) fn set_options(room: &str, options: YjsOptions) {
    OPTIONS.lock().unwrap().get_or_insert_with(HashMap::new).insert(room.to_string(), options);
}

/// A party that hands connections to a [`YjsRoom`] with the options set for its room id; a
/// connection with `?yjs=0` stays out of the Yjs room (a party's other connections), one with
/// `?fail=1` fails in `on_connect` after it was handed over.
pub(crate) struct TestParty {
    yjs: YjsRoom,
}

fn wants_yjs(conn: &Connection) -> bool {
    !conn.uri().contains("yjs=0")
}

impl Party for TestParty {
    fn new(room: Room) -> Self {
        let options = OPTIONS.lock().unwrap().as_ref().and_then(|m| m.get(room.id()).cloned()).unwrap_or_default();
        TestParty { yjs: YjsRoom::new(room, options) }
    }
    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        if wants_yjs(conn) {
            self.yjs.on_connect(conn, ctx).await?;
        }
        if conn.uri().contains("fail=1") {
            anyhow::bail!("refused after the handover");
        }
        Ok(())
    }
    async fn on_message(&mut self, msg: Message, conn: &Connection) -> anyhow::Result<()> {
        self.yjs.on_message(msg, conn).await
    }
    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.yjs.on_close(conn).await
    }
    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        // POST appends the body to the text from the server side.
        let body = String::from_utf8(req.body().to_vec())?;
        self.yjs
            .transact(|txn| {
                let text = txn.get_or_insert_text("t");
                let len = text.len(txn);
                text.insert(txn, len, &body);
            })
            .await?;
        Ok(web::text(StatusCode::OK, "ok"))
    }
}

fn registry() -> PartyRegistry {
    PartyRegistry::new().with::<crate::YjsParty>("yjs").with::<TestParty>("test")
}

/// Starts room `room` of `party` (`yjs` or `test`) on `store`.
pub(crate) fn spawn(
    party: &str,
    room: &str,
    store: &Arc<MemoryStore>,
    limits: Limits,
) -> (RoomHandle, JoinHandle<RoomExit>) {
    let factory = registry().get(party).expect("a test party").clone();
    let mut room = TestRoom::with_factory(party, room, factory).store(store.clone()).limits(limits).start();
    (room.handle().clone(), room.take_task())
}

/// Stops a room and waits for it.
pub(crate) async fn stop(room: RoomHandle, task: JoinHandle<RoomExit>) {
    room.shutdown(1012, "restart").await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), RoomExit::Shutdown);
}

pub(crate) use partyline::testing::request;

/// One client: its own gateway link with one socket, and its own document.
pub(crate) struct Client {
    link: LinkSender,
    rx: mpsc::Receiver<FromRoom>,
    /// The client's replica.
    pub(crate) doc: Doc,
    /// How the room answered the connect.
    pub(crate) verdict: FromRoom,
    /// Messages that arrived before the verdict, not yet read.
    early: VecDeque<FromRoom>,
}

const SID: u64 = 1;

/// What a client received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Got {
    Frame(Message),
    Close(u16, String),
}

impl Client {
    /// Connects with id `id` to `path` (query included); frames sent during the connect stay
    /// queued for [`Client::next`].
    pub(crate) async fn connect(room: &RoomHandle, id: &str, path: &str) -> Client {
        let (tx, rx) = mpsc::channel(1024);
        let link = room.open_link(tx).await.expect("the room is running");
        let req = request("GET", path, Bytes::new());
        let uri = format!("http://localhost{path}");
        link.send(ToRoom::Connect { sid: SID, id: id.into(), uri, request: Box::new(req) }).await.unwrap();
        let mut client =
            Client { link, rx, doc: Doc::new(), verdict: FromRoom::Joined { sid: SID }, early: VecDeque::new() };
        let mut early = VecDeque::new();
        loop {
            let msg = client.raw().await;
            match msg {
                FromRoom::Accepted { .. } | FromRoom::Failed { .. } | FromRoom::Refused { .. } => {
                    client.verdict = msg;
                    break;
                }
                FromRoom::Joined { .. } | FromRoom::State { .. } => {}
                other => early.push_back(other),
            }
        }
        client.early = early;
        client
    }

    async fn raw(&mut self) -> FromRoom {
        if let Some(m) = self.early.pop_front() {
            return m;
        }
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("the room closed the link"),
            Err(_) => panic!("nothing from the room within {WAIT:?}"),
        }
    }

    /// The next frame or close for this client.
    pub(crate) async fn next(&mut self) -> Got {
        loop {
            match self.raw().await {
                FromRoom::Send { msg, .. } => return Got::Frame(msg),
                FromRoom::Broadcast { msg, except } if !except.contains(&SID) => return Got::Frame(msg),
                FromRoom::Close { code, reason, .. } => return Got::Close(code, reason),
                FromRoom::Gone { code, reason } => return Got::Close(code, reason),
                _ => continue,
            }
        }
    }

    /// The next frame, which must be binary.
    pub(crate) async fn frame(&mut self) -> Vec<u8> {
        match self.next().await {
            Got::Frame(Message::Binary(b)) => b.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Whether anything arrives within `wait`.
    pub(crate) async fn quiet_for(&mut self, wait: Duration) -> bool {
        if !self.early.is_empty() {
            return false;
        }
        loop {
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Err(_) => return true,
                Ok(None) => return true,
                Ok(Some(FromRoom::Broadcast { except, .. })) if except.contains(&SID) => continue,
                Ok(Some(FromRoom::State { .. })) => continue,
                Ok(Some(_)) => return false,
            }
        }
    }

    /// Sends a frame.
    pub(crate) async fn send(&self, msg: impl Into<Message>) {
        self.link.send(ToRoom::Message { sid: SID, msg: msg.into() }).await.unwrap();
    }

    /// Closes the socket cleanly (`error: None`) or as dropped (`Some`).
    pub(crate) async fn close(&self, error: Option<&str>) {
        self.link.send(ToRoom::Closed { sid: SID, error: error.map(String::from) }).await.unwrap();
    }

    /// Does what the provider does on open: takes the server's SyncStep1 (answering it with
    /// SyncStep2), sends its own SyncStep1 and applies the SyncStep2 it gets back.
    pub(crate) async fn sync(&mut self) {
        let first = self.frame().await;
        let Ok(Frame::SyncStep1(sv)) = protocol::decode(&first) else { panic!("expected SyncStep1, got {first:?}") };
        let sv = StateVector::decode_v1(sv).unwrap();
        let answer = self.doc.transact().encode_state_as_update_v1(&sv);
        self.send(protocol::sync_step2(&answer)).await;
        let mine = self.doc.transact().state_vector().encode_v1();
        self.send(protocol::sync_step1(&mine)).await;
        loop {
            let f = self.frame().await;
            match protocol::decode(&f).unwrap() {
                Frame::SyncStep2(u) => {
                    self.apply(u);
                    return;
                }
                Frame::Update(u) => self.apply(u),
                Frame::Awareness(_) => {}
                other => panic!("unexpected {other:?} during sync"),
            }
        }
    }

    /// Applies an update to the replica.
    pub(crate) fn apply(&self, update: &[u8]) {
        self.doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
    }

    /// Inserts `s` at the end of the text `t` and returns the update to send.
    pub(crate) fn edit(&self, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, s);
        }
        self.doc.transact().encode_state_as_update_v1(&before)
    }

    /// The text `t` of the replica.
    pub(crate) fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }

    /// Receives frames until an update arrives; applies it and returns the frame.
    pub(crate) async fn recv_update(&mut self) -> Vec<u8> {
        loop {
            let f = self.frame().await;
            if let Ok(Frame::Update(u)) = protocol::decode(&f) {
                self.apply(u);
                return f;
            }
        }
    }

    /// Receives frames until an awareness message arrives; returns its entries as
    /// `(client, clock, state)`.
    pub(crate) async fn recv_awareness(&mut self) -> Vec<(u64, u64, Option<String>)> {
        loop {
            let f = self.frame().await;
            if let Ok(Frame::Awareness(p)) = protocol::decode(&f) {
                let entries = crate::awareness::decode(p).unwrap();
                return entries.into_iter().map(|e| (e.client, e.clock, e.state.map(String::from))).collect();
            }
        }
    }
}

/// An awareness message with one entry.
pub(crate) fn awareness(client: u64, clock: u64, state: &str) -> Vec<u8> {
    let entry = crate::awareness::Entry { client, clock, state: (state != "null").then_some(state) };
    protocol::awareness(&crate::awareness::encode(std::iter::once(entry)))
}

/// Keys stored for room `room` of `party`.
pub(crate) async fn stored_keys(store: &MemoryStore, party: &str, room: &str) -> Vec<String> {
    let all =
        partyline::Store::list(store, &RoomKey::new(party, room), &partyline::ListOptions::default()).await.unwrap();
    all.into_iter().map(|(k, _)| k).collect()
}

/// Waits until `cond` holds, polling; panics after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
