//! [`YjsRoom`]: one Yjs document served to y-partykit providers, for a party to hand its
//! connections to.
//!
//! The room keeps the document loaded while at least one of its connections is open. With
//! persistence on, every applied update is appended to room storage at once (so it is durable
//! before anyone sees it: the output gate holds the broadcast until the write is acknowledged),
//! and when the last connection leaves the log is merged into a snapshot and the document is
//! dropped from memory; the next connection loads it again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use partyline::{Connection, ConnectionContext, Message, Room};
use tokio::task::JoinHandle;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

use crate::awareness::{Awareness, ClientId};
use crate::batch::Reassembler;
use crate::persist::DocLog;
use crate::protocol::{self, Frame};
use crate::save::{OnSave, Saver};

/// Close code when a client's document is larger than the outbound frame limit.
pub const TOO_BIG: u16 = 1009;

/// Where the document lives between connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Memory only: the document lives as long as the room instance (it is lost when the room
    /// stops, e.g. after it idled with no connections).
    None,
    /// Updates are appended to room storage as they arrive and merged into one snapshot when the
    /// last connection leaves, or earlier when the log passes either bound.
    Snapshot {
        /// Merge when the log holds this many updates.
        max_log_updates: usize,
        /// Merge when the log holds this many bytes.
        max_log_bytes: usize,
    },
    /// Updates (the edit history) are kept in room storage and merged only when the log passes
    /// either bound.
    History {
        /// Merge when the log holds this many updates.
        max_updates: usize,
        /// Merge when the log holds this many bytes.
        max_bytes: usize,
    },
}

impl Persist {
    /// Snapshot mode, merging after 500 updates or 4 MiB of log.
    pub const fn snapshot() -> Self {
        Persist::Snapshot { max_log_updates: 500, max_log_bytes: 4 << 20 }
    }

    /// History mode with y-partykit's bounds: no update count limit, 10 MB of log.
    pub const fn history() -> Self {
        Persist::History { max_updates: usize::MAX, max_bytes: 10_000_000 }
    }

    fn bounds(self) -> Option<(usize, usize)> {
        match self {
            Persist::None => None,
            Persist::Snapshot { max_log_updates, max_log_bytes } => Some((max_log_updates, max_log_bytes)),
            Persist::History { max_updates, max_bytes } => Some((max_updates, max_bytes)),
        }
    }
}

/// Seeds a document that storage does not have yet.
pub type LoadFn = Arc<dyn Fn(Room) -> BoxFuture<'static, anyhow::Result<Option<Doc>>> + Send + Sync>;
/// Decides whether a new connection may only read.
pub type ReadOnlyFn = Arc<dyn Fn(&Connection, &ConnectionContext) -> bool + Send + Sync>;

/// How a [`YjsRoom`] behaves; the counterpart of y-partykit's `onConnect` options.
#[derive(Clone)]
pub struct YjsOptions {
    /// Where the document lives between connections (default: [`Persist::snapshot`]).
    pub persist: Persist,
    on_load: Option<LoadFn>,
    on_save: Option<OnSave>,
    read_only: Option<ReadOnlyFn>,
    /// Largest reassembled `y-pk-batch` message; `None` uses the room's outbound frame limit, so
    /// that whatever a client may send can also be sent on.
    pub max_batch_bytes: Option<usize>,
}

impl Default for YjsOptions {
    fn default() -> Self {
        YjsOptions {
            persist: Persist::snapshot(),
            on_load: None,
            on_save: None,
            read_only: None,
            max_batch_bytes: None,
        }
    }
}

impl std::fmt::Debug for YjsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YjsOptions")
            .field("persist", &self.persist)
            .field("on_load", &self.on_load.is_some())
            .field("on_save", &self.on_save)
            .field("read_only", &self.read_only.is_some())
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish()
    }
}

impl YjsOptions {
    /// Sets the persistence mode.
    pub fn persist(mut self, persist: Persist) -> Self {
        self.persist = persist;
        self
    }

