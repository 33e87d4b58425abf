//! `partyline-chaos`: repeats random faults against a local cluster of `partyline` processes
//! under load, and prints what the clients saw and what storage holds (issue 7). Run it with
//! `scripts/chaos.sh`, which builds it and the `partyline` binary first; `--help` says more.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::ValueEnum;
use partyline_node::shards::LeaseTiming;
use partyline_tests::faults::{
    self, failover_target, multi, Counts, FaultKind, Outcome, Pause, RedisFault, Setup, Transcript,
};
use partyline_tests::load::{Kind, RoomSpec};
use partyline_tests::netns::Namespaces;
use partyline_tests::proxy::Mode;

const ABOUT: &str = "Repeats random faults against a local Partyline cluster under load, and checks what \
clients saw against what storage holds.";

const LONG_ABOUT: &str = "\
Repeats random faults against a local Partyline cluster under load, and checks what clients
saw against what storage holds.

Each round starts a fresh cluster on loopback: a durable redis-server (AOF, appendfsync
always), 3 nodes and 2 gateways as child processes of the `partyline` binary, with the lease
profile of --profile: fast by default (lease TTL 3 s, renewed every 0.5 s, self-fence 2.4 s
after the last renewal), or standard (10 s, 2 s, 8 s).
A load of chat rooms (party `main`) and hibernating counter rooms (party `counter`), 3
WebSocket clients each, writes all the time; one fault hits the node owning the most load
rooms (or Redis); the cluster recovers; the load stops; and the round checks each room
against its storage, read straight from Redis:
  - every write a client saw acknowledged is stored (else: lost);
  - every broadcast a client saw is stored (else: phantom), in storage order, once;
  - histories and counts a client gets on reconnect are not older than what it saw;
  - lease epochs never go back, and no epoch has two owners;
  - a paused or cut-off owner delivers nothing after its self-fence deadline and is not
    taken over before its leases can have expired;
  - no room ran twice: a counter broadcast names the instance of the room that committed it
    ({\"count\": n, \"inst\": X}); two instances committing the same count, an instance
    committing again after another's commits began, or a client receiving a frame from an
    instance more than 0.25 s after some client received a higher count committed by
    another instance, is a room that ran twice (chat broadcasts name no instance: a chat
    room running twice shows as lost, phantom or reordered writes);
  - a drain closes non-hibernating sockets with 1012, and no hibernating client is
    disconnected by a drain or a rebalance;
  - every room is writable again within 30 s, and no process crashes;
  - every close reason and HTTP error body a client received is a documented text (a
    server's fixed text, optionally with a reference, or the party's own; issue 22).

Fault kinds (--kinds):
  sigkill        SIGKILL of the busiest owner, then a restart (same id and port)
  sigstop        SIGSTOP of the busiest owner past its lease (until its rooms moved, or a
                 random lease TTL + 0.5-2.5 s: 3.5-5.5 s with the fast profile), then SIGCONT
  cut-hold       the busiest owner's Redis traffic held (a partition) past its lease,
                 then healed
  cut-drop       the busiest owner's Redis connections reset past its lease, then healed
  redis-restart  Redis killed and restarted at once (its AOF keeps the data)
  redis-outage   Redis down for a random lease TTL + 0.5-3 s (past every lease; 3.5-6 s
                 with the fast profile), then back
  sigterm        SIGTERM of the busiest owner (a graceful drain), then a restart
  join           a fourth node joins and takes over its share of the shards
  rolling-restart  every node in turn, as Kubernetes does: SIGTERM, wait until it is gone
                 (exited, membership record removed), restart (same id and port), wait
                 until it serves again (owns every load room it is preferred for), next
  drain-rebalance  the busiest owner drains and restarts, so shards rebalance back to it;
                 as soon as the first room has moved back, the node that held most of
                 them is SIGTERMed; then it restarts too
  slow-sigterm   a counter room's handler is busy for a random 3-6 s (`slow <ms>`, sent
                 by a client beside the load) when its owner is SIGTERMed; then a restart
  partition-reject  nodes in network namespaces; node-to-node TCP between the busiest
                 owner and another node rejected (reset) for the lease TTL + 2-5 s, then
                 healed: no lease may change hands (both are alive). Needs root, `ip` and
                 `iptables`; left out, saying why, where namespaces cannot be made
  moved-twice    a fourth node joins and is SIGTERMed as soon as its rooms have moved to
                 it: they move twice in quick succession (the load has a chat and a
                 counter room more, both preferring the fourth node)
  replica-failover  Redis is a Redis Cluster (3 primaries, two replicas each, every write
                 waiting for a replica: PARTYLINE_REDIS_MIN_REPLICAS=1) instead of the
                 durable redis-server; the primary serving most of the load's shards is
                 killed (SIGKILL) and a replica promoted

The order of the kinds (each kind once per block of rounds, in a shuffled order) and the
random parameters (pauses, outages, when the fault hits, the rooms' names and so which nodes
own them) come from --seed. The seed is printed, so a run can be repeated with the same
faults (the processes' timing still varies).

Figures: failover is the time from the fault (redis-outage: from Redis back) to the first
acknowledged write made after it, per affected room (every room for the Redis faults); the
issue's target is the lease TTL + 1.5 s of the profile. For sigterm, join, rolling-restart,
drain-rebalance, slow-sigterm, partition-reject and moved-twice it is the stall: the longest
time an affected room went without an acknowledged write, until it was writable again after
the moves. Each round's line and the summary count lost, phantom, stale or reordered writes,
rooms that ran twice, and hibernating clients disconnected by drains or joins.

Output: one line per round, then a summary. Exit status: 0 if no round found a problem; 1 if
one did (an undocumented client text is one) (the problems are listed, and those rounds' logs kept, with the round's narration in
chaos-round.txt); 130 if interrupted (Ctrl-C or SIGTERM stop the round at once and kill its
processes); 2 on a usage error.

Needs redis-server on PATH, and the `partyline` binary next to this one (scripts/chaos.sh
builds both) or in $PARTYLINE_BIN. Loopback only, except partition-reject (network
namespaces linked by a bridge, 10.213.78.0/29).";

#[derive(Parser, Debug)]
#[command(name = "partyline-chaos", about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Rounds to run; each is a fresh cluster, a load, one fault, recovery and the checks
    /// (2 to 16 s each on a 2-core machine: 200 rounds of every kind took 26 minutes).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Seed of the fault order and parameters (default: from the clock). Printed at the start
    /// and the end, so that a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Fault kinds to draw from, comma-separated (default: all): sigkill, sigstop, cut-hold,
    /// cut-drop, redis-restart, redis-outage, sigterm, join, rolling-restart, drain-rebalance,
    /// slow-sigterm, partition-reject, moved-twice, replica-failover.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    kinds: Vec<FaultKind>,
    /// Keep every round's logs and narration (default: only those of rounds that found a
    /// problem). Their directories are printed.
    #[arg(long)]
    keep_logs: bool,
    /// Chat rooms (party `main`, not hibernating) in each round's load.
    #[arg(long, default_value_t = 6)]
    chat_rooms: usize,
    /// Counter rooms (party `counter`, hibernating) in each round's load.
    #[arg(long, default_value_t = 3)]
    counter_rooms: usize,
    /// A round still running after this many seconds is stopped (its processes killed) and
    /// counted as a problem.
    #[arg(long, default_value_t = 240, value_name = "SECS")]
    round_timeout: u64,
    /// The nodes' lease profile (PARTYLINE_LEASE_PROFILE): fast (TTL 3 s, renewed every 0.5 s,
    /// self-fence at 2.4 s) or standard (TTL 10 s, renewed every 2 s, self-fence at 8 s). Pauses
    /// and outages are drawn past its TTL, and the failover target is its TTL + 1.5 s.
    #[arg(long, value_enum, default_value_t = Profile::Fast)]
    profile: Profile,
}

/// A lease profile of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Profile {
    Fast,
    Standard,
}

