//! The process-level harness itself: `ProcCluster` starts real `partyline` processes, signals
//! them, restarts them under the same id and port, cuts a node from Redis, and leaves no
//! process behind.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use partyline_test_macros::timed_test;
use partyline_tests::procs::{health, ProcCluster};
use partyline_tests::within;

/// The state letter of a process (`R`, `S`, `T` for stopped, ...), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn exists(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(20, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_take_signals_restart_and_are_all_killed_on_drop() {
    let mut c = ProcCluster::builder().nodes(2).gateways(1).start().await;
    let members: Vec<String> = c.members().await.into_iter().map(|m| m.id).collect();
    assert_eq!(members, ["node-1", "node-2"]);
    assert!(health(c.gateway(0).addr()));
    let node = c.node(1).pid().unwrap();

    c.node(1).sigstop();
    eventually("the node to stop", || proc_state(node) == Some('T')).await;
    c.node(1).sigcont();
    eventually("the node to run again", || proc_state(node).is_some_and(|s| s != 'T')).await;
    assert!(c.node_mut(1).is_running());

    // A crash: gone at once, reaped, status says SIGKILL.
    c.node(1).sigkill();
    let status = c.node_mut(1).wait_exit(Duration::from_secs(10)).await.expect("a killed node exits");
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_eq!(c.dead_processes().len(), 1);

    // Same id and port, a new incarnation.
    let addr = c.node(1).addr();
    c.restart_node(1).await;
    assert_ne!(c.node(1).pid(), Some(node));
    assert_eq!(c.node(1).addr(), addr);
    assert_eq!(c.node(1).starts(), 2);
    assert!(c.dead_processes().is_empty());
    assert!(c.node(1).log().contains("==== node-2 start #2"), "{}", c.node(1).log_tail(5));

    // A gateway without clients stops on SIGTERM, and comes back on the same port.
    let gateway = c.gateway(0).pid().unwrap();
    c.gateway(0).sigterm();
    let status = c.gateway_mut(0).wait_exit(Duration::from_secs(20)).await.expect("the gateway exits on SIGTERM");
    assert!(status.success(), "{status}");
    c.restart_gateway(0).await;
    assert_ne!(c.gateway(0).pid(), Some(gateway));

    // The node reaches Redis only through its proxy: with it held, the node drops out of the
    // membership once its record expires, and comes back when the proxy passes again.
    c.redis_proxy(0).hold();
    let gone = Instant::now();
    within(30, "node-1's membership to expire", async {
        while c.members().await.iter().any(|m| m.id == "node-1") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    println!("node-1 cut from Redis: membership expired after {:.1}s", gone.elapsed().as_secs_f64());
    c.redis_proxy(0).pass();
    within(30, "node-1 to register again", async {
        while !c.members().await.iter().any(|m| m.id == "node-1") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(c.node_mut(0).is_running(), "a node cut from Redis keeps running");

    let pids: Vec<u32> = c.nodes().iter().map(|n| n.pid().unwrap()).chain(c.gateway(0).pid()).collect();
    let redis_url = c.redis_url();
    let logs = c.log_dir();
    drop(c);
    for pid in pids {
        assert!(!exists(pid), "process {pid} outlived the cluster");
    }
    assert!(!logs.exists(), "the log directory of a passing test is removed");
    let port: u16 = redis_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "redis outlived the cluster");
}
