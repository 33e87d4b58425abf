//! The rooms a process hosts: starts a room on first use, hands out handles, lets idle rooms
//! stop, and wakes rooms whose alarm is due (also rooms that are not loaded, and after a
//! restart).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use partyline::room_socket::RoomSocket;
use partyline::runtime::actor::spawn_room;
use partyline::runtime::handle::{
    LinkSender, RequestError, RoomConfig, RoomExit, RoomHandle, SendError, WeakRoomHandle,
};
use partyline::runtime::link::{close_code, FromRoom};
use partyline::runtime::observe::RoomObserver;
use partyline::store::Fence;
use partyline::store::StoreError;
use partyline::sync::Lock;
use partyline::{Env, Limits, Parties, PartiesClient, PartyRegistry, Request, Response, RoomKey, Store};
use tokio::sync::mpsc;

use crate::alarms::{AlarmScope, Parked};

/// Tries for a call that races with a room stopping.
const ATTEMPTS: usize = 5;
/// How long a call waits for idle rooms to leave when the host is at its room limit.
const EVICT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No party of that name is registered.
    #[error("Party {0} not found")]
    UnknownParty(String),
    /// The room kept stopping under us (shutting down).
    #[error("room {0} is not available")]
    Unavailable(RoomKey),
    /// This process may not start the room: its shard is not (or no longer) owned here, or the
    /// caller's grant is older than the running instance's.
    #[error("room {0} is not served here")]
    NotHere(RoomKey),
    /// The room took the request and stopped before answering: it may have run, so it is not
    /// sent again.
    #[error("room {0} stopped before it answered")]
    Interrupted(RoomKey),
    /// The room's queue stayed full for the queue timeout: nothing was delivered (503 / 1013).
    #[error("room {0} is overloaded")]
    Overloaded(RoomKey),
    /// The process hosts as many rooms as it may (`Limits::max_rooms`) and none of them could
    /// leave: a new room is refused (503).
    #[error("this process hosts {0} rooms, its limit")]
    Full(usize),
}

/// Says whether this process may still start a room (its shard is owned and not being handed
/// over). Checked under the host's lock, so a handover that stops a shard's rooms cannot race
/// with a new one starting.
pub type Admit<'a> = &'a (dyn Fn() -> bool + Sync);

/// Always admits (`dev`: one process owns every room).
pub fn always() -> bool {
    true
}

struct Entry {
    handle: RoomHandle,
    fence: Option<Fence>,
}

/// A room running here ([`RoomHost::running`]).
#[derive(Clone)]
pub struct Running {
    /// Its handle.
    pub handle: RoomHandle,
    /// The lease epoch its writes are fenced by (`None` in `dev`).
    pub epoch: Option<u64>,
}

/// Told that a room's storage refused its fence (the shard's lease is not ours any more).
pub type OnFenced = Arc<dyn Fn(&RoomKey, &Fence) + Send + Sync>;

/// What a host is built from.
pub struct HostConfig {
    /// The parties it can run.
    pub parties: PartyRegistry,
    /// Where room storage lives.
    pub store: Arc<dyn Store>,
    /// Limits in force.
    pub limits: Arc<Limits>,
    /// Party variables.
    pub env: Env,
    /// How party code reaches other rooms; `None`: rooms of this host, in process (`dev`).
    pub parties_client: Option<Arc<dyn PartiesClient>>,
    /// Told about every room's events (metrics); `None`: nobody listens.
    pub observer: Option<Arc<dyn RoomObserver>>,
    /// Called when a room stops because storage refused its fence (a write or a read): the
    /// shard's lease is not held at that epoch any more.
    pub on_fenced: Option<OnFenced>,
}

/// The rooms of this process. Cheap to clone.
#[derive(Clone)]
pub struct RoomHost {
    inner: Arc<Inner>,
}

struct Inner {
    parties: PartyRegistry,
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    env: Env,
    parties_client: Option<Arc<dyn PartiesClient>>,
    observer: Option<Arc<dyn RoomObserver>>,
    on_fenced: Option<OnFenced>,
    rooms: Mutex<HashMap<RoomKey, Entry>>,
}

