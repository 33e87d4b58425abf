//! The room runtime: one task per live room that owns the party value and runs its handlers one
//! at a time, plus a pump task that releases the room's outbound frames through the output gate.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::StatusCode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::connection::{ConnShared, Connection};
use crate::limits::Limits;
use crate::party::{ConnectionContext, DynParty, PartyFactory};
use crate::room::{ConnTable, Env, LinkId, Outbound, Parties, Room, RoomShared};
use crate::runtime::gate::Gate;
use crate::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use crate::runtime::observe::RoomObserver;
use crate::storage::{now_ms, Storage, WriteProgress};
use crate::store::{Fence, RoomKey, Store};
use crate::sync::Lock;
use crate::web::{self, Request, Response};

/// Depth of a room's command queue; senders wait when it is full.
const INBOX: usize = 1024;
/// Alarm retries after a failing `on_alarm`, and the first backoff.
const ALARM_RETRIES: u32 = 6;
const ALARM_BACKOFF: Duration = Duration::from_secs(2);
/// How long a room that was moved here waits for the links of its previous instance to adopt
/// their sockets before it serves anything else.
const GATHER_WAIT: Duration = Duration::from_secs(3);

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

// `span` of a request: the caller's, so the handler's span joins the caller's trace.
enum RoomCmd {
    OpenLink {
        link: LinkId,
        tx: mpsc::Sender<FromRoom>,
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
        reply: oneshot::Sender<Response>,
        span: Box<tracing::Span>,
    },
    /// `as_of`: the time (ms since the Unix epoch) to check the alarm against; `None`: now.
    Alarm {
        as_of: Option<i64>,
    },
    /// Answered, through the output gate, once everything before it was handled.
    Flush {
        reply: oneshot::Sender<Response>,
    },
    Shutdown {
        code: u16,
        reason: String,
    },
    Move {
        deadline: Instant,
    },
    /// The host needs room for another room: leave now if nobody is connected.
    Evict,
}

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
    /// The room had stopped before it took the request: it did not run, so it may be sent
    /// again (to a fresh instance).
    #[error(transparent)]
    NotDelivered(#[from] RoomGone),
    /// The room's queue stayed full for the queue timeout: the request did not run. Answer
    /// 503 rather than wait.
    #[error("room {0} is overloaded")]
    Overloaded(RoomKey),
    /// The room took the request and stopped before answering (its storage failed, or it was
    /// shut down): the request may have run, so it must not be sent again.
    #[error("room {0} stopped before it answered the request")]
    Interrupted(RoomKey),
}

/// A handle on a running room. Cheap to clone; the room may stop only when no handle but its
/// host's is left.
#[derive(Clone)]
pub struct RoomHandle {
    key: RoomKey,
    tx: mpsc::Sender<RoomCmd>,
    next_link: Arc<AtomicU64>,
    hibernate: bool,
    /// How long client work waits for space in the queue before it is refused.
    queue_wait: Duration,
}

impl RoomHandle {
    /// The room's key.
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Whether the party hibernates.
    pub fn hibernates(&self) -> bool {
        self.hibernate
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
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        self.send_bounded(RoomCmd::OpenLink { link, tx }).await?;
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
        rx.await.map_err(|_| RequestError::Interrupted(self.key.clone()))
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
        rx.await.map(drop).map_err(|_| RequestError::Interrupted(self.key.clone()))
    }

    /// Asks the room to leave now if nobody is connected and nothing else holds it (the host is
    /// at its room limit); never waits. False when the request could not be queued.
    pub fn evict(&self) -> bool {
        self.tx.try_send(RoomCmd::Evict).is_ok()
    }

