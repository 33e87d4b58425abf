//! The `partyline` command line: options (each also read from a `PARTYLINE_*` environment
//! variable), the subcommands, and for each server command its `into_config()`: the process it
//! asks for ([`DevProcess`], [`NodeProcess`], [`GatewayProcess`]), which [`Cli::run`] runs.
//!
//! The same thing has the same flag on every command: clients connect to `--host` and `--port`
//! (`dev`, `gateway`), a node's gRPC server listens on `--listen`, and metrics and health are
//! served on `--admin-listen` (`node`, `gateway`). Older spellings stay as hidden aliases.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use partyline::{Env, Limits, PartyRegistry};
use partyline_cluster::tls::ClusterTls;
use partyline_gateway::clients::TrustedProxies;
use partyline_gateway::listener::ServerConfig;
use partyline_gateway::EdgeLimits;

use crate::dev::{DevConfig, DevProcess};
use crate::gateway::{GatewayProcess, GatewayProcessConfig};
use crate::node::NodeProcess;
use crate::project::ProjectArgs;
use crate::telemetry::LogFormat;
use crate::values::{parse_duration, parse_var};
use partyline_cluster::redis::RedisConfig;
use partyline_node::server::{NodeConfig, Rebalance};
use partyline_node::shards::LeaseTiming;

/// Partyline: a self-hostable server for PartyKit-style parties.
#[derive(Debug, Parser)]
#[command(name = "partyline", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Async worker threads (default: one per core). Fewer threads mean fewer context switches
    /// when several Partyline processes share a few cores.
    #[arg(long, global = true, env = "PARTYLINE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log format on stderr. `RUST_LOG` filters (default `info`).
    #[arg(long, global = true, env = "PARTYLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway and a node in one process, with storage on local disk: the way to run
    /// parties on a laptop (like `partykit dev`).
    Dev(DevArgs),
    /// Run an owner node of a cluster: hosts rooms, holds shard leases in Redis, serves gRPC to
    /// gateways (only callers with the cluster secret).
    Node(NodeArgs),
    /// Create a new cluster in Redis: run it once, with the nodes' Redis settings, before or
    /// while the first nodes start (they wait for it).
    ///
    /// Nodes never create a cluster by themselves. A Redis without a cluster and without live
    /// nodes looks the same whether the cluster is new or Redis lost its data (restarted without
    /// persistence, or failed over to a replica that missed writes), and serving rooms from it
    /// would silently start every room over empty. So a node that finds no cluster waits, not
    /// ready, and starts serving as soon as this command has run (no restart needed); or start
    /// the very first node with --init-cluster instead.
    ///
    /// When the cluster exists it prints "already initialized: cluster <id>" and exits 0, so
    /// running it again is harmless. But without --record, running it after Redis lost the
    /// cluster's data starts the cluster over, EMPTY: every room's stored data is gone for good
    /// (nodes that still run keep refusing until restarted). Deployments that run it at every
    /// start (compose, a Kubernetes Job) give it --record: once it recorded a cluster, it refuses
    /// (exit status 1) a Redis that lost that cluster's data instead of starting over. If the
    /// data matters, restore Redis from its AOF or a backup (docs/operations.md, "Redis lost its
    /// data"); to start over on purpose, pass --start-over.
    Init(InitArgs),
    /// Run a stateless gateway of a cluster: serves clients (WebSocket, HTTP), runs the static
    /// hooks, and routes each room to its owner node over gRPC.
    Gateway(GatewayArgs),
    /// Load-test a Partyline server (or any PartyKit-style server) with WebSocket and HTTP
    /// clients: fanout, echo, idle, churn and http scenarios, with latency histograms, losses,
    /// duplicates and reordering. Loopback targets only unless --allow-remote.
    #[cfg(feature = "bench")]
    Bench(partyline_bench::BenchArgs),
    /// Show a cluster at a glance: Redis, the lease profile, every node (state, shards, rooms,
    /// connections, CPU, memory), every gateway, and the rates of connects, messages, commits
    /// and errors (measured over one second, or between refreshes with --watch). --json prints
    /// the same as the console's overview.
    Status(StatusArgs),
    /// Look up a room by name (`party/room`): its shard, owner node and epoch, whether it runs,
    /// its connections (ids, tags, gateway), its storage against the quota, its next alarm.
    Room(RoomArgs),
    /// Drain a node: it takes no new rooms, hands every room (with its sockets) to the next
    /// owner and releases its leases, then stays up, drained, until it is stopped. Waits until
    /// the drain is done unless --no-wait.
    Drain(DrainArgs),
    /// Exit 0 when an HTTP URL answers 2xx within the timeout, else 1: a health check for
    /// images without curl (`partyline probe http://127.0.0.1:9090/readyz`).
    Probe(crate::probe::ProbeArgs),
    /// Create a crate of your own with one party (a chat with storage, served as `main`), its
    /// tests on the SDK's test kit, and a README: `partyline new my-party && cd my-party &&
    /// cargo test && cargo run -- dev`.
    New(crate::new::NewArgs),
    /// Bundle a PartyKit project (partykit.json) into one artifact for `partyline deploy`: every
    /// party's server code, the built page, the static files, and a manifest.
    #[cfg(feature = "partykit")]
    Build(crate::deploy::BuildArgs),
    /// Deploy a PartyKit project to a running cluster, without restarting or rebuilding
    /// anything: the artifact (built here when given a project) is checked, signed with the
    /// cluster secret, stored in Redis as a new version, and every node and gateway serves it
    /// within about a second. New rooms start on it; running rooms move to it when they next
    /// start. --list shows the versions and what each process serves; --rollback serves an
    /// earlier one again.
    #[cfg(feature = "partykit")]
    Deploy(DeployArgs),
}

