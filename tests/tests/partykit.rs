//! PartyKit projects (TypeScript parties, partykit.json, npm dependencies) on the JS engine:
//! `examples/partykit` under `partyline dev` and through a cluster, checked with the real
//! `partysocket` and `y-partykit` clients (`examples/partykit/test/clients.mjs`, installed by
//! `scripts/test.sh` with `npm ci`); and the guarantees a JS party shares with Rust parties
//! (errors, the time limit, reload).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use partyline::client_text;
use partyline::{Env, Limits, PartyRegistry};
use partyline_gateway::EdgeLimits;
use partyline_js::{JsSettings, Project};
use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::TestCluster;
use partyline_tests::{close_payload, http, raw_upgrade, read_server_frame, repo_root, within, Client, DevServer};
use tokio::io::AsyncReadExt;

fn example() -> PathBuf {
    repo_root().join("examples/partykit")
}

async fn load(file: &Path, limits: &Limits) -> (PartyRegistry, Env) {
    let project = Project::load(file, limits, &JsSettings::default()).await.expect("the project loads");
    let registry = project.registry(PartyRegistry::new()).expect("registry");
    (registry, Env::new(project.config.vars.clone()))
}

/// Runs the example's client checks against `addr`.
async fn run_clients(addr: SocketAddr) {
    let dir = example();
    assert!(
        dir.join("node_modules/y-partykit").exists(),
        "the example project needs its npm packages: run scripts/test.sh (it runs `npm ci` in examples/partykit)"
    );
    run_node(&dir, &["test/clients.mjs", &addr.to_string()]).await;
}

/// Runs `node args...` in `dir` and asserts it printed ` passed, 0 failed` and exited 0.
async fn run_node(dir: &Path, args: &[&str]) {
    let child = tokio::process::Command::new("node")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let out = within(150, "the node checks", child.wait_with_output()).await.expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "node checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line:\n{stdout}");
}

#[timed_test]
async fn the_example_project_passes_the_client_checks_under_dev() {
    let (parties, env) = load(&example().join("partykit.json"), &Limits::default()).await;
    let s = DevServer::start_with(DevConfig { env: env.clone(), ..DevConfig::default() }, parties.clone()).await;
    run_clients(s.addr).await;
    s.stop().await;
    // On disk (what `partyline dev` uses): the store answers reads later, not at once, and the
    // storage quota is enforced; JS puts still finish at once.
    let dir = tempfile::tempdir().unwrap();
    let s = DevServer::start_with(DevConfig { env, ..DevServer::on_disk(dir.path()) }, parties).await;
    run_clients(s.addr).await;
    s.stop().await;
}

#[timed_test]
async fn the_example_project_passes_the_client_checks_through_a_cluster() {
    let (parties, env) = load(&example().join("partykit.json"), &Limits::default()).await;
    let c = TestCluster::builder().nodes(2).gateways(2).parties(parties, env).start().await;
    run_clients(c.gateway(0)).await;
    run_clients(c.gateway(1)).await;
}

/// A project in a temporary directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const CONFIG: &str = r#"{ "main": "server.ts" }"#;

#[timed_test]
async fn a_type_error_names_the_file_and_line() {
    let dir = project(&[("partykit.json", CONFIG), ("server.ts", "export default class {\n  x: number = ;\n}\n")]);
    let err = Project::load(&dir.path().join("partykit.json"), &Limits::default(), &JsSettings::default())
        .await
        .err()
        .expect("a syntax error");
    let text = format!("{err:#}");
    assert!(text.contains("server.ts:2:"), "{text}");
}

#[timed_test]
async fn a_missing_package_is_reported() {
    let dir = project(&[
        ("partykit.json", CONFIG),
        ("server.ts", "import x from \"not-installed\";\nexport default class { constructor(r) { x(r); } }\n"),
    ]);
    let err = Project::load(&dir.path().join("partykit.json"), &Limits::default(), &JsSettings::default())
        .await
        .err()
        .expect("a resolve error");
    let text = format!("{err:#}");
    assert!(text.contains("not-installed") && text.contains("npm install"), "{text}");
}

