//! `partyline build` and `partyline deploy` against a running process cluster (a
//! `redis-server`, two nodes, two gateways of the stock binary): a project written by the test
//! is deployed as version 1, then version 2 (a visible change in its handlers) with
//! `--restart-rooms`, then rolled back, all under load from chat clients (non-hibernating
//! rooms: their sockets close with 1012 and they reconnect) and hibernating clients (never
//! disconnected). Every acknowledged write must still be stored at the end. Then artifacts that
//! are tampered with, truncated, or signed with another secret are refused and change nothing.
//!
//! Times are measured and printed (how long until every process serves a version, until every
//! room answers with it), never asserted: every wait is for an outcome, bounded by [`within`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partyline_cluster::redis::deploys::{Deploys, VersionRecord};
use partyline_test_macros::timed_test;
use partyline_tests::procs::{partyline_bin, ProcCluster, SECRET};
use partyline_tests::{http, within, Client, Received};

/// Both parties: every message is counted in storage and acknowledged after the write (the
/// output gate holds the answer until the write is durable), with the code's version.
const PARTY: &str = r#"
const VERSION = "__VERSION__";
export default class Counter {
  __OPTIONS__
  constructor(room) {
    this.room = room;
  }
  onConnect(conn) {
    conn.send(`hello ${VERSION}`);
  }
  async onMessage(message, sender) {
    const n = ((await this.room.storage.get("count")) ?? 0) + 1;
    await this.room.storage.put("count", n);
    sender.send(`${VERSION} ack ${message}`);
  }
  async onRequest() {
    const n = (await this.room.storage.get("count")) ?? 0;
    return new Response(`${VERSION} ${n}`);
  }
}
"#;

const CHAT_ROOMS: usize = 6;
const QUIET_ROOMS: usize = 6;

