//! `partyline bench`: a load tester for Partyline (and any server that speaks PartyKit's URLs),
//! and the bare tokio-tungstenite server it is compared with ([`baseline`]).
//!
//! Scenarios:
//! - `fanout`: N clients in R rooms; S of them send (at `--rate` per sender, or as fast as a
//!   window of `--window` messages in flight allows); every member should get every message.
//!   Measures deliveries against the expected, losses, duplicates, reordering per (receiver,
//!   sender), and latency from the send time stamped in the payload.
//! - `echo`: every client sends and waits for its message back (round trips).
//! - `idle`: open N connections, hold them `--duration`, then one message per room is broadcast
//!   and timed until every client has it; with `--server-pid`, the server's memory per
//!   connection.
//! - `churn`: N clients connect, hold `--hold`, close, and reconnect with the same `_pk`, as
//!   partysocket reconnects do.
//! - `http`: N HTTP/1.1 keep-alive connections send requests to the room (`on_request`).
//! - `yjs`: N clients speak y-partykit's protocol to a Yjs party (`yjs` by default) and edit one
//!   shared `Y.Text`: every message is a real Yjs update inserting the payload text, which the
//!   server must integrate and send to every member, the sender included.
//!
//! It aims only at loopback addresses unless given `--allow-remote`, and stops on its own after
//! connect + warm-up + duration + drain.

#![warn(missing_docs)]
// Doc comments of the options are also their `--help` text, where `<pid>` and `<room>` are meant
// literally, not as HTML.
#![allow(rustdoc::invalid_html_tags)]

pub mod baseline;
mod churn;
mod client;
mod http_load;
pub mod payload;
mod progress;
pub mod stats;
mod stream;
pub mod sys;
pub mod target;
pub mod track;
mod yjs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use stats::{Connections, Params, Report, ServerMem};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N clients in R rooms, S senders; delivery to every member, latency, losses.
    Fanout,
    /// Every client sends and waits for its echo: round trips per second.
    Echo,
    /// Open N connections, hold them, then one broadcast to all; memory per connection.
    Idle,
    /// Connect/hold/close storm, reconnecting with the same `_pk`.
    Churn,
    /// HTTP requests to the room's `on_request`.
    Http,
    /// Yjs providers editing one document: updates per second, latency to every member.
    Yjs,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Echo => "echo",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
            Scenario::Http => "http",
            Scenario::Yjs => "yjs",
        }
    }
}

/// Options of `partyline bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server: ws://host:port or http://host:port (rooms are /parties/<party>/<room>);
    /// repeat to spread the clients over several gateways (client i uses URL (i / rooms) mod n,
    /// so every room has members on every gateway).
    #[arg(long, default_value = "ws://127.0.0.1:1999")]
    pub url: Vec<String>,
    /// The party [default: broadcast for fanout and idle, echo for echo and churn, main for http,
    /// yjs for yjs].
    #[arg(long)]
    pub party: Option<String>,
    /// Clients (connections) [default: fanout 100, echo 100, idle 1000, churn 50, http 16, yjs 50].
    #[arg(long, short = 'c')]
    pub clients: Option<usize>,
    /// Rooms; client i joins room i mod rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// fanout/echo: how many clients send (the first S, so they spread over the rooms)
    /// [default: all].
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per second per sender (fanout, echo), requests per second per connection
    /// (http); 0 = as fast as the server answers (bounded by --window).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate 0: most messages a sender has in flight (sent but not yet received back by
    /// itself; the party must deliver a sender's messages to it).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Message size in bytes (at least 52 for text, 28 for binary: the payload header); yjs: the
    /// characters each update inserts.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Send binary frames instead of text.
    #[arg(long)]
    pub binary: bool,
    /// Idle: broadcasts after the hold, one second apart; the figure is the median of their
    /// all-reached times (each one is reported too).
    #[arg(long, default_value_t = 3)]
    pub broadcasts: u64,
    /// Measured time (idle: the hold time), e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time sending before measuring (fanout, echo, churn, http).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// New connections per second while connecting (churn: connects per second overall);
    /// 0 = no limit.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Time limit of one connection handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// After sending stops: longest wait for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// churn: how long each connection stays open.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub hold: Duration,
    /// churn: drop the TCP connection instead of closing with a close handshake.
    #[arg(long)]
    pub abrupt: bool,
    /// An extra query parameter for every URL (a token, say), as KEY=VALUE; repeatable.
    #[arg(long = "query", value_name = "KEY=VALUE")]
    pub query: Vec<String>,
    /// http: the request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// http: the request body.
    #[arg(long)]
    pub body: Option<String>,
    /// Prefix of room names [default: bench-<random>, so every run starts with fresh rooms].
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Spread connections over this many local source addresses (127.0.0.1, .2, ...)
    /// [default: one per 25,000 connections].
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// A server process whose memory (/proc/<pid>/status) to report; repeatable.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A label for the report (e.g. the server's name).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// A checked run: arguments with defaults applied, and where to connect.
pub(crate) struct Plan {
    pub(crate) args: BenchArgs,
    pub(crate) params: Params,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) sources: Option<Vec<IpAddr>>,
    pub(crate) nofile: u64,
    query: String,
}

