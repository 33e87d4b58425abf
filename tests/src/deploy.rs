//! Running the `partyline` binary the way deployments do: real processes with a chosen
//! environment (nothing inherited but `PATH` and `HOME`), logs kept in a temporary directory,
//! and waits on HTTP health endpoints. Used by the ops and compose suites.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::HttpResponse;

/// The `partyline` binary next to this test's own executable (`cargo build --bin partyline`
/// puts it there; scripts/test.sh builds it before the tests).
pub fn partyline_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = dir.join("partyline");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin partyline` (scripts/test.sh does)", bin.display());
    bin
}

/// A free TCP port on `ip` (bound, then released).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).expect("bind a free port").local_addr().unwrap().port()
}

/// A running process, killed when dropped.
pub struct Proc {
    /// Its name in messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` and exactly `env` (plus `PATH` and `HOME`), its output in
    /// `<logs>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)], logs: &Path) -> Proc {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create a log file");
        let err = out.try_clone().expect("clone the log file");
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
        for var in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {name} ({}): {e}", program.display()));
        Proc { name: name.to_string(), child, log }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with its log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// Waits (up to `secs`) for a one-shot process to exit, and panics with its log unless it
    /// exited successfully.
    pub async fn wait_success(&mut self, secs: u64) {
        match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => panic!("{} exited ({status}):\n{}", self.name, self.log_tail()),
            Ok(Err(e)) => panic!("{}: {e}", self.name),
            Err(_) => panic!("{} did not finish within {secs}s:\n{}", self.name, self.log_tail()),
        }
    }

    /// Sends SIGTERM and waits (bounded) for it to exit.
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// GET `path` on `addr`: an admin endpoint, or a readiness poll (its answers are the operator's,
/// not held against the client texts of [`crate::client_texts`]).
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    crate::http_unchecked(addr, "GET", path, &[], b"").await
}

/// Waits until GET `path` on `addr` answers 200 (within `secs`), checking that every process
/// in `procs` still runs; panics with their logs otherwise.
pub async fn wait_ok(addr: SocketAddr, path: &str, secs: u64, procs: &mut [&mut Proc]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let conn = tokio::net::TcpStream::connect(addr).await.ok()?;
            drop(conn);
            Some(get(addr, path).await)
        })
        .await;
        if let Ok(Some(res)) = answered {
            if res.status == 200 {
                return;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}\n{}", p.name, p.log_tail())).collect();
            panic!("http://{addr}{path} did not answer 200 within {secs}s\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled sample (`name value`) in OpenMetrics text, or of the first
/// sample whose name and labels start with `name` (e.g. `foo_count{event="message"`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let matches = series == name || (name.contains('{') && series.starts_with(name));
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}