    /// Stops the room: every socket is closed with `code` and `reason`.
    pub async fn shutdown(&self, code: u16, reason: &str) -> Result<(), RoomGone> {
        self.send(RoomCmd::Shutdown { code, reason: reason.to_string() }).await
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
        let client_work = matches!(msg, ToRoom::Message { .. } | ToRoom::Connect { .. });
        let cmd = RoomCmd::Link { link: self.link, msg };
        if client_work {
            self.room.send_bounded(cmd).await
        } else {
            Ok(self.room.send(cmd).await?)
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

/// Starts a room: its actor and its output pump. Returns the handle and the actor's task.
pub fn spawn_room(cfg: RoomConfig) -> (RoomHandle, tokio::task::JoinHandle<RoomExit>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let storage = Storage::new(cfg.key.clone(), cfg.store.clone(), cfg.fence.clone(), cfg.limits.clone());
    let gate = Gate::new(storage.progress());
    tokio::spawn(crate::runtime::gate::pump(gate.clone()));
    let shared = Arc::new(RoomShared {
        key: cfg.key.clone(),
        env: cfg.env,
        limits: cfg.limits.clone(),
        storage: storage.clone(),
        parties: cfg.parties.gated_by(storage.clone()),
        conns: Mutex::new(ConnTable::default()),
        closed_by_party: Mutex::new(Vec::new()),
        gate,
    });
    let options = cfg.factory.options();
    let handle = RoomHandle {
        key: cfg.key.clone(),
        tx,
        next_link: Arc::new(AtomicU64::new(1)),
        hibernate: options.hibernate,
        queue_wait: cfg.limits.room_queue_timeout,
    };
    let actor = Actor {
        room: Room { shared },
        factory: cfg.factory,
        hibernate: options.hibernate,
        party: None,
        links: HashSet::new(),
        inbox: rx,
        limits: cfg.limits,
        may_exit: cfg.may_exit,
        progress: storage.progress(),
        alarm_failures: 0,
        alarm_not_before: None,
        moving: None,
        gathering: None,
        pending: VecDeque::new(),
        observer: cfg.observer,
    };
    let on_exit = cfg.on_exit;
    let task = tokio::spawn(async move {
        let exit = actor.run().await;
        if let Some(on_exit) = on_exit {
            on_exit(&exit);
        }
        exit
    });
    (handle, task)
}

struct Actor {
    room: Room,
    factory: Arc<dyn PartyFactory>,
    hibernate: bool,
    party: Option<Box<dyn DynParty>>,
    /// Open gateway links and how many of their sockets are connecting or in the room.
    links: HashSet<LinkId>,
    inbox: mpsc::Receiver<RoomCmd>,
    limits: Arc<Limits>,
    may_exit: Box<dyn Fn() -> bool + Send + Sync>,
    progress: watch::Receiver<WriteProgress>,
    alarm_failures: u32,
    /// After a failed start for an alarm: do not try again before this.
    alarm_not_before: Option<Instant>,
    /// Set while the room moves away: links still to pause.
    moving: Option<Moving>,
    /// Set while the room waits for the links of its previous instance to adopt their sockets.
    gathering: Option<Gathering>,
    /// Commands held while gathering, handled before the inbox once it is over.
    pending: VecDeque<RoomCmd>,
    observer: Option<Arc<dyn RoomObserver>>,
}

struct Moving {
    deadline: Instant,
    /// Links asked to pause that have not answered yet.
    waiting: HashSet<LinkId>,
    /// Links that paused: they will hand their sockets to the next owner.
    paused: Vec<LinkId>,
}

struct Gathering {
    deadline: Instant,
    /// Links the previous instance handed over, once an `Adopted` said.
    expected: Option<usize>,
    /// Links whose adoptions are complete.
    adopted: HashSet<LinkId>,
}

impl Gathering {
    fn complete(&self) -> bool {
        self.expected.is_some_and(|n| self.adopted.len() >= n)
    }
}

/// Whether a command may run while a moved room gathers its sockets (the handover itself).
fn part_of_handover(cmd: &RoomCmd) -> bool {
    matches!(
        cmd,
        RoomCmd::OpenLink { .. }
            | RoomCmd::CloseLink { .. }
            | RoomCmd::Shutdown { .. }
            | RoomCmd::Move { .. }
            | RoomCmd::Link { msg: ToRoom::Adopt { .. } | ToRoom::Adopted { .. }, .. }
    )
}

/// How a guarded handler call went wrong.
enum Failure {
    Error(anyhow::Error),
    Panic(String),
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "{e:#}"),
            Failure::Panic(msg) => write!(f, "party panicked: {msg}"),
            Failure::Timeout => f.write_str("party handler timed out"),
        }
    }
}

