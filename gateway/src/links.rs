//! A gateway's links into rooms, and the table of them: one link per room this gateway has
//! sockets in ([`LinkState`]), holding those sockets ([`SocketEntry`]). A link carries the
//! events of all its sockets to the room in order, its reader fans the room's messages out to
//! them (a broadcast arrives once per gateway), and it follows the room when the room moves.
//! Sockets attach to their room's link here and detach from it, and the last one out closes it.
//!
//! Two locks: the table of links (`Inner::links`) and each link's sockets. Code that takes both
//! takes the links first, then the sockets; every path that takes either lives in this file.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use partyline::client_text;
use partyline::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use partyline::sync::Lock;
use partyline::RoomKey;
use tokio::sync::{oneshot, RwLock};

use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::router::{RoomLink, RouteError};
use crate::send_queue::{ws_message, SendQueue, WsMessage};
use crate::{ConnRecord, Inner};

/// What a room decided about a connection attempt.
#[derive(Debug)]
pub(crate) enum Admission {
    Accepted,
    Refused { status: u16, reason: String },
    Failed { reason: String },
}

/// A socket as its gateway keeps it: the send queue and the connection record, which is what a
/// new room instance needs to take the socket over (id, uri, tags, state).
pub(crate) struct SocketEntry {
    pub(crate) queue: SendQueue,
    /// In the room's connection table: broadcasts reach it.
    pub(crate) joined: bool,
    pub(crate) admission: Option<oneshot::Sender<Admission>>,
    pub(crate) id: String,
    pub(crate) uri: String,
    pub(crate) tags: Vec<String>,
    pub(crate) state: Option<Bytes>,
    /// What the liveness sweep knows of the client (see `liveness`).
    pub(crate) live: Liveness,
}

/// A socket registered with its room's link, before its upgrade completes.
pub(crate) struct Attached {
    pub(crate) link: Arc<LinkState>,
    pub(crate) queue: SendQueue,
    pub(crate) admission: oneshot::Receiver<Admission>,
}

impl Inner {
    /// Registers a new socket with the link of its room, creating the link if needed; `None`
    /// when the gateway holds as many sockets as it may (checked and counted in one step).
    pub(crate) fn attach(self: &Arc<Self>, key: &RoomKey, sid: SocketId, id: String, uri: String) -> Option<Attached> {
        let max = self.max_connections;
        self.open_sockets.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        let queue = SendQueue::new(self.limits.max_outbox_messages, self.limits.max_outbox_bytes);
        let (adm_tx, adm_rx) = oneshot::channel();
        let mut links = self.links.locked();
        let link =
            links.entry(key.clone()).or_insert_with(|| LinkState::new(key.clone(), Arc::downgrade(self))).clone();
        link.sockets.locked().insert(
            sid,
            SocketEntry {
                queue: queue.clone(),
                joined: false,
                admission: Some(adm_tx),
                id,
                uri,
                tags: Vec::new(),
                state: None,
                live: Liveness::new(),
            },
        );
        Some(Attached { link, queue, admission: adm_rx })
    }

    /// Takes a socket out of its room: the room hears it closed (with `error` when it failed),
    /// and the link closes when it was the last socket.
    pub(crate) async fn detach(&self, link: &Arc<LinkState>, sid: SocketId, error: Option<String>) {
        let last = {
            let mut links = self.links.locked();
            let mut sockets = link.sockets.locked();
            if sockets.remove(&sid).is_none() {
                return;
            }
            self.open_sockets.fetch_sub(1, Ordering::AcqRel);
            let last = sockets.is_empty();
            if last && links.get(&link.key).is_some_and(|l| Arc::ptr_eq(l, link)) {
                links.remove(&link.key);
            }
            last
        };
        link.send_if_open(ToRoom::Closed { sid, error }).await;
        if last {
            link.close().await;
        }
    }

    /// Queues a close frame for a socket.
    pub(crate) fn send_close(&self, link: &LinkState, sid: SocketId, code: u16, reason: String) {
        if let Some(s) = link.sockets.locked().get(&sid) {
            s.queue.close(code, reason);
        }
    }

