//! The room as party code sees it: its identity, environment, storage, connections, and ways to
//! reach them and other rooms.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{ConnKey, ConnShared, Connection};
use crate::limits::Limits;
use crate::message::Message;
use crate::room_socket::RoomSocket;
use crate::runtime::gate::Gate;
use crate::runtime::handle::Answer;
use crate::runtime::link::{FromRoom, SocketId};
use crate::storage::Storage;
use crate::store::RoomKey;
use crate::sync::Lock;
use crate::web::{Request, Response};

/// Identifies one gateway link into a room (one per gateway that has sockets in it).
pub type LinkId = u64;

/// Variables given to parties (`--var KEY=VALUE`), like PartyKit's `room.env`.
#[derive(Clone, Debug, Default)]
pub struct Env(Arc<BTreeMap<String, String>>);

impl Env {
    /// An environment with these variables.
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        Env(Arc::new(vars))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every variable.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// Calls rooms of any party over HTTP from party code, bypassing the static hooks (as
/// PartyKit's `context.parties` does). Implemented by the hosting runtime.
#[async_trait]
pub trait PartiesClient: Send + Sync + 'static {
    /// Sends `req` to the room's `on_request` and returns its response.
    async fn fetch(&self, room: RoomKey, req: Request) -> anyhow::Result<Response>;
    /// Whether a party of this name exists.
    fn has_party(&self, party: &str) -> bool;
    /// Connects to the room as client `id`, `req` being the upgrade request (its path appended
    /// to the room's URL, see [`crate::web::room_request`]). Runtimes whose rooms are not
    /// reachable this way refuse it.
    async fn socket(&self, room: RoomKey, id: String, req: Request) -> anyhow::Result<RoomSocket> {
        let _ = (id, req);
        anyhow::bail!("connecting to room {room} from a room is not supported here")
    }
}

/// Access to other rooms: `room.parties().get("counter", "lobby").fetch(req)`.
#[derive(Clone)]
pub struct Parties {
    client: Arc<dyn PartiesClient>,
    /// The calling room's storage: its writes are made durable before a request leaves.
    gate: Option<Storage>,
}

impl Parties {
    /// Wraps a runtime's client.
    pub fn new(client: Arc<dyn PartiesClient>) -> Self {
        Parties { client, gate: None }
    }

    /// The same client for a room whose outgoing requests must wait for its writes: a request
    /// leaves only once every write the room made before it is durable, like a frame (the
    /// output gate), so the other room never acts on a write that could still be refused.
    pub(crate) fn gated_by(self, storage: Storage) -> Self {
        Parties { gate: Some(storage), ..self }
    }

    /// A stub for room `room` of party `party`.
    pub fn get(&self, party: &str, room: &str) -> RoomStub {
        RoomStub { parties: self.clone(), key: RoomKey::new(party, room) }
    }
}

/// A handle on another room, for HTTP calls to its `on_request`.
#[derive(Clone)]
pub struct RoomStub {
    parties: Parties,
    key: RoomKey,
}

impl RoomStub {
    /// Sends `req` to the room. The request's path (if any) is appended to the room's URL, as in
    /// PartyKit's `stub.fetch("/path")`. From a room, the request waits until the caller's
    /// writes so far are durable (and fails if they were refused).
    pub async fn fetch(&self, req: Request) -> anyhow::Result<Response> {
        let client = &self.parties.client;
        if !client.has_party(&self.key.party) {
            anyhow::bail!("Party {} not found", self.key.party);
        }
        if let Some(storage) = &self.parties.gate {
            storage.sync().await?;
        }
        client.fetch(self.key.clone(), req).await
    }

