//! Fault tests on real processes (issue 7): nodes and gateways are child processes of the
//! `partyline` binary around a real `redis-server`, under load from WebSocket clients in chat
//! (`main`) and hibernating `counter` rooms. Each test causes one kind of fault — SIGKILL of an
//! owner, SIGSTOP past its lease, a node cut from Redis, a Redis restart, a Redis that lost its
//! data, SIGTERM (drain), a node joining — and then checks, per room, against storage read
//! straight from Redis: every acknowledged write is stored, every broadcast a client saw is
//! stored, in storage order, once (no phantom from a zombie), counts never go back, lease
//! epochs never go back (see `partyline_tests::checks`), every close reason and error body the
//! clients received is a documented text (issue 22), plus what is specific to the fault.
//!
//! One test runs its nodes and gateways in the test process instead (still over real sockets,
//! gRPC and Redis): [`a_handler_still_running_when_its_shard_moves_delivers_nothing_after`]
//! needs the `faulty` test party, which the `partyline` binary does not have.
//!
//! The scenarios live in `partyline_tests::faults` (the chaos runner, `scripts/chaos.sh`,
//! repeats them at random); each test runs one and judges its outcome.
//!
//! Tests assert behaviour, not speed: timings (failover: fault to the first acknowledged write
//! in each affected room; drain: SIGTERM to exit) are printed, with the issue's target next to
//! them. Every problem found is collected and the test fails once at the end listing all of
//! them, with the last lines of every process's log.

use std::time::{Duration, Instant};

use partyline::RoomKey;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::{slow_move_node, SLOW_MOVE_DEADLINE};
use partyline_tests::faults::{
    self, mixed_rooms, multi, rooms_for_a_join, Outcome, Pause, RedisFault, Run, Setup, RECOVERY_TIMEOUT,
};
use partyline_tests::load::{Kind, RoomSpec};
use partyline_tests::procs::{ProcCluster, LEASES};
use partyline_tests::proxy::Mode;

