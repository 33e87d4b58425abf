//! `partyline node`: an owner node. It registers in Redis (membership with a TTL, refreshed by
//! heartbeat), serves the gRPC service, owns shards through leases (renewed, self-fenced), keeps
//! room storage and alarms in Redis with every write fenced, hands shards to their preferred
//! owner when nodes join (rebalance), refuses to serve from a Redis that lost the cluster's data,
//! and on shutdown drains: it announces `draining`, moves every room to its next owner (a
//! hibernating party's sockets are handed over without a disconnect), releases its leases, and
//! exits within the drain timeout. An operator may also drain it without stopping it (the
//! `Drain` call, [`NodeControl`]): the same moves, after which the node stays up and a member,
//! announced as draining, its state `drained`, until it is stopped.
//!
//! What happens to its shards (failovers, lost leases, drains, rebalances, fenced writes,
//! refused rooms, operators' actions) goes to the cluster's events ([`crate::events`]).
//!
//! Every background task is owned by the process (one [`TaskTracker`] and one tree of
//! [`CancellationToken`]s): when [`run`] returns, nothing it started is left running.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use partyline::close_code;
use partyline::runtime::placement::shard_of;
use partyline::store::StoreError;
use partyline::sync::Lock;
use partyline::{Env, Limits, PartyRegistry, RoomKey};
use partyline_proto::pb::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarms::{self, AlarmScope, Parked};
use crate::events::NodeEvents;
use crate::host::{HostConfig, HostError, RoomHost};
use crate::metrics::{FnKind, MeteredStore, NodeMetrics};
use crate::service::{CheckSecret, NodeControl, NodeService};
use crate::shards::{LeaseBackend, LeaseTiming, Placement, Shards};
use partyline_cluster::client::{ClientConfig, ClusterClient, ClusterParties};
use partyline_cluster::redis::events::Kind;
use partyline_cluster::redis::marker::{fresh_value, Claim, Marker, Persistence};
use partyline_cluster::redis::{fence_for, Acquire, Leases, Membership, NodeInfo, Redis, RedisConfig, RedisStore};
use partyline_proto::pb;

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Stable node id (rendezvous hashing key); unique in the cluster.
    pub id: String,
    /// The gRPC address others reach this node at (`host:port`).
    pub advertise: String,
    /// Redis.
    pub redis: RedisConfig,
    /// The cluster secret callers must present (and this node presents to others).
    pub secret: String,
    /// More secrets callers may present, for rotating the secret without a restart of every
    /// process at once: accept the new one everywhere, switch, then drop the old one.
    pub accept_secrets: Vec<String>,
    /// TLS between gateways and nodes (mutual: callers need a certificate from the cluster CA).
    pub tls: Option<partyline_cluster::tls::ClusterTls>,
    /// Lease timing.
    pub leases: LeaseTiming,
    /// Membership heartbeat period; the record lives `member_ttl`.
    pub heartbeat: Duration,
    /// Membership record time to live.
    pub member_ttl: Duration,
    /// Longest a graceful shutdown may take: moving every room away and releasing the leases.
    pub drain_timeout: Duration,
    /// Handing shards to nodes that joined.
    pub rebalance: Rebalance,
    /// Take over at once from a lease holder whose process is gone (its port refuses
    /// connections), instead of waiting for its lease to expire.
    pub fast_failover: bool,
    /// Limits.
    pub limits: Limits,
    /// Party variables.
    pub env: Env,
    /// Create the cluster (write its marker) when Redis has none and no node is live: the very
    /// first start of a new cluster (`--init-cluster`). Without it such a node creates nothing:
    /// it waits, not ready, until `partyline init` creates the cluster (see `claim_marker`).
    pub init_cluster: bool,
}

/// How a node hands shards to their preferred owner after membership changes.
#[derive(Clone, Copy, Debug)]
pub struct Rebalance {
    /// How often a node looks for shards another node should own.
    pub every: Duration,
    /// Most shards handed over per look (0: never rebalance).
    pub max_shards: usize,
    /// How long a node must have been a member before shards are handed to it.
    pub settle: Duration,
}

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance { every: Duration::from_secs(1), max_shards: 32, settle: Duration::from_secs(3) }
    }
}

/// What a running node is doing, for readiness checks and for what it announces.
#[derive(Debug, Default)]
pub struct NodeState {
    draining: AtomicBool,
    refusing: AtomicBool,
    uninitialized: AtomicBool,
    registered: AtomicBool,
    redis_ok: AtomicBool,
    drained: AtomicBool,
}

impl NodeState {
    /// Draining: moving its rooms away (shutting down, or an operator's drain), or drained and
    /// still up; announced as draining either way, so no room is placed here.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The drain finished: no shard and no room left here (set once, never cleared).
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// What the node is doing, in a word (`Info.state`, the console): `uninitialized` (no
    /// cluster in Redis yet), `starting` (not registered yet), `refusing` (Redis lost the
    /// cluster's data), `cut_from_redis` (its last heartbeat failed), `drained` (drained and
    /// still up), `draining`, else `ready`. The first that applies.
    pub fn name(&self) -> &'static str {
        if self.uninitialized() {
            "uninitialized"
        } else if !self.registered() {
            "starting"
        } else if self.refusing() {
            "refusing"
        } else if !self.redis_ok() {
            "cut_from_redis"
        } else if self.draining() && self.drained() {
            "drained"
        } else if self.draining() {
            "draining"
        } else {
            "ready"
        }
    }

    /// Refusing to serve: Redis lost the cluster's data.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Waiting for a cluster: Redis has no cluster marker and this node may not create one.
    pub fn uninitialized(&self) -> bool {
        self.uninitialized.load(Ordering::Acquire)
    }

    /// Registered in the cluster's membership.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Redis answered the last heartbeat.
    pub fn redis_ok(&self) -> bool {
        self.redis_ok.load(Ordering::Acquire)
    }

    /// Ready to take rooms: registered, Redis reachable, not draining, not refusing.
    pub fn ready(&self) -> bool {
        self.registered() && self.redis_ok() && !self.draining() && !self.refusing() && !self.uninitialized()
    }
}

