//! [`ProcCluster`]: a cluster of **child processes** of the real `partyline` binary (nodes and
//! gateways) around a real `redis-server`, for fault tests that need what only a process can
//! do: die at once (SIGKILL), freeze (SIGSTOP/SIGCONT), drain (SIGTERM), restart under the same
//! id and port, and lose Redis (each node reaches Redis through its own [`TcpProxy`], which a
//! test can switch to drop or hold the traffic).
//!
//! Processes get the environment a deployment gives them (`PARTYLINE_REDIS_URL`,
//! `PARTYLINE_CLUSTER_SECRET`, `PARTYLINE_LISTEN`, `PARTYLINE_ADVERTISE`, `PARTYLINE_NODE_ID`,
//! `PARTYLINE_LEASE_PROFILE=fast`, `PARTYLINE_HOST`, `PARTYLINE_PORT`,
//! `PARTYLINE_WORKER_THREADS`), and nothing else of the caller's `PARTYLINE_*` variables. Each
//! one's stdout and stderr go to `<name>.log` in the cluster's temporary directory; when a test
//! fails (the cluster is dropped while panicking) the last lines of every log are printed and the
//! directory is kept (`PARTYLINE_TEST_KEEP_LOGS=1` keeps it after passing tests too).
//! Before the first node starts, the cluster is created with `partyline init`, as a deployment
//! does.
//! `PARTYLINE_TEST_LOG` sets the processes' `RUST_LOG` (default `info`).
//!
//! The binary is `$PARTYLINE_BIN`, else `partyline` next to the test executable's `deps/`
//! directory (the same target directory and profile), else `$CARGO_TARGET_DIR/debug/partyline`
//! or `<repo>/target/debug/partyline`. `scripts/test.sh` builds it (`cargo build --bin
//! partyline`) before running the tests; a binary older than the server's sources is refused,
//! so that an edit to a node is never tested against the binary built before it. A cluster
//! built with [`ProcClusterBuilder::binary`] runs that binary instead (e.g. `partyline-faulty`,
//! with the test parties, which cargo builds for the tests of this crate).
//!
//! Children stay in the test's process group on purpose: when nextest stops a test that ran out
//! of time it signals that group, which reaches them too. Dropping the cluster SIGKILLs and reaps
//! every process, also when the test panicked.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use partyline::runtime::placement::shard_of;
use partyline::RoomKey;
use partyline_cluster::redis::testing::{RedisCluster, RedisServer};
use partyline_cluster::redis::{NodeInfo, Redis, RedisConfig};
use partyline_node::shards::LeaseTiming;

use crate::proxy::TcpProxy;

/// The cluster secret of process clusters.
pub const SECRET: &str = "proc-cluster-secret";

/// The lease timing of the nodes by default (`PARTYLINE_LEASE_PROFILE=fast`; see
/// [`ProcClusterBuilder::lease_timing`]).
pub const LEASES: LeaseTiming = LeaseTiming::FAST;

/// The `PARTYLINE_LEASE_PROFILE` of a lease timing, if a profile has it.
pub fn lease_profile(timing: LeaseTiming) -> Option<&'static str> {
    if timing == LeaseTiming::FAST {
        Some("fast")
    } else if timing == LeaseTiming::STANDARD {
        Some("standard")
    } else {
        None
    }
}

/// How long a process may take to become ready (generous: a busy 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of each log printed when a test fails.
const FAILURE_LOG_LINES: usize = 80;

/// The `partyline` binary the processes run; see the module docs. Panics with how to build it
/// when it is missing, or when one of its source files is newer than it (the tests would run
/// yesterday's server; `$PARTYLINE_BIN` skips that check).
pub fn partyline_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_bin).clone()
}

