//! A REJECT partition between two live nodes (issue 17, item 3): each node runs in a network
//! namespace of its own, both reach Redis and the gateway (in the root namespace), and an
//! iptables rule in each namespace answers every TCP connection to the other node with a reset,
//! so each sees the other's port refuse connections, as it would see a process that exited.
//! Fast failover must not take that for proof: while both renew their leases and keep their
//! membership records, no lease changes hands, and no acknowledged write is lost.
//!
//! What would depose a holder: the alarm scheduler of the node a shard prefers also wakes the
//! due alarms of that shard while another node holds it, and breaks the lease of a holder it
//! finds gone. So node-1 first holds, alone, a few shards that prefer node-2 (rebalancing is
//! off, so it keeps them), each with a due alarm in a room no node has loaded, set before
//! node-2 starts: node-2 reads them at its first poll and keeps trying to wake them, while
//! node-1 reads those shards' alarm indexes again only 17.5 to 20 s after it acquired them
//! (see `partyline_cluster::redis::alarms`). The partition comes before that.
//!
//! Needs root, `ip` (iproute2) and `iptables` (scripts/test.sh installs both); skipped, saying
//! so, when not root. The namespaces, their links and rules are removed when the test ends,
//! also when it fails.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use partyline::runtime::placement::shard_of;
use partyline::store::WriteOp;
use partyline::Store;
use partyline_cluster::redis::{fence_for, Redis};
use partyline_test_macros::timed_test;
use partyline_tests::checks::{self, EpochWatch};
use partyline_tests::faults::{prefers, rooms_for_a_join};
use partyline_tests::load::{Kind, Load, LoadConfig, RoomSpec};
use partyline_tests::procs::{NodeNetns, ProcCluster};

/// The bridge in the root namespace, with [`HOST`] on it.
const BRIDGE: &str = "plpart-br";
/// The root namespace's address on the bridge: the nodes' Redis proxies listen there.
const HOST: Ipv4Addr = Ipv4Addr::new(10, 213, 77, 1);
/// The prefix length of the bridge's network (10.213.77.0/29: the host and six nodes at most).
const PREFIX: u8 = 29;
/// How many nodes (node-1 in `plpart-1`, at 10.213.77.2, ...).
const NODES: usize = 2;
/// Shards that prefer node-2 but node-1 holds, each with a due alarm.
const BAITS: usize = 4;
/// Least time the partition lasts under load.
const PARTITION: Duration = Duration::from_secs(8);
/// Longest the partition lasts while waiting for node-1 to run the bait alarms.
const PARTITION_MAX: Duration = Duration::from_secs(30);

fn ns_name(i: usize) -> String {
    format!("plpart-{}", i + 1)
}

/// Runs a command; its stderr when it fails.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// Whether this process runs as root (effective uid 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"));
    uid.unwrap_or(false)
}

/// The network namespaces of the nodes, a veth pair each to a bridge in the root namespace.
/// Dropping it deletes the namespaces (with their veth pairs and iptables rules) and the bridge.
struct Namespaces {
    nodes: Vec<NodeNetns>,
    created: Vec<String>,
    bridge: bool,
}

