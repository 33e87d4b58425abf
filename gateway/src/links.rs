//! A gateway's links into rooms: one per room this gateway has sockets in. A link carries the
//! events of all those sockets to the room in order, and its reader fans the room's messages
//! out to the local sockets (a broadcast arrives once per gateway).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use partyline::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use partyline::sync::Lock;
use partyline::{Message, Request, Response, RoomKey};
use tokio::sync::{oneshot, Notify, RwLock};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::Inner;

/// Depth of a link's queue of room messages, for routers that deliver through a channel.
pub const LINK_QUEUE: usize = 1024;

/// Why a room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No party of that name exists.
    #[error("Party {0} not found")]
    UnknownParty(String),
    /// The room's owner could not be reached.
    #[error("room unavailable: {0}")]
    Unavailable(String),
    /// The room or its node is at a limit (its queue stayed full, or the node hosts as many
    /// rooms as it may): 503 or close 1013, try again later.
    #[error("{0}")]
    Busy(String),
}

/// How a gateway reaches rooms: in-process for `dev`, over gRPC in a cluster.
#[async_trait]
pub trait RoomRouter: Send + Sync + 'static {
    /// Opens this gateway's link into a room.
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError>;
    /// Sends an HTTP request to a room.
    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError>;
    /// The room moved away from where its link went (a hint to forget cached placement).
    fn moved(&self, _key: &RoomKey) {}
}

/// An open link: the sending half, and the room's messages in order. The stream ends when the
/// room closes the link; a link that breaks must end with [`FromRoom::Gone`] so its sockets are
/// closed.
pub struct OpenLink {
    /// Socket events go here.
    pub link: Box<dyn RoomLink>,
    /// The room's messages for this gateway's sockets.
    pub events: BoxStream<'static, FromRoom>,
}

/// The sending half of a link.
#[async_trait]
pub trait RoomLink: Send + Sync + 'static {
    /// Passes one socket event to the room.
    async fn send(&self, msg: ToRoom) -> Result<(), RouteError>;
    /// Closes the link: the room runs `on_close` for this gateway's sockets still in it.
    async fn close(&self);
}

/// What a room decided about a connection attempt.
#[derive(Debug)]
pub(crate) enum Admission {
    Accepted,
    Refused { status: u16, reason: String },
    Failed { reason: String },
}

/// Frames queued for one client.
pub(crate) enum Out {
    Msg(Message),
    /// A liveness ping (not counted against the limits).
    Ping,
    Close(u16, String),
}

/// One client's bounded send queue. A client that lets it fill is not reading: it is cut off
/// (`kill`) rather than allowed to grow the gateway's memory. An idle socket's queue holds no
/// allocation (a channel would keep a block of slots per socket).
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<OutQueue>,
}

pub(crate) struct OutQueue {
    queue: Mutex<Queue>,
    ready: Notify,
    pub(crate) kill: CancellationToken,
    max_msgs: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Out>,
    bytes: usize,
    closed: bool,
}

impl Outbox {
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Self {
        let inner = OutQueue {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            kill: CancellationToken::new(),
            max_msgs,
            max_bytes,
        };
        Outbox { inner: Arc::new(inner) }
    }

    /// The token that cuts the client off.
    pub(crate) fn kill(&self) -> &CancellationToken {
        &self.inner.kill
    }

    /// Queues a frame; false (and the client is cut off) when its queue is full.
    pub(crate) fn push(&self, msg: Message) -> bool {
        let len = msg.len();
        {
            let mut q = self.inner.queue.locked();
            if q.closed {
                return false;
            }
            // A lone frame larger than the byte bound (up to the outbound message limit) still
            // goes into an empty queue.
            if q.items.len() >= self.inner.max_msgs || (q.bytes > 0 && q.bytes + len > self.inner.max_bytes) {
                drop(q);
                self.inner.kill.cancel();
                return false;
            }
            q.bytes += len;
            q.items.push_back(Out::Msg(msg));
        }
        self.inner.ready.notify_one();
        true
    }

    /// Queues a close frame (not counted against the limits).
    pub(crate) fn close(&self, code: u16, reason: String) {
        {
            let mut q = self.inner.queue.locked();
            if q.closed {
                return;
            }
            q.items.push_back(Out::Close(code, reason));
        }
        self.inner.ready.notify_one();
    }