fn find_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PARTYLINE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "PARTYLINE_BIN={} is not a file", bin.display());
        return bin;
    }
    let bin = built_bin();
    if let Some(newer) = newer_input(&bin) {
        panic!(
            "{} is older than {}, one of its sources: rebuild it with `cargo build --bin partyline` \
             (scripts/test.sh does), or point PARTYLINE_BIN at the binary to test",
            bin.display(),
            newer.display()
        );
    }
    bin
}

/// A source file of `bin` modified after it was built, from the dependency list cargo writes
/// next to it (`<bin>.d`); `None` when all are older or there is no list.
fn newer_input(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let deps = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    // `<bin>: <input> <input> ...`, spaces inside paths escaped as `\ `.
    let (_, inputs) = deps.split_once(": ")?;
    let inputs = inputs.replace("\\ ", "\u{0}");
    inputs
        .split_whitespace()
        .map(|p| PathBuf::from(p.replace('\u{0}', " ")))
        .find(|p| std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t > built))
}

fn built_bin() -> PathBuf {
    let mut candidates = Vec::new();
    // <target>/<profile>/deps/<test binary>  ->  <target>/<profile>/partyline, and
    // <target>/<profile>/<binary> (the chaos runner)  ->  <target>/<profile>/partyline
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("partyline"));
        }
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("partyline"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug/partyline"));
    }
    candidates.push(crate::repo_root().join("target/debug/partyline"));
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return found.clone();
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    panic!(
        "the partyline binary is missing (looked at: {}): build it first with `cargo build --bin partyline` \
         (scripts/test.sh does), or point PARTYLINE_BIN at one",
        looked.join(", ")
    );
}

/// A free port on 127.0.0.1 (bound, then released: the caller retries if someone takes it first).
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("bind a free port").port()
}

/// What a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `partyline node`.
    Node,
    /// `partyline gateway`.
    Gateway,
}

/// One child process of the `partyline` binary.
pub struct Proc {
    name: String,
    role: Role,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    /// A command the binary runs under (`ip netns exec <ns>`), empty for none.
    prefix: Vec<String>,
    /// The binary it runs (`None`: [`partyline_bin`]).
    bin: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    starts: u32,
}

impl Proc {
    fn new(name: String, role: Role, addr: SocketAddr, env: Vec<(String, String)>, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        Proc { name, role, addr, env, prefix: Vec::new(), bin: None, log, child: None, exit: None, starts: 0 }
    }