impl Namespaces {
    fn create() -> Namespaces {
        // Left over by a run that was killed before it could clean up.
        for i in 0..NODES {
            let _ = run(&["ip", "netns", "del", &ns_name(i)]);
        }
        let _ = run(&["ip", "link", "del", BRIDGE]);
        let mut net = Namespaces { nodes: Vec::new(), created: Vec::new(), bridge: false };
        must(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        net.bridge = true;
        must(&["ip", "addr", "add", &format!("{HOST}/{PREFIX}"), "dev", BRIDGE]);
        must(&["ip", "link", "set", BRIDGE, "up"]);
        for i in 0..NODES {
            let ns = ns_name(i);
            let addr = Ipv4Addr::new(10, 213, 77, 2 + i as u8);
            let (outside, inside) = (format!("plpart-v{}", i + 1), format!("plpart-p{}", i + 1));
            must(&["ip", "netns", "add", &ns]);
            net.created.push(ns.clone());
            must(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns]);
            must(&["ip", "link", "set", &outside, "master", BRIDGE]);
            must(&["ip", "link", "set", &outside, "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/{PREFIX}"), "dev", &inside]);
            must(&["ip", "-n", &ns, "link", "set", &inside, "up"]);
            net.nodes.push(NodeNetns { name: ns, addr, host: HOST });
        }
        net
    }

    /// Every TCP segment from node `a` to node `b` and back is answered with a reset (REJECT
    /// `tcp-reset`, in each one's namespace): new connections are refused, open ones reset.
    /// Everything else (Redis, the gateway) still passes.
    fn reject_between(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let to = self.nodes[to].addr.to_string();
            let rule = ["-p", "tcp", "-d", &to, "-j", "REJECT", "--reject-with", "tcp-reset"];
            let mut args = vec!["ip", "netns", "exec", &self.nodes[from].name, "iptables", "-A", "OUTPUT"];
            args.extend(rule);
            must(&args);
        }
    }

    /// Whether node `from`'s namespace can open a TCP connection to `to`: `Err` with why not.
    fn probe(&self, from: usize, to: SocketAddr) -> Result<(), String> {
        let script = format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port());
        run(&["ip", "netns", "exec", &self.nodes[from].name, "timeout", "3", "bash", "-c", &script]).map(|_| ())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.created {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("cleaning up: {e}");
            }
        }
        if self.bridge {
            if let Err(e) = run(&["ip", "link", "del", BRIDGE]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// `n` counter rooms in distinct shards that prefer node-2 among node-1 and node-2, and whose
/// alarm index node-1 reads again only 17.5 s or more after acquiring them (the refresh spread
/// is `shard % 64 / 64` of 10 s).
fn bait_rooms(n: usize) -> Vec<RoomSpec> {
    let mut rooms: Vec<RoomSpec> = Vec::new();
    for i in 0.. {
        let room = RoomSpec::new(Kind::Counter, format!("bait-{i}"));
        let shard = shard_of(&room.key());
        if prefers(&room, &["node-1", "node-2"], "node-2")
            && shard % 64 >= 48
            && rooms.iter().all(|r| shard_of(&r.key()) != shard)
        {
            rooms.push(room);
            if rooms.len() == n {
                break;
            }
        }
    }
    rooms
}

/// A counter room in the same shard as `room`, other than it.
fn shard_mate(room: &RoomSpec) -> RoomSpec {
    let shard = shard_of(&room.key());
    (0..10_000_000)
        .map(|i| RoomSpec::new(Kind::Counter, format!("anchor-{i}")))
        .find(|r| shard_of(&r.key()) == shard)
        .expect("a room in the same shard")
}

/// A shard's lease: holder, incarnation, epoch (`None`: not leased).
type Lease = Option<(String, String, u64)>;

/// The lease of each shard.
type Snapshot = BTreeMap<u16, Lease>;

async fn leases_of(redis: &Redis, shards: &[u16]) -> Snapshot {
    let owners = redis.leases().owners(shards).await.expect("read the leases");
    shards.iter().copied().zip(owners.into_iter().map(|l| l.map(|l| (l.owner, l.inc, l.epoch)))).collect()
}

/// Whether each room's alarm has run (its `alarms_fired` is stored).
async fn alarms_fired(redis: &Redis, rooms: &[RoomSpec]) -> Vec<bool> {
    let store = redis.store();
    let mut fired = Vec::new();
    for room in rooms {
        let got = store.get(&room.key(), &[partyline_examples::counter::ALARMS_KEY.to_string()]).await;
        fired.push(got.is_ok_and(|v| v.first().is_some_and(Option::is_some)));
    }
    fired
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 110)]
async fn a_reject_partition_between_two_live_nodes_moves_no_lease() {
    if !is_root() {
        println!("SKIPPED: this test needs root (network namespaces and iptables rules)");
        return;
    }
    for tool in [["ip", "-V"], ["iptables", "--version"]] {
        if let Err(e) = run(&tool) {
            panic!("{e}\nthis test needs `ip` (iproute2) and `iptables`: scripts/test.sh installs them");
        }
    }
    let net = Namespaces::create();
    let mut cluster = ProcCluster::builder()
        .nodes(1)
        .gateways(1)
        // Node-1 keeps the shards that prefer node-2 (no handover moves a lease).
        .env("PARTYLINE_REBALANCE_MAX_SHARDS", "0")
        .node_netns(net.nodes.clone())
        .start()
        .await;
    let gateway = cluster.gateway_addrs()[0];
    let redis = cluster.redis().clone();

    // Node-1, alone, acquires the bait shards (through a room next to the bait room, which no
    // node loads), and after its next alarm poll, the bait alarms are set, due in a second.
    let baits = bait_rooms(BAITS);
    for bait in &baits {
        let anchor = shard_mate(bait);
        let res = partyline_tests::http(gateway, "GET", &format!("/parties/counter/{}", anchor.name), &[], b"").await;
        assert_eq!(res.status, 200, "GET {}: {}", anchor.label(), res.text());
    }
    let acquired = Instant::now();
    let bait_shards: Vec<u16> = baits.iter().map(|r| shard_of(&r.key())).collect();
    tokio::time::sleep(Duration::from_millis(750)).await;
    let store = redis.store();
    let held = leases_of(&redis, &bait_shards).await;
    for bait in &baits {
        let shard = shard_of(&bait.key());
        let (owner, inc, epoch) =
            held[&shard].clone().unwrap_or_else(|| panic!("{}: its shard is not leased", bait.label()));
        assert_eq!(owner, "node-1", "{}: its shard's holder", bait.label());
        let at = partyline::storage::now_ms() + 1000;
        let fence = fence_for(shard, &inc, epoch);
        store.commit(&bait.key(), Some(&fence), &[WriteOp::SetAlarm(at)]).await.expect("set a bait alarm");
    }

    // Node-2 joins (and reads the bait shards' alarm indexes); load on rooms of both nodes.
    cluster.add_node().await;
    let mut rooms = rooms_for_a_join(Kind::Chat, "chat", 2, 2, NODES);
    rooms.extend(rooms_for_a_join(Kind::Counter, "count", 1, 1, NODES));
    assert!(rooms.iter().all(|r| !bait_shards.contains(&shard_of(&r.key()))), "a load room in a bait shard");
    let mut watched = rooms.clone();
    watched.extend(baits.iter().cloned());
    let mut shards: Vec<u16> = watched.iter().map(|r| shard_of(&r.key())).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut cfg = LoadConfig::new(cluster.gateway_addrs());
    cfg.rooms = rooms.clone();
    let load = Load::start(cfg);
    let epochs = EpochWatch::start(redis.clone(), &watched);
    load.warm_up(10, Duration::from_secs(30)).await;

    let before = leases_of(&redis, &shards).await;
    let owners: Vec<Option<String>> = cluster.owners(&rooms.iter().map(RoomSpec::key).collect::<Vec<_>>()).await;
    for id in ["node-1", "node-2"] {
        assert!(owners.iter().any(|o| o.as_deref() == Some(id)), "{id} owns none of the load's rooms: {owners:?}");
    }
    for s in &bait_shards {
        assert_eq!(
            before[s].as_ref().map(|l| l.0.as_str()),
            Some("node-1"),
            "bait shard {s} moved before the partition"
        );
    }

    // The partition: each node's port refuses the other, as a process that exited would.
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|n| n.addr()).collect();
    net.probe(0, addrs[1]).expect("node-1's namespace reaches node-2 before the partition");
    net.reject_between(0, 1);
    for (from, to) in [(0, 1), (1, 0)] {
        match net.probe(from, addrs[to]) {
            Err(e) if e.contains("refused") => {}
            other => panic!("node-{}'s connections to node-{} must be refused: {other:?}", from + 1, to + 1),
        }
    }
    let partitioned = Instant::now();
    let fired_early = alarms_fired(&redis, &baits).await.iter().filter(|f| **f).count();
    println!(
        "partitioned {:.1}s after node-1 acquired the bait shards; node-2 prefers them, node-1 holds them \
         ({fired_early} of {BAITS} bait alarms already ran: those prove nothing)",
        partitioned.duration_since(acquired).as_secs_f64()
    );

    // Under load, until node-1 ran every bait alarm, and at least PARTITION.
    let mut problems = Vec::new();
    let mut changed: BTreeMap<u16, (Lease, Lease)> = BTreeMap::new();
    let fired = loop {
        let now = leases_of(&redis, &shards).await;
        for (s, lease) in &now {
            if *lease != before[s] {
                changed.entry(*s).or_insert((before[s].clone(), lease.clone()));
            }
        }
        let fired = alarms_fired(&redis, &baits).await;
        let held = partitioned.elapsed();
        if (held >= PARTITION && fired.iter().all(|f| *f)) || held >= PARTITION_MAX {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("partition held {:.1}s under load", partitioned.elapsed().as_secs_f64());

    let report = load.stop().await;
    let storage = checks::read_storage(&redis, &report.rooms).await;
    println!("{}", report.summary());
    problems.extend(checks::group(&report, checks::findings(&report, &storage)));
    let samples = epochs.stop();
    problems.extend(checks::check_epochs(&samples));
    let after = leases_of(&redis, &shards).await;
    for (s, lease) in &after {
        if *lease != before[s] {
            changed.entry(*s).or_insert((before[s].clone(), lease.clone()));
        }
    }
    let moved_in_log = samples.len().saturating_sub(shards.len());
    println!(
        "lease changes: {} shards changed holder or epoch; the sampler logged {moved_in_log} changes",
        changed.len()
    );
    for (s, (was, now)) in &changed {
        problems.push(format!("shard {s}: its lease changed hands during the partition: {was:?} -> {now:?}"));
    }
    for (bait, fired) in baits.iter().zip(&fired) {
        if !fired {
            problems.push(format!("{}: its alarm never ran (its holder must run it)", bait.label()));
        }
    }
    problems.extend(cluster.dead_processes());
    if !problems.is_empty() {
        let list = problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n");
        panic!("{} problem(s):\n{list}", problems.len()); // the cluster prints its logs as it drops
    }
    drop(cluster);
    drop(net);
}