impl Plan {
    async fn new(args: BenchArgs) -> anyhow::Result<Plan> {
        anyhow::ensure!(!args.url.is_empty(), "give at least one --url");
        let mut endpoints = Vec::new();
        for url in &args.url {
            let target = target::Target::parse(url)?;
            target.check(args.allow_remote)?;
            endpoints.push(target);
        }
        let s = args.scenario;
        let clients = args.clients.unwrap_or(match s {
            Scenario::Fanout | Scenario::Echo => 100,
            Scenario::Idle => 1000,
            Scenario::Churn | Scenario::Yjs => 50,
            Scenario::Http => 16,
        });
        anyhow::ensure!(clients > 0, "--clients must be at least 1");
        anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
        anyhow::ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or more");
        anyhow::ensure!(args.duration > Duration::ZERO, "--duration must be more than 0");
        let rooms = args.rooms.min(clients);
        anyhow::ensure!(!(s == Scenario::Yjs && args.binary), "yjs updates insert text: --binary does not apply");
        let senders = match s {
            Scenario::Fanout | Scenario::Echo | Scenario::Yjs => args.senders.unwrap_or(clients).min(clients),
            Scenario::Idle => rooms,
            Scenario::Churn | Scenario::Http => 0,
        };
        let min = payload::min_size(args.binary);
        if matches!(s, Scenario::Fanout | Scenario::Echo | Scenario::Idle | Scenario::Yjs) && args.size < min {
            anyhow::bail!(
                "--size {} is below the payload header ({min} bytes {})",
                args.size,
                if args.binary { "binary" } else { "text" }
            );
        }
        let party = args.party.clone().unwrap_or_else(|| {
            match s {
                Scenario::Fanout | Scenario::Idle => "broadcast",
                Scenario::Echo | Scenario::Churn => "echo",
                Scenario::Http => "main",
                Scenario::Yjs => "yjs",
            }
            .to_string()
        });
        let room_prefix = args.room_prefix.clone().unwrap_or_else(|| {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
            format!("bench-{:06x}", (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff)
        });
        let mut query = String::new();
        for q in &args.query {
            let (k, v) = q.split_once('=').with_context(|| format!("--query {q:?}: expected KEY=VALUE"))?;
            query.push('&');
            query.push_str(&encode(k));
            query.push('=');
            query.push_str(&encode(v));
        }
        let mut resolved = Vec::new();
        for target in endpoints {
            let addr = target.resolve().await?;
            if !args.allow_remote {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "{} resolved to {}, which is not loopback",
                    target.host,
                    addr.ip()
                );
            }
            resolved.push(Endpoint { addr, authority: target.authority() });
        }
        let endpoints = resolved;
        let nofile = sys::raise_nofile_limit();
        // Ports are per (source, destination): count the clients of the busiest endpoint.
        let per_endpoint = clients.div_ceil(endpoints.len());
        let sources = target::source_ips(endpoints[0].addr, per_endpoint, args.source_ips);
        let params = Params {
            party,
            clients,
            rooms,
            senders,
            rate: args.rate,
            window: args.window,
            size: args.size,
            binary: args.binary,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: if s == Scenario::Idle { 0.0 } else { args.warmup.as_secs_f64() },
            ramp_per_s: args.ramp,
            source_ips: sources.as_ref().map_or(1, Vec::len),
            room_prefix,
        };
        Ok(Plan { args, params, endpoints, sources, nofile, query })
    }

    /// The endpoint client `idx` connects to.
    pub(crate) fn endpoint(&self, idx: usize) -> Endpoint {
        self.endpoints[(idx / self.params.rooms) % self.endpoints.len()].clone()
    }

    /// The URL path of client `idx` in room `room`.
    pub(crate) fn path(&self, room: usize, idx: usize) -> String {
        format!(
            "/parties/{}/{}-{room}?_pk={}-c{idx}{}",
            encode(&self.params.party),
            encode(&self.params.room_prefix),
            encode(&self.params.room_prefix),
            self.query
        )
    }

    /// Longest time the connect phase may take.
    pub(crate) fn connect_budget(&self) -> Duration {
        let ramp = if self.args.ramp > 0.0 {
            Duration::from_secs_f64(self.params.clients as f64 / self.args.ramp)
        } else {
            Duration::ZERO
        };
        // Without a ramp, allow ~2 ms per connection on top of the handshake time limit.
        ramp + self.args.connect_timeout + Duration::from_millis(2 * self.params.clients as u64)
    }

