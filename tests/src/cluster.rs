//! `TestCluster`: a real `redis-server` on a free port (or a real 3-primary Redis Cluster), N
//! nodes and M gateways on `127.0.0.1:0`, all in this process but talking over real sockets
//! (gRPC between gateways and nodes, Redis over TCP). Dropping the cluster stops everything.
//!
//! `TestCluster::builder().redis_cluster()` runs the nodes and gateways on a Redis Cluster; so
//! does every builder when `PARTYLINE_TEST_REDIS=cluster` is set, which is how the whole
//! cluster suite runs against Redis Cluster too (scripts/test.sh does both).

use std::net::SocketAddr;
use std::time::Duration;

use partyline::{Env, Limits, PartyRegistry};
use partyline_cluster::client::{Auth, Client};
use partyline_cluster::redis::testing::{RedisCluster, RedisServer};
use partyline_cluster::redis::{Redis, RedisConfig};
use partyline_node::server::{NodeConfig, Rebalance};
use partyline_node::shards::LeaseTiming;
use partyline_proto::pb;
use partyline_server::gateway::GatewayProcessConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{all_parties, http, within, Client as WsClient, HttpResponse};

/// The secret test clusters use.
pub const SECRET: &str = "test-cluster-secret";

/// A running node or gateway.
pub struct Process {
    /// Its id (nodes) or name (gateways).
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Process {
    /// A process started by hand (a test's own node or gateway): `stop` asks it to stop.
    pub fn running(
        id: String,
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Process { id, addr, stop: Some(stop), task: Some(task) }
    }

    /// Stops it gracefully (a node releases its shards and leaves) and waits.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = within(30, "a process to stop", task).await;
        }
    }

    /// Ends it abruptly: no lease is released, no goodbye is sent (as a crash would).
    pub fn kill(&mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Redis a test cluster runs on.
pub enum TestRedis {
    /// One `redis-server`.
    Single(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl TestRedis {
    /// The URL nodes and gateways are given.
    pub fn url(&self) -> String {
        match self {
            TestRedis::Single(s) => s.url(),
            TestRedis::Cluster(c) => c.url(),
        }
    }
}

/// Which Redis a builder starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RedisKind {
    Single,
    /// A Redis Cluster of 3 primaries with this many replicas each.
    Cluster {
        replicas: usize,
    },
}

impl RedisKind {
    /// `PARTYLINE_TEST_REDIS=cluster` turns every test cluster into one on Redis Cluster.
    fn from_env() -> Self {
        match std::env::var("PARTYLINE_TEST_REDIS").as_deref() {
            Ok("cluster") => RedisKind::Cluster { replicas: 0 },
            Ok("") | Ok("single") | Err(_) => RedisKind::Single,
            Ok(other) => panic!("PARTYLINE_TEST_REDIS={other}: use `single` or `cluster`"),
        }
    }
}

/// How to build a test cluster.
pub struct Builder {
    nodes: usize,
    gateways: usize,
    limits: Limits,
    rebalance: Rebalance,
    parties: Option<(PartyRegistry, Env)>,
    redis: RedisKind,
    replicas: Replicas,
}

/// What nodes wait for after each commit and lease grant (`--redis-min-replicas`,
/// `--redis-replica-timeout`).
#[derive(Clone, Copy, Debug)]
struct Replicas {
    min: u32,
    timeout: Duration,
}

impl Builder {
    /// This many nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// This many gateways.
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// These limits on every process.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Nodes never hand shards to nodes that join (they keep what they own).
    pub fn no_rebalance(mut self) -> Self {
        self.rebalance.max_shards = 0;
        self
    }

    /// These parties and variables on every process (default: the example and test parties).
    pub fn parties(mut self, parties: PartyRegistry, env: Env) -> Self {
        self.parties = Some((parties, env));
        self
    }

    /// Runs on a Redis Cluster of 3 primaries instead of one Redis server.
    pub fn redis_cluster(mut self) -> Self {
        self.redis = RedisKind::Cluster { replicas: 0 };
        self
    }

    /// Runs on a Redis Cluster of 3 primaries with one replica each (for failovers).
    pub fn redis_cluster_with_replicas(mut self) -> Self {
        self.redis = RedisKind::Cluster { replicas: 1 };
        self
    }

    /// Nodes count a commit or lease grant only once `min` replicas hold it, waiting up to
    /// `timeout` (`--redis-min-replicas`, `--redis-replica-timeout`; default 0: no wait).
    pub fn redis_min_replicas(mut self, min: u32, timeout: Duration) -> Self {
        self.replicas = Replicas { min, timeout };
        self
    }

    /// Starts Redis, the nodes (waiting until all are registered), then the gateways.
    pub async fn start(self) -> TestCluster {
        crate::capture_logs();
        let redis = match self.redis {
            RedisKind::Single => TestRedis::Single(RedisServer::start()),
            RedisKind::Cluster { replicas } => TestRedis::Cluster(RedisCluster::start_with_replicas(3, replicas)),
        };
        let (parties, env) = self.parties.unwrap_or_else(|| (all_parties(), Env::default()));
        let mut cluster = TestCluster {
            redis,
            nodes: Vec::new(),
            gateways: Vec::new(),
            limits: self.limits,
            rebalance: self.rebalance,
            parties,
            env,
            replicas: self.replicas,
        };
        for _ in 0..self.nodes {
            cluster.add_node().await;
        }
        cluster.wait_for_members(self.nodes).await;
        for _ in 0..self.gateways {
            cluster.add_gateway().await;
        }
        cluster
    }
}

/// A cluster under test.
pub struct TestCluster {
    /// The Redis server or Redis Cluster.
    pub redis: TestRedis,
    /// The nodes, in start order.
    pub nodes: Vec<Process>,
    /// The gateways, in start order.
    pub gateways: Vec<Process>,
    limits: Limits,
    rebalance: Rebalance,
    parties: PartyRegistry,
    env: Env,
    replicas: Replicas,
}

impl TestCluster {
    /// A builder: 1 node and 1 gateway by default, fast lease timing.
    pub fn builder() -> Builder {
        Builder {
            nodes: 1,
            gateways: 1,
            limits: Limits::default(),
            rebalance: Rebalance::default(),
            parties: None,
            redis: RedisKind::from_env(),
            replicas: Replicas { min: 0, timeout: RedisConfig::default().replica_timeout },
        }
    }

    /// The Redis Cluster this runs on; panics on a single Redis server.
    pub fn redis_cluster(&self) -> &RedisCluster {
        match &self.redis {
            TestRedis::Cluster(c) => c,
            TestRedis::Single(_) => panic!("this test cluster runs on one Redis server, not a Redis Cluster"),
        }
    }

    /// Redis settings of this cluster.
    pub fn redis_config(&self) -> RedisConfig {
        RedisConfig::new(self.redis.url())
    }

    /// Connects to this cluster's Redis.
    pub async fn redis(&self) -> Redis {
        Redis::connect(self.redis_config()).await.expect("connect to the test redis")
    }

    /// Starts one more node.
    pub async fn add_node(&mut self) -> &Process {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = format!("node-{}", self.nodes.len() + 1);
        let cfg = NodeConfig {
            id: id.clone(),
            advertise: addr.to_string(),
            redis: RedisConfig {
                min_replicas: self.replicas.min,
                replica_timeout: self.replicas.timeout,
                ..self.redis_config()
            },
            secret: SECRET.into(),
            accept_secrets: Vec::new(),
            tls: None,
            leases: LeaseTiming::FAST,
            heartbeat: Duration::from_millis(500),
            member_ttl: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(10),
            rebalance: self.rebalance,
            fast_failover: true,
            limits: self.limits.clone(),
            env: self.env.clone(),
            // Every test cluster starts on a Redis of its own: whichever node starts first
            // creates the cluster (as `--init-cluster` on every node would).
            init_cluster: true,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(partyline_node::server::run(cfg, self.parties.clone(), listener, async {
            let _ = stopped.await;
        }));
        self.nodes.push(Process { id, addr, stop: Some(stop), task: Some(task) });
        self.nodes.last().unwrap()
    }

    /// Starts one more gateway.
    pub async fn add_gateway(&mut self) -> &Process {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = format!("gateway-{}", self.gateways.len() + 1);
        let cfg = GatewayProcessConfig {
            name: id.clone(),
            redis: self.redis_config(),
            secret: SECRET.into(),
            limits: self.limits.clone(),
            env: self.env.clone(),
            max_connections: 100_000,
            edge: Default::default(),
            tls: None,
            cluster_tls: None,
            max_clock_offset: None,
            console: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(partyline_server::gateway::run_gateway(cfg, self.parties.clone(), listener, async {
            let _ = stopped.await;
        }));
        self.gateways.push(Process { id, addr, stop: Some(stop), task: Some(task) });
        // Ready when it answers HTTP.
        within(20, "the gateway to answer", async {
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.gateways.last().unwrap()
    }

    /// Waits until `n` nodes are registered as live.
    pub async fn wait_for_members(&self, n: usize) {
        let redis = self.redis().await;
        within(30, "nodes to register", async {
            loop {
                if redis.membership().live().await.map(|l| l.len()).unwrap_or(0) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// Address of gateway `i`.
    pub fn gateway(&self, i: usize) -> SocketAddr {
        self.gateways[i].addr
    }

    /// Connects a WebSocket client through gateway `i`.
    pub async fn connect(&self, i: usize, path: &str) -> WsClient {
        let url = format!("ws://{}{}", self.gateway(i), path);
        WsClient::connect(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// One HTTP request through gateway `i`.
    pub async fn http(&self, i: usize, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        http(self.gateway(i), method, path, &[], body).await
    }

    /// A gRPC client of node `i` presenting `secret`.
    pub async fn node_client(&self, i: usize, secret: &str) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.nodes[i].addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the node");
        pb::node_client::NodeClient::with_interceptor(channel, Auth::new(secret).unwrap())
    }

    /// Node `i`'s own report (rooms, shards owned).
    pub async fn node_info(&self, i: usize) -> pb::InfoReply {
        let mut c = self.node_client(i, SECRET).await;
        c.info(pb::InfoRequest {}).await.expect("node info").into_inner()
    }
}

/// The handover deadline of [`slow_move_node`]s (`--drain-timeout`, which bounds rebalance
/// moves too): short, so that a move gives up on a room whose handler sleeps long before the
/// handler ends.
pub const SLOW_MOVE_DEADLINE: Duration = Duration::from_secs(1);

/// Starts node `id` in this process (a test wakes its `slow` handlers when it chooses,
/// [`crate::parties::wake_slow`]), on the test's Redis: fast leases, the default rebalancing
/// (every 1 s, to nodes that have been members for 3 s), [`SLOW_MOVE_DEADLINE`], and a handler
/// time limit (30 s) far beyond it. Returns once the node is a live member.
pub async fn slow_move_node(redis_url: &str, id: &str) -> Process {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a node port");
    let addr = listener.local_addr().unwrap();
    let limits = Limits { handler_timeout: Duration::from_secs(30), ..Default::default() };
    let cfg = NodeConfig {
        id: id.to_string(),
        advertise: addr.to_string(),
        redis: RedisConfig::new(redis_url),
        secret: SECRET.into(),
        accept_secrets: Vec::new(),
        tls: None,
        leases: LeaseTiming::FAST,
        heartbeat: Duration::from_millis(500),
        member_ttl: Duration::from_secs(3),
        drain_timeout: SLOW_MOVE_DEADLINE,
        rebalance: Rebalance::default(),
        fast_failover: true,
        limits,
        env: Default::default(),
        // A fresh Redis per test: whichever node starts first creates the cluster.
        init_cluster: true,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(partyline_node::server::run(cfg, all_parties(), listener, async {
        let _ = stopped.await;
    }));
    let redis = Redis::connect(RedisConfig::new(redis_url)).await.expect("connect to the test redis");
    within(30, "the node to register", async {
        while !redis.membership().live().await.unwrap_or_default().iter().any(|n| n.id == id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    Process::running(id.to_string(), addr, stop, task)
}
