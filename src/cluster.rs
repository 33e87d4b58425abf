//! The cluster processes: `partyline gateway` (the edge, routing to nodes over gRPC) and the
//! glue between the gateway's `RoomRouter` seam and the node crate's cluster client.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::future::BoxFuture;
use partyline::link::{close_code, FromRoom, ToRoom};
use partyline::sync::Lock;
use partyline::{Env, Limits, Parties, PartyRegistry, Request, Response, RoomKey};
use partyline_gateway::{Gateway, GatewayConfig, OpenLink, RoomLink, RoomRouter, RouteError};
use partyline_node::client::{ClientConfig, ClientError, ClusterClient, ClusterParties};
use partyline_node::redis::{Redis, RedisConfig};
use partyline_node::server::max_grpc_message_bytes;
use partyline_node::shards::LeaseTiming;
use partyline_node::wire;
use partyline_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Settings of a gateway process.
#[derive(Clone, Debug)]
pub struct GatewayProcessConfig {
    /// Name in node logs.
    pub name: String,
    /// Redis (membership only; gateways never write).
    pub redis: RedisConfig,
    /// The cluster secret.
    pub secret: String,
    /// Limits.
    pub limits: Limits,
    /// Party variables (for the static hooks).
    pub env: Env,
    /// Most client WebSockets.
    pub max_connections: usize,
    /// Limits of the listener, of each WebSocket and of each client address.
    pub edge: partyline_gateway::EdgeLimits,
    /// Serve `https://` and `wss://` with this TLS configuration.
    pub tls: Option<Arc<partyline_gateway::listener::ServerConfig>>,
    /// TLS to nodes (the cluster CA, and this gateway's client certificate).
    pub cluster_tls: Option<partyline_node::tls::ClusterTls>,
}

/// Runs a gateway on `listener` until `shutdown` resolves.
pub async fn run_gateway(
    cfg: GatewayProcessConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_gateway_with(cfg, parties, listener, None, shutdown).await
}

/// [`run_gateway`], with metrics and health on `admin` when given (else on the client port).
pub async fn run_gateway_with(
    cfg: GatewayProcessConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    partyline_node::secret::validate(&cfg.secret)?;
    let redis = Redis::connect(cfg.redis.clone()).await.context("the gateway needs Redis for membership")?;
    let client = ClusterClient::start(
        ClientConfig {
            name: cfg.name.clone(),
            secret: cfg.secret.clone(),
            max_grpc_message_bytes: max_grpc_message_bytes(&cfg.limits),
            request_timeout: cfg.limits.handler_timeout + Duration::from_secs(5),
            // Long enough for a crashed node's lease to run out under either lease profile.
            route_timeout: ClientConfig::route_timeout_for(LeaseTiming::STANDARD.ttl),
            tls: cfg.cluster_tls.clone(),
        },
        redis.membership(),
        redis.leases(),
    )
    .await?;
    let lobby = Parties::new(Arc::new(ClusterParties { client: client.clone(), parties: parties.clone() }));
    let gateway = Gateway::new(
        GatewayConfig {
            limits: Arc::new(cfg.limits),
            max_connections: cfg.max_connections,
            edge: cfg.edge,
            tls: cfg.tls,
        },
        parties,
        Arc::new(GrpcRouter { client: client.clone() }),
        lobby,
        cfg.env,
    );
    crate::health::serve_gateway(gateway, listener, admin, shutdown, redis, client).await
}

/// Reaches rooms on their owner nodes over gRPC.
pub struct GrpcRouter {
    /// The cluster client.
    pub client: ClusterClient,
}

fn route_error(e: ClientError) -> RouteError {
    match e {
        ClientError::UnknownParty(p) => RouteError::UnknownParty(p),
        ClientError::Busy(why) => RouteError::Busy(why),
        other => RouteError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl RoomRouter for GrpcRouter {
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError> {
        let opened = self.client.open_link(key).await.map_err(route_error)?;
        let room = key.clone();
        // Decoded on the task that applies them (no extra hop). A stream that breaks without the
        // room saying so ends with Gone, so the sockets are closed rather than left waiting; so
        // does a link whose node lost the room's shard to another node (it stalled, or was cut
        // from Redis), unless the room is moving (it said `Pause`: the move ends the link).
        let client = self.client.clone();
        let (shard, epoch) = (opened.shard, opened.epoch);
        let lost: BoxFuture<'static, ()> = Box::pin(async move { client.lost(shard, epoch).await });
        let state = LinkEvents { rx: opened.rx, lost, moving: false, done: false };
        let events = futures::stream::unfold(state, move |mut st| {
            let room = room.clone();
            async move {
                if st.done {
                    return None;
                }
                let gone = |reason: &str| FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: reason.into() };
                loop {
                    let next = tokio::select! {
                        biased;
                        m = st.rx.message() => m,
                        _ = &mut st.lost, if !st.moving => {
                            tracing::info!(room = %room, "the room's node lost its shard; closing its sockets");
                            st.done = true;
                            return Some((gone("room moved"), st));
                        }
                    };
                    match next {
                        Ok(Some(pb::LinkOut { kind: Some(kind) })) => match wire::from_room(kind) {
                            Ok(msg) => {
                                st.moving |= matches!(msg, FromRoom::Pause);
                                st.done = matches!(msg, FromRoom::Gone { .. } | FromRoom::Moved { .. });
                                return Some((msg, st));
                            }
                            Err(e) => tracing::warn!(room = %room, error = %e, "dropping a malformed room message"),
                        },
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            st.done = true;
                            return Some((gone("room unavailable"), st));
                        }
                    }
                }
            }
        });
        Ok(OpenLink { link: Box::new(RemoteLink { tx: Mutex::new(Some(opened.tx)) }), events: Box::pin(events) })
    }

    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError> {
        self.client.request(key, req).await.map_err(route_error)
    }

    fn moved(&self, key: &RoomKey) {
        self.client.forget(partyline::placement::shard_of(key));
    }
}

/// A link's incoming side: the node's stream and a watch on the room's shard lease.
struct LinkEvents {
    rx: tonic::Streaming<pb::LinkOut>,
    lost: BoxFuture<'static, ()>,
    moving: bool,
    done: bool,
}

/// The sending half of a link stream to a node.
struct RemoteLink {
    tx: Mutex<Option<mpsc::Sender<pb::LinkIn>>>,
}

#[async_trait]
impl RoomLink for RemoteLink {
    async fn send(&self, msg: ToRoom) -> Result<(), RouteError> {
        let tx = self.tx.locked().clone();
        let Some(tx) = tx else { return Err(RouteError::Unavailable("the link is closed".into())) };
        tx.send(wire::link_in(msg)).await.map_err(|_| RouteError::Unavailable("the link to the node broke".into()))
    }

    async fn close(&self) {
        // Ending the request stream closes the link at the node.
        self.tx.locked().take();
    }
}
