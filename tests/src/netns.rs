//! Network namespaces for nodes of a [`crate::procs::ProcCluster`], so that a fault can cut
//! node-to-node traffic while every node still reaches Redis and the gateways: each node runs in
//! a namespace of its own (`ip netns exec`), linked by a veth pair to a bridge in the root
//! namespace, where Redis, the nodes' Redis proxies and the gateways are. An iptables rule in a
//! namespace then answers connections to another node with a reset (REJECT `tcp-reset`), as a
//! port whose process exited would.
//!
//! The same setup as `tests/tests/partition.rs`, with names and addresses of its own (`<prefix>-1`,
//! ... on `10.213.<subnet>.0/29`), so that both can run at once. Needs root, `ip` (iproute2) and
//! `iptables` ([`Namespaces::available`] says why not). Dropping a [`Namespaces`] deletes the
//! namespaces (with their veth pairs and rules) and the bridge.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::procs::NodeNetns;

/// Runs a command; its stdout, or why it failed (with its stderr).
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"));
    uid.unwrap_or(false)
}

/// The network namespaces of some nodes, a veth pair each to a bridge in the root namespace.
pub struct Namespaces {
    /// Per node: its namespace and addresses (for [`crate::procs::ProcClusterBuilder::node_netns`]).
    pub nodes: Vec<NodeNetns>,
    prefix: String,
    created: Vec<String>,
    bridge: Option<String>,
}

impl Namespaces {
    /// Why namespaces cannot be made here (not root, a tool missing, or no namespace can be
    /// created: a container without the capability), or `Ok` if they can.
    pub fn available() -> Result<(), String> {
        if !is_root() {
            return Err("needs root (network namespaces and iptables rules)".into());
        }
        for tool in [["ip", "-V"], ["iptables", "--version"]] {
            run(&tool)
                .map_err(|e| format!("needs `ip` (iproute2) and `iptables` (scripts/test.sh installs both): {e}"))?;
        }
        let probe = format!("plprobe-{}", std::process::id());
        run(&["ip", "netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let rule = run(&["ip", "netns", "exec", &probe, "iptables", "-L", "OUTPUT", "-n"]);
        let _ = run(&["ip", "netns", "del", &probe]);
        rule.map_err(|e| format!("iptables does not work in a network namespace: {e}"))?;
        Ok(())
    }

    /// `n` namespaces `<prefix>-1` ... (at most 6) with addresses 10.213.`subnet`.2 ..., and a
    /// bridge `<prefix>-br` with 10.213.`subnet`.1 (where the nodes' Redis proxies listen).
    /// Leftovers of a run that was killed are removed first. `prefix`: at most 8 characters.
    pub fn create(prefix: &str, subnet: u8, n: usize) -> Result<Namespaces, String> {
        assert!(n <= 6 && prefix.len() <= 8, "at most 6 namespaces, a prefix of at most 8 characters");
        let bridge = format!("{prefix}-br");
        for i in 0..6 {
            let _ = run(&["ip", "netns", "del", &format!("{prefix}-{}", i + 1)]);
        }
        let _ = run(&["ip", "link", "del", &bridge]);
        let host = Ipv4Addr::new(10, 213, subnet, 1);
        let mut net = Namespaces { nodes: Vec::new(), prefix: prefix.into(), created: Vec::new(), bridge: None };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        net.bridge = Some(bridge.clone());
        run(&["ip", "addr", "add", &format!("{host}/29"), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-{}", i + 1);
            let addr = Ipv4Addr::new(10, 213, subnet, 2 + i as u8);
            let (outside, inside) = (format!("{prefix}-v{}", i + 1), format!("{prefix}-p{}", i + 1));
            run(&["ip", "netns", "add", &ns])?;
            net.created.push(ns.clone());
            run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/29"), "dev", &inside])?;
            run(&["ip", "-n", &ns, "link", "set", &inside, "up"])?;
            net.nodes.push(NodeNetns { name: ns, addr, host });
        }
        Ok(net)
    }

    /// The namespaces' prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every TCP segment from node `a` to node `b` and back is answered with a reset (REJECT
    /// `tcp-reset`, in each one's namespace): new connections are refused, open ones reset.
    /// Everything else (Redis, the gateways) still passes.
    pub fn reject_between(&self, a: usize, b: usize) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            let to = self.nodes[to].addr.to_string();
            let rule = ["-p", "tcp", "-d", &to, "-j", "REJECT", "--reject-with", "tcp-reset"];
            let mut args = vec!["ip", "netns", "exec", &self.nodes[from].name, "iptables", "-A", "OUTPUT"];
            args.extend(rule);
            run(&args)?;
        }
        Ok(())
    }

    /// Removes every rule [`Namespaces::reject_between`] added (flushes each namespace's
    /// `OUTPUT` chain).
    pub fn heal(&self) -> Result<(), String> {
        for ns in &self.nodes {
            run(&["ip", "netns", "exec", &ns.name, "iptables", "-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Whether node `from`'s namespace can open a TCP connection to `to`: `Err` with why not.
    pub fn probe(&self, from: usize, to: std::net::SocketAddr) -> Result<(), String> {
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
        if let Some(bridge) = &self.bridge {
            if let Err(e) = run(&["ip", "link", "del", bridge]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}