impl Profile {
    fn timing(self) -> LeaseTiming {
        match self {
            Profile::Fast => LeaseTiming::FAST,
            Profile::Standard => LeaseTiming::STANDARD,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Standard => "standard",
        }
    }
}

fn parse_kind(s: &str) -> Result<FaultKind, String> {
    FaultKind::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {s:?}; the kinds are: {}", names.join(", "))
    })
}

/// SplitMix64: small, seedable, good enough to shuffle faults.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    /// Uniform between `lo` and `hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi - lo).mul_f64(self.unit())
    }
}

/// One planned round: its fault and parameters, all drawn from the seed.
#[derive(Clone, Copy, Debug)]
struct Plan {
    kind: FaultKind,
    /// Time between the warm-up and the fault.
    settle: Duration,
    /// sigstop: how long.
    pause: Pause,
    /// redis-outage: how long Redis stays down.
    outage: Duration,
    /// slow-sigterm: how long the handler is busy.
    slow: Duration,
    /// partition-reject: how long the partition holds.
    hold: Duration,
    /// In the rooms' names, so that each round's rooms fall in other shards: the owners, the
    /// busiest node and the rooms a joining node takes vary from round to round.
    tag: u16,
}

/// The rounds' plans: every kind once per block, blocks shuffled, parameters drawn.
fn plan(seed: u64, rounds: usize, kinds: &[FaultKind], leases: LeaseTiming) -> Vec<Plan> {
    let mut rng = Rng(seed);
    let mut plans = Vec::with_capacity(rounds);
    while plans.len() < rounds {
        let mut block = kinds.to_vec();
        for i in (1..block.len()).rev() {
            block.swap(i, rng.below(i + 1));
        }
        for kind in block {
            let settle = rng.between(Duration::ZERO, Duration::from_secs(2));
            let pause = if rng.unit() < 0.5 {
                Pause::UntilMoved
            } else {
                Pause::For(
                    rng.between(leases.ttl + Duration::from_millis(500), leases.ttl + Duration::from_millis(2500)),
                )
            };
            let outage = rng.between(leases.ttl + Duration::from_millis(500), leases.ttl + Duration::from_secs(3));
            let tag = (rng.next_u64() >> 48) as u16;
            let slow = rng.between(Duration::from_secs(3), Duration::from_secs(6));
            let hold = rng.between(leases.ttl + Duration::from_secs(2), leases.ttl + Duration::from_secs(5));
            plans.push(Plan { kind, settle, pause, outage, slow, hold, tag });
        }
    }
    plans.truncate(rounds);
    plans
}