/// What a node reports about itself, shared with its `--admin-listen` endpoints
/// ([`crate::admin`]): metrics, and the state readiness is read from.
#[derive(Clone, Default)]
pub struct NodeTelemetry {
    /// Counters and histograms.
    pub metrics: Arc<NodeMetrics>,
    /// What the node is doing.
    pub state: Arc<NodeState>,
}

pub use partyline_cluster::wire::max_grpc_message_bytes;

/// A random incarnation suffix: new at every start, so a restarted node never reuses a lease
/// granted to its previous life.
fn boot_nonce() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{:x}", t, std::process::id())
}

/// Runs a node on `listener` until `shutdown` resolves, then drains and returns.
pub fn run(
    cfg: NodeConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, anyhow::Result<()>> {
    run_boxed(cfg, parties, listener, Box::pin(shutdown), NodeTelemetry::default())
}

/// Like [`run`], reporting what the node is doing and its metrics in `telemetry`.
///
/// A node runs in four steps: it starts (Redis, the cluster marker, the room host, the shard
/// table, its membership record), spawns its background tasks (renewals, heartbeats, alarms,
/// rebalance), serves gRPC until `shutdown` resolves or the server fails, and stops (drains,
/// then ends everything it started, under one cancellation tree).
pub fn run_with(
    cfg: NodeConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    telemetry: NodeTelemetry,
) -> BoxFuture<'static, anyhow::Result<()>> {
    run_boxed(cfg, parties, listener, Box::pin(shutdown), telemetry)
}

/// The node's whole life as one boxed future, made here: an `async fn`'s body is compiled again
/// in every crate that awaits it, and this one holds the node.
#[inline(never)]
fn run_boxed(
    cfg: NodeConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: BoxFuture<'static, ()>,
    telemetry: NodeTelemetry,
) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_node(cfg, parties, listener, shutdown, telemetry))
}

async fn run_node(
    cfg: NodeConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    mut shutdown: BoxFuture<'static, ()>,
    telemetry: NodeTelemetry,
) -> anyhow::Result<()> {
    // A node can wait in its start for a cluster to exist (see `claim_marker`): a shutdown
    // meanwhile ends it there.
    let started = tokio::select! {
        started = Started::start(cfg, parties, telemetry) => started?,
        _ = &mut shutdown => {
            tracing::info!("shut down before the node started");
            return Ok(());
        }
    };
    let tasks = Tasks::new();
    started.spawn_background(&tasks);
    let mut served = started.serve(listener, &tasks)?;
    let failed = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut served => Some(r),
    };
    started.stop(failed, served, tasks).await
}

/// The gRPC server's task.
type Served = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// How the gRPC server's task ended.
type ServerExit = Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>;

/// Everything a node starts, and the one cancellation tree that ends it: cancelling `stop` ends
/// the gRPC server and every background task; `stop_alarms`, its child, ends the alarm scheduler
/// alone, first, when a drain begins.
struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    stop_alarms: CancellationToken,
}

impl Tasks {
    fn new() -> Self {
        let stop = CancellationToken::new();
        Tasks { tracker: TaskTracker::new(), stop_alarms: stop.child_token(), stop }
    }
}

/// A node that has started: registered in the cluster, not serving yet.
struct Started {
    node: Node,
    redis: Redis,
    marker: Marker,
    store: Arc<RedisStore>,
    metrics: Arc<NodeMetrics>,
    parties: PartyRegistry,
    /// When the node started, in ms since the Unix epoch.
    started_unix_ms: u64,
}

