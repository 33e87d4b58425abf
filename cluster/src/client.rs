//! Reaching rooms anywhere in the cluster over gRPC: a live view of the members (from Redis,
//! refreshed on pub/sub events and every few seconds), one HTTP/2 channel per node, and
//! routing by rendezvous hashing with "not owner" redirects followed a bounded number of times.
//! Gateways use it for every room; nodes use it when party code calls another room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use partyline::runtime::placement::{preferred, shard_of};
use partyline::sync::{Lock, ReadWrite};
use partyline::{PartiesClient, PartyRegistry, Request, Response, RoomKey};
use partyline_proto::pb::{self, link_in, link_out, node_client::NodeClient, room_response};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::redis::{Change, Leases, Membership, NodeInfo};
use crate::wire;

/// How often the member list is re-read even without events.
const VIEW_REFRESH: Duration = Duration::from_secs(2);
/// Depth of a link's outbound queue.
const LINK_QUEUE: usize = 1024;
/// How long a node that refused a connection is left out of routing (unless it comes back
/// with a new incarnation first).
const SUSPECT_FOR: Duration = Duration::from_secs(10);
/// Waits between attempts while a room is between owners: first and longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How long opening a link may wait for a node's answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call could not reach its room.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No live node is known (the cluster is starting or down).
    #[error("no live node can take room {0}")]
    NoNodes(RoomKey),
    /// The owner did not answer, or redirects did not converge.
    #[error("room {room} is unavailable: {why}")]
    Unavailable {
        /// The room.
        room: RoomKey,
        /// The last failure.
        why: String,
    },
    /// The node refused our credentials: the cluster secrets differ.
    #[error("node {addr} refused the cluster secret: {message}")]
    Unauthenticated {
        /// The node.
        addr: String,
        /// Its message.
        message: String,
    },
    /// The node does not know the party (nodes and gateways run different party sets).
    #[error("Party {0} not found")]
    UnknownParty(String),
    /// The room or its node is at a limit (the room's queue stayed full, or the node hosts as
    /// many rooms as it may): try again later, elsewhere makes no difference.
    #[error("{0}")]
    Busy(String),
    /// Every live node refuses to serve rooms: Redis lost the cluster's data.
    #[error("every node refuses to serve room {0}: Redis lost the cluster's data")]
    Refused(RoomKey),
}

/// An authenticated client of one node.
pub type Client = NodeClient<InterceptedService<Channel, Auth>>;

/// Adds the cluster secret to every call.
#[derive(Clone)]
pub struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl Auth {
    /// The interceptor for `secret`.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let value = MetadataValue::try_from(format!("Bearer {secret}"))
            .map_err(|_| anyhow::anyhow!("the cluster secret must be printable ASCII"))?;
        Ok(Auth(value))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(partyline_proto::AUTH_HEADER, self.0.clone());
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

/// Settings of a cluster client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Name sent in `Open` (for node logs).
    pub name: String,
    /// The cluster secret.
    pub secret: String,
    /// Largest gRPC message, each way.
    pub max_grpc_message_bytes: usize,
    /// Deadline of one HTTP request to a room.
    pub request_timeout: Duration,
    /// How long a call keeps looking for a room's owner (redirects, a room between owners
    /// during a move, a crashed owner's lease running out) before it gives up.
    pub route_timeout: Duration,
    /// TLS to nodes: only nodes with a certificate from the cluster CA for the dialled address
    /// get the secret.
    pub tls: Option<crate::tls::ClusterTls>,
}

impl ClientConfig {
    /// How long to keep looking for an owner with leases of this time to live: long enough for
    /// a crashed owner's lease to expire, plus slack.
    pub fn route_timeout_for(lease_ttl: Duration) -> Duration {
        lease_ttl + Duration::from_secs(5)
    }
}

