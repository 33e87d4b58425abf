//! Fault scenarios on a [`ProcCluster`] under [`Load`] (issue 7), shared by the fault tests
//! (`tests/tests/failover.rs`) and the chaos runner (`partyline-chaos`, `scripts/chaos.sh`).
//!
//! A [`Run`] is a cluster of processes, a load of chat (`main`) and hibernating `counter` rooms,
//! a lease sampler, and the problems found so far. Each scenario starts a run, causes one kind
//! of fault to the busiest owner (or to Redis), waits for the cluster to recover, stops the
//! load, checks it against storage read straight from Redis and against the lease log
//! ([`crate::checks`]), and returns an [`Outcome`]: what was measured, and the run, not yet
//! judged. A test calls [`Outcome::verdict`], which panics listing every problem (and the
//! cluster prints its logs as it drops); the chaos runner reads the figures and the problems.
//!
//! | scenario | fault |
//! |---|---|
//! | [`sigkill`] | SIGKILL of the busiest owner, then it restarts with the same id and port |
//! | [`pause`] | SIGSTOP of the busiest owner past its lease, then SIGCONT |
//! | [`cut_from_redis`] | the busiest owner's Redis proxy holds or resets its traffic past its lease, then passes again |
//! | [`redis_restarts`] | Redis (with AOF) killed and started again, at once or after an outage past the leases |
//! | [`drain`] | SIGTERM of the busiest owner (a graceful drain), optionally then a restart |
//! | [`join`] | one more node joins and takes over its share of the shards |
//!
//! What every scenario records as a problem: a room that is not writable again within
//! [`RECOVERY_TIMEOUT`], a process that exited when it should not have, and everything
//! [`checks::check`] and [`checks::check_epochs`] find (among them close reasons and error
//! bodies clients received that are not documented texts, issue 22). Paused and cut-off owners also must not
//! deliver frames after their self-fence deadline ([`zombie_frames`]) nor be taken over before
//! their leases can have expired ([`no_early_takeover`]); a drained node must exit, successfully,
//! within [`DRAIN_BOUND`]; a joining node must take its share. What depends on the caller (which
//! close codes a drain may use, whether a hibernating client may be disconnected) is measured in
//! the outcome ([`Outcome::wrong_closes`], [`Outcome::hibernating`]) and judged by the caller.
//!
//! Tests assert behaviour, not speed: times are measured and printed, never asserted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partyline::runtime::placement::{preferred, shard_of};
use partyline::RoomKey;

use crate::checks::{self, Category, EpochWatch, LeaseSample};
use crate::load::{Disconnect, Kind, Load, LoadConfig, LoadReport, RoomSpec};
use crate::procs::{ProcCluster, ProcClusterBuilder};
use crate::proxy::Mode;
use partyline_node::shards::LeaseTiming;

/// A frame the zombie relayed just before its self-fence deadline still has to cross the
/// gateway: frames received this long after the deadline are not blamed on it.
pub const DELIVERY_SLACK: Duration = Duration::from_millis(500);

/// How long affected rooms may take to become writable again before a run calls them lost
/// (generous; the target is the lease TTL + 1.5 s, printed next to each figure).
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The failover target with the fast profile: lease TTL + 1.5 s.
pub const FAILOVER_TARGET: Duration = Duration::from_millis(4500);

/// The failover target with a lease timing: lease TTL + 1.5 s.
pub fn failover_target(timing: LeaseTiming) -> Duration {
    timing.ttl + Duration::from_millis(1500)
}

/// A SIGTERMed node must exit within its drain bound (issue: 10 s by default) plus slack for a
/// busy machine.
pub const DRAIN_BOUND: Duration = Duration::from_secs(15);

/// Where a run's narration goes: printed as it happens (the tests), or recorded for the caller
/// (the chaos runner prints one line per round and writes the rest next to the round's logs).
#[derive(Clone, Default)]
pub struct Transcript(Option<Arc<Mutex<Recorded>>>);

#[derive(Default)]
struct Recorded {
    lines: Vec<String>,
    log_dir: Option<PathBuf>,
}

impl Transcript {
    /// Narration printed on stdout as it happens.
    pub fn print() -> Self {
        Transcript(None)
    }

    /// Narration recorded; read it with [`Transcript::lines`].
    pub fn record() -> Self {
        Transcript(Some(Arc::default()))
    }

    /// Prints or records one line.
    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        match &self.0 {
            None => println!("{line}"),
            Some(r) => r.lock().unwrap().lines.push(line),
        }
    }

    /// The lines recorded so far (none when printing).
    pub fn lines(&self) -> Vec<String> {
        self.0.as_ref().map(|r| r.lock().unwrap().lines.clone()).unwrap_or_default()
    }

    /// The log directory of the run's cluster, once it started (recorded transcripts only).
    pub fn log_dir(&self) -> Option<PathBuf> {
        self.0.as_ref().and_then(|r| r.lock().unwrap().log_dir.clone())
    }

    fn set_log_dir(&self, dir: PathBuf) {
        if let Some(r) = &self.0 {
            r.lock().unwrap().log_dir = Some(dir);
        }
    }

    fn records(&self) -> bool {
        self.0.is_some()
    }
}

/// What a run starts with.
#[derive(Clone)]
pub struct Setup {
    /// The cluster.
    pub cluster: ProcClusterBuilder,
    /// The load's rooms.
    pub rooms: Vec<RoomSpec>,
    /// Time between the warm-up and the fault (default none), so that faults hit the load at
    /// different moments.
    pub settle: Duration,
    /// Where the narration goes (default: printed).
    pub transcript: Transcript,
}

impl Setup {
    /// `cluster` under a load of `rooms`, narration printed.
    pub fn new(cluster: ProcClusterBuilder, rooms: Vec<RoomSpec>) -> Self {
        Setup { cluster, rooms, settle: Duration::ZERO, transcript: Transcript::print() }
    }

    /// Waits `d` after the warm-up before the fault.
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = d;
        self
    }

    /// Sends the narration to `t`. A recording transcript also keeps the cluster's logs when the
    /// run is dropped (see [`ProcCluster::keep_logs`]); the caller decides once it is judged.
    pub fn transcript(mut self, t: Transcript) -> Self {
        self.transcript = t;
        self
    }
}

/// Counts of what the checks found, for a summary (the problems themselves are in
/// [`Run::problems`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Writes clients saw acknowledged (chat: a client saw its own message come back; counter:
    /// a count seen broadcast).
    pub acknowledged: u64,
    /// Acknowledged writes not in storage (chat messages; counter increments).
    pub lost: u64,
    /// Broadcasts or stored entries that no acknowledged write explains (chat entries; counter
    /// increments beyond those sent).
    pub phantom: u64,
    /// Broadcasts out of storage order or twice, stale histories or counts on reconnect, entries
    /// stored twice.
    pub stale_or_reordered: u64,
    /// Frames that are neither a history nor a count where one was expected.
    pub malformed: u64,
    /// Lease epochs that went back, or were held by two owners.
    pub stale_epochs: u64,
    /// Frames delivered by a fenced owner after its self-fence deadline.
    pub zombie_frames: u64,
    /// Close reasons and HTTP error bodies clients received that are not documented texts
    /// (each time one was received).
    pub undocumented_texts: u64,
    /// Times a room ran twice: a count committed by two instances, an instance committing
    /// after another's commits began, a frame from an instance after another's later commit
    /// (see [`crate::checks`]).
    pub ran_twice: u64,
}

impl Counts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counts) {
        self.acknowledged += other.acknowledged;
        self.lost += other.lost;
        self.phantom += other.phantom;
        self.stale_or_reordered += other.stale_or_reordered;
        self.malformed += other.malformed;
        self.stale_epochs += other.stale_epochs;
        self.zombie_frames += other.zombie_frames;
        self.undocumented_texts += other.undocumented_texts;
        self.ran_twice += other.ran_twice;
    }
}

/// A fault-test run: the cluster, the load, the lease sampler, and the problems found so far.
pub struct Run {
    /// The cluster.
    pub cluster: ProcCluster,
    /// The load's rooms.
    pub rooms: Vec<RoomSpec>,
    /// The load; taken by [`Run::stop`].
    load: Option<Load>,
    /// The lease sampler; taken by [`Run::stop`].
    epochs: Option<EpochWatch>,
    /// What the lease sampler saw, once stopped.
    leases: Vec<LeaseSample>,
    problems: Vec<String>,
    counts: Counts,
    /// The undocumented client texts found, with how many times (all rooms).
    texts: Vec<(String, usize)>,
    transcript: Transcript,
}

