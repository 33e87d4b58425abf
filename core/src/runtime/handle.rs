//! What a room's callers hold: the [`RoomHandle`] and a gateway's [`LinkSender`], the commands
//! they queue for the room task, what a room needs to start ([`RoomConfig`]), the errors its
//! callers see, and how the task ended ([`RoomExit`]). The task itself is in [`super::actor`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::limits::Limits;
use crate::party::PartyFactory;
use crate::room::{Env, LinkId, Parties, RoomShared};
use crate::runtime::link::{FromRoom, ToRoom};
use crate::runtime::observe::RoomObserver;
use crate::store::{Fence, RoomKey, Store};
use crate::sync::Lock;
use crate::web::{Request, Response};
/// Called once with how a room task ended; see [`RoomConfig::on_exit`].
pub type OnExit = Box<dyn FnOnce(&RoomExit) + Send>;

/// Everything a room needs to run.
pub struct RoomConfig {
    /// Which room.
    pub key: RoomKey,
    /// Its party.
    pub factory: Arc<dyn PartyFactory>,
    /// Where its storage lives.
    pub store: Arc<dyn Store>,
    /// The lease the room's writes are fenced by (`None` in `dev`).
    pub fence: Option<Fence>,
    /// Limits in force.
    pub limits: Arc<Limits>,
    /// Party variables.
    pub env: Env,
    /// Access to other rooms.
    pub parties: Parties,
    /// Asked when the room has been idle with nothing attached; returns true when the room may
    /// stop (the host removed it from its table, so nothing can send to it any more).
    pub may_exit: Box<dyn Fn() -> bool + Send + Sync>,
    /// Told how long events take and when alarms fire (metrics); `None`: nobody listens.
    pub observer: Option<Arc<dyn RoomObserver>>,
    /// Called once with how the room task ended (after it ended).
    pub on_exit: Option<OnExit>,
}

/// What a room task is asked to do, in its queue's order.
// `span` of a request: the caller's, so the handler's span joins the caller's trace.
pub(super) enum RoomCmd {
    OpenLink {
        link: LinkId,
        tx: mpsc::Sender<FromRoom>,
        /// The gateway the link comes from, when the caller knows it (for [`RoomSnapshot`]).
        gateway: Option<Arc<str>>,
    },
    Link {
        link: LinkId,
        msg: ToRoom,
    },
    CloseLink {
        link: LinkId,
    },
    Request {
        req: Request,
        reply: oneshot::Sender<Answer>,
        span: Box<tracing::Span>,
    },
    /// `as_of`: the time (ms since the Unix epoch) to check the alarm against; `None`: now.
    Alarm {
        as_of: Option<i64>,
    },
    /// Answered, through the output gate, once everything before it was handled.
    Flush {
        reply: oneshot::Sender<Answer>,
    },
    Move {
        deadline: Instant,
    },
    /// The host needs room for another room: leave now if nobody is connected.
    Evict,
    /// Run on `factory` from now on (a deployed version replaced the party).
    Upgrade {
        factory: Arc<dyn crate::party::PartyFactory>,
    },
    /// Answer what the room looks like now (an operator's view); read-only, answered as soon
    /// as the room takes it from its queue, even while it gathers its sockets after a move.
    Inspect {
        reply: oneshot::Sender<RoomSnapshot>,
    },
}

impl RoomCmd {
    /// Whether the command may run while a moved room gathers its sockets (the handover itself).
    pub(super) fn is_handover(&self) -> bool {
        matches!(
            self,
            RoomCmd::OpenLink { .. }
                | RoomCmd::CloseLink { .. }
                | RoomCmd::Move { .. }
                | RoomCmd::Inspect { .. }
                | RoomCmd::Link { msg: ToRoom::Adopt { .. } | ToRoom::Adopted { .. }, .. }
        )
    }
}

/// A running room as an operator sees it ([`RoomHandle::inspect`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSnapshot {
    /// The connections in the room, in the order they joined.
    pub connections: Vec<ConnSnapshot>,
    /// Its party hibernates (the room's sockets stay while its party value is dropped).
    pub hibernates: bool,
}

/// One connection of a [`RoomSnapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// The connection id (`?_pk=`, or generated).
    pub id: String,
    /// Its tags, the id first.
    pub tags: Vec<String>,
    /// The gateway its link comes from ([`RoomHandle::open_link_as`]), or the link's number
    /// in the room when the link was opened without a name.
    pub gateway: String,
}

