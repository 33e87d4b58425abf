//! Drains that meet rooms that will not stop (issue 17, item 2: a lease is never released while a
//! room of its shard still runs), on real processes under load: a handler sleeping through the
//! drain, a rebalance batch a SIGTERM interrupts, a room whose command queue is full.
//!
//! The nodes and gateways run `partyline-faulty`, the `partyline` binary with the test parties
//! (`tests/src/bin/faulty.rs`): a `faulty` room's `slow <ms> <text>` handler sleeps, then sends
//! `<text>` back and writes `slow`. Around it runs the fault tests' load of chat (`main`) and
//! hibernating `counter` rooms ([`partyline_tests::faults::Run`]). Each test asserts:
//! - no frame from the old instance of the faulty room reaches a client after the next owner's
//!   first commit (its text is unique, and nothing at all may arrive on the sockets of the old
//!   instance after that commit was asked for), and the old instance's `slow` write is not in
//!   storage (read straight from Redis);
//! - no acknowledged write is lost: the faulty room's write acknowledged before the fault and the
//!   next owner's are in storage, and the load's checks hold (every acknowledged chat message
//!   and count stored, no phantom, no stale read; [`partyline_tests::checks`]);
//! - no hibernating (counter) client is disconnected from the fault to the end of the run;
//! - every drained node exits, successfully, within [`DRAIN_BOUND`].
//!
//! The nodes' drain timeout (which bounds rebalance handovers too) is [`DRAIN_TIMEOUT`], so the
//! drains give up on the sleeping room long before its handler ends. Times are printed, never
//! asserted.
//!
//! One test runs its nodes and gateway in this process instead (issue 17, item 4:
//! [`a_request_queued_behind_a_handler_its_shard_gave_up_on_is_answered_by_the_next_owner`]),
//! so that it wakes the sleeping handler at the moment it chooses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use partyline::runtime::placement::{preferred, shard_of};
use partyline::{RoomKey, Store};
use partyline_test_macros::timed_test;
use partyline_tests::cluster::slow_move_node;
use partyline_tests::faults::{mixed_rooms, multi, node_ids, Run, Setup, DRAIN_BOUND, RECOVERY_TIMEOUT};
use partyline_tests::load::{Kind, RoomSpec};
use partyline_tests::procs::ProcClusterBuilder;
use partyline_tests::{Client, Received};
use tokio::task::JoinHandle;

/// The whole-test limit: a run warms up, drains, waits out the sleeping handler and checks
/// storage; it fails with its name before nextest kills it at 120 s.
const TEST_SECS: u64 = 110;

/// The `partyline` binary with the test parties, built by cargo for these tests.
const BIN: &str = env!("CARGO_BIN_EXE_partyline-faulty");

/// The nodes' `--drain-timeout` (it bounds rebalance handovers too).
const DRAIN_TIMEOUT: &str = "5s";

/// How long the faulty room's handler sleeps: far past the drain.
const SLOW_MS: u64 = 20_000;

/// Frames a client floods the sleeping room with: more than its queue (1,024 commands) holds.
const FLOOD: usize = 1200;

/// After the sleeping handler would have ended, how long to go on watching for its frame.
const AFTERMATH: Duration = Duration::from_secs(3);

fn cluster() -> ProcClusterBuilder {
    multi().binary(BIN).env("PARTYLINE_DRAIN_TIMEOUT", DRAIN_TIMEOUT)
}

/// The first `faulty` room `<prefix>-<i>` whose shard `wanted` accepts.
fn faulty_room(prefix: &str, wanted: impl Fn(u16) -> bool) -> RoomKey {
    (0..100_000)
        .map(|i| RoomKey::new("faulty", format!("{prefix}-{i}")))
        .find(|k| wanted(shard_of(k)))
        .expect("some room id fits")
}