    /// Connects to the room as client `id` (PartyKit's `stub.socket()`), `req` being the upgrade
    /// request. From a room, the connection is made once the caller's writes so far are
    /// durable, and each frame it sends waits for the writes made before it.
    pub async fn socket(&self, id: &str, req: Request) -> anyhow::Result<RoomSocket> {
        let client = &self.parties.client;
        if !client.has_party(&self.key.party) {
            anyhow::bail!("Party {} not found", self.key.party);
        }
        if let Some(storage) = &self.parties.gate {
            storage.sync().await?;
        }
        let mut socket = client.socket(self.key.clone(), id.to_string(), req).await?;
        if let Some(storage) = &self.parties.gate {
            socket.sender.gated_by(storage.clone());
        }
        Ok(socket)
    }
}

/// Work the room runtime has to do after a handler returns.
pub(crate) enum Outbound {
    /// A message for one gateway link.
    Link(LinkId, FromRoom),
    /// A response to an HTTP request (or a flush).
    Response(oneshot::Sender<Answer>, Box<Response>),
    /// A new gateway link: its messages go to this sender.
    OpenLink(LinkId, mpsc::Sender<FromRoom>),
    /// A gateway link closed.
    CloseLink(LinkId),
}

#[derive(Default)]
pub(crate) struct ConnTable {
    pub(crate) by_key: HashMap<ConnKey, Arc<ConnShared>>,
    /// The one connection per id (a newer one with the same id replaces the older).
    pub(crate) by_id: HashMap<String, ConnKey>,
    pub(crate) per_link: HashMap<LinkId, usize>,
    pub(crate) next_order: u64,
}

impl ConnTable {
    pub(crate) fn insert(&mut self, conn: Arc<ConnShared>) {
        self.by_id.insert(conn.id.clone(), conn.key);
        *self.per_link.entry(conn.key.0).or_default() += 1;
        self.by_key.insert(conn.key, conn);
    }

    pub(crate) fn remove(&mut self, key: &ConnKey) -> Option<Arc<ConnShared>> {
        let conn = self.by_key.remove(key)?;
        if self.by_id.get(&conn.id) == Some(key) {
            self.by_id.remove(&conn.id);
        }
        if let Some(n) = self.per_link.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_link.remove(&key.0);
            }
        }
        conn.open.store(false, Ordering::Release);
        Some(conn)
    }

    pub(crate) fn get_by_id(&self, id: &str) -> Option<&Arc<ConnShared>> {
        self.by_id.get(id).and_then(|k| self.by_key.get(k))
    }
}

pub(crate) struct RoomShared {
    pub(crate) key: RoomKey,
    pub(crate) env: Env,
    pub(crate) limits: Arc<Limits>,
    pub(crate) storage: Storage,
    pub(crate) parties: Parties,
    pub(crate) conns: Mutex<ConnTable>,
    /// Connections the party closed; the runtime runs `on_close` for them after the handler.
    pub(crate) closed_by_party: Mutex<Vec<Arc<ConnShared>>>,
    pub(crate) gate: Arc<Gate>,
    /// See [`Room::instance`].
    pub(crate) instance: u64,
}

impl RoomShared {
    pub(crate) fn emit(&self, item: Outbound) {
        let seq = self.storage.gate_seq();
        self.gate.emit(seq, item);
    }

    pub(crate) fn emit_link(&self, link: LinkId, msg: FromRoom) {
        self.emit(Outbound::Link(link, msg));
    }

    pub(crate) fn close_connection(&self, conn: &Arc<ConnShared>, code: u16, reason: &str) {
        let removed = self.conns.locked().remove(&conn.key);
        if let Some(conn) = removed {
            self.emit_link(conn.key.0, FromRoom::Close { sid: conn.key.1, code, reason: reason.to_string() });
            self.closed_by_party.locked().push(conn);
        }
    }

