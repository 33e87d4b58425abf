//! What a fault test checks a [`LoadReport`] against: room storage read straight from Redis,
//! and the lease epochs sampled while the faults happened.
//!
//! Per chat room (`main`), with `stored` the history in storage after the run:
//! - no entry is stored twice, and every entry is a message one of the room's clients sent;
//! - every message a client saw come back (an acknowledged write) is stored: else **lost**;
//! - every broadcast any client saw is stored: else a **phantom** (e.g. from a fenced zombie);
//! - the broadcasts each client saw, across all its sessions, follow storage order strictly (so
//!   none twice), and none of a session's broadcasts was already in that session's history;
//! - every history a client received on connect is a prefix of `stored` (no phantom, nothing
//!   lost since) and includes every broadcast that client had already seen (no stale read).
//!
//! Per counter room (`counter`, hibernating), with `stored` the count after the run:
//! - each client's counts go up: a broadcast count is above everything it saw before, a
//!   greeting (on connect) is not below it;
//! - `stored` ≥ every count anyone saw (no lost increment), and ≤ the `inc`s sent (no
//!   phantom increment).
//!
//! Per counter room, whether the room **ran twice** (two instances of it at once, which leases
//! must prevent). A counter broadcast names the instance that committed it (`{"count": n,
//! "inst": X}`; a new instance every time the room starts, on a node or after hibernating), so
//! the commits clients saw are (count, instance) pairs, ordered by count (storage order). The
//! room ran twice if:
//! - two instances broadcast the same count (both committed it);
//! - an instance committed a count after another instance's commits began and before its own
//!   ended: its commits, in count order, are not one run (X: 10, 11, Y: 12, X: 13);
//! - a client received a frame from instance X carrying count k (a broadcast, or a `slow`
//!   reply) more than [`RAN_TWICE_SLACK`] after some client received a commit c > k by another
//!   instance: X acted after a later instance had committed.
//!
//! The first two need no clock; the third allows for the load's clients reading their sockets
//! a little out of order. A chat room's broadcasts are the clients' own texts and name no
//! instance: two instances of a chat room would show as lost or phantom writes (each stores the
//! whole history), entries stored twice, or broadcasts out of storage order.
//!
//! Per room, of either kind: every close reason and HTTP error body its clients received is a
//! documented text ([`crate::client_texts`], issue 22): else an **undocumented client text**.
//!
//! [`EpochWatch`] samples the lease of every load room's shard and checks that a shard's epoch
//! never goes back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partyline::runtime::placement::shard_of;
use partyline::Store;
use partyline_cluster::redis::Redis;
use tokio::task::JoinHandle;

use crate::load::{count_of, inst_of, Kind, LoadReport, RoomSpec};

/// How much later than a later instance's commit a frame of an earlier instance may be received
/// before it counts as the room running twice (the load's clients read their sockets on a few
/// threads, so receive times across sockets can be out of order by a scheduling delay).
pub const RAN_TWICE_SLACK: Duration = Duration::from_millis(250);

/// A room's storage after a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A chat room's history (`[]` when the key is absent).
    Chat(Vec<String>),
    /// A counter room's count (0 when absent).
    Counter(i64),
}

/// Reads every room's storage straight from Redis (not through any node), retrying for a while
/// if Redis does not answer (e.g. right after a restart).
pub async fn read_storage(redis: &Redis, rooms: &[RoomSpec]) -> Vec<Stored> {
    let store = redis.store();
    let mut out = Vec::with_capacity(rooms.len());
    for room in rooms {
        let key = match room.kind {
            Kind::Chat => partyline_examples::chat::HISTORY_KEY,
            Kind::Counter => partyline_examples::counter::COUNT_KEY,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let value = loop {
            match store.get(&room.key(), &[key.to_string()]).await {
                Ok(mut v) => break v.pop().flatten(),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("could not read {} from Redis: {e}", room.label()),
            }
        };
        out.push(match room.kind {
            Kind::Chat => Stored::Chat(value.map_or_else(Vec::new, |v| {
                serde_json::from_slice(&v)
                    .unwrap_or_else(|e| panic!("{}: stored history is not a JSON array: {e}", room.label()))
            })),
            Kind::Counter => Stored::Counter(value.map_or(0, |v| {
                serde_json::from_slice(&v)
                    .unwrap_or_else(|e| panic!("{}: stored count is not a number: {e}", room.label()))
            })),
        });
    }
    out
}

/// Every problem the report shows against `storage` (one entry per room per kind of problem,
/// with examples); empty when all is well. See the module docs for what is checked.
pub fn check(report: &LoadReport, storage: &[Stored]) -> Vec<String> {
    group(report, findings(report, storage))
}

/// What a [`Finding`] says about the writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// An acknowledged write is not in storage.
    Lost,
    /// A client saw (or storage holds) a write that no client's acknowledged write explains.
    Phantom,
    /// A client saw writes out of storage order or twice, a history or count older than what
    /// it had seen, or storage holds an entry twice.
    StaleOrReordered,
    /// A frame that is neither a history nor a count where one was expected.
    Malformed,
    /// A close reason or an HTTP error body a client received that is not a documented text
    /// (a server's fixed text or a party's own; see [`crate::client_texts`]).
    UndocumentedText,
    /// Two instances of a room acted at once: see the module docs.
    RanTwice,
}

