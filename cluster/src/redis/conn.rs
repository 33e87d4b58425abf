//! The connection to Redis: one server (`redis://`, `rediss://` over TLS) or a Redis Cluster
//! (`redis+cluster://`, `rediss+cluster://` over TLS).
//!
//! [`Connection`] is what the store, the leases, the membership and the marker share: an
//! auto-reconnecting [`ConnectionManager`] for one server, or a [`Router`] for a cluster, which
//! learns the slot map from the seed nodes and sends each command to the primary that serves its
//! key's slot, following `MOVED`/`ASK` and waiting out `TRYAGAIN` (see [`super::router`]). Both
//! implement [`ConnectionLike`], so `cmd.query_async(&mut conn)` and
//! `script.invoke_async(&mut conn)` work on either.
//!
//! Every command this crate sends touches one hash slot (see [`super::keys`]). Batches of such
//! commands over many slots ([`Connection::each`]) are one pipeline on a single server and one
//! pipeline per primary on a cluster.
//!
//! Pub/sub is separate ([`PubSubSource`]): a subscription is a dedicated connection to one
//! server; in a cluster, to any node (Redis Cluster forwards every `PUBLISH` to all nodes).

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use super::router::Router;
use super::{redact, Error, RedisConfig, Result};
use futures::future::BoxFuture;

