//! The operator commands: `partyline status` (the cluster at a glance, `--watch`, `--json`),
//! `partyline room` (a room's lookup) and `partyline drain` (drain a node), over [`Ops`], as
//! the console shows them.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::ops::{Ops, Overview, RoomLookup};

/// Rates per second between two overviews, summed over the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Over how long, in seconds.
    pub seconds: f64,
    /// WebSocket connects accepted and refused (gateways).
    pub connects: f64,
    pub refused: f64,
    /// Frames from clients, and frames to clients (every delivery).
    pub messages_in: f64,
    pub messages_out: f64,
    /// Storage commits, and those that failed (nodes).
    pub commits: f64,
    pub commit_failures: f64,
    /// Gateway errors, leases lost and rooms refused.
    pub errors: f64,
    /// Client sockets closed, by close code.
    pub closes: BTreeMap<u16, f64>,
    /// CPU used by each node, in percent of one core.
    pub node_cpu_percent: BTreeMap<String, f64>,
}

/// What every process counted in `o`, summed, by name.
fn totals(o: &Overview) -> (BTreeMap<&'static str, u64>, BTreeMap<u16, u64>) {
    let mut t: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut closes: BTreeMap<u16, u64> = BTreeMap::new();
    for g in &o.gateways {
        let c = &g.counters;
        *t.entry("connects").or_default() += c.connects;
        *t.entry("refused").or_default() += c.refused;
        *t.entry("messages_in").or_default() += c.frames_in;
        *t.entry("messages_out").or_default() += c.frames_out;
        *t.entry("errors").or_default() += c.errors;
        for (code, n) in &c.closes {
            *closes.entry(*code).or_default() += n;
        }
    }
    for n in &o.nodes {
        let c = &n.counters;
        *t.entry("commits").or_default() += c.commits;
        *t.entry("commit_failures").or_default() += c.commit_failures;
        *t.entry("errors").or_default() += c.leases_lost + c.rooms_refused;
    }
    (t, closes)
}

impl Rates {
    /// The rates from `before` to `after`. A counter that went down (its process restarted)
    /// counts as no change.
    pub fn between(before: &Overview, after: &Overview) -> Rates {
        let seconds = (after.unix_ms.saturating_sub(before.unix_ms) as f64 / 1000.0).max(0.001);
        let ((b, bc), (a, ac)) = (totals(before), totals(after));
        let rate = |name: &str| {
            let (x, y) = (b.get(name).copied().unwrap_or(0), a.get(name).copied().unwrap_or(0));
            y.saturating_sub(x) as f64 / seconds
        };
        let closes = ac
            .iter()
            .map(|(code, n)| (*code, n.saturating_sub(bc.get(code).copied().unwrap_or(0)) as f64 / seconds))
            .filter(|(_, r)| *r > 0.0)
            .collect();
        let node_cpu_percent = after
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .filter_map(|n| {
                let old = before.nodes.iter().find(|o| o.id == n.id && o.inc == n.inc && o.reachable)?;
                Some((n.id.clone(), ((n.cpu_seconds - old.cpu_seconds).max(0.0) / seconds * 100.0)))
            })
            .collect();
        Rates {
            seconds,
            connects: rate("connects"),
            refused: rate("refused"),
            messages_in: rate("messages_in"),
            messages_out: rate("messages_out"),
            commits: rate("commits"),
            commit_failures: rate("commit_failures"),
            errors: rate("errors"),
            closes,
            node_cpu_percent,
        }
    }
}

/// `--json` output of `partyline status`: the overview and its rates.
#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    overview: &'a Overview,
    rates: &'a Rates,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a RoomLookup>,
}

/// Who runs a command, for the record of an action: `$USER`, else `cli`.
pub fn default_who() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "cli".into())
}

/// `partyline status`: two overviews a second apart (or `watch` apart, until interrupted), and
/// the rates between them.
pub async fn status(ops: &Ops, watch: Option<Duration>, json: bool, room: Option<&str>) -> anyhow::Result<()> {
    let every = watch.unwrap_or(Duration::from_secs(1)).max(Duration::from_millis(200));
    let mut before = ops.overview("").await?;
    let clear = watch.is_some() && !json && std::io::stdout().is_terminal();
    loop {
        let next = Instant::now() + every;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = ops.overview("").await?;
        let rates = Rates::between(&before, &now);
        let lookup = match room {
            Some(spec) => {
                let (party, name) = split_room(spec)?;
                Some(ops.room(party, name).await?)
            }
            None => None,
        };
        if json {
            let out = StatusJson { overview: &now, rates: &rates, room: lookup.as_ref() };
            let text = if watch.is_some() { serde_json::to_string(&out) } else { serde_json::to_string_pretty(&out) };
            println!("{}", text.expect("serializes"));
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", overview_text(&now, &rates));
            print_deploys(ops).await?;
            if let Some(l) = &lookup {
                println!();
                print!("{}", room_text(l));
            }
            if watch.is_some() && !clear {
                println!("----");
            }
        }
        if watch.is_none() {
            return Ok(());
        }
        before = now;
    }
}