/// One thing wrong in a room, found by [`findings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The room (index into [`LoadReport::rooms`]).
    pub room: usize,
    /// What kind of problem (`"lost acknowledged write (seen by its sender, not stored)"`, ...).
    pub kind: &'static str,
    /// Its category.
    pub category: Category,
    /// The writes it concerns: 1, or the increments lost or made up in a counter room; for an
    /// undocumented client text, how many times clients received it.
    pub writes: u64,
    /// An example, with client and time.
    pub detail: String,
}

impl Finding {
    fn new(room: usize, kind: &'static str, detail: String) -> Self {
        let category = match kind {
            "lost acknowledged write (seen by its sender, not stored)" | "lost acknowledged increment" => {
                Category::Lost
            }
            "phantom broadcast (seen, not stored)"
            | "stored entry no client of this room sent"
            | "phantom increment" => Category::Phantom,
            "first frame of a session is not a history" | "frame without a count" => Category::Malformed,
            UNDOCUMENTED_TEXT => Category::UndocumentedText,
            SAME_COUNT_TWICE | INTERLEAVED | LATE_FRAME => Category::RanTwice,
            _ => Category::StaleOrReordered,
        };
        Finding { room, kind, category, writes: 1, detail }
    }

    fn writes(mut self, n: u64) -> Self {
        self.writes = n;
        self
    }
}

/// The kind of an [`Category::UndocumentedText`] finding.
pub const UNDOCUMENTED_TEXT: &str = "undocumented client text";

/// A [`Category::RanTwice`] finding: two instances broadcast the same count.
pub const SAME_COUNT_TWICE: &str = "ran twice: a count committed by two instances";
/// A [`Category::RanTwice`] finding: an instance's commits interleave with another's.
pub const INTERLEAVED: &str = "ran twice: an instance committed after another instance's commits began";
/// A [`Category::RanTwice`] finding: a frame of an instance after a later commit of another.
pub const LATE_FRAME: &str = "ran twice: a frame from an instance after another instance's later commit was seen";

/// A counter frame that names the instance that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstFrame {
    /// When it was received.
    pub at: Instant,
    /// By which client.
    pub client: String,
    /// The instance.
    pub inst: String,
    /// Its count: the commit it broadcasts, or the instance's count when it answered.
    pub count: i64,
    /// A broadcast of a commit (else an answer to one client, e.g. to `slow`).
    pub commit: bool,
}

/// The frames of counter room `r`'s clients that name an instance (greetings do not).
pub fn inst_frames(report: &LoadReport, r: usize) -> Vec<InstFrame> {
    let mut out = Vec::new();
    for c in report.clients_of(r) {
        for f in c.sessions.iter().flat_map(|s| s.frames.iter().skip(1)) {
            if let (Some(count), Some(inst)) = (count_of(&f.text), inst_of(&f.text)) {
                let commit = !f.text.contains("\"slow\"");
                out.push(InstFrame { at: f.at, client: c.id.clone(), inst, count, commit });
            }
        }
    }
    out.sort_by_key(|f| f.at);
    out
}

