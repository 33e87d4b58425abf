//! `partyline node`: an owner node. It registers in Redis (membership with a TTL, refreshed by
//! heartbeat), serves the gRPC service, owns shards through leases (renewed, self-fenced), keeps
//! room storage and alarms in Redis with every write fenced, and on shutdown hands its shards
//! back (releases the leases) before leaving.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use partyline::link::close_code;
use partyline::placement::shard_of;
use partyline::storage::now_ms;
use partyline::{Env, Limits, PartyRegistry};
use partyline_proto::pb::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::client::{ClientConfig, ClusterClient, ClusterParties};
use crate::host::{HostConfig, RoomHost};
use crate::redis::{fence_for, NodeInfo, Redis, RedisConfig};
use crate::service::{CheckSecret, NodeService};
use crate::shards::{LeaseTiming, Placement, RedisLeases, Shards};

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Stable node id (rendezvous hashing key); unique in the cluster.
    pub id: String,
    /// The gRPC address others reach this node at (`host:port`).
    pub advertise: String,
    /// Redis.
    pub redis: RedisConfig,
    /// The cluster secret callers must present.
    pub secret: String,
    /// Lease timing.
    pub leases: LeaseTiming,
    /// Membership heartbeat period; the record lives `member_ttl`.
    pub heartbeat: Duration,
    /// Membership record time to live.
    pub member_ttl: Duration,
    /// Limits.
    pub limits: Limits,
    /// Party variables.
    pub env: Env,
}

/// Largest gRPC message for the given limits: a frame or an HTTP body plus headers.
pub fn max_grpc_message_bytes(limits: &Limits) -> usize {
    limits.max_message_bytes.max(limits.max_request_body_bytes) + (64 << 10)
}

/// A random incarnation suffix: new at every start, so a restarted node never reuses a lease
/// granted to its previous life.
fn boot_nonce() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{:x}", t, std::process::id())
}

/// Runs a node on `listener` until `shutdown` resolves.
pub async fn run(
    cfg: NodeConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    cfg.leases.validate().map_err(|e| anyhow::anyhow!("lease timing: {e}"))?;
    anyhow::ensure!(!cfg.secret.is_empty(), "the cluster secret is empty: set PARTYLINE_CLUSTER_SECRET");
    let redis = Redis::connect(cfg.redis.clone()).await.context("the node needs Redis")?;
    let me = NodeInfo {
        id: cfg.id.clone(),
        inc: format!("{}-{}", cfg.id, boot_nonce()),
        addr: cfg.advertise.clone(),
        draining: false,
    };
    let limits = Arc::new(cfg.limits.clone());
    let grpc_max = max_grpc_message_bytes(&limits);
    let cluster = ClusterClient::start(
        ClientConfig {
            name: format!("node {}", cfg.id),
            secret: cfg.secret.clone(),
            max_grpc_message_bytes: grpc_max,
            request_timeout: limits.handler_timeout + Duration::from_secs(5),
        },
        redis.membership(),
    )
    .await?;
    let store = Arc::new(redis.store());
    let host = RoomHost::new(HostConfig {
        parties: parties.clone(),
        store: store.clone(),
        limits: limits.clone(),
        env: cfg.env.clone(),
        parties_client: Some(Arc::new(ClusterParties { client: cluster.clone(), parties: parties.clone() })),
    });
    let lost_host = host.clone();
    let shards = Arc::new(Shards::new(
        Arc::new(RedisLeases {
            leases: redis.leases(),
            node_id: me.id.clone(),
            inc: me.inc.clone(),
            addr: me.addr.clone(),
            ttl: cfg.leases.ttl,
        }),
        cfg.leases,
        Box::new(move |shard| {
            let n = lost_host.shutdown_rooms(|k| shard_of(k) == shard, close_code::SERVICE_RESTART, "room moved");
            if n > 0 {
                tracing::info!(shard, rooms = n, "rooms stopped with their shard");
            }
        }),
    ));

    // Announce ourselves before serving, so gateways route here.
    let membership = redis.membership();
    membership.heartbeat(&me, cfg.member_ttl).await.context("could not register in Redis")?;
    let mut tasks = vec![
        tokio::spawn(shards.clone().run_renewals()),
        tokio::spawn(heartbeats(membership.clone(), me.clone(), cfg.heartbeat, cfg.member_ttl)),
        tokio::spawn(alarms(store.clone(), shards.clone(), cluster.clone(), host.clone(), me.id.clone())),
    ];

    let service = NodeService {
        me: me.clone(),
        host: host.clone(),
        shards: shards.clone(),
        cluster: cluster.clone(),
        leases: redis.leases(),
        parties,
    };
    let server = NodeServer::new(service).max_decoding_message_size(grpc_max).max_encoding_message_size(grpc_max);
    let server = tonic::service::interceptor::InterceptedService::new(server, CheckSecret::new(&cfg.secret));
    tracing::info!(node = %me.id, addr = %me.addr, inc = %me.inc, "node serving");
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;

    // Hand the shards back and leave.
    tracing::info!(node = %me.id, shards = shards.count(), "node stopping: releasing shards");
    for t in &tasks {
        t.abort();
    }
    tasks.clear();
    let _ = membership.heartbeat(&NodeInfo { draining: true, ..me.clone() }, cfg.member_ttl).await;
    shards.release_all().await;
    host.shutdown().await;
    let _ = membership.leave(&me.id).await;
    served.context("the gRPC server failed")
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

async fn heartbeats(membership: crate::redis::Membership, me: NodeInfo, every: Duration, ttl: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = membership.heartbeat(&me, ttl).await {
            tracing::warn!(error = %e, "membership heartbeat failed");
        }
    }
}

/// Wakes rooms whose alarm is due, for the shards this node owns or should own.
async fn alarms(
    store: Arc<crate::redis::RedisStore>,
    shards: Arc<Shards>,
    cluster: ClusterClient,
    host: RoomHost,
    me: String,
) {
    let mut tick = tokio::time::interval(crate::host::ALARM_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let owned: HashSet<u16> = shards.owned().into_iter().map(|(s, _)| s).collect();
        let wanted = |s: u16| owned.contains(&s) || cluster.preferred(s).is_some_and(|p| p.id == me);
        let due = match store.due_alarms_where(now_ms(), 256, wanted).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read due alarms");
                continue;
            }
        };
        for (key, _) in due {
            let shard = shard_of(&key);
            match shards.acquire(shard).await {
                Ok(Placement::Here(g)) => {
                    if let Ok(room) = host.room_fenced(&key, Some(fence_for(shard, g.epoch))) {
                        let _ = room.alarm().await;
                    }
                }
                Ok(Placement::Held { .. }) => {}
                Err(e) => tracing::warn!(room = %key, error = %e, "could not acquire a shard for its alarm"),
            }
        }
    }
}