#[cfg(feature = "partykit")]
async fn print_deploys(ops: &Ops) -> anyhow::Result<()> {
    let deploys = partyline_cluster::redis::deploys::Deploys::of(ops.redis());
    if let Some(v) = deploys.current().await.context("reading the deployed version")? {
        println!("deployed version: {v} (partyline deploy --list shows them all)");
        crate::deploy::print_served(&deploys).await?;
    }
    Ok(())
}

#[cfg(not(feature = "partykit"))]
async fn print_deploys(ops: &Ops) -> anyhow::Result<()> {
    let deploys = partyline_cluster::redis::deploys::Deploys::of(ops.redis());
    if let Some(v) = deploys.current().await.context("reading the deployed version")? {
        println!("deployed version: {v}");
    }
    Ok(())
}

fn split_room(spec: &str) -> anyhow::Result<(&str, &str)> {
    spec.split_once('/')
        .filter(|(p, r)| !p.is_empty() && !r.is_empty())
        .with_context(|| format!("a room is named party/room, not {spec:?}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The cluster at a glance, as text.
pub fn overview_text(o: &Overview, rates: &Rates) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let r = &o.redis;
    let reach = match (&r.error, r.reachable) {
        (Some(e), _) => format!("UNREACHABLE ({e})"),
        (None, true) => "reachable".into(),
        (None, false) => "unreachable".into(),
    };
    let marker =
        if r.marker { "cluster marker present" } else { "NO CLUSTER MARKER (partyline init; or Redis lost its data)" };
    match r.mode.as_str() {
        "cluster" => {
            let _ = writeln!(
                out,
                "Redis Cluster, {} primaries: {}; {reach}; {marker}",
                r.primaries.len(),
                r.primaries.join(" ")
            );
        }
        _ => {
            let _ = writeln!(out, "Redis: one server; {reach}; {marker}");
        }
    }
    let leased = o.shards.map.iter().filter(|i| **i >= 0).count();
    let _ = writeln!(
        out,
        "Leases: profile {} (TTL {} ms, self-fence {} ms); {leased} of {} shards leased",
        o.lease.profile,
        o.lease.ttl_ms,
        o.lease.fence_after_ms,
        o.shards.map.len()
    );
    let _ = writeln!(out, "\n{} node(s)", o.nodes.len());
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:<15} {:>6} {:>6} {:>7} {:>6} {:>10}",
        "node", "address", "state", "shards", "rooms", "conns", "cpu%", "memory"
    );
    for n in &o.nodes {
        let cpu = rates.node_cpu_percent.get(&n.id).map_or("-".to_string(), |c| format!("{c:.1}"));
        let mem = if n.reachable { mib(n.rss_bytes) } else { "-".into() };
        let _ = writeln!(
            out,
            "{:<20} {:<22} {:<15} {:>6} {:>6} {:>7} {:>6} {:>10}",
            n.id, n.addr, n.state, n.shards, n.rooms, n.connections, cpu, mem
        );
        if let Some(e) = &n.error {
            let _ = writeln!(out, "  {}: {e}", n.id);
        }
    }
    let _ = writeln!(out, "\n{} gateway(s)", o.gateways.len());
    if !o.gateways.is_empty() {
        let _ = writeln!(out, "{:<32} {:<22} {:>7} {:>6} {:>6}", "gateway", "admin", "conns", "links", "nodes");
        for g in &o.gateways {
            let admin = g.admin.as_deref().unwrap_or("-");
            let _ = writeln!(out, "{:<32} {:<22} {:>7} {:>6} {:>6}", g.id, admin, g.connections, g.links, g.live_nodes);
        }
    }
    let closes: Vec<String> = rates.closes.iter().map(|(code, r)| format!("{code}: {r:.1}")).collect();
    let _ = writeln!(
        out,
        "\nper second (over {:.1} s): connects {:.1}, refused {:.1}, messages in {:.1}, out {:.1}, commits {:.1}, \
         commit failures {:.1}, errors {:.1}; closes {}",
        rates.seconds,
        rates.connects,
        rates.refused,
        rates.messages_in,
        rates.messages_out,
        rates.commits,
        rates.commit_failures,
        rates.errors,
        if closes.is_empty() { "none".to_string() } else { closes.join(", ") }
    );
    out
}