/// Options of `partyline deploy`.
#[cfg(feature = "partykit")]
#[derive(Debug, Args)]
struct DeployArgs {
    #[command(flatten)]
    deploy: crate::deploy::DeployOptions,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Options of `partyline status`.
#[derive(Debug, Args)]
struct StatusArgs {
    /// Also look up this room, as `party/room` (as `partyline room` does).
    #[arg(long)]
    room: Option<String>,
    /// Refresh every this many seconds until interrupted (rates between refreshes).
    #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECONDS")]
    watch: Option<f64>,
    /// Print JSON (the console's overview, with rates per second) instead of tables; one line
    /// per refresh with --watch.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Options of `partyline room`.
#[derive(Debug, Args)]
struct RoomArgs {
    /// The room, as `party/room`.
    room: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Options of `partyline drain`.
#[derive(Debug, Args)]
struct DrainArgs {
    /// The node's id (as `partyline status` lists it).
    node: String,
    /// Who asks, recorded in the node's log and the cluster's events (default: $USER).
    #[arg(long)]
    who: Option<String>,
    /// Return once the drain started instead of waiting until it is done.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Where Redis is (nodes, gateways, `status`, `init`).
#[derive(Debug, Args)]
struct RedisArgs {
    /// Redis (membership, leases, room storage, alarms): `redis://[user:password@]host:port[/db]`
    /// for one server, `redis+cluster://[user:password@]host:port[,host:port...]` for a Redis
    /// Cluster (a few seed nodes; the others are discovered); `rediss://` and
    /// `rediss+cluster://` over TLS (`SSL_CERT_FILE` adds a private CA).
    #[arg(long, env = "PARTYLINE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of every Redis key and channel (several clusters can share one Redis).
    #[arg(long, env = "PARTYLINE_REDIS_PREFIX", default_value = "pl")]
    redis_prefix: String,
}

impl RedisArgs {
    fn redis(&self) -> RedisConfig {
        RedisConfig { prefix: self.redis_prefix.clone(), ..RedisConfig::new(self.redis_url.clone()) }
    }
}

/// Options of `partyline init`.
#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// How long to keep trying to reach Redis (it may still be starting, e.g. in a compose file
    /// or a Kubernetes Job started together with it).
    #[arg(long, env = "PARTYLINE_INIT_WAIT", default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
    /// A file keeping the id of the cluster this command created or found (written when
    /// missing). With it present, a Redis that has no marker of that cluster lost its data: init
    /// refuses, exit status 1, instead of creating a cluster. Keep it beside the deployment (a
    /// small volume), apart from Redis's data.
    #[arg(long, env = "PARTYLINE_INIT_RECORD", value_name = "PATH")]
    record: Option<std::path::PathBuf>,
    /// Start over on purpose, EMPTY: create a cluster even though the record names one Redis
    /// lost (or take the one Redis holds now), and on a Redis Cluster write back the shards'
    /// marker copies a primary lost (those shards start over empty). A flag only, no variable:
    /// it must not stay set by accident.
    #[arg(long)]
    start_over: bool,
}

/// What nodes and gateways share: where Redis is and the cluster secret.
#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Shared secret gateways present to nodes (gRPC `authorization: Bearer`), at least 16
    /// bytes; required, here or in --cluster-secret-file.
    #[arg(long, env = "PARTYLINE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// More cluster secrets nodes accept besides the cluster secret, comma-separated (each at
    /// least 16 bytes): to rotate the secret, add the new one here on every node, then switch
    /// every process's cluster secret (or its file) to it, then drop the old one from here.
    #[arg(
        long = "accept-cluster-secret",
        env = "PARTYLINE_ACCEPT_CLUSTER_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    accept_secrets: Vec<String>,
    /// The cluster CA certificate (PEM): turns on TLS between gateways and nodes. Nodes then
    /// require a client certificate it signed (mutual TLS), and gateways only send the secret
    /// to nodes whose certificate it signed for the address they dial.
    #[arg(long, env = "PARTYLINE_CLUSTER_TLS_CA", requires = "cluster_tls_cert")]
    cluster_tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM) for cluster TLS: a node's must name its advertised
    /// address and allow server and client authentication; a gateway's client authentication.
    #[arg(long, env = "PARTYLINE_CLUSTER_TLS_CERT", requires = "cluster_tls_key")]
    cluster_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --cluster-tls-cert.
    #[arg(long, env = "PARTYLINE_CLUSTER_TLS_KEY", requires = "cluster_tls_ca")]
    cluster_tls_key: Option<PathBuf>,
    /// File holding the cluster secret (surrounding whitespace ignored), so it is not visible
    /// in the environment or `ps`.
    #[arg(long, env = "PARTYLINE_CLUSTER_SECRET_FILE", conflicts_with = "cluster_secret")]
    cluster_secret_file: Option<PathBuf>,
    #[command(flatten)]
    vars: VarArgs,
}

impl ClusterArgs {
    fn cluster_tls(&self) -> anyhow::Result<Option<ClusterTls>> {
        match &self.cluster_tls_ca {
            Some(ca) => {
                Ok(Some(ClusterTls::from_files(ca, self.cluster_tls_cert.as_deref(), self.cluster_tls_key.as_deref())?))
            }
            None => Ok(None),
        }
    }