/// What a round gives the summary.
struct RoundResult {
    kind: FaultKind,
    /// One-line description of the fault.
    what: String,
    times: Vec<Duration>,
    /// Affected rooms that were not writable again.
    not_recovered: usize,
    affected: usize,
    codes: BTreeMap<String, usize>,
    /// Failed connection attempts of the affected rooms' clients, by error.
    failed: BTreeMap<String, usize>,
    /// Drains and joins: hibernating clients disconnected, and hibernating clients of the
    /// rooms concerned.
    hibernating: Option<(usize, usize)>,
    drain_exits: Vec<Duration>,
    counts: Counts,
    /// Close reasons and error bodies clients received that are not documented texts, with how
    /// many times.
    texts: Vec<(String, usize)>,
    problems: Vec<String>,
    logs: Option<String>,
}

/// `chat-<tag>-<i>` and `count-<tag>-<i>`.
fn load_rooms(tag: u16, (chat, counters): (usize, usize)) -> Vec<RoomSpec> {
    (0..chat)
        .map(|i| RoomSpec::new(Kind::Chat, format!("chat-{tag:04x}-{i}")))
        .chain((0..counters).map(|i| RoomSpec::new(Kind::Counter, format!("count-{tag:04x}-{i}"))))
        .collect()
}

/// The prefix and subnet of the network namespaces of partition-reject rounds.
const NETNS: (&str, u8) = ("plchaos", 78);