    /// Seeds the document when storage has none (y-partykit's `load`): the returned document's
    /// content becomes the initial state, and is stored like any update. Not called when
    /// storage already holds the document, so a seed is applied once. With [`Persist::None`]
    /// it runs whenever the document is created.
    pub fn on_load<F, Fut>(mut self, load: F) -> Self
    where
        F: Fn(Room) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Option<Doc>>> + Send + 'static,
    {
        self.on_load = Some(Arc::new(move |room| Box::pin(load(room))));
        self
    }

    /// Calls a handler with a copy of the document after changes, debounced (y-partykit's
    /// `callback`), e.g. to mirror it to a database.
    pub fn on_save(mut self, on_save: OnSave) -> Self {
        self.on_save = Some(on_save);
        self
    }

    /// Decides per connection, from the connection and its upgrade request, whether it may only
    /// read: its updates are ignored, it still receives the document, updates and awareness.
    pub fn read_only<F>(mut self, decide: F) -> Self
    where
        F: Fn(&Connection, &ConnectionContext) -> bool + Send + Sync + 'static,
    {
        self.read_only = Some(Arc::new(decide));
        self
    }
}

/// One connection of the room.
struct Peer {
    conn: Connection,
    read_only: bool,
    /// Awareness clients this connection introduced; removed when it leaves.
    clients: HashSet<ClientId>,
    batch: Reassembler,
}

/// A loaded document.
struct Loaded {
    doc: Doc,
    /// Updates the document emitted (one per changing transaction), not yet sent and stored.
    emitted: Arc<Mutex<Vec<Vec<u8>>>>,
    awareness: Awareness,
    log: Option<DocLog>,
    saver: Option<Saver>,
}

/// A Yjs document served over y-partykit's protocol to the connections a party hands it.
///
/// The party calls [`on_connect`](Self::on_connect), [`on_message`](Self::on_message) and
/// [`on_close`](Self::on_close) from its own handlers, for the connections it wants to be Yjs
/// clients (all of them, or those that passed its checks). The party must not hibernate: the
/// room keeps per-connection state (awareness clients, batches in progress) in memory.
///
/// ```
/// use partyline::prelude::*;
/// use partyline_yjs::{Persist, YjsOptions, YjsRoom};
///
/// struct Notes { yjs: YjsRoom }
///
/// impl Party for Notes {
///     fn new(room: Room) -> Self {
///         // Viewers (marked by the static hook below) may read, not write.
///         let options = YjsOptions::default()
///             .persist(Persist::snapshot())
///             .read_only(|_conn, ctx| ctx.request.headers().get("x-role").is_some_and(|r| r == "viewer"));
///         Notes { yjs: YjsRoom::new(room, options) }
///     }
///
///     async fn on_before_connect(mut req: Request, _lobby: Lobby) -> anyhow::Result<Before> {
///         let token = web::query_param(req.uri(), "token").unwrap_or_default();
///         if token.is_empty() {
///             return Ok(Before::Respond(web::text(StatusCode::UNAUTHORIZED, "no token")));
///         }
///         let role = if token.starts_with("view-") { "viewer" } else { "editor" };
///         req.headers_mut().insert("x-role", role.parse()?);
///         Ok(Before::Continue(req))
///     }
///
///     async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
///         self.yjs.on_connect(conn, ctx).await
///     }
///     async fn on_message(&mut self, msg: Message, conn: &Connection) -> anyhow::Result<()> {
///         self.yjs.on_message(msg, conn).await
///     }
///     async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
///         self.yjs.on_close(conn).await
///     }
/// }
/// ```
pub struct YjsRoom {
    room: Room,
    options: YjsOptions,
    peers: HashMap<String, Peer>,
    loaded: Option<Loaded>,
    /// The save task of the previous load, so saves of consecutive loads stay in order.
    last_save: Option<JoinHandle<()>>,
}

impl YjsRoom {
    /// A room serving `room`'s document with `options`; nothing is loaded until needed.
    pub fn new(room: Room, options: YjsOptions) -> Self {
        YjsRoom { room, options, peers: HashMap::new(), loaded: None, last_save: None }
    }

    /// The options in force.
    pub fn options(&self) -> &YjsOptions {
        &self.options
    }

    /// How many connections the room serves.
    pub fn connection_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether `conn` is one of the room's connections.
    pub fn has_connection(&self, conn: &Connection) -> bool {
        self.peers.contains_key(conn.id())
    }