    fn redis(&self) -> RedisConfig {
        self.redis.redis()
    }

    fn secret(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.cluster_secret_file {
            return partyline_cluster::secret::read_file(path);
        }
        let secret = self.cluster_secret.clone().unwrap_or_default();
        partyline_cluster::secret::validate(&secret)?;
        Ok(secret)
    }

    /// The extra secrets nodes accept, each checked like the main one.
    fn accept_secrets(&self) -> anyhow::Result<Vec<String>> {
        for secret in &self.accept_secrets {
            partyline_cluster::secret::validate(secret).context("in --accept-cluster-secret")?;
        }
        Ok(self.accept_secrets.clone())
    }

    fn env(&self) -> Env {
        Env::new(self.vars.map())
    }

    /// What operators see and do, over this cluster's Redis and nodes.
    async fn ops(&self) -> anyhow::Result<crate::ops::Ops> {
        let redis = partyline_cluster::redis::Redis::connect(self.redis()).await?;
        crate::ops::Ops::new(redis, self.secret()?, self.cluster_tls()?)
    }
}

/// Options of `partyline node`.
#[derive(Debug, Args)]
struct NodeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "PARTYLINE_LISTEN", default_value = "127.0.0.1:7001")]
    listen: String,
    /// Address gateways and other nodes reach this node at (default: the listen address; needed
    /// when listening on 0.0.0.0).
    #[arg(long, env = "PARTYLINE_ADVERTISE")]
    advertise: Option<String>,
    /// Node id, unique in the cluster and stable across restarts (rendezvous hashing uses it;
    /// default: the advertised address).
    #[arg(long, env = "PARTYLINE_NODE_ID")]
    id: Option<String>,
    /// Lease timing: how fast a crashed node's rooms fail over, against how long a stalled
    /// node or Redis may pause before its rooms are fenced.
    #[arg(long, env = "PARTYLINE_LEASE_PROFILE", value_enum, default_value_t = LeaseProfile::Standard)]
    lease_profile: LeaseProfile,
    /// Longest a graceful shutdown (SIGTERM) may take: the node announces `draining`, moves
    /// every room to its next owner (hibernating parties without a disconnect), releases its
    /// leases and exits. Keep a container's stop grace period above it.
    #[arg(long, env = "PARTYLINE_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Serve /metrics (OpenMetrics), /healthz and /readyz over HTTP on this address (e.g.
    /// 0.0.0.0:9090); off when unset. The gRPC port also serves grpc.health.v1.Health.
    #[arg(long, alias = "metrics-listen", env = "PARTYLINE_METRICS_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// How often a node hands shards to nodes that joined (their share under rendezvous
    /// hashing), a few at a time.
    #[arg(long, env = "PARTYLINE_REBALANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    rebalance_interval: Duration,
    /// Most shards handed over per rebalance interval; 0 turns rebalancing off (a node that
    /// joins then only gets shards that are free).
    #[arg(long, env = "PARTYLINE_REBALANCE_MAX_SHARDS", default_value_t = 32)]
    rebalance_max_shards: usize,
    /// Take a crashed node's rooms over before its leases expire when it is provably gone: a
    /// new incarnation of it registered (it restarted), or its membership record expired and
    /// its gRPC port refuses connections. A live node keeps its record, so a paused, partitioned
    /// or draining one is never taken over early.
    #[arg(long, env = "PARTYLINE_FAST_FAILOVER", default_value_t = true, action = clap::ArgAction::Set)]
    fast_failover: bool,
    /// Redis replicas that must hold every storage commit and lease grant before it counts
    /// (`WAIT` after each, on the primary that took it). 0: a write counts once the primary
    /// has it (with AOF `appendfsync always`, once it is on the primary's disk), and a failover
    /// to a replica that had not caught up loses it. N: a write counts once N replicas have it
    /// too, so it survives a failover to any of them; it costs a replica round trip per
    /// commit, and while fewer than N replicas answer within --redis-replica-timeout every
    /// write fails: the party gets a storage error and no client is told it was saved.
    #[arg(long, env = "PARTYLINE_REDIS_MIN_REPLICAS", default_value_t = 0)]
    redis_min_replicas: u32,
    /// How long a write waits for --redis-min-replicas replicas before it fails (at most half
    /// of the 2 s Redis response timeout).
    #[arg(long, env = "PARTYLINE_REDIS_REPLICA_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    redis_replica_timeout: Duration,
    /// Create the cluster if Redis has none and no node is live: for the very first start of a
    /// new cluster, as `partyline init` does. Without it a node that finds no cluster in Redis
    /// creates none (Redis may have lost the cluster's data): it stays not ready, says why, and
    /// starts serving once `partyline init` ran. Do not leave it on: after Redis lost its data,
    /// a node started with it starts the cluster over, empty.
    #[arg(long, env = "PARTYLINE_INIT_CLUSTER")]
    init_cluster: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    project: ProjectArgs,
}