    /// Its name: the node id (`node-1`, ...) or `gateway-1`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Node or gateway.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where it listens: the gRPC address of a node, the HTTP address of a gateway.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id while it runs (or is stopped, or has exited but was not yet reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    fn spawn(&mut self) {
        let bin = self.bin.clone().unwrap_or_else(partyline_bin);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let sub = match self.role {
            Role::Node => "node",
            Role::Gateway => "gateway",
        };
        let prefix = self.prefix.iter().map(|p| format!("{p} ")).collect::<String>();
        let _ = writeln!(log, "==== {} start #{}: {prefix}{} {sub}", self.name, self.starts, bin.display());
        // A prefix that execs its command (`ip netns exec` does) keeps the process id, which
        // the signals and the readiness check rely on.
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg(sub);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PARTYLINE_") {
                cmd.env_remove(key);
            }
        }
        let rust_log = std::env::var("PARTYLINE_TEST_LOG").unwrap_or_else(|_| "info".into());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not run {}: {e}", bin.display()));
        self.child = Some(child);
        self.exit = None;
    }

    fn signal(&self, signal: Signal) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running: cannot send {signal}", self.name));
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {} ({pid}): {e}", self.name));
    }

    /// Kills it at once (SIGKILL): a crash. Call [`Proc::wait_exit`] to reap it.
    pub fn sigkill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Freezes it (SIGSTOP): a process paused past its lease (a GC pause, a stalled VM).
    pub fn sigstop(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn sigcont(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Asks it to stop gracefully (SIGTERM), as Kubernetes does before a rolling update.
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Whether it has exited (reaping it if so); its exit status then.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("waiting for {}: {e}", self.name),
        }
    }

    /// Whether it is running (or stopped): started and not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Waits up to `timeout` for it to exit; its exit status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again with the same name, port and environment (SIGKILLs it first if it still
    /// runs). It is not ready yet: see [`ProcCluster::restart_node`] and
    /// [`ProcCluster::restart_gateway`], which also wait.
    pub fn restart(&mut self) {
        self.kill_and_reap();
        self.spawn();
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exit = Some(status);
            }
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn state(&mut self) -> String {
        match (self.pid(), self.try_exit()) {
            (_, Some(status)) => format!("exited: {status}"),
            (Some(pid), None) => format!("pid {pid}, running"),
            (None, None) => "not started".into(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How to build a [`ProcCluster`].
#[derive(Clone, Debug)]
pub struct ProcClusterBuilder {
    nodes: usize,
    gateways: usize,
    durable_redis: bool,
    worker_threads: usize,
    env: Vec<(String, String)>,
    netns: Vec<NodeNetns>,
    lease_timing: LeaseTiming,
    bin: Option<PathBuf>,
    redis_cluster: Option<usize>,
}

/// A network namespace a node runs in (see [`ProcClusterBuilder::node_netns`]); the caller
/// creates it and its links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetns {
    /// The namespace: the node runs under `ip netns exec <name>`.
    pub name: String,
    /// The node's address in it: it listens and advertises there (gateways reach it there).
    pub addr: Ipv4Addr,
    /// An address of this (the root) namespace that the namespace reaches: the node's Redis
    /// proxy listens there.
    pub host: Ipv4Addr,
}

impl ProcClusterBuilder {
    /// Number of nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Number of gateways (default 2).
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Redis with an append-only file fsynced on every write, so a Redis restart keeps the data
    /// (default: no persistence).
    pub fn durable_redis(mut self, yes: bool) -> Self {
        self.durable_redis = yes;
        self
    }

    /// `PARTYLINE_WORKER_THREADS` of every process (default 1: a 2-core machine runs many).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n;
        self
    }

    /// Runs every node and gateway (and `partyline init`) from `bin`, a build of the `partyline`
    /// binary with more parties (e.g. `partyline-faulty`, with the test parties), instead of
    /// [`partyline_bin`].
    pub fn binary(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// One more environment variable for every node and gateway (e.g. a limit).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs node `i` (counting every node added, also by [`ProcCluster::add_node`]) in
    /// `netns[i]` instead of on loopback; nodes past the list run on loopback.
    pub fn node_netns(mut self, netns: Vec<NodeNetns>) -> Self {
        self.netns = netns;
        self
    }

    /// The nodes' lease timing (default [`LEASES`], the `fast` profile): [`LeaseTiming::FAST`]
    /// or [`LeaseTiming::STANDARD`], passed as `PARTYLINE_LEASE_PROFILE`.
    pub fn lease_timing(mut self, timing: LeaseTiming) -> Self {
        assert!(lease_profile(timing).is_some(), "no lease profile has the timing {timing:?}");
        self.lease_timing = timing;
        self
    }

    /// Redis is a Redis Cluster of 3 primaries with `replicas` replicas each (no persistence),
    /// reached directly (`redis+cluster://`) by the nodes, the gateways and the test's client,
    /// instead of one `redis-server` behind a proxy per node: [`ProcCluster::redis_proxy`] and
    /// the Redis restarts act on a `redis-server` nobody uses then. See
    /// [`ProcCluster::redis_cluster_mut`].
    pub fn redis_cluster_with_replicas(mut self, replicas: usize) -> Self {
        self.redis_cluster = Some(replicas);
        self
    }

    /// Starts Redis, runs `partyline init`, then the nodes (each registered in Redis) and the
    /// gateways (each answering `/_partyline/health`).
    pub async fn start(self) -> ProcCluster {
        let durable = self.durable_redis;
        let redis_server =
            tokio::task::spawn_blocking(
                move || {
                    if durable {
                        RedisServer::start_durable()
                    } else {
                        RedisServer::start()
                    }
                },
            )
            .await
            .expect("start redis-server");
        let dir = tempfile::Builder::new().prefix("partyline-procs-").tempdir().expect("create a log directory");
        let redis_cluster = match self.redis_cluster {
            Some(replicas) => Some(
                tokio::task::spawn_blocking(move || RedisCluster::start_with_replicas(3, replicas))
                    .await
                    .expect("start a redis cluster"),
            ),
            None => None,
        };
        let url = redis_cluster.as_ref().map_or_else(|| redis_server.url(), RedisCluster::url);
        let redis = Redis::connect(RedisConfig::new(url)).await.expect("connect to the test redis");
        let mut cluster = ProcCluster {
            redis_server: Some(redis_server),
            redis,
            nodes: Vec::new(),
            proxies: Vec::new(),
            gateways: Vec::new(),
            dir: Some(dir),
            worker_threads: self.worker_threads,
            env: self.env,
            netns: self.netns,
            lease_timing: self.lease_timing,
            bin: self.bin,
            redis_cluster,
            keep_logs: None,
        };
        let said = cluster.init().await;
        assert!(said.contains("created cluster"), "partyline init said: {said}");
        for _ in 0..self.nodes {
            cluster.add_node().await;
        }
        for _ in 0..self.gateways {
            cluster.add_gateway().await;
        }
        cluster
    }
}

/// Redis, nodes and gateways as real processes; see the module docs.
pub struct ProcCluster {
    redis_server: Option<RedisServer>,
    redis: Redis,
    nodes: Vec<Proc>,
    proxies: Vec<TcpProxy>,
    gateways: Vec<Proc>,
    dir: Option<tempfile::TempDir>,
    worker_threads: usize,
    env: Vec<(String, String)>,
    netns: Vec<NodeNetns>,
    lease_timing: LeaseTiming,
    bin: Option<PathBuf>,
    keep_logs: Option<bool>,
    /// Declared after every process: dropped once they are killed.
    redis_cluster: Option<RedisCluster>,
}

impl ProcCluster {
    /// A builder: 3 nodes, 2 gateways, Redis without persistence, one worker thread each.
    pub fn builder() -> ProcClusterBuilder {
        ProcClusterBuilder {
            nodes: 3,
            gateways: 2,
            durable_redis: false,
            worker_threads: 1,
            env: Vec::new(),
            netns: Vec::new(),
            lease_timing: LEASES,
            bin: None,
            redis_cluster: None,
        }
    }

    /// The Redis Cluster, if the cluster was built with
    /// [`ProcClusterBuilder::redis_cluster_with_replicas`] (to kill a primary, fail it over).
    pub fn redis_cluster_mut(&mut self) -> Option<&mut RedisCluster> {
        self.redis_cluster.as_mut()
    }

    /// The nodes' lease timing (see [`ProcClusterBuilder::lease_timing`]).
    pub fn lease_timing(&self) -> LeaseTiming {
        self.lease_timing
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the log directory").path()
    }

    /// The directory of the logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir().to_path_buf()
    }

    /// Keeps the log directory when the cluster is dropped (`true`) or removes it (`false`),
    /// whatever `PARTYLINE_TEST_KEEP_LOGS` says; it is always kept when dropped while panicking.
    pub fn keep_logs(&mut self, keep: bool) {
        self.keep_logs = Some(keep);
    }

    fn redis_server(&self) -> &RedisServer {
        self.redis_server.as_ref().expect("the redis server")
    }

    /// The Redis URL (direct, not through a proxy).
    pub fn redis_url(&self) -> String {
        match &self.redis_cluster {
            Some(c) => c.url(),
            None => self.redis_server().url(),
        }
    }

    /// A Redis client for the test itself (direct, not through a proxy; it reconnects by itself
    /// after a Redis restart).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Proc {
        &self.nodes[i]
    }

    /// Node `i`, to signal or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut Proc {
        &mut self.nodes[i]
    }

    /// Every node.
    pub fn nodes(&self) -> &[Proc] {
        &self.nodes
    }

    /// The index of the node with this id.
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == id)
    }

    /// The proxy between node `i` and Redis: cut the node from Redis with it.
    pub fn redis_proxy(&self, i: usize) -> &TcpProxy {
        &self.proxies[i]
    }

    /// Gateway `i`.
    pub fn gateway(&self, i: usize) -> &Proc {
        &self.gateways[i]
    }

    /// Gateway `i`, to signal or restart it.
    pub fn gateway_mut(&mut self, i: usize) -> &mut Proc {
        &mut self.gateways[i]
    }

    /// Where clients connect: every gateway's address.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    /// Every node and gateway that is not running (exited, with its status), as text; empty when
    /// all run.
    pub fn dead_processes(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for p in self.nodes.iter_mut().chain(self.gateways.iter_mut()) {
            if let Some(status) = p.try_exit() {
                dead.push(format!("{} exited: {status}", p.name));
            }
        }
        dead
    }

    fn base_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PARTYLINE_CLUSTER_SECRET".to_string(), SECRET.to_string()),
            ("PARTYLINE_WORKER_THREADS".to_string(), self.worker_threads.to_string()),
        ];
        env.extend(self.env.iter().cloned());
        env
    }

    /// Runs `partyline init` against this cluster's Redis (as a deployment does before its
    /// first nodes) and returns what it printed; panics if it fails.
    pub async fn init(&self) -> String {
        let mut cmd = tokio::process::Command::new(self.bin.clone().unwrap_or_else(partyline_bin));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PARTYLINE_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("init").env("PARTYLINE_REDIS_URL", self.redis_url()).env("NO_COLOR", "1").stdin(Stdio::null());
        let out = tokio::time::timeout(READY_TIMEOUT, cmd.output())
            .await
            .expect("partyline init did not finish in time")
            .expect("run partyline init");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "partyline init failed ({}):\n{said}", out.status);
        said
    }

    /// Starts one more node (id `node-<n>`, its own proxy to Redis; in its network namespace
    /// if [`ProcClusterBuilder::node_netns`] gave one) and waits until it is registered;
    /// returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let id = format!("node-{}", i + 1);
        let netns = self.netns.get(i).cloned();
        let redis_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.redis_server().port()));
        let proxy = match &netns {
            Some(ns) => TcpProxy::start_on(ns.host, redis_addr).await,
            None => TcpProxy::start(redis_addr).await,
        };
        let mut last = String::new();
        // The port is free when picked, but another process may take it first: retry. (In a
        // namespace of its own, any port is free.)
        for _ in 0..5 {
            let ip = netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |ns| ns.addr);
            let addr = SocketAddr::from((ip, free_port()));
            let mut env = self.base_env();
            env.extend([
                (
                    "PARTYLINE_REDIS_URL".to_string(),
                    self.redis_cluster.as_ref().map_or_else(|| format!("redis://{}", proxy.addr()), RedisCluster::url),
                ),
                ("PARTYLINE_LISTEN".to_string(), addr.to_string()),
                ("PARTYLINE_ADVERTISE".to_string(), addr.to_string()),
                ("PARTYLINE_NODE_ID".to_string(), id.clone()),
                ("PARTYLINE_LEASE_PROFILE".to_string(), lease_profile(self.lease_timing).unwrap_or("fast").to_string()),
            ]);
            let mut node = Proc::new(id.clone(), Role::Node, addr, env, self.dir());
            node.bin = self.bin.clone();
            if let Some(ns) = &netns {
                node.prefix = ["ip", "netns", "exec", ns.name.as_str()].map(String::from).to_vec();
            }
            node.spawn();
            match wait_node_ready(&self.redis, &mut node).await {
                Ok(()) => {
                    self.nodes.push(node);
                    self.proxies.push(proxy);
                    return i;
                }
                Err(e) if e.contains("could not listen") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("could not start {id}: {last}");
    }

    /// Starts one more gateway and waits until it answers; returns its index.
    pub async fn add_gateway(&mut self) -> usize {
        self.add_gateway_with(&[]).await
    }

    /// Like [`ProcCluster::add_gateway`], with more environment for this gateway alone (e.g.
    /// `PARTYLINE_ADMIN_LISTEN` and a console token).
    pub async fn add_gateway_with(&mut self, extra: &[(&str, &str)]) -> usize {
        let i = self.gateways.len();
        let name = format!("gateway-{}", i + 1);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut env = self.base_env();
            env.extend([
                ("PARTYLINE_REDIS_URL".to_string(), self.redis_url()),
                ("PARTYLINE_HOST".to_string(), "127.0.0.1".to_string()),
                ("PARTYLINE_PORT".to_string(), port.to_string()),
            ]);
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let mut gateway = Proc::new(name.clone(), Role::Gateway, addr, env, self.dir());
            gateway.bin = self.bin.clone();
            gateway.spawn();
            match wait_gateway_ready(&mut gateway).await {
                Ok(()) => {
                    self.gateways.push(gateway);
                    return i;
                }
                Err(e) if e.contains("could not listen") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("could not start {name}: {last}");
    }

    /// Restarts node `i` (same id, port and proxy; SIGKILLed first if it runs) and waits until
    /// its new incarnation is registered.
    pub async fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        if let Err(e) = wait_node_ready(&self.redis, &mut self.nodes[i]).await {
            panic!("{e}");
        }
    }

    /// Restarts gateway `i` (same port; SIGKILLed first if it runs) and waits until it answers.
    pub async fn restart_gateway(&mut self, i: usize) {
        self.gateways[i].restart();
        if let Err(e) = wait_gateway_ready(&mut self.gateways[i]).await {
            panic!("{e}");
        }
    }

    /// Kills Redis (SIGKILL) and starts it again on the same port: with the data if the cluster
    /// was built with `durable_redis(true)`, empty otherwise.
    pub async fn restart_redis(&mut self) {
        self.with_redis_server(RedisServer::restart).await;
    }

    /// Kills Redis (SIGKILL) and starts it again on the same port without its data.
    pub async fn restart_redis_empty(&mut self) {
        self.with_redis_server(RedisServer::restart_empty).await;
    }

    /// Kills Redis (SIGKILL); [`ProcCluster::restart_redis`] brings it back.
    pub async fn stop_redis(&mut self) {
        self.with_redis_server(RedisServer::stop).await;
    }

    /// Runs a blocking RedisServer operation off the async threads (the load keeps running).
    async fn with_redis_server(&mut self, f: fn(&mut RedisServer)) {
        let mut server = self.redis_server.take().expect("the redis server");
        let server = tokio::task::spawn_blocking(move || {
            f(&mut server);
            server
        })
        .await
        .expect("the redis operation");
        self.redis_server = Some(server);
    }

    /// The id of the node holding the lease of `room`'s shard, if any.
    pub async fn owner_of(&self, room: &RoomKey) -> Option<String> {
        self.redis.leases().owner(shard_of(room)).await.ok().flatten().map(|l| l.owner)
    }

    /// The lease holder of each room's shard (`None`: not leased, or Redis did not answer).
    pub async fn owners(&self, rooms: &[RoomKey]) -> Vec<Option<String>> {
        let shards: Vec<u16> = rooms.iter().map(shard_of).collect();
        match self.redis.leases().owners(&shards).await {
            Ok(owners) => owners.into_iter().map(|o| o.map(|l| l.owner)).collect(),
            Err(_) => vec![None; rooms.len()],
        }
    }

    /// The live members (nodes whose membership record has not expired).
    pub async fn members(&self) -> Vec<NodeInfo> {
        self.redis.membership().live().await.unwrap_or_default()
    }

    /// The last `n` lines of every process's log (and Redis's), one section each.
    pub fn logs(&mut self, n: usize) -> String {
        let mut out = String::new();
        let mut procs: Vec<&mut Proc> = self.nodes.iter_mut().chain(self.gateways.iter_mut()).collect();
        for p in procs.iter_mut() {
            let state = p.state();
            let _ = writeln!(out, "---- {} ({state}), last {n} lines of {}", p.name, p.log.display());
            let _ = writeln!(out, "{}", p.log_tail(n));
        }
        if let Some(redis) = &self.redis_server {
            let _ = writeln!(out, "---- redis-server\n{}", redis.log_tail(n.min(20)));
        }
        out
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let keep = std::env::var_os("PARTYLINE_TEST_KEEP_LOGS").is_some_and(|v| v != "0");
        if std::thread::panicking() {
            eprintln!("\n==== the test failed: what the processes said\n{}", self.logs(FAILURE_LOG_LINES));
        }
        if std::thread::panicking() || self.keep_logs.unwrap_or(keep) {
            if let Some(dir) = self.dir.take() {
                let dir = dir.keep();
                if self.keep_logs.is_none() || std::thread::panicking() {
                    eprintln!("==== logs kept in {}", dir.display());
                }
            }
        }
        // Gateways first, so no client is routed to a node that is going away.
        for g in &mut self.gateways {
            g.kill_and_reap();
        }
        for n in &mut self.nodes {
            n.kill_and_reap();
        }
    }
}