const FAULTY: &str = r#"
import type * as Party from "partykit/server";
export default class Faulty implements Party.Server {
  constructor(readonly room: Party.Room) {}
  async onMessage(message: string, sender: Party.Connection) {
    if (message === "loop") { while (true) {} }
    if (message === "throw") throw new Error("boom");
    if (message === "grow") { const a = []; while (true) a.push(new Array(100000).fill(1)); }
    if (message === "later") { setTimeout(() => this.room.broadcast("timer fired"), 20); return; }
    if (message === "fetch") {
      const res = await this.room.parties.main.get("other").fetch("/x", { method: "POST", body: "hi" });
      sender.send(`other said ${res.status} ${await res.text()}`);
      return;
    }
    sender.send(`echo ${message}`);
  }
  onError(conn: Party.Connection, err: Error) { conn.send(`error: ${err.message}`); }
  onRequest(req: Party.Request) { return new Response(`${this.room.id} got ${req.method} ${new URL(req.url).pathname}`); }
}
"#;

#[timed_test]
async fn js_parties_keep_the_room_guarantees() {
    let dir = project(&[("partykit.json", CONFIG), ("server.ts", FAULTY)]);
    let limits = Limits { handler_timeout: Duration::from_secs(1), ..Limits::default() };
    let project = Project::load(
        &dir.path().join("partykit.json"),
        &limits,
        &JsSettings { memory_bytes: 32 << 20, ..JsSettings::default() },
    )
    .await
    .unwrap();
    let parties = project.registry(PartyRegistry::new()).unwrap();
    let s = DevServer::start_with(DevConfig { limits, ..DevConfig::default() }, parties).await;

    let mut c = s.connect("/parties/main/r?_pk=a").await;
    c.send_text("hi").await;
    assert_eq!(c.recv_text().await, "echo hi");
    // A thrown error reaches onError.
    c.send_text("throw").await;
    assert_eq!(c.recv_text().await, "error: boom");
    // A timer outlives the handler and runs as an event of the room.
    c.send_text("later").await;
    assert_eq!(c.recv_text().await, "timer fired");
    // Calls to other rooms.
    c.send_text("fetch").await;
    assert_eq!(c.recv_text().await, "other said 200 other got POST /parties/main/other/x");
    // A runaway loop is stopped at the time limit; the error reaches onError, the room serves on.
    c.send_text("loop").await;
    let text = c.recv_text().await;
    assert!(text.starts_with("error: ") && text.contains("time limit"), "{text}");
    c.send_text("still there").await;
    assert_eq!(c.recv_text().await, "echo still there");
    // A room over its memory limit is restarted: its sockets are closed with 1011, and a new
    // connection reaches a fresh instance.
    c.send_text("grow").await;
    let (code, reason) = within(30, "the close", c.expect_close()).await;
    assert_eq!((code, reason.as_str()), (1011, partyline::client_text::ROOM_RESTARTED));
    let mut d = s.connect("/parties/main/r?_pk=b").await;
    d.send_text("back").await;
    assert_eq!(d.recv_text().await, "echo back");
    s.stop().await;
}

