//! The connection to Redis: one server (`redis://`) or a Redis Cluster (`redis+cluster://`).
//!
//! [`Connection`] is what the store, the leases, the membership and the marker share: an
//! auto-reconnecting [`ConnectionManager`] for one server, or the crate's cluster connection,
//! which learns the slot map from the seed nodes, sends each command to the primary that serves
//! its slot, follows `MOVED`/`ASK` redirections (refreshing the slot map on `MOVED`), waits and
//! retries on `TRYAGAIN` (a slot being migrated) and `CLUSTERDOWN`, and reconnects to nodes that
//! went away. Both implement [`ConnectionLike`], so `cmd.query_async(&mut conn)` and
//! `script.invoke_async(&mut conn)` work on either.
//!
//! Every command this crate sends touches one hash slot (see [`super::keys`]); a pipeline of
//! commands on different slots is not one request in a cluster, so [`Connection::each`] runs
//! such batches as one pipeline on a single server and as concurrent commands in a cluster (the
//! cluster connection multiplexes them over one connection per primary).
//!
//! Pub/sub is separate ([`PubSubSource`]): a subscription is a dedicated connection to one
//! server; in a cluster, to any node (Redis Cluster forwards every `PUBLISH` to all nodes).

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use futures::StreamExt;

use super::{redact, Error, RedisConfig, Result};

/// The URL scheme that selects Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Commands [`Connection::each`] keeps in flight at once in a cluster.
const CONCURRENT: usize = 512;

/// Where Redis is, parsed from a [`RedisConfig::url`].
#[derive(Clone, Debug)]
pub enum Target {
    /// One server (or a Sentinel-managed primary behind one address).
    Single(ConnectionInfo),
    /// A Redis Cluster, reached through these seed nodes (the others are discovered).
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Parses `url`: `redis://…` is one server, `redis+cluster://host:port[,host:port…]` a
    /// cluster (credentials, if any, apply to every node; a cluster has only database 0).
    pub fn parse(url: &str) -> Result<Target> {
        let shown = redact(url);
        let bad = |why: String| Error::Config(format!("bad Redis URL {shown}: {why}"));
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            let info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
            return Ok(Target::Single(info));
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.strip_suffix("/0").or_else(|| hosts.strip_suffix('/')).unwrap_or(hosts);
        if hosts.contains(['/', '?', '#']) {
            return Err(bad(
                "a Redis Cluster URL is a list of host:port seeds, without a path, a database or options".into()
            ));
        }
        let seeds = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{userinfo}{h}").into_connection_info().map_err(|e| bad(format!("seed {h}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err(bad("no seed node (redis+cluster://host:port[,host:port...])".into()));
        }
        Ok(Target::Cluster(seeds))
    }
}

/// Nagle's algorithm would hold a command back until the previous one is acknowledged (up to a
/// 40 ms delayed ACK): every command is latency-critical here.
fn nodelay(info: ConnectionInfo) -> ConnectionInfo {
    info.set_tcp_settings(::redis::io::tcp::TcpSettings::default().set_nodelay(true))
}

/// One connection to Redis, single server or cluster; see the module docs. Cheap to clone.
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }

    /// Runs independent commands, each on one hash slot, and answers each in order (a server
    /// error answers that command only). One server: one pipeline, one round trip. A cluster:
    /// all at once (bounded), each to its slot's primary; a primary that does not answer fails
    /// only its own commands.
    pub async fn each(&self, cmds: Vec<Cmd>) -> Vec<::redis::RedisResult<Value>> {
        self.each_after(None, cmds).await
    }

    /// [`Connection::each`], sending `first` before the commands (its answer ignored): in the
    /// same pipeline on one server, on its own before them in a cluster (where a keyless
    /// command like `SCRIPT LOAD` goes to every node).
    pub async fn each_after(&self, first: Option<Cmd>, cmds: Vec<Cmd>) -> Vec<::redis::RedisResult<Value>> {
        let n = cmds.len();
        match self {
            _ if n == 0 => Vec::new(),
            Connection::Single(conn) => {
                let mut pipe = ::redis::pipe();
                if let Some(first) = first {
                    pipe.add_command(first).ignore();
                }
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.ignore_errors();
                match pipe.query_async::<Vec<Value>>(&mut conn.clone()).await {
                    Ok(values) if values.len() == n => values.into_iter().map(Value::extract_error).collect(),
                    Ok(values) => {
                        let e = protocol_error(format!("a pipeline of {n} commands answered {}", values.len()));
                        vec![Err(e); n]
                    }
                    Err(e) => vec![Err(e); n],
                }
            }
            Connection::Cluster(conn) => {
                if let Some(first) = first {
                    if let Err(e) = first.query_async::<Value>(&mut conn.clone()).await {
                        tracing::debug!(error = %e, "a preliminary command failed");
                    }
                }
                futures::stream::iter(cmds)
                    .map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<Value>(&mut conn).await }
                    })
                    .buffered(CONCURRENT)
                    .collect()
                    .await
            }
        }
    }
}