impl Started {
    /// Connects to Redis and the cluster, claims the cluster marker, builds the room host and the
    /// shard table, and announces the node, so that gateways route here once it serves.
    async fn start(cfg: NodeConfig, parties: PartyRegistry, telemetry: NodeTelemetry) -> anyhow::Result<Started> {
        let NodeTelemetry { metrics, state } = telemetry;
        let started_unix_ms = crate::shards::wall_ms();
        // Readiness is exported from the start: a node that waits for its cluster is not ready.
        register_state_gauges(&metrics, &state);
        cfg.leases.validate().map_err(|e| anyhow::anyhow!("lease timing: {e}"))?;
        partyline_cluster::secret::validate(&cfg.secret)?;
        let redis = Redis::connect(cfg.redis.clone()).await.context("the node needs Redis")?;
        let events = NodeEvents::new(redis.events(), cfg.id.clone());
        let limits = Arc::new(cfg.limits.clone());
        let membership = redis.membership();
        let cluster = ClusterClient::start(
            ClientConfig {
                name: format!("node {}", cfg.id),
                secret: cfg.secret.clone(),
                max_grpc_message_bytes: max_grpc_message_bytes(&limits),
                request_timeout: limits.handler_timeout + Duration::from_secs(5),
                route_timeout: ClientConfig::route_timeout_for(cfg.leases.ttl),
                tls: cfg.tls.clone(),
            },
            membership.clone(),
            redis.leases(),
        )
        .await?;
        let marker = redis.marker();
        let cluster_id = claim_marker(&marker, &cluster, &state, cfg.init_cluster, cfg.heartbeat).await?;
        warn_about_persistence(&marker).await;

        let me = NodeInfo {
            id: cfg.id.clone(),
            inc: format!("{}-{}", cfg.id, boot_nonce()),
            addr: cfg.advertise.clone(),
            cluster: cluster_id.clone(),
            ..NodeInfo::default()
        };
        // Every room is held to the storage quota in its commit script.
        let store = Arc::new(redis.store().with_quota(cfg.limits.quota()));
        // Set once the shard table exists: a room whose storage refused its fence stops, and so
        // does every other room of its shard (the lease is not held at that epoch any more).
        let fenced_shards: Arc<std::sync::OnceLock<std::sync::Weak<Shards>>> = Arc::default();
        let on_fenced = {
            let fenced_shards = fenced_shards.clone();
            let events = events.clone();
            Arc::new(move |room: &RoomKey, fence: &partyline::store::Fence| {
                let shard = shard_of(room);
                events.fenced(room, shard, fence.epoch);
                let Some(shards) = fenced_shards.get().and_then(std::sync::Weak::upgrade) else { return };
                if shards.owned().contains(&(shard, fence.epoch)) {
                    shards.drop_shard(shard, "a room's storage refused its fence");
                }
            })
        };
        let host = RoomHost::new(HostConfig {
            parties: parties.clone(),
            store: Arc::new(MeteredStore::new(store.clone(), metrics.clone())),
            limits: limits.clone(),
            env: cfg.env.clone(),
            parties_client: Some(Arc::new(ClusterParties { client: cluster.clone(), parties: parties.clone() })),
            observer: Some(metrics.clone()),
            on_fenced: Some(on_fenced),
        });
        let lost_host = host.clone();
        let shards = Arc::new(Shards::new(
            Arc::new(NodeLeases {
                leases: redis.leases().expecting_marker(&cluster_id),
                marker: marker.clone(),
                me: me.clone(),
                ttl: cfg.leases.ttl,
            }),
            cfg.leases,
            Box::new(move |shard| {
                let n = lost_host.shutdown_rooms(
                    |k| shard_of(k) == shard,
                    close_code::SERVICE_RESTART,
                    partyline::client_text::ROOM_MOVED,
                );
                if n > 0 {
                    tracing::info!(shard, rooms = n, "rooms stopped with their shard");
                }
            }),
        ));
        shards.set_metrics(metrics.clone());
        shards.set_events(events.clone());
        let _ = fenced_shards.set(Arc::downgrade(&shards));
        register_gauges(&metrics, &host, &shards);
        if state.refusing() {
            shards.close();
        }

        let node = Node {
            cfg,
            me,
            state,
            shards,
            host,
            cluster,
            membership,
            handovers: Arc::default(),
            events,
            metrics: metrics.clone(),
        };
        // Announce ourselves before serving, so gateways route here.
        node.announce().await.context("could not register in Redis")?;
        node.state.registered.store(true, Ordering::Release);
        node.state.redis_ok.store(true, Ordering::Release);
        Ok(Started { node, redis, marker, store, metrics, parties, started_unix_ms })
    }