/// A room's answer to a request (or a flush).
#[derive(Debug)]
pub(crate) enum Answer {
    /// It ran: its response, released by the output gate once its writes are durable.
    Done(Response),
    /// The room stopped (shut down, moved, failed) before it started it: it never ran, so it
    /// may be sent again, to the room's next instance.
    NotRun,
}

/// Why a room must stop at once, set by [`RoomHandle::shutdown`]: the close code and reason
/// of its sockets.
pub(super) type Stop = Option<(u16, String)>;

/// The room is not running any more; ask the host for a fresh handle and try again.
#[derive(Debug, thiserror::Error)]
#[error("room {0} is not running")]
pub struct RoomGone(pub RoomKey);

/// Why a room did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The room had stopped.
    #[error(transparent)]
    Gone(#[from] RoomGone),
    /// The room's queue stayed full for the queue timeout (`Limits::room_queue_timeout`): the
    /// room is overloaded (or stuck in a handler). Nothing was delivered.
    #[error("room {0} is overloaded")]
    Overloaded(RoomKey),
}

/// Why an HTTP request to a room got no response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The room had stopped before it took the request, or stopped (shut down, moved, failed)
    /// with the request still queued: it did not run, so it may be sent again (to a fresh
    /// instance).
    #[error(transparent)]
    NotDelivered(#[from] RoomGone),
    /// The room's queue stayed full for the queue timeout: the request did not run. Answer
    /// 503 rather than wait.
    #[error("room {0} is overloaded")]
    Overloaded(RoomKey),
    /// The room started the request and stopped before answering (its storage failed): the
    /// request may have run, so it must not be sent again.
    #[error("room {0} stopped before it answered the request")]
    Interrupted(RoomKey),
}

/// A handle on a running room. Cheap to clone; the room may stop only when no handle but its
/// host's is left.
#[derive(Clone)]
pub struct RoomHandle {
    key: RoomKey,
    tx: mpsc::Sender<RoomCmd>,
    /// Shutdowns go here rather than through the queue: a room told to stop stops after the
    /// handler it is running, not after everything queued behind it.
    stop: Arc<watch::Sender<Stop>>,
    next_link: Arc<AtomicU64>,
    hibernate: bool,
    /// How long client work waits for space in the queue before it is refused.
    queue_wait: Duration,
    /// The room's shared state, read (never kept alive) for [`RoomHandle::connection_count`].
    shared: Weak<RoomShared>,
}

impl RoomHandle {
    /// The handle on a room task that reads its commands from `tx`'s receiver.
    pub(super) fn new(
        key: RoomKey,
        tx: mpsc::Sender<RoomCmd>,
        stop: Arc<watch::Sender<Stop>>,
        hibernate: bool,
        queue_wait: Duration,
        shared: Weak<RoomShared>,
    ) -> Self {
        RoomHandle { key, tx, stop, next_link: Arc::new(AtomicU64::new(1)), hibernate, queue_wait, shared }
    }

    /// The room's key.
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Whether the party hibernates.
    pub fn hibernates(&self) -> bool {
        self.hibernate
    }

    /// How many client connections are in the room now (every link's): read from the room's
    /// connection table under its lock, without going through its queue; 0 once it stopped.
    pub fn connection_count(&self) -> usize {
        self.shared.upgrade().map_or(0, |s| s.conns.locked().by_key.len())
    }