impl Run {
    /// Starts the cluster and a load of the setup's rooms, waits until every room has
    /// acknowledged writes, then waits the setup's `settle` time.
    pub async fn start(setup: Setup) -> Run {
        let Setup { cluster, rooms, settle, transcript } = setup;
        let mut cluster = cluster.start().await;
        if transcript.records() {
            transcript.set_log_dir(cluster.log_dir());
            cluster.keep_logs(true);
        }
        let mut cfg = LoadConfig::new(cluster.gateway_addrs());
        cfg.rooms = rooms;
        let load = Load::start(cfg);
        let epochs = EpochWatch::start(cluster.redis().clone(), load.rooms());
        load.warm_up(10, Duration::from_secs(30)).await;
        tokio::time::sleep(settle).await;
        Run {
            cluster,
            rooms: load.rooms().to_vec(),
            load: Some(load),
            epochs: Some(epochs),
            leases: Vec::new(),
            problems: Vec::new(),
            counts: Counts::default(),
            texts: Vec::new(),
            transcript,
        }
    }

    /// The nodes' lease timing.
    pub fn timing(&self) -> LeaseTiming {
        self.cluster.lease_timing()
    }

    /// The running load.
    pub fn load(&self) -> &Load {
        self.load.as_ref().expect("the load is running")
    }

    /// Prints (or records) a line of narration.
    pub fn say(&self, line: impl Into<String>) {
        self.transcript.say(line);
    }

    /// Records a problem.
    pub fn problem(&mut self, p: String) {
        self.say(format!("PROBLEM: {p}"));
        self.problems.push(p);
    }

    /// The problems found so far.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// What the checks counted (once stopped).
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The close reasons and error bodies clients received that are not documented texts, each
    /// (as [`crate::client_texts`] describes it, with the code or status) with how many times
    /// (once stopped).
    pub fn undocumented_texts(&self) -> &[(String, usize)] {
        &self.texts
    }

    /// The lease changes seen on the load's shards (once stopped).
    pub fn leases(&self) -> &[LeaseSample] {
        &self.leases
    }

    /// The rooms among `rooms` of `kind`.
    pub fn kinds(&self, rooms: &[usize], kind: Kind) -> Vec<usize> {
        rooms.iter().copied().filter(|&r| self.rooms[r].kind == kind).collect()
    }

    /// `party/room` of each of `rooms`.
    pub fn labels(&self, rooms: &[usize]) -> Vec<String> {
        rooms.iter().map(|&r| self.rooms[r].label()).collect()
    }

    /// Every room of the load.
    pub fn all(&self) -> Vec<usize> {
        (0..self.rooms.len()).collect()
    }

    /// The lease holder of every load room.
    pub async fn owners(&self) -> Vec<Option<String>> {
        let keys: Vec<RoomKey> = self.rooms.iter().map(RoomSpec::key).collect();
        self.cluster.owners(&keys).await
    }

    /// The node owning the most load rooms, and those rooms.
    pub async fn busiest_node(&self) -> (usize, Vec<usize>) {
        let owners = self.owners().await;
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (r, owner) in owners.iter().enumerate() {
            if let Some(o) = owner {
                by_node.entry(o.clone()).or_default().push(r);
            }
        }
        let (id, rooms) = by_node.into_iter().max_by_key(|(_, rooms)| rooms.len()).expect("some room is owned");
        let i = self.cluster.node_index(&id).unwrap_or_else(|| panic!("{id} is not a node of this cluster"));
        self.say(format!("victim: {id} owns {} of {} rooms: {:?}", rooms.len(), self.rooms.len(), self.labels(&rooms)));
        (i, rooms)
    }

    /// Waits until each of `rooms` has `n` acknowledged writes after `t`; prints the time to the
    /// first of them per room (the failover time when `t` is a fault) and records the rooms that
    /// did not recover as problems.
    pub async fn recover(&mut self, what: &str, rooms: &[usize], t: Instant, n: usize) -> Vec<Duration> {
        let got = self.load().wait_acks_after(rooms, t, n, RECOVERY_TIMEOUT).await;
        let mut times = Vec::new();
        let mut lost = Vec::new();
        let mut each = Vec::new();
        for (&r, g) in rooms.iter().zip(&got) {
            match (g, self.load().nth_ack_after(r, t, 1)) {
                (Some(_), Some(first)) => {
                    times.push(first.duration_since(t));
                    each.push(format!("{} {:.2}s", self.rooms[r].name, first.duration_since(t).as_secs_f64()));
                }
                _ => lost.push(self.rooms[r].label()),
            }
        }
        if !times.is_empty() {
            let mut sorted = times.clone();
            sorted.sort();
            self.say(format!(
                "{what}: {} rooms; to the first acknowledged write made after it: min {:.2}s median {:.2}s max {:.2}s",
                sorted.len(),
                sorted[0].as_secs_f64(),
                sorted[sorted.len() / 2].as_secs_f64(),
                sorted[sorted.len() - 1].as_secs_f64(),
            ));
            self.say(format!("  per room: {}", each.join(", ")));
        }
        if !lost.is_empty() {
            self.problem(format!("{what}: not writable again within {RECOVERY_TIMEOUT:?}: {lost:?}"));
        }
        times
    }