    /// Whether the document is in memory.
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// Takes a new connection, read-only if the options' `read_only` says so: loads the
    /// document if needed, then sends SyncStep1 and the awareness states.
    pub async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        let read_only = self.options.read_only.as_ref().is_some_and(|decide| decide(conn, ctx));
        self.connect(conn, read_only).await
    }

    /// Takes a new connection with the access given here.
    pub async fn connect(&mut self, conn: &Connection, read_only: bool) -> anyhow::Result<()> {
        self.ensure_loaded().await?;
        let max_batch = self.options.max_batch_bytes.unwrap_or(self.room.limits().max_outbound_message_bytes);
        let peer = Peer { conn: conn.clone(), read_only, clients: HashSet::new(), batch: Reassembler::new(max_batch) };
        self.peers.insert(conn.id().to_string(), peer);
        let loaded = self.loaded.as_ref().expect("loaded");
        let sv = loaded.doc.transact().state_vector().encode_v1();
        conn.send(protocol::sync_step1(&sv));
        if let Some(states) = loaded.awareness.encode_all() {
            conn.send(protocol::awareness(&states));
        }
        Ok(())
    }

    /// A frame from one of the room's connections (frames from others are ignored).
    pub async fn on_message(&mut self, msg: Message, conn: &Connection) -> anyhow::Result<()> {
        let Some(peer) = self.peers.get_mut(conn.id()) else { return Ok(()) };
        let frame = match peer.batch.push(msg) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::info!(room = %self.room.key(), conn = conn.id(), error = %e, "closing a Yjs connection");
                conn.close(e.close_code(), &e.to_string());
                return Ok(());
            }
        };
        let read_only = peer.read_only;
        self.ensure_loaded().await?;
        match protocol::decode(&frame) {
            Ok(Frame::SyncStep1(sv)) => self.answer_sync_step1(conn, sv),
            Ok(Frame::SyncStep2(update) | Frame::Update(update)) if !read_only => self.apply(conn, update).await?,
            Ok(Frame::Awareness(payload)) => self.awareness(conn, payload),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(room = %self.room.key(), conn = conn.id(), error = %e, "ignoring an undecodable Yjs frame")
            }
        }
        Ok(())
    }

    /// A connection left (closed or dropped): its awareness states are removed for the others;
    /// after the last one, the document is stored and unloaded.
    pub async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        let Some(peer) = self.peers.remove(conn.id()) else { return Ok(()) };
        // Also every other connection that is no longer in the room (one whose setup failed
        // after it was handed over gets no on_close; several that left at once get theirs one
        // after the other): one removal message for all of them.
        let mut clients = peer.clients;
        self.peers.retain(|_, p| {
            let open = p.conn.is_open();
            if !open {
                clients.extend(p.clients.drain());
            }
            open
        });
        if let Some(loaded) = self.loaded.as_mut() {
            let removed = loaded.awareness.remove(clients);
            if !removed.is_empty() {
                let frame = protocol::awareness(&loaded.awareness.encode(removed));
                self.broadcast(frame);
            }
        }
        self.unload_if_idle().await
    }

    /// The document, loaded if needed. Changes made through it reach the clients and storage
    /// at the next call into the room; [`transact`](Self::transact) sends them at once.
    pub async fn doc(&mut self) -> anyhow::Result<&Doc> {
        self.ensure_loaded().await?;
        self.flush(None).await?;
        Ok(&self.loaded.as_ref().expect("loaded").doc)
    }

    /// Changes the document from the server: runs `f` in a write transaction, then sends the
    /// resulting update to every connection and stores it.
    pub async fn transact<R>(&mut self, f: impl FnOnce(&mut TransactionMut) -> R) -> anyhow::Result<R> {
        self.ensure_loaded().await?;
        let out = {
            let doc = &self.loaded.as_ref().expect("loaded").doc;
            let mut txn = doc.transact_mut();
            f(&mut txn)
        };
        self.flush(None).await?;
        Ok(out)
    }

    /// The whole document as one update (Yjs update format v1), e.g. for a backup or an HTTP
    /// answer. Loads the document if needed.
    pub async fn encode_state(&mut self) -> anyhow::Result<Vec<u8>> {
        let doc = self.doc().await?;
        let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
        Ok(state)
    }

    /// Stores and drops the document when no connection needs it (with persistence on).
    pub async fn unload_if_idle(&mut self) -> anyhow::Result<()> {
        if !self.peers.is_empty() || self.options.persist == Persist::None {
            return Ok(());
        }
        let Some(mut loaded) = self.loaded.take() else { return Ok(()) };
        let result = async {
            flush_loaded(&self.room, &self.peers, &mut loaded, None).await?;
            let snapshot_mode = matches!(self.options.persist, Persist::Snapshot { .. });
            if let Some(log) = loaded.log.as_mut() {
                if snapshot_mode && log.log_updates() > 0 || over_bounds(self.options.persist, log) {
                    let state = loaded.doc.transact().encode_state_as_update_v1(&StateVector::default());
                    log.compact(&state).await?;
                }
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        if let Some(saver) = loaded.saver.take() {
            self.last_save = Some(saver.finish());
        }
        tracing::debug!(room = %self.room.key(), "Yjs document unloaded");
        result
    }

    async fn ensure_loaded(&mut self) -> anyhow::Result<()> {
        if self.loaded.is_none() {
            let loaded = self.load().await?;
            self.loaded = Some(loaded);
        }
        Ok(())
    }

    async fn load(&mut self) -> anyhow::Result<Loaded> {
        let persist = self.options.persist;
        let doc = Doc::with_options(yrs::Options { skip_gc: persist != Persist::None, ..yrs::Options::default() });
        let (mut log, stored) = match persist {
            Persist::None => (None, Default::default()),
            _ => {
                let limits = self.room.limits();
                let (log, stored) =
                    DocLog::load(self.room.storage().clone(), limits.max_value_bytes, limits.max_batch_keys).await?;
                (Some(log), stored)
            }
        };
        let seed = if stored.is_empty() {
            match &self.options.on_load {
                Some(load) => load(self.room.clone()).await?,
                None => None,
            }
        } else {
            None
        };
        {
            let mut txn = doc.transact_mut();
            for update in stored.snapshot.iter().chain(&stored.updates) {
                let update =
                    Update::decode_v1(update).map_err(|e| anyhow::anyhow!("stored document is damaged: {e}"))?;
                txn.apply_update(update)?;
            }
        }
        if let Some(seed) = seed {
            let state = seed.transact().encode_state_as_update_v1(&StateVector::default());
            doc.transact_mut().apply_update(Update::decode_v1(&state)?)?;
            if let Some(log) = log.as_mut() {
                log.append(&state).await?;
            }
        }
        if let Some(log) = log.as_mut() {
            if over_bounds(persist, log) {
                let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
                log.compact(&state).await?;
            }
        }
        let emitted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = emitted.clone();
        doc.observe_update_v1("partyline-yjs", move |_txn, event| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(event.update.clone());
        })?;
        let saver = self
            .options
            .on_save
            .clone()
            .map(|on_save| Saver::start(self.room.key().to_string(), doc.clone(), on_save, self.last_save.take()));
        tracing::debug!(room = %self.room.key(), "Yjs document loaded");
        Ok(Loaded { doc, emitted, awareness: Awareness::new(), log, saver })
    }

    fn answer_sync_step1(&self, conn: &Connection, sv: &[u8]) {
        let sv = match StateVector::decode_v1(sv) {
            Ok(sv) => sv,
            Err(e) => {
                tracing::debug!(room = %self.room.key(), conn = conn.id(), error = %e, "ignoring a bad state vector");
                return;
            }
        };
        let doc = &self.loaded.as_ref().expect("loaded").doc;
        let update = doc.transact().encode_state_as_update_v1(&sv);
        let frame = protocol::sync_step2(&update);
        let max = self.room.limits().max_outbound_message_bytes;
        if frame.len() > max {
            tracing::warn!(room = %self.room.key(), len = frame.len(), max, "document too large to send");
            conn.close(TOO_BIG, &format!("the document is {} bytes, over the frame limit of {max}", frame.len()));
            return;
        }
        conn.send(frame);
    }

    async fn apply(&mut self, conn: &Connection, update: &[u8]) -> anyhow::Result<()> {
        let decoded = match Update::decode_v1(update) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(room = %self.room.key(), conn = conn.id(), error = %e, "ignoring an undecodable update");
                return Ok(());
            }
        };
        let doc = &self.loaded.as_ref().expect("loaded").doc;
        if let Err(e) = doc.transact_mut().apply_update(decoded) {
            tracing::debug!(room = %self.room.key(), conn = conn.id(), error = %e, "ignoring an update that does not apply");
        }
        self.flush(Some(update)).await
    }

    fn awareness(&mut self, conn: &Connection, payload: &[u8]) {
        let loaded = self.loaded.as_mut().expect("loaded");
        let changes = match loaded.awareness.apply(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(room = %self.room.key(), conn = conn.id(), error = %e, "ignoring an awareness update");
                return;
            }
        };
        if changes.is_empty() {
            return;
        }
        // A client's state belongs to the connection that last set it (a provider that
        // reconnected sets it on its new connection; the old one leaving must not remove it).
        for (id, peer) in self.peers.iter_mut() {
            if id == conn.id() {
                peer.clients.extend(changes.added.iter().chain(&changes.updated));
                for c in &changes.removed {
                    peer.clients.remove(c);
                }
            } else {
                for c in changes.added.iter().chain(&changes.updated).chain(&changes.removed) {
                    peer.clients.remove(c);
                }
            }
        }
        let frame = protocol::awareness(&loaded.awareness.encode(changes.all()));
        self.broadcast(frame);
    }

    /// Sends and stores what the document emitted. `received` is the update that caused it, sent
    /// on instead when the document's own encoding of it would exceed the frame limit.
    async fn flush(&mut self, received: Option<&[u8]>) -> anyhow::Result<()> {
        let Some(loaded) = self.loaded.as_mut() else { return Ok(()) };
        let changed = flush_loaded(&self.room, &self.peers, loaded, received).await?;
        if changed {
            if let Some(log) = loaded.log.as_mut() {
                if over_bounds(self.options.persist, log) {
                    let state = loaded.doc.transact().encode_state_as_update_v1(&StateVector::default());
                    log.compact(&state).await?;
                }
            }
        }
        Ok(())
    }

    fn broadcast(&self, frame: Vec<u8>) {
        broadcast(&self.room, &self.peers, frame);
    }
}

