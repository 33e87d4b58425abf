//! Throwaway `redis-server` processes for tests (of this crate and others).
//!
//! [`RedisServer::start`] runs `redis-server` on a free loopback port with no persistence and a
//! private temporary directory, and waits until it answers `PING`. The process is killed when the
//! value is dropped. `pause`/`resume` (SIGSTOP/SIGCONT) simulate a stalled Redis, `restart` a
//! crashed one that comes back on the same port, `stop` a dead one.
//!
//! [`RedisServer::start_durable`] runs it the way a deployment should: append-only file with
//! `appendfsync always`, so every write Redis acknowledged is on disk. Its `restart` keeps the
//! data directory and comes back with the data; [`RedisServer::restart_empty`] comes back
//! without it (a Redis that lost its disk, or a failover to a stale replica). A server started
//! with `start` has nothing on disk, so its `restart` always comes back empty.
//!
//! [`RedisCluster::start`] runs a real Redis Cluster: `redis-server --cluster-enabled yes` per
//! node on free ports, the slots split evenly over the primaries, optional replicas; it can move
//! a slot between primaries while clients write, fail a primary over to its replica, and wipe a
//! primary's data. It is built with the cluster commands (`CLUSTER ADDSLOTSRANGE`, `MEET`,
//! `REPLICATE`) rather than `redis-cli --cluster create`, which sleeps a second per check and
//! takes about 7 s where this takes about 2.5 s (Redis keeps a fresh primary out of the
//! cluster for its first 2 s).
//!
//! The binary is `redis-server` from `PATH`, or `$PARTYLINE_REDIS_SERVER` if set.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;

pub use cluster::{RedisCluster, TlsFiles};

/// How long a fresh server may take to answer PING (generous: busy 2-core CI machines).
const STARTUP: Duration = Duration::from_secs(20);

/// Connects to the Redis at `url` (a [`RedisServer::url`] or a [`RedisCluster::url`]) with key
/// prefix `prefix`: tests that share one Redis use one prefix each.
pub async fn connect(url: &str, prefix: &str) -> super::Redis {
    let config = super::RedisConfig { prefix: prefix.to_string(), ..super::RedisConfig::new(url) };
    super::Redis::connect(config).await.unwrap_or_else(|e| panic!("connect to the test Redis at {url}: {e}"))
}

/// `INFO <section>` of the server, or of every primary of a cluster: `(node, text)` pairs.
pub async fn info(redis: &super::Redis, section: &str) -> Vec<(String, String)> {
    let value: ::redis::Value =
        ::redis::cmd("INFO").arg(section).query_async(&mut redis.connection()).await.expect("INFO");
    let text = |v: ::redis::Value| ::redis::from_redis_value::<String>(v).expect("INFO answers text");
    match value {
        ::redis::Value::Map(nodes) => nodes.into_iter().map(|(node, v)| (text(node), text(v))).collect(),
        other => vec![(redis.config().url.clone(), text(other))],
    }
}