    /// What the room looks like now: its connections (id, tags, the gateway each came
    /// through) and whether it hibernates. Answered by the room task when it takes the command
    /// from its queue, so it waits behind the commands queued before it (and the handler
    /// running): bound the wait with a timeout. Runs no party code, and does not count as
    /// activity (it keeps no room from hibernating or stopping).
    pub async fn inspect(&self) -> Result<RoomSnapshot, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.send(RoomCmd::Inspect { reply }).await?;
        rx.await.map_err(|_| RoomGone(self.key.clone()))
    }

    /// True when no handle but this one exists and the room has no queued work: the host may
    /// drop it.
    pub fn is_unused(&self) -> bool {
        self.tx.strong_count() == 1 && self.tx.capacity() == self.tx.max_capacity()
    }

    /// Whether the room task has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the room task has stopped (after a move: its writes durable).
    pub async fn stopped(&self) {
        self.tx.closed().await
    }

    /// A handle that does not keep the room alive, to recognise this instance later.
    pub fn downgrade(&self) -> WeakRoomHandle {
        WeakRoomHandle { tx: self.tx.downgrade() }
    }

    /// Opens a gateway link: the room's messages for that gateway's sockets go to `tx`.
    pub async fn open_link(&self, tx: mpsc::Sender<FromRoom>) -> Result<LinkSender, SendError> {
        self.open_link_from(tx, None).await
    }

    /// Like [`RoomHandle::open_link`], for the link of the gateway named `gateway` (what
    /// [`RoomHandle::inspect`] reports for its connections).
    pub async fn open_link_as(&self, tx: mpsc::Sender<FromRoom>, gateway: &str) -> Result<LinkSender, SendError> {
        self.open_link_from(tx, Some(Arc::from(gateway))).await
    }

    async fn open_link_from(
        &self,
        tx: mpsc::Sender<FromRoom>,
        gateway: Option<Arc<str>>,
    ) -> Result<LinkSender, SendError> {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        self.send_bounded(RoomCmd::OpenLink { link, tx, gateway }).await?;
        Ok(LinkSender { room: self.clone(), link, closed: AtomicBool::new(false) })
    }

    /// Sends an HTTP request to the room's `on_request`.
    pub async fn request(&self, req: Request) -> Result<Response, RequestError> {
        let (reply, rx) = oneshot::channel();
        let span = Box::new(tracing::Span::current());
        match self.send_bounded(RoomCmd::Request { req, reply, span }).await {
            Ok(()) => {}
            Err(SendError::Gone(gone)) => return Err(gone.into()),
            Err(SendError::Overloaded(key)) => return Err(RequestError::Overloaded(key)),
        }
        match rx.await {
            Ok(Answer::Done(res)) => Ok(res),
            Ok(Answer::NotRun) => Err(RoomGone(self.key.clone()).into()),
            Err(_) => Err(RequestError::Interrupted(self.key.clone())),
        }
    }

    /// Tells the room its alarm may be due.
    pub async fn alarm(&self) -> Result<(), RoomGone> {
        self.send(RoomCmd::Alarm { as_of: None }).await
    }

    /// Runs the room's alarm if it is due at `as_of_ms` (ms since the Unix epoch) rather than
    /// now: how a test moves a room's clock forward to its alarm (see `partyline::testing`).
    pub async fn alarm_as_of(&self, as_of_ms: i64) -> Result<(), RoomGone> {
        self.send(RoomCmd::Alarm { as_of: Some(as_of_ms) }).await
    }

    /// Waits until the room has handled every command sent before this one and the writes they
    /// made are durable (the answer passes the output gate). Runs no party code.
    pub async fn flush(&self) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.send(RoomCmd::Flush { reply }).await?;
        match rx.await {
            Ok(Answer::Done(_)) => Ok(()),
            Ok(Answer::NotRun) => Err(RoomGone(self.key.clone()).into()),
            Err(_) => Err(RequestError::Interrupted(self.key.clone())),
        }
    }

    /// Asks the room to run on `factory` (the party's new version) from now on, after what is
    /// queued before. A room whose old and new party both hibernate and that is not busy drops
    /// its instance, as when it hibernates: its sockets stay, and the next event starts the new
    /// code (constructor and `onStart`). Any other room with sockets stops with 1012
    /// ([`client_text::ROOM_RESTARTED_FOR_DEPLOY`](crate::client_text::ROOM_RESTARTED_FOR_DEPLOY)):
    /// clients reconnect to a new instance. Waits until the room has its command queued; false
    /// when the room is gone.
    pub async fn upgrade(&self, factory: Arc<dyn crate::party::PartyFactory>) -> bool {
        self.tx.send(RoomCmd::Upgrade { factory }).await.is_ok()
    }

    /// Asks the room to leave now if nobody is connected and nothing else holds it (the host is
    /// at its room limit); never waits. False when the request could not be queued.
    pub fn evict(&self) -> bool {
        self.tx.try_send(RoomCmd::Evict).is_ok()
    }

    /// Stops the room: every socket is closed with `code` and `reason`. The room stops once
    /// the handler it is running returns, without starting anything queued behind it (a room
    /// shut down is stale, or its shard is gone: its queued work must not run there). Queued
    /// requests are answered [`RequestError::NotDelivered`], so their callers send them to the
    /// room's next instance; queued socket events go with the sockets, which are closed. The
    /// first shutdown's code and reason win. Never waits for the queue.
    pub async fn shutdown(&self, code: u16, reason: &str) -> Result<(), RoomGone> {
        if self.tx.is_closed() {
            return Err(RoomGone(self.key.clone()));
        }
        self.stop.send_if_modified(|stop| match stop {
            Some(_) => false,
            None => {
                *stop = Some((code, reason.to_string()));
                true
            }
        });
        Ok(())
    }

    /// Moves the room away from this process: it finishes what it was given, makes its writes
    /// durable, and stops. A hibernating party's links are paused first and then told the room
    /// moved ([`FromRoom::Moved`]), so their gateways hand the same sockets to the next owner;
    /// other parties' sockets are closed with 1012. Whatever is unfinished at `deadline` is cut
    /// short (links that did not pause are closed with 1012).
    pub async fn move_out(&self, deadline: Instant) -> Result<(), RoomGone> {
        self.send(RoomCmd::Move { deadline }).await
    }

    async fn send(&self, cmd: RoomCmd) -> Result<(), RoomGone> {
        self.tx.send(cmd).await.map_err(|_| RoomGone(self.key.clone()))
    }

    /// Sends client work: waits for space in the queue at most the queue timeout.
    async fn send_bounded(&self, cmd: RoomCmd) -> Result<(), SendError> {
        match self.tx.send_timeout(cmd, self.queue_wait).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(RoomGone(self.key.clone()).into()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(SendError::Overloaded(self.key.clone())),
        }
    }
}

