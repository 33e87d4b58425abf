//! The `partyline gateway` process: the edge (`partyline-gateway`), routing to nodes over gRPC
//! through its `GrpcRouter`, with membership from Redis, metrics and health.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use partyline::{Env, Limits, Parties, PartyRegistry};
use partyline_cluster::client::{ClientConfig, ClusterClient, ClusterParties};
use partyline_cluster::redis::{LeaseTiming, Redis, RedisConfig};
use partyline_cluster::wire::max_grpc_message_bytes;
use partyline_gateway::grpc::GrpcRouter;
use partyline_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;

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
    pub cluster_tls: Option<partyline_cluster::tls::ClusterTls>,
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
    partyline_cluster::secret::validate(&cfg.secret)?;
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