/// Sends the room's connections (and only those) one frame, as one broadcast.
fn broadcast(room: &Room, peers: &HashMap<String, Peer>, frame: Vec<u8>) {
    let open = peers.values().filter(|p| p.conn.is_open()).count();
    if open == room.connection_count() {
        // Every connection in the room is ours: no exceptions to compute.
        room.broadcast(frame);
        return;
    }
    let others: Vec<String> =
        room.get_connections(None).iter().filter(|c| !peers.contains_key(c.id())).map(|c| c.id().to_string()).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    room.broadcast_without(frame, &others);
}

/// Sends and stores the updates `loaded` emitted; true when there were any.
async fn flush_loaded(
    room: &Room,
    peers: &HashMap<String, Peer>,
    loaded: &mut Loaded,
    received: Option<&[u8]>,
) -> anyhow::Result<bool> {
    let emitted = std::mem::take(&mut *loaded.emitted.lock().unwrap_or_else(|e| e.into_inner()));
    if emitted.is_empty() {
        return Ok(false);
    }
    let max = room.limits().max_outbound_message_bytes;
    for update in &emitted {
        // Stored first: the output gate then holds the broadcast until the write is durable.
        if let Some(log) = loaded.log.as_mut() {
            log.append(update).await?;
        }
        let mut frame = protocol::update(update);
        if frame.len() > max {
            match received.map(protocol::update) {
                Some(original) if original.len() <= max => frame = original,
                _ => {
                    tracing::error!(room = %room.key(), len = frame.len(), max, "an update is over the frame limit; clients get it when they next sync");
                    continue;
                }
            }
        }
        broadcast(room, peers, frame);
    }
    if let Some(saver) = &loaded.saver {
        saver.changed();
    }
    Ok(true)
}

fn over_bounds(persist: Persist, log: &DocLog) -> bool {
    persist.bounds().is_some_and(|(updates, bytes)| log.log_updates() >= updates || log.log_bytes() >= bytes)
}
