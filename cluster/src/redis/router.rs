//! [`Router`]: the Redis Cluster side of [`super::conn::Connection`]. It keeps the slot map
//! (`CLUSTER SLOTS`), one auto-reconnecting [`ConnectionManager`] per node, and sends each
//! command to the primary that serves its key's slot, following the cluster's answers:
//!
//! - `MOVED <slot> <addr>`: the slot has a new owner (a migration finished, a replica took over).
//!   The command goes there at once, the map learns that slot, and a full refresh runs in the
//!   background.
//! - `ASK <slot> <addr>`: the slot is being migrated and this key already moved: the command goes
//!   to `addr` once, preceded by `ASKING` in the same pipeline.
//! - `TRYAGAIN` (a multi-key script whose keys are split between the two primaries of a slot in
//!   migration), `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`: wait 20 ms and send again.
//! - `READONLY` (a primary that was demoted): refresh the map, send again.
//!
//! Every one of those answers means the command did not run, so sending it again is safe. A
//! command that fails otherwise (a timeout, a dropped connection) is not sent again, as with a
//! single server: it may have run. All of it stays within the response timeout.
//!
//! Batches ([`Router::each`]) are grouped by primary: one pipeline per primary, all primaries at
//! once; the commands a primary redirects are then sent one by one.
//!
//! Why not the `redis` crate's own cluster connection: it funnels every request through one task
//! that stops polling requests while it refreshes the slot map, and under a slot migration or a
//! failover (two refreshes in a row while requests wait on its connection table's lock) that
//! task can wedge for good: every later command times out, also for healthy primaries. This is
//! a few hundred lines with no shared task to wedge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value,
};
use futures::future::BoxFuture;
use partyline::sync::{Lock, ReadWrite};
use tokio::time::Instant;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Wait before sending again a command whose slot is moving or whose cluster is reconfiguring.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// A node's address, `host:port`.
type Addr = Arc<str>;

/// Who serves what.
#[derive(Clone, Debug, Default)]
struct Topology {
    /// The primary serving each slot (`None`: not covered).
    slots: Vec<Option<Addr>>,
    /// Every node the cluster reported: primaries, then replicas.
    nodes: Vec<Addr>,
}