/// Whether counter room `r` ran twice (see the module docs), from its clients' frames and
/// `extra` frames of the same room received by other clients (e.g. a `slow` reply); one finding
/// per occurrence.
pub fn ran_twice(report: &LoadReport, r: usize, extra: &[InstFrame]) -> Vec<Finding> {
    let mut frames = inst_frames(report, r);
    frames.extend(extra.iter().cloned());
    frames.sort_by_key(|f| f.at);
    let at = |t: Instant| report.secs(t);
    let mut found = Vec::new();
    // Commits in count order, one per (count, instance).
    let mut commits: Vec<(i64, &str)> =
        frames.iter().filter(|f| f.commit).map(|f| (f.count, f.inst.as_str())).collect();
    commits.sort();
    commits.dedup();
    for pair in commits.windows(2) {
        if pair[0].0 == pair[1].0 {
            found.push(Finding::new(
                r,
                SAME_COUNT_TWICE,
                format!("count {} broadcast by {} and by {}", pair[0].0, pair[0].1, pair[1].1),
            ));
        }
    }
    // Runs of one instance in count order: an instance in two runs interleaved with another.
    let mut runs: Vec<(&str, i64, i64)> = Vec::new();
    for &(count, inst) in &commits {
        match runs.last_mut() {
            Some((i, _, last)) if *i == inst => *last = count,
            _ => runs.push((inst, count, count)),
        }
    }
    for (k, &(inst, from, to)) in runs.iter().enumerate() {
        if let Some(&(_, before_from, before_to)) = runs[..k].iter().rev().find(|(i, _, _)| *i == inst) {
            let between: Vec<String> = runs[..k]
                .iter()
                .skip_while(|(i, f, _)| !(*i == inst && *f == before_from))
                .skip(1)
                .map(|(i, f, t)| format!("{i} {f}..{t}"))
                .collect();
            found.push(Finding::new(
                r,
                INTERLEAVED,
                format!(
                    "{inst} committed {before_from}..{before_to}, then {}, then {inst} again {from}..{to}",
                    between.join(", ")
                ),
            ));
        }
    }
    // Frames received after another instance's higher commit was seen (plus slack).
    let mut seen: Vec<&InstFrame> = Vec::new(); // the commits received so far
    for f in &frames {
        let later = seen
            .iter()
            .filter(|s| s.inst != f.inst && s.count > f.count && s.at + RAN_TWICE_SLACK < f.at)
            .min_by_key(|s| s.at);
        if let Some(s) = later {
            found.push(Finding::new(
                r,
                LATE_FRAME,
                format!(
                    "{} got {} (count {}) from {} at {}, after {} had got count {} from {} at {}",
                    f.client,
                    if f.commit { "a broadcast" } else { "an answer" },
                    f.count,
                    f.inst,
                    at(f.at),
                    s.client,
                    s.count,
                    s.inst,
                    at(s.at)
                ),
            ));
        }
        if f.commit {
            seen.push(f);
        }
    }
    found
}

/// Everything the report shows against `storage`, one finding per occurrence (per distinct
/// text for undocumented client texts); empty when all is well. See the module docs for what
/// is checked.
pub fn findings(report: &LoadReport, storage: &[Stored]) -> Vec<Finding> {
    assert_eq!(report.rooms.len(), storage.len(), "one storage entry per room");
    let mut all = Vec::new();
    for (r, stored) in storage.iter().enumerate() {
        all.extend(match stored {
            Stored::Chat(history) => check_chat(report, r, history),
            Stored::Counter(count) => {
                let mut f = check_counter(report, r, *count);
                f.extend(ran_twice(report, r, &[]));
                f
            }
        });
    }
    all.extend(text_findings(report));
    all
}

/// The close reasons and HTTP error bodies clients received that are not documented texts:
/// one finding per room and text, its `writes` how many times (needs no storage, so a run
/// whose storage is wrong on purpose checks these too).
pub fn text_findings(report: &LoadReport) -> Vec<Finding> {
    let mut found = Vec::new();
    for r in 0..report.rooms.len() {
        for (text, n) in report.undocumented_texts(r) {
            found.push(Finding::new(r, UNDOCUMENTED_TEXT, format!("{text} (x{n})")).writes(n as u64));
        }
    }
    found
}