    /// Calls `f` on every socket of every link (for the liveness sweep): the links' table is
    /// held only to list the links, then each link's sockets one link at a time.
    pub(crate) fn each_socket(&self, mut f: impl FnMut(&mut SocketEntry)) {
        let links: Vec<Arc<LinkState>> = self.links.locked().values().cloned().collect();
        for link in links {
            for s in link.sockets.locked().values_mut() {
                f(s);
            }
        }
    }

    /// Rooms this gateway has a link into.
    pub(crate) fn link_count(&self) -> usize {
        self.links.locked().len()
    }

    /// The connection records of a room's joined sockets, in no particular order.
    pub(crate) fn records(&self, key: &RoomKey) -> Vec<ConnRecord> {
        let Some(link) = self.links.locked().get(key).cloned() else { return Vec::new() };
        let sockets = link.sockets.locked();
        sockets
            .values()
            .filter(|s| s.joined)
            .map(|s| ConnRecord { id: s.id.clone(), tags: s.tags.clone(), state: s.state.clone() })
            .collect()
    }

    /// Queues a close frame for every socket.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        let links: Vec<Arc<LinkState>> = self.links.locked().values().cloned().collect();
        for link in links {
            for s in link.sockets.locked().values() {
                s.queue.close(code, reason.to_string());
            }
        }
        for s in self.lone_sockets.locked().values() {
            s.queue.close(code, reason.to_string());
        }
    }
}

/// How long a paused link waits for its room to say it moved before giving up on it.
const MOVE_WAIT: Duration = Duration::from_secs(60);

/// One link into one room.
pub(crate) struct LinkState {
    key: RoomKey,
    /// The link's sending half (`None` until first use), replaced when the room moves. Senders
    /// hold the read lock while they send; a move holds the write lock from the pause until the
    /// room is reachable again, so it waits for sends in flight and holds every later one back,
    /// in order.
    sender: RwLock<Option<Box<dyn RoomLink>>>,
    sockets: Mutex<HashMap<SocketId, SocketEntry>>,
    gw: Weak<Inner>,
}

impl LinkState {
    /// A link state; the link opens on first use.
    fn new(key: RoomKey, gw: Weak<Inner>) -> Arc<Self> {
        Arc::new(LinkState { key, sender: RwLock::new(None), sockets: Mutex::new(HashMap::new()), gw })
    }

    /// Passes one socket event to the room, opening the link on first use; waits while the
    /// room moves.
    pub(crate) async fn send(self: &Arc<Self>, msg: ToRoom) -> Result<(), RouteError> {
        {
            let sender = self.sender.read().await;
            if let Some(sender) = sender.as_ref() {
                return sender.send(msg).await;
            }
        }
        let mut sender = self.sender.write().await;
        if sender.is_none() {
            *sender = Some(self.open().await?);
        }
        sender.as_ref().expect("opened").send(msg).await
    }

    /// Passes one socket event to the room if that needs no waiting: the link is open, not
    /// being opened or moved, and its queue has space. Gives the event back otherwise, for
    /// [`send`](Self::send).
    pub(crate) fn try_send(&self, msg: ToRoom) -> Result<Result<(), RouteError>, ToRoom> {
        let Ok(sender) = self.sender.try_read() else { return Err(msg) };
        match sender.as_ref() {
            Some(sender) => sender.try_send(msg),
            None => Err(msg),
        }
    }

    /// Passes one socket event to the room if the link was ever opened.
    async fn send_if_open(&self, msg: ToRoom) {
        if let Some(sender) = self.sender.read().await.as_ref() {
            let _ = sender.send(msg).await;
        }
    }

    /// Opens a link to the room's owner and starts the task that applies its messages.
    async fn open(self: &Arc<Self>) -> Result<Box<dyn RoomLink>, RouteError> {
        let gw = self.gw.upgrade().ok_or_else(|| RouteError::Unavailable("the gateway is shutting down".into()))?;
        let opened = gw.router.open_link(&self.key).await?;
        Metrics::inc(&gw.metrics.links_opened);
        // Only for a sampled trace: the link's reader runs for every frame the room sends.
        let span = partyline::runtime::observe::frame_span(|| tracing::info_span!("link", room = %self.key));
        tokio::spawn(tracing::Instrument::instrument(
            read_link(Arc::downgrade(self), opened.events, gw.metrics.clone()),
            span,
        ));
        Ok(opened.sender)
    }