    /// Waits until node `i` is a live member again after `t` (its heartbeat runs: it is awake
    /// and reaches Redis); a problem if not within [`RECOVERY_TIMEOUT`].
    pub async fn rejoin(&mut self, i: usize, t: Instant) {
        let id = self.cluster.node(i).name().to_string();
        let deadline = t + RECOVERY_TIMEOUT;
        loop {
            if self.cluster.members().await.iter().any(|m| m.id == id) {
                self.say(format!("{id} is a member again {:.2}s later", t.elapsed().as_secs_f64()));
                return;
            }
            if Instant::now() >= deadline {
                return self.problem(format!("{id} did not come back as a member within {RECOVERY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records a problem for every node or gateway that is not running, but `except`.
    pub fn expect_running(&mut self, when: &str, except: Option<usize>) {
        let excepted = except.map(|i| format!("{} exited", self.cluster.node(i).name()));
        for dead in self.cluster.dead_processes() {
            if excepted.as_ref().is_none_or(|e| !dead.starts_with(e.as_str())) {
                self.problem(format!("{when}: {dead}"));
            }
        }
    }

    /// Records a problem for every node or gateway that is not running.
    pub fn expect_all_running(&mut self, when: &str) {
        self.expect_running(when, None);
    }

    /// Stops the load, checks it against storage and the lease log, and returns the report.
    pub async fn stop(&mut self) -> LoadReport {
        let report = self.load.take().expect("the load is running").stop().await;
        let storage = checks::read_storage(self.cluster.redis(), &report.rooms).await;
        self.say(report.summary());
        self.counts.acknowledged = report.acknowledged() as u64;
        let mut instances = Vec::new();
        for r in report.rooms_of(Kind::Counter) {
            let frames = checks::inst_frames(&report, r);
            let mut insts: Vec<&str> = frames.iter().filter(|f| f.commit).map(|f| f.inst.as_str()).collect();
            insts.dedup();
            insts.sort_unstable();
            insts.dedup();
            instances.push(format!("{} {}", report.rooms[r].name, insts.len()));
        }
        if !instances.is_empty() {
            self.say(format!("instances seen committing, per counter room: {}", instances.join(", ")));
        }
        let findings = checks::findings(&report, &storage);
        self.judge(&report, findings);
        self.leases = self.epochs.take().expect("the lease sampler is running").stop();
        self.say(format!("lease changes seen on the load's shards: {}", self.leases.len()));
        let epochs = checks::check_epochs(&self.leases);
        self.counts.stale_epochs = epochs.len() as u64;
        for p in epochs {
            self.problem(p);
        }
        report
    }

    /// Counts `findings` and records them as problems.
    fn judge(&mut self, report: &LoadReport, findings: Vec<checks::Finding>) {
        for f in &findings {
            let n = match f.category {
                Category::Lost => &mut self.counts.lost,
                Category::Phantom => &mut self.counts.phantom,
                Category::StaleOrReordered => &mut self.counts.stale_or_reordered,
                Category::Malformed => &mut self.counts.malformed,
                Category::UndocumentedText => &mut self.counts.undocumented_texts,
                Category::RanTwice => &mut self.counts.ran_twice,
            };
            *n += f.writes;
        }
        for r in 0..report.rooms.len() {
            for (text, n) in report.undocumented_texts(r) {
                match self.texts.iter_mut().find(|(t, _)| *t == text) {
                    Some((_, m)) => *m += n,
                    None => self.texts.push((text, n)),
                }
            }
        }
        for p in checks::group(report, findings) {
            self.problem(p);
        }
    }

    /// Stops the load without checking it against storage (for a Redis that lost its data,
    /// where storage is wrong on purpose); what clients read in close reasons and error bodies
    /// is still checked (a problem if not a documented text).
    pub async fn load_stop_without_checks(&mut self) -> LoadReport {
        let report = self.load.take().expect("the load is running").stop().await;
        let findings = checks::text_findings(&report);
        self.judge(&report, findings);
        report
    }

    /// Prints what the clients of `rooms` went through after `t` (see [`Timeline`]) and returns
    /// it.
    pub fn timeline(&self, report: &LoadReport, rooms: &[usize], t: Instant) -> Timeline {
        let timeline = Timeline::of(report, rooms, t);
        self.say(timeline.to_string());
        timeline
    }

    /// Fails the test if any problem was found (the cluster prints its logs as it drops).
    pub fn verdict(self) {
        let Run { cluster, problems, .. } = self;
        if !problems.is_empty() {
            let list = problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n");
            let _cluster = cluster; // dropped while panicking: prints every log
            panic!("{} problem(s):\n{list}", problems.len());
        }
    }
}

/// What the clients of some rooms went through after a time `t`.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Disconnects by close code (`"dropped"`: no close frame).
    pub codes: BTreeMap<String, usize>,
    /// When the first and the last disconnect happened, after `t`.
    pub disconnected: Option<(Duration, Duration)>,
    /// Connection attempts that failed after `t`, by error (`HTTP error: 503 Service
    /// Unavailable`, `not open within 4s`, ...).
    pub failed: BTreeMap<String, usize>,
    /// When the first and the last client connected again after `t` (the first session each
    /// client opened after `t`).
    pub reconnected: Option<(Duration, Duration)>,
}

impl Timeline {
    /// What the clients of `rooms` went through after `t`, up to the end of the run.
    pub fn of(report: &LoadReport, rooms: &[usize], t: Instant) -> Timeline {
        let since = |i: Instant| i.saturating_duration_since(t);
        let disconnects = report.disconnects(rooms, t, report.ended);
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for d in &disconnects {
            *codes.entry(d.end.code().map_or("dropped".to_string(), |c| c.to_string())).or_default() += 1;
        }
        let clients = report.clients.iter().filter(|c| rooms.contains(&c.room));
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        for (_, error) in clients.clone().flat_map(|c| c.connect_failures.iter().filter(|(at, _)| *at > t)) {
            *failed.entry(error.clone()).or_default() += 1;
        }
        let reopened: Vec<Instant> =
            clients.filter_map(|c| c.sessions.iter().map(|s| s.opened).find(|&o| o > t)).collect();
        Timeline {
            codes,
            disconnected: disconnects
                .first()
                .zip(disconnects.last())
                .map(|(a, b)| (since(a.end.at()), since(b.end.at()))),
            failed,
            reconnected: reopened.iter().min().zip(reopened.iter().max()).map(|(&a, &b)| (since(a), since(b))),
        }
    }

    /// Disconnects in all.
    pub fn disconnects(&self) -> usize {
        self.codes.values().sum()
    }

    /// Failed connection attempts in all.
    pub fn failed_connects(&self) -> usize {
        self.failed.values().sum()
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let span = |s: Option<(Duration, Duration)>| match s {
            Some((a, b)) => format!("from {:.2}s to {:.2}s", a.as_secs_f64(), b.as_secs_f64()),
            None => "from - to -".to_string(),
        };
        write!(
            f,
            "clients of the affected rooms: {} disconnects {:?} {}; {} failed connection attempts {:?}; reconnected {}",
            self.disconnects(),
            self.codes,
            span(self.disconnected),
            self.failed_connects(),
            self.failed,
            span(self.reconnected)
        )
    }
}

/// A node that is paused or cut off is alive: no other node may take its rooms before its
/// leases can have expired (its last renewal was sent at most one renewal period before the
/// fault). Records a problem for every shard of `rooms` seen with another owner earlier.
pub fn no_early_takeover(run: &mut Run, victim: usize, rooms: &[usize], t_fault: Instant) {
    let victim_id = run.cluster.node(victim).name().to_string();
    let leases = run.timing();
    let not_before = t_fault + leases.ttl - leases.renew_every;
    let shards: Vec<u16> = rooms.iter().map(|&r| shard_of(&run.rooms[r].key())).collect();
    let early: Vec<String> = run
        .leases
        .iter()
        .filter(|s| s.at > t_fault && s.at < not_before && s.owner != victim_id && shards.contains(&s.shard))
        .map(|s| {
            format!(
                "shard {} to {} {:.2}s after the fault",
                s.shard,
                s.owner,
                s.at.duration_since(t_fault).as_secs_f64()
            )
        })
        .collect();
    if !early.is_empty() {
        run.problem(format!(
            "the live (paused or cut off) {victim_id} was taken over before its leases could expire ({:.1}s): {early:?}",
            (leases.ttl - leases.renew_every).as_secs_f64()
        ));
    }
}

/// Data frames received on sessions opened before `t_fault` in the chat rooms among `rooms`
/// after `deadline` + [`DELIVERY_SLACK`] (frames a fenced owner should not have delivered):
/// how many, and a problem describing them; `None` when there are none.
pub fn zombie_frames(
    report: &LoadReport,
    rooms: &[usize],
    t_fault: Instant,
    deadline: Instant,
) -> Option<(usize, String)> {
    let chat: Vec<usize> = rooms.iter().copied().filter(|&r| report.rooms[r].kind == Kind::Chat).collect();
    let late = report.frames_on_old_sessions(&chat, t_fault, deadline + DELIVERY_SLACK);
    if late.is_empty() {
        return None;
    }
    let shown: Vec<String> = late
        .iter()
        .take(5)
        .map(|(c, at, text)| {
            let sent = report.sent_at(text).map_or(String::new(), |s| format!(", sent at {}", report.secs(s)));
            format!("{c} got {text:?} at {}{sent}", report.secs(*at))
        })
        .collect();
    Some((
        late.len(),
        format!(
            "{} frame(s) reached clients of the fenced owner after its self-fence deadline ({} + slack; the fault at {}): {}",
            late.len(),
            report.secs(deadline),
            report.secs(t_fault),
            shown.join("; ")
        ),
    ))
}

/// Records the zombie frames of `rooms` (see [`zombie_frames`]) as a problem.
fn check_zombie(run: &mut Run, report: &LoadReport, rooms: &[usize], t_fault: Instant, deadline: Instant) {
    if let Some((n, p)) = zombie_frames(report, rooms, t_fault, deadline) {
        run.counts.zombie_frames += n as u64;
        run.problem(p);
    }
}

/// `chat` chat rooms and `counters` counter rooms.
pub fn mixed_rooms(chat: usize, counters: usize) -> Vec<RoomSpec> {
    (0..chat)
        .map(|i| RoomSpec::new(Kind::Chat, format!("chat-{i}")))
        .chain((0..counters).map(|i| RoomSpec::new(Kind::Counter, format!("count-{i}"))))
        .collect()
}

/// Three nodes, two gateways.
pub fn multi() -> ProcClusterBuilder {
    ProcCluster::builder().nodes(3).gateways(2)
}

/// What an outcome's times measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// From the fault (or Redis back, after an outage) to the first acknowledged write made
    /// after it, per affected room.
    Failover,
    /// The longest time an affected room went without an acknowledged write, from the fault
    /// until it was writable again (drains, joins: rooms move while they keep serving).
    Stall,
}

impl Measure {
    /// Its name in a summary.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Failover => "failover",
            Measure::Stall => "stall",
        }
    }
}

/// The kinds of fault, as the chaos runner names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// [`sigkill`].
    Sigkill,
    /// [`pause`].
    Sigstop,
    /// [`cut_from_redis`] with [`Mode::Hold`].
    CutHold,
    /// [`cut_from_redis`] with [`Mode::Drop`].
    CutDrop,
    /// [`redis_restarts`] with [`RedisFault::Restart`].
    RedisRestart,
    /// [`redis_restarts`] with [`RedisFault::Outage`].
    RedisOutage,
    /// [`drain`], then a restart.
    Sigterm,
    /// [`join`].
    Join,
    /// [`rolling_restart`].
    RollingRestart,
    /// [`drain_during_rebalance`].
    DrainRebalance,
    /// [`slow_sigterm`].
    SlowSigterm,
    /// [`partition_reject`].
    PartitionReject,
    /// [`moved_twice`].
    MovedTwice,
    /// [`replica_failover`].
    ReplicaFailover,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Sigkill,
        FaultKind::Sigstop,
        FaultKind::CutHold,
        FaultKind::CutDrop,
        FaultKind::RedisRestart,
        FaultKind::RedisOutage,
        FaultKind::Sigterm,
        FaultKind::Join,
        FaultKind::RollingRestart,
        FaultKind::DrainRebalance,
        FaultKind::SlowSigterm,
        FaultKind::PartitionReject,
        FaultKind::MovedTwice,
        FaultKind::ReplicaFailover,
    ];

    /// Its name (`sigkill`, `cut-hold`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Sigkill => "sigkill",
            FaultKind::Sigstop => "sigstop",
            FaultKind::CutHold => "cut-hold",
            FaultKind::CutDrop => "cut-drop",
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RedisOutage => "redis-outage",
            FaultKind::Sigterm => "sigterm",
            FaultKind::Join => "join",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::DrainRebalance => "drain-rebalance",
            FaultKind::SlowSigterm => "slow-sigterm",
            FaultKind::PartitionReject => "partition-reject",
            FaultKind::MovedTwice => "moved-twice",
            FaultKind::ReplicaFailover => "replica-failover",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What it does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::Sigkill => "SIGKILL of the busiest owner, then a restart",
            FaultKind::Sigstop => "SIGSTOP of the busiest owner past its lease, then SIGCONT",
            FaultKind::CutHold => "the busiest owner cut from Redis (traffic held) past its lease, then healed",
            FaultKind::CutDrop => "the busiest owner cut from Redis (connections reset) past its lease, then healed",
            FaultKind::RedisRestart => "Redis (AOF, fsync always) killed and restarted at once",
            FaultKind::RedisOutage => "Redis (AOF) down past the leases, then back",
            FaultKind::Sigterm => "SIGTERM (drain) of the busiest owner, then a restart",
            FaultKind::Join => "a node joins and takes its share of the shards",
            FaultKind::RollingRestart => "every node in turn: SIGTERM, gone, restarted, serving again",
            FaultKind::DrainRebalance => "a node restarts, and another is SIGTERMed while shards move back to it",
            FaultKind::SlowSigterm => "SIGTERM of the owner of a room whose handler is busy for seconds",
            FaultKind::PartitionReject => "node-to-node TCP rejected (reset) between two live nodes, then healed",
            FaultKind::MovedTwice => "a node joins and is drained as soon as rooms move to it",
            FaultKind::ReplicaFailover => "a Redis Cluster primary killed, its replica promoted",
        }
    }

    /// What its outcome's times measure.
    pub fn measure(self) -> Measure {
        match self {
            FaultKind::Sigterm
            | FaultKind::Join
            | FaultKind::RollingRestart
            | FaultKind::DrainRebalance
            | FaultKind::SlowSigterm
            | FaultKind::PartitionReject
            | FaultKind::MovedTwice => Measure::Stall,
            _ => Measure::Failover,
        }
    }
}