/// Whether `node` is preferred for `shard` among `nodes`.
fn prefers(shard: u16, nodes: &[&str], node: &str) -> bool {
    preferred(shard, nodes.iter().copied()) == Some(node)
}

fn url(gateway: SocketAddr, room: &RoomKey) -> String {
    format!("ws://{gateway}/parties/{}/{}", room.party, room.room)
}

/// Sends `text` and waits for `ok`.
async fn ask_ok(client: &mut Client, text: &str) -> Result<(), String> {
    client.send_text(text).await;
    match client.recv_within(Duration::from_secs(5)).await {
        Some(Received::Text(t)) if t == "ok" => Ok(()),
        other => Err(format!("{text:?} answered {other:?}")),
    }
}

/// A client of the faulty room that is served with an acknowledged write: connects through
/// `gateway` and asks `text` (a `put...`, answered `ok` once durable) until it is acknowledged,
/// within [`RECOVERY_TIMEOUT`]. Returns the client, when the successful attempt was sent (the
/// commit it asked for is not earlier) and when it was acknowledged.
async fn served(run: &mut Run, gateway: SocketAddr, room: &RoomKey, text: &str) -> Option<(Client, Instant, Instant)> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let mut failed = Vec::new();
    while Instant::now() < deadline {
        let asked = Instant::now();
        match Client::connect(&url(gateway, room)).await {
            Ok(mut c) => match ask_ok(&mut c, text).await {
                Ok(()) => {
                    if !failed.is_empty() {
                        run.say(format!("{} attempts before {room} was served: {failed:?}", failed.len()));
                    }
                    return Some((c, asked, Instant::now()));
                }
                Err(e) => failed.push(e),
            },
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.problem(format!("{room} was not served within {RECOVERY_TIMEOUT:?}: {failed:?}"));
    None
}

/// Everything a client receives, with times, until its socket ends or the recording stops.
struct Recording {
    name: String,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(Instant, Received)>>,
}

impl Recording {
    fn start(name: &str, mut client: Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut got = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Some(ev) = client.recv_within(Duration::from_millis(100)).await {
                        let end = matches!(ev, Received::Close(..) | Received::Ended);
                        got.push((Instant::now(), ev));
                        if end {
                            break;
                        }
                    }
                }
                got
            }
        });
        Recording { name: name.to_string(), stop, task }
    }

    async fn finish(self) -> (String, Vec<(Instant, Received)>) {
        self.stop.store(true, Ordering::SeqCst);
        (self.name, self.task.await.expect("a recording client"))
    }
}

/// The faulty room of a test and its clients on the old instance.
struct SlowRoom {
    key: RoomKey,
    /// Clients of the old instance (the one sleeping in its handler).
    old: Vec<Recording>,
    /// The text its sleeping handler sends when it wakes.
    late: String,
    /// When the sleeping handler was asked for.
    slow_sent: Instant,
}

/// The faulty room open on its owner, its handler not asleep yet.
struct OpenRoom {
    key: RoomKey,
    owner: String,
    a: Client,
    b: Client,
}

impl OpenRoom {
    /// Opens the room on its owner with two clients (through gateways 1 and 2), each making an
    /// acknowledged write (`before`, `second`). Records a problem if the room's shard is not
    /// leased to `owner` then.
    async fn open(run: &mut Run, key: RoomKey, owner: &str) -> OpenRoom {
        let gateways = run.cluster.gateway_addrs();
        let (a, _, _) = served(run, gateways[0], &key, "putkey before 4").await.expect("the faulty room is served");
        let mut b = Client::connect(&url(gateways[1], &key)).await.expect("connect the second client");
        ask_ok(&mut b, "putkey second 4").await.expect("the second client is served");
        let leased = run.cluster.owner_of(&key).await;
        if leased.as_deref() != Some(owner) {
            run.problem(format!("{key} was meant to be on {owner}, but its shard is leased to {leased:?}"));
        }
        OpenRoom { key, owner: owner.to_string(), a, b }
    }