/// `findings` as problems: one entry per room per kind of problem, with the first few examples.
pub fn group(report: &LoadReport, findings: Vec<Finding>) -> Vec<String> {
    let mut problems = Vec::new();
    for r in 0..report.rooms.len() {
        let label = report.rooms[r].label();
        // Group by kind of problem: the first few examples of each.
        let mut kinds: Vec<(&str, Vec<&str>)> = Vec::new();
        for f in findings.iter().filter(|f| f.room == r) {
            match kinds.iter_mut().find(|(k, _)| *k == f.kind) {
                Some((_, details)) => details.push(&f.detail),
                None => kinds.push((f.kind, vec![&f.detail])),
            }
        }
        for (kind, details) in kinds {
            let shown: Vec<&str> = details.iter().take(5).copied().collect();
            let more = if details.len() > 5 { format!(" (+{} more)", details.len() - 5) } else { String::new() };
            problems.push(format!("{label}: {kind} x{}: {}{more}", details.len(), shown.join("; ")));
        }
    }
    problems
}

fn check_chat(report: &LoadReport, r: usize, stored: &[String]) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (i, m) in stored.iter().enumerate() {
        if let Some(first) = pos.insert(m.as_str(), i) {
            found.push(Finding::new(r, "stored twice", format!("{m:?} at {first} and {i}")));
        }
    }
    let clients: HashSet<String> = report.clients_of(r).map(|c| c.id.clone()).collect();
    for m in stored {
        let known = m.split_once(':').is_some_and(|(id, seq)| clients.contains(id) && seq.parse::<u64>().is_ok());
        if !known {
            found.push(Finding::new(r, "stored entry no client of this room sent", format!("{m:?}")));
        }
    }
    for c in report.clients_of(r) {
        let own = format!("{}:", c.id);
        let mut last: Option<usize> = None;
        for (n, s) in c.sessions.iter().enumerate() {
            let Some(greeting) = s.frames.first() else { continue };
            let at = report.secs(greeting.at);
            match serde_json::from_str::<Vec<String>>(&greeting.text) {
                Ok(history) => {
                    let prefix = history.len() <= stored.len() && history[..] == stored[..history.len()];
                    if !prefix {
                        let diverge = history.iter().zip(stored).position(|(a, b)| a != b).unwrap_or(stored.len());
                        found.push(Finding::new(
                            r,
                            "history on connect is not a prefix of storage",
                            format!(
                                "{} session {n} at {at}: {} entries, diverges at {diverge} ({:?} vs {:?})",
                                c.id,
                                history.len(),
                                history.get(diverge),
                                stored.get(diverge)
                            ),
                        ));
                    }
                    if let Some(l) = last {
                        if history.len() <= l {
                            found.push(Finding::new(
                                r,
                                "stale history on connect (older than broadcasts already seen)",
                                format!("{} session {n} at {at}: {} entries, had seen entry {l}", c.id, history.len()),
                            ));
                        }
                    }
                    for f in &s.frames[1..] {
                        let at = report.secs(f.at);
                        match pos.get(f.text.as_str()) {
                            None if f.text.starts_with(&own) => found.push(Finding::new(
                                r,
                                "lost acknowledged write (seen by its sender, not stored)",
                                format!("{:?} at {at}", f.text),
                            )),
                            None => found.push(Finding::new(
                                r,
                                "phantom broadcast (seen, not stored)",
                                format!("{} saw {:?} at {at}", c.id, f.text),
                            )),
                            Some(&p) => {
                                if p < history.len() {
                                    found.push(Finding::new(
                                        r,
                                        "broadcast already in the session's history",
                                        format!("{} saw {:?} (entry {p}) at {at}", c.id, f.text),
                                    ));
                                }
                                if last.is_some_and(|l| p <= l) {
                                    found.push(Finding::new(
                                        r,
                                        "broadcast out of storage order or twice",
                                        format!(
                                            "{} saw {:?} (entry {p}) at {at} after entry {}",
                                            c.id,
                                            f.text,
                                            last.unwrap()
                                        ),
                                    ));
                                }
                                last = Some(last.map_or(p, |l| l.max(p)));
                            }
                        }
                    }
                }
                Err(_) => found.push(Finding::new(
                    r,
                    "first frame of a session is not a history",
                    format!("{} session {n} at {at}: {:?}", c.id, greeting.text),
                )),
            }
        }
    }
    found
}