fn protocol_error(msg: String) -> ::redis::RedisError {
    ::redis::RedisError::from((::redis::ErrorKind::UnexpectedReturnType, "unexpected answer", msg))
}

/// Opens pub/sub connections: to the server, or to any node of a cluster.
#[derive(Clone)]
pub enum PubSubSource {
    /// One server.
    Single(Client),
    /// A cluster: its seeds, plus the nodes the cluster connection reports.
    Cluster {
        /// The seed nodes of the URL.
        seeds: Vec<ConnectionInfo>,
        /// For discovering the other nodes (`CLUSTER NODES`).
        conn: ClusterConnection,
        /// Bound on each connection attempt.
        timeout: Duration,
    },
}

impl PubSubSource {
    /// A new pub/sub connection. In a cluster it tries the known nodes in a random order (so
    /// subscribers spread over the nodes) until one accepts.
    pub async fn open(&self) -> ::redis::RedisResult<PubSub> {
        match self {
            PubSubSource::Single(client) => client.get_async_pubsub().await,
            PubSubSource::Cluster { seeds, conn, timeout } => {
                let mut candidates = discover(conn, seeds).await;
                let start = (uuid::Uuid::new_v4().as_u128() % candidates.len().max(1) as u128) as usize;
                candidates.rotate_left(start);
                let mut last = None;
                for info in candidates {
                    let attempt = async { Client::open(info.clone())?.get_async_pubsub().await };
                    match tokio::time::timeout(*timeout, attempt).await {
                        Ok(Ok(pubsub)) => return Ok(pubsub),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {
                            last = Some(protocol_error(format!("no answer from {:?} within {timeout:?}", info.addr())))
                        }
                    }
                }
                Err(last.unwrap_or_else(|| protocol_error("no Redis Cluster node to subscribe at".into())))
            }
        }
    }
}

/// Every node of the cluster the connection knows (from `CLUSTER NODES`), then the seeds not
/// among them; just the seeds if the cluster does not answer.
async fn discover(conn: &ClusterConnection, seeds: &[ConnectionInfo]) -> Vec<ConnectionInfo> {
    let Some(template) = seeds.first() else { return Vec::new() };
    let listing: ::redis::RedisResult<String> =
        ::redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn.clone()).await;
    let mut out: Vec<ConnectionInfo> = match listing {
        Ok(text) => cluster_nodes(&text)
            .into_iter()
            .map(|(host, port)| template.clone().set_addr(ConnectionAddr::Tcp(host, port)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "CLUSTER NODES failed; subscribing through the seed nodes");
            Vec::new()
        }
    };
    for seed in seeds {
        if !out.iter().any(|i| i.addr() == seed.addr()) {
            out.push(seed.clone());
        }
    }
    out
}

