//! The operator console and the operator commands (issue 20), against a real process cluster
//! (four nodes, two gateways, one of them serving the console on its admin listener):
//! - the console answers only with its token (401 and nothing else without it), and only on the
//!   admin listener;
//! - `partyline status --json`, `partyline room --json` and `partyline drain` show and do what
//!   the console does;
//! - the page itself, in headless Chromium (`tests/console/check.mjs`): the cluster at a glance
//!   (every node ready, the shard map, the charts, a narrow screen), the room lookup finding a
//!   room this test created with its connection, a node killed during the test shown as gone
//!   with its shards moved off it on the map, and a drain started from the console completing,
//!   recorded with who asked.
//!
//! The console's answers are for operators, not clients: they are read with `http_unchecked`,
//! which does not hold them to the documented client texts.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use partyline_test_macros::timed_test;
use partyline_tests::procs::{free_port, partyline_bin, ProcCluster, SECRET};
use partyline_tests::{http, http_unchecked, repo_root, within, Client};
use serde_json::Value;

/// The console token of the test gateway.
const TOKEN: &str = "console-token-for-the-tests-0123";

/// The operator the test acts as.
const USER: &str = "alice";

fn basic(user: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// Runs `partyline <args>` against the cluster; returns whether it succeeded and its stdout.
async fn partyline(c: &ProcCluster, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(partyline_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PARTYLINE_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("PARTYLINE_REDIS_URL", c.redis_url())
        .env("PARTYLINE_CLUSTER_SECRET", SECRET)
        .env("USER", "bob")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = format!("partyline {}", args.join(" "));
    let out = within(120, &what, cmd.output()).await.expect("runs partyline");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("{what} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

async fn json_of(c: &ProcCluster, args: &[&str]) -> Value {
    let (ok, out) = partyline(c, args).await;
    assert!(ok, "partyline {args:?} failed:\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("partyline {args:?} printed no JSON ({e}):\n{out}"))
}

fn node_state<'a>(overview: &'a Value, id: &str) -> Option<&'a Value> {
    overview["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

#[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 280)]
async fn the_console_and_the_operator_commands_show_and_steer_a_cluster() {
    let mut c = ProcCluster::builder().nodes(4).gateways(1).start().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_s = admin.to_string();
    let console_gw =
        c.add_gateway_with(&[("PARTYLINE_ADMIN_LISTEN", &admin_s), ("PARTYLINE_CONSOLE_TOKEN", TOKEN)]).await;
    let gw = c.gateway(console_gw).addr();
    let node_ids: Vec<String> = (0..4).map(|i| c.node(i).name().to_string()).collect();

    // A room with one connection (a known id) and something stored.
    let room = "console-room";
    let mut client = Client::connect(&format!("ws://{gw}/parties/main/{room}?_pk=conn-1")).await.expect("connects");
    client.recv_text().await; // the history
    client.send_text("hello console").await;
    assert_eq!(client.recv_text().await, "hello console");

    // Only with the token, and only on the admin listener.
    let res = http_unchecked(admin, "GET", "/console/", &[], b"").await;
    assert_eq!(res.status, 401);
    assert!(res.header("www-authenticate").is_some_and(|h| h.starts_with("Basic")), "{res:?}");
    assert!(!res.text().contains("<html"), "a 401 shows nothing else");
    let wrong = basic(USER, "not-the-token-at-all-0123");
    assert_eq!(
        http_unchecked(admin, "GET", "/console/api/overview", &[("authorization", &wrong)], b"").await.status,
        401
    );
    let auth = basic(USER, TOKEN);
    let page = http_unchecked(admin, "GET", "/console/", &[("authorization", &auth)], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("assets/console.js"), "{}", page.text());
    let bearer = format!("Bearer {TOKEN}");
    let overview = http_unchecked(admin, "GET", "/console/api/overview", &[("authorization", &bearer)], b"").await;
    assert_eq!(overview.status, 200, "{}", overview.text());
    assert_ne!(http(gw, "GET", "/console/", &[("authorization", &auth)], b"").await.status, 200);
    assert_eq!(http_unchecked(admin, "GET", "/metrics", &[], b"").await.status, 200, "the metrics stay open");

    // `partyline status --json`: every node ready, both gateways, the shard map.
    let status = json_of(&c, &["status", "--json"]).await;
    for id in &node_ids {
        let n = node_state(&status, id).unwrap_or_else(|| panic!("{id} missing: {status}"));
        assert_eq!(n["state"], "ready", "{n}");
    }
    assert_eq!(status["gateways"].as_array().map(Vec::len), Some(2), "{}", status["gateways"]);
    assert_eq!(status["shards"]["map"].as_array().map(Vec::len), Some(4096));
    assert!(status["rates"]["seconds"].as_f64().is_some_and(|s| s > 0.0), "{}", status["rates"]);
    let (ok, text) = partyline(&c, &["status"]).await;
    assert!(ok && text.contains("4 node(s)") && text.contains("per second"), "{text}");

    // `partyline room --json`: its owner, its connection, its storage.
    let lookup = json_of(&c, &["room", &format!("main/{room}"), "--json"]).await;
    let owner = lookup["owner"]["id"].as_str().unwrap_or_else(|| panic!("no owner: {lookup}")).to_string();
    assert!(node_ids.contains(&owner), "{lookup}");
    assert_eq!(lookup["running"], true, "{lookup}");
    assert!(lookup["connections"].as_array().unwrap().iter().any(|c| c["id"] == "conn-1"), "{lookup}");
    assert!(lookup["storage"]["keys"].as_u64().unwrap() >= 1, "{lookup}");
    assert!(lookup["storage"]["first_keys"].as_array().unwrap().iter().any(|k| k == "messages"), "{lookup}");

    // `partyline drain`: a node that does not own the room drains, stays up, drained.
    let others: Vec<&String> = node_ids.iter().filter(|id| **id != owner).collect();
    let (cli_drained, killed, console_drained) = (others[0].clone(), others[1].clone(), others[2].clone());
    let drained = json_of(&c, &["drain", &cli_drained, "--json", "--timeout", "90s"]).await;
    assert_eq!(drained["state"], "drained", "{drained}");
    assert_eq!(drained["shards"], 0, "{drained}");
    let i = c.node_index(&cli_drained).unwrap();
    assert!(c.node_mut(i).is_running(), "a drained node stays up until it is stopped");
    let events = http_unchecked(admin, "GET", "/console/api/events?n=50", &[("authorization", &bearer)], b"").await;
    let events: Value = serde_json::from_str(&events.text()).unwrap();
    assert!(
        events.as_array().unwrap().iter().any(|e| e["who"] == "bob" && e["source"] == cli_drained.as_str()),
        "the drain is recorded with who asked: {events}"
    );

    // Rooms on every node, kept in use as reconnecting clients keep them: once the killed
    // node's leases run out, the rooms of its shards start on the others (the map shows them
    // move).
    let rooms: Vec<String> = (0..24).map(|i| format!("spread-{i}")).collect();
    for r in &rooms {
        let res = http(gw, "POST", &format!("/parties/main/{r}"), &[], b"\"hi\"").await;
        assert_eq!(res.status, 200, "{r}: {}", res.text());
    }
    let keep_using = tokio::spawn(async move {
        loop {
            for r in &rooms {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    http_unchecked(gw, "GET", &format!("/parties/main/{r}"), &[], b""),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    // The page, in headless Chromium.
    let kill_pid = c.node(c.node_index(&killed).unwrap()).pid().expect("the node runs").to_string();
    let script = repo_root().join("tests/console/check.mjs");
    let modules = repo_root().join("tests/partykit-projects/node_modules/ws");
    assert!(modules.exists(), "the console check needs `ws`: run scripts/test.sh (npm ci in tests/partykit-projects)");
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", format!("http://{admin}/console/"))
        .env("CONSOLE_USER", USER)
        .env("CONSOLE_TOKEN", TOKEN)
        .env("ROOM", format!("main/{room}"))
        .env("CONN_ID", "conn-1")
        .env("KILL_PID", &kill_pid)
        .env("KILL_NODE", &killed)
        .env("DRAIN_NODE", &console_drained)
        // The nodes serving (the one drained from the command line is not).
        .env("NODES", [owner.as_str(), &killed, &console_drained].join(","))
        .env("WAIT_MS", "60000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let out = within(200, "the console check in Chromium", child.wait_with_output()).await.expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    keep_using.abort();
    assert!(out.status.success(), "the console check failed:\n{stdout}");

    // What the page did, as the command line sees it.
    let status = json_of(&c, &["status", "--json"]).await;
    let n = node_state(&status, &console_drained).unwrap_or_else(|| panic!("{console_drained} missing: {status}"));
    assert_eq!(n["state"], "drained", "{n}");
    assert_eq!(n["shards"], 0, "{n}");
    assert!(node_state(&status, &killed).is_none_or(|n| n["state"] == "gone" && n["shards"] == 0), "{status}");
    let events = http_unchecked(admin, "GET", "/console/api/events?n=100", &[("authorization", &bearer)], b"").await;
    let events: Value = serde_json::from_str(&events.text()).unwrap();
    assert!(
        events.as_array().unwrap().iter().any(|e| e["who"] == USER && e["source"] == console_drained.as_str()),
        "the console's drain is recorded with who asked: {events}"
    );
    // The room still answers, from the one node left or the one it was on.
    within(60, "the room to answer after the faults", async {
        loop {
            if http(gw, "GET", &format!("/parties/main/{room}"), &[], b"").await.text().contains("hello console") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