fn check_counter(report: &LoadReport, r: usize, stored: i64) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut max_seen: Option<i64> = None;
    let mut sent = 0usize;
    for c in report.clients_of(r) {
        sent += c.sent();
        let mut last: Option<i64> = None;
        for (n, s) in c.sessions.iter().enumerate() {
            for (i, f) in s.frames.iter().enumerate() {
                let at = report.secs(f.at);
                let Some(count) = count_of(&f.text) else {
                    found.push(Finding::new(r, "frame without a count", format!("{} at {at}: {:?}", c.id, f.text)));
                    continue;
                };
                let greeting = i == 0;
                if let Some(l) = last {
                    if greeting && count < l {
                        found.push(Finding::new(
                            r,
                            "count went back on reconnect",
                            format!("{} session {n} at {at}: greeted with {count} after seeing {l}", c.id),
                        ));
                    }
                    if !greeting && count <= l {
                        found.push(Finding::new(
                            r,
                            "broadcast count not above what the client saw (duplicate or went back)",
                            format!("{} at {at}: {count} after {l}", c.id),
                        ));
                    }
                }
                last = Some(last.map_or(count, |l| l.max(count)));
            }
        }
        if let Some(l) = last {
            max_seen = Some(max_seen.map_or(l, |m| m.max(l)));
        }
    }
    if let Some(m) = max_seen {
        if stored < m {
            found.push(
                Finding::new(r, "lost acknowledged increment", format!("a client saw {m}, storage has {stored}"))
                    .writes((m - stored) as u64),
            );
        }
    }
    if stored > sent as i64 {
        found.push(
            Finding::new(r, "phantom increment", format!("storage has {stored}, only {sent} inc sent"))
                .writes((stored - sent as i64) as u64),
        );
    }
    found
}

/// One observed lease: a shard's owner and epoch at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSample {
    /// When it was read.
    pub at: Instant,
    /// The shard.
    pub shard: u16,
    /// The holder's node id.
    pub owner: String,
    /// The lease epoch.
    pub epoch: u64,
}

/// Samples the leases of some shards every 100 ms, recording every change of owner or epoch.
pub struct EpochWatch {
    log: Arc<Mutex<Vec<LeaseSample>>>,
    task: JoinHandle<()>,
}

impl EpochWatch {
    /// Starts sampling the shards of `rooms`.
    pub fn start(redis: Redis, rooms: &[RoomSpec]) -> Self {
        let mut shards: Vec<u16> = rooms.iter().map(|r| shard_of(&r.key())).collect();
        shards.sort_unstable();
        shards.dedup();
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(sample(redis, shards, log.clone()));
        EpochWatch { log, task }
    }

    /// Stops sampling; every change seen, in order.
    pub fn stop(self) -> Vec<LeaseSample> {
        self.task.abort();
        let log = self.log.lock().unwrap();
        log.clone()
    }
}