    /// The first client sends `slow`: the room's handler sleeps [`SLOW_MS`].
    async fn sleep(mut self, run: &mut Run) -> SlowRoom {
        let late = format!("late-{}", self.key.room);
        self.a.send_text(&format!("slow {SLOW_MS} {late}")).await;
        self.asleep(run, late)
    }

    /// `via` (another client of the room) sends `slow`, so that what it sends next is queued
    /// behind the sleeping handler: frames of one socket reach the room in order, frames of two
    /// sockets do not.
    async fn sleep_via(self, run: &mut Run, via: &mut Client) -> SlowRoom {
        let late = format!("late-{}", self.key.room);
        via.send_text(&format!("slow {SLOW_MS} {late}")).await;
        self.asleep(run, late)
    }

    fn asleep(self, run: &mut Run, late: String) -> SlowRoom {
        let slow_sent = Instant::now();
        run.say(format!("{} on {}: its handler sleeps {SLOW_MS} ms", self.key, self.owner));
        SlowRoom {
            key: self.key,
            old: vec![Recording::start("a (gateway 1)", self.a), Recording::start("b (gateway 2)", self.b)],
            late,
            slow_sent,
        }
    }
}

impl SlowRoom {
    /// [`OpenRoom::open`], then [`OpenRoom::sleep`].
    async fn start(run: &mut Run, key: RoomKey, owner: &str) -> SlowRoom {
        OpenRoom::open(run, key, owner).await.sleep(run).await
    }

    /// Records a problem when the handler may have woken up already: the fault comes too late
    /// to meet it asleep (a machine too slow for the test).
    fn still_asleep(&self, run: &mut Run) {
        let slept = self.slow_sent.elapsed();
        if slept > Duration::from_millis(SLOW_MS / 2) {
            run.problem(format!(
                "{}: the fault came {:.1}s after the handler went to sleep, too late to be sure it meets it asleep",
                self.key,
                slept.as_secs_f64()
            ));
        }
    }

    /// Once the sleeping handler would have ended (and [`AFTERMATH`] more), checks that nothing
    /// of the old instance reached a client after `commit_asked` (when the write the next owner
    /// acknowledged first was sent) and that the old instance's `slow` write is not stored,
    /// while the writes acknowledged before and after the move are.
    async fn check(self, run: &mut Run, next: Option<(Client, Instant, Instant)>) {
        let until = self.slow_sent + Duration::from_millis(SLOW_MS) + AFTERMATH;
        let next = next.map(|(c, asked, acked)| (Recording::start("c (the next owner)", c), asked, acked));
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        let since = |t: Instant| format!("{:.2}s", t.saturating_duration_since(self.slow_sent).as_secs_f64());
        let mut seen = Vec::new();
        for r in self.old {
            seen.push((true, r.finish().await));
        }
        let commit_asked = next.as_ref().map(|(_, asked, _)| *asked);
        if let Some((r, asked, acked)) = next {
            run.say(format!(
                "{}: the next owner acknowledged a write at {} (asked at {})",
                self.key,
                since(acked),
                since(asked)
            ));
            seen.push((false, r.finish().await));
        }
        let data = |ev: &Received| matches!(ev, Received::Text(_) | Received::Binary(_));
        let mut late = Vec::new();
        for (old, (name, events)) in &seen {
            run.say(format!(
                "{} client {name} received: {:?}",
                self.key,
                events.iter().map(|(at, ev)| format!("{ev:?} at {}", since(*at))).collect::<Vec<_>>()
            ));
            for (at, ev) in events {
                let after_commit = commit_asked.is_some_and(|c| *at > c);
                let own_text = matches!(ev, Received::Text(t) if *t == self.late);
                if own_text || (*old && after_commit && data(ev)) {
                    late.push(format!("{name} got {ev:?} at {}", since(*at)));
                }
            }
        }
        if !late.is_empty() {
            run.problem(format!(
                "{}: the old instance (its handler asleep through the move) reached clients after the next owner's \
                 first commit (asked at {}): {late:?}",
                self.key,
                commit_asked.map_or("-".into(), since)
            ));
        }
        let keys = ["slow", "before", "second", "big"].map(String::from);
        let stored = run.cluster.redis().store().get(&self.key, &keys).await.expect("read the faulty room's storage");
        if let Some(Some(v)) = stored.first() {
            run.problem(format!(
                "{}: the old instance's write reached storage after its shard moved: slow = {}",
                self.key,
                String::from_utf8_lossy(v)
            ));
        }
        for (k, v) in keys.iter().zip(&stored).skip(1) {
            if v.is_none() && (k != "big" || commit_asked.is_some()) {
                run.problem(format!("{}: the acknowledged write of {k:?} is not in storage", self.key));
            }
        }
    }
}