/// Recognises one room instance without keeping it alive.
#[derive(Clone)]
pub struct WeakRoomHandle {
    tx: mpsc::WeakSender<RoomCmd>,
}

impl WeakRoomHandle {
    /// Whether `handle` is a handle of this same instance.
    pub fn is(&self, handle: &RoomHandle) -> bool {
        self.tx.upgrade().is_some_and(|tx| tx.same_channel(&handle.tx))
    }
}

/// One gateway's link into a room. Dropping it closes the link: the room runs `on_close` for
/// that gateway's sockets still in it.
pub struct LinkSender {
    room: RoomHandle,
    link: LinkId,
    closed: AtomicBool,
}

impl LinkSender {
    /// Passes one socket event to the room, in order. A client's frame or connection attempt
    /// waits for space in the room's queue at most the queue timeout ([`SendError::Overloaded`]:
    /// close 1013 or answer 503); the other events always get through.
    pub async fn send(&self, msg: ToRoom) -> Result<(), SendError> {
        let msg = match self.try_send(msg) {
            Ok(sent) => return sent,
            Err(msg) => msg,
        };
        let client_work = matches!(msg, ToRoom::Message { .. } | ToRoom::Connect { .. });
        let cmd = RoomCmd::Link { link: self.link, msg };
        if client_work {
            self.room.send_bounded(cmd).await
        } else {
            Ok(self.room.send(cmd).await?)
        }
    }

    /// Passes one socket event to the room if its queue has space now (no waiting, no timer):
    /// the path of almost every frame. Gives the event back when the queue is full; then
    /// [`send`](Self::send) waits for space as it says.
    pub fn try_send(&self, msg: ToRoom) -> Result<Result<(), SendError>, ToRoom> {
        match self.room.tx.try_send(RoomCmd::Link { link: self.link, msg }) {
            Ok(()) => Ok(Ok(())),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(Err(RoomGone(self.room.key.clone()).into())),
            Err(mpsc::error::TrySendError::Full(RoomCmd::Link { msg, .. })) => Err(msg),
            Err(mpsc::error::TrySendError::Full(_)) => unreachable!("the command sent was a link message"),
        }
    }

    /// The room this link goes to.
    pub fn room(&self) -> &RoomHandle {
        &self.room
    }

    /// Closes the link now (rather than on drop).
    pub async fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.room.send(RoomCmd::CloseLink { link: self.link }).await;
        }
    }
}

impl Drop for LinkSender {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let cmd = RoomCmd::CloseLink { link: self.link };
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.room.tx.try_send(cmd) {
            let tx = self.room.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

/// How a room task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RoomExit {
    /// Idle with nothing attached.
    Idle,
    /// Asked to stop.
    Shutdown,
    /// Moved to another node (its writes durable, its links handed over or closed).
    Moved,
    /// A storage write was refused or failed; the room must not keep serving.
    StorageFailed {
        /// True when refused by fencing (another owner exists).
        fenced: bool,
    },
}