    /// The watched servers (`--server-pid`), then this process (always last).
    pub(crate) fn watch_servers(&self) -> Vec<ServerWatch> {
        let me = std::process::id();
        self.args
            .server_pids
            .iter()
            .chain(std::iter::once(&me))
            .map(|&pid| {
                let before = sys::read_mem(pid).unwrap_or_default();
                ServerWatch(
                    ServerMem {
                        pid,
                        name: sys::process_name(pid).unwrap_or_else(|| "?".into()),
                        before,
                        ..ServerMem::default()
                    },
                    None,
                )
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn report(
        &self,
        elapsed_s: f64,
        measured_s: f64,
        connections: Connections,
        messages: Option<stats::Messages>,
        idle: Option<stats::IdleFigures>,
        mut servers: Vec<ServerWatch>,
        errors: std::collections::BTreeMap<String, u64>,
    ) -> Report {
        let open = connections.open_at_end;
        let tester = servers.pop().map(|w| w.0);
        Report {
            scenario: self.args.scenario.name().into(),
            url: self.args.url.join(" "),
            label: self.args.label.clone(),
            params: self.params.clone(),
            elapsed_s,
            measured_s,
            connections,
            messages,
            http: None,
            churn: None,
            idle,
            servers: servers
                .into_iter()
                .map(|w| {
                    let mut m = w.0;
                    if open > 0 && m.end.rss_kib > 0 {
                        m.per_connection_kib = Some((m.end.rss_kib as f64 - m.before.rss_kib as f64) / open as f64);
                    }
                    m
                })
                .collect(),
            errors,
            tester_hwm_kib: sys::read_mem(std::process::id()).map_or(0, |m| m.hwm_kib),
            tester_cpu_pct: tester.and_then(|t| t.cpu_pct),
            nofile_limit: self.nofile,
        }
    }
}

/// One server address to connect to.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// The `Host` header.
    pub(crate) authority: String,
}

/// A watched process, and its CPU time when the measured window began.
pub(crate) struct ServerWatch(ServerMem, Option<(u64, tokio::time::Instant)>);

impl ServerWatch {
    /// The measured window begins.
    pub(crate) fn cpu_start(&mut self) {
        self.1 = sys::read_cpu_ticks(self.0.pid).map(|t| (t, tokio::time::Instant::now()));
    }

    /// The measured window ends: CPU used in it, as % of one core.
    pub(crate) fn cpu_stop(&mut self) {
        if let (Some((from, at)), Some(to)) = (self.1, sys::read_cpu_ticks(self.0.pid)) {
            let wall = at.elapsed().as_secs_f64();
            if wall > 0.0 {
                self.0.cpu_pct = Some(to.saturating_sub(from) as f64 / sys::TICKS_PER_SECOND / wall * 100.0);
            }
        }
    }

    pub(crate) fn sample_connected(&mut self) {
        self.0.connected = sys::read_mem(self.0.pid).unwrap_or_default();
    }

    pub(crate) fn sample_end(&mut self) {
        self.0.end = sys::read_mem(self.0.pid).unwrap_or_default();
    }
}

/// Percent-encodes what is not unreserved in a URL component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (try 500ms, 10s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Runs a scenario: prints the summary to stdout and, with `--json`, writes the report.
///
/// The future is boxed here, as are the other entry points a binary calls into the crates of
/// this workspace: an `async fn`'s body is compiled again in every crate that awaits it, so
/// without the box the whole load tester would be compiled a second time, in the binary's
/// crate (docs/benchmarks.md, "Build time").
#[inline(never)]
pub fn run(args: BenchArgs) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(run_printed(args))
}

async fn run_printed(args: BenchArgs) -> anyhow::Result<()> {
    let report = run_report(args.clone()).await?;
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("could not write {}", path.display()))?;
    }
    if report.connections.connected == 0 {
        anyhow::bail!("no connection could be opened (see the errors above)");
    }
    Ok(())
}

/// Runs a scenario and returns the report without printing it.
#[inline(never)]
pub fn run_report(args: BenchArgs) -> BoxFuture<'static, anyhow::Result<Report>> {
    Box::pin(run_scenario(args))
}

async fn run_scenario(args: BenchArgs) -> anyhow::Result<Report> {
    let plan = Plan::new(args).await?;
    match plan.args.scenario {
        Scenario::Fanout | Scenario::Echo | Scenario::Idle | Scenario::Yjs => stream::run(&plan).await,
        Scenario::Churn => churn::run(&plan).await,
        Scenario::Http => http_load::run(&plan).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn refuses_remote_targets() {
        let cli = Cli::parse_from(["bench", "fanout", "--url", "ws://10.1.2.3:1999"]);
        let err = run_report(cli.args).await.unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
    }

    #[tokio::test]
    async fn paths_and_defaults() {
        let cli = Cli::parse_from(["bench", "fanout", "--room-prefix", "r x", "--query", "token=a&b", "--rooms", "3"]);
        let plan = Plan::new(cli.args).await.unwrap();
        assert_eq!(plan.params.party, "broadcast");
        assert_eq!(plan.params.clients, 100);
        assert_eq!(plan.params.senders, 100);
        assert_eq!(plan.path(2, 7), "/parties/broadcast/r%20x-2?_pk=r%20x-c7&token=a%26b");
        let cli = Cli::parse_from(["bench", "idle", "--clients", "2", "--rooms", "5"]);
        let plan = Plan::new(cli.args).await.unwrap();
        assert_eq!((plan.params.rooms, plan.params.senders), (2, 2));
        let cli = Cli::parse_from(["bench", "echo", "--size", "10"]);
        assert!(Plan::new(cli.args).await.is_err(), "below the header size");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
    }
}