/// SIGTERMs node `i` and waits for it to exit: a problem if it does not within
/// [`DRAIN_BOUND`] (it is SIGKILLed then) or exits unsuccessfully. Returns when it exited.
async fn drain(run: &mut Run, i: usize) -> Instant {
    let id = run.cluster.node(i).name().to_string();
    let t = Instant::now();
    run.cluster.node(i).sigterm();
    match run.cluster.node_mut(i).wait_exit(DRAIN_BOUND).await {
        Some(status) => {
            run.say(format!("{id}: SIGTERM -> exit {:.2}s ({status})", t.elapsed().as_secs_f64()));
            if !status.success() {
                run.problem(format!("the drained {id} exited with {status}"));
            }
        }
        None => {
            run.problem(format!("{id} did not exit within {DRAIN_BOUND:?} of SIGTERM (SIGKILLed then)"));
            run.cluster.node_mut(i).sigkill();
            run.cluster.node_mut(i).wait_exit(Duration::from_secs(10)).await;
        }
    }
    Instant::now()
}

/// Stops the load (checking it against storage), records a problem for every hibernating
/// (counter) client disconnected since `t_fault`, and judges the run.
async fn finish(mut run: Run, t_fault: Instant) {
    let report = run.stop().await;
    let counters = report.rooms_of(Kind::Counter);
    let hibernating = report.disconnects(&counters, t_fault, report.ended);
    run.say(format!("hibernating (counter) clients disconnected after the fault: {}", hibernating.len()));
    if !hibernating.is_empty() {
        run.problem(format!("{} hibernating clients were disconnected: {hibernating:?}", hibernating.len()));
    }
    run.verdict();
}