    /// Spawns the node's background tasks: lease renewals, membership heartbeats (checking the
    /// cluster marker), the alarm scheduler, and rebalancing.
    fn spawn_background(&self, tasks: &Tasks) {
        let node = &self.node;
        tasks.tracker.spawn(node.shards.clone().run_renewals(tasks.stop.clone()));
        tasks.tracker.spawn(node.clone().heartbeats(self.marker.clone(), tasks.stop.clone()));
        tasks.tracker.spawn(alarms::run(
            Arc::new(ClusterAlarms {
                store: self.store.clone(),
                shards: node.shards.clone(),
                cluster: node.cluster.clone(),
                host: node.host.clone(),
                me: node.me.clone(),
                leases: self.redis.leases(),
                membership: node.membership.clone(),
                fast_failover: node.cfg.fast_failover,
                events: node.events.clone(),
            }),
            tasks.stop_alarms.clone(),
        ));
        // The `main` party's crons: every node tries each firing, the one whose claim in Redis
        // wins runs it. Like alarms they stop when a drain begins (the other nodes run them).
        let claims = partyline_cluster::redis::crons::CronClaims::of(&self.redis, node.me.id.clone());
        tasks.tracker.spawn(crate::crons::Crons::supervise(
            self.parties.clone(),
            node.cfg.env.clone(),
            node.host.client(),
            Arc::new(claims),
            self.metrics.clone(),
            tasks.stop_alarms.clone(),
        ));
        tasks.tracker.spawn(node.clone().rebalance(tasks.stop.clone()));
        // A deployed version that asks for it (`partyline deploy --restart-rooms`): the running
        // rooms of its parties move to it now, a bounded number a second.
        if let Some(live) = self.parties.live() {
            let mut changes = live.changes();
            let host = node.host.clone();
            let stop = tasks.stop.clone();
            tasks.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    let change = *changes.borrow_and_update();
                    if let Some(per_second) = change.restart_per_second {
                        let started = std::time::Instant::now();
                        let asked = host.upgrade_rooms(per_second, &stop).await;
                        tracing::info!(
                            generation = change.generation,
                            rooms = asked,
                            ms = started.elapsed().as_millis() as u64,
                            "running rooms moved to the new version of their party"
                        );
                    }
                }
            });
        }
    }

    /// Starts the gRPC server on `listener` (the node service behind the secret check, and the
    /// standard health service); it serves until `tasks.stop` is cancelled.
    fn serve(&self, listener: TcpListener, tasks: &Tasks) -> anyhow::Result<Served> {
        let node = &self.node;
        let cfg = &node.cfg;
        let grpc_max = max_grpc_message_bytes(&cfg.limits);
        let service = NodeService {
            me: node.me.clone(),
            host: node.host.clone(),
            shards: node.shards.clone(),
            cluster: node.cluster.clone(),
            leases: self.redis.leases(),
            parties: self.parties.clone(),
            fast_failover: cfg.fast_failover,
            membership: node.membership.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            limits: Arc::new(cfg.limits.clone()),
            state: node.state.clone(),
            events: node.events.clone(),
            control: Arc::new(Control {
                node: node.clone(),
                tracker: tasks.tracker.clone(),
                stop: tasks.stop.clone(),
                stop_alarms: tasks.stop_alarms.clone(),
            }),
            started_unix_ms: self.started_unix_ms,
        };
        let server = NodeServer::new(service).max_decoding_message_size(grpc_max).max_encoding_message_size(grpc_max);
        let secrets = std::iter::once(&cfg.secret).chain(&cfg.accept_secrets);
        let server = tonic::service::interceptor::InterceptedService::new(server, CheckSecret::any_of(secrets));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_config(tls.server()?).context("the node's TLS configuration")?;
        }
        let me = &node.me;
        tracing::info!(node = %me.id, addr = %me.addr, inc = %me.inc, cluster = %me.cluster, "node serving");
        let (grpc_health, health_task) = crate::admin::grpc_health(node.state.clone(), tasks.stop.clone());
        tasks.tracker.spawn(health_task);
        Ok(tokio::spawn(
            builder
                .tcp_nodelay(true)
                .trace_fn(partyline_cluster::telemetry::grpc_server_span)
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(3)))
                .add_service(grpc_health)
                .add_service(server)
                .serve_with_incoming_shutdown(incoming(listener), tasks.stop.clone().cancelled_owned()),
        ))
    }

    /// Stops the node once `shutdown` resolved (`failed` is `None`) or the gRPC server ended
    /// (`failed` is its result). After a shutdown it first drains, the gRPC server still serving:
    /// gateways pause and hand over their sockets through it. Then it ends everything it started,
    /// stops the rooms left, and leaves the membership.
    async fn stop(self, failed: Option<ServerExit>, mut served: Served, tasks: Tasks) -> anyhow::Result<()> {
        let node = self.node;
        if failed.is_none() {
            tasks.stop_alarms.cancel();
            self.metrics.drains.inc();
            node.drain().await;
        }
        tasks.stop.cancel();
        tasks.tracker.close();
        let served = match failed {
            Some(r) => r,
            None => match tokio::time::timeout(Duration::from_secs(2), &mut served).await {
                Ok(r) => r,
                Err(_) => {
                    // Streams a gateway keeps open past the drain do not hold the process.
                    served.abort();
                    Ok(Ok(()))
                }
            },
        };
        if tokio::time::timeout(Duration::from_secs(2), tasks.tracker.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
        node.host.shutdown().await;
        let _ = node.membership.leave(&node.me.id).await;
        tracing::info!(node = %node.me.id, "node stopped");
        match served {
            Ok(r) => r.context("the gRPC server failed"),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(anyhow::anyhow!("the gRPC server task failed: {e}")),
        }
    }
}