/// Writes version `version` of the project into `dir`.
fn write_project(dir: &Path, version: &str) {
    let config =
        r#"{ "name": "deploy-test", "main": "chat.js", "parties": { "quiet": "quiet.js" }, "serve": "public" }"#;
    std::fs::write(dir.join("partykit.json"), config).unwrap();
    std::fs::write(dir.join("package.json"), format!(r#"{{ "name": "deploy-test", "version": "{version}.0.0" }}"#))
        .unwrap();
    let chat = PARTY.replace("__VERSION__", version).replace("__OPTIONS__", "");
    let quiet = PARTY.replace("__VERSION__", version).replace("__OPTIONS__", "static options = { hibernate: true };");
    std::fs::write(dir.join("chat.js"), chat).unwrap();
    std::fs::write(dir.join("quiet.js"), quiet).unwrap();
    std::fs::create_dir_all(dir.join("public")).unwrap();
    std::fs::write(dir.join("public/index.html"), format!("<h1>{version}</h1>")).unwrap();
}

/// Runs `partyline args...` against the cluster; (success, stdout + stderr).
async fn partyline(c: &ProcCluster, args: &[&str], secret: &str) -> (bool, String) {
    let out = tokio::process::Command::new(partyline_bin())
        .args(args)
        .env("PARTYLINE_REDIS_URL", c.redis_url())
        .env("PARTYLINE_CLUSTER_SECRET", secret)
        .env_remove("PARTYLINE_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = within(120, &format!("partyline {args:?}"), out).await.expect("partyline runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `partyline build` of the project in `dir` into `out`.
async fn build(dir: &Path, out: &Path) {
    let config = dir.join("partykit.json");
    let run = tokio::process::Command::new(partyline_bin())
        .args(["build", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .env_remove("PARTYLINE_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = within(120, "partyline build", run).await.expect("partyline runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "partyline build failed: {text}");
    println!("{text}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits until every node and gateway reports serving `version`; the time since `since`.
async fn all_serve(c: &ProcCluster, version: u64, since: Instant) -> Duration {
    let deploys = Deploys::of(c.redis());
    within(60, &format!("every process to serve version {version}"), async {
        loop {
            let served = deploys.served(now_ms(), 60_000).await.unwrap();
            if served.len() == 4 && served.values().all(|s| s.version == Some(version)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    since.elapsed()
}

/// `GET path` through gateway `gw`: the body of a 200.
async fn get(gw: SocketAddr, path: &str) -> String {
    let res = http(gw, "GET", path, &[], b"").await;
    assert_eq!(res.status, 200, "GET {path}: {}", res.text());
    res.text()
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged messages per room.
    acked: BTreeMap<String, u64>,
    /// The version each room last answered with.
    version: BTreeMap<String, String>,
    /// Closes of hibernating sockets (there must be none).
    quiet_closed: Vec<String>,
    /// Reconnects of chat clients after a 1012.
    reconnects: u64,
}

/// One client per room, sending one message at a time until `stop`: chat clients reconnect
/// after a close, hibernating ones record it.
async fn client(gw: SocketAddr, party: &'static str, room: String, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let url = format!("ws://{gw}/parties/{party}/{room}");
    let mut ws = Client::connect(&url).await.expect("connect");
    let mut i = 0u64;
    'outer: while !stop.load(Ordering::Relaxed) {
        i += 1;
        let text = format!("m{i}");
        if ws.try_send_text(&text).await.is_err() {
            continue;
        }
        loop {
            match ws.recv().await {
                Received::Text(t) if t.starts_with("hello ") => continue,
                Received::Text(t) => {
                    let (version, rest) = t.split_once(' ').expect("version first");
                    assert_eq!(rest, format!("ack {text}"), "{room}");
                    let mut s = seen.lock().unwrap();
                    *s.acked.entry(room.clone()).or_default() += 1;
                    s.version.insert(room.clone(), version.to_string());
                    break;
                }
                other => {
                    if party == "quiet" {
                        seen.lock().unwrap().quiet_closed.push(format!("{room}: {other:?}"));
                        break 'outer;
                    }
                    assert!(
                        matches!(other, Received::Close(1012, _)),
                        "chat room {room}: expected a 1012 close, got {other:?}"
                    );
                    seen.lock().unwrap().reconnects += 1;
                    ws = within(30, "a reconnect", async {
                        loop {
                            if let Ok(ws) = Client::connect(&url).await {
                                return ws;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })
                    .await;
                    continue 'outer;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rooms() -> Vec<(&'static str, String)> {
    let chat = (0..CHAT_ROOMS).map(|i| ("main", format!("chat-{i}")));
    chat.chain((0..QUIET_ROOMS).map(|i| ("quiet", format!("quiet-{i}")))).collect()
}

/// Waits until every room of the load answered with `version`; the time since `since`.
async fn rooms_answer(seen: &Arc<Mutex<Seen>>, version: &str, since: Instant) -> Duration {
    within(60, &format!("every room to answer with {version}"), async {
        loop {
            {
                let s = seen.lock().unwrap();
                if s.version.len() == CHAT_ROOMS + QUIET_ROOMS && s.version.values().all(|v| v == version) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    since.elapsed()
}

/// The "running rooms moved" lines of the nodes' logs (rooms and milliseconds).
fn restarts_logged(c: &ProcCluster) -> Vec<String> {
    c.nodes()
        .iter()
        .flat_map(|n| {
            n.log().lines().filter(|l| l.contains("running rooms moved")).map(String::from).collect::<Vec<_>>()
        })
        .collect()
}

#[timed_test(secs = 200)]
async fn a_project_is_deployed_replaced_and_rolled_back_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let (a1, a2) = (artifacts.path().join("v1.partyline"), artifacts.path().join("v2.partyline"));
    let c = ProcCluster::builder().nodes(2).gateways(2).env("PARTYLINE_REBALANCE_MAX_SHARDS", "0").start().await;
    let gws = c.gateway_addrs();
    let deploys = Deploys::of(c.redis());

    // Version 1.
    write_project(dir.path(), "v1");
    build(dir.path(), &a1).await;
    let (ok, text) = partyline(&c, &["deploy", a1.to_str().unwrap(), "--no-wait"], SECRET).await;
    assert!(ok, "{text}");
    println!("{text}");
    let took = all_serve(&c, 1, Instant::now()).await;
    println!("version 1: every process serves it {} ms after `partyline deploy` returned", took.as_millis());
    for gw in &gws {
        assert_eq!(get(*gw, "/parties/main/probe").await, "v1 0");
        assert_eq!(get(*gw, "/").await, "<h1>v1</h1>");
    }

    // The load: one client per room, half of them on each gateway.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, (party, room)) in rooms().into_iter().enumerate() {
        load.push(tokio::spawn(client(gws[i % 2], party, room, seen.clone(), stop.clone())));
    }
    rooms_answer(&seen, "v1", Instant::now()).await;

    // Version 2, running rooms moved now.
    write_project(dir.path(), "v2");
    build(dir.path(), &a2).await;
    let (ok, text) = partyline(&c, &["deploy", a2.to_str().unwrap(), "--restart-rooms", "--no-wait"], SECRET).await;
    assert!(ok, "{text}");
    let since = Instant::now();
    let took = all_serve(&c, 2, since).await;
    let rooms_took = rooms_answer(&seen, "v2", since).await;
    println!(
        "version 2 with --restart-rooms: after `partyline deploy` returned, every process serves it in {} ms, every room answers with it in {} ms",
        took.as_millis(),
        rooms_took.as_millis()
    );
    for gw in &gws {
        assert_eq!(get(*gw, "/").await, "<h1>v2</h1>");
        assert!(get(*gw, "/parties/main/probe").await.starts_with("v2 "), "a room that was running moved to v2");
    }

    // Rollback to version 1.
    // As fast as the nodes go (the default rate, 100 a second, is what version 2 used).
    let (ok, text) =
        partyline(&c, &["deploy", "--rollback", "--restart-rooms", "--restart-rate", "100000", "--no-wait"], SECRET)
            .await;
    assert!(ok, "{text}");
    assert!(text.contains("Serving version 1 again (was 2)"), "{text}");
    let since = Instant::now();
    let took = all_serve(&c, 1, since).await;
    let rooms_took = rooms_answer(&seen, "v1", since).await;
    println!(
        "rollback to version 1: after `partyline deploy --rollback` returned, every process serves it in {} ms, every room answers with it in {} ms",
        took.as_millis(),
        rooms_took.as_millis()
    );

    // The load stops; every acknowledged write is stored.
    let acked_before = seen.lock().unwrap().acked.values().sum::<u64>();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        within(30, "a client to stop", task).await.expect("a client task");
    }
    let s = std::mem::take(&mut *seen.lock().unwrap());
    assert!(s.quiet_closed.is_empty(), "hibernating clients were disconnected: {:?}", s.quiet_closed);
    assert!(
        s.reconnects >= CHAT_ROOMS as u64,
        "every chat room restarted (twice, unless a client was reconnecting), got {} reconnects",
        s.reconnects
    );
    for (party, room) in rooms() {
        let body = get(gws[0], &format!("/parties/{party}/{room}")).await;
        let stored: u64 = body.strip_prefix("v1 ").expect("version 1 answers").parse().unwrap();
        let acked = s.acked[&room];
        assert!(stored >= acked, "{party}/{room}: {acked} writes acknowledged, {stored} stored");
    }
    println!(
        "load: {} acknowledged writes ({} before the rollback settled), all stored; {} chat reconnects after 1012; no hibernating socket closed",
        s.acked.values().sum::<u64>(),
        acked_before,
        s.reconnects
    );
    for line in restarts_logged(&c) {
        println!("node log: {line}");
    }

    // Refused: a tampered artifact, a truncated one, a wrong secret. Nothing changes.
    let bytes = std::fs::read(&a2).unwrap();
    let tampered = artifacts.path().join("tampered.partyline");
    let mut t = bytes.clone();
    let at = t.len() - 40;
    t[at] ^= 0x20;
    std::fs::write(&tampered, &t).unwrap();
    let truncated = artifacts.path().join("truncated.partyline");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cases: [(&Path, &str, &str); 3] = [
        (&tampered, SECRET, "the artifact is corrupt: its content hash is"),
        (&truncated, SECRET, "the artifact is truncated"),
        (&a2, "another-cluster-secret-entirely", "hold another cluster secret"),
    ];
    for (file, secret, expected) in cases {
        let (ok, text) = partyline(&c, &["deploy", file.to_str().unwrap(), "--no-wait"], secret).await;
        assert!(!ok && text.contains(expected) && text.contains("nothing was deployed"), "{}: {text}", file.display());
    }
    assert_eq!(deploys.current().await.unwrap(), Some(1));
    assert_eq!(deploys.list().await.unwrap().len(), 2, "no version was added");

    // A version planted in Redis by someone without the cluster secret: every process refuses
    // it and keeps serving version 1.
    let hash = partyline_js::artifact::content_hash(&bytes);
    let planted = VersionRecord {
        version: 99,
        hash: hash.clone(),
        bytes: bytes.len() as u64,
        chunks: 1,
        signature: partyline_js::artifact::sign("another-cluster-secret-entirely", 99, &hash),
        manifest: serde_json::json!({}),
        deployed_at_ms: now_ms(),
        by: "intruder".into(),
    };
    deploys.put(&planted, &bytes).await.unwrap();
    deploys.set_current(99).await.unwrap();
    within(60, "every process to refuse version 99", async {
        loop {
            let served = deploys.served(now_ms(), 60_000).await.unwrap();
            if served.len() == 4 && served.values().all(|s| s.failed.as_ref().is_some_and(|f| f.0 == 99)) {
                for (name, s) in &served {
                    assert_eq!(s.version, Some(1), "{name} keeps serving version 1");
                    let why = &s.failed.as_ref().unwrap().1;
                    assert!(why.contains("not signed with this cluster's secret"), "{name}: {why}");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for gw in &gws {
        assert_eq!(get(*gw, "/parties/main/after-planting").await, "v1 0");
    }
    let metrics = get(gws[0], "/_partyline/metrics").await;
    assert!(metrics.contains("partyline_gateway_deploy_version 1\n"), "{metrics}");
    assert!(metrics.contains("partyline_gateway_deploy_load_failures_total 1\n"), "{metrics}");
    let (ok, status) = partyline(&c, &["status"], SECRET).await;
    assert!(ok && status.contains("version 99 failed to load"), "{status}");

    // Pointing the cluster back at version 1 clears the refusal everywhere.
    let (ok, text) = partyline(&c, &["deploy", "--rollback", "1"], SECRET).await;
    assert!(ok && text.contains("Serving version 1 again (was 99)"), "{text}");
    within(60, "every process to report version 1 and no refusal", async {
        loop {
            let served = deploys.served(now_ms(), 60_000).await.unwrap();
            if served.len() == 4 && served.values().all(|s| s.version == Some(1) && s.failed.is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// An image with the artifact baked in: nodes and gateways given `PARTYLINE_ARTIFACT` serve it
/// from their start, with no deploy and nothing bundled.
#[timed_test(secs = 120)]
async fn nodes_and_gateways_serve_an_artifact_given_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("baked.partyline");
    write_project(dir.path(), "baked");
    build(dir.path(), &artifact).await;
    let c =
        ProcCluster::builder().nodes(1).gateways(1).env("PARTYLINE_ARTIFACT", artifact.to_str().unwrap()).start().await;
    let gw = c.gateway(0).addr();
    assert_eq!(get(gw, "/").await, "<h1>baked</h1>");
    assert_eq!(get(gw, "/parties/quiet/q1").await, "baked 0");
    let mut ws = Client::connect(&format!("ws://{gw}/parties/main/r1")).await.expect("connect");
    assert_eq!(ws.recv().await, Received::Text("hello baked".into()));
    ws.send_text("one").await;
    assert_eq!(ws.recv().await, Received::Text("baked ack one".into()));
    // The stock binary's example parties gave way to the project.
    assert_eq!(http(gw, "GET", "/parties/echo/r1", &[], b"").await.status, 404);
}