    /// Queues a ping (not counted against the limits).
    pub(crate) fn ping(&self) {
        {
            let mut q = self.inner.queue.locked();
            if q.closed {
                return;
            }
            q.items.push_back(Out::Ping);
        }
        self.inner.ready.notify_one();
    }

    /// The next queued frame, if any.
    pub(crate) fn pop(&self) -> Option<Out> {
        let mut q = self.inner.queue.locked();
        let out = q.items.pop_front()?;
        if let Out::Msg(m) = &out {
            q.bytes -= m.len();
        }
        if q.items.is_empty() && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items.shrink_to(8);
        }
        Some(out)
    }

    /// Waits until something may have been queued since the last `pop` returned `None`.
    pub(crate) async fn ready(&self) {
        self.inner.ready.notified().await;
    }

    /// The socket is gone: drop what is queued and refuse more.
    pub(crate) fn shut(&self) {
        let mut q = self.inner.queue.locked();
        q.closed = true;
        q.items = VecDeque::new();
        q.bytes = 0;
    }
}

/// A socket as its gateway keeps it: the send queue and the connection record, which is what a
/// new room instance needs to take the socket over (id, uri, tags, state).
pub(crate) struct SocketEntry {
    pub(crate) outbox: Outbox,
    /// In the room's connection table: broadcasts reach it.
    pub(crate) joined: bool,
    pub(crate) admission: Option<oneshot::Sender<Admission>>,
    pub(crate) id: String,
    pub(crate) uri: String,
    pub(crate) tags: Vec<String>,
    pub(crate) state: Option<Bytes>,
}

/// How long a paused link waits for its room to say it moved before giving up on it.
const MOVE_WAIT: Duration = Duration::from_secs(60);

/// One link into one room.
pub(crate) struct LinkState {
    pub(crate) key: RoomKey,
    /// The open link (`None` until first use), replaced when the room moves. Senders hold the
    /// read lock while they send; a move holds the write lock from the pause until the room is
    /// reachable again, so it waits for sends in flight and holds every later one back, in order.
    route: RwLock<Option<Box<dyn RoomLink>>>,
    pub(crate) sockets: Mutex<HashMap<SocketId, SocketEntry>>,
    gw: Weak<Inner>,
}

impl LinkState {
    /// A link state; the link opens on first use.
    pub(crate) fn new(key: RoomKey, gw: Weak<Inner>) -> Arc<Self> {
        Arc::new(LinkState { key, route: RwLock::new(None), sockets: Mutex::new(HashMap::new()), gw })
    }

    /// Passes one socket event to the room, opening the link on first use; waits while the
    /// room moves.
    pub(crate) async fn send(self: &Arc<Self>, msg: ToRoom) -> Result<(), RouteError> {
        {
            let route = self.route.read().await;
            if let Some(link) = route.as_ref() {
                return link.send(msg).await;
            }
        }
        let mut route = self.route.write().await;
        if route.is_none() {
            *route = Some(self.open().await?);
        }
        route.as_ref().expect("opened").send(msg).await
    }

    /// Passes one socket event to the room if the link was ever opened.
    pub(crate) async fn send_if_open(&self, msg: ToRoom) {
        if let Some(link) = self.route.read().await.as_ref() {
            let _ = link.send(msg).await;
        }
    }

    /// Opens a link to the room's owner and starts the task that applies its messages.
    async fn open(self: &Arc<Self>) -> Result<Box<dyn RoomLink>, RouteError> {
        let gw = self.gw.upgrade().ok_or_else(|| RouteError::Unavailable("the gateway is shutting down".into()))?;
        let opened = gw.router.open_link(&self.key).await?;
        Metrics::inc(&gw.metrics.links_opened);
        let span = tracing::info_span!("link", room = %self.key);
        tokio::spawn(tracing::Instrument::instrument(
            read_link(Arc::downgrade(self), opened.events, gw.metrics.clone()),
            span,
        ));
        Ok(opened.link)
    }

    /// Closes the link if it was opened.
    pub(crate) async fn close(&self) {
        if let Some(link) = self.route.read().await.as_ref() {
            link.close().await;
        }
    }

