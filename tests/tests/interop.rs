//! The real npm `partysocket` client, run under Node against `partyline dev`. The checks live in
//! `tests/interop/partysocket.mjs`; `scripts/test.sh` installs its packages (`npm ci`).

use std::path::PathBuf;
use std::process::Stdio;

use partyline_server::dev::DevConfig;
use partyline_tests::{within, DevServer};

/// The repository root (this crate lives in `tests/`).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Runs the interop script against `addr`; returns its output, failing the test when any check
/// failed.
pub async fn run_partysocket_checks(addr: std::net::SocketAddr) -> String {
    let root = repo_root();
    let script = root.join("tests/interop/partysocket.mjs");
    let modules = root.join("tests/interop/node_modules/partysocket");
    assert!(
        modules.exists(),
        "the interop test needs its npm packages: run scripts/test.sh (it runs `npm ci` in tests/interop)"
    );
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(addr.to_string())
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the partysocket interop test");
    let out = within(120, "the partysocket interop script", child.wait_with_output()).await.expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "partysocket checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line:\n{stdout}");
    stdout
}

#[tokio::test]
async fn partysocket_works_against_dev() {
    let s = DevServer::start(DevConfig::default()).await;
    run_partysocket_checks(s.addr).await;
}