/// The cluster as seen from one process. Cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    auth: Auth,
    membership: Membership,
    view: RwLock<Arc<Vec<NodeInfo>>>,
    /// Owner hints per shard, from `Opened` / `NotOwner` answers.
    owners: Mutex<HashMap<u16, NodeInfo>>,
    channels: Mutex<HashMap<String, Channel>>,
    redirects: std::sync::atomic::AtomicU64,
    /// Nodes that refused a connection: node id -> (incarnation seen then, until when).
    suspects: Mutex<HashMap<String, (String, Instant)>>,
    /// Shard leases (who holds a shard now).
    leases: Leases,
    /// Lease grants and releases as announced (`u16::MAX`: events may have been missed).
    owner_changes: broadcast::Sender<u16>,
}

/// A link stream opened to a room's owner.
pub struct OpenedLink {
    /// Gateway events go here.
    pub tx: mpsc::Sender<pb::LinkIn>,
    /// The room's messages come from here.
    pub rx: tonic::Streaming<pb::LinkOut>,
    /// The owner's node id.
    pub node_id: String,
    /// The lease epoch the owner holds the room's shard at.
    pub epoch: u64,
    /// The room's shard.
    pub shard: u16,
}

impl ClusterClient {
    /// Reads the members once and keeps the view fresh in the background (until every clone is
    /// dropped).
    pub async fn start(cfg: ClientConfig, membership: Membership, leases: Leases) -> anyhow::Result<Self> {
        let auth = Auth::new(&cfg.secret)?;
        let inner = Arc::new(Inner {
            cfg,
            auth,
            membership: membership.clone(),
            view: RwLock::new(Arc::new(Vec::new())),
            owners: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            redirects: Default::default(),
            suspects: Mutex::new(HashMap::new()),
            leases,
            owner_changes: broadcast::channel(1024).0,
        });
        let client = ClusterClient { inner };
        client.refresh().await;
        let events = membership.subscribe().await.ok();
        tokio::spawn(keep_fresh(Arc::downgrade(&client.inner), events));
        Ok(client)
    }

    /// The live nodes, as last read.
    pub fn nodes(&self) -> Arc<Vec<NodeInfo>> {
        self.inner.view.read_locked().clone()
    }

