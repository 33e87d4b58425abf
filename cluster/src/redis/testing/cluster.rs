//! [`RedisCluster`]: a throwaway Redis Cluster on loopback; see the parent module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use ::redis::{Commands, Connection, ConnectionLike, Value};

use super::{free_port, log_tail, signal, spawn, wait_ready, STARTUP};

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// TLS for the nodes of a [`RedisCluster::start_tls`]: one certificate and key for every node,
/// and the CA that signed it.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The nodes' certificate (PEM), for 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

/// One `redis-server --cluster-enabled yes` of a [`RedisCluster`].
#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    bus: u16,
    /// The TLS port and files, when the cluster serves TLS.
    tls: Option<(u16, TlsFiles)>,
    dir: tempfile::TempDir,
}

impl Node {
    fn args(&self) -> Vec<String> {
        let mut args = self.cluster_args();
        if let Some((port, files)) = &self.tls {
            // TLS clients on the TLS port, the cluster bus over TLS too; the plain port stays
            // (for this harness). Redis answers CLUSTER SLOTS with each node's TLS port to a
            // client connected over TLS, its plain port to others.
            let path = |p: &PathBuf| p.display().to_string();
            args.extend([
                "--tls-port".into(),
                port.to_string(),
                "--tls-cluster".into(),
                "yes".into(),
                "--tls-replication".into(),
                "yes".into(),
                "--tls-cert-file".into(),
                path(&files.cert),
                "--tls-key-file".into(),
                path(&files.key),
                "--tls-ca-cert-file".into(),
                path(&files.ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        }
        args
    }

    fn cluster_args(&self) -> Vec<String> {
        [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &self.bus.to_string(),
            // A primary is marked failed (and its replica takes over) after 2 s of silence.
            "--cluster-node-timeout",
            "2000",
            // The other primaries keep serving their slots while one is down.
            "--cluster-require-full-coverage",
            "no",
            // A replica that lost contact with its primary long ago still takes over.
            "--cluster-replica-validity-factor",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start(&mut self) -> Result<(), String> {
        let mut child = spawn(self.port, self.dir.path(), false, &self.args());
        match wait_ready(self.port, &mut child) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{e}\n{}", log_tail(self.dir.path(), 15)))
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of real `redis-server` processes on 127.0.0.1, killed on drop. Slots are
/// split evenly over the primaries; each primary can have replicas. Nodes time out after 2 s,
/// replicas take over whatever their replication lag, and a cluster with a primary down keeps
/// serving the other primaries' slots.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Replicas for each primary (the first `primaries` nodes are the primaries).
    primaries: usize,
}

impl RedisCluster {
    /// A cluster of `primaries` primaries, no replicas. Panics (with the reason and the logs)
    /// if it cannot be started.
    pub fn start(primaries: usize) -> Self {
        Self::start_with_replicas(primaries, 0)
    }

    /// A cluster of `primaries` primaries with `replicas` replicas each.
    pub fn start_with_replicas(primaries: usize, replicas: usize) -> Self {
        Self::start_inner(primaries, replicas, None)
    }

    /// A cluster of `primaries` primaries, no replicas, that also serves TLS (and speaks TLS on
    /// its cluster bus) with `files`; [`RedisCluster::tls_url`] reaches it over TLS. Needs a
    /// `redis-server` built with TLS (Debian's is).
    pub fn start_tls(primaries: usize, files: TlsFiles) -> Self {
        Self::start_inner(primaries, 0, Some(files))
    }

    fn start_inner(primaries: usize, replicas: usize, tls: Option<TlsFiles>) -> Self {
        assert!(primaries >= 1, "a cluster needs a primary");
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(primaries, replicas, tls.clone()) {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("could not start a Redis Cluster: {last}");
    }

    fn try_start(primaries: usize, replicas: usize, tls: Option<TlsFiles>) -> Result<Self, String> {
        let total = primaries * (1 + replicas);
        let per_node = if tls.is_some() { 3 } else { 2 };
        let mut ports = Vec::new();
        while ports.len() < total * per_node {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut nodes: Vec<Node> = ports
            .chunks(per_node)
            .map(|p| Node {
                child: None,
                port: p[0],
                bus: p[1],
                tls: tls.as_ref().map(|files| (p[2], files.clone())),
                dir: tempfile::Builder::new().prefix("partyline-redis-cluster-").tempdir().expect("a temp dir"),
            })
            .collect();
        // The nodes start together: Redis holds a new primary back for 2 s after its start, and
        // that time overlaps with the set-up below.
        let children: Vec<Child> = nodes.iter().map(|n| spawn(n.port, n.dir.path(), false, &n.args())).collect();
        for (node, mut child) in nodes.iter_mut().zip(children) {
            if let Err(e) = wait_ready(node.port, &mut child) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{e}\n{}", log_tail(node.dir.path(), 15)));
            }
            node.child = Some(child);
        }
        let cluster = RedisCluster { nodes, primaries };
        cluster.create(replicas)?;
        Ok(cluster)
    }

    fn create(&self, replicas: usize) -> Result<(), String> {
        let per = SLOTS as usize / self.primaries;
        for i in 0..self.primaries {
            let lo = i * per;
            let hi = if i + 1 == self.primaries { SLOTS as usize - 1 } else { (i + 1) * per - 1 };
            let mut c = self.conn(self.nodes[i].port);
            run(&mut c, ::redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(lo).arg(hi))?;
            run(&mut c, ::redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1))?;
        }
        let mut first = self.conn(self.nodes[0].port);
        for n in &self.nodes[1..] {
            run(&mut first, ::redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(n.port).arg(n.bus))?;
        }
        // Known is not enough: a PUBLISH crosses only bus links that are up, so a subscriber on
        // one node misses what is published on another until every link is connected.
        self.wait("every node to be linked to every other", || {
            self.nodes.iter().all(|n| self.listing(n.port).is_ok_and(|l| fully_linked(&l, self.nodes.len())))
        })?;
        for r in 0..replicas {
            for p in 0..self.primaries {
                let replica = self.primaries * (1 + r) + p;
                let id = self.id(self.nodes[p].port);
                let mut c = self.conn(self.nodes[replica].port);
                run(&mut c, ::redis::cmd("CLUSTER").arg("REPLICATE").arg(id))?;
            }
        }
        self.wait_healthy()
    }

    /// Waits until every node says the cluster is ok, every node agrees on who serves each
    /// primary's slots, and every replica is in sync.
    pub fn wait_healthy(&self) -> Result<(), String> {
        self.wait("the cluster to be ok on every node", || {
            let live: Vec<u16> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect();
            let views: Option<Vec<Vec<(u16, u16)>>> = live.iter().map(|p| self.slot_owners(*p).ok()).collect();
            let Some(views) = views else { return false };
            let states_ok = live.iter().all(|p| {
                let mut c = self.conn(*p);
                let info: String = ::redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            let synced = live.iter().all(|p| {
                let mut c = self.conn(*p);
                let info: String = ::redis::cmd("INFO").arg("replication").query(&mut c).unwrap_or_default();
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            states_ok && synced && views.windows(2).all(|w| w[0] == w[1]) && views[0].len() == SLOTS as usize
        })
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        while !ok() {
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(|n| log_tail(n.dir.path(), 15)).collect();
                return Err(format!("waited {STARTUP:?} for {what}\n{}", logs.join("\n")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `rediss+cluster://` with every node's TLS port as a seed. Panics for a cluster started
    /// without TLS.
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls.as_ref().expect("a cluster started with start_tls").0))
            .collect();
        format!("rediss+cluster://{}", seeds.join(","))
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes that are primaries now (with at least one slot), sorted.
    pub fn primaries(&self) -> Vec<u16> {
        let Some(any) = self.nodes.iter().find(|n| n.child.is_some()) else { return Vec::new() };
        let mut ports: Vec<u16> =
            self.slot_owners(any.port).expect("CLUSTER SLOTS").into_iter().map(|(_, p)| p).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// A synchronous connection to the node on `port` (for test set-up and inspection).
    pub fn conn(&self, port: u16) -> Connection {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a valid URL");
        let c = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connect to a cluster node");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
        c
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut self.any()).expect("CLUSTER KEYSLOT")
    }

    /// The port of the primary serving `slot`.
    pub fn primary_of(&self, slot: u16) -> u16 {
        let owners = self.slot_owners(self.any_port()).expect("CLUSTER SLOTS");
        owners.iter().find(|(s, _)| *s == slot).map(|(_, p)| *p).expect("every slot is served")
    }

    fn any_port(&self) -> u16 {
        self.nodes.iter().find(|n| n.child.is_some()).expect("a running node").port
    }

    fn any(&self) -> Connection {
        self.conn(self.any_port())
    }

    /// `(slot, primary port)` for every slot, as the node on `port` sees it.
    fn slot_owners(&self, port: u16) -> Result<Vec<(u16, u16)>, String> {
        let mut c = self.conn(port);
        let ranges: Vec<Vec<Value>> =
            ::redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let mut out = Vec::new();
        for range in ranges {
            let int = |v: &Value| ::redis::from_redis_value::<i64>(v.clone()).ok();
            let (Some(lo), Some(hi)) = (range.first().and_then(int), range.get(1).and_then(int)) else { continue };
            let Some(Value::Array(primary)) = range.get(2) else { continue };
            let Some(port) = primary.get(1).and_then(int) else { continue };
            out.extend((lo..=hi).map(|s| (s as u16, port as u16)));
        }
        out.sort_unstable();
        Ok(out)
    }

    fn listing(&self, port: u16) -> Result<String, String> {
        ::redis::cmd("CLUSTER").arg("NODES").query(&mut self.conn(port)).map_err(|e| e.to_string())
    }

    /// The cluster id of the node on `port`.
    pub fn id(&self, port: u16) -> String {
        ::redis::cmd("CLUSTER").arg("MYID").query(&mut self.conn(port)).expect("CLUSTER MYID")
    }

    /// The keys stored on the node on `port` that match `pattern` (`SCAN`).
    pub fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut c = self.conn(port);
        let iter: ::redis::Iter<String> = c.scan_match(pattern).expect("SCAN");
        iter.collect::<Result<_, _>>().expect("SCAN")
    }

    /// `INFO commandstats` of the node on `port`: calls per command (lowercase name).
    pub fn command_calls(&self, port: u16) -> HashMap<String, u64> {
        let info: String = ::redis::cmd("INFO").arg("commandstats").query(&mut self.conn(port)).expect("INFO");
        info.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    /// Resets `INFO commandstats` on every running node.
    pub fn reset_stats(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let _: () =
                ::redis::cmd("CONFIG").arg("RESETSTAT").query(&mut self.conn(n.port)).expect("CONFIG RESETSTAT");
        }
    }

    /// Moves `slot` to the primary on `to`, key by key, waiting `pause` after each key (so
    /// clients meet the slot half moved: `ASK` for keys already moved, `TRYAGAIN` for commands
    /// whose keys are on both sides), then hands the slot over on every node. Returns how many
    /// keys moved.
    pub fn migrate_slot(&self, slot: u16, to: u16, pause: Duration) -> usize {
        let from = self.primary_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.id(from), self.id(to));
        let (mut src, mut dst) = (self.conn(from), self.conn(to));
        let setslot = |c: &mut Connection, state: &str, id: &str| {
            run(c, ::redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id)).expect("CLUSTER SETSLOT");
        };
        setslot(&mut dst, "IMPORTING", &from_id);
        setslot(&mut src, "MIGRATING", &to_id);
        let mut moved = 0;
        loop {
            let keys: Vec<String> =
                ::redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1).query(&mut src).expect("GETKEYSINSLOT");
            let Some(key) = keys.into_iter().next() else { break };
            run(&mut src, ::redis::cmd("MIGRATE").arg("127.0.0.1").arg(to).arg(&key).arg(0).arg(5000))
                .expect("MIGRATE");
            moved += 1;
            std::thread::sleep(pause);
        }
        // The new owner first, then the old one, then everyone else (as redis-cli does).
        setslot(&mut dst, "NODE", &to_id);
        setslot(&mut src, "NODE", &to_id);
        for n in self.nodes.iter().filter(|n| n.child.is_some() && n.port != from && n.port != to) {
            setslot(&mut self.conn(n.port), "NODE", &to_id);
        }
        moved
    }

    /// Promotes the replica on `replica` to primary in place of its primary (`CLUSTER FAILOVER`:
    /// the replica catches up first, so nothing acknowledged is lost), and waits until every
    /// node agrees.
    pub fn failover(&self, replica: u16) {
        run(&mut self.conn(replica), ::redis::cmd("CLUSTER").arg("FAILOVER")).expect("CLUSTER FAILOVER");
        self.wait("the replica to take over", || self.primaries().contains(&replica)).expect("failover");
        self.wait_healthy().expect("a healthy cluster after the failover");
    }

    /// Promotes the replica on `replica` to primary without its primary's agreement (`CLUSTER
    /// FAILOVER TAKEOVER`: no catching up, so whatever it had not received is gone), as an
    /// automatic failover after the primary died does, and waits until every running node
    /// agrees and the cluster is ok.
    pub fn takeover(&self, replica: u16) {
        run(&mut self.conn(replica), ::redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))
            .expect("CLUSTER FAILOVER TAKEOVER");
        self.wait("the replica to take over", || self.primaries().contains(&replica)).expect("takeover");
        self.wait_healthy().expect("a healthy cluster after the takeover");
    }

    /// The port of a replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        let id = self.id(primary);
        self.listing(self.any_port())
            .ok()?
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(id.as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ',']).next())
            .and_then(|hostport| hostport.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
    }

    /// Wipes the data of the primary on `port` (`FLUSHALL`), as if it had restarted without
    /// persistence or failed over to a replica that never synced.
    pub fn wipe(&self, port: u16) {
        let _: () = ::redis::cmd("FLUSHALL").query(&mut self.conn(port)).expect("FLUSHALL");
    }

    /// Freezes the node on `port` (SIGSTOP).
    pub fn pause(&self, port: u16) {
        signal(self.node(port).child.as_ref().expect("running").id(), "-STOP");
    }

    /// Thaws a node frozen by [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        signal(self.node(port).child.as_ref().expect("running").id(), "-CONT");
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).stop();
    }

    /// Starts a killed node again on its port, empty (no persistence) but with its cluster
    /// configuration, so it rejoins with its former role and slots.
    pub fn restart(&mut self, port: u16) {
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.node_mut(port).start() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("could not restart cluster node {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

fn run(c: &mut Connection, cmd: &::redis::Cmd) -> Result<(), String> {
    c.req_command(cmd).map(|_| ()).map_err(|e| format!("{:?}: {e}", cmd.args_iter().next()))
}

/// Whether a `CLUSTER NODES` listing shows `nodes` nodes, each with its bus link connected and
/// past the handshake.
fn fully_linked(listing: &str, nodes: usize) -> bool {
    let lines: Vec<&str> = listing.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.len() == nodes
        && lines.iter().all(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let flags = fields.get(2).copied().unwrap_or("");
            fields.get(7) == Some(&"connected") && !flags.contains("handshake") && !flags.contains("noaddr")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_primaries_share_the_slots_and_a_slot_can_move() {
        let cluster = RedisCluster::start(3);
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), 3);
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        let slot = cluster.slot_of("pl:{s1}:lease");
        let from = cluster.primary_of(slot);
        let _: () = cluster.conn(from).set("pl:{s1}:lease", "x").unwrap();
        let to = *primaries.iter().find(|p| **p != from).unwrap();
        assert_eq!(cluster.migrate_slot(slot, to, Duration::ZERO), 1);
        assert_eq!(cluster.primary_of(slot), to);
        assert_eq!(cluster.keys_on(to, "pl:*"), vec!["pl:{s1}:lease".to_string()]);
        assert!(cluster.keys_on(from, "pl:*").is_empty());
    }
}