/// Reads the cluster marker; see [`partyline_cluster::redis::marker`]. Marks the node refusing
/// when live members announce a marker Redis no longer has, or when shards' copies of the
/// marker are missing on a Redis Cluster ([`refuse_lost_copies`]).
///
/// A Redis with no marker and no live members is either a new cluster or one that lost its
/// data, and the node cannot tell which: creating a cluster is an explicit step, `partyline
/// init`, or the node's `--init-cluster` on the very first start. Without either the node
/// says so once, stays not ready (not registered, nothing served) and looks again every
/// `every`, so that it starts serving as soon as `partyline init` ran, without a restart.
async fn claim_marker(
    marker: &Marker,
    cluster: &ClusterClient,
    state: &NodeState,
    init: bool,
    every: Duration,
) -> anyhow::Result<String> {
    let mut waiting_since: Option<Instant> = None;
    loop {
        let found = match marker.get().await {
            Ok(found) => {
                state.redis_ok.store(true, Ordering::Release);
                found
            }
            // Once waiting, a Redis hiccup is waited out like the missing marker.
            Err(e) if waiting_since.is_some() => {
                state.redis_ok.store(false, Ordering::Release);
                tracing::warn!(error = %e, "could not read the cluster marker");
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => return Err(e).context("could not read the cluster marker"),
        };
        match found {
            Some(v) => {
                refuse_lost_copies(marker, state).await?;
                if let Some(since) = waiting_since {
                    tracing::info!(
                        cluster = %v,
                        waited_s = since.elapsed().as_secs(),
                        "the cluster exists now (`partyline init` ran): starting"
                    );
                    state.uninitialized.store(false, Ordering::Release);
                }
                return Ok(v);
            }
            None => {
                let announced: Vec<String> = cluster
                    .nodes()
                    .iter()
                    .filter(|n| !n.cluster.is_empty())
                    .map(|n| n.cluster.clone())
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                if let Some(lost) = announced.first() {
                    tracing::error!(
                        cluster = %lost,
                        "Redis LOST THE CLUSTER'S DATA: live nodes serve cluster {lost}, whose marker is gone from \
                         Redis; this node refuses to serve rooms (see docs/operations.md, 'Redis lost its data')"
                    );
                    state.uninitialized.store(false, Ordering::Release);
                    state.refusing.store(true, Ordering::Release);
                    return Ok(lost.clone());
                }
            }
        }
        if init {
            return match marker.claim(&fresh_value()).await.context("could not write the cluster marker")? {
                Claim::Created(v) => {
                    tracing::warn!(
                        cluster = %v,
                        "no cluster marker in Redis and no live nodes: created cluster {v} (--init-cluster). If \
                         this cluster had data before, Redis lost it (run Redis with AOF: docs/operations.md)"
                    );
                    state.uninitialized.store(false, Ordering::Release);
                    Ok(v)
                }
                Claim::Existing(v) => {
                    refuse_lost_copies(marker, state).await?;
                    state.uninitialized.store(false, Ordering::Release);
                    Ok(v)
                }
            };
        }
        if waiting_since.is_none() {
            waiting_since = Some(Instant::now());
            state.uninitialized.store(true, Ordering::Release);
            tracing::error!(
                marker = %marker.key(),
                "NO CLUSTER IN REDIS: Redis has no cluster marker and no node is live, so this is a new \
                 cluster or Redis lost the cluster's data; this node does not guess which, and serves no \
                 room until the cluster exists. A new cluster: run `partyline init` once with this node's \
                 Redis settings (or start the first node with --init-cluster). A cluster that had data: \
                 restore Redis from its AOF or a backup instead (docs/operations.md, 'Redis lost its data'). \
                 Checking again every heartbeat"
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Redis Cluster: marks the node refusing when shards' copies of the cluster marker are missing
/// (a primary lost its data), whether other nodes serve or not. Writing them back would start
/// those shards over, empty: that is the operator's explicit step (`partyline init
/// --start-over`), never this node's inference. The heartbeat keeps checking the missing copies
/// ([`Marker::check`]) and the node serves once they are back, restored or written back.
async fn refuse_lost_copies(marker: &Marker, state: &NodeState) -> anyhow::Result<()> {
    let lost = marker.lost_copies().await.context("could not check the cluster marker's copies")?;
    if lost.is_empty() {
        return Ok(());
    }
    let n = lost.len();
    let some: Vec<String> = lost.iter().take(8).map(u16::to_string).collect();
    tracing::error!(
        shards = n,
        first = %some.join(","),
        "Redis LOST THE DATA of {n} shards: their copies of the cluster marker are gone (a Redis Cluster \
         primary lost its data); this node refuses to serve rooms rather than serve those shards empty. \
         Restore that primary from its AOF or a backup (nodes resume by themselves), or start those {n} \
         shards over, EMPTY, with `partyline init --start-over` (docs/operations.md, 'Redis lost its data')"
    );
    state.refusing.store(true, Ordering::Release);
    Ok(())
}

async fn warn_about_persistence(marker: &Marker) {
    match marker.persistence().await {
        Persistence::Aof(fsync) if fsync == "always" => {}
        Persistence::Aof(fsync) => tracing::info!(
            appendfsync = %fsync,
            "Redis uses AOF with appendfsync {fsync}: a Redis crash can lose up to about a second of acknowledged writes"
        ),
        Persistence::Snapshots(save) => tracing::warn!(
            save = %save,
            "Redis persists by snapshots only: a Redis crash loses every write since the last snapshot; use AOF"
        ),
        Persistence::None => tracing::warn!(
            "Redis has no persistence: a Redis restart loses every room's storage (nodes will refuse to serve \
             from it); use AOF (appendonly yes)"
        ),
        Persistence::Unknown => {}
    }
}

/// Lease operations of this node incarnation; Redis refuses a lease while it lacks the cluster
/// marker (checked in the acquire script).
struct NodeLeases {
    leases: Leases,
    marker: Marker,
    me: NodeInfo,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for NodeLeases {
    async fn acquire(&self, shard: u16) -> anyhow::Result<Acquire> {
        // The acquire script itself checks the cluster marker (or the shard's copy of it).
        match self.leases.acquire(shard, &self.me.id, &self.me.inc, &self.me.addr, self.ttl).await {
            Err(partyline_cluster::redis::Error::Lost(s)) => {
                self.marker.note_lost(s);
                Err(partyline_cluster::redis::Error::Lost(s).into())
            }
            other => Ok(other?),
        }
    }
    async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<Option<bool>>> {
        Ok(self.leases.renew_many(leases, &self.me.inc, self.ttl).await?)
    }
    async fn release(&self, shard: u16, epoch: u64) -> anyhow::Result<bool> {
        Ok(self.leases.release(shard, &self.me.inc, epoch).await?)
    }
}

/// The parts of a running node its background loops share.
#[derive(Clone)]
struct Node {
    cfg: NodeConfig,
    me: NodeInfo,
    state: Arc<NodeState>,
    shards: Arc<Shards>,
    host: RoomHost,
    cluster: ClusterClient,
    membership: Membership,
    /// Handovers under way, by shard: a drain that meets a shard a rebalance is already moving
    /// joins that handover instead of starting a second one.
    handovers: Arc<Mutex<HashMap<u16, Shared<BoxFuture<'static, usize>>>>>,
    /// The cluster's events, as this node writes them.
    events: Arc<NodeEvents>,
    /// Counters.
    metrics: Arc<NodeMetrics>,
}

impl Node {
    /// The membership record as of now.
    fn record(&self) -> NodeInfo {
        NodeInfo { draining: self.state.draining(), refusing: self.state.refusing(), ..self.me.clone() }
    }

    async fn announce(&self) -> partyline_cluster::redis::Result<bool> {
        self.membership.heartbeat(&self.record(), self.cfg.member_ttl).await
    }

    /// Heartbeats, checking the cluster marker each time; see [`partyline_cluster::redis::marker`].
    async fn heartbeats(self, marker: Marker, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_shout: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match marker.check(&self.me.cluster).await {
                Ok(true) if self.state.refusing() => {
                    tracing::warn!(cluster = %self.me.cluster, "the cluster marker is back in Redis: serving rooms again");
                    self.state.refusing.store(false, Ordering::Release);
                    if !self.state.draining() {
                        self.shards.reopen();
                    }
                }
                Ok(true) => {}
                Ok(false) => {
                    if !self.state.refusing.swap(true, Ordering::AcqRel) {
                        self.shards.close();
                        self.shards.drop_all("Redis lost the cluster's data");
                    }
                    if last_shout.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_shout = Some(Instant::now());
                        tracing::error!(
                            cluster = %self.me.cluster,
                            lost = marker.lost_shards().len(),
                            "Redis LOST THE CLUSTER'S DATA (the cluster marker, or some shards' copies of it, are \
                             gone or replaced): this node refuses to serve rooms rather than serve them empty. \
                             Restore Redis (the node serves again by itself once the data is back), or start the \
                             lost data over, empty: `partyline init --start-over`, then restart every node if the \
                             marker itself was lost (docs/operations.md, 'Redis lost its data')"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not check the cluster marker"),
            }
            let sent = tokio::time::Instant::now();
            let announced = self.announce().await;
            self.state.redis_ok.store(announced.is_ok(), Ordering::Release);
            if announced.is_ok() {
                // Reported to gateways (ping answers): a node cut from Redis is routed around.
                self.shards.note_redis_ok(sent);
            }
            if let Err(e) = announced {
                tracing::warn!(error = %e, "membership heartbeat failed");
            }
        }
    }

    /// Hands a shard to its next owner: no new rooms start in it, its rooms move (writes
    /// durable, hibernating sockets handed over), and its lease is released so the next owner
    /// takes it at once. One handover per shard at a time: a second call joins the first (and
    /// counts no rooms). Every wait is bounded by `deadline`. A room that has not stopped by
    /// then is stopped by the node itself: the shard is dropped (its guards turn invalid, so
    /// nothing more of it is relayed) and its lease is left to expire instead of being released,
    /// so no next owner starts the room while this one may still run.
    async fn hand_over(&self, shard: u16, deadline: Instant) -> usize {
        let (handover, first) = {
            let mut handovers = self.handovers.locked();
            match handovers.get(&shard) {
                Some(h) => (h.clone(), false),
                None => {
                    let node = self.clone();
                    let h = async move { node.move_shard(shard, deadline).await }.boxed().shared();
                    handovers.insert(shard, h.clone());
                    (h, true)
                }
            }
        };
        let moved = handover.await;
        if !first {
            return 0;
        }
        self.handovers.locked().remove(&shard);
        moved
    }

    async fn move_shard(&self, shard: u16, deadline: Instant) -> usize {
        if self.shards.begin_handover(shard).is_none() {
            return 0;
        }
        let rooms = self.host.move_rooms(|k| shard_of(k) == shard, deadline).await;
        let mut running = Vec::new();
        for room in &rooms {
            if tokio::time::timeout_at(deadline, room.stopped()).await.is_err() {
                running.push(room.clone());
            }
        }
        if running.is_empty() {
            self.shards.release(shard).await;
            return rooms.len();
        }
        tracing::warn!(
            shard,
            rooms = running.len(),
            "rooms did not finish moving by the deadline; stopping them and leaving the shard's lease to expire"
        );
        self.shards.drop_shard(shard, "rooms did not finish moving by the deadline");
        for room in running {
            tokio::spawn(async move {
                let _ = room.shutdown(close_code::SERVICE_RESTART, partyline::client_text::ROOM_MOVED).await;
            });
        }
        rooms.len()
    }

    /// Graceful shutdown: announce `draining` (gateways stop placing rooms here), take no new
    /// shards, move every room to its next owner and release every lease, within the drain
    /// timeout; drop any shard still held; then leave the membership. The gRPC listener stays
    /// open all along (it closes after this returns). After an operator's drain there is
    /// nothing left to move: it only leaves the membership.
    async fn drain(&self) {
        let started = Instant::now();
        let deadline = started + self.cfg.drain_timeout;
        self.state.draining.store(true, Ordering::Release);
        self.shards.close();
        if let Err(e) = self.announce().await {
            tracing::warn!(error = %e, "could not announce draining");
        }
        let owned = self.shards.owned();
        let rooms = self.host.room_count();
        tracing::info!(node = %self.me.id, shards = owned.len(), rooms, "draining");
        let text = format!("draining to shut down: {} shards, {rooms} rooms", owned.len());
        self.events.record(self.events.event(Kind::Drain, text));
        let moved = self.move_away(&owned, deadline).await;
        // Withdrawing the record and then closing the listener is what lets another node break
        // a lease at once (`service::take_over_if_gone`): no shard may still be valid here by
        // then. Normally none is left (each was released or dropped); one the drain timed out
        // on, or acquired while the drain began, is dropped now: its guard turns invalid and its
        // rooms stop.
        self.shards.drop_all("the drain ended with the shard still held");
        // Not `drained`: that is a node an operator drained that stays up. A node that hangs
        // after its shutdown drain stays `draining` (and its alert fires).
        let _ = self.membership.leave(&self.me.id).await;
        let took = started.elapsed();
        tracing::info!(node = %self.me.id, rooms = moved, took = ?took, "drained");
        let text = format!("drained to shut down: {moved} rooms moved in {:.1} s", took.as_secs_f64());
        self.events.record(self.events.event(Kind::Drained, text));
    }

    /// An operator's drain, once [`Control::drain`] has marked the node draining and closed its
    /// shard table: the shutdown drain's moves, within the drain timeout, after which the node
    /// stays up and a member, announced as draining, and its state is `drained`.
    async fn operator_drain(&self, who: String, owned: Vec<(u16, u64)>) {
        let started = Instant::now();
        if let Err(e) = self.announce().await {
            tracing::warn!(error = %e, "could not announce draining");
        }
        let mut moved = self.move_away(&owned, started + self.cfg.drain_timeout).await;
        // A shard granted while the drain began (its acquisition was under way when the table
        // closed) moves too.
        let late: Vec<(u16, u64)> =
            self.shards.owned().into_iter().filter(|(s, _)| !owned.iter().any(|(o, _)| o == s)).collect();
        if !late.is_empty() {
            moved += self.move_away(&late, Instant::now() + self.cfg.drain_timeout).await;
        }
        // What the drain timed out on: dropped, its lease left to expire (as a shutdown does).
        self.shards.drop_all("the drain ended with the shard still held");
        self.state.drained.store(true, Ordering::Release);
        let took = started.elapsed();
        tracing::info!(
            node = %self.me.id, who = %who, rooms = moved, took = ?took,
            "drained; the node stays up, announced as draining, until it is stopped"
        );
        let text = format!(
            "drained: {moved} rooms moved in {:.1} s; the node stays up, announced as draining, until it is stopped",
            took.as_secs_f64()
        );
        self.events.record(self.events.event(Kind::Drained, text).by(who));
    }

    /// Hands every shard of `owned` over, all at once, by `deadline` (the releases themselves
    /// get a margin before it); how many rooms moved.
    async fn move_away(&self, owned: &[(u16, u64)], deadline: Instant) -> usize {
        let margin = (self.cfg.drain_timeout / 10).min(Duration::from_secs(1));
        let move_by = deadline.checked_sub(margin).unwrap_or(deadline);
        let moves = owned.iter().map(|(shard, _)| self.hand_over(*shard, move_by));
        match tokio::time::timeout_at(deadline, futures::future::join_all(moves)).await {
            Ok(n) => n.into_iter().sum(),
            Err(_) => {
                tracing::warn!("drain timed out; the remaining leases expire by themselves");
                0
            }
        }
    }

    /// Hands shards to the node rendezvous hashing prefers for them once it has been a member
    /// for a while: a node that joins takes over its share gradually.
    async fn rebalance(self, stop: CancellationToken) {
        let r = self.cfg.rebalance;
        if r.max_shards == 0 {
            return;
        }
        let mut tick = tokio::time::interval(r.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first_seen: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if self.state.draining() || self.state.refusing() {
                continue;
            }
            let now = Instant::now();
            let view = self.cluster.nodes();
            first_seen.retain(|id, _| view.iter().any(|n| &n.id == id));
            for n in view.iter() {
                first_seen.entry(n.id.clone()).or_insert(now);
            }
            let settled = |id: &str| first_seen.get(id).is_some_and(|t| now.duration_since(*t) >= r.settle);
            let give: Vec<u16> = self
                .shards
                .owned()
                .into_iter()
                .map(|(shard, _)| shard)
                .filter(|shard| {
                    self.cluster.preferred(*shard).is_some_and(|p| p.id != self.me.id && !p.refusing && settled(&p.id))
                })
                .take(r.max_shards)
                .collect();
            if give.is_empty() {
                continue;
            }
            let deadline = Instant::now() + self.cfg.drain_timeout;
            let moved: usize =
                futures::future::join_all(give.iter().map(|s| self.hand_over(*s, deadline))).await.into_iter().sum();
            tracing::info!(shards = give.len(), rooms = moved, "rebalanced shards to their preferred owners");
            let text = format!("handed {} shards ({moved} rooms) to their preferred owners", give.len());
            let event = self.events.event(Kind::Rebalance, text);
            self.events.record(if let [one] = give[..] { event.shard(one) } else { event });
        }
    }
}

/// What operators ask of the running node ([`NodeControl`], behind the gRPC service): its
/// drain, run as one of the node's tasks, and shard handovers.
struct Control {
    node: Node,
    tracker: TaskTracker,
    stop: CancellationToken,
    stop_alarms: CancellationToken,
}

#[tonic::async_trait]
impl NodeControl for Control {
    /// Marks the node draining and closes its shard table now (the answer's figures are those
    /// it held then), stops its alarms and crons (the other nodes run them), then moves its
    /// rooms in the background ([`Node::operator_drain`]). A node already draining (an
    /// operator's drain under way or done, or its shutdown) starts nothing: `already`.
    fn drain(&self, who: &str) -> pb::DrainReply {
        let node = &self.node;
        let (shards, rooms) = (node.shards.count() as u32, node.host.room_count() as u32);
        if node.state.draining.swap(true, Ordering::AcqRel) {
            tracing::info!(
                node = %node.me.id, who = %who, drained = node.state.drained(),
                "an operator asked for a drain; already draining"
            );
            return pb::DrainReply { shards, rooms, already: true };
        }
        node.shards.close();
        self.stop_alarms.cancel();
        node.metrics.drains.inc();
        let owned = node.shards.owned();
        tracing::info!(
            node = %node.me.id, who = %who, shards, rooms,
            "an operator asked for a drain: draining (the node stays up until it is stopped)"
        );
        let text = format!("draining, asked by an operator: {shards} shards, {rooms} rooms");
        node.events.record(node.events.event(Kind::Drain, text).by(who));
        let (node, stop, who) = (node.clone(), self.stop.clone(), who.to_string());
        self.tracker.spawn(async move {
            tokio::select! {
                _ = node.operator_drain(who, owned) => {}
                _ = stop.cancelled() => {}
            }
        });
        pb::DrainReply { shards, rooms, already: false }
    }

    async fn move_shard(&self, shard: u16, who: &str) -> Option<usize> {
        let node = &self.node;
        if !node.shards.owned().iter().any(|(s, _)| *s == shard) {
            tracing::info!(node = %node.me.id, who = %who, shard, "an operator asked to move a shard not held here");
            return None;
        }
        tracing::info!(node = %node.me.id, who = %who, shard, "an operator asked to move a shard: handing it over");
        let moved = node.hand_over(shard, Instant::now() + node.cfg.drain_timeout).await;
        tracing::info!(node = %node.me.id, who = %who, shard, rooms = moved, "shard handed over");
        let text = format!("moved shard {shard} ({moved} rooms) to its next owner");
        node.events.record(node.events.event(Kind::Action, text).by(who).shard(shard));
        Some(moved)
    }
}

/// The gauges of the node's state, read at every scrape: ready, draining, drained.
fn register_state_gauges(metrics: &NodeMetrics, state: &Arc<NodeState>) {
    let s = state.clone();
    metrics.register_fn(
        "partyline_node_ready",
        "1 while the node takes rooms (as /readyz): registered, Redis reachable, not draining, not refusing, \
         the cluster exists.",
        FnKind::Gauge,
        move || s.ready() as i64,
    );
    let s = state.clone();
    metrics.register_fn(
        "partyline_node_draining",
        "1 while the node drains, or is drained and still up (announced as draining).",
        FnKind::Gauge,
        move || s.draining() as i64,
    );
    let s = state.clone();
    metrics.register_fn(
        "partyline_node_drained",
        "1 once the node's drain finished and it is still up (an operator's drain), until it stops.",
        FnKind::Gauge,
        move || (s.draining() && s.drained()) as i64,
    );
}

/// Gauges read at every scrape: rooms live, shards owned.
fn register_gauges(metrics: &NodeMetrics, host: &RoomHost, shards: &Arc<Shards>) {
    let host = host.clone();
    metrics.register_fn("partyline_node_rooms", "Rooms live on this node.", FnKind::Gauge, move || {
        host.room_count() as i64
    });
    let shards = Arc::downgrade(shards);
    metrics.register_fn("partyline_node_shards_owned", "Shard leases this node holds.", FnKind::Gauge, move || {
        shards.upgrade().map_or(0, |s| s.count() as i64)
    });
}

/// Accepted gRPC connections with TCP_NODELAY: tonic applies its own `tcp_nodelay` only to
/// listeners it binds itself, and without it a response's DATA frame can wait for the peer's
/// delayed ACK (~40 ms).
fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// The alarms of the shards this node owns or should own.
struct ClusterAlarms {
    store: Arc<RedisStore>,
    shards: Arc<Shards>,
    cluster: ClusterClient,
    host: RoomHost,
    me: NodeInfo,
    leases: Leases,
    membership: Membership,
    fast_failover: bool,
    events: Arc<NodeEvents>,
}

#[async_trait]
impl AlarmScope for ClusterAlarms {
    async fn due(&self, now_ms: i64, limit: usize, parked: &Parked) -> Result<Vec<RoomKey>, StoreError> {
        let owned: HashMap<u16, u64> = self.shards.owned().into_iter().collect();
        let shards: Vec<(u16, Option<u64>)> = (0..partyline::runtime::placement::SHARDS)
            .filter_map(|s| match owned.get(&s) {
                Some(epoch) => Some((s, Some(*epoch))),
                None => self.cluster.preferred(s).is_some_and(|p| p.id == self.me.id).then_some((s, None)),
            })
            .collect();
        let due = self.store.due_alarms_in(now_ms, limit, &shards, |room| parked.contains(room)).await?;
        Ok(due.into_iter().map(|(k, _)| k).collect())
    }

    async fn wake(&self, room: &RoomKey) -> Result<(), HostError> {
        let shard = shard_of(room);
        let mut placement = self.shards.acquire(shard).await;
        if let Ok(Placement::Held { owner, .. }) = &placement {
            // Held by a node that is provably gone: take it over now rather than after its lease
            // expires.
            if self.fast_failover
                && crate::service::take_over_if_gone(
                    &self.leases,
                    &self.membership,
                    &self.me.inc,
                    shard,
                    owner,
                    Some(&self.events),
                )
                .await
            {
                placement = self.shards.acquire(shard).await;
            }
        }
        match placement {
            Ok(Placement::Here(g)) => {
                let admit = || g.accepts();
                let handle = self.host.room_fenced(room, Some(fence_for(shard, &self.me.inc, g.epoch)), &admit)?;
                handle.alarm().await.map_err(|_| HostError::Unavailable(room.clone()))
            }
            // Another node owns it now (or it is between owners): its owner wakes it.
            Ok(Placement::Held { .. } | Placement::Leaving) => Ok(()),
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "could not acquire a shard for its alarm");
                Err(HostError::Unavailable(room.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_says_the_first_thing_that_applies() {
        let state = NodeState::default();
        let set = |flag: &AtomicBool, on: bool| flag.store(on, Ordering::Release);
        assert_eq!(state.name(), "starting");
        set(&state.uninitialized, true);
        assert_eq!(state.name(), "uninitialized");
        set(&state.uninitialized, false);
        set(&state.registered, true);
        set(&state.redis_ok, true);
        assert_eq!(state.name(), "ready");
        assert!(state.ready());
        set(&state.draining, true);
        assert_eq!(state.name(), "draining");
        set(&state.drained, true);
        assert_eq!(state.name(), "drained");
        assert!(!state.ready());
        set(&state.redis_ok, false);
        assert_eq!(state.name(), "cut_from_redis");
        set(&state.refusing, true);
        assert_eq!(state.name(), "refusing");
    }
}