#[timed_test]
async fn dev_reloads_the_project_when_a_file_changes() {
    let v1 = "export default class { onRequest() { return new Response(\"one\"); } }\n";
    let v2 = "export default class { onRequest() { return new Response(\"two\"); } }\n";
    let dir = project(&[("partykit.json", CONFIG), ("server.ts", v1)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = dev_args();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(partyline_server::project::run_dev(
        dir.path().join("partykit.json"),
        args,
        DevConfig::default(),
        Default::default(),
        PartyRegistry::new(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let body = |addr| async move { partyline_tests::http(addr, "GET", "/parties/main/r", &[], b"").await.text() };
    within(20, "the first version", async {
        while body(addr).await != "one" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Make sure the new file has a later modification time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.path().join("server.ts"), v2).unwrap();
    within(30, "the reloaded version", async {
        while body(addr).await != "two" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let _ = stop.send(());
    within(30, "the server to stop", server).await.unwrap().unwrap();
}

/// The fixture projects (tests/partykit-projects), with their npm packages.
fn fixtures() -> PathBuf {
    let dir = repo_root().join("tests/partykit-projects");
    assert!(
        dir.join("node_modules/partysocket").exists(),
        "the fixture projects need their npm packages: run scripts/test.sh (it runs `npm ci` in tests/partykit-projects)"
    );
    dir
}

fn dev_args() -> partyline_server::project::ProjectArgs {
    partyline_server::project::ProjectArgs {
        config: None,
        js_memory_mb: 64,
        fetch_allow: vec!["*".into()],
        fetch_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// `partyline dev` of the project `config` on a free port, as the command runs it (bundles,
/// `PARTYKIT_HOST`, live reload, reload on change); stops when the sender is dropped or sent.
async fn dev_project(
    config: PathBuf,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    dev_project_with(config, DevConfig::default()).await
}

/// [`dev_project`] with `dev`'s settings.
async fn dev_project_with(
    config: PathBuf,
    dev: DevConfig,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(partyline_server::project::run_dev(
        config,
        dev_args(),
        dev,
        Default::default(),
        PartyRegistry::new(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    within(60, "the project to load", async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    (addr, stop, server)
}

/// Serves fixture `name` with `partyline dev` and runs its check.mjs against it.
async fn check_fixture(name: &str) {
    let dir = fixtures().join(name);
    let (addr, stop, server) = dev_project(dir.join("partykit.json")).await;
    run_node(&dir, &["check.mjs", &addr.to_string()]).await;
    let _ = stop.send(());
    within(30, "the server to stop", server).await.unwrap().unwrap();
}

#[timed_test]
async fn a_class_party_with_a_page_built_by_serve_build_works_in_chromium() {
    check_fixture("class-page").await;
}

/// The same page through a cluster: gateways build and serve the client bundle (its
/// `PARTYKIT_HOST` is the host the page came from), rooms run on the nodes.
#[timed_test]
async fn a_page_built_by_serve_build_is_served_by_the_gateways_of_a_cluster() {
    let dir = fixtures().join("class-page");
    let (parties, env) = load(&dir.join("partykit.json"), &Limits::default()).await;
    let c = TestCluster::builder().nodes(2).gateways(2).parties(parties, env).start().await;
    run_node(&dir, &["check.mjs", &c.gateway(1).to_string()]).await;
}

#[timed_test]
async fn a_wasm_module_built_by_build_command_runs_in_a_room() {
    check_fixture("wasm").await;
}

#[timed_test]
async fn a_page_with_live_reload_reloads_when_its_client_code_changes() {
    let client = "document.body.append(\"client v1\");\n";
    let config =
        r#"{ "main": "server.ts", "serve": { "path": "public", "build": { "entry": "client.ts", "live": true } } }"#;
    let page = "<!doctype html><html><body><script type=\"module\" src=\"/dist/client.js\"></script></body></html>\n";
    let dir = project(&[
        ("partykit.json", config),
        ("server.ts", "export default class { onRequest() { return new Response(\"ok\"); } }\n"),
        ("client.ts", client),
        ("public/index.html", page),
    ]);
    let (addr, stop, server) = dev_project(dir.path().join("partykit.json")).await;
    let script = fixtures().join("lib/live.mjs");
    let file = dir.path().join("client.ts");
    run_node(&fixtures(), &[script.to_str().unwrap(), &addr.to_string(), file.to_str().unwrap()]).await;
    let _ = stop.send(());
    within(30, "the server to stop", server).await.unwrap().unwrap();
}

#[timed_test]
async fn a_react_client_built_by_serve_build_renders_and_syncs_in_chromium() {
    check_fixture("react-page").await;
}

#[timed_test]
async fn a_yjs_editor_page_on_y_partykit_syncs_between_tabs_in_chromium() {
    check_fixture("yjs-editor").await;
}

/// Static hooks outside any room: `onSocket` (frames and close codes both ways, rooms reached
/// from its listeners), `onCron` through dev's `/__scheduled__` and by its schedule.
#[timed_test]
async fn on_socket_and_on_cron_run_outside_any_room() {
    let dir = fixtures().join("edge-hooks");
    let (addr, stop, server) = dev_project(dir.join("partykit.json")).await;
    run_node(&dir, &["check.mjs", &addr.to_string(), "--scheduled"]).await;
    let _ = stop.send(());
    within(30, "the server to stop", server).await.unwrap().unwrap();
}

/// A client of `onSocket` is watched by the gateway's liveness sweep, as a room's client is: one
/// that never answers gets a ping, then a close (1001), then is dropped, and the hook's socket
/// hears it went away (1006); one that answers pings stays, until a shutdown closes it (1001).
#[timed_test]
async fn on_socket_clients_that_stop_answering_pings_are_dropped() {
    let dir = fixtures().join("edge-hooks");
    let edge = EdgeLimits {
        ping_interval: Some(Duration::from_millis(300)),
        pong_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, stop, server) =
        dev_project_with(dir.join("partykit.json"), DevConfig { edge, ..Default::default() }).await;
    let (mut raw, head) = raw_upgrade(addr, "/socket?name=silent", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, opcode, payload) = read_server_frame(&mut raw).await;
    assert_eq!((opcode, String::from_utf8_lossy(&payload).into_owned()), (0x1, "hello silent".to_string()));
    let (_, opcode, _) = read_server_frame(&mut raw).await;
    assert_eq!(opcode, 0x9, "a ping");
    let (_, opcode, payload) = read_server_frame(&mut raw).await;
    assert_eq!(opcode, 0x8, "then a close frame");
    assert_eq!(close_payload(&payload), (1001, client_text::NO_PONG.into()));
    let mut buf = [0u8; 1024];
    within(5, "the silent socket to be dropped", async { while let Ok(1..) = raw.read(&mut buf).await {} }).await;
    within(10, "the hook to hear the close", async {
        loop {
            let closes = http(addr, "GET", "/parties/main/closes", &[], b"").await.text();
            if closes.contains(r#"{"name":"silent","code":1006"#) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A client that answers pings (as browsers do) stays.
    let mut alive = Client::connect(&format!("ws://{addr}/socket?name=alive")).await.expect("the upgrade");
    assert_eq!(alive.recv_text().await, "hello alive");
    assert_eq!(alive.recv_within(Duration::from_secs(2)).await, None, "nothing but pings for 2 s");
    alive.send_text("still here").await;
    assert_eq!(alive.recv_text().await, "echo still here");
    // A shutdown closes it with 1001, as it closes the sockets of rooms.
    let _ = stop.send(());
    assert_eq!(alive.expect_close().await, (1001, client_text::SHUTTING_DOWN.into()));
    within(30, "the server to stop", server).await.unwrap().unwrap();
}

/// The same through a cluster: `onSocket` on the gateways, each cron firing run by exactly one
/// of the nodes (the check finds every due time once), and no `/__scheduled__` route.
#[timed_test]
async fn on_socket_and_on_cron_run_through_a_cluster_once_per_due_time() {
    let dir = fixtures().join("edge-hooks");
    let (parties, env) = load(&dir.join("partykit.json"), &Limits::default()).await;
    let c = TestCluster::builder().nodes(2).gateways(2).parties(parties, env).start().await;
    run_node(&dir, &["check.mjs", &c.gateway(0).to_string(), "--cluster"]).await;
}
