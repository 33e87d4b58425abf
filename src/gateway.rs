//! The `partyline gateway` process: the edge (`partyline-gateway`), routing to nodes over gRPC
//! through its `GrpcRouter`, with membership from Redis, metrics and health.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use partyline::{Env, Limits, Parties, PartyRegistry};
use partyline_cluster::client::{ClientConfig, ClusterClient, ClusterParties, Liveness};
use partyline_cluster::redis::{LeaseTiming, Redis, RedisConfig};
use partyline_cluster::wire::max_grpc_message_bytes;
use partyline_gateway::grpc::GrpcRouter;
use partyline_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;

use crate::process::{bind, cluster_parties, scheme, shutdown_signal};
use crate::project::ProjectArgs;

/// A gateway process as its command line asks for it (`partyline gateway`, [`crate::cli`]).
#[derive(Debug)]
pub struct GatewayProcess {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Serve `/metrics`, `/healthz` and `/readyz` here instead of under `/_partyline/` on the
    /// client port.
    pub admin_listen: Option<SocketAddr>,
    /// A PartyKit project served beside the gateway's parties (the gateway runs their static
    /// hooks).
    pub project: ProjectArgs,
    /// The gateway's settings. Its `name` is set once the client port is bound, and its `env`
    /// gets the project's variables.
    pub config: GatewayProcessConfig,
}

impl GatewayProcess {
    /// Runs the gateway with `parties` until Ctrl-C or SIGTERM.
    pub async fn run(self, parties: PartyRegistry) -> anyhow::Result<()> {
        let GatewayProcess { listen, admin_listen, project, mut config } = self;
        let (parties, env) =
            cluster_parties(&project, &config.limits, parties, std::mem::take(&mut config.env)).await?;
        config.env = env;
        let listener = bind(listen).await?;
        let local = listener.local_addr()?;
        config.name = format!("gateway {local}");
        let parties = crate::process::serve_deploys(
            &project,
            parties,
            &config.limits,
            config.redis.clone(),
            vec![config.secret.clone()],
            config.name.clone(),
            false,
        );
        let admin = match admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let scheme = scheme(config.tls.is_some());
        println!("Partyline gateway listening on {scheme}://{local}");
        println!("  redis: {} (prefix {})", partyline_cluster::redis::redact(&config.redis.url), config.redis.prefix);
        match &admin {
            Some(a) => {
                let a = a.local_addr()?;
                println!("  metrics and health: http://{a}/metrics, /healthz, /readyz");
                if config.console.is_some() {
                    println!("  operator console: http://{a}/console/ (any user name, the console token as password)");
                }
            }
            None => println!(
                "  metrics and health: {scheme}://{local}/_partyline/metrics, /_partyline/healthz, /_partyline/readyz"
            ),
        }
        run_gateway_with(config, parties, listener, admin, shutdown_signal()).await
    }
}

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
    /// The largest clock offset a node may have before this gateway refuses it; `None`: the
    /// margin of the node's lease profile (lease TTL minus self-fence, less 100 ms).
    pub max_clock_offset: Option<Duration>,
    /// Serve the operator console on the admin listener, behind this token.
    pub console: Option<crate::console::ConsoleConfig>,
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
    // Stalled nodes, nodes cut from Redis and nodes with a clock too far off are routed around
    // and their links closed (docs/operations.md, "Failures and what clients see").
    client.watch_nodes(
        Liveness { max_clock_offset: cfg.max_clock_offset, ..Liveness::default() },
        gateway.shared_metrics(),
    );
    client.record_events(redis.events(), cfg.name.clone());
    let console = match cfg.console {
        Some(console) => {
            anyhow::ensure!(
                admin.is_some(),
                "the operator console is served on the admin listener: give --admin-listen"
            );
            let ops = crate::ops::Ops::new(redis.clone(), cfg.secret.clone(), cfg.cluster_tls.clone())?
                .with_view(client.clone());
            Some(crate::console::router(console, ops, gateway.clone(), cfg.name.clone()))
        }
        None => None,
    };
    let record = crate::health::Record {
        name: cfg.name.clone(),
        addr: listener.local_addr()?.to_string(),
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()).map(|a| a.to_string()),
    };
    crate::health::serve_gateway(gateway, listener, admin, console, record, shutdown, redis, client).await
}
