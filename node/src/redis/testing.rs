//! Throwaway `redis-server` processes for tests (of this crate and others).
//!
//! [`RedisServer::start`] runs `redis-server` on a free loopback port with no persistence and a
//! private temporary directory, and waits until it answers `PING`. The process is killed when the
//! value is dropped. `pause`/`resume` (SIGSTOP/SIGCONT) simulate a stalled Redis, `restart` a
//! crashed one that comes back empty on the same port, `stop` a dead one.
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

pub use cluster::RedisCluster;

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
}

impl RedisServer {
    /// Starts a server on a free port. Panics (with the reason and the server's log) if it
    /// cannot, e.g. "redis-server not found: install it (scripts/test.sh does)".
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("partyline-redis-").tempdir().expect("create a temp dir for redis");
        let mut last_error = String::new();
        // The port is free when we pick it but could be taken before redis binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, dir.path(), &[]);
            match wait_ready(port, &mut child) {
                Ok(()) => return RedisServer { child: Some(child), port, dir },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("{e}\n{}", log_tail(dir.path()));
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

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL) and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP;
        loop {
            let mut child = spawn(self.port, self.dir.path(), &[]);
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
                            log_tail(self.dir.path())
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

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!("redis-server log (last lines):\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    let binary = std::env::var_os("PARTYLINE_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("open the redis-server log file");
    let result = Command::new(&binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
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

    #[test]
    fn two_servers_get_two_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
    }
}