    /// Redirects followed so far (a routing-quality counter).
    pub fn redirects(&self) -> u64 {
        self.inner.redirects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Re-reads the member list now.
    pub async fn refresh(&self) {
        refresh(&self.inner).await;
    }

    /// The node rendezvous hashing prefers for `shard` among live, non-draining members.
    pub fn preferred(&self, shard: u16) -> Option<NodeInfo> {
        self.preferred_avoiding(shard, &[])
    }

    /// Like [`ClusterClient::preferred`], leaving out the nodes in `avoid`.
    pub fn preferred_avoiding(&self, shard: u16, avoid: &[String]) -> Option<NodeInfo> {
        let view = self.nodes();
        let candidates =
            view.iter().filter(|n| !n.draining && !n.refusing && !avoid.contains(&n.id)).map(|n| n.id.as_str());
        let id = preferred(shard, candidates)?;
        view.iter().find(|n| n.id == id).cloned()
    }

    /// Nodes this process found unreachable lately (left out of routing).
    pub fn suspects(&self) -> Vec<String> {
        let now = Instant::now();
        let mut suspects = self.inner.suspects.locked();
        suspects.retain(|_, (_, until)| *until > now);
        suspects.keys().cloned().collect()
    }

    fn is_suspect(&self, id: &str) -> bool {
        self.inner.suspects.locked().get(id).is_some_and(|(_, until)| *until > Instant::now())
    }

    /// A node refused a connection: it is dead or restarting. Left out of routing until it
    /// comes back with a new incarnation or [`SUSPECT_FOR`] passes.
    fn suspect(&self, node: &NodeInfo) {
        let inc = self.nodes().iter().find(|n| n.id == node.id).map(|n| n.inc.clone()).unwrap_or_default();
        tracing::info!(node = %node.id, addr = %node.addr, "node unreachable; routing around it");
        self.inner.suspects.locked().insert(node.id.clone(), (inc, Instant::now() + SUSPECT_FOR));
        self.inner.owners.locked().retain(|_, n| n.id != node.id);
    }

    /// Where to send a call for `shard` first: the known owner, else the preferred node.
    fn route(&self, shard: u16) -> Option<NodeInfo> {
        if let Some(n) = self.inner.owners.locked().get(&shard) {
            if !self.is_suspect(&n.id) {
                return Some(n.clone());
            }
        }
        self.preferred_avoiding(shard, &self.suspects())
    }

    /// Resolves once `shard`'s lease is no longer held under `epoch`: the node a link went to has
    /// lost the room (it stalled past its lease, or was cut from Redis, and another node took
    /// the shard). Watches the lease announcements, so it costs nothing while nothing changes;
    /// an announcement lost on the way is made up for by the link's HTTP/2 keepalive.
    pub async fn lost(&self, shard: u16, epoch: u64) {
        let mut changes = self.inner.owner_changes.subscribe();
        loop {
            match changes.recv().await {
                Ok(s) if s != shard && s != u16::MAX => continue,
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
                _ => {}
            }
            match self.inner.leases.owner(shard).await {
                Ok(Some(l)) if l.epoch == epoch => continue,
                // Released (a graceful move: the room says so itself), or not readable now.
                Ok(None) | Err(_) => continue,
                Ok(Some(_)) => return,
            }
        }
    }

    /// Forgets where `shard` lives (its room moved or its owner failed).
    pub fn forget(&self, shard: u16) {
        self.inner.owners.locked().remove(&shard);
    }

    fn remember(&self, shard: u16, node: Option<NodeInfo>) {
        let mut owners = self.inner.owners.locked();
        match node {
            Some(n) => {
                owners.insert(shard, n);
            }
            None => {
                owners.remove(&shard);
            }
        }
    }

    /// An authenticated client of the node at `addr` (channels are shared and reconnect by
    /// themselves).
    pub fn node(&self, addr: &str) -> Result<Client, ClientError> {
        let channel = {
            let mut channels = self.inner.channels.locked();
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let bad = |e: tonic::transport::Error| ClientError::Unavailable {
                        room: RoomKey::new("", ""),
                        why: format!("bad node address {addr}: {e}"),
                    };
                    let scheme = if self.inner.cfg.tls.is_some() { "https" } else { "http" };
                    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(bad)?;
                    if let Some(tls) = &self.inner.cfg.tls {
                        endpoint = endpoint.tls_config(tls.client()).map_err(bad)?;
                    }
                    let endpoint = endpoint
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(5))
                        .keep_alive_timeout(Duration::from_secs(3))
                        .keep_alive_while_idle(true);
                    let c = endpoint.connect_lazy();
                    channels.insert(addr.to_string(), c.clone());
                    c
                }
            }
        };
        let n = self.inner.cfg.max_grpc_message_bytes;
        Ok(NodeClient::with_interceptor(channel, self.inner.auth.clone())
            .max_decoding_message_size(n)
            .max_encoding_message_size(n))
    }

    /// Opens a link stream to the owner of `room`, following redirects and waiting out a room
    /// between owners (a move, a crashed owner's lease), up to the route timeout. Opening a
    /// link runs nothing of the party's, so any failure may be retried.
    pub async fn open_link(&self, room: &RoomKey) -> Result<OpenedLink, ClientError> {
        let shard = shard_of(room);
        let mut route = Route::new(self.inner.cfg.route_timeout);
        loop {
            let node = self.route_or_wait(shard, room, &route).await?;
            let mut client = self.node(&node.addr)?;
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let open = pb::Open {
                room: Some(wire::room_ref(room)),
                gateway: self.inner.cfg.name.clone(),
                hops: route.hops,
                avoid: self.suspects(),
            };
            let _ = tx.send(pb::LinkIn { kind: Some(link_in::Kind::Open(open)) }).await;
            let attempt = async {
                let mut stream = client.link(ReceiverStream::new(rx)).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            };
            match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
                Ok(Ok((stream, first))) => match first.and_then(|m| m.kind) {
                    Some(link_out::Kind::Opened(o)) => {
                        self.remember(shard, Some(NodeInfo { id: o.node_id.clone(), ..node }));
                        return Ok(OpenedLink { tx, rx: stream, node_id: o.node_id, epoch: o.epoch, shard });
                    }
                    Some(link_out::Kind::NotOwner(n)) => self.redirected(shard, n, &mut route).await,
                    _ => route.failed(format!("node {} closed the link at once", node.id)),
                },
                Ok(Err(status)) => {
                    self.failed(shard, &node, &status)?;
                    route.failed(format!("node {} ({}): {}", node.id, node.addr, status.message()));
                }
                Err(_) => {
                    // Stalled or partitioned: route around it for a while (its lease, if it
                    // holds one, still has to expire before anyone else serves the room).
                    self.remember(shard, None);
                    self.suspect(&node);
                    route.failed(format!("node {} did not answer in time", node.id));
                }
            }
            route.pause(room).await?;
        }
    }

    /// Sends an HTTP request to the owner of `room`, following redirects. The request runs at
    /// most once: it is sent again only after an answer that proves it did not reach the room
    /// (a redirect, or a connection that failed before anything was sent); any other failure
    /// is the caller's (the room may have run it).
    pub async fn request(&self, room: &RoomKey, req: Request) -> Result<Response, ClientError> {
        let shard = shard_of(room);
        let (parts, body) = req.into_parts();
        let head = wire::head(&parts);
        let mut route = Route::new(self.inner.cfg.route_timeout);
        loop {
            let node = self.route_or_wait(shard, room, &route).await?;
            let mut client = self.node(&node.addr)?;
            let msg = pb::RoomRequest {
                room: Some(wire::room_ref(room)),
                head: Some(head.clone()),
                body: body.clone(),
                hops: route.hops,
                avoid: self.suspects(),
            };
            let mut call = tonic::Request::new(msg);
            call.set_timeout(self.inner.cfg.request_timeout);
            match client.request(call).await {
                Ok(res) => match res.into_inner().kind {
                    Some(room_response::Kind::Response(r)) => {
                        self.remember(shard, Some(node));
                        return wire::http_response(r)
                            .map_err(|e| ClientError::Unavailable { room: room.clone(), why: e.to_string() });
                    }
                    Some(room_response::Kind::NotOwner(n)) => self.redirected(shard, n, &mut route).await,
                    None => return Err(ClientError::Unavailable { room: room.clone(), why: "empty answer".into() }),
                },
                Err(status) => {
                    self.failed(shard, &node, &status)?;
                    let why = format!("node {} ({}): {}", node.id, node.addr, status.message());
                    if !never_sent(&status) {
                        return Err(ClientError::Unavailable { room: room.clone(), why });
                    }
                    route.failed(why);
                }
            }
            route.pause(room).await?;
        }
    }

    /// The node to try for `shard`; waits (within the route's time) for members when none is
    /// known.
    async fn route_or_wait(&self, shard: u16, room: &RoomKey, route: &Route) -> Result<NodeInfo, ClientError> {
        loop {
            let view = self.nodes();
            if !view.is_empty() && view.iter().all(|n| n.refusing) {
                return Err(ClientError::Refused(room.clone()));
            }
            if let Some(n) = self.route(shard) {
                return Ok(n);
            }
            self.refresh().await;
            if let Some(n) = self.route(shard) {
                return Ok(n);
            }
            if route.expired() {
                return Err(ClientError::NoNodes(room.clone()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn redirected(&self, shard: u16, n: pb::NotOwner, route: &mut Route) {
        self.inner.redirects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        route.hops += 1;
        if n.addr.is_empty() || self.is_suspect(&n.node_id) {
            // Between owners, no next owner known: wait for the view to settle.
            self.remember(shard, None);
            self.refresh().await;
            route.failed(format!("room between owners (shard {shard})"));
        } else if n.retry {
            // Between owners: try the node it suggests after a short wait.
            let why = format!("room between owners (shard {shard}), next try {}", n.node_id);
            self.remember(shard, Some(NodeInfo { id: n.node_id, addr: n.addr, ..NodeInfo::default() }));
            route.failed(why);
        } else {
            route.redirected(format!("redirected to {} ({})", n.node_id, n.addr));
            let node = NodeInfo { id: n.node_id, addr: n.addr, ..NodeInfo::default() };
            self.remember(shard, Some(node));
        }
    }

    /// Handles a failed call: errors that retrying cannot fix are returned; a node that refused
    /// the connection is routed around.
    fn failed(&self, shard: u16, node: &NodeInfo, status: &tonic::Status) -> Result<(), ClientError> {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Err(ClientError::Unauthenticated { addr: node.addr.clone(), message: status.message().to_string() })
            }
            tonic::Code::NotFound => Err(ClientError::UnknownParty(status.message().to_string())),
            tonic::Code::ResourceExhausted => Err(ClientError::Busy(status.message().to_string())),
            _ => {
                self.remember(shard, None);
                if never_sent(status) {
                    self.suspect(node);
                }
                Ok(())
            }
        }
    }
}

/// Whether a failed call provably never reached the node: the connection could not be made.
fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = e.source();
    }
    false
}