    /// Closes the link if it was opened.
    async fn close(&self) {
        if let Some(sender) = self.sender.read().await.as_ref() {
            sender.close().await;
        }
    }

    /// The room is gone: every socket is closed with `code`, and new sockets get a new link.
    fn gone(self: &Arc<Self>, code: u16, reason: &str) {
        {
            let mut sockets = self.sockets.locked();
            for s in sockets.values_mut() {
                s.joined = false;
                if let Some(tx) = s.admission.take() {
                    let _ = tx.send(Admission::Refused { status: 503, reason: client_text::TRY_AGAIN_LATER.into() });
                }
                s.queue.close(code, reason.to_string());
            }
        }
        // The sockets' lock is not held here: the order is always links, then sockets.
        if let Some(gw) = self.gw.upgrade() {
            let mut links = gw.links.locked();
            if links.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, self)) {
                links.remove(&self.key);
            }
        }
    }

    /// The room paused this link to move: answer `Paused`, then, once the room says it moved,
    /// reopen the link to its new owner and hand it this gateway's sockets (id, uri, tags,
    /// state), holding every client event back meanwhile. The clients see a pause.
    /// (Boxed: the task it starts for the new link may start another move.)
    fn move_to_next_owner(self: Arc<Self>, moved: oneshot::Receiver<u32>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut sender = self.sender.write().await;
            let Some(old) = sender.as_ref() else { return };
            if old.send(ToRoom::Paused).await.is_err() {
                return; // The stream broke: its reader closes the sockets.
            }
            let handed_over = match tokio::time::timeout(MOVE_WAIT, moved).await {
                Ok(Ok(handed_over)) => handed_over,
                _ => return, // The link ended without `Moved`: its reader closed the sockets.
            };
            if let Some(old) = sender.take() {
                old.close().await;
            }
            let Some(gw) = self.gw.upgrade() else { return };
            gw.router.moved(&self.key);
            let new = match self.open().await {
                Ok(new) => new,
                Err(e) => {
                    tracing::warn!(room = %self.key, error = %e, "the room moved but its new owner cannot be reached");
                    Metrics::inc(&gw.metrics.moves_failed);
                    drop(sender);
                    self.gone(close_code::SERVICE_RESTART, client_text::ROOM_MOVED);
                    return;
                }
            };
            let records: Vec<ToRoom> = {
                let sockets = self.sockets.locked();
                let mut joined: Vec<(&SocketId, &SocketEntry)> = sockets.iter().filter(|(_, s)| s.joined).collect();
                joined.sort_by_key(|(sid, _)| **sid);
                joined
                    .into_iter()
                    .map(|(sid, s)| ToRoom::Adopt {
                        sid: *sid,
                        id: s.id.clone(),
                        uri: s.uri.clone(),
                        tags: s.tags.clone(),
                        state: s.state.clone(),
                    })
                    .collect()
            };
            for msg in records.into_iter().chain([ToRoom::Adopted { links: handed_over }]) {
                if new.send(msg).await.is_err() {
                    break; // The new link broke: its reader closes the sockets.
                }
            }
            *sender = Some(new);
            Metrics::inc(&gw.metrics.links_moved);
        })
    }
}

/// Most room messages the link's reader takes in one go (those already arrived), so that a
/// run of broadcasts is queued for each client under one lock, with one wake-up.
const LINK_BATCH: usize = 64;

