//! Reaching rooms anywhere in the cluster over gRPC: a live view of the members (from Redis,
//! refreshed on pub/sub events and every few seconds), one HTTP/2 channel per node, and
//! routing by rendezvous hashing with "not owner" redirects followed a bounded number of times.
//! Gateways use it for every room; nodes use it when party code calls another room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use partyline::placement::{preferred, shard_of};
use partyline::{PartiesClient, PartyRegistry, Request, Response, RoomKey};
use partyline_proto::pb::{self, link_in, link_out, node_client::NodeClient, room_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::redis::{Change, Membership, NodeInfo};
use crate::wire;

/// Redirects followed for one call before giving up.
pub const MAX_HOPS: u32 = 3;
/// How often the member list is re-read even without events.
const VIEW_REFRESH: Duration = Duration::from_secs(2);
/// Depth of a link's outbound queue.
const LINK_QUEUE: usize = 1024;

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
}

impl ClusterClient {
    /// Reads the members once and keeps the view fresh in the background (until every clone is
    /// dropped).
    pub async fn start(cfg: ClientConfig, membership: Membership) -> anyhow::Result<Self> {
        let auth = Auth::new(&cfg.secret)?;
        let inner = Arc::new(Inner {
            cfg,
            auth,
            membership: membership.clone(),
            view: RwLock::new(Arc::new(Vec::new())),
            owners: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            redirects: Default::default(),
        });
        let client = ClusterClient { inner };
        client.refresh().await;
        let events = membership.subscribe().await.ok();
        tokio::spawn(keep_fresh(Arc::downgrade(&client.inner), events));
        Ok(client)
    }

    /// The live nodes, as last read.
    pub fn nodes(&self) -> Arc<Vec<NodeInfo>> {
        self.inner.view.read().unwrap().clone()
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
        let view = self.nodes();
        let id = preferred(shard, view.iter().filter(|n| !n.draining).map(|n| n.id.as_str()))?;
        view.iter().find(|n| n.id == id).cloned()
    }

    /// Where to send a call for `shard` first: the known owner, else the preferred node.
    fn route(&self, shard: u16) -> Option<NodeInfo> {
        if let Some(n) = self.inner.owners.lock().unwrap().get(&shard) {
            return Some(n.clone());
        }
        self.preferred(shard)
    }

    fn remember(&self, shard: u16, node: Option<NodeInfo>) {
        let mut owners = self.inner.owners.lock().unwrap();
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
            let mut channels = self.inner.channels.lock().unwrap();
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| ClientError::Unavailable {
                            room: RoomKey::new("", ""),
                            why: format!("bad node address {addr}: {e}"),
                        })?
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

    /// Opens a link stream to the owner of `room`, following redirects.
    pub async fn open_link(&self, room: &RoomKey) -> Result<OpenedLink, ClientError> {
        let shard = shard_of(room);
        let mut last = String::from("no attempt");
        for hops in 0..=MAX_HOPS {
            let Some(node) = self.route_or_wait(shard, room).await? else { continue };
            let mut client = self.node(&node.addr)?;
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let open = pb::Open { room: Some(wire::room_ref(room)), gateway: self.inner.cfg.name.clone(), hops };
            let _ = tx.send(pb::LinkIn { kind: Some(link_in::Kind::Open(open)) }).await;
            let attempt = async {
                let mut stream = client.link(ReceiverStream::new(rx)).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            };
            let (stream, first) = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(x)) => x,
                Ok(Err(status)) => {
                    last = self.failed(shard, &node, status)?;
                    continue;
                }
                Err(_) => {
                    last = format!("node {} did not answer in time", node.id);
                    self.remember(shard, None);
                    continue;
                }
            };
            match first.and_then(|m| m.kind) {
                Some(link_out::Kind::Opened(o)) => {
                    self.remember(shard, Some(NodeInfo { id: o.node_id.clone(), ..node }));
                    return Ok(OpenedLink { tx, rx: stream, node_id: o.node_id, epoch: o.epoch });
                }
                Some(link_out::Kind::NotOwner(n)) => last = self.redirected(shard, n).await,
                _ => last = format!("node {} closed the link at once", node.id),
            }
        }
        Err(ClientError::Unavailable { room: room.clone(), why: last })
    }

    /// Sends an HTTP request to the owner of `room`, following redirects.
    pub async fn request(&self, room: &RoomKey, req: Request) -> Result<Response, ClientError> {
        let shard = shard_of(room);
        let (parts, body) = req.into_parts();
        let head = wire::head(&parts);
        let mut last = String::from("no attempt");
        for hops in 0..=MAX_HOPS {
            let Some(node) = self.route_or_wait(shard, room).await? else { continue };
            let mut client = self.node(&node.addr)?;
            let msg = pb::RoomRequest {
                room: Some(wire::room_ref(room)),
                head: Some(head.clone()),
                body: body.clone(),
                hops,
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
                    Some(room_response::Kind::NotOwner(n)) => last = self.redirected(shard, n).await,
                    None => last = "empty answer".into(),
                },
                Err(status) => last = self.failed(shard, &node, status)?,
            }
        }
        Err(ClientError::Unavailable { room: room.clone(), why: last })
    }

    /// The node to try for `shard`; waits briefly for members when none is known.
    async fn route_or_wait(&self, shard: u16, room: &RoomKey) -> Result<Option<NodeInfo>, ClientError> {
        for _ in 0..10 {
            if let Some(n) = self.route(shard) {
                return Ok(Some(n));
            }
            self.refresh().await;
            if let Some(n) = self.route(shard) {
                return Ok(Some(n));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClientError::NoNodes(room.clone()))
    }

    async fn redirected(&self, shard: u16, n: pb::NotOwner) -> String {
        self.inner.redirects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.addr.is_empty() {
            // Nobody holds the shard and the node would not take it: let the view settle.
            self.remember(shard, None);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.refresh().await;
            format!("no owner for shard {shard} yet")
        } else {
            let why = format!("redirected to {} ({})", n.node_id, n.addr);
            self.remember(shard, Some(NodeInfo { id: n.node_id, inc: String::new(), addr: n.addr, draining: false }));
            why
        }
    }

    fn failed(&self, shard: u16, node: &NodeInfo, status: tonic::Status) -> Result<String, ClientError> {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Err(ClientError::Unauthenticated { addr: node.addr.clone(), message: status.message().to_string() })
            }
            tonic::Code::NotFound => Err(ClientError::UnknownParty(status.message().to_string())),
            _ => {
                self.remember(shard, None);
                Ok(format!("node {} ({}): {}", node.id, node.addr, status.message()))
            }
        }
    }
}

async fn refresh(inner: &Inner) {
    match inner.membership.live().await {
        Ok(nodes) => {
            let ids: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
            inner.owners.lock().unwrap().retain(|_, n| ids.contains(n.id.as_str()));
            *inner.view.write().unwrap() = Arc::new(nodes);
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
                inner.owners.lock().unwrap().remove(&shard);
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
        let req = crate::host::room_request(&room, req);
        Ok(self.client.request(&room, req).await?)
    }

    fn has_party(&self, party: &str) -> bool {
        self.parties.get(party).is_some()
    }
}