/// Lease timing profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LeaseProfile {
    /// Lease TTL 10 s, renewed every 2 s, self-fence 8 s after the last renewal: a crashed
    /// node's rooms are back within about 11.5 s.
    Standard,
    /// TTL 3 s, renewed every 0.5 s, self-fence at 2.4 s: failover within about 4.5 s, for tests
    /// and small clusters on one network.
    Fast,
}

impl LeaseProfile {
    fn timing(self) -> LeaseTiming {
        match self {
            LeaseProfile::Standard => LeaseTiming::STANDARD,
            LeaseProfile::Fast => LeaseTiming::FAST,
        }
    }
}

impl NodeArgs {
    /// The node process these options ask for.
    fn into_config(self) -> anyhow::Result<NodeProcess> {
        let secret = self.cluster.secret()?;
        let listen = self
            .listen
            .parse()
            .with_context(|| format!("--listen {:?} is not an address like 127.0.0.1:7001", self.listen))?;
        let config = NodeConfig {
            // Both set once the gRPC port is bound (see `NodeProcess`).
            id: String::new(),
            advertise: String::new(),
            redis: RedisConfig {
                min_replicas: self.redis_min_replicas,
                replica_timeout: self.redis_replica_timeout,
                ..self.cluster.redis()
            },
            secret,
            accept_secrets: self.cluster.accept_secrets()?,
            tls: self.cluster.cluster_tls()?,
            leases: self.lease_profile.timing(),
            heartbeat: partyline_cluster::redis::heartbeat_for(&self.lease_profile.timing()),
            member_ttl: partyline_cluster::redis::member_ttl_for(&self.lease_profile.timing()),
            drain_timeout: self.drain_timeout,
            fast_failover: self.fast_failover,
            rebalance: Rebalance {
                every: self.rebalance_interval,
                max_shards: self.rebalance_max_shards,
                ..Rebalance::default()
            },
            limits: self.limits.limits(),
            env: self.cluster.env(),
            init_cluster: self.init_cluster,
        };
        Ok(NodeProcess {
            listen,
            advertise: self.advertise,
            id: self.id,
            admin_listen: self.admin_listen,
            project: self.project,
            config,
        })
    }
}

/// Options of `partyline gateway`.
#[derive(Debug, Args)]
struct GatewayArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// Serve /metrics, /healthz and /readyz on this separate address (e.g. 0.0.0.0:9091)
    /// instead of /_partyline/* on the client port.
    #[arg(long, env = "PARTYLINE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    edge: EdgeArgs,
    /// Serve the operator console at http://<admin address>/console/ behind this token (at least
    /// 16 bytes; needs --admin-listen). Browsers ask for it with a login box: any user name (it is
    /// recorded with every action taken), the token as password; scripts send
    /// `Authorization: Bearer <token>`. Off when not given.
    #[arg(long, env = "PARTYLINE_CONSOLE_TOKEN", hide_env_values = true, requires = "admin_listen")]
    console_token: Option<String>,
    /// File holding the console token (surrounding whitespace ignored), so it is not visible in
    /// the environment or `ps`.
    #[arg(long, env = "PARTYLINE_CONSOLE_TOKEN_FILE", conflicts_with = "console_token", requires = "admin_listen")]
    console_token_file: Option<PathBuf>,
    /// Refuse a node whose clock is further off this gateway's than this (its offset plus half
    /// the round trip that measured it): no rooms are routed to it and its links are closed.
    /// Default: the margin of the node's lease profile, lease TTL minus self-fence less 100 ms
    /// (`standard` 1.9s, `fast` 500ms).
    #[arg(long, env = "PARTYLINE_MAX_CLOCK_OFFSET", value_parser = parse_duration)]
    max_clock_offset: Option<Duration>,
}

impl GatewayArgs {
    /// The gateway process these options ask for.
    fn into_config(self) -> anyhow::Result<GatewayProcess> {
        let secret = self.cluster.secret()?;
        let listen = self.listen.addr()?;
        let config = GatewayProcessConfig {
            // Set once the client port is bound (see `GatewayProcess`).
            name: String::new(),
            redis: self.cluster.redis(),
            secret,
            limits: self.limits.limits(),
            env: self.cluster.env(),
            max_connections: self.limits.max_connections,
            edge: self.edge.edge(),
            tls: self.edge.tls()?,
            cluster_tls: self.cluster.cluster_tls()?,
            max_clock_offset: self.max_clock_offset,
            console: self.console()?,
        };
        Ok(GatewayProcess { listen, admin_listen: self.admin_listen, project: self.project, config })
    }