impl RoomHost {
    /// A host with no rooms running.
    pub fn new(cfg: HostConfig) -> Self {
        RoomHost {
            inner: Arc::new(Inner {
                parties: cfg.parties,
                store: cfg.store,
                limits: cfg.limits,
                env: cfg.env,
                parties_client: cfg.parties_client,
                observer: cfg.observer,
                on_fenced: cfg.on_fenced,
                rooms: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The parties this host runs.
    pub fn parties(&self) -> &PartyRegistry {
        &self.inner.parties
    }

    /// A client for calls between rooms of this host.
    pub fn client(&self) -> Parties {
        match &self.inner.parties_client {
            Some(client) => Parties::new(client.clone()),
            None => Parties::new(Arc::new(HostClient(Arc::downgrade(&self.inner)))),
        }
    }

    /// Moves the running rooms of the registry's live parties (a deployed project) to the
    /// parties' current version, `per_second` rooms a second ([`RoomHandle::upgrade`]: rooms
    /// that hibernate keep their sockets, others close them with 1012), until done or `stop`.
    /// How many rooms were asked.
    pub async fn upgrade_rooms(&self, per_second: u32, stop: &tokio_util::sync::CancellationToken) -> usize {
        let Some(live) = self.inner.parties.live() else { return 0 };
        let handles: Vec<RoomHandle> = self
            .inner
            .rooms
            .locked()
            .iter()
            .filter(|(key, e)| live.contains(&key.party) && !e.handle.is_closed())
            .map(|(_, e)| e.handle.clone())
            .collect();
        let pause = std::time::Duration::from_secs(1) / per_second.max(1);
        let mut asked = 0;
        for handle in handles {
            let Some(factory) = self.inner.parties.get(&handle.key().party) else { continue };
            tokio::select! {
                _ = stop.cancelled() => break,
                upgraded = handle.upgrade(factory) => asked += usize::from(upgraded),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        asked
    }

    /// How many rooms are running.
    pub fn room_count(&self) -> usize {
        self.inner.rooms.locked().len()
    }

    /// Client connections in the rooms running here, through every link
    /// ([`RoomHandle::connection_count`] of each: one lock per room, none on the frame paths).
    pub fn connection_count(&self) -> usize {
        let handles: Vec<RoomHandle> = self.inner.rooms.locked().values().map(|e| e.handle.clone()).collect();
        handles.iter().filter(|h| !h.is_closed()).map(RoomHandle::connection_count).sum()
    }

    /// The room if it runs here now, without starting it.
    pub fn running(&self, key: &RoomKey) -> Option<Running> {
        let rooms = self.inner.rooms.locked();
        let e = rooms.get(key).filter(|e| !e.handle.is_closed())?;
        Some(Running { handle: e.handle.clone(), epoch: e.fence.as_ref().map(|f| f.epoch) })
    }

    /// The handle of a room, starting it when it is not running.
    pub fn room(&self, key: &RoomKey) -> Result<RoomHandle, HostError> {
        self.room_fenced(key, None, &always)
    }

    /// Like [`RoomHost::room`], with the fence the room's writes must carry when it starts;
    /// `admit` must agree before a new instance starts. A running instance under an older
    /// fence is stopped (its writes would be refused anyway) and replaced; a caller whose fence
    /// is older than the running instance's is turned away.
    pub fn room_fenced(&self, key: &RoomKey, fence: Option<Fence>, admit: Admit<'_>) -> Result<RoomHandle, HostError> {
        let factory = self.inner.parties.get(&key.party).ok_or_else(|| HostError::UnknownParty(key.party.clone()))?;
        let mut rooms = self.inner.rooms.locked();
        if let Some(e) = rooms.get(key).filter(|e| !e.handle.is_closed()) {
            match (&e.fence, &fence) {
                (Some(old), Some(new)) if old.epoch > new.epoch => return Err(HostError::NotHere(key.clone())),
                (Some(old), Some(new)) if old.epoch < new.epoch => {
                    let stale = rooms.remove(key).expect("present").handle;
                    tokio::spawn(async move {
                        let _ = stale.shutdown(close_code::SERVICE_RESTART, partyline::client_text::ROOM_MOVED).await;
                    });
                }
                _ => return Ok(e.handle.clone()),
            }
        }
        if !admit() {
            return Err(HostError::NotHere(key.clone()));
        }
        let max = self.inner.limits.max_rooms;
        if max > 0 && rooms.len() >= max {
            rooms.retain(|_, e| !e.handle.is_closed());
            if rooms.len() >= max {
                // Rooms nobody is connected to (no link, no queued work) make way: each is asked
                // to leave, and leaves if it still has no one when it reads that.
                let asked = rooms.values().filter(|e| e.handle.is_unused()).filter(|e| e.handle.evict()).count();
                tracing::debug!(rooms = rooms.len(), asked, "room limit reached; asked idle rooms to leave");
                return Err(HostError::Full(rooms.len()));
            }
        }
        let weak = Arc::downgrade(&self.inner);
        let exit_key = key.clone();
        let me: Arc<std::sync::OnceLock<WeakRoomHandle>> = Arc::default();
        let me2 = me.clone();
        let (handle, _task) = spawn_room(RoomConfig {
            key: key.clone(),
            factory: factory.clone(),
            store: self.inner.store.clone(),
            fence: fence.clone(),
            limits: self.inner.limits.clone(),
            env: self.inner.env.clone(),
            parties: self.client(),
            may_exit: Box::new(move || {
                let Some(inner) = weak.upgrade() else { return true };
                let mut rooms = inner.rooms.locked();
                // Only this instance's own entry: a newer instance may have replaced it.
                let mine = match (rooms.get(&exit_key), me2.get()) {
                    (Some(e), Some(me)) => me.is(&e.handle),
                    _ => false,
                };
                if !mine {
                    return true;
                }
                if rooms.get(&exit_key).is_some_and(|e| e.handle.is_unused()) {
                    rooms.remove(&exit_key);
                    true
                } else {
                    false
                }
            }),
            observer: self.inner.observer.clone(),
            on_exit: match (&self.inner.on_fenced, &fence) {
                (Some(f), Some(fence)) => {
                    let (f, key, fence) = (f.clone(), key.clone(), fence.clone());
                    Some(Box::new(move |exit: &RoomExit| {
                        if *exit == (RoomExit::StorageFailed { fenced: true }) {
                            f(&key, &fence);
                        }
                    }))
                }
                _ => None,
            },
        });
        let _ = me.set(handle.downgrade());
        rooms.insert(key.clone(), Entry { handle: handle.clone(), fence });
        Ok(handle)
    }

    /// Like [`RoomHost::room_fenced`]; at the room limit, waits a little for the idle rooms it
    /// asked to leave before giving up.
    async fn room_or_wait(
        &self,
        key: &RoomKey,
        fence: Option<Fence>,
        admit: Admit<'_>,
    ) -> Result<RoomHandle, HostError> {
        let deadline = tokio::time::Instant::now() + EVICT_WAIT;
        loop {
            match self.room_fenced(key, fence.clone(), admit) {
                Err(HostError::Full(n)) if tokio::time::Instant::now() < deadline => {
                    tracing::trace!(rooms = n, "waiting for idle rooms to leave");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends an HTTP request to a room, starting it if needed.
    pub async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, HostError> {
        self.request_fenced(key, None, &always, req).await
    }

    /// Like [`RoomHost::request`]; a room started for it fences its writes with `fence`. The
    /// request runs at most once: it is sent again only when the room had not started it (it
    /// had stopped, or stopped with the request still queued: shut down, moved). Sent again, it
    /// starts a fresh instance only if `admit` agrees; else it is [`HostError::NotHere`], and
    /// the caller sends it to the room's next owner.
    pub async fn request_fenced(
        &self,
        key: &RoomKey,
        fence: Option<Fence>,
        admit: Admit<'_>,
        req: Request,
    ) -> Result<Response, HostError> {
        let (parts, body) = req.into_parts();
        for _ in 0..ATTEMPTS {
            let room = self.room_or_wait(key, fence.clone(), admit).await?;
            let req = Request::from_parts(clone_parts(&parts), body.clone());
            match room.request(req).await {
                Ok(res) => return Ok(res),
                Err(RequestError::NotDelivered(_)) => tokio::task::yield_now().await,
                Err(RequestError::Interrupted(key)) => return Err(HostError::Interrupted(key)),
                Err(RequestError::Overloaded(key)) => return Err(HostError::Overloaded(key)),
            }
        }
        Err(HostError::Unavailable(key.clone()))
    }

    /// Opens a gateway link into a room, starting it if needed.
    pub async fn open_link(&self, key: &RoomKey, tx: mpsc::Sender<FromRoom>) -> Result<LinkSender, HostError> {
        self.open_link_fenced(key, None, &always, tx, None).await
    }

    /// Like [`RoomHost::open_link`]; a room started for it fences its writes with `fence`.
    /// `gateway` names the gateway the link comes from, for [`RoomHandle::inspect`].
    pub async fn open_link_fenced(
        &self,
        key: &RoomKey,
        fence: Option<Fence>,
        admit: Admit<'_>,
        tx: mpsc::Sender<FromRoom>,
        gateway: Option<&str>,
    ) -> Result<LinkSender, HostError> {
        for _ in 0..ATTEMPTS {
            let room = self.room_or_wait(key, fence.clone(), admit).await?;
            let opened = match gateway {
                Some(name) => room.open_link_as(tx.clone(), name).await,
                None => room.open_link(tx.clone()).await,
            };
            match opened {
                Ok(link) => return Ok(link),
                Err(SendError::Gone(_)) => tokio::task::yield_now().await,
                Err(SendError::Overloaded(key)) => return Err(HostError::Overloaded(key)),
            }
        }
        Err(HostError::Unavailable(key.clone()))
    }

    /// Moves the rooms `which` selects away from this process (a shard handed over): they leave
    /// the table at once and finish as [`RoomHandle::move_out`] describes, by `deadline`.
    /// Returns their handles; [`RoomHandle::stopped`] tells when each is done.
    pub async fn move_rooms(
        &self,
        which: impl Fn(&RoomKey) -> bool,
        deadline: tokio::time::Instant,
    ) -> Vec<RoomHandle> {
        let rooms: Vec<RoomHandle> = {
            let mut map = self.inner.rooms.locked();
            let keys: Vec<RoomKey> = map.keys().filter(|k| which(k)).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).map(|e| e.handle).collect()
        };
        // Each room hears it at once (a room with a full inbox waits for space, at most until
        // the deadline, without holding up the others).
        futures::future::join_all(rooms.iter().map(|room| tokio::time::timeout_at(deadline, room.move_out(deadline))))
            .await;
        rooms
    }

    /// Stops the rooms `which` selects (e.g. those of a shard this node no longer owns): they
    /// leave the table at once, so new requests start fresh instances, and their sockets are
    /// closed with `code`.
    pub fn shutdown_rooms(&self, which: impl Fn(&RoomKey) -> bool, code: u16, reason: &str) -> usize {
        let rooms: Vec<RoomHandle> = {
            let mut map = self.inner.rooms.locked();
            let keys: Vec<RoomKey> = map.keys().filter(|k| which(k)).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).map(|e| e.handle).collect()
        };
        let n = rooms.len();
        let reason = reason.to_string();
        for room in rooms {
            let reason = reason.clone();
            tokio::spawn(async move {
                let _ = room.shutdown(code, &reason).await;
            });
        }
        n
    }

    /// The keys of the running rooms.
    pub fn room_keys(&self) -> Vec<RoomKey> {
        self.inner.rooms.locked().keys().cloned().collect()
    }

    /// Stops every room: sockets are closed with 1001 (going away).
    pub async fn shutdown(&self) {
        let rooms: Vec<RoomHandle> = self.inner.rooms.locked().drain().map(|(_, e)| e.handle).collect();
        for room in rooms {
            let _ = room.shutdown(close_code::GOING_AWAY, partyline::client_text::SHUTTING_DOWN).await;
        }
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// Calls from party code to other rooms of this host.
struct HostClient(Weak<Inner>);

#[async_trait]
impl PartiesClient for HostClient {
    async fn fetch(&self, room: RoomKey, req: Request) -> anyhow::Result<Response> {
        let inner = self.0.upgrade().ok_or_else(|| anyhow::anyhow!("server is shutting down"))?;
        let host = RoomHost { inner };
        let req = partyline::web::room_request(&room, req);
        Ok(host.request(&room, req).await?)
    }

    fn has_party(&self, party: &str) -> bool {
        self.0.upgrade().is_some_and(|inner| inner.parties.get(party).is_some())
    }

    async fn socket(&self, room: RoomKey, id: String, req: Request) -> anyhow::Result<RoomSocket> {
        let inner = self.0.upgrade().ok_or_else(|| anyhow::anyhow!("server is shutting down"))?;
        let host = RoomHost { inner };
        let req = partyline::web::room_request(&room, req);
        let handle = host.room_or_wait(&room, None, &always).await?;
        RoomSocket::open(&handle, &id, req).await
    }
}

/// The alarms of every room of a host (`dev`: one process owns every room).
pub struct HostAlarms(pub RoomHost);

#[async_trait]
impl AlarmScope for HostAlarms {
    async fn due(&self, now_ms: i64, limit: usize, parked: &Parked) -> Result<Vec<RoomKey>, StoreError> {
        // Parked rooms may come first: ask for enough to still fill the batch without them.
        let due = self.0.inner.store.due_alarms(now_ms, limit + parked.len()).await?;
        Ok(due.into_iter().map(|(k, _)| k).filter(|k| !parked.contains(k)).take(limit).collect())
    }

    async fn wake(&self, room: &RoomKey) -> Result<(), HostError> {
        let handle = self.0.room(room)?;
        handle.alarm().await.map_err(|_| HostError::Unavailable(room.clone()))
    }
}

#[cfg(test)]
mod tests {
    use partyline::room_socket::SocketEvent;
    use partyline::{Connection, MemoryStore, Message, Party, Room};

    use super::*;

    /// Echoes frames; closes the connection with 4000 on "bye".
    struct Echo;

    impl Party for Echo {
        fn new(_room: Room) -> Self {
            Echo
        }

        async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
            if message == Message::from("bye") {
                sender.close(4000, "done");
            } else {
                sender.send(message);
            }
            Ok(())
        }
    }

    /// Party code's socket to a room of the same host (`dev`) carries frames both ways and the
    /// room's close.
    #[tokio::test]
    async fn a_socket_reaches_a_room_of_this_host() {
        let host = RoomHost::new(HostConfig {
            parties: PartyRegistry::new().with::<Echo>("echo"),
            store: Arc::new(MemoryStore::new()),
            limits: Arc::new(Limits::default()),
            env: Env::default(),
            parties_client: None,
            observer: None,
            on_fenced: None,
        });
        let req = http::Request::builder().uri("/?x=1").body(bytes::Bytes::new()).expect("a request");
        let mut socket = host.client().get("echo", "r").socket("c", req).await.expect("the room takes the socket");
        socket.sender.send(SocketEvent::Message(Message::from("hi")));
        assert_eq!(socket.events.recv().await, Some(SocketEvent::Message(Message::from("hi"))));
        socket.sender.send(SocketEvent::Message(Message::from("bye")));
        assert_eq!(socket.events.recv().await, Some(SocketEvent::Close { code: 4000, reason: "done".into() }));
        assert_eq!(socket.events.recv().await, None, "nothing after the close");
        host.shutdown().await;
    }
}