/// How often `command` (lowercase, e.g. `evalsha`) ran so far, summed over the server or the
/// cluster's primaries (`INFO commandstats`).
pub async fn command_calls(redis: &super::Redis, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info(redis, "commandstats")
        .await
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|l| l.strip_prefix(prefix.as_str())?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// A `redis-server` child process on 127.0.0.1; see the module docs.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    durable: bool,
    /// More `redis-server` arguments (`--replicaof` for a replica), kept across restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port. Panics (with the reason and the server's log) if it
    /// cannot, e.g. "redis-server not found: install it (scripts/test.sh does)".
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a durable server on a free port: append-only file, fsynced before every reply
    /// (`appendfsync always`), in the server's private directory; [`RedisServer::restart`] comes
    /// back with the data.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    /// Starts a replica of `primary` (`--replicaof`, no persistence) on a free port and waits
    /// until the primary counts it as an online replica.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let replica =
            Self::start_extra(false, vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
        let deadline = Instant::now() + STARTUP;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, primary.port));
        while !info_replication(addr).unwrap_or_default().contains(&format!("port={},state=online", replica.port)) {
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not come online within {STARTUP:?}\n{}",
                replica.port,
                replica.log_tail(15)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    fn start_with(durable: bool) -> Self {
        Self::start_extra(durable, Vec::new())
    }

    fn start_extra(durable: bool, extra: Vec<String>) -> Self {
        let dir = tempfile::Builder::new().prefix("partyline-redis-").tempdir().expect("create a temp dir for redis");
        let mut last_error = String::new();
        // The port is free when we pick it but could be taken before redis binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, dir.path(), durable, &extra);
            match wait_ready(port, &mut child) {
                Ok(()) => return RedisServer { child: Some(child), port, dir, durable, extra },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("{e}\n{}", log_tail(dir.path(), 15));
                }
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it persists every write (started with [`RedisServer::start_durable`]).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The last `lines` lines of the server's log (for failure reports).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(self.dir.path(), lines)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL) if it runs and starts it again on the same port with the same
    /// data directory: a durable server comes back with every write it acknowledged, the
    /// default one comes back empty.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server (SIGKILL) if it runs, deletes its data (append-only file and
    /// snapshot), and starts it again empty on the same port, still durable if it was: a Redis
    /// that lost its disk.
    pub fn restart_empty(&mut self) {
        self.stop();
        for name in ["appendonlydir", "appendonly.aof", "dump.rdb"] {
            let path = self.dir.path().join(name);
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("could not delete {}: {e}", path.display()),
            }
        }
        self.start_again();
    }

    fn start_again(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let mut child = spawn(self.port, self.dir.path(), self.durable, &self.extra);
            match wait_ready(self.port, &mut child) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The port may linger for a moment after the kill.
                    if Instant::now() > deadline {
                        panic!(
                            "could not restart redis-server on port {}: {e}\n{}",
                            self.port,
                            log_tail(self.dir.path(), 15)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Kills the server (SIGKILL); [`RedisServer::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        signal(self.pid().expect("redis-server is not running"), sig);
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(sig).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed: {status}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("bind a free port").port()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

fn log_tail(dir: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!("redis-server log (last lines):\n{}", lines[lines.len().saturating_sub(n)..].join("\n"))
}

fn spawn(port: u16, dir: &Path, durable: bool, extra: &[String]) -> Child {
    let binary = std::env::var_os("PARTYLINE_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("open the redis-server log file");
    let persistence: &[&str] =
        if durable { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
    let result = Command::new(&binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        .args(persistence)
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file handle"))
        .stderr(log)
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-server not found: install it (scripts/test.sh does) [{}]", binary.to_string_lossy())
        }
        Err(e) => panic!("cannot run {}: {e}", binary.to_string_lossy()),
    }
}

/// Waits until the server on `port` answers PING, or `child` exits, or [`STARTUP`] passes.
fn wait_ready(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("redis-server on port {port} exited at startup ({status})"));
        }
        if ping(addr) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("redis-server on port {port} did not answer PING within {STARTUP:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of `INFO replication` of the server at `addr`.
fn info_replication(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"INFO replication\r\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        // `$<len>\r\n<text>\r\n`: done once the whole text is in.
        let text = String::from_utf8_lossy(&reply).into_owned();
        let Some((header, body)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) else { continue };
        if header.parse::<usize>().is_ok_and(|len| body.len() >= len) {
            return Ok(body.to_string());
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn ping(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pauses_restarts_and_cleans_up() {
        let mut server = RedisServer::start();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        assert!(server.url().ends_with(&format!(":{}", server.port())));
        assert!(ping(addr));
        server.pause();
        assert!(!ping(addr), "a paused server answered");
        server.resume();
        assert!(ping(addr));
        let before = server.pid();
        server.restart();
        assert_ne!(server.pid(), before);
        assert!(ping(addr));
        let dir = server.dir.path().to_path_buf();
        drop(server);
        assert!(!ping(addr), "the server outlived its handle");
        assert!(!dir.exists());
    }

    /// One command over a fresh connection; the raw reply.
    fn command(addr: SocketAddr, cmd: &str) -> String {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn durable_restart_keeps_data_and_restart_empty_loses_it() {
        let mut server = RedisServer::start_durable();
        assert!(server.is_durable());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        assert_eq!(command(addr, "SET kept yes"), "+OK\r\n");
        server.restart();
        assert_eq!(command(addr, "GET kept"), "$3\r\nyes\r\n", "an acknowledged write survives a SIGKILL");
        server.restart_empty();
        assert!(server.is_durable(), "still durable after an empty restart");
        assert_eq!(command(addr, "GET kept"), "$-1\r\n");
        assert_eq!(command(addr, "SET again yes"), "+OK\r\n");
        server.stop();
        server.restart();
        assert_eq!(command(addr, "GET again"), "$3\r\nyes\r\n");

        let mut plain = RedisServer::start();
        assert!(!plain.is_durable());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, plain.port()));
        assert_eq!(command(addr, "SET gone yes"), "+OK\r\n");
        plain.restart();
        assert_eq!(command(addr, "GET gone"), "$-1\r\n", "without persistence a restart is empty");
        assert!(plain.log_tail(5).contains("redis-server log"));
    }

    #[test]
    fn two_servers_get_two_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
    }
}