    fn console(&self) -> anyhow::Result<Option<crate::console::ConsoleConfig>> {
        let token = match (&self.console_token, &self.console_token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the console token from {}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        Ok(Some(crate::console::ConsoleConfig::new(token).context("in --console-token")?))
    }
}

/// Options of `partyline dev`.
#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// Directory for room storage and alarms; they survive restarts.
    #[arg(long, env = "PARTYLINE_DATA_DIR", default_value = ".partyline")]
    data_dir: PathBuf,
    /// Keep storage in memory only; it is gone when the process exits.
    #[arg(long, env = "PARTYLINE_EPHEMERAL")]
    ephemeral: bool,
    #[command(flatten)]
    vars: VarArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    edge: EdgeArgs,
}

impl DevArgs {
    /// The dev server process these options ask for.
    fn into_config(self) -> anyhow::Result<DevProcess> {
        let listen = self.listen.addr()?;
        let config = DevConfig {
            data_dir: (!self.ephemeral).then_some(self.data_dir),
            limits: self.limits.limits(),
            // Made from the variables when the process starts (see `DevProcess`).
            env: Env::default(),
            max_connections: self.limits.max_connections,
            edge: self.edge.edge(),
            tls: self.edge.tls()?,
        };
        Ok(DevProcess { listen, project: self.project, vars: self.vars.map(), config })
    }
}

/// Where clients connect (`dev`, `gateway`).
#[derive(Debug, Args)]
struct ListenArgs {
    /// Address to listen on.
    #[arg(long, env = "PARTYLINE_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PARTYLINE_PORT", default_value_t = 1999)]
    port: u16,
}

impl ListenArgs {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        let (host, port) = (&self.host, self.port);
        format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .with_context(|| format!("--host {host:?} is not an IP address"))
    }
}

/// Variables for parties (`dev`, `node`, `gateway`).
#[derive(Debug, Args)]
struct VarArgs {
    /// A variable for parties (`room.env()`), as KEY=VALUE; repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
}

impl VarArgs {
    fn map(&self) -> BTreeMap<String, String> {
        self.vars.iter().cloned().collect()
    }
}

/// Limits; each has a default from PartyKit / Durable Objects where one exists.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Largest inbound WebSocket message in bytes (larger: close 1009).
    #[arg(long, env = "PARTYLINE_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Largest frame a room may send in bytes (a larger send closes that connection with 1009).
    #[arg(long, env = "PARTYLINE_MAX_OUTBOUND_MESSAGE_BYTES", default_value_t = Limits::default().max_outbound_message_bytes)]
    max_outbound_message_bytes: usize,
    /// Largest HTTP request body for a room in bytes (larger: 413).
    #[arg(long, env = "PARTYLINE_MAX_REQUEST_BODY_BYTES", default_value_t = Limits::default().max_request_body_bytes)]
    max_request_body_bytes: usize,
    /// Largest connection state in bytes, JSON-encoded (`set_state` fails above it).
    #[arg(long, env = "PARTYLINE_MAX_STATE_BYTES", default_value_t = Limits::default().max_state_bytes)]
    max_state_bytes: usize,
    /// Most tags per connection, the id included (more: close 1011).
    #[arg(long, env = "PARTYLINE_MAX_TAGS", default_value_t = Limits::default().max_tags)]
    max_tags: usize,
    /// Longest tag in bytes.
    #[arg(long, env = "PARTYLINE_MAX_TAG_BYTES", default_value_t = Limits::default().max_tag_bytes)]
    max_tag_bytes: usize,
    /// Longest storage key in bytes (an error to the party).
    #[arg(long, env = "PARTYLINE_MAX_KEY_BYTES", default_value_t = Limits::default().max_key_bytes)]
    max_key_bytes: usize,
    /// Largest storage value in bytes (an error to the party).
    #[arg(long, env = "PARTYLINE_MAX_VALUE_BYTES", default_value_t = Limits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// Longest room id in bytes (longer: 400).
    #[arg(long, env = "PARTYLINE_MAX_ROOM_ID_BYTES", default_value_t = Limits::default().max_room_id_bytes)]
    max_room_id_bytes: usize,
    /// Most connections in one room (more: 503).
    #[arg(long, env = "PARTYLINE_MAX_CONNECTIONS_PER_ROOM", default_value_t = Limits::default().max_connections_per_room)]
    max_connections_per_room: usize,
    /// Most client WebSockets in this process (more: 503).
    #[arg(long, env = "PARTYLINE_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: usize,
    /// Most messages queued for a client that does not read before it is closed.
    #[arg(long, env = "PARTYLINE_MAX_OUTBOX_MESSAGES", default_value_t = Limits::default().max_outbox_messages)]
    max_outbox_messages: usize,
    /// Most bytes queued for a client that does not read before it is closed.
    #[arg(long, env = "PARTYLINE_MAX_OUTBOX_BYTES", default_value_t = Limits::default().max_outbox_bytes)]
    max_outbox_bytes: usize,
    /// Time limit of one party handler (e.g. 30s, 500ms); past it: close 1011 or HTTP 500.
    #[arg(long, env = "PARTYLINE_HANDLER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    handler_timeout: Duration,
    /// Idle time before a room with `hibernate: true` is unloaded (its sockets stay open).
    #[arg(long, env = "PARTYLINE_HIBERNATE_IDLE", default_value = "10s", value_parser = parse_duration)]
    hibernate_idle: Duration,
    /// Idle time before a room without connections is unloaded.
    #[arg(long, env = "PARTYLINE_ROOM_IDLE", default_value = "60s", value_parser = parse_duration)]
    room_idle: Duration,
    /// Longest connection id (`?_pk=`) in bytes, percent-decoded (longer, or not UTF-8: 400).
    #[arg(long, env = "PARTYLINE_MAX_CONNECTION_ID_BYTES", default_value_t = Limits::default().max_connection_id_bytes)]
    max_connection_id_bytes: usize,
    /// Most rooms this process hosts (0: no limit). At the limit, rooms nobody is connected to
    /// are asked to leave; a new room that still finds no place gets 503 before any 101.
    #[arg(long, env = "PARTYLINE_MAX_ROOMS", default_value_t = Limits::default().max_rooms)]
    max_rooms: usize,
    /// Longest a client frame, connection or request waits for space in a room's queue before
    /// it is refused (close 1013, or 503).
    #[arg(long, env = "PARTYLINE_ROOM_QUEUE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    room_queue_timeout: Duration,
    /// Most keys one room may store (0: no limit; beyond it: an error to the party).
    #[arg(long, env = "PARTYLINE_MAX_ROOM_KEYS", default_value_t = Limits::default().max_room_keys)]
    max_room_keys: u64,
    /// Most bytes (keys plus values) one room may store (0: no limit; beyond it: an error to the
    /// party).
    #[arg(long, env = "PARTYLINE_MAX_ROOM_BYTES", default_value_t = Limits::default().max_room_bytes)]
    max_room_bytes: u64,
    /// Most bytes written by one handler before they are committed, and most bytes in one
    /// commit (beyond it: an error to the party; `sync()` commits in between).
    #[arg(long, env = "PARTYLINE_MAX_COMMIT_BYTES", default_value_t = Limits::default().max_commit_bytes)]
    max_commit_bytes: usize,
    /// Most bytes one `list()` returns (beyond it: an error to the party).
    #[arg(long, env = "PARTYLINE_MAX_LIST_BYTES", default_value_t = Limits::default().max_list_bytes)]
    max_list_bytes: usize,
}