async fn run_plan(p: Plan, rooms: (usize, usize), leases: LeaseTiming, transcript: Transcript) -> Outcome {
    let cluster = multi().durable_redis(true).lease_timing(leases);
    let setup = Setup::new(cluster, load_rooms(p.tag, rooms)).settle(p.settle).transcript(transcript);
    match p.kind {
        FaultKind::Sigkill => faults::sigkill(setup).await,
        FaultKind::Sigstop => faults::pause(setup, p.pause).await,
        FaultKind::CutHold => faults::cut_from_redis(setup, Mode::Hold).await,
        FaultKind::CutDrop => faults::cut_from_redis(setup, Mode::Drop).await,
        FaultKind::RedisRestart => faults::redis_restarts(setup, &[RedisFault::Restart]).await,
        FaultKind::RedisOutage => faults::redis_restarts(setup, &[RedisFault::Outage(p.outage)]).await,
        FaultKind::Sigterm => faults::drain(setup, true).await,
        FaultKind::Join => faults::join(setup).await,
        FaultKind::RollingRestart => faults::rolling_restart(setup).await,
        FaultKind::DrainRebalance => faults::drain_during_rebalance(setup).await,
        FaultKind::SlowSigterm => faults::slow_sigterm(setup, p.slow).await,
        FaultKind::MovedTwice => {
            // Whatever the load's rooms, a chat and a counter room that move to the joining node.
            let mut setup = setup;
            for kind in [Kind::Chat, Kind::Counter] {
                let prefix = format!("twice-{:04x}-{}", p.tag, kind.party());
                setup.rooms.extend(faults::rooms_for_a_join(kind, &prefix, 1, 0, 4));
            }
            faults::moved_twice(setup).await
        }
        FaultKind::ReplicaFailover => {
            // A Redis Cluster (3 primaries, two replicas each: the promoted one keeps one)
            // instead of one redis-server; every write waits for a replica, as a deployment that
            // fails over must.
            let cluster =
                multi().lease_timing(leases).redis_cluster_with_replicas(2).env("PARTYLINE_REDIS_MIN_REPLICAS", "1");
            faults::replica_failover(Setup { cluster, ..setup }).await
        }
        FaultKind::PartitionReject => {
            // Checked before the first round (the kind is left out where namespaces cannot be made).
            let net = tokio::task::spawn_blocking(|| Namespaces::create(NETNS.0, NETNS.1, 3))
                .await
                .expect("create the namespaces")
                .unwrap_or_else(|e| panic!("could not create the network namespaces: {e}"));
            let nodes = net.nodes.clone();
            let setup = Setup { cluster: setup.cluster.node_netns(nodes), ..setup };
            let outcome = faults::partition_reject(setup, &net, p.hold).await;
            // The namespaces go when the round's cluster has stopped (see `judge`).
            outcome.keep_until_dropped(net)
        }
    }
}

/// Judges an outcome: the scenario's problems, plus what the chaos run also counts as one
/// (hibernating clients disconnected by a drain or a rebalance, drained chat sockets closed
/// with another code than 1012). Keeps the logs if asked to or if there is a problem.
fn judge(mut o: Outcome, keep_logs: bool, transcript: &Transcript) -> RoundResult {
    let mut problems = o.run.problems().to_vec();
    if !o.wrong_closes.is_empty() {
        problems.push(format!("chat sockets not closed with 1012 by the drain: {:?}", o.wrong_closes));
    }
    let mut hibernating = None;
    if let Some(h) = &o.hibernating {
        let rooms = &o.hibernating_rooms;
        let clients = o.report.clients.iter().filter(|c| rooms.contains(&c.room)).count();
        hibernating = Some((h.len(), clients));
        if !h.is_empty() {
            let shown: Vec<String> = h
                .iter()
                .take(5)
                .map(|d| {
                    let at = d.end.at().saturating_duration_since(o.t_fault).as_secs_f64();
                    let how = match &d.end {
                        partyline_tests::load::End::Closed { code, reason, .. } => format!("closed {code} {reason:?}"),
                        partyline_tests::load::End::Dropped { error, .. } => format!("dropped: {error}"),
                        partyline_tests::load::End::Stopped { .. } => "stopped".into(),
                    };
                    format!("{} of {} {how} {at:.2}s after the fault", d.client, o.report.rooms[d.room].label())
                })
                .collect();
            problems.push(format!("{} hibernating clients were disconnected: {}", h.len(), shown.join("; ")));
        }
    }
    let keep = keep_logs || !problems.is_empty();
    o.run.cluster.keep_logs(keep);
    let logs = keep.then(|| save_transcript(transcript)).flatten();
    let times = o.sorted_times();
    RoundResult {
        kind: o.kind,
        what: o.what.clone(),
        not_recovered: o.times.iter().filter(|t| t.is_none()).count(),
        affected: o.affected.len(),
        times,
        codes: o.timeline.codes.clone(),
        failed: o.timeline.failed.clone(),
        hibernating,
        drain_exits: o.drain_exits.clone(),
        counts: o.run.counts(),
        texts: o.run.undocumented_texts().to_vec(),
        problems,
        logs,
    }
}