/// The URL scheme that selects Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";
/// The same over TLS to every node: `rediss+cluster://...`. Node certificates are checked
/// against the system's roots (a private CA is added with `SSL_CERT_FILE`), for the name or IP
/// address the cluster reports for each node.
pub const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// Where Redis is, parsed from a [`RedisConfig::url`].
#[derive(Clone, Debug)]
pub enum Target {
    /// One server (or a Sentinel-managed primary behind one address). Boxed: with TLS support
    /// a `ConnectionInfo` is ten times the size of the cluster variant.
    Single(Box<ConnectionInfo>),
    /// A Redis Cluster, reached through these seed nodes (the others are discovered).
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Parses `url`: `redis://…` (`rediss://…`) is one server,
    /// `redis+cluster://host:port[,host:port…]` (`rediss+cluster://…`) a cluster (credentials,
    /// if any, apply to every node; a cluster has only database 0).
    pub fn parse(url: &str) -> Result<Target> {
        let shown = redact(url);
        let bad = |why: String| Error::Config(format!("bad Redis URL {shown}: {why}"));
        let (scheme, rest) = match (url.strip_prefix(CLUSTER_SCHEME), url.strip_prefix(CLUSTER_TLS_SCHEME)) {
            (Some(rest), _) => ("redis", rest),
            (None, Some(rest)) => ("rediss", rest),
            (None, None) => {
                let info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
                return Ok(Target::Single(Box::new(info)));
            }
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
            .map(|h| {
                format!("{scheme}://{userinfo}{h}").into_connection_info().map_err(|e| bad(format!("seed {h}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err(bad("no seed node (redis+cluster://host:port[,host:port...])".into()));
        }
        Ok(Target::Cluster(seeds))
    }
}

/// The address of the cluster node `host:port`, reached the way `template` (a seed) is: over
/// TLS, with the same settings, when the URL was `rediss+cluster://`.
pub(crate) fn node_addr(template: &ConnectionAddr, host: String, port: u16) -> ConnectionAddr {
    match template {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host, port),
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
    Cluster(Arc<Router>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(r) => Box::pin(async move { r.run(cmd).await }),
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
            // A pipeline may span slots: its commands go where they belong and answer in order.
            Connection::Cluster(r) => Box::pin(async move {
                let cmds: Vec<Cmd> = pipeline.cmd_iter().cloned().collect();
                let answers = r.each(None, cmds).await;
                answers
                    .into_iter()
                    .skip(offset)
                    .take(count)
                    .map(|a| match a {
                        Ok(v) => Ok(v),
                        Err(e) => ::redis::ServerError::try_from(e).map(Value::ServerError),
                    })
                    .collect()
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(_) => 0,
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
    /// one pipeline per primary, all at once; a primary that does not answer fails only its own
    /// commands.
    pub async fn each(&self, cmds: Vec<Cmd>) -> Vec<::redis::RedisResult<Value>> {
        self.each_after(None, cmds).await
    }

    /// [`Connection::each`], sending `first` ahead of the commands in each pipeline (its answer
    /// ignored), e.g. a `SCRIPT LOAD` for the `EVALSHA`s that follow.
    #[inline(never)]
    pub fn each_after(&self, first: Option<Cmd>, cmds: Vec<Cmd>) -> BoxFuture<'_, Vec<::redis::RedisResult<Value>>> {
        Box::pin(self.each_after_unboxed(first, cmds))
    }

    async fn each_after_unboxed(&self, first: Option<Cmd>, cmds: Vec<Cmd>) -> Vec<::redis::RedisResult<Value>> {
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
            Connection::Cluster(router) => router.each(first.as_ref(), cmds).await,
        }
    }
}

/// How many replicas must hold a write before it counts: see [`RedisConfig::min_replicas`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas that must acknowledge the write (`WAIT`); 0: none asked for, no `WAIT` sent.
    pub min: u32,
    /// How long `WAIT` waits for them.
    pub timeout: Duration,
}

impl Replicas {
    /// The settings of `config`: its `replica_timeout`, at most half the response timeout (so
    /// the `WAIT` answers before the command that carries it times out), at least 1 ms (`WAIT`
    /// with 0 would wait forever).
    pub fn of(config: &RedisConfig) -> Self {
        let timeout = config.replica_timeout.min(config.response_timeout / 2).max(Duration::from_millis(1));
        Replicas { min: config.min_replicas, timeout }
    }

    fn wait_cmd(&self) -> Cmd {
        let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        ::redis::cmd("WAIT").arg(self.min).arg(ms).to_owned()
    }
}

impl Connection {
    /// Runs `cmd` (one slot) and, right behind it in one pipeline on the same connection (on a
    /// cluster: to the node that answers `cmd`), `WAIT min timeout`, which answers how many
    /// replicas acknowledged every write of that connection up to it. `cmd`'s answer if it
    /// succeeded and enough replicas hold it; a server error from `cmd` as it came; an error
    /// when fewer replicas answered (the write may be on the primary, but it is not
    /// acknowledged).
    #[inline(never)]
    pub fn run_replicated<'a>(
        &'a self,
        cmd: &'a Cmd,
        replicas: Replicas,
    ) -> BoxFuture<'a, ::redis::RedisResult<Value>> {
        Box::pin(self.run_replicated_unboxed(cmd, replicas))
    }

    async fn run_replicated_unboxed(&self, cmd: &Cmd, replicas: Replicas) -> ::redis::RedisResult<Value> {
        if replicas.min == 0 {
            return self.clone().req_packed_command(cmd).await;
        }
        let wait = replicas.wait_cmd();
        let (value, acked) = match self {
            Connection::Single(conn) => {
                let mut pipe = ::redis::pipe();
                pipe.add_command(cmd.clone()).add_command(wait).ignore_errors();
                let mut values: Vec<Value> = pipe.query_async(&mut conn.clone()).await?;
                let acked = values.pop();
                let value = values.pop().ok_or_else(|| protocol_error("a pipeline answered nothing".into()))?;
                (value, acked)
            }
            Connection::Cluster(router) => router.run_then(cmd, Some(&wait)).await?,
        };
        if matches!(value, Value::ServerError(_)) {
            return Ok(value);
        }
        match acked {
            Some(Value::Int(n)) if n >= i64::from(replicas.min) => Ok(value),
            Some(Value::Int(n)) => Err(::redis::RedisError::from((
                ::redis::ErrorKind::Client,
                "too few replicas",
                format!(
                    "the write reached {n} of the {} replicas required (--redis-min-replicas) within {:?}: not acknowledged",
                    replicas.min, replicas.timeout
                ),
            ))),
            other => Err(protocol_error(format!("WAIT answered {other:?}: the write is not acknowledged"))),
        }
    }

    /// This connection, sending `WAIT` behind every script it runs when `replicas.min > 0`
    /// (see [`Connection::run_replicated`]): pass it to `Script::invoke_async`.
    pub fn replicated(&self, replicas: Replicas) -> Replicated {
        Replicated { conn: self.clone(), replicas }
    }
}

/// A [`Connection`] that follows every script (`EVALSHA`, `EVAL`) with `WAIT`; other commands
/// (such as the `SCRIPT LOAD` of a script Redis does not know yet) go as they are. See
/// [`Connection::replicated`].
#[derive(Clone)]
pub struct Replicated {
    conn: Connection,
    replicas: Replicas,
}

fn is_script(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(::redis::Arg::Simple(name)) => name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL"),
        _ => false,
    }
}

impl ConnectionLike for Replicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if is_script(cmd) {
            Box::pin(async move { self.conn.run_replicated(cmd, self.replicas).await })
        } else {
            self.conn.req_packed_command(cmd)
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
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
    /// A cluster: the nodes its slot map names, then its seeds.
    Cluster {
        /// The seed nodes of the URL (credentials and settings for every node).
        seeds: Vec<ConnectionInfo>,
        /// The cluster's slot map.
        router: Arc<Router>,
        /// Bound on each connection attempt.
        timeout: Duration,
    },
}

impl PubSubSource {
    /// A new pub/sub connection. In a cluster it tries the known nodes in a random order (so
    /// subscribers spread over the nodes) until one accepts.
    #[inline(never)]
    pub fn open(&self) -> BoxFuture<'_, ::redis::RedisResult<PubSub>> {
        Box::pin(self.open_unboxed())
    }

    async fn open_unboxed(&self) -> ::redis::RedisResult<PubSub> {
        match self {
            PubSubSource::Single(client) => client.get_async_pubsub().await,
            PubSubSource::Cluster { seeds, router, timeout } => {
                let Some(template) = seeds.first() else {
                    return Err(protocol_error("no Redis Cluster seed node".into()));
                };
                let mut candidates: Vec<ConnectionInfo> = router
                    .nodes()
                    .into_iter()
                    .map(|(host, port)| template.clone().set_addr(node_addr(template.addr(), host, port)))
                    .collect();
                let start = (uuid::Uuid::new_v4().as_u128() % candidates.len().max(1) as u128) as usize;
                candidates.rotate_left(start);
                for seed in seeds {
                    if !candidates.iter().any(|c| c.addr() == seed.addr()) {
                        candidates.push(seed.clone());
                    }
                }
                let mut last = None;
                for info in candidates {
                    let attempt = async { Client::open(info.clone())?.get_async_pubsub().await };
                    match tokio::time::timeout(*timeout, attempt).await {
                        Ok(Ok(pubsub)) => return Ok(pubsub),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {
                            last = Some(protocol_error(format!("no answer from {} within {timeout:?}", info.addr())))
                        }
                    }
                }
                Err(last.unwrap_or_else(|| protocol_error("no Redis Cluster node to subscribe at".into())))
            }
        }
    }
}

/// Connects to `target` (bounded by `config.connect_timeout`) and checks the server, or every
/// primary of the cluster, answers.
#[inline(never)]
pub fn connect<'a>(target: &'a Target, config: &'a RedisConfig) -> BoxFuture<'a, Result<(Connection, PubSubSource)>> {
    Box::pin(connect_unboxed(target, config))
}

async fn connect_unboxed(target: &Target, config: &RedisConfig) -> Result<(Connection, PubSubSource)> {
    let shown = redact(&config.url);
    let failed = |reason: String| Error::Connect { url: shown.clone(), reason };
    match target {
        Target::Single(info) => {
            let client = Client::open(nodelay(info.as_ref().clone()))
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
                let scheme = if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
                    CLUSTER_TLS_SCHEME
                } else {
                    CLUSTER_SCHEME
                };
                return Err(failed(format!(
                    "this server is a Redis Cluster node: use {scheme}host:port[,host:port...] to run on the cluster"
                )));
            }
            Ok((Connection::Single(conn), PubSubSource::Single(client)))
        }
        Target::Cluster(seeds) => {
            let seeds: Vec<ConnectionInfo> = seeds.iter().cloned().map(nodelay).collect();
            let connect = Router::connect(seeds.clone(), config.connect_timeout, config.response_timeout);
            let router = bounded(config.connect_timeout * 2, connect).await.map_err(|reason| {
                if reason.contains("cluster support disabled") {
                    failed(format!("{reason} (this is not a Redis Cluster: use redis://host:port)"))
                } else {
                    failed(reason)
                }
            })?;
            let router = Arc::new(router);
            let pubsub = PubSubSource::Cluster { seeds, router: router.clone(), timeout: config.connect_timeout };
            Ok((Connection::Cluster(router), pubsub))
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
    fn rediss_cluster_reaches_every_node_over_tls() {
        let t = Target::parse("rediss+cluster://user:pw@a:1,b:2").unwrap();
        assert_eq!(addrs(&t), vec!["a:1", "b:2"]);
        let Target::Cluster(seeds) = t else { unreachable!() };
        assert!(seeds.iter().all(|s| matches!(s.addr(), ConnectionAddr::TcpTls { insecure: false, .. })));
        // Nodes the cluster reports are reached the same way as the seeds.
        let node = node_addr(seeds[0].addr(), "10.0.0.9".into(), 7001);
        assert!(
            matches!(&node, ConnectionAddr::TcpTls { host, port: 7001, insecure: false, .. } if host == "10.0.0.9")
        );
        let plain = Target::parse("redis+cluster://a:1").unwrap();
        let Target::Cluster(seeds) = plain else { unreachable!() };
        assert!(matches!(node_addr(seeds[0].addr(), "h".into(), 1), ConnectionAddr::Tcp(..)));
    }
}