/// SIGTERM of a node while a room of it runs a handler for 20 s: the drain moves every other
/// room, gives up on the sleeping one at its deadline (its shard dropped, its lease left to
/// expire rather than released), and the node exits; the room is served by its next owner, and
/// its old instance never acts again.
#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = TEST_SECS)]
async fn sigterm_while_a_handler_runs_for_20s() {
    let mut run = Run::start(Setup::new(cluster(), mixed_rooms(4, 3))).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let ids = node_ids(3);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let key = faulty_room("sleeps", |s| prefers(s, &ids, &victim_id));
    let slow = SlowRoom::start(&mut run, key.clone(), &victim_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    slow.still_asleep(&mut run);
    let t = Instant::now();
    let exited = drain(&mut run, victim).await;
    run.recover("after the drained node exited", &rooms, exited, 1).await;
    let gateway = run.cluster.gateway_addrs()[0];
    let next = served(&mut run, gateway, &key, "put 8").await;
    run.say(format!("{key} is now leased to {:?}", run.cluster.owner_of(&key).await));
    slow.check(&mut run, next).await;
    run.expect_running("after the drain", Some(victim));
    finish(run, t).await;
}

/// A rolling deploy: node A (node-1) is drained and restarted, and the nodes that took its rooms
/// hand them back in a rebalance batch; node B (node-2) is SIGTERMed in the middle of its batch,
/// while the handover of a room sleeping in its handler (one of the batch; it went to B while A
/// was down, and its handler sleeps from A's restart on) waits for its deadline. B's drain joins that handover rather than start a second one, moves its other rooms,
/// and exits; every room is served again, the sleeping room's old instance never acts again.
#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = TEST_SECS)]
async fn sigterm_in_the_middle_of_a_rebalance_batch_back_to_a_restarted_node() {
    let all = node_ids(3);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (a_id, b_id) = ("node-1", "node-2");
    let without_a = ["node-2", "node-3"];
    // Rooms that go from A to B while A restarts, and come back in B's batch.
    let back = |s: u16| prefers(s, &all, a_id) && prefers(s, &without_a, b_id);
    let pick = |kind: Kind, prefix: &str, n: usize, wanted: &dyn Fn(u16) -> bool| -> Vec<RoomSpec> {
        (0..10_000)
            .map(|i| RoomSpec::new(kind, format!("{prefix}-{i}")))
            .filter(|r| wanted(shard_of(&r.key())))
            .take(n)
            .collect()
    };
    let mut rooms = pick(Kind::Chat, "chat-back", 2, &back);
    rooms.extend(pick(Kind::Counter, "count-back", 2, &back));
    // B's own rooms, which its drain moves.
    let on_b = |s: u16| prefers(s, &all, b_id);
    rooms.extend(pick(Kind::Chat, "chat-b", 2, &on_b));
    rooms.extend(pick(Kind::Counter, "count-b", 1, &on_b));
    let coming_back: Vec<usize> = (0..4).collect();
    let mut run = Run::start(Setup::new(cluster(), rooms)).await;
    let a = run.cluster.node_index(a_id).expect("node A");
    let b = run.cluster.node_index(b_id).expect("node B");

    // A is drained (the first step of a rolling deploy): its rooms go to B.
    let t = Instant::now();
    let exited = drain(&mut run, a).await;
    run.recover("after A was drained", &coming_back, exited, 1).await;
    let key = faulty_room("batch", back);
    let open = OpenRoom::open(&mut run, key.clone(), b_id).await;

    // A comes back; once it has settled, B hands it its rooms in one batch. The faulty room's
    // handler sleeps from now: through the batch and B's drain.
    run.cluster.restart_node(a).await;
    let restarted = Instant::now();
    run.say(format!("{a_id} restarted"));
    let slow = open.sleep(&mut run).await;
    let deadline = restarted + RECOVERY_TIMEOUT;
    let mid_batch = loop {
        let owners = run.owners().await;
        if coming_back.iter().any(|&r| owners[r].as_deref() == Some(a_id)) {
            break Some(Instant::now());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(mid_batch) = mid_batch else {
        run.problem(format!("{b_id} handed nothing back to the restarted {a_id} within {RECOVERY_TIMEOUT:?}"));
        return finish(run, t).await;
    };
    let holder = run.cluster.owner_of(&key).await;
    run.say(format!(
        "the batch back to {a_id} began (a room moved {:.2}s after the restart); {key} still leased to {holder:?}",
        mid_batch.duration_since(restarted).as_secs_f64()
    ));
    if holder.as_deref() != Some(b_id) {
        run.problem(format!("{key} had left {b_id} before its SIGTERM: the batch was not interrupted ({holder:?})"));
    }

    slow.still_asleep(&mut run);
    let exited = drain(&mut run, b).await;
    let everything = run.all();
    run.recover("after B was drained mid-batch", &everything, exited, 1).await;
    let gateway = run.cluster.gateway_addrs()[1];
    let next = served(&mut run, gateway, &key, "put 8").await;
    run.say(format!("{key} is now leased to {:?}", run.cluster.owner_of(&key).await));
    slow.check(&mut run, next).await;
    run.expect_running("after the drains", Some(b));
    finish(run, t).await;
}

/// A room whose command queue is full at a drain: a client floods it while its handler sleeps,
/// so its 1,024-command queue is full (and the link relaying the flood blocked) when its node
/// is SIGTERMed. The room's move cannot even be queued; the drain gives up on it at its deadline
/// and the node exits; none of the flood runs, the room is served by its next owner.
#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = TEST_SECS)]
async fn a_room_with_a_full_inbox_at_a_drain() {
    let mut run = Run::start(Setup::new(cluster(), mixed_rooms(4, 3))).await;
    let (victim, rooms) = run.busiest_node().await;
    let victim_id = run.cluster.node(victim).name().to_string();
    let ids = node_ids(3);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let key = faulty_room("flooded", |s| prefers(s, &ids, &victim_id));
    let gateways = run.cluster.gateway_addrs();
    // A third client floods: its frames fill the room's queue behind the sleeping handler (each
    // would be echoed if it ran). It joins first: a connection too waits behind the handler.
    let mut flooder = Client::connect(&url(gateways[0], &key)).await.expect("connect the flooder");
    ask_ok(&mut flooder, "putkey flooder 4").await.expect("the flooder is served");
    // The flooder itself puts the handler to sleep: its flood then cannot overtake the `slow`
    // frame (sent by another client, the first flood frames could reach the room before it, run
    // and be echoed).
    let open = OpenRoom::open(&mut run, key.clone(), &victim_id).await;
    let slow = open.sleep_via(&mut run, &mut flooder).await;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooding = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..FLOOD {
                if flooder.try_send_text(&format!("flood-{i}")).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            flooder
        }
    });
    let flood_deadline = Instant::now() + Duration::from_secs(3);
    while !flooding.is_finished() && Instant::now() < flood_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flooded_by = sent.load(Ordering::SeqCst);
    run.say(format!(
        "the flooder sent {flooded_by} of {FLOOD} frames {:.2}s after the handler went to sleep",
        slow.slow_sent.elapsed().as_secs_f64()
    ));
    // Time for the frames to reach the room's queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    slow.still_asleep(&mut run);
    let t = Instant::now();
    let exited = drain(&mut run, victim).await;
    run.recover("after the drained node exited", &rooms, exited, 1).await;
    let next = served(&mut run, gateways[1], &key, "put 8").await;
    run.say(format!("{key} is now leased to {:?}", run.cluster.owner_of(&key).await));
    slow.check(&mut run, next).await;
    // Sends stalled behind the full queue fail once the socket is gone: the flood ends then.
    let flooder = match tokio::time::timeout(Duration::from_secs(10), flooding).await {
        Ok(flooder) => flooder.expect("the flood task"),
        Err(_) => {
            run.problem("the flooder's sends were still stalled 10 s after the room moved".into());
            return finish(run, t).await;
        }
    };
    run.say(format!("the flood ended after {} frames", sent.load(Ordering::SeqCst)));
    // What the flooder received, read now (its socket ended long ago).
    let mut flooder = flooder;
    let mut flooded = Vec::new();
    while let Some(ev) = flooder.recv_within(Duration::from_millis(500)).await {
        let end = matches!(ev, Received::Close(..) | Received::Ended);
        flooded.push(ev);
        if end {
            break;
        }
    }
    let echoes = flooded.iter().filter(|ev| matches!(ev, Received::Text(t) if t.starts_with("flood-"))).count();
    let ends: Vec<&Received> = flooded.iter().filter(|ev| !matches!(ev, Received::Text(_))).collect();
    run.say(format!("the flooder got {echoes} echoes, then {ends:?}"));
    // The node sheds a client whose frame waited the queue timeout for space (WARN, in its log).
    let shed = run.cluster.node(victim).log().contains("room queue full; shedding a client");
    run.say(format!("{victim_id} shed the flooder for a full queue before the drain gave the room up: {shed}"));
    if echoes > 0 {
        run.problem(format!(
            "{echoes} frames of the flood ran on the old instance, whose handler slept until it was gone"
        ));
    }
    run.expect_running("after the drain", Some(victim));
    finish(run, t).await;
}

/// Issue 17, item 4: an HTTP request queued behind a handler that is still running when its
/// room's shard is given up (a rebalance whose move deadline the sleeping room cannot meet: the
/// shard is dropped and the room shut down) never ran, so it is answered by the room's next
/// owner. The room stops once the handler returns, without starting the request; the request
/// comes back to the node as not delivered, which sends the gateway to the next owner. (The old
/// code ran the queued request on the room of the dropped shard, and the node answered it with
/// an error, "the room's shard moved while the request ran"; a request queued behind the
/// shutdown was answered 503 `interrupted`.) In this process, like
/// `failover::a_handler_still_running_when_its_shard_moves_delivers_nothing_after`, so that the
/// test wakes the sleeping handler once the shard has left node-1.
#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = TEST_SECS)]
async fn a_request_queued_behind_a_handler_its_shard_gave_up_on_is_answered_by_the_next_owner() {
    use partyline_tests::cluster::TestCluster;
    use partyline_tests::parties::{wake_slow, SLOW_SLEEPERS};

    let mut cluster = TestCluster::builder().nodes(0).gateways(0).start().await;
    let redis_url = cluster.redis.url();
    cluster.nodes.push(slow_move_node(&redis_url, "node-1").await);
    cluster.add_gateway().await;
    let redis = cluster.redis().await;
    let leases = redis.leases();
    let key = faulty_room("queued", |s| prefers(s, &["node-1", "node-2"], "node-2"));
    let shard = shard_of(&key);
    let gateway = cluster.gateway(0);

    let mut a = Client::connect(&url(gateway, &key)).await.expect("connect a client");
    ask_ok(&mut a, "putkey before 4").await.expect("the room is served");
    let sleepers = SLOW_SLEEPERS.load(Ordering::SeqCst);
    a.send_text("slow 20000 late").await;
    partyline_tests::within(10, "the slow handler to start", async {
        while SLOW_SLEEPERS.load(Ordering::SeqCst) == sleepers {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let held = leases.owner(shard).await.expect("read the lease").expect("the room's shard is leased");
    assert_eq!(held.owner, "node-1");

    // Queued behind the sleeping handler.
    let path = format!("/parties/faulty/{}", key.room);
    let asked = Instant::now();
    let request = tokio::spawn(async move { partyline_tests::http(gateway, "GET", &path, &[], b"").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "the request did not wait behind the sleeping handler");

    // node-2 joins and node-1 gives the shard up at the move deadline; once the lease has left
    // node-1, the handler wakes, and the room stops without running the request.
    let t_join = Instant::now();
    cluster.nodes.push(slow_move_node(&redis_url, "node-2").await);
    partyline_tests::within(RECOVERY_TIMEOUT.as_secs(), "the room's shard to leave node-1", async {
        loop {
            match leases.owner(shard).await {
                Ok(Some(l)) if l.owner == "node-1" && l.epoch == held.epoch => {}
                Ok(_) => return,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    println!("the room's shard left node-1 {:.2}s after node-2 joined", t_join.elapsed().as_secs_f64());
    wake_slow();

    let res = partyline_tests::within(RECOVERY_TIMEOUT.as_secs(), "the queued request's answer", request)
        .await
        .expect("the request task");
    let owner = leases.owner(shard).await.ok().flatten().map(|l| l.owner);
    println!(
        "the queued request was answered {} {:?} {:.2}s after it was sent; the shard is now leased to {owner:?}",
        res.status,
        res.text(),
        asked.elapsed().as_secs_f64()
    );
    assert_eq!((res.status, res.text().as_str()), (200, "ok"), "the queued request, sent again to the next owner");
    assert_eq!(owner.as_deref(), Some("node-2"), "the next owner answered it");
}