/// One call's search for a room's owner: redirects followed, time left, and the wait between
/// attempts while the room is between owners.
struct Route {
    deadline: Instant,
    hops: u32,
    backoff: Duration,
    /// Redirects in a row without a pause (a loop between views that disagree).
    bounces: u32,
    last: String,
}

impl Route {
    fn new(timeout: Duration) -> Self {
        Route { deadline: Instant::now() + timeout, hops: 0, backoff: Duration::ZERO, bounces: 0, last: String::new() }
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// A redirect to a live owner: try it at once (a few times in a row at most).
    fn redirected(&mut self, why: String) {
        self.bounces += 1;
        if self.bounces <= 3 {
            self.backoff = Duration::ZERO;
        } else if self.backoff.is_zero() {
            self.backoff = BACKOFF_FIRST;
        }
        self.last = why;
    }

    /// An attempt that must be retried after a wait.
    fn failed(&mut self, why: String) {
        self.bounces = 0;
        self.backoff = if self.backoff.is_zero() { BACKOFF_FIRST } else { (self.backoff * 2).min(BACKOFF_MAX) };
        self.last = why;
    }

    /// Waits before the next attempt; fails once the time is up.
    async fn pause(&self, room: &RoomKey) -> Result<(), ClientError> {
        if self.expired() {
            return Err(ClientError::Unavailable { room: room.clone(), why: self.last.clone() });
        }
        if !self.backoff.is_zero() {
            let wake = (Instant::now() + self.backoff).min(self.deadline);
            tokio::time::sleep_until(wake).await;
        }
        Ok(())
    }
}

async fn refresh(inner: &Inner) {
    match inner.membership.live().await {
        Ok(nodes) => {
            let ids: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
            inner.owners.locked().retain(|_, n| ids.contains(n.id.as_str()));
            // A suspect that came back as a new incarnation (restarted) is routed to again.
            inner.suspects.locked().retain(|id, (inc, _)| {
                nodes.iter().find(|n| &n.id == id).is_none_or(|n| inc.is_empty() || &n.inc == inc)
            });
            *inner.view.write_locked() = Arc::new(nodes);
        }
        Err(e) => tracing::warn!(error = %e, "could not read the cluster members"),
    }
}

async fn keep_fresh(inner: Weak<Inner>, mut events: Option<mpsc::Receiver<Change>>) {
    let mut tick = tokio::time::interval(VIEW_REFRESH);
    loop {
        let change = match events.as_mut() {
            Some(rx) => tokio::select! {
                c = rx.recv() => match c { Some(c) => Some(c), None => { events = None; None } },
                _ = tick.tick() => None,
            },
            None => {
                tick.tick().await;
                None
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        match change {
            Some(Change::Owner(shard)) => {
                inner.owners.locked().remove(&shard);
                let _ = inner.owner_changes.send(shard);
            }
            Some(Change::Resync) => {
                let _ = inner.owner_changes.send(u16::MAX);
                refresh(&inner).await
            }
            _ => refresh(&inner).await,
        }
    }
}

/// Party code's access to other rooms, through the cluster.
pub struct ClusterParties {
    /// The client.
    pub client: ClusterClient,
    /// The parties that exist.
    pub parties: PartyRegistry,
}

#[async_trait]
impl PartiesClient for ClusterParties {
    async fn fetch(&self, room: RoomKey, req: Request) -> anyhow::Result<Response> {
        let req = partyline::web::room_request(&room, req);
        Ok(self.client.request(&room, req).await?)
    }

    fn has_party(&self, party: &str) -> bool {
        self.parties.get(party).is_some()
    }
}