/// The client-facing edge: timeouts, connection caps, rate limits, client addresses and TLS.
#[derive(Debug, Args)]
struct EdgeArgs {
    /// Most TCP connections (HTTP and WebSocket) the listener holds; more are answered 503 and
    /// closed (0: no limit).
    #[arg(long, env = "PARTYLINE_MAX_TCP_CONNECTIONS", default_value_t = EdgeLimits::default().max_tcp_connections)]
    max_tcp_connections: usize,
    /// Time a client has to send a complete request head (and to finish a TLS handshake); it
    /// also ends keep-alive connections idle for that long. Past it the connection is closed.
    #[arg(long, env = "PARTYLINE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Time a client has to send a request body (past it: 408).
    #[arg(long, env = "PARTYLINE_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// An HTTP connection that moves no bytes either way for this long while no request is being
    /// answered is closed (slow readers, stalled uploads; 0: never).
    #[arg(long, env = "PARTYLINE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// TCP keepalive idle time on client connections (0: off).
    #[arg(long, env = "PARTYLINE_TCP_KEEPALIVE", default_value = "60s", value_parser = parse_duration)]
    tcp_keepalive: Duration,
    /// Ping a WebSocket that has been silent this long (0: never). Browsers, partysocket and
    /// y-partykit answer pings on their own.
    #[arg(long, env = "PARTYLINE_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Close (1001) and drop a WebSocket that sends nothing, not even a pong, for this long
    /// after a ping.
    #[arg(long, env = "PARTYLINE_PONG_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pong_timeout: Duration,
    /// Messages per second one WebSocket may send on average (0: no limit); past its burst it
    /// is closed with 1008.
    #[arg(long, env = "PARTYLINE_MAX_MESSAGES_PER_SECOND", default_value_t = EdgeLimits::default().max_messages_per_second)]
    max_messages_per_second: u32,
    /// Messages one WebSocket may send at once above that rate.
    #[arg(long, env = "PARTYLINE_MESSAGE_BURST", default_value_t = EdgeLimits::default().message_burst)]
    message_burst: u32,
    /// Most open WebSockets from one client address (IPv6: per /64); more get 429 (0: no limit).
    #[arg(long, env = "PARTYLINE_MAX_CONNECTIONS_PER_IP", default_value_t = EdgeLimits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// New WebSockets per second one client address may open on average (0: no limit); past its
    /// burst: 429.
    #[arg(long, env = "PARTYLINE_MAX_CONNECTS_PER_IP_PER_SECOND", default_value_t = EdgeLimits::default().max_connects_per_ip_per_second)]
    max_connects_per_ip_per_second: u32,
    /// New WebSockets one client address may open at once above that rate.
    #[arg(long, env = "PARTYLINE_CONNECT_BURST", default_value_t = EdgeLimits::default().connect_burst)]
    connect_burst: u32,
    /// Reverse proxies whose X-Forwarded-For / X-Real-IP name the client, as addresses or CIDR
    /// ranges separated by commas (e.g. 10.0.0.0/8,127.0.0.1). From anyone else those headers
    /// are replaced by the peer's address.
    #[arg(long, env = "PARTYLINE_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxies,
    /// Serve https:// and wss:// with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "PARTYLINE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PARTYLINE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl EdgeArgs {
    fn edge(&self) -> EdgeLimits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        EdgeLimits {
            max_tcp_connections: self.max_tcp_connections,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            tcp_keepalive: nonzero(self.tcp_keepalive),
            ping_interval: nonzero(self.ping_interval),
            pong_timeout: self.pong_timeout,
            max_messages_per_second: self.max_messages_per_second,
            message_burst: self.message_burst,
            max_connections_per_ip: self.max_connections_per_ip,
            max_connects_per_ip_per_second: self.max_connects_per_ip_per_second,
            connect_burst: self.connect_burst,
            trusted_proxies: self.trusted_proxies.clone(),
            ..EdgeLimits::default()
        }
    }

    fn tls(&self) -> anyhow::Result<Option<Arc<ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(partyline_gateway::tls_config(cert, key)?)),
            _ => Ok(None),
        }
    }
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_outbound_message_bytes: self.max_outbound_message_bytes,
            max_request_body_bytes: self.max_request_body_bytes,
            max_state_bytes: self.max_state_bytes,
            max_tags: self.max_tags,
            max_tag_bytes: self.max_tag_bytes,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_batch_keys: Limits::default().max_batch_keys,
            max_room_id_bytes: self.max_room_id_bytes,
            max_connections_per_room: self.max_connections_per_room,
            max_outbox_messages: self.max_outbox_messages,
            max_outbox_bytes: self.max_outbox_bytes,
            handler_timeout: self.handler_timeout,
            hibernate_idle: self.hibernate_idle,
            room_idle: self.room_idle,
            max_connection_id_bytes: self.max_connection_id_bytes,
            max_rooms: self.max_rooms,
            room_queue_timeout: self.room_queue_timeout,
            max_room_keys: self.max_room_keys,
            max_room_bytes: self.max_room_bytes,
            max_commit_bytes: self.max_commit_bytes,
            max_list_bytes: self.max_list_bytes,
        }
    }
}

