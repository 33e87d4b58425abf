//! The room task: one per live room, owning the party value and running its handlers one at a
//! time, plus a pump task that releases the room's outbound frames through the output gate. The
//! loop here takes commands from the room's queue, hibernates and stops when idle, and fires the
//! alarm; the party calls are in the private `handlers`, moves between nodes in the private
//! `handover`, and what callers hold in [`super::handle`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::client_text;
use crate::connection::ConnShared;
use crate::limits::Limits;
use crate::party::{DynParty, PartyFactory};
use crate::room::{ConnTable, LinkId, Outbound, Room, RoomShared};
use crate::runtime::gate::Gate;
use crate::runtime::handle::{Answer, ConnSnapshot, RoomCmd, RoomConfig, RoomExit, RoomHandle, RoomSnapshot, Stop};
use crate::runtime::link::{close_code, FromRoom, ToRoom};
use crate::runtime::observe::{self, RoomObserver};
use crate::storage::{now_ms, Storage, WriteProgress};
use crate::sync::Lock;
use crate::web::Response;

/// Depth of a room's command queue; senders wait when it is full.
const INBOX: usize = 1024;

/// Commands the room takes from its queue one after the other without waiting on its timers.
const TAKE_WITHOUT_WAITING: u32 = 32;

/// Starts a room: its actor and its output pump. Returns the handle and the actor's task.
pub fn spawn_room(cfg: RoomConfig) -> (RoomHandle, tokio::task::JoinHandle<RoomExit>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let stop = Arc::new(watch::Sender::new(None));
    let storage = Storage::new(cfg.key.clone(), cfg.store.clone(), cfg.fence.clone(), cfg.limits.clone());
    let gate = Gate::new(storage.progress());
    let gate_span = observe::frame_span(|| tracing::info_span!(parent: None, "room.gate", room = %cfg.key));
    tokio::spawn(crate::runtime::gate::pump(gate.clone()).instrument(gate_span));
    let shared = Arc::new(RoomShared {
        key: cfg.key.clone(),
        env: cfg.env,
        limits: cfg.limits.clone(),
        storage: storage.clone(),
        parties: cfg.parties.gated_by(storage.clone()),
        conns: Mutex::new(ConnTable::default()),
        closed_by_party: Mutex::new(Vec::new()),
        gate,
        instance: {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        },
    });
    let options = cfg.factory.options();
    let handle = RoomHandle::new(
        cfg.key.clone(),
        tx,
        stop.clone(),
        options.hibernate,
        cfg.limits.room_queue_timeout,
        Arc::downgrade(&shared),
    );
    let actor = Actor {
        room: Room { shared },
        factory: cfg.factory,
        hibernate: options.hibernate,
        party: None,
        links: HashSet::new(),
        link_names: HashMap::new(),
        inbox: rx,
        stop: stop.subscribe(),
        _stop_tx: stop,
        limits: cfg.limits,
        may_exit: cfg.may_exit,
        progress: storage.progress(),
        alarm_failures: 0,
        alarm_not_before: None,
        moving: None,
        gathering: None,
        pending: VecDeque::new(),
        observer: cfg.observer,
        trace_events: false,
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

/// A room task's state. Its party calls are in `handlers`, its handovers in `handover`.
pub(super) struct Actor {
    pub(super) room: Room,
    pub(super) factory: Arc<dyn PartyFactory>,
    pub(super) hibernate: bool,
    pub(super) party: Option<Box<dyn DynParty>>,
    /// Open gateway links and how many of their sockets are connecting or in the room.
    pub(super) links: HashSet<LinkId>,
    /// The gateway each named link comes from ([`RoomHandle::open_link_as`]), for inspection.
    link_names: HashMap<LinkId, Arc<str>>,
    inbox: mpsc::Receiver<RoomCmd>,
    /// Set by [`RoomHandle::shutdown`]: checked before each command, so a shutdown does not
    /// wait behind the queue.
    stop: watch::Receiver<Stop>,
    /// Keeps `stop` open for as long as the room runs (its handles may all be gone).
    _stop_tx: Arc<watch::Sender<Stop>>,
    pub(super) limits: Arc<Limits>,
    may_exit: Box<dyn Fn() -> bool + Send + Sync>,
    progress: watch::Receiver<WriteProgress>,
    pub(super) alarm_failures: u32,
    /// After a failed start for an alarm: do not try again before this.
    pub(super) alarm_not_before: Option<Instant>,
    /// Set while the room moves away: links still to pause.
    pub(super) moving: Option<Moving>,
    /// Set while the room waits for the links of its previous instance to adopt their sockets.
    pub(super) gathering: Option<Gathering>,
    /// Commands held while gathering, handled before the inbox once it is over.
    pub(super) pending: VecDeque<RoomCmd>,
    pub(super) observer: Option<Arc<dyn RoomObserver>>,
    /// The room's trace is sampled: each event gets a span (see [`observe::frame_span`]).
    trace_events: bool,
}

/// A room moving away.
pub(super) struct Moving {
    pub(super) deadline: Instant,
    /// Links asked to pause that have not answered yet.
    pub(super) waiting: HashSet<LinkId>,
    /// Links that paused: they will hand their sockets to the next owner.
    pub(super) paused: Vec<LinkId>,
}

/// A room moved here, waiting for the links of its previous instance to adopt their sockets.
pub(super) struct Gathering {
    pub(super) deadline: Instant,
    /// Links the previous instance handed over, once an `Adopted` said.
    pub(super) expected: Option<usize>,
    /// Links whose adoptions are complete.
    pub(super) adopted: HashSet<LinkId>,
}

/// Resolves at `at`, never when `None`. A future built for a branch of the wait that is turned
/// off is never polled, and this one costs nothing until it is (no timer, no runtime handle).
async fn sleep_at(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
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

impl Actor {
    pub(super) fn shared(&self) -> &Arc<RoomShared> {
        &self.room.shared
    }

    pub(super) fn storage(&self) -> &Storage {
        &self.room.shared.storage
    }

    async fn run(mut self) -> RoomExit {
        let span = observe::frame_span(|| tracing::info_span!("room", room = %self.room.key()));
        self.trace_events = !span.is_none();
        self.serve().instrument(span).await
    }

    /// Runs `handle` for one command, inside an event span when its trace is sampled (a child
    /// of the caller's span for requests, else of the room's), and reports its duration.
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
            RoomCmd::Move { .. } => "move",
            RoomCmd::Evict => "evict",
            RoomCmd::Upgrade { .. } => "upgrade",
            RoomCmd::Inspect { .. } => "inspect",
        };
        debug_assert!(observe::EVENTS.contains(&event), "{event} is missing from observe::EVENTS");
        let span = match &cmd {
            RoomCmd::Request { span: parent, .. } if observe::sampled(parent) => {
                tracing::info_span!(parent: parent.as_ref(), "room.event", room = %self.room.key(), event)
            }
            _ if self.trace_events => tracing::info_span!("room.event", room = %self.room.key(), event),
            _ => tracing::Span::none(),
        };
        let started = Instant::now();
        self.handle(cmd).instrument(span).await;
        if let Some(o) = &self.observer {
            o.event_handled(event, started.elapsed());
        }
    }

    async fn serve(mut self) -> RoomExit {
        tracing::debug!("room started");
        let mut last_event = Instant::now();
        // Something happened since `last_event` was read: it is read again before the next wait
        // (once per wait, not once per command).
        let mut active = false;
        // One idle timer for the room's life, moved only when the idle deadline comes earlier;
        // when it fires before the deadline (events came since it was set), it is set again.
        let idle = sleep_until(last_event + self.idle_timeout());
        tokio::pin!(idle);
        let mut progress = self.progress.clone();
        let mut stop = self.stop.clone();
        let mut taken = 0;
        let exit = loop {
            // A shutdown takes effect between two commands, ahead of everything queued.
            let stopping = stop.borrow_and_update().clone();
            if let Some((code, reason)) = stopping {
                self.shutdown(code, &reason);
                break RoomExit::Shutdown;
            }
            if self.gathering.is_none() {
                if let Some(cmd) = self.pending.pop_front() {
                    if let Some(exit) = self.dispatch(cmd).await {
                        break exit;
                    }
                    self.after_handler().await;
                    continue;
                }
            }
            // A command already queued is taken without setting up the wait below (its timers,
            // its watches): the biased wait would pick it too, its queue coming after a storage
            // failure and a shutdown but before the timers and the party's wake-ups. Bounded, so
            // that the timers are looked at now and then.
            let queued = if taken < TAKE_WITHOUT_WAITING { self.queued_command(&stop, &progress) } else { None };
            let received = match queued {
                Some(cmd) => {
                    taken += 1;
                    tokio::task::coop::consume_budget().await;
                    Some(cmd)
                }
                None => {
                    taken = 0;
                    if active {
                        last_event = Instant::now();
                        active = false;
                    }
                    let busy = self.moving.is_some() || self.gathering.is_some();
                    let alarm_at = if busy { None } else { self.alarm_deadline() };
                    let idle_at = last_event + self.idle_timeout();
                    if idle.deadline() > idle_at {
                        idle.as_mut().reset(idle_at);
                    }
                    let phase_at =
                        self.moving.as_ref().map(|m| m.deadline).or(self.gathering.as_ref().map(|g| g.deadline));
                    let wakeup = self.party.as_ref().and_then(|p| p.wakeup());
                    let party_busy = wakeup.as_ref().is_some_and(|w| w.busy);
                    tokio::select! {
                        biased;
                        changed = progress.changed() => {
                            if changed.is_err() || progress.borrow().failed.is_some() {
                                let fenced = progress.borrow().fenced;
                                break RoomExit::StorageFailed { fenced };
                            }
                            continue;
                        }
                        _ = stop.changed() => continue,
                        cmd = self.inbox.recv() => {
                            let Some(cmd) = cmd else { break RoomExit::Idle };
                            Some(cmd)
                        }
                        _ = sleep_at(phase_at), if phase_at.is_some() => {
                            if self.moving.is_some() {
                                break self.finish_move().await;
                            }
                            tracing::warn!("not every link of the previous owner adopted its sockets in time");
                            self.gathering = None;
                            None
                        }
                        _ = sleep_at(alarm_at), if alarm_at.is_some() => {
                            self.handle_observed(RoomCmd::Alarm { as_of: None }).await;
                            None
                        }
                        _ = &mut idle, if !busy && !party_busy => {
                            if idle.deadline() < idle_at {
                                idle.as_mut().reset(idle_at);
                                continue;
                            }
                            if self.on_idle() {
                                break RoomExit::Idle;
                            }
                            None
                        }
                        _ = wait_wakeup(wakeup.as_ref()), if wakeup.is_some() && self.moving.is_none() && self.gathering.is_none() => {
                            self.wakeup().await;
                            self.after_handler().await;
                            continue;
                        }
                    }
                }
            };
            if let Some(cmd) = received {
                // Read-only, and not activity: answered now, without the after-handler
                // steps and without moving the idle clock.
                let cmd = match cmd {
                    RoomCmd::Inspect { reply } => {
                        let _ = reply.send(self.snapshot());
                        continue;
                    }
                    cmd => cmd,
                };
                if self.gathering.is_some() && !cmd.is_handover() {
                    self.pending.push_back(cmd);
                    continue;
                }
                // A move while work waits for the gathering to end: the gathering ends now,
                // and the held work runs here, in order, before the room moves on (dropped,
                // its messages would vanish, its closes never reach on_close, its requests
                // fail although they never ran).
                if matches!(cmd, RoomCmd::Move { .. }) && !self.pending.is_empty() {
                    tracing::info!(held = self.pending.len(), "moving while gathering: the held work runs first");
                    self.gathering = None;
                    self.pending.push_back(cmd);
                    continue;
                }
                if let Some(exit) = self.dispatch(cmd).await {
                    break exit;
                }
            }
            self.after_handler().await;
            if self.moving.as_ref().is_some_and(|m| m.waiting.is_empty()) {
                break self.finish_move().await;
            }
            if self.gathering.as_ref().is_some_and(Gathering::complete) {
                self.gathering = None;
            }
            active = true;
        };
        self.hand_back().await;
        self.storage().seal();
        self.shared().gate.close();
        tracing::debug!(exit = ?exit, "room stopped");
        exit
    }

    /// The room stops: the work it took and never started is handed back, none of it dropped
    /// as if it had run. Requests (and flushes) are answered [`Answer::NotRun`], so their
    /// callers send them to the room's next instance instead of failing them as interrupted.
    /// Socket events go with their sockets, as in a move: the links were told the room is gone
    /// (their sockets close, and their clients send again to the next instance) or moved (a
    /// paused link sent nothing after its pause). No new work can be queued from here on.
    async fn hand_back(&mut self) {
        self.inbox.close();
        let mut left: Vec<RoomCmd> = self.pending.drain(..).collect();
        // Until `None`: a sender that got its slot before the close still delivers into it.
        while let Some(cmd) = self.inbox.recv().await {
            left.push(cmd);
        }
        if left.is_empty() {
            return;
        }
        let (mut requests, mut messages, mut closes, mut other) = (0usize, 0usize, 0usize, 0usize);
        for cmd in left {
            match cmd {
                RoomCmd::Request { reply, .. } | RoomCmd::Flush { reply } => {
                    requests += 1;
                    let _ = reply.send(Answer::NotRun);
                }
                RoomCmd::Link { msg: ToRoom::Message { .. }, .. } => messages += 1,
                RoomCmd::Link { msg: ToRoom::Closed { .. }, .. } => closes += 1,
                _ => other += 1,
            }
        }
        tracing::info!(requests, messages, closes, other, "the room stopped with work it never started; handed back");
    }

    /// Handles one command; `Some` when the room must stop.
    async fn dispatch(&mut self, cmd: RoomCmd) -> Option<RoomExit> {
        match cmd {
            RoomCmd::Move { deadline } => self.begin_move(deadline).await,
            RoomCmd::Flush { reply } => {
                self.shared().emit(Outbound::Response(reply, Box::new(Response::new(Bytes::new()))));
                None
            }
            RoomCmd::Upgrade { factory } => self.upgrade(factory),
            RoomCmd::Inspect { reply } => {
                let _ = reply.send(self.snapshot());
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

    /// The next queued command, when the room takes one without waiting: not while it moves or
    /// gathers, and not while a shutdown or a change of storage progress waits to be seen (both
    /// go before the queue).
    fn queued_command(
        &mut self,
        stop: &watch::Receiver<Stop>,
        progress: &watch::Receiver<WriteProgress>,
    ) -> Option<RoomCmd> {
        if self.moving.is_some() || self.gathering.is_some() {
            return None;
        }
        if stop.has_changed().unwrap_or(true) || progress.has_changed().unwrap_or(true) {
            return None;
        }
        self.inbox.try_recv().ok()
    }

    fn idle_timeout(&self) -> Duration {
        let has_conns = self.room.connection_count() > 0 || !self.links.is_empty();
        if self.party.is_some() && self.hibernate && has_conns {
            self.limits.hibernate_idle
        } else {
            self.limits.room_idle
        }
    }

    /// See [`RoomHandle::upgrade`]; `Some` when the room must stop.
    fn upgrade(&mut self, factory: Arc<dyn PartyFactory>) -> Option<RoomExit> {
        if std::ptr::addr_eq(Arc::as_ptr(&factory), Arc::as_ptr(&self.factory)) {
            return None;
        }
        let has_conns = self.room.connection_count() > 0 || !self.links.is_empty();
        let busy = self.party.as_ref().and_then(|p| p.wakeup()).is_some_and(|w| w.busy)
            || self.moving.is_some()
            || self.gathering.is_some();
        let hibernates = factory.options().hibernate;
        if has_conns && !(self.hibernate && hibernates && !busy) {
            tracing::info!("room restarting for a new version of its party");
            self.shutdown(close_code::SERVICE_RESTART, client_text::ROOM_RESTARTED_FOR_DEPLOY);
            return Some(RoomExit::Shutdown);
        }
        tracing::debug!(connected = has_conns, "room moves to a new version of its party");
        self.factory = factory;
        self.hibernate = hibernates;
        if self.party.take().is_some() {
            self.storage().clear_cache();
        }
        None
    }

    /// The room has been idle: hibernate, or stop when nothing is attached. True to stop.
    fn on_idle(&mut self) -> bool {
        let has_conns = self.room.connection_count() > 0 || !self.links.is_empty();
        if has_conns {
            if self.hibernate && self.party.is_some() {
                tracing::debug!("room hibernating");
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
    pub(super) async fn after_handler(&mut self) {
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

    /// The room as an operator sees it ([`RoomHandle::inspect`]).
    fn snapshot(&self) -> RoomSnapshot {
        let mut conns: Vec<Arc<ConnShared>> = self.shared().conns.locked().by_key.values().cloned().collect();
        conns.sort_by_key(|c| c.order);
        let connections = conns
            .iter()
            .map(|c| ConnSnapshot {
                id: c.id.clone(),
                tags: c.tags.locked().clone(),
                gateway: match self.link_names.get(&c.key.0) {
                    Some(name) => name.to_string(),
                    None => c.key.0.to_string(),
                },
            })
            .collect();
        RoomSnapshot { connections, hibernates: self.hibernate }
    }

    fn shutdown(&mut self, code: u16, reason: &str) {
        for link in &self.links {
            self.shared().emit_link(*link, FromRoom::Gone { code, reason: reason.to_string() });
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::OpenLink { link, tx, gateway } => {
                self.links.insert(link);
                if let Some(name) = gateway {
                    self.link_names.insert(link, name);
                }
                self.shared().emit(Outbound::OpenLink(link, tx));
                if self.moving.is_some() {
                    let gone =
                        FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: client_text::ROOM_MOVED.into() };
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
                self.link_names.remove(&link);
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
                ToRoom::Paused => self.paused(link),
                ToRoom::Adopt { sid, id, uri, tags, state } => self.adopt(link, sid, id, uri, tags, state),
                ToRoom::Adopted { links } => self.adopted(link, links),
            },
            RoomCmd::Request { req, reply, .. } => {
                let mut res = self.request(req).await;
                match crate::web::take_deferred(&mut res) {
                    Some(answer) => self.answer_later(answer, reply),
                    None => self.shared().emit(Outbound::Response(reply, Box::new(res))),
                }
            }
            RoomCmd::Alarm { as_of } => {
                if self.moving.is_none() {
                    self.fire_alarm(as_of).await;
                }
            }
            RoomCmd::Move { .. }
            | RoomCmd::Flush { .. }
            | RoomCmd::Evict
            | RoomCmd::Upgrade { .. }
            | RoomCmd::Inspect { .. } => {
                unreachable!("handled by dispatch")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{Parties, PartiesClient};
    use crate::store::{MemoryStore, RoomKey};
    use crate::web::Request;
    use crate::{Connection, ConnectionContext, Env, Party, PartyOptions, PartyRegistry};

    /// Tags every connection with `t-<id>`.
    struct Tagged;

    impl Party for Tagged {
        fn new(_room: Room) -> Self {
            Tagged
        }

        fn options() -> PartyOptions {
            PartyOptions { hibernate: true }
        }

        async fn get_connection_tags(
            &mut self,
            conn: &Connection,
            _ctx: &ConnectionContext,
        ) -> anyhow::Result<Vec<String>> {
            Ok(vec![format!("t-{}", conn.id())])
        }
    }

    struct NoParties;

    #[async_trait::async_trait]
    impl PartiesClient for NoParties {
        async fn fetch(&self, _room: RoomKey, _req: Request) -> anyhow::Result<crate::web::Response> {
            anyhow::bail!("no other rooms here")
        }

        fn has_party(&self, _party: &str) -> bool {
            false
        }
    }

    async fn accepted(rx: &mut mpsc::Receiver<FromRoom>, sid: u64) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(FromRoom::Accepted { sid: s, .. })) if s == sid => return,
                Ok(Some(FromRoom::Failed { reason, .. } | FromRoom::Refused { reason, .. })) => panic!("{reason}"),
                Ok(Some(_)) => continue,
                other => panic!("no verdict for socket {sid}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn inspect_lists_connections_with_their_tags_and_gateway() {
        let factory = PartyRegistry::new().with::<Tagged>("tagged").get("tagged").expect("registered").clone();
        let (room, _task) = spawn_room(RoomConfig {
            key: RoomKey::new("tagged", "r"),
            factory,
            store: Arc::new(MemoryStore::new()),
            fence: None,
            limits: Arc::new(Limits::default()),
            env: Env::default(),
            parties: Parties::new(Arc::new(NoParties)),
            may_exit: Box::new(|| false),
            observer: None,
            on_exit: None,
        });
        let empty = room.inspect().await.expect("running");
        assert_eq!(empty, RoomSnapshot { connections: Vec::new(), hibernates: true });

        let connect = |sid: u64, id: &str| ToRoom::Connect {
            sid,
            id: id.to_string(),
            uri: format!("http://localhost/parties/tagged/r?_pk={id}"),
            request: Box::new(http::Request::builder().uri("/parties/tagged/r").body(Bytes::new()).expect("request")),
        };
        let (tx_a, mut rx_a) = mpsc::channel(64);
        let named = room.open_link_as(tx_a, "gateway-a").await.expect("link");
        let (tx_b, mut rx_b) = mpsc::channel(64);
        let unnamed = room.open_link(tx_b).await.expect("link");
        named.send(connect(1, "alice")).await.expect("sent");
        accepted(&mut rx_a, 1).await;
        unnamed.send(connect(7, "bob")).await.expect("sent");
        accepted(&mut rx_b, 7).await;
        assert_eq!(room.connection_count(), 2);

        let seen = room.inspect().await.expect("running");
        assert!(seen.hibernates);
        let conns: Vec<(&str, &[String], &str)> =
            seen.connections.iter().map(|c| (c.id.as_str(), c.tags.as_slice(), c.gateway.as_str())).collect();
        let unnamed_link = seen.connections[1].gateway.clone();
        assert!(unnamed_link.parse::<u64>().is_ok(), "an unnamed link is reported by number: {unnamed_link}");
        assert_eq!(
            conns,
            [
                ("alice", &["alice".to_string(), "t-alice".to_string()][..], "gateway-a"),
                ("bob", &["bob".to_string(), "t-bob".to_string()][..], unnamed_link.as_str()),
            ],
            "in join order"
        );

        // A socket that leaves, and a link that closes, leave the table.
        named.send(ToRoom::Closed { sid: 1, error: None }).await.expect("sent");
        unnamed.close().await;
        let left = room.inspect().await.expect("running");
        assert!(left.connections.is_empty(), "{left:?}");
        assert_eq!(room.connection_count(), 0);

        // A stopped room answers nothing.
        room.shutdown(close_code::GOING_AWAY, "bye").await.expect("running");
        room.stopped().await;
        assert!(room.inspect().await.is_err());
        assert_eq!(room.connection_count(), 0);
    }
}