    pub(crate) fn broadcast(&self, msg: Message, without: &[&str]) {
        if msg.len() > self.limits.max_outbound_message_bytes {
            let max = self.limits.max_outbound_message_bytes;
            tracing::error!(room = %self.key, len = msg.len(), max, "broadcast dropped: over the outbound message limit");
            return;
        }
        let table = self.conns.locked();
        let mut except: HashMap<LinkId, Vec<SocketId>> = HashMap::new();
        for id in without {
            if let Some((link, sid)) = table.by_id.get(*id) {
                except.entry(*link).or_default().push(*sid);
            }
        }
        for (link, count) in &table.per_link {
            let mut skip = except.remove(link).unwrap_or_default();
            skip.sort_unstable();
            skip.dedup();
            if skip.len() >= *count {
                continue;
            }
            self.emit_link(*link, FromRoom::Broadcast { msg: msg.clone(), except: skip });
        }
    }
}

/// One live room: what a party instance is constructed with and keeps. Cheap to clone.
#[derive(Clone)]
pub struct Room {
    pub(crate) shared: Arc<RoomShared>,
}

impl Room {
    /// The room id: the URL path segment after the party name, not percent-decoded.
    pub fn id(&self) -> &str {
        &self.shared.key.room
    }

    /// A number telling this run of the room apart from its other runs in this process: a room
    /// that stopped and started again (idle, moved away and back, restarted) gets a new one; a
    /// room that hibernates keeps it. Unique in the process.
    pub fn instance(&self) -> u64 {
        self.shared.instance
    }

    /// The party name (`main` for `/party/:room`).
    pub fn name(&self) -> &str {
        &self.shared.key.party
    }

    /// The room's key (party and id).
    pub fn key(&self) -> &RoomKey {
        &self.shared.key
    }

    /// Variables set for parties.
    pub fn env(&self) -> &Env {
        &self.shared.env
    }

    /// The room's durable storage.
    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Sends `msg` to every connection in the room. A frame over the outbound limit
    /// (`Limits::max_outbound_message_bytes`) is dropped and logged.
    pub fn broadcast(&self, msg: impl Into<Message>) {
        self.shared.broadcast(msg.into(), &[]);
    }

    /// Like [`Room::broadcast`], leaving out the connections whose id is in `without`
    /// (PartyKit's `broadcast(msg, without)`).
    pub fn broadcast_without(&self, msg: impl Into<Message>, without: &[&str]) {
        self.shared.broadcast(msg.into(), without);
    }

    /// Like [`Room::broadcast`], but a frame over the outbound limit is an error for the party
    /// to handle (nothing is sent).
    pub fn try_broadcast(&self, msg: impl Into<Message>, without: &[&str]) -> Result<(), crate::connection::TooLarge> {
        let msg = msg.into();
        let max = self.shared.limits.max_outbound_message_bytes;
        if msg.len() > max {
            return Err(crate::connection::TooLarge { len: msg.len(), max });
        }
        self.shared.broadcast(msg, without);
        Ok(())
    }

    /// The connection with this id, if it is in the room.
    pub fn get_connection(&self, id: &str) -> Option<Connection> {
        let table = self.shared.conns.locked();
        let shared = table.get_by_id(id)?.clone();
        Some(Connection { shared, room: self.shared.clone() })
    }

    /// The connections in the room, in join order; with a tag, only those that carry it.
    pub fn get_connections(&self, tag: Option<&str>) -> Vec<Connection> {
        let table = self.shared.conns.locked();
        let mut conns: Vec<Arc<ConnShared>> = table
            .by_key
            .values()
            .filter(|c| tag.is_none_or(|t| c.tags.locked().iter().any(|x| x == t)))
            .cloned()
            .collect();
        conns.sort_by_key(|c| c.order);
        conns.into_iter().map(|shared| Connection { shared, room: self.shared.clone() }).collect()
    }

    /// How many connections are in the room.
    pub fn connection_count(&self) -> usize {
        self.shared.conns.locked().by_key.len()
    }

    /// Other rooms, for HTTP calls to their `on_request`.
    pub fn parties(&self) -> &Parties {
        &self.shared.parties
    }
}