/// Waits until the node's current incarnation is a live member (its incarnation ends with its pid
/// in hex) and its port accepts connections.
async fn wait_node_ready(redis: &Redis, node: &mut Proc) -> Result<(), String> {
    let pid = node.pid().expect("the node was started");
    let suffix = format!("-{pid:x}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = node.try_exit() {
            return Err(format!(
                "{} exited while starting ({status}); its log:\n{}",
                node.name,
                node.log_tail(FAILURE_LOG_LINES)
            ));
        }
        let live = redis.membership().live().await.unwrap_or_default();
        if live.iter().any(|m| m.id == node.name && m.inc.ends_with(&suffix)) && port_open(node.addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not register in Redis within {READY_TIMEOUT:?}; its log:\n{}",
                node.name,
                node.log_tail(FAILURE_LOG_LINES)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway answers `GET /_partyline/health` with 200.
async fn wait_gateway_ready(gateway: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = gateway.try_exit() {
            return Err(format!(
                "{} exited while starting ({status}); its log:\n{}",
                gateway.name,
                gateway.log_tail(FAILURE_LOG_LINES)
            ));
        }
        // With an admin listener, health is served there (`/healthz`), not on the client port.
        let admin = gateway.env.iter().find(|(k, _)| k == "PARTYLINE_ADMIN_LISTEN").and_then(|(_, v)| v.parse().ok());
        let (addr, path) = match admin {
            Some(admin) => (admin, "/healthz"),
            None => (gateway.addr, "/_partyline/health"),
        };
        if tokio::task::spawn_blocking(move || health_at(addr, path)).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer {path} within {READY_TIMEOUT:?}; its log:\n{}",
                gateway.name,
                gateway.log_tail(FAILURE_LOG_LINES)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn port_open(addr: SocketAddr) -> bool {
    StdStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Whether `GET /_partyline/health` answers 200.
pub fn health(addr: SocketAddr) -> bool {
    health_at(addr, "/_partyline/health")
}

/// Whether `GET <path>` at `addr` answers 200.
fn health_at(addr: SocketAddr, path: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = StdStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}
