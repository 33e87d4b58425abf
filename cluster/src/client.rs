//! Reaching rooms anywhere in the cluster over gRPC: a live view of the members (from Redis,
//! refreshed on pub/sub events and every few seconds), one HTTP/2 channel per node, and
//! routing by rendezvous hashing with "not owner" redirects followed a bounded number of times.
//! Gateways use it for every room; nodes use it when party code calls another room.
//!
//! Gateways also watch each node ([`ClusterClient::watch_nodes`]): a ping every half second on
//! the node's channel. A node that answers none for its self-fence time (stopped, frozen,
//! unreachable), that says it is cut from Redis, or whose clock is further off the gateway's
//! than the deadline stamps tolerate is [`Unusable`]: routed around like a node that refused a
//! connection, and its links end ([`ClusterClient::node_down`]) so their clients reconnect to
//! the node that takes its rooms, instead of waiting for HTTP/2 keepalive or its membership
//! record to run out. It is routed to again as soon as it answers well.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use partyline::room_socket::RoomSocket;
use partyline::runtime::placement::{preferred, shard_of};
use partyline::storage::unix_ms;
use partyline::sync::{Lock, ReadWrite};
use partyline::{PartiesClient, PartyRegistry, Request, Response, RoomKey};
use partyline_proto::pb::{self, link_in, link_out, node_client::NodeClient, room_response};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::redis::{Change, LeaseTiming, Leases, Membership, NodeInfo};
use crate::wire;
use futures::future::BoxFuture;

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
/// The longest wait between attempts while the room's lease is held by a node found unusable.
const BACKOFF_HOLDER_UNUSABLE: Duration = Duration::from_millis(100);
/// How long opening a link may wait for a node's answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Clock samples a node is judged on: the one with the shortest round trip counts, so one slow
/// answer (a busy machine) does not refuse a node whose clock is right.
const CLOCK_SAMPLES: usize = 4;
/// What the default clock bound keeps below the margin of the deadline stamps (lease TTL minus
/// self-fence): the time a frame takes from the node to the gateway.
pub const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// The largest clock offset between a node and a gateway that the deadline stamps on the
/// node's frames tolerate with leases of `ttl` and self-fence `fence_after`, less
/// [`CLOCK_SLACK`]: `standard` 1.9 s, `fast` 0.5 s. A gateway further behind a node would
/// accept a frame after the node's lease could have expired in Redis.
pub fn clock_bound_for(ttl: Duration, fence_after: Duration) -> Duration {
    ttl.saturating_sub(fence_after).saturating_sub(CLOCK_SLACK)
}

/// Settings of a gateway's watch on its nodes ([`ClusterClient::watch_nodes`]).
#[derive(Clone, Debug)]
pub struct Liveness {
    /// How often each node is pinged.
    pub every: Duration,
    /// The largest clock offset (plus half the ping's round trip) a node may have; `None`: the
    /// margin of the node's own lease profile, [`clock_bound_for`].
    pub max_clock_offset: Option<Duration>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { every: Duration::from_millis(500), max_clock_offset: None }
    }
}

/// Why a gateway routes around a node its membership view still lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// It answered no ping for this long, its self-fence time or more: stopped, frozen, or
    /// unreachable. It has dropped its shards if it still runs.
    Stalled {
        /// Since the last ping it answered was sent.
        silent: Duration,
    },
    /// It says its last Redis call that succeeded was sent this long ago, past its self-fence
    /// time: it has dropped its shards and can take none.
    CutFromRedis {
        /// The age it reported.
        redis_age: Duration,
    },
    /// Its clock is further off this gateway's than the deadline stamps on its frames tolerate.
    Clock {
        /// Its clock minus this gateway's, in ms (best sample).
        offset_ms: i64,
        /// The measuring error: half that sample's round trip, in ms.
        error_ms: u64,
        /// The bound, in ms.
        bound_ms: u64,
    },
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Stalled { silent } => write!(f, "answered no ping for {:.1}s", silent.as_secs_f64()),
            Unusable::CutFromRedis { redis_age } => {
                write!(f, "cut from Redis (its last Redis call that worked was {:.1}s ago)", redis_age.as_secs_f64())
            }
            Unusable::Clock { offset_ms, error_ms, bound_ms } => {
                write!(
                    f,
                    "its clock is {offset_ms} ms off this gateway's (±{error_ms} ms), past the bound of {bound_ms} ms"
                )
            }
        }
    }
}