impl Topology {
    fn primaries(&self) -> Vec<Addr> {
        let mut out: Vec<Addr> = Vec::new();
        for a in self.slots.iter().flatten() {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// A Redis Cluster client; see the module docs.
pub struct Router {
    /// Credentials and TCP settings; the address is replaced per node.
    template: ConnectionInfo,
    seeds: Vec<ConnectionInfo>,
    connect_timeout: Duration,
    response_timeout: Duration,
    topology: RwLock<Topology>,
    conns: Mutex<HashMap<Addr, ConnectionManager>>,
    /// One refresh at a time; holds when the last one finished.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

/// Where a command goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The primary of this slot.
    Slot(u16),
    /// Any primary.
    Any,
    /// Every primary.
    All,
}

impl Router {
    /// Learns the cluster from `seeds` and checks that every primary answers.
    #[inline(never)]
    pub fn connect(
        seeds: Vec<ConnectionInfo>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> BoxFuture<'static, RedisResult<Router>> {
        Box::pin(Self::connect_unboxed(seeds, connect_timeout, response_timeout))
    }

    async fn connect_unboxed(
        seeds: Vec<ConnectionInfo>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Router> {
        let template = seeds.first().cloned().ok_or_else(|| client_error("no seed node"))?;
        let router = Router {
            template,
            seeds,
            connect_timeout,
            response_timeout,
            topology: RwLock::default(),
            conns: Mutex::default(),
            refreshed: tokio::sync::Mutex::new(None),
        };
        router.refresh().await?;
        if router.topology.read_locked().slots.iter().any(Option::is_none) {
            return Err(client_error("the Redis Cluster does not cover every slot (CLUSTER SLOTS)"));
        }
        for (addr, answer) in router.fanout(&::redis::cmd("PING")).await {
            answer.and_then(Value::extract_error).map_err(|e| client_error(&format!("primary {addr}: {e}")))?;
        }
        Ok(router)
    }

    /// The primaries (`host:port`), in slot order.
    pub fn primaries(&self) -> Vec<String> {
        self.topology.read_locked().primaries().iter().map(|a| a.to_string()).collect()
    }

    /// Every node the cluster reported, as `(host, port)`.
    pub fn nodes(&self) -> Vec<(String, u16)> {
        self.topology.read_locked().nodes.iter().filter_map(|a| split_addr(a)).collect()
    }

    /// The connection to `addr`, made (bounded by the connect timeout) if there is none.
    async fn conn(&self, addr: &Addr) -> RedisResult<ConnectionManager> {
        if let Some(c) = self.conns.locked().get(addr) {
            return Ok(c.clone());
        }
        let (host, port) = split_addr(addr).ok_or_else(|| client_error(&format!("bad node address {addr}")))?;
        let info = self.template.clone().set_addr(super::conn::node_addr(self.template.addr(), host, port));
        let client = Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = match tokio::time::timeout(self.connect_timeout, ConnectionManager::new_with_config(client, config))
            .await
        {
            Ok(c) => c?,
            Err(_) => return Err(timeout_error(&format!("connecting to {addr}"))),
        };
        Ok(self.conns.locked().entry(addr.clone()).or_insert(conn).clone())
    }

    /// Reads the slot map again from a node that answers (known primaries, other known nodes,
    /// then the seeds). Concurrent callers share one refresh.
    async fn refresh(&self) -> RedisResult<()> {
        let asked = Instant::now();
        let mut last = self.refreshed.lock().await;
        if last.is_some_and(|t| t >= asked) {
            return Ok(());
        }
        let mut candidates: Vec<Addr> = {
            let t = self.topology.read_locked();
            let mut c = t.primaries();
            c.extend(t.nodes.iter().cloned());
            c
        };
        for seed in &self.seeds {
            if let ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } = seed.addr() {
                candidates.push(format!("{host}:{port}").into());
            }
        }
        let mut tried: Vec<Addr> = Vec::new();
        let mut last_err = client_error("no Redis Cluster node to ask for the slot map");
        for addr in candidates {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match self.slots_from(&addr).await {
                Ok(topology) => {
                    let known = topology.nodes.clone();
                    *self.topology.write_locked() = topology;
                    self.conns.locked().retain(|a, _| known.contains(a));
                    *last = Some(Instant::now());
                    return Ok(());
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Starts a refresh in the background (unless one is running).
    fn refresh_soon(self: &Arc<Self>) {
        if self.refreshed.try_lock().is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.refresh().await {
                tracing::debug!(error = %e, "could not refresh the Redis Cluster slot map");
            }
        });
    }

    async fn slots_from(&self, addr: &Addr) -> RedisResult<Topology> {
        let mut conn = self.conn(addr).await?;
        let cmd = ::redis::cmd("CLUSTER").arg("SLOTS").to_owned();
        let value = match tokio::time::timeout(self.response_timeout, conn.req_packed_command(&cmd)).await {
            Ok(v) => v?.extract_error()?,
            Err(_) => return Err(timeout_error(&format!("CLUSTER SLOTS at {addr}"))),
        };
        let host_of_answer = split_addr(addr).map(|(h, _)| h).unwrap_or_default();
        parse_slots(value, &host_of_answer)
    }

    fn primary_of(&self, slot: u16) -> Option<Addr> {
        self.topology.read_locked().slots.get(slot as usize).cloned().flatten()
    }

    fn any_primary(&self) -> Option<Addr> {
        let primaries = self.topology.read_locked().primaries();
        let n = primaries.len();
        (n > 0).then(|| primaries[(uuid::Uuid::new_v4().as_u128() % n as u128) as usize].clone())
    }

    /// Sends `cmd` to every primary; the answers by node.
    async fn fanout(&self, cmd: &Cmd) -> Vec<(Addr, RedisResult<Value>)> {
        let primaries = self.topology.read_locked().primaries();
        let calls = primaries.into_iter().map(|addr| async move {
            let answer = match self.conn(&addr).await {
                Ok(mut c) => match tokio::time::timeout(self.response_timeout, c.req_packed_command(cmd)).await {
                    Ok(a) => a,
                    Err(_) => Err(timeout_error(&format!("{addr}"))),
                },
                Err(e) => Err(e),
            };
            (addr, answer)
        });
        futures::future::join_all(calls).await
    }

    /// Runs one command where it belongs, following redirections; see the module docs. Server
    /// errors come back as `Ok(Value::ServerError)`, as from any connection.
    pub async fn run(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        self.run_then(cmd, None).await.map(|(value, _)| value)
    }

    /// [`Router::run`], with `then` (e.g. a `WAIT`) right behind `cmd` in one pipeline to the
    /// node that answers `cmd`, so it runs on the same connection just after it: also the
    /// answer to `then` from that node (`None` without `then`, or for a command sent to every
    /// primary).
    #[inline(never)]
    pub fn run_then<'a>(
        self: &'a Arc<Self>,
        cmd: &'a Cmd,
        then: Option<&'a Cmd>,
    ) -> BoxFuture<'a, RedisResult<(Value, Option<Value>)>> {
        Box::pin(self.run_then_unboxed(cmd, then))
    }

    async fn run_then_unboxed(self: &Arc<Self>, cmd: &Cmd, then: Option<&Cmd>) -> RedisResult<(Value, Option<Value>)> {
        let slot = match route(cmd) {
            Route::Slot(s) => Some(s),
            Route::Any => None,
            Route::All => return merge(cmd, self.fanout(cmd).await).map(|v| (v, None)),
        };
        let deadline = Instant::now() + self.response_timeout;
        let mut ask: Option<Addr> = None;
        loop {
            let asking = ask.is_some();
            let target = match ask.take() {
                Some(a) => Some(a),
                None => match slot {
                    Some(s) => self.primary_of(s),
                    None => self.any_primary(),
                },
            };
            let Some(addr) = target else {
                // A slot nobody serves (the map is being rebuilt): learn it again.
                self.refresh().await?;
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(client_error("no Redis Cluster primary serves this key's slot"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let mut conn = match self.conn(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: learn where the slot is now and try again in time.
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(e);
                    }
                    let _ = self.refresh().await;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let sent = async {
                if asking || then.is_some() {
                    let mut p = ::redis::pipe();
                    if asking {
                        p.add_command(::redis::cmd("ASKING")).ignore();
                    }
                    p.add_command(cmd.clone());
                    if let Some(then) = then {
                        p.add_command(then.clone());
                    }
                    p.ignore_errors();
                    let mut values: Vec<Value> = p.query_async(&mut conn).await?;
                    let after = if then.is_some() { values.pop() } else { None };
                    let value = values.pop().ok_or_else(|| client_error("pipeline answered nothing"))?;
                    Ok((value, after))
                } else {
                    conn.req_packed_command(cmd).await.map(|v| (v, None))
                }
            };
            let answer = match tokio::time::timeout(left, sent).await {
                Ok(a) => a,
                Err(_) => Err(timeout_error(&format!("no answer from {addr}"))),
            };
            let (value, after) = match answer {
                Ok(v) => v,
                Err(e) => {
                    // It may have run: not sent again. A failover may be under way.
                    self.refresh_soon();
                    return Err(e);
                }
            };
            let Value::ServerError(ref server) = value else { return Ok((value, after)) };
            let err: RedisError = server.clone().into();
            let again = match err.kind() {
                ErrorKind::Server(ServerErrorKind::Moved) => {
                    if let Some((to, s)) = redirect(&err, &addr) {
                        self.learn(s, to);
                    }
                    self.refresh_soon();
                    Some(Duration::ZERO)
                }
                ErrorKind::Server(ServerErrorKind::Ask) => {
                    ask = redirect(&err, &addr).map(|(to, _)| to);
                    Some(Duration::ZERO)
                }
                ErrorKind::Server(
                    ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading,
                ) => Some(RETRY_PAUSE),
                ErrorKind::Server(ServerErrorKind::ReadOnly) => {
                    let _ = self.refresh().await;
                    Some(RETRY_PAUSE)
                }
                _ => None,
            };
            match again {
                Some(pause) if Instant::now() + pause < deadline => tokio::time::sleep(pause).await,
                _ => return Ok((value, after)),
            }
        }
    }

    /// The slot map says `slot` is on `addr` now (a `MOVED` answer).
    fn learn(&self, slot: u16, addr: Addr) {
        let mut t = self.topology.write_locked();
        if let Some(entry) = t.slots.get_mut(slot as usize) {
            *entry = Some(addr.clone());
        }
        if !t.nodes.contains(&addr) {
            t.nodes.push(addr);
        }
    }

    /// Runs independent commands (each on one slot), `first` ahead of each primary's share
    /// (its answer ignored): one pipeline per primary, all primaries at once; commands a primary
    /// redirects are sent again one by one. Answers in order; a primary that does not answer
    /// fails only its own commands.
    #[inline(never)]
    pub fn each<'a>(
        self: &'a Arc<Self>,
        first: Option<&'a Cmd>,
        cmds: Vec<Cmd>,
    ) -> BoxFuture<'a, Vec<RedisResult<Value>>> {
        Box::pin(self.each_unboxed(first, cmds))
    }

    async fn each_unboxed(self: &Arc<Self>, first: Option<&Cmd>, cmds: Vec<Cmd>) -> Vec<RedisResult<Value>> {
        let mut groups: HashMap<Option<Addr>, Vec<usize>> = HashMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let target = match route(cmd) {
                Route::Slot(s) => self.primary_of(s),
                Route::Any => self.any_primary(),
                Route::All => None,
            };
            groups.entry(target).or_default().push(i);
        }
        let mut answers: Vec<Option<RedisResult<Value>>> = vec![None; cmds.len()];
        let mut again: Vec<usize> = groups.remove(&None).unwrap_or_default();
        let sends = groups.into_iter().map(|(addr, which)| {
            let addr = addr.expect("groups without a primary were taken out");
            let cmds = &cmds;
            async move {
                let mut pipe = ::redis::pipe();
                if let Some(first) = first {
                    pipe.add_command(first.clone()).ignore();
                }
                for &i in &which {
                    pipe.add_command(cmds[i].clone());
                }
                pipe.ignore_errors();
                let answer = match self.conn(&addr).await {
                    Ok(mut c) => {
                        match tokio::time::timeout(self.response_timeout, pipe.query_async::<Vec<Value>>(&mut c)).await
                        {
                            Ok(a) => a,
                            Err(_) => Err(timeout_error(&format!("no answer from {addr}"))),
                        }
                    }
                    Err(e) => Err(e),
                };
                (which, answer)
            }
        });
        for (which, answer) in futures::future::join_all(sends).await {
            match answer {
                Ok(values) if values.len() == which.len() => {
                    for (i, v) in which.into_iter().zip(values) {
                        if redirected(&v) {
                            again.push(i);
                        } else {
                            answers[i] = Some(v.extract_error());
                        }
                    }
                }
                Ok(values) => {
                    let e = client_error(&format!("a pipeline of {} commands answered {}", which.len(), values.len()));
                    for i in which {
                        answers[i] = Some(Err(e.clone()));
                    }
                }
                Err(e) => {
                    self.refresh_soon();
                    for i in which {
                        answers[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        if !again.is_empty() {
            let cmds = &cmds;
            let retried = futures::future::join_all(again.iter().map(|&i| async move {
                if let Some(first) = first {
                    let _ = self.run(first).await;
                }
                self.run(&cmds[i]).await.and_then(Value::extract_error)
            }))
            .await;
            for (i, a) in again.into_iter().zip(retried) {
                answers[i] = Some(a);
            }
        }
        answers.into_iter().map(|a| a.unwrap_or_else(|| Err(client_error("no answer")))).collect()
    }
}

/// The answer to a command sent to every primary: for `INFO`, a map of node → text; for others,
/// the first failure, or the first answer when all succeeded.
fn merge(cmd: &Cmd, answers: Vec<(Addr, RedisResult<Value>)>) -> RedisResult<Value> {
    if command_name(cmd).as_deref() == Some("INFO") {
        let entries = answers
            .into_iter()
            .map(|(addr, a)| Ok((Value::BulkString(addr.as_bytes().to_vec()), a?)))
            .collect::<RedisResult<_>>()?;
        return Ok(Value::Map(entries));
    }
    let mut first = None;
    for (_, answer) in answers {
        match answer? {
            v @ Value::ServerError(_) => return Ok(v),
            v => {
                first.get_or_insert(v);
            }
        }
    }
    Ok(first.unwrap_or(Value::Nil))
}

/// Whether an answer redirects the command or asks to send it again later (it did not run).
fn redirected(v: &Value) -> bool {
    let Value::ServerError(e) = v else { return false };
    let e: RedisError = e.clone().into();
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        )
    )
}

/// The `(address, slot)` of a `MOVED`/`ASK` answer; an empty host means the answering node's.
fn redirect(err: &RedisError, answered: &str) -> Option<(Addr, u16)> {
    let (to, slot) = err.redirect_node()?;
    let to = match to.strip_prefix(':') {
        Some(port) => format!("{}:{port}", split_addr(answered)?.0),
        None => to.to_string(),
    };
    Some((to.into(), slot))
}

/// The upper-case command name (with its subcommand for `SCRIPT`, `CONFIG`, `CLUSTER`).
fn command_name(cmd: &Cmd) -> Option<String> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        ::redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).to_ascii_uppercase()),
        _ => None,
    });
    let name = args.next()?;
    Some(match name.as_str() {
        "SCRIPT" | "CONFIG" | "CLUSTER" | "CLIENT" => format!("{name} {}", args.next().unwrap_or_default()),
        _ => name,
    })
}

/// Where a command goes: by its first key, or anywhere, or everywhere.
fn route(cmd: &Cmd) -> Route {
    let Some(name) = command_name(cmd) else { return Route::Any };
    let arg = |i: usize| match cmd.args_iter().nth(i) {
        Some(::redis::Arg::Simple(b)) => Some(b),
        _ => None,
    };
    match name.as_str() {
        "SCRIPT LOAD" | "SCRIPT FLUSH" | "FLUSHALL" | "FLUSHDB" | "INFO" | "CONFIG RESETSTAT" | "CONFIG SET" => {
            Route::All
        }
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            let keys: usize = arg(2).and_then(|n| std::str::from_utf8(n).ok()?.parse().ok()).unwrap_or(0);
            match (keys, arg(3)) {
                (1.., Some(key)) => Route::Slot(slot(key)),
                _ => Route::Any,
            }
        }
        "PING" | "ECHO" | "TIME" | "PUBLISH" | "DBSIZE" | "COMMAND" | "ASKING" | "READONLY" | "WAIT" => Route::Any,
        n if n.starts_with("SCRIPT ")
            || n.starts_with("CONFIG ")
            || n.starts_with("CLUSTER ")
            || n.starts_with("CLIENT ") =>
        {
            Route::Any
        }
        _ => arg(1).map_or(Route::Any, |key| Route::Slot(slot(key))),
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{` and
/// the next `}`, if not empty) or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A `CLUSTER SLOTS` answer as a topology; an empty host means `default_host`.
fn parse_slots(value: Value, default_host: &str) -> RedisResult<Topology> {
    let bad = |what: &str| client_error(&format!("unexpected CLUSTER SLOTS answer: {what}"));
    let ranges: Vec<Vec<Value>> = ::redis::from_redis_value(value).map_err(|e| bad(&e.to_string()))?;
    let mut topology = Topology { slots: vec![None; SLOTS as usize], nodes: Vec::new() };
    let mut replicas: Vec<Addr> = Vec::new();
    for range in ranges {
        let int = |v: &Value| ::redis::from_redis_value::<i64>(v.clone()).ok();
        let (Some(lo), Some(hi)) = (range.first().and_then(int), range.get(1).and_then(int)) else {
            return Err(bad("a range without bounds"));
        };
        let mut node_addrs = range[2..].iter().filter_map(|node| {
            let Value::Array(fields) = node else { return None };
            let host: String = ::redis::from_redis_value(fields.first()?.clone()).ok()?;
            let port = int(fields.get(1)?)?;
            let host = if host.is_empty() || host == "?" { default_host.to_string() } else { host };
            Some(Addr::from(format!("{host}:{port}")))
        });
        let Some(primary) = node_addrs.next() else { return Err(bad("a range without a primary")) };
        if !(0..i64::from(SLOTS)).contains(&lo) || !(lo..i64::from(SLOTS)).contains(&hi) {
            return Err(bad("a range out of bounds"));
        }
        for s in lo..=hi {
            topology.slots[s as usize] = Some(primary.clone());
        }
        if !topology.nodes.contains(&primary) {
            topology.nodes.push(primary);
        }
        for r in node_addrs {
            if !replicas.contains(&r) {
                replicas.push(r);
            }
        }
    }
    topology.nodes.extend(replicas.into_iter().filter(|r| !topology.slots.iter().flatten().any(|p| p == r)));
    Ok(topology)
}

/// `host:port` → `(host, port)` (IPv6 hosts may come bracketed).
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok()?))
}

fn client_error(msg: &str) -> RedisError {
    RedisError::from((ErrorKind::Client, "Redis Cluster", msg.to_string()))
}

fn timeout_error(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out: {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Examples from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag hashes the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"pl:{s12}:lease"), slot(b"pl:{s12}:v:4:main/room"));
    }

    #[test]
    fn commands_are_routed_by_their_first_key() {
        let c = |args: &[&str]| {
            let mut cmd = ::redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            route(&cmd)
        };
        assert_eq!(c(&["GET", "pl:{s1}:lease"]), Route::Slot(slot(b"s1")));
        assert_eq!(c(&["EVALSHA", "abc", "2", "pl:{s7}:lease", "pl:{s7}:epoch", "x"]), Route::Slot(slot(b"s7")));
        assert_eq!(c(&["EVALSHA", "abc", "0", "x"]), Route::Any);
        assert_eq!(c(&["script", "load", "return 1"]), Route::All);
        assert_eq!(c(&["SCRIPT", "EXISTS", "abc"]), Route::Any);
        assert_eq!(c(&["INFO", "commandstats"]), Route::All);
        assert_eq!(c(&["CLUSTER", "NODES"]), Route::Any);
        assert_eq!(c(&["TIME"]), Route::Any);
        assert_eq!(c(&["PUBLISH", "pl:owners", "1"]), Route::Any);
    }

    #[test]
    fn slot_maps_are_parsed() {
        let node = |host: &str, port: i64| Value::Array(vec![Value::BulkString(host.into()), Value::Int(port)]);
        let answer = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(8191), node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node("", 7001)]),
        ]);
        let t = parse_slots(answer, "10.0.0.9").unwrap();
        assert_eq!(t.slots[0].as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(t.slots[16383].as_deref(), Some("10.0.0.9:7001"));
        assert_eq!(
            t.nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.0.0.1:7000", "10.0.0.9:7001", "10.0.0.4:7003"]
        );
        assert_eq!(t.primaries().len(), 2);
        assert!(parse_slots(Value::Array(vec![Value::Array(vec![Value::Int(0)])]), "h").is_err());
        assert_eq!(split_addr("[::1]:7000"), Some(("::1".into(), 7000)));
    }
}