/// What a scenario measured, and its run, not yet judged.
pub struct Outcome {
    /// The run: the cluster still runs; [`Run::problems`] holds what the scenario found.
    pub run: Run,
    /// The load's record.
    pub report: LoadReport,
    /// The fault.
    pub kind: FaultKind,
    /// The node the fault hit, if one.
    pub victim: Option<String>,
    /// The fault, in a few words with its parameters (e.g. the pause).
    pub what: String,
    /// The rooms it affected (indexes into `run.rooms`): the victim's, or every room when Redis
    /// failed, or the rooms that moved to a joining node.
    pub affected: Vec<usize>,
    /// When the fault happened.
    pub t_fault: Instant,
    /// Per affected room, the time the kind measures (see [`FaultKind::measure`]); `None` for a
    /// room that was not writable again.
    pub times: Vec<Option<Duration>>,
    /// What the clients of the affected rooms went through after the fault.
    pub timeline: Timeline,
    /// Drains and joins: disconnects of hibernating (counter) clients after the fault.
    pub hibernating: Option<Vec<Disconnect>>,
    /// Drains and joins: the hibernating (counter) rooms whose clients [`Outcome::hibernating`]
    /// covers.
    pub hibernating_rooms: Vec<usize>,
    /// Drains: chat sockets the drain closed with another code than 1012 (client and how it
    /// ended).
    pub wrong_closes: Vec<String>,
    /// Drains: from SIGTERM to the node's exit, if it exited by itself.
    pub drain_exit: Option<Duration>,
    /// Every drain of the scenario: from SIGTERM to the node's exit (those that exited by
    /// themselves).
    pub drain_exits: Vec<Duration>,
    /// Something to drop after the run (its processes killed): e.g. the network namespaces the
    /// nodes ran in. Fields drop in order: this one last.
    keep: Option<Box<dyn std::any::Any + Send>>,
}

impl Outcome {
    fn new(
        run: Run,
        report: LoadReport,
        kind: FaultKind,
        what: String,
        affected: Vec<usize>,
        t_fault: Instant,
    ) -> Self {
        let timeline = run.timeline(&report, &affected, t_fault);
        Outcome {
            run,
            report,
            kind,
            victim: None,
            what,
            affected,
            t_fault,
            times: Vec::new(),
            timeline,
            hibernating: None,
            hibernating_rooms: Vec::new(),
            wrong_closes: Vec::new(),
            drain_exit: None,
            drain_exits: Vec::new(),
            keep: None,
        }
    }

    /// Keeps `x` until the outcome is dropped, after its run (whose processes are killed then).
    pub fn keep_until_dropped(mut self, x: impl std::any::Any + Send) -> Self {
        self.keep = Some(Box::new(x));
        self
    }

    fn victim(mut self, id: String) -> Self {
        self.victim = Some(id);
        self
    }

    /// Sets the times to each affected room's failover from `from`: the first acknowledged
    /// write made after `from`.
    fn failover_from(mut self, from: Instant) -> Self {
        self.times = self.affected.iter().map(|&r| self.report.first_ack_after(r, from).map(|a| a - from)).collect();
        self
    }

    /// The times measured, sorted (rooms that did not recover left out).
    pub fn sorted_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.times.iter().flatten().copied().collect();
        t.sort();
        t
    }

    /// Fails the test if any problem was found (the cluster prints its logs as it drops).
    pub fn verdict(self) {
        self.run.verdict();
    }
}

/// SIGKILLs the busiest owner under load: its rooms must be writable again on other nodes,
/// and no longer leased to it; then it restarts (same id and port) and every room must take
/// writes again.
pub async fn sigkill(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let t = Instant::now();
    run.cluster.node_mut(victim).sigkill();
    let status = run.cluster.node_mut(victim).wait_exit(Duration::from_secs(10)).await;
    if status.is_none() {
        run.problem(format!("a SIGKILLed process must be gone: {victim_id} still ran 10 s after SIGKILL"));
    }
    run.recover("SIGKILL of the owner", &rooms, t, 1).await;
    run.say(format!(
        "(the issue's failover target, lease TTL + 1.5 s: {:.1}s)",
        failover_target(run.timing()).as_secs_f64()
    ));
    let owners = run.owners().await;
    let still: Vec<String> = rooms
        .iter()
        .filter(|&&r| owners[r].as_deref() == Some(victim_id.as_str()))
        .map(|&r| run.rooms[r].label())
        .collect();
    if !still.is_empty() {
        run.problem(format!("rooms still leased to the killed {victim_id}: {still:?}"));
    }

    // The killed node comes back with the same id and port, and the cluster keeps working.
    run.cluster.restart_node(victim).await;
    let back = Instant::now();
    let all = run.all();
    run.recover("after the killed node restarted", &all, back, 10).await;
    let report = run.stop().await;
    run.expect_all_running("at the end");
    let what = format!("SIGKILL {victim_id}, restarted after {:.1}s", back.duration_since(t).as_secs_f64());
    Outcome::new(run, report, FaultKind::Sigkill, what, rooms, t).victim(victim_id).failover_from(t)
}

/// How long [`pause`] keeps the owner stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Until its rooms are served by other nodes, and past its lease for certain.
    UntilMoved,
    /// This long.
    For(Duration),
}

/// Pauses the busiest owner (SIGSTOP) for `pause`, resumes it (SIGCONT), and checks that it
/// delivered nothing after its self-fence deadline, that nothing it did while fenced reached
/// storage or clients, that it was not taken over early, and that it comes back as a member.
pub async fn pause(setup: Setup, pause: Pause) -> Outcome {
    let mut run = Run::start(setup).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let t_stop = Instant::now();
    run.cluster.node(victim).sigstop();
    // Its last successful renewal was sent before the stop: its self-fence deadline is no later.
    let leases = run.timing();
    let deadline = t_stop + leases.fence_after;
    match pause {
        Pause::For(p) => tokio::time::sleep(p).await,
        Pause::UntilMoved => {
            run.recover("while the owner is paused", &rooms, t_stop, 1).await;
            // Paused past its lease for certain, even if failover was quicker.
            let past_lease = t_stop + leases.ttl + Duration::from_secs(1);
            tokio::time::sleep(past_lease.saturating_duration_since(Instant::now())).await;
        }
    }
    let t_cont = Instant::now();
    run.cluster.node(victim).sigcont();
    let paused = t_cont.duration_since(t_stop);
    run.say(format!("paused {:.2}s", paused.as_secs_f64()));
    // The zombie's timers run again (its heartbeat re-registers it) while the load goes on:
    // every room keeps taking writes.
    run.rejoin(victim, t_cont).await;
    let awake = Instant::now();
    let all = run.all();
    run.recover("with the resumed node awake", &all, awake, 10).await;
    run.expect_all_running("after SIGCONT");
    let report = run.stop().await;
    check_zombie(&mut run, &report, &rooms, t_stop, deadline);
    no_early_takeover(&mut run, victim, &rooms, t_stop);
    let what = format!("SIGSTOP {victim_id} for {:.1}s, then SIGCONT", paused.as_secs_f64());
    Outcome::new(run, report, FaultKind::Sigstop, what, rooms, t_stop).victim(victim_id).failover_from(t_stop)
}