/// What the watch on the nodes reports, for metrics.
pub trait NodeObserver: Send + Sync + 'static {
    /// The offset of `node`'s clock from this process's, in ms (node minus this process).
    fn clock_offset(&self, node: &str, offset_ms: i64);
    /// `node` became unusable.
    fn refused(&self, node: &str, why: &Unusable);
    /// `node` left the membership view: forget what was reported about it.
    fn forgotten(&self, node: &str);
}

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
    /// Nodes the watch found unusable (see [`ClusterClient::watch_nodes`]), by node id.
    unusable: Mutex<HashMap<String, Unusable>>,
    /// Node ids whose links must end: found unusable, or gone from the membership.
    down: broadcast::Sender<String>,
    /// Where the watch on the nodes records a `node_refused` event, and as whom (see
    /// [`ClusterClient::record_events`]).
    events: std::sync::OnceLock<(crate::redis::events::Events, String)>,
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
    #[inline(never)]
    pub fn start(
        cfg: ClientConfig,
        membership: Membership,
        leases: Leases,
    ) -> BoxFuture<'static, anyhow::Result<Self>> {
        Box::pin(Self::start_unboxed(cfg, membership, leases))
    }

    async fn start_unboxed(cfg: ClientConfig, membership: Membership, leases: Leases) -> anyhow::Result<Self> {
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
            unusable: Mutex::new(HashMap::new()),
            down: broadcast::channel(256).0,
            events: std::sync::OnceLock::new(),
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
    #[inline(never)]
    pub fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.refresh_unboxed())
    }

    async fn refresh_unboxed(&self) {
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

    /// Nodes this process found unreachable lately, or unusable (left out of routing).
    pub fn suspects(&self) -> Vec<String> {
        let now = Instant::now();
        let mut suspects = self.inner.suspects.locked();
        suspects.retain(|_, (_, until)| *until > now);
        let mut ids: Vec<String> = suspects.keys().cloned().collect();
        drop(suspects);
        for id in self.inner.unusable.locked().keys() {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        ids
    }

    fn is_suspect(&self, id: &str) -> bool {
        self.inner.suspects.locked().get(id).is_some_and(|(_, until)| *until > Instant::now())
            || self.inner.unusable.locked().contains_key(id)
    }

    /// The nodes the watch finds unusable now, and why.
    pub fn unusable(&self) -> Vec<(String, Unusable)> {
        let mut all: Vec<(String, Unusable)> =
            self.inner.unusable.locked().iter().map(|(id, u)| (id.clone(), u.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Resolves when node `id` is found unusable (at once if it is now) or leaves the
    /// membership: a link into one of its rooms must end then, so its clients reconnect to the
    /// node that takes the room instead of waiting on a node that cannot serve them.
    pub async fn node_down(&self, id: &str) {
        let mut down = self.inner.down.subscribe();
        if self.inner.unusable.locked().contains_key(id) {
            return;
        }
        loop {
            match down.recv().await {
                Ok(d) if d == id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.inner.unusable.locked().contains_key(id) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }

    /// From now on, every node the watch on the nodes ([`ClusterClient::watch_nodes`]) routes
    /// around is recorded in the cluster's events (a [`Kind::NodeRefused`] event from `source`,
    /// this process's name), once per refusal, in the background. The first call wins.
    ///
    /// [`Kind::NodeRefused`]: crate::redis::events::Kind::NodeRefused
    pub fn record_events(&self, events: crate::redis::events::Events, source: String) {
        let _ = self.inner.events.set((events, source));
    }

    /// Starts watching every node in the view (until every clone of this client is dropped):
    /// see the module docs and [`Unusable`]. Gateways call it once; `observer` hears each
    /// node's clock offset and every refusal.
    pub fn watch_nodes(&self, liveness: Liveness, observer: Arc<dyn NodeObserver>) {
        tokio::spawn(supervise(Arc::downgrade(&self.inner), liveness, observer));
    }

    /// Records what the watch found about `node` now (`None`: usable); on a change to
    /// unusable, logs it, tells `observer`, and ends the node's links.
    fn judge(&self, node: &NodeInfo, now: Option<Unusable>, observer: &dyn NodeObserver) {
        if now.is_none() {
            // It answers, reaches Redis and keeps time: whatever made it a suspect (a record
            // that expired while it was unusable, as in a Redis outage every node lives
            // through, or a refused connection) is over.
            let cleared = self.inner.suspects.locked().remove(&node.id).is_some();
            if cleared {
                tracing::info!(node = %node.id, addr = %node.addr, "suspected node answers and reaches Redis: routing to it");
            }
        }
        let mut unusable = self.inner.unusable.locked();
        let before = unusable.get(&node.id).cloned();
        match (before, now) {
            (None, None) => {}
            (Some(before), None) => {
                unusable.remove(&node.id);
                drop(unusable);
                tracing::warn!(node = %node.id, addr = %node.addr, was = %before, "node usable again: routing to it");
            }
            (before, Some(now)) => {
                let fresh = before.as_ref().map(std::mem::discriminant) != Some(std::mem::discriminant(&now));
                unusable.insert(node.id.clone(), now.clone());
                drop(unusable);
                if !fresh {
                    return;
                }
                match &now {
                    Unusable::Clock { offset_ms, error_ms, bound_ms } => tracing::error!(
                        node = %node.id, addr = %node.addr, offset_ms, error_ms, bound_ms,
                        "CLOCK OFFSET: node {}'s clock is {offset_ms} ms off this gateway's (±{error_ms} ms), past the \
                         bound of {bound_ms} ms: refusing the node (no room is routed to it, its links are closed) \
                         until its clock is back within the bound. Fix the clocks (NTP) of both hosts \
                         (docs/operations.md, 'Failures and what clients see')",
                        node.id
                    ),
                    other => tracing::warn!(
                        node = %node.id, addr = %node.addr, why = %other,
                        "node unusable ({other}): routing around it and closing its rooms' links"
                    ),
                }
                observer.refused(&node.id, &now);
                if let Some((events, source)) = self.inner.events.get() {
                    let text = format!("routed around node {} ({now}); its links closed", node.id);
                    events.spawn_record(crate::redis::events::Event::new(
                        crate::redis::events::Kind::NodeRefused,
                        source.clone(),
                        text,
                    ));
                }
                self.inner.owners.locked().retain(|_, n| n.id != node.id);
                let _ = self.inner.down.send(node.id.clone());
            }
        }
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
    /// an announcement lost on the way is made up for by the watch on the nodes
    /// ([`ClusterClient::node_down`]) and the link's HTTP/2 keepalive.
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
            // Given up at once when the watch finds the node unusable meanwhile (sent there
            // just before it was found stalled): its room is taken elsewhere, try there.
            let outcome = tokio::select! {
                opened = tokio::time::timeout(OPEN_TIMEOUT, attempt) => Some(opened),
                _ = self.node_down(&node.id) => None,
            };
            match outcome {
                Some(Ok(Ok((stream, first)))) => match first.and_then(|m| m.kind) {
                    Some(link_out::Kind::Opened(o)) => {
                        self.remember(shard, Some(NodeInfo { id: o.node_id.clone(), ..node }));
                        return Ok(OpenedLink { tx, rx: stream, node_id: o.node_id, epoch: o.epoch, shard });
                    }
                    Some(link_out::Kind::NotOwner(n)) => self.redirected(shard, n, &mut route).await,
                    _ => route.failed(format!("node {} closed the link at once", node.id)),
                },
                Some(Ok(Err(status))) => {
                    self.failed(shard, &node, &status)?;
                    route.failed(format!("node {} ({}): {}", node.id, node.addr, status.message()));
                }
                Some(Err(_)) => {
                    // Stalled or partitioned: route around it for a while (its lease, if it
                    // holds one, still has to expire before anyone else serves the room).
                    self.remember(shard, None);
                    self.suspect(&node);
                    route.failed(format!("node {} did not answer in time", node.id));
                }
                None => {
                    self.remember(shard, None);
                    route.failed(format!("node {} is unusable or gone", node.id));
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
            if self.inner.unusable.locked().contains_key(&n.node_id) {
                // Held by a node found stalled or cut from Redis: its lease runs out within its
                // TTL and no announcement says when, so look often (the room is down meanwhile).
                route.backoff = route.backoff.min(BACKOFF_HOLDER_UNUSABLE);
            }
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
        tracing::debug!(room = %room, hops = self.hops, backoff_ms = self.backoff.as_millis() as u64, why = %self.last, "trying the room's owner again");
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
            // A node whose record expired or was withdrawn (or that restarted) is gone: links
            // into its rooms end, so their clients reconnect to whoever takes them.
            let before = inner.view.read_locked().clone();
            for old in before.iter() {
                if !nodes.iter().any(|n| n.id == old.id && n.inc == old.inc) {
                    let _ = inner.down.send(old.id.clone());
                }
            }
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

/// Watches every node in the view (one task each, replaced when the node restarts, stopped
/// when it leaves the view) until the client is dropped.
async fn supervise(inner: Weak<Inner>, liveness: Liveness, observer: Arc<dyn NodeObserver>) {
    let mut watches: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(liveness.every);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else { break };
        let view = strong.view.read_locked().clone();
        for node in view.iter() {
            let which = format!("{} {}", node.inc, node.addr);
            if watches.get(&node.id).is_some_and(|(w, _)| *w == which) {
                continue;
            }
            if let Some((_, task)) = watches.remove(&node.id) {
                task.abort();
            }
            // A new incarnation (or address): what was found about the old one does not hold.
            strong.unusable.locked().remove(&node.id);
            let task = tokio::spawn(watch_node(inner.clone(), node.clone(), liveness.clone(), observer.clone()));
            watches.insert(node.id.clone(), (which, task));
        }
        watches.retain(|id, (which, task)| {
            let keep = view.iter().any(|n| &n.id == id);
            if !keep {
                task.abort();
                // Its record expired, but a stalled node may still hold leases (and other nodes
                // still name it as their holder): keep routing around it, as around a node that
                // refused a connection, until it comes back as a new incarnation.
                if strong.unusable.locked().remove(id).is_some() {
                    let inc = which.split(' ').next().unwrap_or_default().to_string();
                    strong.suspects.locked().insert(id.clone(), (inc, Instant::now() + SUSPECT_FOR));
                }
                observer.forgotten(id);
            }
            keep
        });
    }
    for (_, (_, task)) in watches {
        task.abort();
    }
}

/// One clock sample of a node: its offset, and the error (half the round trip), in ms.
#[derive(Clone, Copy, Debug)]
struct ClockSample {
    offset_ms: i64,
    error_ms: u64,
}

/// Pings `node` every `liveness.every` and judges it on the answers; see [`Unusable`].
async fn watch_node(inner: Weak<Inner>, node: NodeInfo, liveness: Liveness, observer: Arc<dyn NodeObserver>) {
    // Until the node tells its own lease timing, the longer profile's: never a false alarm.
    let mut stall_after = LeaseTiming::STANDARD.fence_after;
    let mut bound = liveness
        .max_clock_offset
        .unwrap_or_else(|| clock_bound_for(LeaseTiming::STANDARD.ttl, LeaseTiming::STANDARD.fence_after));
    let mut last_answer = Instant::now();
    let mut samples: VecDeque<ClockSample> = VecDeque::with_capacity(CLOCK_SAMPLES + 1);
    loop {
        let sent = Instant::now();
        let sent_wall = unix_ms();
        let Some(client) = inner.upgrade().map(|inner| ClusterClient { inner }) else { return };
        // Wait for the answer until the node would count as stalled, at least one interval.
        let wait = (last_answer + stall_after).saturating_duration_since(sent).max(liveness.every);
        let answer = match client.node(&node.addr) {
            Ok(mut c) => {
                let mut req = tonic::Request::new(pb::PingRequest {});
                req.set_timeout(wait);
                match tokio::time::timeout(wait, c.ping(req)).await {
                    Ok(Ok(reply)) => Some(reply.into_inner()),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let verdict = match answer {
            Some(reply) => {
                let recv_wall = unix_ms();
                let rtt = sent.elapsed();
                last_answer = sent;
                let (ttl, fence_after) =
                    (Duration::from_millis(reply.lease_ttl_ms), Duration::from_millis(reply.fence_after_ms));
                if !fence_after.is_zero() && fence_after < ttl {
                    stall_after = fence_after;
                    if liveness.max_clock_offset.is_none() {
                        bound = clock_bound_for(ttl, fence_after);
                    }
                }
                let offset_ms = reply.unix_ms as i64 - (sent_wall as i64 + recv_wall as i64) / 2;
                samples.push_back(ClockSample { offset_ms, error_ms: (rtt / 2).as_millis() as u64 });
                if samples.len() > CLOCK_SAMPLES {
                    samples.pop_front();
                }
                let best = samples.iter().min_by_key(|s| s.error_ms).copied().expect("a sample");
                observer.clock_offset(&node.id, best.offset_ms);
                let bound_ms = bound.as_millis() as u64;
                let redis_age = Duration::from_millis(reply.redis_age_ms);
                if samples.len() == CLOCK_SAMPLES && best.offset_ms.unsigned_abs() + best.error_ms > bound_ms {
                    Some(Some(Unusable::Clock { offset_ms: best.offset_ms, error_ms: best.error_ms, bound_ms }))
                } else if redis_age > stall_after {
                    Some(Some(Unusable::CutFromRedis { redis_age }))
                } else {
                    Some(None)
                }
            }
            None if last_answer.elapsed() >= stall_after => {
                Some(Some(Unusable::Stalled { silent: last_answer.elapsed() }))
            }
            None => None,
        };
        if let Some(now) = verdict {
            client.judge(&node, now, observer.as_ref());
        }
        drop(client);
        tokio::time::sleep_until(sent + liveness.every).await;
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

    /// A socket to the room wherever it lives, over a link stream of its own; see
    /// [`crate::room_socket`] (it does not follow the room when the room moves).
    async fn socket(&self, room: RoomKey, id: String, req: Request) -> anyhow::Result<RoomSocket> {
        let req = partyline::web::room_request(&room, req);
        crate::room_socket::open(&self.client, room, id, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_bound_is_the_stamp_margin_less_the_slack() {
        let standard = LeaseTiming::STANDARD;
        let fast = LeaseTiming::FAST;
        assert_eq!(clock_bound_for(standard.ttl, standard.fence_after), Duration::from_millis(1900));
        assert_eq!(clock_bound_for(fast.ttl, fast.fence_after), Duration::from_millis(500));
    }

    #[test]
    fn why_a_node_is_unusable_reads_well() {
        let clock = Unusable::Clock { offset_ms: -1200, error_ms: 3, bound_ms: 500 };
        assert_eq!(clock.to_string(), "its clock is -1200 ms off this gateway's (±3 ms), past the bound of 500 ms");
        let stalled = Unusable::Stalled { silent: Duration::from_millis(2450) };
        assert_eq!(stalled.to_string(), "answered no ping for 2.5s");
    }
}