/// Writes the round's narration next to its logs; the directory.
fn save_transcript(transcript: &Transcript) -> Option<String> {
    let dir = transcript.log_dir()?;
    let mut text = transcript.lines().join("\n");
    text.push('\n');
    let _ = std::fs::write(dir.join("chaos-round.txt"), text);
    Some(dir.display().to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The `p`-th percentile (nearest rank) of sorted `v`.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn spread(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("min {} median {} max {}", secs(v[0]), secs(v[v.len() / 2]), secs(v[v.len() - 1]))
}

fn round_line(i: usize, rounds: usize, r: &RoundResult, took: Duration) -> String {
    let mut line =
        format!("round {:>w$}/{rounds} {:<16} {}", i + 1, r.kind.name(), r.what, w = rounds.to_string().len());
    let _ = write!(line, " | {} rooms, {} {}", r.affected, r.kind.measure().name(), spread(&r.times));
    if r.not_recovered > 0 {
        let _ = write!(line, " ({} not writable again)", r.not_recovered);
    }
    let _ = write!(line, " | disconnects {:?}", r.codes);
    if !r.failed.is_empty() {
        let _ = write!(line, " | failed connects {}", r.failed.values().sum::<usize>());
    }
    if let Some((n, of)) = r.hibernating {
        let _ = write!(line, " | hibernating clients disconnected {n} of {of}");
    }
    let _ = write!(line, " | {} acked", r.counts.acknowledged);
    let c = &r.counts;
    let _ = write!(
        line,
        ", lost {} phantom {} stale {} ran twice {}",
        c.lost, c.phantom, c.stale_or_reordered, c.ran_twice
    );
    if r.counts.undocumented_texts > 0 {
        let _ = write!(line, " | {} undocumented client texts", r.counts.undocumented_texts);
    }
    match r.problems.len() {
        0 => line.push_str(" | ok"),
        n => {
            let _ = write!(line, " | {n} PROBLEM(S)");
        }
    }
    let _ = write!(line, " ({:.0}s)", took.as_secs_f64());
    if let Some(dir) = &r.logs {
        let _ = write!(line, "\n    logs: {dir}");
    }
    for p in &r.problems {
        let _ = write!(line, "\n    - {p}");
    }
    line
}

/// A round that did not produce an outcome (it panicked or ran out of time).
fn failed_round(kind: FaultKind, why: String, transcript: &Transcript) -> RoundResult {
    let logs = save_transcript(transcript);
    RoundResult {
        kind,
        what: "(no outcome)".into(),
        times: Vec::new(),
        not_recovered: 0,
        affected: 0,
        codes: BTreeMap::new(),
        failed: BTreeMap::new(),
        hibernating: None,
        drain_exits: Vec::new(),
        counts: Counts::default(),
        texts: Vec::new(),
        problems: vec![why],
        logs,
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

fn summary(
    args: &Args,
    seed: u64,
    results: &[RoundResult],
    started: Instant,
    interrupted: bool,
    skipped: &[String],
) -> String {
    let mut out = String::new();
    let elapsed = started.elapsed().as_secs();
    let _ = writeln!(out, "\n==== chaos summary");
    let _ = writeln!(
        out,
        "rounds: {}{} in {}m{:02}s; seed {seed}; lease profile {} (repeat: scripts/chaos.sh --rounds {} --seed {seed} --profile {}{})",
        results.len(),
        if interrupted { format!(" of {} (interrupted)", args.rounds) } else { String::new() },
        elapsed / 60,
        elapsed % 60,
        args.profile.name(),
        args.rounds,
        args.profile.name(),
        if args.kinds.len() == FaultKind::ALL.len() {
            String::new()
        } else {
            format!(" --kinds {}", args.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","))
        }
    );
    for s in skipped {
        let _ = writeln!(out, "skipped: {s}");
    }
    let mut total = Counts::default();
    for r in results {
        total.add(&r.counts);
    }
    let mut per_kind: BTreeMap<FaultKind, Vec<&RoundResult>> = BTreeMap::new();
    for r in results {
        per_kind.entry(r.kind).or_default().push(r);
    }
    let faults: Vec<String> = per_kind.iter().map(|(k, rs)| format!("{} {}", k.name(), rs.len())).collect();
    let _ = writeln!(out, "faults: {}", faults.join(", "));
    let _ = writeln!(out, "acknowledged writes: {}", total.acknowledged);
    let _ = writeln!(out, "lost acknowledged writes: {}", total.lost);
    let _ = writeln!(out, "phantom writes (seen or stored, never sent or acknowledged): {}", total.phantom);
    let _ = writeln!(out, "stale or reordered (out of order, twice, older on reconnect): {}", total.stale_or_reordered);
    if total.malformed > 0 {
        let _ = writeln!(out, "malformed frames: {}", total.malformed);
    }
    let _ =
        writeln!(out, "stale lease epochs (an epoch went back or was reused by another owner): {}", total.stale_epochs);
    let _ = writeln!(out, "frames from fenced owners after their self-fence deadline: {}", total.zombie_frames);
    let _ = writeln!(
        out,
        "ran twice (a count committed by two instances of a room, or an instance acting after another's later commit): {}",
        total.ran_twice
    );
    let _ = writeln!(
        out,
        "undocumented client texts (close reasons and error bodies outside the documented set): {}",
        total.undocumented_texts
    );
    let mut texts: Vec<(&str, usize)> = Vec::new();
    for (text, n) in results.iter().flat_map(|r| r.texts.iter()) {
        match texts.iter_mut().find(|(t, _)| t == text) {
            Some((_, m)) => *m += n,
            None => texts.push((text, *n)),
        }
    }
    for (text, n) in texts {
        let _ = writeln!(out, "  {n} x {text}");
    }
    let hib: Vec<(usize, usize)> = results.iter().filter_map(|r| r.hibernating).collect();
    if !hib.is_empty() {
        let kinds: Vec<String> = per_kind
            .iter()
            .filter_map(|(k, rs)| {
                let h: Vec<(usize, usize)> = rs.iter().filter_map(|r| r.hibernating).collect();
                (!h.is_empty()).then(|| {
                    format!(
                        "{} {} of {}",
                        k.name(),
                        h.iter().map(|h| h.0).sum::<usize>(),
                        h.iter().map(|h| h.1).sum::<usize>()
                    )
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "hibernating clients disconnected by drains or joins: {} (of {} hibernating clients in the rooms concerned, over {} round(s): {})",
            hib.iter().map(|h| h.0).sum::<usize>(),
            hib.iter().map(|h| h.1).sum::<usize>(),
            hib.len(),
            kinds.join(", ")
        );
    }
    let exits: Vec<Duration> = {
        let mut v: Vec<Duration> = results.iter().flat_map(|r| r.drain_exits.iter().copied()).collect();
        v.sort();
        v
    };
    if !exits.is_empty() {
        let _ = writeln!(out, "drains, SIGTERM to exit: {}", spread(&exits));
    }
    let _ = writeln!(
        out,
        "\nper kind (failover: fault to the first acknowledged write made after it, per affected room; \
         stall: longest time without one; the issue's failover target, lease TTL + 1.5 s with the {} profile: {}):",
        args.profile.name(),
        secs(failover_target(args.profile.timing()))
    );
    let _ = writeln!(
        out,
        "  {:<16} {:>6} {:<8} {:>5} {:>7} {:>7} {:>7} {:>7}  disconnects of the affected rooms' clients",
        "kind", "rounds", "measure", "rooms", "min", "median", "p99", "max"
    );
    for (kind, rs) in &per_kind {
        let mut times: Vec<Duration> = rs.iter().flat_map(|r| r.times.iter().copied()).collect();
        times.sort();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for r in rs {
            for (c, n) in &r.codes {
                *codes.entry(c.clone()).or_default() += n;
            }
        }
        let not = rs.iter().map(|r| r.not_recovered).sum::<usize>();
        let cell = |d: Option<Duration>| d.map_or("-".to_string(), secs);
        let _ = writeln!(
            out,
            "  {:<16} {:>6} {:<8} {:>5} {:>7} {:>7} {:>7} {:>7}  {:?}{}",
            kind.name(),
            rs.len(),
            kind.measure().name(),
            times.len(),
            cell(times.first().copied()),
            cell((!times.is_empty()).then(|| times[times.len() / 2])),
            cell((!times.is_empty()).then(|| percentile(&times, 99.0))),
            cell(times.last().copied()),
            codes,
            if not > 0 { format!(" ({not} rooms not writable again)") } else { String::new() }
        );
    }
    let mut any_failed = false;
    for (kind, rs) in &per_kind {
        let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
        for (e, n) in rs.iter().flat_map(|r| r.failed.iter()) {
            *failed.entry(e.as_str()).or_default() += n;
        }
        if failed.is_empty() {
            continue;
        }
        if !any_failed {
            let _ = writeln!(out, "\nfailed connection attempts of the affected rooms' clients (reconnecting):");
            any_failed = true;
        }
        let _ = writeln!(out, "  {:<16} {failed:?}", kind.name());
    }
    let failed: Vec<(usize, &RoundResult)> =
        results.iter().enumerate().filter(|(_, r)| !r.problems.is_empty()).collect();
    if failed.is_empty() {
        let _ = writeln!(out, "\nproblems: none");
    } else {
        let _ = writeln!(out, "\nproblems: {} round(s) of {}", failed.len(), results.len());
        for (i, r) in failed {
            let _ = writeln!(out, "  round {} ({}, {}):", i + 1, r.kind.name(), r.what);
            for p in &r.problems {
                let _ = writeln!(out, "    - {p}");
            }
            if let Some(dir) = &r.logs {
                let _ = writeln!(out, "    logs: {dir}");
            }
        }
    }
    out
}

/// Checks what every round needs before starting any: the `partyline` binary and
/// redis-server.
fn preflight() -> Result<(), String> {
    let found = std::panic::catch_unwind(partyline_tests::procs::partyline_bin)
        .map_err(|p| p.downcast_ref::<String>().cloned().unwrap_or_else(|| "the partyline binary is missing".into()))?;
    let redis = std::process::Command::new("redis-server").arg("--version").output();
    if !redis.is_ok_and(|o| o.status.success()) {
        return Err("redis-server is not on PATH (Debian: apt-get install redis-server)".into());
    }
    println!("partyline binary: {}", found.display());
    Ok(())
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.kinds.is_empty() {
        args.kinds = FaultKind::ALL.to_vec();
    }
    args.kinds.dedup();
    if args.chat_rooms + args.counter_rooms == 0 {
        eprintln!("partyline-chaos: the load needs at least one room (--chat-rooms, --counter-rooms)");
        return ExitCode::from(2);
    }
    // Quiet panics' default report while checking the binary; the message is printed below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ready = preflight();
    std::panic::set_hook(hook);
    if let Err(e) = ready {
        eprintln!("partyline-chaos: {e}");
        return ExitCode::from(2);
    }
    // partition-reject needs network namespaces: without them it is left out, saying why.
    let mut skipped = Vec::new();
    if args.kinds.contains(&FaultKind::PartitionReject) {
        if let Err(why) = Namespaces::available() {
            skipped.push(format!("partition-reject (network namespaces unavailable: {why})"));
            args.kinds.retain(|k| *k != FaultKind::PartitionReject);
            if args.kinds.is_empty() {
                println!("partyline-chaos: skipped: {}; no other kind to run", skipped[0]);
                return ExitCode::SUCCESS;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("partyline-chaos: could not start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(chaos(args, skipped))
}

async fn chaos(args: Args, skipped: Vec<String>) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    let leases = args.profile.timing();
    let plans = plan(seed, args.rounds, &args.kinds, leases);
    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.name()).collect();
    println!(
        "chaos: {} rounds, seed {seed}, kinds {}; each round: redis (AOF) + 3 nodes + 2 gateways, {} chat + {} counter rooms x 3 clients; lease profile {} (TTL {}, renewed every {}, self-fence at {}; failover target {})",
        args.rounds,
        kinds.join(","),
        args.chat_rooms,
        args.counter_rooms,
        args.profile.name(),
        secs(leases.ttl),
        secs(leases.renew_every),
        secs(leases.fence_after),
        secs(failover_target(leases))
    );
    if args.kinds.contains(&FaultKind::ReplicaFailover) {
        println!("  (replica-failover rounds: a Redis Cluster of 3 primaries with 2 replicas each instead of the redis-server)");
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    let started = Instant::now();
    let mut results: Vec<RoundResult> = Vec::new();
    let mut interrupted = false;
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("partyline-chaos: cannot watch SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    for (i, p) in plans.iter().enumerate() {
        let transcript = Transcript::record();
        let t = Instant::now();
        let mut round = tokio::spawn(run_plan(*p, (args.chat_rooms, args.counter_rooms), leases, transcript.clone()));
        let limit = Duration::from_secs(args.round_timeout);
        let done = tokio::select! {
            done = tokio::time::timeout(limit, &mut round) => Some(done),
            _ = tokio::signal::ctrl_c() => None,
            _ = sigterm.recv() => None,
        };
        let result = match done {
            Some(Ok(Ok(outcome))) => judge(outcome, args.keep_logs, &transcript),
            Some(Ok(Err(e))) => failed_round(p.kind, format!("the round panicked: {}", panic_message(e)), &transcript),
            Some(Err(_)) => {
                round.abort();
                let _ = round.await; // its processes are killed as the cluster drops
                let why = format!("the round did not finish within {}s (stopped)", args.round_timeout);
                failed_round(p.kind, why, &transcript)
            }
            None => {
                interrupted = true;
                round.abort();
                let _ = round.await; // its processes are killed as the cluster drops
                eprintln!("\npartyline-chaos: interrupted in round {}; its processes were stopped", i + 1);
                if let Some(dir) = transcript.log_dir() {
                    if args.keep_logs {
                        save_transcript(&transcript);
                        eprintln!("partyline-chaos: its logs: {}", dir.display());
                    } else {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
                break;
            }
        };
        println!("{}", round_line(i, args.rounds, &result, t.elapsed()));
        results.push(result);
    }
    print!("{}", summary(&args, seed, &results, started, interrupted, &skipped));
    if interrupted {
        ExitCode::from(130)
    } else if results.iter().any(|r| !r.problems.is_empty() || r.counts.undocumented_texts > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_kind_per_block_and_repeat_with_the_seed() {
        let kinds = FaultKind::ALL.to_vec();
        let a = plan(7, 20, &kinds, LeaseTiming::FAST);
        assert_eq!(a.len(), 20);
        let first: std::collections::BTreeSet<FaultKind> = a[..kinds.len()].iter().map(|p| p.kind).collect();
        assert_eq!(first.len(), kinds.len(), "each kind once per block");
        let b = plan(7, 20, &kinds, LeaseTiming::FAST);
        assert_eq!(a.iter().map(|p| p.kind).collect::<Vec<_>>(), b.iter().map(|p| p.kind).collect::<Vec<_>>());
        assert_eq!(a.iter().map(|p| p.settle).collect::<Vec<_>>(), b.iter().map(|p| p.settle).collect::<Vec<_>>());
        assert_eq!(a.iter().map(|p| p.tag).collect::<Vec<_>>(), b.iter().map(|p| p.tag).collect::<Vec<_>>());
        assert_ne!(a[0].tag, a[1].tag, "each round has its own rooms");
        let c = plan(8, 20, &kinds, LeaseTiming::FAST);
        assert_ne!(a.iter().map(|p| p.kind).collect::<Vec<_>>(), c.iter().map(|p| p.kind).collect::<Vec<_>>());
        for p in &a {
            assert!(p.outage > LeaseTiming::FAST.ttl, "an outage outlasts the leases");
            if let Pause::For(d) = p.pause {
                assert!(d > LeaseTiming::FAST.ttl, "a pause outlasts the lease");
            }
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v[..3], 99.0), Duration::from_millis(3));
    }
}