/// The whole-test limit of a fault test: a run warms up its load, causes its fault, waits up to
/// [`RECOVERY_TIMEOUT`] for every room and checks storage, so it gets more than the default
/// limit, and still fails (with its name) before nextest kills it at 120 s.
const FAULT_TEST_SECS: u64 = 110;

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn a_healthy_cluster_under_load_passes_every_check() {
    let mut run = Run::start(Setup::new(multi(), mixed_rooms(4, 2))).await;
    let t = Instant::now();
    run.recover("steady load", &(0..6).collect::<Vec<_>>(), t, 100).await;
    let report = run.stop().await;
    let all: Vec<usize> = (0..report.rooms.len()).collect();
    let disconnects = report.disconnects(&all, report.started, report.ended);
    if !disconnects.is_empty() {
        run.problem(format!("disconnects without a fault: {disconnects:?}"));
    }
    run.expect_all_running("after a run without faults");
    run.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn sigkill_of_an_owner_loses_no_acknowledged_write() {
    faults::sigkill(Setup::new(multi(), mixed_rooms(6, 3))).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn an_owner_paused_until_its_rooms_moved_is_fenced_when_it_resumes() {
    faults::pause(Setup::new(multi(), mixed_rooms(6, 3)), Pause::UntilMoved).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn an_owner_resumed_just_past_its_lease_delivers_nothing() {
    // Just past the lease TTL: it wakes up with messages waiting in its buffers and its HTTP/2
    // connections still up (the gateways closed its rooms' links at its self-fence time, when
    // it stopped answering their pings, but not the connections).
    let pause = Pause::For(LEASES.ttl + Duration::from_millis(500));
    faults::pause(Setup::new(multi(), mixed_rooms(6, 3)), pause).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn an_owner_partitioned_from_redis_is_fenced() {
    faults::cut_from_redis(Setup::new(multi(), mixed_rooms(6, 3)), Mode::Hold).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn an_owner_whose_redis_connections_reset_is_fenced() {
    faults::cut_from_redis(Setup::new(multi(), mixed_rooms(6, 3)), Mode::Drop).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn redis_restarts_with_aof_lose_nothing_and_crash_nothing() {
    // A crash and an immediate restart, then an outage past the self-fence deadline (every
    // node loses its leases).
    let setup = Setup::new(multi().durable_redis(true), mixed_rooms(6, 3));
    let outage = RedisFault::Outage(LEASES.ttl + Duration::from_secs(1));
    faults::redis_restarts(setup, &[RedisFault::Restart, outage]).await.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn a_redis_that_lost_its_data_is_refused_not_served_empty() {
    let mut run = Run::start(Setup::new(multi().durable_redis(true), mixed_rooms(4, 2))).await;
    let t = Instant::now();
    run.cluster.restart_redis_empty().await;
    println!(
        "Redis restarted without its data {:.2}s into the load",
        t.duration_since(run.load().started()).as_secs_f64()
    );
    // Watch for a while with the load reconnecting and writing.
    tokio::time::sleep(Duration::from_secs(8)).await;
    run.expect_all_running("after Redis lost its data");
    let mut empty_over_http = Vec::new();
    let mut answers = Vec::new();
    let gateways = run.cluster.gateway_addrs();
    let asked = Instant::now();
    let gets = run.rooms.iter().enumerate().map(|(r, room)| {
        let path = format!("/parties/{}/{}", room.kind.party(), room.name);
        let gateway = gateways[r % gateways.len()];
        async move {
            let got = get(gateway, &path, HTTP_ANSWER).await;
            (path, got, asked.elapsed())
        }
    });
    let got = futures::future::join_all(gets).await;
    for (room, (path, got, took)) in run.rooms.clone().iter().zip(got) {
        match got {
            Ok((status, body)) => {
                if let Err(e) = partyline_tests::client_texts::check_body(status, &body) {
                    run.problem(format!("GET {path} after Redis lost its data: {e}"));
                }
                answers.push(format!("{} {status} {body:?} in {:.2}s", room.label(), took.as_secs_f64()));
                let empty = match room.kind {
                    Kind::Chat => status == 200 && body == "[]",
                    Kind::Counter => status == 200 && body.contains(r#""count":0"#),
                };
                if empty {
                    empty_over_http.push(room.label());
                }
            }
            Err(e) => run.problem(format!("GET {path} after Redis lost its data: {e}")),
        }
    }
    println!("GET after Redis lost its data: {answers:?}");
    let report = run.load_stop_without_checks().await;
    // Each room had acknowledged writes before: a greeting without them is an empty room served.
    let mut served_empty = Vec::new();
    for c in &report.clients {
        for s in c.sessions.iter().filter(|s| s.opened > t) {
            let Some(greeting) = s.frames.first() else { continue };
            let empty = match report.rooms[c.room].kind {
                Kind::Chat => greeting.text == "[]",
                Kind::Counter => greeting.text == r#"{"count":0}"#,
            };
            if empty {
                served_empty.push(format!("{} at {}", c.id, report.secs(greeting.at)));
            }
        }
    }
    println!("{}", report.summary());
    if !served_empty.is_empty() {
        run.problem(format!(
            "clients were served empty rooms after Redis lost the cluster's data ({} sessions): {:?}",
            served_empty.len(),
            &served_empty[..served_empty.len().min(5)]
        ));
    }
    if !empty_over_http.is_empty() {
        run.problem(format!("GET answered empty rooms after Redis lost the cluster's data: {empty_over_http:?}"));
    }
    run.verdict();
}

/// How long an HTTP request may go unanswered before a test calls it hung.
const HTTP_ANSWER: Duration = Duration::from_secs(15);

/// `GET path` over a new connection: (status, body), or what went wrong, within `limit`.
async fn get(addr: std::net::SocketAddr, path: &str, limit: Duration) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        let res = partyline_tests::parse_response(&raw);
        Ok((res.status, res.text()))
    };
    tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// SIGTERMs the busiest owner of `rooms` under load (not restarted); see [`faults::drain`].
async fn drain_the_busiest(rooms: Vec<RoomSpec>) -> Outcome {
    faults::drain(Setup::new(multi(), rooms), false).await
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn sigterm_drains_an_owner_under_load() {
    let mut drain = drain_the_busiest(mixed_rooms(6, 3)).await;
    // Sockets of non-hibernating rooms are closed with 1012 so that clients reconnect at once.
    if !drain.wrong_closes.is_empty() {
        let wrong = std::mem::take(&mut drain.wrong_closes);
        drain.run.problem(format!("chat sockets not closed with 1012 by the drain: {wrong:?}"));
    }
    println!(
        "hibernating (counter) clients disconnected by the drain: {} (asserted by drain_keeps_hibernating_clients_connected)",
        drain.hibernating.as_ref().map_or(0, Vec::len)
    );
    drain.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn drain_keeps_hibernating_clients_connected() {
    let mut drain = drain_the_busiest(mixed_rooms(0, 6)).await;
    // Every room is a counter room: the drained node's rooms' clients are all hibernating.
    let disconnects = drain.report.disconnects(&drain.affected, drain.t_fault, drain.report.ended);
    if !disconnects.is_empty() {
        drain.run.problem(format!(
            "{} hibernating clients were disconnected by the drain: {:?}",
            disconnects.len(),
            &disconnects[..disconnects.len().min(5)]
        ));
    }
    drain.verdict();
}

/// Two nodes under a load of `rooms`, then a third joins; see [`faults::join`].
async fn join_a_node(rooms: Vec<RoomSpec>) -> Outcome {
    faults::join(Setup::new(ProcCluster::builder().nodes(2).gateways(2), rooms)).await
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn a_node_joining_under_load_takes_its_share_and_loses_nothing() {
    let rooms = rooms_for_a_join(Kind::Chat, "chat", 3, 2, 3)
        .into_iter()
        .chain(rooms_for_a_join(Kind::Counter, "count", 2, 1, 3))
        .collect();
    let join = join_a_node(rooms).await;
    let counter = join.report.rooms_of(Kind::Counter);
    println!(
        "hibernating (counter) clients disconnected after the join: {} (asserted by rebalance_keeps_hibernating_clients_connected)",
        join.report.disconnects(&counter, join.t_fault, join.report.ended).len()
    );
    join.verdict();
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn rebalance_keeps_hibernating_clients_connected() {
    let mut join = join_a_node(rooms_for_a_join(Kind::Counter, "count", 3, 2, 3)).await;
    let all: Vec<usize> = (0..join.report.rooms.len()).collect();
    let disconnects = join.report.disconnects(&all, join.t_fault, join.report.ended);
    if !disconnects.is_empty() {
        join.run.problem(format!(
            "{} hibernating clients were disconnected by the rebalance: {:?}",
            disconnects.len(),
            &disconnects[..disconnects.len().min(5)]
        ));
    }
    join.verdict();
}

/// The chaos runner (`partyline-chaos`, which `scripts/chaos.sh` runs) end to end: two short
/// rounds, a crash and a drain, and its summary; and a usage error.
#[test]
fn the_chaos_runner_runs_rounds_and_sums_them_up() {
    let chaos = env!("CARGO_BIN_EXE_partyline-chaos");
    let out = std::process::Command::new(chaos)
        .args(["--rounds", "2", "--seed", "1", "--kinds", "sigkill,sigterm"])
        .output()
        .expect("run partyline-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "partyline-chaos failed ({}):\n{stdout}\n{stderr}", out.status);
    for expected in [
        "round 1/2 ",
        "round 2/2 ",
        "faults: sigkill 1, sigterm 1",
        "lost acknowledged writes: 0",
        "phantom writes (seen or stored, never sent or acknowledged): 0",
        "hibernating clients disconnected by drains or joins: 0",
        "ran twice (a count committed by two instances of a room, or an instance acting after another's later commit): 0",
        "undocumented client texts (close reasons and error bodies outside the documented set): 0",
        "problems: none",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in the output:\n{stdout}");
    }

    let bad = std::process::Command::new(chaos).args(["--kinds", "sigkill,meteor"]).output().expect("run it");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("unknown fault kind \"meteor\"") && stderr.contains("redis-outage"), "{stderr}");
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn an_alarm_fires_after_its_owner_crashed() {
    use partyline::Store;
    let mut cluster = multi().start().await;
    let room = RoomKey::new("counter", "alarm-after-crash");
    let url = format!("ws://{}/parties/counter/{}?_pk=a", cluster.gateway_addrs()[0], room.room);
    let mut client = partyline_tests::Client::connect(&url).await.expect("connect");
    assert_eq!(client.recv_json().await, serde_json::json!({"count": 0}));
    client.send_text("alarm 3000").await;
    let due = client.recv_json().await["alarm_at"].as_i64().expect("the alarm time");
    // Nobody touches the room again: only the alarm scheduler can wake it.
    client.close(1000).await;
    let owner = cluster.owner_of(&room).await.expect("the room's shard is leased");
    let victim = cluster.node_index(&owner).unwrap();
    let killed = Instant::now();
    cluster.node(victim).sigkill();
    cluster.node_mut(victim).wait_exit(Duration::from_secs(10)).await.expect("a killed node exits");
    let store = cluster.redis().store();
    let fired = async {
        loop {
            let got = store.get(&room, &[partyline_examples::counter::ALARMS_KEY.to_string()]).await;
            if let Ok(Some(Some(v))) = got.map(|mut v| v.pop()) {
                if serde_json::from_slice::<u64>(&v).unwrap_or(0) >= 1 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let waited = tokio::time::timeout(RECOVERY_TIMEOUT, fired).await;
    let late = partyline::storage::now_ms() - due;
    println!(
        "alarm of a room whose owner ({owner}) was SIGKILLed {:.2}s earlier: fired {late} ms after it was due",
        killed.elapsed().as_secs_f64()
    );
    let owner_now = cluster.owner_of(&room).await;
    assert!(
        waited.is_ok(),
        "the alarm did not fire within {RECOVERY_TIMEOUT:?} of the crash (room now leased to {owner_now:?})"
    );
    assert_ne!(owner_now.as_deref(), Some(owner.as_str()), "another node ran it");
}

/// Issue 17, item 2: a room whose handler is still running when its shard is handed over (a
/// rebalance: a node joins, the owner keeps running) must do nothing more once its shard has
/// left the node. Unlike the other tests here, the nodes and gateways run in this process
/// (real sockets, gRPC and Redis): the `faulty` party is not in the `partyline` binary, and the
/// test wakes its sleeping handler at the moment it chooses ([`partyline_tests::parties::wake_slow`]).
///
/// A client (A, through gateway 1) of a `faulty` room on node-1 sends `slow 20000 late`: its
/// handler sleeps. node-2 joins and node-1 hands it the room's shard with a 1 s deadline the
/// sleeping room cannot meet. As soon as the lease has left node-1 (released, or left to
/// expire), the handler wakes up: it sends `late`, then writes `slow`. A second client (B,
/// through gateway 1 too, which had a link to the old instance: the node ends that link when it
/// gives the room up, so new sockets are routed afresh) is served by the next owner (`put`,
/// acknowledged). Asserted:
/// 1. no client receives anything from the old instance once the shard left node-1, so in
///    particular nothing after the next owner's first acknowledged write (the old code
///    released the lease while the room ran, and its frames still flowed on A's link until its
///    self-fence deadline, 1.9 to 2.4 s later: after another node could own the room; once the
///    next owner acquires, gateway 1 closes the link by itself, so the released-lease window is
///    where the old code is caught for certain);
/// 2. the lease never had two holders: no epoch went back or changed hands without a new
///    epoch (sampled every 50 ms), node-1 no longer holds it when the next owner serves, and
///    the old instance's `slow` write is not in storage;
/// 3. the room is served again within the rebalance delays, the move deadline and the lease TTL
///    of the join, plus 5 s for a busy machine.
#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = FAULT_TEST_SECS)]
async fn a_handler_still_running_when_its_shard_moves_delivers_nothing_after() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use partyline::runtime::placement::{preferred, shard_of};
    use partyline::Store;
    use partyline_node::server::Rebalance;
    use partyline_tests::checks::{check_epochs, LeaseSample};
    use partyline_tests::cluster::TestCluster;
    use partyline_tests::parties::{wake_slow, SLOW_SLEEPERS};
    use partyline_tests::{Client, Received};

    let mut cluster = TestCluster::builder().nodes(0).gateways(0).start().await;
    let redis_url = cluster.redis.url();
    cluster.nodes.push(slow_move_node(&redis_url, "node-1").await);
    cluster.add_gateway().await;
    cluster.add_gateway().await;
    let redis = cluster.redis().await;
    let leases = redis.leases();

    // A room whose shard rendezvous hashing gives node-2 once it joins.
    let room = (0..)
        .map(|i| RoomKey::new("faulty", format!("moving-{i}")))
        .find(|k| preferred(shard_of(k), ["node-1", "node-2"]) == Some("node-2"))
        .expect("some room prefers node-2");
    let shard = shard_of(&room);
    let gateways = [cluster.gateway(0), cluster.gateway(1)];
    let url = |gateway: usize| format!("ws://{}/parties/faulty/{}", gateways[gateway], room.room);
    let mut a = Client::connect(&url(0)).await.expect("connect the first client");
    let sleepers = SLOW_SLEEPERS.load(Ordering::SeqCst);
    a.send_text("slow 20000 late").await;
    partyline_tests::within(10, "the slow handler to start", async {
        while SLOW_SLEEPERS.load(Ordering::SeqCst) == sleepers {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let held = leases.owner(shard).await.expect("read the lease").expect("the room's shard is leased");
    assert_eq!(held.owner, "node-1", "the only node holds the room's shard");

    // Every lease change of the shard, and everything the first client receives.
    let samples: Arc<Mutex<Vec<LeaseSample>>> = Arc::default();
    let sampler = {
        let (leases, samples) = (redis.leases(), samples.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if let Ok(Some(info)) = leases.owner(shard).await {
                    let now = Some((info.owner.clone(), info.epoch));
                    if now != last {
                        let at = Instant::now();
                        samples.lock().unwrap().push(LeaseSample { at, shard, owner: info.owner, epoch: info.epoch });
                        last = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let stop_a = Arc::new(AtomicBool::new(false));
    let first_client = {
        let stop = stop_a.clone();
        tokio::spawn(async move {
            let mut got: Vec<(Instant, Received)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(ev) = a.recv_within(Duration::from_millis(100)).await {
                    let end = matches!(ev, Received::Close(..) | Received::Ended);
                    got.push((Instant::now(), ev));
                    if end {
                        break;
                    }
                }
            }
            got
        })
    };

    let t_join = Instant::now();
    cluster.nodes.push(slow_move_node(&redis_url, "node-2").await);
    let since = |t: Instant| format!("{:.2}s", t.saturating_duration_since(t_join).as_secs_f64());

    // The shard leaves node-1 (released, or left to expire), and the old instance's handler
    // wakes up at once.
    let left = tokio::time::timeout(RECOVERY_TIMEOUT, async {
        loop {
            match leases.owner(shard).await {
                Ok(Some(l)) if l.owner == "node-1" && l.epoch == held.epoch => {}
                Ok(_) => return Instant::now(),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the room's shard did not leave node-1 within {RECOVERY_TIMEOUT:?} of node-2 joining"));
    wake_slow();
    println!("node-2 joined; the room's shard left node-1 {} after the join; the old handler woken", since(left));

    // The next owner serves the room: a second client's write is acknowledged.
    let mut attempts = Vec::new();
    let served = tokio::time::timeout(RECOVERY_TIMEOUT, async {
        loop {
            let at = Instant::now();
            match Client::connect(&url(0)).await {
                Ok(mut b) => {
                    b.send_text("put 8").await;
                    match b.recv_within(Duration::from_secs(5)).await {
                        Some(Received::Text(t)) if t == "ok" => return (b, Instant::now()),
                        other => attempts.push(format!("at {}: put answered {other:?}", since(at))),
                    }
                }
                Err(e) => attempts.push(format!("at {}: {e}", since(at))),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if !attempts.is_empty() {
        println!("unsuccessful attempts to be served: {attempts:?}");
    }
    let (mut b, acked) = served.unwrap_or_else(|_| {
        panic!("the room was not served again within {RECOVERY_TIMEOUT:?} of its shard leaving node-1")
    });
    let next_owner = leases.owner(shard).await.ok().flatten();
    println!(
        "the next owner ({:?}) acknowledged a write {} after the join",
        next_owner.as_ref().map(|l| (&l.owner, l.epoch)),
        since(acked)
    );

    // Anything the old instance still sends arrives within this.
    let mut second: Vec<(Instant, Received)> = Vec::new();
    let watch_until = Instant::now() + Duration::from_secs(3);
    while let Some(wait) = watch_until.checked_duration_since(Instant::now()) {
        match b.recv_within(wait).await {
            Some(ev) => second.push((Instant::now(), ev)),
            None => break,
        }
    }
    stop_a.store(true, Ordering::SeqCst);
    let first = first_client.await.expect("the first client's reader");
    sampler.abort();
    let samples = samples.lock().unwrap().clone();

    let show = |evs: &[(Instant, Received)]| {
        evs.iter().map(|(at, ev)| format!("{ev:?} at {}", since(*at))).collect::<Vec<_>>().join(", ")
    };
    println!("first client (gateway 1, node-1's instance) received: [{}]", show(&first));
    println!("second client (gateway 1, the next owner) received after its ack: [{}]", show(&second));
    let changes: Vec<String> =
        samples.iter().map(|s| format!("{} epoch {} at {}", s.owner, s.epoch, since(s.at))).collect();
    println!("lease changes of shard {shard}: {changes:?}");

    let mut problems = Vec::new();
    // 1. Nothing of the old instance reaches a client once its shard left node-1.
    let data = |ev: &Received| matches!(ev, Received::Text(_) | Received::Binary(_));
    let late: Vec<String> = first
        .iter()
        .filter(|(at, ev)| *at > left && data(ev))
        .chain(second.iter().filter(|(_, ev)| matches!(ev, Received::Text(t) if t.contains("late"))))
        .map(|(at, ev)| {
            let after_ack = if *at > acked { ", after the next owner's first acknowledged write" } else { "" };
            format!("{ev:?} at {}{after_ack}", since(*at))
        })
        .collect();
    if !late.is_empty() {
        problems.push(format!(
            "the moved room's old instance on node-1 still reached clients after its shard left node-1 (at {}; \
             the next owner acknowledged a write at {}): {late:?}",
            since(left),
            since(acked)
        ));
    }
    // 2. One holder at a time, and the old instance's write did not land.
    problems.extend(check_epochs(&samples));
    if next_owner.as_ref().is_some_and(|l| l.owner == "node-1" && l.epoch == held.epoch) {
        problems.push(format!("node-1 still held epoch {} when the next owner served the room", held.epoch));
    }
    let stored = redis.store().get(&room, &["slow".to_string()]).await.expect("read the room's storage");
    if let Some(Some(v)) = stored.first() {
        problems.push(format!(
            "the old instance's write reached storage after its shard moved: slow = {}",
            String::from_utf8_lossy(v)
        ));
    }
    // 3. Served again within the rebalance delays (node-1 sees node-2, waits for it to settle,
    // and looks on its next tick), the move deadline and the lease TTL.
    let r = Rebalance::default();
    let bound = r.settle + r.every * 2 + SLOW_MOVE_DEADLINE + LEASES.ttl + Duration::from_secs(5);
    if acked.duration_since(t_join) > bound {
        problems.push(format!(
            "the room was served again {} after node-2 joined, later than {:.1}s (rebalance settle + 2 intervals + \
             move deadline + lease TTL + 5 s)",
            since(acked),
            bound.as_secs_f64()
        ));
    }
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}