/// The `host:port` of every node in a `CLUSTER NODES` listing that is not failing.
pub fn cluster_nodes(listing: &str) -> Vec<(String, u16)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.split(',').any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr")) {
                return None;
            }
            // ip:port@cport[,hostname]
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return None;
            }
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Connects to `target` (bounded by `config.connect_timeout`) and checks every primary answers.
pub async fn connect(target: &Target, config: &RedisConfig) -> Result<(Connection, PubSubSource)> {
    let shown = redact(&config.url);
    let failed = |reason: String| Error::Connect { url: shown.clone(), reason };
    match target {
        Target::Single(info) => {
            let client = Client::open(nodelay(info.clone()))
                .map_err(|e| Error::Config(format!("bad Redis URL {shown}: {e}")))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout))
                .set_number_of_retries(4)
                .set_max_delay(Duration::from_secs(1));
            let connect = async {
                let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
                ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
                // Best effort (some managed services restrict INFO): is this a cluster node?
                let cluster: String =
                    ::redis::cmd("INFO").arg("cluster").query_async(&mut conn).await.unwrap_or_default();
                Ok::<_, ::redis::RedisError>((conn, cluster))
            };
            let (conn, cluster) = bounded(config.connect_timeout, connect).await.map_err(failed)?;
            if cluster.lines().any(|l| l.trim() == "cluster_enabled:1") {
                return Err(failed(format!(
                    "this server is a Redis Cluster node: use {CLUSTER_SCHEME}host:port[,host:port...] to run on the cluster"
                )));
            }
            Ok((Connection::Single(conn), PubSubSource::Single(client)))
        }
        Target::Cluster(seeds) => {
            let seeds: Vec<ConnectionInfo> = seeds.iter().cloned().map(nodelay).collect();
            let client = ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .overall_response_timeout(Some(config.response_timeout))
                // TRYAGAIN while a slot migrates (a script's keys are on both primaries for a
                // moment) and CLUSTERDOWN during a failover are retried after 5, 10, 20 … ms (at
                // most 100 ms apart) for as long as the response timeout allows; every ASK
                // redirection counts as a retry too.
                .retries(64)
                .min_retry_wait(5)
                .max_retry_wait(100)
                .retry_wait_formula(5, 2)
                .build()
                .map_err(|e| Error::Config(format!("bad Redis URL {shown}: {e}")))?;
            let connect = async {
                let mut conn = client.get_async_connection().await?;
                // Routed to every primary: each must answer.
                ::redis::cmd("PING").query_async::<()>(&mut conn).await?;
                Ok::<_, ::redis::RedisError>(conn)
            };
            let conn = bounded(config.connect_timeout, connect).await.map_err(|reason| {
                if reason.contains("cluster support disabled") {
                    failed(format!("{reason} (this is not a Redis Cluster: use redis://host:port)"))
                } else {
                    failed(reason)
                }
            })?;
            let pubsub = PubSubSource::Cluster { seeds, conn: conn.clone(), timeout: config.connect_timeout };
            Ok((Connection::Cluster(conn), pubsub))
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(target: &Target) -> Vec<String> {
        match target {
            Target::Single(i) => vec![i.addr().to_string()],
            Target::Cluster(seeds) => seeds.iter().map(|i| i.addr().to_string()).collect(),
        }
    }

    #[test]
    fn urls_select_the_mode() {
        assert!(matches!(Target::parse("redis://127.0.0.1:6379").unwrap(), Target::Single(_)));
        let t = Target::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert!(matches!(t, Target::Cluster(_)));
        assert_eq!(addrs(&t), vec!["10.0.0.1:7000", "10.0.0.2:7001"]);
        let t = Target::parse("redis+cluster://user:p%40ss@a:1, b:2/").unwrap();
        assert_eq!(addrs(&t), vec!["a:1", "b:2"]);
        let Target::Cluster(seeds) = t else { unreachable!() };
        assert!(seeds
            .iter()
            .all(|s| s.redis_settings().username() == Some("user") && s.redis_settings().password() == Some("p@ss")));
        assert!(matches!(Target::parse("redis+cluster://a:1/0").unwrap(), Target::Cluster(_)));
        for bad in ["redis+cluster://", "redis+cluster://a:1/3", "redis+cluster://a:1?x=1", "nope"] {
            let err = Target::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err:?}");
        }
        let err = Target::parse("redis+cluster://u:secret@a:1/5").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn cluster_nodes_listing_is_parsed() {
        let listing = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 [::1]:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
";
        assert_eq!(
            cluster_nodes(listing),
            vec![
                ("127.0.0.1".to_string(), 30004),
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30001),
                ("::1".to_string(), 30005)
            ]
        );
    }
}