async fn sample(redis: Redis, shards: Vec<u16>, log: Arc<Mutex<Vec<LeaseSample>>>) {
    let leases = redis.leases();
    let mut last: HashMap<u16, (String, u64)> = HashMap::new();
    loop {
        if let Ok(owners) = leases.owners(&shards).await {
            let at = Instant::now();
            for (&shard, owner) in shards.iter().zip(owners) {
                let Some(info) = owner else { continue };
                let now = (info.owner.clone(), info.epoch);
                if last.get(&shard) != Some(&now) {
                    log.lock().unwrap().push(LeaseSample { at, shard, owner: info.owner, epoch: info.epoch });
                    last.insert(shard, now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Problems in a lease log: a shard whose epoch went back, or changed owner without a new
/// epoch.
pub fn check_epochs(samples: &[LeaseSample]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last: HashMap<u16, &LeaseSample> = HashMap::new();
    for s in samples {
        if let Some(prev) = last.get(&s.shard) {
            if s.epoch < prev.epoch {
                problems.push(format!(
                    "shard {}: epoch went back from {} ({}) to {} ({})",
                    s.shard, prev.epoch, prev.owner, s.epoch, s.owner
                ));
            } else if s.epoch == prev.epoch && s.owner != prev.owner {
                problems.push(format!(
                    "shard {}: epoch {} held by {} and then by {}",
                    s.shard, s.epoch, prev.owner, s.owner
                ));
            }
        }
        last.insert(s.shard, s);
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::load::{ClientLog, End, Frame, Session};

    fn session(opened: Instant, frames: &[&str]) -> Session {
        let gateway: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Session {
            gateway,
            opened,
            sent: Vec::new(),
            frames: frames.iter().map(|t| Frame { at: opened, text: t.to_string() }).collect(),
            end: End::Stopped { at: opened },
        }
    }

    fn report(kind: Kind, clients: Vec<(&str, Vec<Session>)>) -> LoadReport {
        let now = Instant::now();
        LoadReport {
            rooms: vec![RoomSpec::new(kind, "r")],
            clients: clients
                .into_iter()
                .map(|(id, sessions)| ClientLog {
                    id: id.into(),
                    room: 0,
                    sessions,
                    connect_failures: Vec::new(),
                    refusals: Vec::new(),
                })
                .collect(),
            started: now,
            ended: now,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_clean_chat_run_passes() {
        let t = Instant::now();
        let r = report(
            Kind::Chat,
            vec![
                ("a", vec![session(t, &["[]", "a:1", "b:1"]), session(t, &[r#"["a:1","b:1"]"#, "a:2"])]),
                ("b", vec![session(t, &["[]", "a:1", "b:1", "a:2"])]),
            ],
        );
        assert_eq!(check(&r, &[Stored::Chat(strings(&["a:1", "b:1", "a:2", "b:2"]))]), Vec::<String>::new());
    }

    #[test]
    fn chat_problems_are_found() {
        let t = Instant::now();
        let r = report(
            Kind::Chat,
            vec![
                // a's own a:1 is lost; b sees a phantom z:9, then a:2 twice, then a stale and
                // foreign history.
                ("a", vec![session(t, &["[]", "a:1", "a:2"])]),
                ("b", vec![session(t, &["[]", "a:2", "z:9", "a:2"]), session(t, &[r#"["x"]"#])]),
            ],
        );
        let problems = check(&r, &[Stored::Chat(strings(&["a:2", "a:2"]))]).join("\n");
        let found = findings(&r, &[Stored::Chat(strings(&["a:2", "a:2"]))]);
        let of = |c: Category| found.iter().filter(|f| f.category == c).count();
        assert_eq!((of(Category::Lost), of(Category::Phantom)), (1, 1), "{found:?}");
        assert!(of(Category::StaleOrReordered) >= 4, "{found:?}");
        for expected in [
            "stored twice",
            "lost acknowledged write",
            "phantom broadcast",
            "broadcast out of storage order or twice",
            "history on connect is not a prefix",
            "stale history on connect",
        ] {
            assert!(problems.contains(expected), "{expected:?} not in:\n{problems}");
        }
    }

    #[test]
    fn counter_problems_are_found() {
        let t = Instant::now();
        let mut s = session(t, &[r#"{"count":0}"#, r#"{"count":1}"#, r#"{"count":2}"#]);
        s.sent = vec![(1, t), (2, t)];
        let clean = report(Kind::Counter, vec![("a", vec![s.clone()])]);
        assert_eq!(check(&clean, &[Stored::Counter(2)]), Vec::<String>::new());
        assert!(check(&clean, &[Stored::Counter(1)])[0].contains("lost acknowledged increment"));
        assert!(check(&clean, &[Stored::Counter(3)])[0].contains("phantom increment"));
        let lost = findings(&clean, &[Stored::Counter(0)]);
        assert_eq!((lost[0].category, lost[0].writes), (Category::Lost, 2));
        let twice =
            report(Kind::Counter, vec![("a", vec![s.clone(), session(t, &[r#"{"count":1}"#, r#"{"count":2}"#])])]);
        let problems = check(&twice, &[Stored::Counter(2)]).join("\n");
        assert!(problems.contains("count went back on reconnect"), "{problems}");
        assert!(problems.contains("broadcast count not above"), "{problems}");
        assert_eq!(clean.counts_seen(0), std::collections::BTreeSet::from([1, 2]));
    }

    #[test]
    fn undocumented_client_texts_are_findings() {
        let t = Instant::now();
        let mut leaked = session(t, &[r#"{"count":0}"#]);
        leaked.end = End::Closed { at: t, code: 1012, reason: "write refused: lease 823 is no longer held".into() };
        let mut moved = session(t, &[r#"{"count":0}"#]);
        moved.end = End::Closed { at: t, code: 1012, reason: partyline::client_text::ROOM_MOVED.into() };
        let r = report(Kind::Counter, vec![("a", vec![leaked.clone(), moved]), ("b", vec![leaked])]);
        let found = findings(&r, &[Stored::Counter(0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].category, found[0].writes), (Category::UndocumentedText, 2));
        assert_eq!(text_findings(&r), found);
        let problems = check(&r, &[Stored::Counter(0)]).join("\n");
        assert!(problems.contains("undocumented client text x1") && problems.contains("lease 823"), "{problems}");
        assert!(problems.contains("(x2)"), "{problems}");
    }

    #[test]
    fn rooms_that_ran_twice_are_found() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let b = |count: i64, inst: &str| format!(r#"{{"count":{count},"inst":"{inst}"}}"#);
        let at = |mut s: Session, times: &[u64]| {
            for (f, &m) in s.frames.iter_mut().zip(times) {
                f.at = ms(m);
            }
            s
        };
        let kinds = |found: &[Finding]| found.iter().map(|f| f.kind).collect::<Vec<_>>();
        // X commits 1, 2; Y takes over and commits 3, 4: clean.
        let (x1, x2, y3, y4) = (b(1, "x"), b(2, "x"), b(3, "y"), b(4, "y"));
        let clean = report(
            Kind::Counter,
            vec![
                (
                    "a",
                    vec![
                        at(session(t, &[r#"{"count":0}"#, &x1, &x2]), &[0, 10, 20]),
                        at(session(t, &[r#"{"count":2}"#, &y3, &y4]), &[500, 600, 700]),
                    ],
                ),
                ("b", vec![at(session(t, &[r#"{"count":0}"#, &x1, &x2, &y3, &y4]), &[0, 11, 21, 601, 701])]),
            ],
        );
        assert_eq!(ran_twice(&clean, 0, &[]), Vec::<Finding>::new());
        // X's 2 reaches b a little after a saw Y's 3: within the slack.
        let close = report(
            Kind::Counter,
            vec![
                ("a", vec![at(session(t, &[r#"{"count":1}"#, &y3]), &[0, 600])]),
                ("b", vec![at(session(t, &[r#"{"count":1}"#, &x2]), &[0, 700])]),
            ],
        );
        assert_eq!(ran_twice(&close, 0, &[]), Vec::<Finding>::new());
        // ... and long after it: X acted after Y committed.
        let late = report(
            Kind::Counter,
            vec![
                ("a", vec![at(session(t, &[r#"{"count":1}"#, &y3]), &[0, 600])]),
                ("b", vec![at(session(t, &[r#"{"count":1}"#, &x2]), &[0, 1600])]),
            ],
        );
        assert_eq!(kinds(&ran_twice(&late, 0, &[])), [LATE_FRAME]);
        // An answer (not a commit) from X after Y's commit counts too.
        let answer = InstFrame { at: ms(2000), client: "slow".into(), inst: "x".into(), count: 2, commit: false };
        assert_eq!(kinds(&ran_twice(&clean, 0, &[answer])), [LATE_FRAME]);
        // The same count from two instances, and X committing again after Y.
        let (y2, x5) = (b(2, "y"), b(5, "x"));
        let twice = report(
            Kind::Counter,
            vec![("a", vec![at(session(t, &[r#"{"count":0}"#, &x1, &x2, &y2, &y3, &x5]), &[0, 10, 20, 21, 30, 31])])],
        );
        let found = ran_twice(&twice, 0, &[]);
        assert!(kinds(&found).contains(&SAME_COUNT_TWICE), "{found:?}");
        assert!(kinds(&found).contains(&INTERLEAVED), "{found:?}");
        assert!(found.iter().all(|f| f.category == Category::RanTwice));
        let problems = check(&twice, &[Stored::Counter(5)]).join("\n");
        assert!(problems.contains("ran twice"), "{problems}");
    }

    #[test]
    fn epochs_that_go_back_are_found() {
        let t = Instant::now();
        let s = |shard, owner: &str, epoch| LeaseSample { at: t, shard, owner: owner.into(), epoch };
        assert!(check_epochs(&[s(1, "a", 5), s(1, "b", 9), s(2, "a", 3)]).is_empty());
        let problems = check_epochs(&[s(1, "a", 5), s(1, "b", 4), s(2, "a", 3), s(2, "b", 3)]);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