impl Cli {
    /// The subcommand's name (`dev`, `node`, ...).
    pub fn command_name(&self) -> &'static str {
        match self.command {
            Command::Dev(_) => "dev",
            Command::Node(_) => "node",
            Command::Init(_) => "init",
            Command::Gateway(_) => "gateway",
            #[cfg(feature = "bench")]
            Command::Bench(_) => "bench",
            Command::Status(_) => "status",
            Command::Room(_) => "room",
            Command::Drain(_) => "drain",
            Command::Probe(_) => "probe",
            Command::New(_) => "new",
            #[cfg(feature = "partykit")]
            Command::Build(_) => "build",
            #[cfg(feature = "partykit")]
            Command::Deploy(_) => "deploy",
        }
    }

    /// Runs the chosen subcommand with `parties`. With a PartyKit project (`--config`, or
    /// ./partykit.json for `dev`), its parties are served beside `parties`, or instead of them
    /// when `examples` is set (the stock binary's example parties).
    pub async fn run(self, parties: PartyRegistry, examples: bool) -> anyhow::Result<()> {
        let rust = |p: &ProjectArgs, look_in_cwd: bool| {
            if examples && p.has_project(look_in_cwd) {
                PartyRegistry::new()
            } else {
                parties.clone()
            }
        };
        match self.command {
            Command::Dev(args) => {
                let dev = args.into_config()?;
                let parties = rust(&dev.project, true);
                dev.run(parties).await
            }
            Command::Node(args) => {
                #[allow(unused_mut)]
                let mut node = args.into_config()?;
                let parties = rust(&node.project, false);
                #[cfg(feature = "partykit")]
                {
                    node.project.deploy_replaces_parties = examples && !node.project.has_project(false);
                }
                node.run(parties).await
            }
            Command::Init(args) => {
                let options =
                    crate::init::InitOptions { wait: args.wait, record: args.record, start_over: args.start_over };
                crate::init::run(args.redis.redis(), options).await
            }
            Command::Gateway(args) => {
                #[allow(unused_mut)]
                let mut gateway = args.into_config()?;
                let parties = rust(&gateway.project, false);
                #[cfg(feature = "partykit")]
                {
                    gateway.project.deploy_replaces_parties = examples && !gateway.project.has_project(false);
                }
                gateway.run(parties).await
            }
            #[cfg(feature = "bench")]
            Command::Bench(args) => partyline_bench::run(args).await,
            Command::Status(args) => {
                let ops = args.cluster.ops().await?;
                let watch = args.watch.map(Duration::from_secs_f64);
                crate::status::status(&ops, watch, args.json, args.room.as_deref()).await
            }
            Command::Room(args) => {
                let ops = args.cluster.ops().await?;
                crate::status::room(&ops, &args.room, args.json).await
            }
            Command::Drain(args) => {
                let ops = args.cluster.ops().await?;
                let who = args.who.unwrap_or_else(crate::status::default_who);
                let wait = (!args.no_wait).then_some(args.timeout);
                crate::status::drain(&ops, &args.node, &who, wait, args.json).await
            }
            Command::Probe(args) => crate::probe::run(args).await,
            Command::New(args) => crate::new::run(args),
            #[cfg(feature = "partykit")]
            Command::Build(args) => crate::deploy::build(args).await,
            #[cfg(feature = "partykit")]
            Command::Deploy(args) => {
                crate::deploy::deploy(args.deploy, args.cluster.redis(), args.cluster.secret()?).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("partyline").chain(args.iter().copied())).unwrap()
    }

    /// The process a node command line asks for, as text (the configs have no `PartialEq`).
    fn node_config(args: &[&str]) -> String {
        match parse(args).command {
            Command::Node(node) => format!("{:?}", node.into_config().unwrap()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn old_flag_spellings_give_the_same_config() {
        let secret = ["--cluster-secret", "0123456789abcdef0123"];
        let old = node_config(&[&["node", "--metrics-listen", "127.0.0.1:9090"][..], &secret].concat());
        let new = node_config(&[&["node", "--admin-listen", "127.0.0.1:9090"][..], &secret].concat());
        assert_eq!(old, new);
        assert!(new.contains("admin_listen: Some(127.0.0.1:9090)"), "{new}");
    }

    #[test]
    fn redis_min_replicas_reaches_the_redis_config() {
        let secret = ["--cluster-secret", "0123456789abcdef0123"];
        let default = node_config(&[&["node"][..], &secret].concat());
        assert!(default.contains("min_replicas: 0, replica_timeout: 500ms"), "{default}");
        let args = ["node", "--redis-min-replicas", "1", "--redis-replica-timeout", "250ms"];
        let one = node_config(&[&args[..], &secret].concat());
        assert!(one.contains("min_replicas: 1, replica_timeout: 250ms"), "{one}");
    }

    #[test]
    fn init_cluster_is_off_unless_asked_for() {
        let secret = ["--cluster-secret", "0123456789abcdef0123"];
        assert!(node_config(&[&["node"][..], &secret].concat()).contains("init_cluster: false"));
        let first = node_config(&[&["node", "--init-cluster"][..], &secret].concat());
        assert!(first.contains("init_cluster: true"), "{first}");
    }

    #[test]
    fn init_takes_the_redis_settings_and_explains_itself() {
        use clap::CommandFactory;
        let args = ["init", "--redis-url", "rediss://:pw@redis:6380", "--redis-prefix", "x", "--wait", "5s"];
        match parse(&args).command {
            Command::Init(init) => {
                let redis = init.redis.redis();
                assert_eq!((redis.url.as_str(), redis.prefix.as_str()), ("rediss://:pw@redis:6380", "x"));
                assert_eq!(init.wait, Duration::from_secs(5));
                assert_eq!((init.record, init.start_over), (None, false));
            }
            _ => unreachable!(),
        }
        match parse(&["init", "--record", "/var/lib/x/cluster-id", "--start-over"]).command {
            Command::Init(init) => {
                assert_eq!(init.record.as_deref(), Some(std::path::Path::new("/var/lib/x/cluster-id")));
                assert!(init.start_over);
            }
            _ => unreachable!(),
        }
        // No cluster secret needed: init only talks to Redis.
        assert!(Cli::try_parse_from(["partyline", "init"]).is_ok());
        let mut cli = Cli::command();
        let help = cli.find_subcommand_mut("init").unwrap().render_long_help().to_string();
        for words in [
            "once",
            "already initialized",
            "EMPTY",
            "Redis lost its data",
            "--init-cluster",
            "--record",
            "--start-over",
        ] {
            assert!(help.contains(words), "{words:?} is not in the help:\n{help}");
        }
    }

    #[test]
    fn old_spellings_are_hidden_from_help() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli.find_subcommand_mut("node").unwrap().render_long_help().to_string();
        assert!(help.contains("--admin-listen"), "{help}");
        assert!(!help.contains("--metrics-listen"), "{help}");
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!(parse(&["--log-format", "json", "probe", "http://x/"]).log_format, LogFormat::Json);
        assert_eq!(parse(&["probe", "http://x/", "--log-format", "text"]).log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["partyline", "--log-format", "yaml", "probe", "http://x/"]).is_err());
    }

    #[test]
    fn dev_and_gateway_listen_where_host_and_port_say() {
        let dev = match parse(&["dev", "--host", "::1", "--port", "0", "--ephemeral", "--var", "A=1"]).command {
            Command::Dev(dev) => dev.into_config().unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(dev.listen, "[::1]:0".parse().unwrap());
        assert_eq!(dev.config.data_dir, None);
        assert_eq!(dev.vars.get("A").map(String::as_str), Some("1"));
        let args = ["gateway", "--port", "2000", "--cluster-secret", "0123456789abcdef0123"];
        let gateway = match parse(&args).command {
            Command::Gateway(gateway) => gateway.into_config().unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(gateway.listen, "127.0.0.1:2000".parse().unwrap());
    }
}