/// A room's lookup, as text.
pub fn room_text(l: &RoomLookup) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = write!(out, "room {}/{}: shard {}, ", l.party, l.room, l.shard);
    match &l.owner {
        Some(o) => {
            let _ = writeln!(out, "owned by {} ({}) at epoch {}", o.id, o.addr, o.epoch);
        }
        None => {
            let _ = writeln!(out, "not owned by any node (it is placed on first use)");
        }
    }
    let running = if l.running { "running" } else { "not running" };
    let hibernates = if l.hibernates { ", hibernates" } else { "" };
    let _ = writeln!(out, "  {running}{hibernates}; {} connection(s)", l.connections.len());
    for c in &l.connections {
        let tags = if c.tags.is_empty() { String::new() } else { format!(" tags {}", c.tags.join(",")) };
        let hib = if c.hibernating { " (hibernating)" } else { "" };
        let _ = writeln!(out, "    {} via {}{tags}{hib}", c.id, c.gateway);
    }
    let s = &l.storage;
    let quota = if s.quota_bytes > 0 {
        format!(" of {} ({:.1} %)", s.quota_bytes, s.bytes as f64 * 100.0 / s.quota_bytes as f64)
    } else {
        String::new()
    };
    let _ = writeln!(out, "  storage: {} key(s), {} bytes{quota}", s.keys, s.bytes);
    if !s.first_keys.is_empty() {
        let more = if (s.keys as usize) > s.first_keys.len() { ", ..." } else { "" };
        let _ = writeln!(out, "    keys: {}{more}", s.first_keys.join(", "));
    }
    match l.next_alarm_ms {
        Some(ms) => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
            let _ = writeln!(out, "  next alarm: {}", humantime::format_rfc3339_millis(at));
        }
        None => {
            let _ = writeln!(out, "  next alarm: none");
        }
    }
    if let Some(node) = &l.answered_by {
        let _ = writeln!(out, "  (answered by {node})");
    }
    if let Some(e) = &l.error {
        let _ = writeln!(out, "  incomplete: {e}");
    }
    out
}

/// `partyline room`.
pub async fn room(ops: &Ops, spec: &str, json: bool) -> anyhow::Result<()> {
    let (party, name) = split_room(spec)?;
    let lookup = ops.room(party, name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lookup).expect("serializes"));
    } else {
        print!("{}", room_text(&lookup));
    }
    Ok(())
}

/// The end of `partyline drain --json`.
#[derive(Serialize)]
struct DrainJson {
    node: String,
    ok: bool,
    message: String,
    /// The node's state when the command returned.
    state: Option<String>,
    shards: Option<u32>,
}

/// `partyline drain`: asks the node to drain, and with `wait`, waits until it reports
/// `drained` (or has left).
pub async fn drain(ops: &Ops, node: &str, who: &str, wait: Option<Duration>, json: bool) -> anyhow::Result<()> {
    let reply = ops.drain(node, who).await?;
    if !json {
        println!("{}", reply.message);
    }
    let mut last = ops.node_state(node).await.ok().flatten();
    if let Some(timeout) = wait {
        let started = Instant::now();
        let mut shown = String::new();
        loop {
            match &last {
                Some((state, _)) if state == "drained" => break,
                None => break,
                Some((state, shards)) => {
                    let line = format!("{node}: {state}, {shards} shard(s) left");
                    if !json && line != shown {
                        println!("{line}");
                        shown = line;
                    }
                }
            }
            anyhow::ensure!(started.elapsed() < timeout, "{node} did not finish draining within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            last = ops.node_state(node).await.ok().flatten();
        }
        if !json {
            match &last {
                Some(_) => {
                    println!("{node} is drained ({:.1} s); stop it when you like", started.elapsed().as_secs_f64())
                }
                None => println!("{node} left the cluster"),
            }
        }
    }
    if json {
        let out = DrainJson {
            node: node.into(),
            ok: reply.ok,
            message: reply.message,
            state: last.as_ref().map(|(s, _)| s.clone()),
            shards: last.map(|(_, n)| n),
        };
        println!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{NodeCounters, NodeView};
    use partyline_cluster::redis::gateways::GatewayRecord;

    fn overview(unix_ms: u64, frames_in: u64, commits: u64, cpu: f64, closes: &[(u16, u64)]) -> Overview {
        let mut gateway = GatewayRecord { id: "g".into(), ..Default::default() };
        gateway.counters.frames_in = frames_in;
        gateway.counters.closes = closes.iter().copied().collect();
        let node = NodeView {
            id: "n1".into(),
            inc: "n1-a".into(),
            reachable: true,
            cpu_seconds: cpu,
            counters: NodeCounters { commits, ..Default::default() },
            ..Default::default()
        };
        Overview { unix_ms, gateways: vec![gateway], nodes: vec![node], ..Default::default() }
    }

    #[test]
    fn rates_are_per_second_and_a_restart_counts_as_no_change() {
        let a = overview(10_000, 100, 50, 1.0, &[(1000, 2)]);
        let b = overview(12_000, 300, 60, 1.5, &[(1000, 6), (1006, 1)]);
        let r = Rates::between(&a, &b);
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.messages_in, 100.0);
        assert_eq!(r.commits, 5.0);
        assert_eq!(r.closes, BTreeMap::from([(1000, 2.0), (1006, 0.5)]));
        assert_eq!(r.node_cpu_percent.get("n1"), Some(&25.0));
        // A restarted gateway starts its counters over.
        let c = overview(14_000, 10, 60, 1.5, &[]);
        let r = Rates::between(&b, &c);
        assert_eq!(r.messages_in, 0.0);
        assert!(r.closes.is_empty());
    }

    #[test]
    fn rooms_are_named_party_slash_room() {
        assert_eq!(split_room("main/lobby").unwrap(), ("main", "lobby"));
        assert_eq!(split_room("main/a/b").unwrap(), ("main", "a/b"));
        assert!(split_room("lobby").is_err());
        assert!(split_room("/lobby").is_err());
    }
}