/// Cuts the busiest owner from Redis with its proxy in `mode` until its rooms are served by
/// other nodes and past its lease, heals the cut, and checks that the fenced node delivered
/// nothing after its deadline, that none of its writes landed, that it was not taken over
/// early, and that it comes back as a member without crashing.
pub async fn cut_from_redis(setup: Setup, mode: Mode) -> Outcome {
    let mut run = Run::start(setup).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let t_cut = Instant::now();
    run.cluster.redis_proxy(victim).set_mode(mode);
    let leases = run.timing();
    let deadline = t_cut + leases.fence_after;
    run.recover(&format!("owner cut from Redis ({mode:?})"), &rooms, t_cut, 1).await;
    let past_lease = t_cut + leases.ttl + Duration::from_secs(1);
    tokio::time::sleep(past_lease.saturating_duration_since(Instant::now())).await;
    let t_heal = Instant::now();
    run.cluster.redis_proxy(victim).pass();
    let cut = t_heal.duration_since(t_cut);
    run.say(format!("cut {:.2}s", cut.as_secs_f64()));

    run.rejoin(victim, t_heal).await;
    let back = Instant::now();
    let all = run.all();
    run.recover("with the healed node back", &all, back, 10).await;
    run.expect_all_running("after the cut");
    let report = run.stop().await;
    check_zombie(&mut run, &report, &rooms, t_cut, deadline);
    no_early_takeover(&mut run, victim, &rooms, t_cut);
    let (kind, how) = match mode {
        Mode::Drop => (FaultKind::CutDrop, "connections reset"),
        _ => (FaultKind::CutHold, "traffic held"),
    };
    let what = format!("{victim_id} cut from Redis ({how}) for {:.1}s", cut.as_secs_f64());
    Outcome::new(run, report, kind, what, rooms, t_cut).victim(victim_id).failover_from(t_cut)
}

/// One Redis fault of [`redis_restarts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisFault {
    /// Killed (SIGKILL) and started again at once.
    Restart,
    /// Killed, and started again after this long (past the leases: every node loses them).
    Outage(Duration),
}

/// Kills Redis (built durable: AOF with `appendfsync always`) once per fault in `faults`, in
/// order, and after each checks that every room takes writes again and that no process
/// crashed. Every room is affected; the times are those of the last fault: from the kill
/// (restart) or from Redis back (outage) to each room's first acknowledged write after it.
pub async fn redis_restarts(setup: Setup, faults: &[RedisFault]) -> Outcome {
    let mut run = Run::start(setup).await;
    let all = run.all();
    let mut first = None;
    let mut measured_from = Instant::now();
    let mut what = Vec::new();
    for fault in faults {
        let t = Instant::now();
        first.get_or_insert(t);
        match *fault {
            RedisFault::Restart => {
                // A crash and an immediate restart.
                run.cluster.restart_redis().await;
                let took = t.elapsed();
                run.say(format!("redis restarted in {:.2}s", took.as_secs_f64()));
                run.recover("after a Redis restart", &all, t, 10).await;
                run.expect_all_running("after a Redis restart");
                measured_from = t;
                what.push(format!("Redis restarted in {:.1}s", took.as_secs_f64()));
            }
            RedisFault::Outage(down) => {
                // An outage: past the self-fence deadline, every node loses its leases.
                run.cluster.stop_redis().await;
                tokio::time::sleep(down).await;
                run.cluster.restart_redis().await;
                let t2 = Instant::now();
                run.recover("after a Redis outage past the lease", &all, t2, 10).await;
                run.expect_all_running("after a Redis outage");
                measured_from = t2;
                what.push(format!("Redis down {:.1}s", t2.duration_since(t).as_secs_f64()));
            }
        }
    }
    let report = run.stop().await;
    let kind = match faults.last() {
        Some(RedisFault::Outage(_)) => FaultKind::RedisOutage,
        _ => FaultKind::RedisRestart,
    };
    let t = first.unwrap_or(measured_from);
    Outcome::new(run, report, kind, what.join(", then "), all, t).failover_from(measured_from)
}