    /// The room is gone: every socket is closed with `code`, and new sockets get a new link.
    fn gone(self: &Arc<Self>, code: u16, reason: &str) {
        {
            let mut sockets = self.sockets.locked();
            for s in sockets.values_mut() {
                s.joined = false;
                if let Some(tx) = s.admission.take() {
                    let _ = tx.send(Admission::Refused { status: 503, reason: reason.to_string() });
                }
                s.outbox.close(code, reason.to_string());
            }
        }
        // The socket table's lock is not held here: the order is always links, then sockets.
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
            let mut route = self.route.write().await;
            let Some(old) = route.as_ref() else { return };
            if old.send(ToRoom::Paused).await.is_err() {
                return; // The stream broke: its reader closes the sockets.
            }
            let links = match tokio::time::timeout(MOVE_WAIT, moved).await {
                Ok(Ok(links)) => links,
                _ => return, // The link ended without `Moved`: its reader closed the sockets.
            };
            if let Some(old) = route.take() {
                old.close().await;
            }
            let Some(gw) = self.gw.upgrade() else { return };
            gw.router.moved(&self.key);
            let new = match self.open().await {
                Ok(new) => new,
                Err(e) => {
                    tracing::warn!(room = %self.key, error = %e, "the room moved but its new owner cannot be reached");
                    Metrics::inc(&gw.metrics.moves_failed);
                    drop(route);
                    self.gone(close_code::SERVICE_RESTART, "room moved");
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
            for msg in records.into_iter().chain([ToRoom::Adopted { links }]) {
                if new.send(msg).await.is_err() {
                    break; // The new link broke: its reader closes the sockets.
                }
            }
            *route = Some(new);
            Metrics::inc(&gw.metrics.links_moved);
        })
    }
}

/// Applies a room's messages to this gateway's sockets until the room closes the link (or moves).
async fn read_link(state: Weak<LinkState>, mut events: BoxStream<'static, FromRoom>, metrics: Arc<Metrics>) {
    let mut moving: Option<oneshot::Sender<u32>> = None;
    while let Some(msg) = events.next().await {
        let Some(state) = state.upgrade() else { return };
        match msg {
            FromRoom::Pause => {
                let (tx, rx) = oneshot::channel();
                moving = Some(tx);
                tokio::spawn(state.move_to_next_owner(rx));
                continue;
            }
            FromRoom::Moved { links } => {
                if let Some(tx) = moving.take() {
                    let _ = tx.send(links);
                }
                return;
            }
            FromRoom::Gone { code, reason } => {
                state.gone(code, &reason);
                continue;
            }
            _ => {}
        }
        let mut sockets = state.sockets.locked();
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
            FromRoom::Refused { sid, status, reason } => {
                admit(&mut sockets, sid, Admission::Refused { status, reason })
            }
            FromRoom::Failed { sid, reason } => admit(&mut sockets, sid, Admission::Failed { reason }),
            FromRoom::Send { sid, msg } => {
                Metrics::inc(&metrics.room_sends);
                if let Some(s) = sockets.get(&sid) {
                    s.outbox.push(msg);
                }
            }
            FromRoom::Broadcast { msg, except } => {
                Metrics::inc(&metrics.room_broadcasts);
                let mut fanout = 0;
                for (sid, s) in sockets.iter() {
                    if s.joined && !except.contains(sid) {
                        s.outbox.push(msg.clone());
                        fanout += 1;
                    }
                }
                metrics.broadcast_fanout.observe(fanout as f64);
            }
            FromRoom::Close { sid, code, reason } => {
                if let Some(s) = sockets.get_mut(&sid) {
                    s.joined = false;
                    s.outbox.close(code, reason);
                }
            }
            FromRoom::State { sid, state } => {
                if let Some(s) = sockets.get_mut(&sid) {
                    s.state = state;
                }
            }
            FromRoom::Pause | FromRoom::Moved { .. } | FromRoom::Gone { .. } => unreachable!("handled above"),
        }
    }
}

fn admit(sockets: &mut HashMap<SocketId, SocketEntry>, sid: SocketId, admission: Admission) {
    if let Some(tx) = sockets.get_mut(&sid).and_then(|s| s.admission.take()) {
        let _ = tx.send(admission);
    }
}