/// Applies a room's messages to this gateway's sockets until the room closes the link (or moves).
async fn read_link(link: Weak<LinkState>, mut events: BoxStream<'static, FromRoom>, metrics: Arc<Metrics>) {
    let mut moving: Option<oneshot::Sender<u32>> = None;
    let mut batch: Vec<FromRoom> = Vec::new();
    let mut run: Vec<(WsMessage, Vec<SocketId>)> = Vec::new();
    let mut ended = false;
    while !ended {
        let Some(first) = events.next().await else { return };
        batch.push(first);
        while batch.len() < LINK_BATCH {
            match events.next().now_or_never() {
                Some(Some(msg)) => batch.push(msg),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let Some(link) = link.upgrade() else { return };
        for msg in batch.drain(..) {
            let msg = match msg {
                FromRoom::Broadcast { msg, except } => {
                    run.push((ws_message(msg), except));
                    continue;
                }
                other => other,
            };
            // Whatever follows a run of broadcasts sees them queued first.
            fan_out(&link, &mut run, &metrics);
            if apply(&link, msg, &mut moving, &metrics) == Reader::Done {
                return;
            }
        }
        fan_out(&link, &mut run, &metrics);
    }
}

/// Queues a run of broadcasts (emptying it) for every joined socket not excluded from each:
/// one lock and one wake-up per socket for the whole run.
fn fan_out(link: &LinkState, run: &mut Vec<(WsMessage, Vec<SocketId>)>, metrics: &Metrics) {
    if run.is_empty() {
        return;
    }
    let mut fanout = vec![0u64; run.len()];
    {
        let sockets = link.sockets.locked();
        for (sid, s) in sockets.iter().filter(|(_, s)| s.joined) {
            let mine = run.iter().zip(fanout.iter_mut()).filter(|((_, except), _)| !except.contains(sid)).map(
                |((msg, _), n)| {
                    *n += 1;
                    msg.clone()
                },
            );
            s.queue.push_many(mine);
        }
    }
    for n in fanout {
        Metrics::inc(&metrics.room_broadcasts);
        metrics.broadcast_fanout.observe(n);
    }
    run.clear();
}

/// Whether the link's reader goes on after a message.
#[derive(PartialEq, Eq)]
enum Reader {
    GoesOn,
    Done,
}

/// Applies one room message other than a broadcast.
fn apply(link: &Arc<LinkState>, msg: FromRoom, moving: &mut Option<oneshot::Sender<u32>>, metrics: &Metrics) -> Reader {
    match msg {
        FromRoom::Pause => {
            let (tx, rx) = oneshot::channel();
            *moving = Some(tx);
            tokio::spawn(link.clone().move_to_next_owner(rx));
            return Reader::GoesOn;
        }
        FromRoom::Moved { links: handed_over } => {
            if let Some(tx) = moving.take() {
                let _ = tx.send(handed_over);
            }
            return Reader::Done;
        }
        FromRoom::Gone { code, reason } => {
            link.gone(code, &reason);
            return Reader::GoesOn;
        }
        _ => {}
    }
    let mut sockets = link.sockets.locked();
    match msg {
        FromRoom::Joined { sid } => {
            if let Some(s) = sockets.get_mut(&sid) {
                s.joined = true;
            }
        }
        FromRoom::Accepted { sid, tags } => {
            if let Some(s) = sockets.get_mut(&sid) {
                s.tags = tags;
                if let Some(tx) = s.admission.take() {
                    let _ = tx.send(Admission::Accepted);
                }
            }
        }
        FromRoom::Refused { sid, status, reason } => admit(&mut sockets, sid, Admission::Refused { status, reason }),
        FromRoom::Failed { sid, reason } => admit(&mut sockets, sid, Admission::Failed { reason }),
        FromRoom::Send { sid, msg } => {
            Metrics::inc(&metrics.room_sends);
            if let Some(s) = sockets.get(&sid) {
                s.queue.push(ws_message(msg));
            }
        }
        FromRoom::Close { sid, code, reason } => {
            if let Some(s) = sockets.get_mut(&sid) {
                s.joined = false;
                s.queue.close(code, reason);
            }
        }
        FromRoom::State { sid, state } => {
            if let Some(s) = sockets.get_mut(&sid) {
                s.state = state;
            }
        }
        FromRoom::Pause | FromRoom::Moved { .. } | FromRoom::Gone { .. } | FromRoom::Broadcast { .. } => {
            unreachable!("handled above")
        }
    }
    Reader::GoesOn
}

fn admit(sockets: &mut HashMap<SocketId, SocketEntry>, sid: SocketId, admission: Admission) {
    if let Some(tx) = sockets.get_mut(&sid).and_then(|s| s.admission.take()) {
        let _ = tx.send(admission);
    }
}