/// SIGTERMs the busiest owner under load: it must exit (successfully) within [`DRAIN_BOUND`],
/// and its rooms must be writable again after it exited. Prints when its membership record
/// said `draining` and when it was gone, and how long each room went without an acknowledged
/// write (the drain stall: the outcome's times). With `restart`, the node then starts again
/// (a rolling restart of one node) and every room must take writes again, also after it took
/// its share back.
///
/// The outcome's [`Outcome::wrong_closes`] (chat sockets not closed with 1012) and
/// [`Outcome::hibernating`] (counter clients disconnected) cover the drained node's rooms from
/// SIGTERM to the end of the run.
pub async fn drain(setup: Setup, restart: bool) -> Outcome {
    let mut run = Run::start(setup).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let membership = run.cluster.redis().membership();
    let t = Instant::now();
    run.cluster.node(victim).sigterm();
    let watched = victim_id.clone();
    let watch = tokio::spawn(async move {
        let (mut draining, mut gone) = (None, None);
        while gone.is_none() {
            if let Ok(live) = membership.live().await {
                match live.iter().find(|m| m.id == watched) {
                    Some(m) if m.draining => draining = draining.or(Some(t.elapsed())),
                    Some(_) => {}
                    None => gone = Some(t.elapsed()),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (draining, gone)
    });
    let mut what = format!("SIGTERM {victim_id}");
    let mut drain_exit = None;
    match run.cluster.node_mut(victim).wait_exit(DRAIN_BOUND).await {
        Some(status) => {
            let took = t.elapsed();
            drain_exit = Some(took);
            run.say(format!("drain: SIGTERM -> exit {:.2}s ({status})", took.as_secs_f64()));
            let _ = write!(what, ", exit after {:.2}s", took.as_secs_f64());
            if !status.success() {
                run.problem(format!("the drained node exited with {status}"));
            }
        }
        None => {
            run.problem(format!("the node did not exit within {DRAIN_BOUND:?} of SIGTERM (it was SIGKILLed then)"));
            run.cluster.node_mut(victim).sigkill();
            run.cluster.node_mut(victim).wait_exit(Duration::from_secs(10)).await;
        }
    }
    let exited = Instant::now();
    run.recover("after the drained node exited", &rooms, exited, 1).await;
    match tokio::time::timeout(Duration::from_secs(10), watch).await {
        Ok(Ok((draining, gone))) => {
            let show = |d: Option<Duration>| d.map_or("never seen".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
            run.say(format!("drain: membership said draining at {}, record gone at {}", show(draining), show(gone)));
        }
        _ => run.say("drain: the membership record outlived the node by 10 s"),
    }
    if restart {
        run.cluster.restart_node(victim).await;
        let back = Instant::now();
        let _ = write!(what, ", restarted");
        let all = run.all();
        run.recover("after the drained node restarted", &all, back, 10).await;
        // It takes its share back (rebalancing, bounded per interval) while the load goes on.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = Instant::now();
        run.recover("after it took its share back", &all, later, 10).await;
    }
    let report = run.stop().await;
    let mut stalls: Vec<Duration> = rooms
        .iter()
        .map(|&r| {
            let until = report.first_ack_after(r, exited).unwrap_or(report.ended);
            report.longest_ack_gap(r, t, until)
        })
        .collect();
    let times = stalls.iter().map(|&s| Some(s)).collect();
    stalls.sort();
    if let (Some(min), Some(max)) = (stalls.first(), stalls.last()) {
        run.say(format!(
            "drain stall (longest time without an acknowledged write, SIGTERM to the first write after the exit): min {:.2}s median {:.2}s max {:.2}s",
            min.as_secs_f64(),
            stalls[stalls.len() / 2].as_secs_f64(),
            max.as_secs_f64()
        ));
    }
    if restart {
        run.expect_all_running("after the drain and the restart");
    } else {
        run.expect_running("after the drain", Some(victim));
    }
    let chat = run.kinds(&rooms, Kind::Chat);
    let counter = run.kinds(&rooms, Kind::Counter);
    // Sockets of non-hibernating rooms are closed with 1012 so that clients reconnect at once.
    let wrong_closes = report
        .disconnects(&chat, t, report.ended)
        .into_iter()
        .filter(|d| d.end.code() != Some(1012))
        .map(|d| format!("{} {:?}", d.client, d.end))
        .collect();
    let hibernating = report.disconnects(&counter, t, report.ended);
    run.say(format!("hibernating (counter) clients disconnected after SIGTERM: {}", hibernating.len()));
    let mut outcome = Outcome::new(run, report, FaultKind::Sigterm, what, rooms, t).victim(victim_id);
    outcome.times = times;
    outcome.wrong_closes = wrong_closes;
    outcome.hibernating = Some(hibernating);
    outcome.hibernating_rooms = counter;
    outcome.drain_exit = drain_exit;
    outcome.drain_exits = drain_exit.into_iter().collect();
    outcome
}

/// Whether `room` prefers the node `id` when the nodes `ids` are live.
pub fn prefers(room: &RoomSpec, ids: &[&str], id: &str) -> bool {
    preferred(shard_of(&room.key()), ids.iter().copied()) == Some(id)
}

/// The ids of a cluster of `n` nodes: `node-1` ... `node-<n>`.
pub fn node_ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("node-{i}")).collect()
}

/// Rooms named `<prefix>-<i>` of `kind` of which `moving` prefer `node-<nodes>` (the last to
/// join) among `nodes` nodes and `staying` prefer another.
pub fn rooms_for_a_join(kind: Kind, prefix: &str, moving: usize, staying: usize, nodes: usize) -> Vec<RoomSpec> {
    let ids = node_ids(nodes);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let new = ids[nodes - 1];
    let (mut to_new, mut others) = (Vec::new(), Vec::new());
    for i in 0.. {
        let room = RoomSpec::new(kind, format!("{prefix}-{i}"));
        match prefers(&room, &ids, new) {
            true if to_new.len() < moving => to_new.push(room),
            false if others.len() < staying => others.push(room),
            _ => {}
        }
        if to_new.len() == moving && others.len() == staying {
            break;
        }
    }
    to_new.into_iter().chain(others).collect()
}

/// Adds a node to the setup's cluster under load and waits for it to take the rooms it is
/// preferred for (a problem if not within [`RECOVERY_TIMEOUT`]); every room must keep taking
/// writes meanwhile and after. The affected rooms are those that should move; the times are
/// their stalls (longest time without an acknowledged write from the join until the rebalance
/// is done); [`Outcome::hibernating`] holds the disconnects of every counter room's clients
/// after the join.
pub async fn join(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let t = Instant::now();
    let new = run.cluster.add_node().await;
    let new_id = run.cluster.node(new).name().to_string();
    run.say(format!("{new_id} joined after {:.2}s", t.elapsed().as_secs_f64()));
    let all = run.all();
    run.recover("while a node joins", &all, t, 10).await;
    let ids: Vec<String> = run.cluster.nodes().iter().map(|n| n.name().to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let expected: Vec<usize> = all.iter().copied().filter(|&r| prefers(&run.rooms[r], &ids, &new_id)).collect();
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let taken = loop {
        let owners = run.owners().await;
        let taken: Vec<usize> =
            expected.iter().copied().filter(|&r| owners[r].as_deref() == Some(new_id.as_str())).collect();
        if taken.len() == expected.len() || Instant::now() >= deadline {
            break taken;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    run.say(format!("rebalance: {new_id} took {} of the {} rooms it is preferred for", taken.len(), expected.len()));
    if taken.len() < expected.len() {
        let missing: Vec<usize> = expected.iter().copied().filter(|r| !taken.contains(r)).collect();
        run.problem(format!(
            "{new_id} did not take its share within {RECOVERY_TIMEOUT:?} of joining: not moved: {:?}",
            run.labels(&missing)
        ));
    }
    let after = Instant::now();
    run.recover("after the rebalance", &all, after, 10).await;
    let done = Instant::now();
    let report = run.stop().await;
    let counter = report.rooms_of(Kind::Counter);
    let hibernating = report.disconnects(&counter, t, report.ended);
    run.say(format!("hibernating (counter) clients disconnected after the join: {}", hibernating.len()));
    run.expect_all_running("after the join");
    let what = format!("{new_id} joined, took {} of {} rooms", taken.len(), expected.len());
    let times = expected.iter().map(|&r| Some(report.longest_ack_gap(r, t, done))).collect();
    let mut outcome = Outcome::new(run, report, FaultKind::Join, what, expected, t).victim(new_id);
    outcome.times = times;
    outcome.hibernating = Some(hibernating);
    outcome.hibernating_rooms = counter;
    outcome
}

/// SIGTERMs node `i` and waits until it is gone: exited (a problem if not successfully, or not
/// within [`DRAIN_BOUND`]: then it is SIGKILLed) and its membership record removed (said if it
/// outlives the process by 10 s). Returns the time from SIGTERM to the exit, if it exited by
/// itself.
pub async fn drain_until_gone(run: &mut Run, i: usize) -> Option<Duration> {
    let id = run.cluster.node(i).name().to_string();
    let t = Instant::now();
    run.cluster.node(i).sigterm();
    let exit = match run.cluster.node_mut(i).wait_exit(DRAIN_BOUND).await {
        Some(status) => {
            let took = t.elapsed();
            run.say(format!("drain of {id}: SIGTERM -> exit {:.2}s ({status})", took.as_secs_f64()));
            if !status.success() {
                run.problem(format!("the drained {id} exited with {status}"));
            }
            Some(took)
        }
        None => {
            run.problem(format!("{id} did not exit within {DRAIN_BOUND:?} of SIGTERM (it was SIGKILLed then)"));
            run.cluster.node_mut(i).sigkill();
            run.cluster.node_mut(i).wait_exit(Duration::from_secs(10)).await;
            None
        }
    };
    let gone_by = Instant::now() + Duration::from_secs(10);
    loop {
        if !run.cluster.members().await.iter().any(|m| m.id == id) {
            run.say(format!("{id} is gone from the membership {:.2}s after SIGTERM", t.elapsed().as_secs_f64()));
            break;
        }
        if Instant::now() >= gone_by {
            run.say(format!("{id}: its membership record outlived the process by 10 s"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exit
}

/// The load rooms that prefer node `id` among the running nodes.
fn preferred_rooms(run: &mut Run, id: &str) -> Vec<usize> {
    let mut ids = Vec::new();
    for k in 0..run.cluster.nodes().len() {
        if run.cluster.node_mut(k).is_running() {
            ids.push(run.cluster.node(k).name().to_string());
        }
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    run.all().into_iter().filter(|&r| prefers(&run.rooms[r], &ids, id)).collect()
}

/// Waits until node `i` owns every load room it is preferred for among the running nodes (it
/// serves its share again); a problem if not within [`RECOVERY_TIMEOUT`]. Returns those rooms.
pub async fn wait_share(run: &mut Run, i: usize) -> Vec<usize> {
    let id = run.cluster.node(i).name().to_string();
    let expected = preferred_rooms(run, &id);
    let t = Instant::now();
    let deadline = t + RECOVERY_TIMEOUT;
    loop {
        let owners = run.owners().await;
        let missing: Vec<usize> =
            expected.iter().copied().filter(|&r| owners[r].as_deref() != Some(id.as_str())).collect();
        if missing.is_empty() {
            run.say(format!(
                "{id} serves its {} load rooms again {:.2}s later",
                expected.len(),
                t.elapsed().as_secs_f64()
            ));
            return expected;
        }
        if Instant::now() >= deadline {
            run.problem(format!(
                "{id} did not take its share back within {RECOVERY_TIMEOUT:?}: not moved: {:?}",
                run.labels(&missing)
            ));
            return expected;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `n` of `rooms` (at most all of them) are owned by node `id` (or `timeout`
/// passes); how many of them it owns then. It polls every 2 ms, so that a fault that follows
/// hits the rooms just arrived (a new owner still gathering the sockets handed over).
async fn moved_to(run: &Run, rooms: &[usize], id: &str, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let owners = run.owners().await;
        let moved = rooms.iter().filter(|&&r| owners[r].as_deref() == Some(id)).count();
        if moved >= n.min(rooms.len()) || Instant::now() >= deadline {
            return moved;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An outcome of a scenario that moves rooms (drains, joins): the times are the affected
/// rooms' stalls (longest time without an acknowledged write from `t` to `done`); chat sockets
/// closed with another code than 1012 and hibernating clients disconnected are counted over the
/// affected rooms from `t` to the end of the run.
#[allow(clippy::too_many_arguments)]
fn move_outcome(
    run: Run,
    report: LoadReport,
    kind: FaultKind,
    what: String,
    affected: Vec<usize>,
    t: Instant,
    done: Instant,
    exits: Vec<Duration>,
) -> Outcome {
    let mut stalls: Vec<Duration> = affected.iter().map(|&r| report.longest_ack_gap(r, t, done)).collect();
    let times = stalls.iter().map(|&s| Some(s)).collect();
    stalls.sort();
    if let (Some(min), Some(max)) = (stalls.first(), stalls.last()) {
        run.say(format!(
            "stall (longest time without an acknowledged write): min {:.2}s median {:.2}s max {:.2}s",
            min.as_secs_f64(),
            stalls[stalls.len() / 2].as_secs_f64(),
            max.as_secs_f64()
        ));
    }
    let chat = run.kinds(&affected, Kind::Chat);
    let counter = run.kinds(&affected, Kind::Counter);
    let wrong_closes = report
        .disconnects(&chat, t, report.ended)
        .into_iter()
        .filter(|d| d.end.code() != Some(1012))
        .map(|d| format!("{} {:?}", d.client, d.end))
        .collect();
    let hibernating = report.disconnects(&counter, t, report.ended);
    run.say(format!("hibernating (counter) clients disconnected: {}", hibernating.len()));
    let mut outcome = Outcome::new(run, report, kind, what, affected, t);
    outcome.times = times;
    outcome.wrong_closes = wrong_closes;
    outcome.hibernating = Some(hibernating);
    outcome.hibernating_rooms = counter;
    outcome.drain_exit = exits.iter().max().copied();
    outcome.drain_exits = exits;
    outcome
}

/// A rolling restart under load, as Kubernetes does one: for every node in turn, SIGTERM, wait
/// until it is gone (exited, its membership record removed), restart it (same id and port),
/// wait until it serves again (it owns every load room it is preferred for), then the next.
/// Every room is affected; the times are the stalls over the whole restart.
pub async fn rolling_restart(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let all = run.all();
    let t = Instant::now();
    let mut exits = Vec::new();
    for i in 0..run.cluster.nodes().len() {
        let id = run.cluster.node(i).name().to_string();
        let t_i = Instant::now();
        exits.extend(drain_until_gone(&mut run, i).await);
        run.cluster.restart_node(i).await;
        run.say(format!("{id} restarted and registered {:.2}s after SIGTERM", t_i.elapsed().as_secs_f64()));
        wait_share(&mut run, i).await;
        run.recover(&format!("after {id} was back"), &all, Instant::now(), 3).await;
    }
    let done = Instant::now();
    let took = done.duration_since(t);
    run.recover("after the rolling restart", &all, done, 10).await;
    run.expect_all_running("after the rolling restart");
    let report = run.stop().await;
    let longest = exits.iter().max().map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
    let what = format!(
        "{} nodes restarted in turn in {:.1}s (longest drain {longest})",
        run.cluster.nodes().len(),
        took.as_secs_f64()
    );
    move_outcome(run, report, FaultKind::RollingRestart, what, all, t, done, exits)
}

/// A drain during a rebalance: the busiest owner drains and restarts, so shards rebalance back
/// to it; as soon as the first load room has moved back (the batch is moving), another node is
/// SIGTERMed: the one that held most of the rooms moving back. Then it restarts too, and both
/// must serve their share again. Every room is affected; the times are the stalls from the
/// restart of the first node on.
pub async fn drain_during_rebalance(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let all = run.all();
    let (a, _) = run.busiest_node().await;
    let a_id = run.cluster.node(a).name().to_string();
    let mut exits = Vec::new();
    exits.extend(drain_until_gone(&mut run, a).await);
    run.recover(&format!("with {a_id} gone"), &all, Instant::now(), 3).await;
    // The rooms that will move back to it, and who holds them now.
    let ids: Vec<String> = run.cluster.nodes().iter().map(|n| n.name().to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let back: Vec<usize> = all.iter().copied().filter(|&r| prefers(&run.rooms[r], &ids, &a_id)).collect();
    let owners = run.owners().await;
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    for &r in &back {
        if let Some(o) = &owners[r] {
            *holders.entry(o.clone()).or_default() += 1;
        }
    }
    let b = holders
        .iter()
        .max_by_key(|(_, n)| **n)
        .and_then(|(id, _)| run.cluster.node_index(id))
        .unwrap_or((a + 1) % run.cluster.nodes().len());
    let b_id = run.cluster.node(b).name().to_string();
    let t = Instant::now();
    run.cluster.restart_node(a).await;
    let registered = t.elapsed();
    let moved = moved_to(&run, &back, &a_id, 1, Duration::from_secs(5)).await;
    let t_term = Instant::now();
    run.say(format!(
        "{a_id} registered {:.2}s after its restart; {moved} of {} rooms moved back to it {:.2}s after; SIGTERM {b_id} (held {} of them)",
        registered.as_secs_f64(),
        back.len(),
        t_term.duration_since(t).as_secs_f64(),
        holders.get(&b_id).copied().unwrap_or(0)
    ));
    exits.extend(drain_until_gone(&mut run, b).await);
    run.recover(&format!("after {b_id} drained during the rebalance"), &all, Instant::now(), 3).await;
    wait_share(&mut run, a).await;
    run.cluster.restart_node(b).await;
    wait_share(&mut run, b).await;
    wait_share(&mut run, a).await;
    let done = Instant::now();
    run.recover("after both were back", &all, done, 10).await;
    run.expect_all_running("after the drain during a rebalance");
    let report = run.stop().await;
    let what =
        format!("{a_id} drained and restarted, {b_id} SIGTERMed with {moved} of {} rooms moved back", back.len());
    move_outcome(run, report, FaultKind::DrainRebalance, what, all, t, done, exits)
}

/// A room moved twice in quick succession: a fourth node joins, and as soon as the load rooms
/// it is preferred for have moved to it, it is drained (SIGTERM): they move back. The affected rooms are
/// those the joining node is preferred for; the times are their stalls from the join to the
/// end of the drain.
pub async fn moved_twice(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let all = run.all();
    let t = Instant::now();
    let new = run.cluster.add_node().await;
    let new_id = run.cluster.node(new).name().to_string();
    let expected = preferred_rooms(&mut run, &new_id);
    let moved = moved_to(&run, &expected, &new_id, expected.len(), Duration::from_secs(10)).await;
    run.say(format!(
        "{new_id} joined; {moved} of the {} rooms it is preferred for had moved to it {:.2}s after the join; SIGTERM it",
        expected.len(),
        t.elapsed().as_secs_f64()
    ));
    let exits: Vec<Duration> = drain_until_gone(&mut run, new).await.into_iter().collect();
    let done = Instant::now();
    run.recover("after the joining node drained", &all, done, 10).await;
    run.expect_running("after the join and the drain", Some(new));
    let report = run.stop().await;
    let what = format!("{new_id} joined and was drained with {moved} of {} rooms moved to it", expected.len());
    move_outcome(run, report, FaultKind::MovedTwice, what, expected, t, done, exits)
}

/// A WebSocket client of one room beside the load, recording the frames it receives.
struct SideClient {
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<Vec<(Instant, String)>>,
}

impl SideClient {
    async fn connect(url: String) -> Result<SideClient, String> {
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| format!("{url}: not open within 10 s"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            use futures::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message as WsMessage;
            let mut ws = ws;
            let mut frames = Vec::new();
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(WsMessage::Text(t))) => frames.push((Instant::now(), t.to_string())),
                        Some(Ok(WsMessage::Close(f))) => {
                            frames.push((Instant::now(), format!("<closed {:?}>", f.map(|f| (u16::from(f.code), f.reason.to_string())))));
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => { frames.push((Instant::now(), format!("<dropped: {e}>"))); break; }
                        None => { frames.push((Instant::now(), "<dropped>".into())); break; }
                    },
                    out = rx.recv() => match out {
                        Some(text) => { if ws.send(WsMessage::text(text)).await.is_err() { break; } }
                        None => { let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await; break; }
                    },
                }
            }
            frames
        });
        Ok(SideClient { tx, task })
    }

    fn send(&self, text: &str) {
        let _ = self.tx.send(text.to_string());
    }

    async fn close(self) -> Vec<(Instant, String)> {
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(5), self.task).await.ok().and_then(Result::ok).unwrap_or_default()
    }
}

/// SIGTERM of the owner of a room whose handler is busy: a client beside the load sends `slow
/// <ms>` (the counter party sleeps that long, then answers it `{"slow", "count", "inst"}`) to a
/// counter room of the load, and its owner is SIGTERMed while the handler sleeps, with the
/// room's `inc`s queued behind it. The drain must still end within its bound, the room be
/// writable again, its hibernating clients stay connected, and the room not run twice: the
/// answer, if it comes, must not follow a commit of the room's next instance (see
/// [`checks::ran_twice`]). The affected rooms are the owner's; the times are their stalls.
pub async fn slow_sigterm(setup: Setup, slow: Duration) -> Outcome {
    let mut run = Run::start(setup).await;
    let counters = run.kinds(&run.all(), Kind::Counter);
    let owners = run.owners().await;
    // The owner of the first owned counter room is the victim (else the busiest node).
    let slow_room = counters.iter().copied().find(|&r| owners[r].is_some());
    let (victim, rooms) = match slow_room.and_then(|r| owners[r].as_deref()).and_then(|o| run.cluster.node_index(o)) {
        Some(v) => {
            let id = run.cluster.node(v).name().to_string();
            let rooms: Vec<usize> =
                run.all().into_iter().filter(|&r| owners[r].as_deref() == Some(id.as_str())).collect();
            run.say(format!(
                "victim: {id} owns {} of {} rooms: {:?}",
                rooms.len(),
                run.rooms.len(),
                run.labels(&rooms)
            ));
            (v, rooms)
        }
        None => run.busiest_node().await,
    };
    let victim_id = run.cluster.node(victim).name().to_string();
    let mut answer = None;
    let mut side = None;
    if let Some(r) = slow_room {
        let gateway = run.cluster.gateway_addrs()[0];
        let url = format!("ws://{gateway}/parties/counter/{}?_pk=slow-client", run.rooms[r].name);
        match SideClient::connect(url).await {
            Ok(c) => {
                c.send(&format!("slow {}", slow.as_millis()));
                side = Some((r, c));
            }
            Err(e) => run.problem(format!("the slow client could not connect: {e}")),
        }
        // The handler is asleep by then.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        run.say("no counter room in the load: SIGTERM without a busy handler");
    }
    let t = Instant::now();
    let exits: Vec<Duration> = drain_until_gone(&mut run, victim).await.into_iter().collect();
    run.recover("after the drained node exited", &rooms, Instant::now(), 1).await;
    run.cluster.restart_node(victim).await;
    let all = run.all();
    wait_share(&mut run, victim).await;
    let done = Instant::now();
    run.recover("after the drained node restarted", &all, done, 10).await;
    run.expect_all_running("after the slow drain and the restart");
    let side_frames = match side {
        Some((r, c)) => {
            let frames = c.close().await;
            Some((r, frames))
        }
        None => None,
    };
    let report = run.stop().await;
    if let Some((r, frames)) = side_frames {
        let extra: Vec<checks::InstFrame> = frames
            .iter()
            .filter_map(|(at, text)| {
                let count = crate::load::count_of(text)?;
                let inst = crate::load::inst_of(text)?;
                Some(checks::InstFrame {
                    at: *at,
                    client: "slow-client".into(),
                    inst,
                    count,
                    commit: !text.contains("\"slow\""),
                })
            })
            .collect();
        answer = frames.iter().find(|(_, text)| text.contains("\"slow\"")).map(|(at, text)| (*at, text.clone()));
        match &answer {
            Some((at, text)) => run.say(format!(
                "the slow handler answered {:.2}s after SIGTERM: {text}",
                at.saturating_duration_since(t).as_secs_f64()
            )),
            None => run.say(format!(
                "the slow handler never answered; the slow client's last frames: {:?}",
                frames.iter().rev().take(3).map(|(_, t)| t.as_str()).collect::<Vec<_>>()
            )),
        }
        let without: Vec<String> = checks::ran_twice(&report, r, &[]).into_iter().map(|f| f.detail).collect();
        let new: Vec<checks::Finding> =
            checks::ran_twice(&report, r, &extra).into_iter().filter(|f| !without.contains(&f.detail)).collect();
        if !new.is_empty() {
            run.counts.ran_twice += new.len() as u64;
            for p in checks::group(&report, new) {
                run.problem(p);
            }
        }
    }
    let replied = match &answer {
        Some((at, _)) => format!("answered {:.1}s after SIGTERM", at.saturating_duration_since(t).as_secs_f64()),
        None => "never answered".into(),
    };
    let what = format!(
        "SIGTERM {victim_id} with a {:.1}s handler running in {} ({replied}), exit after {}",
        slow.as_secs_f64(),
        slow_room.map_or("no room".to_string(), |r| run.rooms[r].label()),
        exits.first().map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()))
    );
    move_outcome(run, report, FaultKind::SlowSigterm, what, rooms, t, done, exits)
}

/// A REJECT partition between two live nodes under load: the setup's nodes run in the network
/// namespaces `net` (see [`crate::netns`]), and every TCP connection between the busiest owner
/// and another node is refused (reset) for `hold`, while both still reach Redis and the
/// gateways; then the rules are removed. Both nodes are alive and renew their leases: no lease
/// of a load room may change hands meanwhile (a refused port is no proof that its node is
/// gone), and every room must keep taking writes. The affected rooms are the two nodes'; the
/// times are their stalls from the partition to its end.
pub async fn partition_reject(setup: Setup, net: &crate::netns::Namespaces, hold: Duration) -> Outcome {
    let mut run = Run::start(setup).await;
    let (a, rooms_a) = run.busiest_node().await;
    let n = run.cluster.nodes().len();
    let owners = run.owners().await;
    // The other node: the one owning the most load rooms after `a`.
    let b = (0..n)
        .filter(|&k| k != a)
        .max_by_key(|&k| owners.iter().filter(|o| o.as_deref() == Some(run.cluster.node(k).name())).count())
        .expect("a second node");
    let (a_id, b_id) = (run.cluster.node(a).name().to_string(), run.cluster.node(b).name().to_string());
    let mut affected = rooms_a.clone();
    affected.extend(run.all().into_iter().filter(|&r| owners[r].as_deref() == Some(b_id.as_str())));
    affected.sort_unstable();
    let all = run.all();
    let before = run.owners().await;
    let t = Instant::now();
    if let Err(e) = net.reject_between(a, b) {
        run.problem(format!("could not set up the partition: {e}"));
    }
    match net.probe(a, run.cluster.node(b).addr()) {
        Err(e) if e.contains("refused") => {}
        other => run.problem(format!("{a_id}'s connections to {b_id} must be refused: {other:?}")),
    }
    run.say(format!("REJECT partition between {a_id} and {b_id} for {:.1}s", hold.as_secs_f64()));
    // Under load for `hold`: every room keeps taking writes.
    tokio::time::sleep(hold / 2).await;
    run.recover("during the partition", &all, Instant::now(), 3).await;
    let left = (t + hold).saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    let during = run.owners().await;
    let healed = Instant::now();
    if let Err(e) = net.heal() {
        run.problem(format!("could not heal the partition: {e}"));
    }
    run.say(format!("healed after {:.2}s", healed.duration_since(t).as_secs_f64()));
    let done = Instant::now();
    run.recover("after the partition healed", &all, done, 10).await;
    run.expect_all_running("after the partition");
    let report = run.stop().await;
    let moved: Vec<String> = all
        .iter()
        .filter(|&&r| before[r] != during[r])
        .map(|&r| format!("{}: {:?} -> {:?}", run.rooms[r].label(), before[r], during[r]))
        .collect();
    let changes: Vec<String> = run
        .leases
        .iter()
        .filter(|s| s.at > t && s.at <= healed)
        .map(|s| {
            format!(
                "shard {} to {} (epoch {}) {:.2}s in",
                s.shard,
                s.owner,
                s.epoch,
                s.at.duration_since(t).as_secs_f64()
            )
        })
        .collect();
    if !moved.is_empty() || !changes.is_empty() {
        run.problem(format!(
            "leases changed hands during a REJECT partition between live nodes: {moved:?}; lease log: {changes:?}"
        ));
    }
    let what = format!("{a_id} and {b_id} partitioned (REJECT) for {:.1}s", healed.duration_since(t).as_secs_f64());
    let stalls: Vec<Option<Duration>> = affected.iter().map(|&r| Some(report.longest_ack_gap(r, t, done))).collect();
    let mut outcome = Outcome::new(run, report, FaultKind::PartitionReject, what, affected, t).victim(a_id);
    outcome.times = stalls;
    outcome
}

/// A Redis Cluster primary killed under load, and a replica promoted: the setup's cluster must
/// be built with [`ProcClusterBuilder::redis_cluster_with_replicas`] (and its nodes should wait
/// for a replica on every write, `PARTYLINE_REDIS_MIN_REPLICAS=1`, or a write acknowledged just
/// before the kill may be lost with the primary; then give each primary two replicas, so that
/// the promoted one still has a replica to wait for). The primary killed is the one serving the
/// most load rooms' shards; Redis Cluster promotes a replica once the other primaries time it
/// out (2 s here). Every room is affected; the times are from the kill to each room's first
/// acknowledged write made after it.
pub async fn replica_failover(setup: Setup) -> Outcome {
    let mut run = Run::start(setup).await;
    let all = run.all();
    let shards: Vec<u16> = run.rooms.iter().map(|r| shard_of(&r.key())).collect();
    let (primary, served, replica) = tokio::task::block_in_place(|| {
        let c = run.cluster.redis_cluster_mut().expect("replica-failover needs a Redis Cluster");
        let mut by: BTreeMap<u16, usize> = BTreeMap::new();
        for s in &shards {
            *by.entry(c.primary_of(c.slot_of(&format!("pl:{{s{s}}}:lease")))).or_default() += 1;
        }
        let (primary, served) = by.into_iter().max_by_key(|(_, n)| *n).expect("a primary");
        (primary, served, c.replica_of(primary))
    });
    run.say(format!(
        "killing the Redis primary on port {primary} (serves {served} of the load's {} shards; its replica: {replica:?})",
        shards.len()
    ));
    let t = Instant::now();
    tokio::task::block_in_place(|| run.cluster.redis_cluster_mut().expect("a redis cluster").kill(primary));
    // A replica takes over once the other primaries time the primary out.
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let promoted = loop {
        let primaries = tokio::task::block_in_place(|| run.cluster.redis_cluster_mut().map(|c| c.primaries()));
        if primaries.is_some_and(|p| p.len() == 3 && !p.contains(&primary)) {
            break Some(t.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match promoted {
        Some(d) => run.say(format!("the replica was a primary {:.2}s after the kill", d.as_secs_f64())),
        None => run.problem(format!(
            "no replica of the killed primary ({replica:?}) was promoted within {RECOVERY_TIMEOUT:?}"
        )),
    }
    run.recover("after the Redis primary was killed", &all, t, 1).await;
    run.recover("after the failover", &all, Instant::now(), 10).await;
    run.expect_all_running("after the Redis failover");
    let report = run.stop().await;
    let what = format!(
        "Redis primary :{primary} killed ({served} of {} shards), replica promoted after {}",
        shards.len(),
        promoted.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
    );
    Outcome::new(run, report, FaultKind::ReplicaFailover, what, all, t).failover_from(t)
}