/// Runs a handler with the time limit, turning panics into failures.
async fn guarded<T>(limit: Duration, fut: impl Future<Output = anyhow::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, AssertUnwindSafe(fut).catch_unwind()).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::Panic(msg))
        }
        Ok(Ok(Err(e))) => Err(Failure::Error(e)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// Resolves when a party's background work is ready.
async fn wait_wakeup(wakeup: Option<&crate::party::Wakeup>) {
    let Some(w) = wakeup else { return std::future::pending().await };
    match w.at {
        Some(at) => tokio::select! {
            _ = w.notify.notified() => {}
            _ = sleep_until(at) => {}
        },
        None => w.notify.notified().await,
    }
}

/// A close reason fits in a control frame: at most 123 bytes, cut at a character boundary.
pub fn close_reason(text: &str) -> String {
    if text.len() <= 123 {
        return text.to_string();
    }
    let mut end = 123;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Actor {
    fn shared(&self) -> &Arc<RoomShared> {
        &self.room.shared
    }

    fn storage(&self) -> &Storage {
        &self.room.shared.storage
    }

    async fn run(self) -> RoomExit {
        let span = tracing::info_span!("room", room = %self.room.key());
        self.serve().instrument(span).await
    }

    /// Runs `handle` for one command inside an event span (a child of the caller's span for
    /// requests, else of the room's), and reports its duration.
    async fn handle_observed(&mut self, cmd: RoomCmd) {
        let event = match &cmd {
            RoomCmd::OpenLink { .. } => "open_link",
            RoomCmd::CloseLink { .. } => "close_link",
            RoomCmd::Link { msg: ToRoom::Connect { .. }, .. } => "connect",
            RoomCmd::Link { msg: ToRoom::Message { .. }, .. } => "message",
            RoomCmd::Link { msg: ToRoom::Closed { .. }, .. } => "close",
            RoomCmd::Link { .. } => "handover",
            RoomCmd::Request { .. } => "request",
            RoomCmd::Alarm { .. } => "alarm",
            RoomCmd::Flush { .. } => "flush",
            RoomCmd::Shutdown { .. } => "shutdown",
            RoomCmd::Move { .. } => "move",
            RoomCmd::Evict => "evict",
        };
        let span = match &cmd {
            RoomCmd::Request { span: parent, .. } if parent.id().is_some() => {
                tracing::info_span!(parent: parent.as_ref(), "room.event", room = %self.room.key(), event)
            }
            _ => tracing::info_span!("room.event", room = %self.room.key(), event),
        };
        let started = Instant::now();
        self.handle(cmd).instrument(span).await;
        if let Some(o) = &self.observer {
            o.event_handled(event, started.elapsed());
        }
    }

    async fn serve(mut self) -> RoomExit {
        let key = self.room.key().clone();
        tracing::debug!(room = %key, "room started");
        let mut last_event = Instant::now();
        let mut progress = self.progress.clone();
        let exit = loop {
            if self.gathering.is_none() {
                if let Some(cmd) = self.pending.pop_front() {
                    if let Some(exit) = self.dispatch(cmd).await {
                        break exit;
                    }
                    self.after_handler().await;
                    continue;
                }
            }
            let busy = self.moving.is_some() || self.gathering.is_some();
            let alarm_at = if busy { None } else { self.alarm_deadline() };
            let idle_at = last_event + self.idle_timeout();
            let phase_at = self.moving.as_ref().map(|m| m.deadline).or(self.gathering.as_ref().map(|g| g.deadline));
            let wakeup = self.party.as_ref().and_then(|p| p.wakeup());
            tokio::select! {
                biased;
                changed = progress.changed() => {
                    if changed.is_err() || progress.borrow().failed.is_some() {
                        let fenced = progress.borrow().fenced;
                        break RoomExit::StorageFailed { fenced };
                    }
                    continue;
                }
                cmd = self.inbox.recv() => {
                    let Some(cmd) = cmd else { break RoomExit::Idle };
                    if self.gathering.is_some() && !part_of_handover(&cmd) {
                        self.pending.push_back(cmd);
                        continue;
                    }
                    if let Some(exit) = self.dispatch(cmd).await {
                        break exit;
                    }
                }
                _ = sleep_until(phase_at.unwrap_or(idle_at)), if phase_at.is_some() => {
                    if self.moving.is_some() {
                        break self.finish_move().await;
                    }
                    tracing::warn!(room = %key, "not every link of the previous owner adopted its sockets in time");
                    self.gathering = None;
                }
                _ = sleep_until(alarm_at.unwrap_or(idle_at)), if alarm_at.is_some() => {
                    self.handle_observed(RoomCmd::Alarm { as_of: None }).await;
                }
                _ = sleep_until(idle_at), if !busy => {
                    if self.on_idle() {
                        break RoomExit::Idle;
                    }
                }
                _ = wait_wakeup(wakeup.as_ref()), if wakeup.is_some() && self.moving.is_none() && self.gathering.is_none() => {
                    self.wakeup().await;
                    self.after_handler().await;
                    continue;
                }
            }
            self.after_handler().await;
            if self.moving.as_ref().is_some_and(|m| m.waiting.is_empty()) {
                break self.finish_move().await;
            }
            if self.gathering.as_ref().is_some_and(Gathering::complete) {
                self.gathering = None;
            }
            last_event = Instant::now();
        };
        self.storage().seal();
        self.shared().gate.close();
        tracing::debug!(room = %key, exit = ?exit, "room stopped");
        exit
    }

    /// Handles one command; `Some` when the room must stop.
    async fn dispatch(&mut self, cmd: RoomCmd) -> Option<RoomExit> {
        match cmd {
            RoomCmd::Shutdown { code, reason } => {
                self.shutdown(code, &reason);
                Some(RoomExit::Shutdown)
            }
            RoomCmd::Move { deadline } => self.begin_move(deadline).await,
            RoomCmd::Flush { reply } => {
                self.shared().emit(Outbound::Response(reply, Box::new(Response::new(Bytes::new()))));
                None
            }
            RoomCmd::Evict => {
                let attached = self.room.connection_count() > 0 || !self.links.is_empty();
                let busy = self.moving.is_some() || self.gathering.is_some();
                (!attached && !busy && (self.may_exit)()).then_some(RoomExit::Idle)
            }
            cmd => {
                self.handle_observed(cmd).await;
                None
            }
        }
    }

    /// Starts moving out; `Some` when the room can stop at once.
    async fn begin_move(&mut self, deadline: Instant) -> Option<RoomExit> {
        if self.moving.is_some() {
            return None;
        }
        self.pending.clear();
        self.gathering = None;
        self.moving = Some(Moving { deadline, waiting: HashSet::new(), paused: Vec::new() });
        if self.hibernate && !self.links.is_empty() {
            let links: Vec<LinkId> = self.links.iter().copied().collect();
            for link in &links {
                self.shared().emit_link(*link, FromRoom::Pause);
            }
            self.moving.as_mut().expect("set").waiting = links.into_iter().collect();
            return None;
        }
        Some(self.finish_move().await)
    }

    /// Ends a move: writes durable (bounded by the deadline), then every paused link hears the
    /// room moved and every other link that it is gone.
    async fn finish_move(&mut self) -> RoomExit {
        let Some(moving) = self.moving.take() else { return RoomExit::Moved };
        self.after_handler().await;
        if tokio::time::timeout_at(moving.deadline, self.storage().sync()).await.is_err() {
            tracing::warn!(room = %self.room.key(), "writes not durable by the move deadline");
        }
        let links = moving.paused.len() as u32;
        for link in &self.links {
            let msg = if moving.paused.contains(link) {
                FromRoom::Moved { links }
            } else {
                FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: "room moved".into() }
            };
            self.shared().emit_link(*link, msg);
        }
        RoomExit::Moved
    }

    /// Runs the party's background work (timers, finished I/O of a script runtime).
    async fn wakeup(&mut self) {
        let Some(party) = self.party.as_mut() else { return };
        if let Err(f) = guarded(self.limits.handler_timeout, party.on_wakeup()).await {
            tracing::warn!(room = %self.room.key(), error = %f, "background work of the party failed");
        }
    }

    fn idle_timeout(&self) -> Duration {
        let has_conns = self.room.connection_count() > 0 || !self.links.is_empty();
        if self.party.is_some() && self.hibernate && has_conns {
            self.limits.hibernate_idle
        } else {
            self.limits.room_idle
        }
    }

    /// The room has been idle: hibernate, or stop when nothing is attached. True to stop.
    fn on_idle(&mut self) -> bool {
        let has_conns = self.room.connection_count() > 0 || !self.links.is_empty();
        if has_conns {
            if self.hibernate && self.party.is_some() {
                tracing::debug!(room = %self.room.key(), "room hibernating");
                self.party = None;
                self.storage().clear_cache();
            }
            return false;
        }
        // Pending alarms are picked up by the host's alarm scheduler once the room is gone.
        (self.may_exit)()
    }

    fn alarm_deadline(&self) -> Option<Instant> {
        let at = self.storage().known_alarm().flatten()?;
        let wait = at.saturating_sub(now_ms()).max(0) as u64;
        let due = Instant::now() + Duration::from_millis(wait);
        Some(self.alarm_not_before.map_or(due, |nb| due.max(nb)))
    }

    /// Seals the write buffer and runs `on_close` for connections the party closed.
    async fn after_handler(&mut self) {
        loop {
            let closed: Vec<Arc<ConnShared>> = std::mem::take(&mut *self.shared().closed_by_party.locked());
            if closed.is_empty() {
                break;
            }
            for conn in closed {
                self.run_on_close(conn, None).await;
            }
        }
        self.storage().seal();
    }

    fn shutdown(&mut self, code: u16, reason: &str) {
        for link in &self.links {
            self.shared().emit_link(*link, FromRoom::Gone { code, reason: reason.to_string() });
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::OpenLink { link, tx } => {
                self.links.insert(link);
                self.shared().emit(Outbound::OpenLink(link, tx));
                if self.moving.is_some() {
                    let gone = FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: "room moved".into() };
                    self.shared().emit_link(link, gone);
                }
            }
            RoomCmd::CloseLink { link } => {
                let conns: Vec<Arc<ConnShared>> = {
                    let mut table = self.shared().conns.locked();
                    let keys: Vec<_> = table.by_key.keys().filter(|k| k.0 == link).copied().collect();
                    keys.iter().filter_map(|k| table.remove(k)).collect()
                };
                for conn in conns {
                    self.run_on_close(conn, None).await;
                }
                self.links.remove(&link);
                if let Some(m) = self.moving.as_mut() {
                    m.waiting.remove(&link);
                }
                self.shared().emit(Outbound::CloseLink(link));
            }
            RoomCmd::Link { link, msg } => match msg {
                ToRoom::Connect { sid, id, uri, request } => self.connect(link, sid, id, uri, request).await,
                ToRoom::Message { sid, msg } => self.message(link, sid, msg).await,
                ToRoom::Closed { sid, error } => {
                    let conn = self.shared().conns.locked().remove(&(link, sid));
                    if let Some(conn) = conn {
                        self.run_on_close(conn, error).await;
                    }
                }
                ToRoom::Paused => {
                    if let Some(m) = self.moving.as_mut() {
                        if m.waiting.remove(&link) {
                            m.paused.push(link);
                        }
                    }
                }
                ToRoom::Adopt { sid, id, uri, tags, state } => {
                    self.gathering.get_or_insert_with(|| Gathering {
                        deadline: Instant::now() + GATHER_WAIT,
                        expected: None,
                        adopted: HashSet::new(),
                    });
                    self.adopt(link, sid, id, uri, tags, state);
                }
                ToRoom::Adopted { links } => {
                    let g = self.gathering.get_or_insert_with(|| Gathering {
                        deadline: Instant::now() + GATHER_WAIT,
                        expected: None,
                        adopted: HashSet::new(),
                    });
                    g.expected = Some(g.expected.unwrap_or(0).max(links as usize));
                    g.adopted.insert(link);
                }
            },
            RoomCmd::Request { req, reply, .. } => {
                let res = self.request(req).await;
                self.shared().emit(Outbound::Response(reply, Box::new(res)));
            }
            RoomCmd::Alarm { as_of } => {
                if self.moving.is_none() {
                    self.fire_alarm(as_of).await;
                }
            }
            RoomCmd::Shutdown { .. } | RoomCmd::Move { .. } | RoomCmd::Flush { .. } | RoomCmd::Evict => {
                unreachable!("handled by dispatch")
            }
        }
    }

    /// Creates the party value and runs `on_start` if the room is not started.
    async fn ensure_started(&mut self) -> Result<(), String> {
        if self.party.is_some() {
            return Ok(());
        }
        let room = self.room.clone();
        let factory = self.factory.clone();
        let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(room)));
        let mut party = created.map_err(|_| "party constructor panicked".to_string())?;
        guarded(self.limits.handler_timeout, party.on_start()).await.map_err(|f| format!("onStart failed: {f}"))?;
        self.party = Some(party);
        if self.storage().known_alarm().is_none() {
            if let Err(e) = self.storage().get_alarm().await {
                tracing::warn!(room = %self.room.key(), error = %e, "could not read the alarm");
            }
        }
        Ok(())
    }

    fn connection(&self, shared: Arc<ConnShared>) -> Connection {
        Connection { shared, room: self.shared().clone() }
    }

    async fn connect(&mut self, link: LinkId, sid: SocketId, id: String, uri: String, request: Box<Request>) {
        // A client reconnecting with its id replaces its own slot, so it is not refused.
        let full = self.room.connection_count() >= self.limits.max_connections_per_room;
        let refusal = if full && self.room.get_connection(&id).is_none() {
            FromRoom::Refused { sid, status: 503, reason: "room is full".into() }
        } else {
            match self.try_connect(link, sid, id, uri, request).await {
                Ok(()) => return,
                Err(reason) => FromRoom::Failed { sid, reason: close_reason(&reason) },
            }
        };
        self.shared().emit_link(link, refusal);
    }

    async fn try_connect(
        &mut self,
        link: LinkId,
        sid: SocketId,
        id: String,
        uri: String,
        request: Box<Request>,
    ) -> Result<(), String> {
        self.ensure_started().await?;
        // Newest wins: an older socket with the same id leaves the room before this one joins,
        // so get_connections never yields both.
        let older = self.room.get_connection(&id);
        if let Some(older) = older {
            older.close(close_code::REPLACED, "replaced by a newer connection with the same id");
            self.after_handler().await;
        }
        let order = {
            let mut t = self.shared().conns.locked();
            t.next_order += 1;
            t.next_order
        };
        let shared = Arc::new(ConnShared {
            key: (link, sid),
            id: id.clone(),
            uri,
            tags: Mutex::new(vec![id.clone()]),
            state: Mutex::new(None),
            open: AtomicBool::new(true),
            order,
        });
        let conn = self.connection(shared.clone());
        let ctx = ConnectionContext { request: *request };
        let limit = self.limits.handler_timeout;
        let party = self.party.as_mut().expect("started");
        let extra = guarded(limit, party.get_connection_tags(&conn, &ctx))
            .await
            .map_err(|f| format!("getConnectionTags failed: {f}"))?;
        let tags = self.validate_tags(&id, extra)?;
        *shared.tags.locked() = tags.clone();
        self.shared().conns.locked().insert(shared.clone());
        self.shared().emit_link(link, FromRoom::Joined { sid });
        let party = self.party.as_mut().expect("started");
        if let Err(f) = guarded(limit, party.on_connect(&conn, &ctx)).await {
            self.shared().conns.locked().remove(&(link, sid));
            return Err(f.to_string());
        }
        self.shared().emit_link(link, FromRoom::Accepted { sid, tags });
        Ok(())
    }

    /// Takes over a socket from the room's previous instance: it joins the table as it was,
    /// without `on_connect` (as after hibernation). The party starts on the next event.
    fn adopt(&mut self, link: LinkId, sid: SocketId, id: String, uri: String, tags: Vec<String>, state: Option<Bytes>) {
        let mut table = self.shared().conns.locked();
        table.next_order += 1;
        let order = table.next_order;
        table.insert(Arc::new(ConnShared {
            key: (link, sid),
            id,
            uri,
            tags: Mutex::new(tags),
            state: Mutex::new(state),
            open: AtomicBool::new(true),
            order,
        }));
    }

    fn validate_tags(&self, id: &str, extra: Vec<String>) -> Result<Vec<String>, String> {
        let mut tags = vec![id.to_string()];
        tags.extend(extra);
        if tags.len() > self.limits.max_tags {
            return Err(format!("{} tags (the id included), the limit is {}", tags.len(), self.limits.max_tags));
        }
        for t in &tags[1..] {
            if t.is_empty() || t.len() > self.limits.max_tag_bytes {
                return Err(format!("a tag must be 1 to {} bytes, got {}", self.limits.max_tag_bytes, t.len()));
            }
        }
        Ok(tags)
    }

    async fn message(&mut self, link: LinkId, sid: SocketId, msg: crate::message::Message) {
        let Some(shared) = self.shared().conns.locked().by_key.get(&(link, sid)).cloned() else {
            return;
        };
        let conn = self.connection(shared);
        if let Err(reason) = self.ensure_started().await {
            conn.close(close_code::INTERNAL_ERROR, &close_reason(&reason));
            return;
        }
        let limit = self.limits.handler_timeout;
        let party = self.party.as_mut().expect("started");
        match guarded(limit, party.on_message(msg, &conn)).await {
            Ok(()) => {}
            Err(Failure::Error(e)) => {
                let party = self.party.as_mut().expect("started");
                if let Err(f) = guarded(limit, party.on_error(&conn, &e)).await {
                    tracing::warn!(room = %self.room.key(), conn = conn.id(), error = %f, "onError failed");
                    conn.close(close_code::INTERNAL_ERROR, &close_reason(&f.to_string()));
                }
            }
            Err(f) => {
                tracing::warn!(room = %self.room.key(), conn = conn.id(), error = %f, "onMessage failed");
                conn.close(close_code::INTERNAL_ERROR, &close_reason(&f.to_string()));
            }
        }
    }

    async fn run_on_close(&mut self, shared: Arc<ConnShared>, error: Option<String>) {
        let conn = self.connection(shared);
        // A hibernated room wakes to run on_close (as PartyKit does since partykit#709).
        if self.ensure_started().await.is_err() {
            return;
        }
        let limit = self.limits.handler_timeout;
        if let Some(err) = error {
            let err = anyhow::anyhow!(err);
            let party = self.party.as_mut().expect("started");
            if let Err(f) = guarded(limit, party.on_error(&conn, &err)).await {
                tracing::warn!(room = %self.room.key(), error = %f, "onError failed");
            }
        }
        let party = self.party.as_mut().expect("started");
        if let Err(f) = guarded(limit, party.on_close(&conn)).await {
            tracing::warn!(room = %self.room.key(), error = %f, "onClose failed");
        }
    }

    async fn request(&mut self, req: Request) -> Response {
        if let Err(reason) = self.ensure_started().await {
            return web::text(StatusCode::INTERNAL_SERVER_ERROR, reason);
        }
        let party = self.party.as_mut().expect("started");
        match guarded(self.limits.handler_timeout, party.on_request(req)).await {
            Ok(res) => res,
            Err(Failure::Error(e)) => web::error_response(&e, StatusCode::INTERNAL_SERVER_ERROR),
            Err(f) => web::text(StatusCode::INTERNAL_SERVER_ERROR, f.to_string()),
        }
    }

    async fn fire_alarm(&mut self, as_of: Option<i64>) {
        if self.alarm_not_before.is_some_and(|nb| Instant::now() < nb) {
            return;
        }
        if let Err(reason) = self.ensure_started().await {
            // Counts as a failed on_alarm: back off instead of restarting the room in a loop.
            self.alarm_failures += 1;
            let backoff = ALARM_BACKOFF * 2u32.pow(self.alarm_failures.min(ALARM_RETRIES) - 1);
            self.alarm_not_before = Some(Instant::now() + backoff);
            tracing::warn!(room = %self.room.key(), %reason, retry_in = ?backoff, "alarm could not start the room");
            return;
        }
        self.alarm_not_before = None;
        let due = match self.storage().get_alarm().await {
            Ok(Some(at)) if at <= as_of.unwrap_or_else(now_ms) => at,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(room = %self.room.key(), error = %e, "could not read the alarm");
                return;
            }
        };
        let party = self.party.as_mut().expect("started");
        let result = guarded(self.limits.handler_timeout, party.on_alarm()).await;
        if let Some(o) = &self.observer {
            o.alarm_fired();
        }
        let storage = self.storage().clone();
        let unchanged = storage.known_alarm() == Some(Some(due));
        match result {
            Ok(()) => {
                self.alarm_failures = 0;
                if unchanged {
                    let _ = storage.delete_alarm().await;
                }
            }
            Err(f) => {
                self.alarm_failures += 1;
                if !unchanged {
                    // on_alarm set a new alarm before failing; that one stands.
                } else if self.alarm_failures > ALARM_RETRIES {
                    tracing::warn!(room = %self.room.key(), error = %f, "onAlarm failed; giving up after retries");
                    self.alarm_failures = 0;
                    let _ = storage.delete_alarm().await;
                } else {
                    let backoff = ALARM_BACKOFF * 2u32.pow(self.alarm_failures - 1);
                    tracing::warn!(room = %self.room.key(), error = %f, retry_in = ?backoff, "onAlarm failed; retrying");
                    let _ = storage.set_alarm(now_ms() + backoff.as_millis() as i64).await;
                }
            }
        }
    }
}
