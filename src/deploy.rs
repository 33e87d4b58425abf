//! `partyline build` and `partyline deploy`: a PartyKit project as one artifact, uploaded to a
//! running cluster, and the part of every node and gateway that serves the deployed version.
//!
//! `build` bundles the project (as `dev` would, without the dev server's host or live reload)
//! into an artifact (`partyline_js::artifact`). `deploy` checks it whole, signs it with the
//! cluster secret over a new version number and its content hash, stores it in Redis
//! (`partyline_cluster::redis::deploys`) and makes it the cluster's current version. Each node
//! and gateway polls the current version ([`serve_deploys`]); on a change it fetches the
//! artifact, checks size, hash and signature, compiles it, and swaps its parties: rooms that
//! start from then on run the new code, running rooms keep theirs until they stop. A version a
//! process cannot load is reported (log, `partyline status`, `partyline deploy --list`) and the
//! previous one keeps serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use partyline::storage::unix_ms;
use partyline::{Limits, LiveParties, PartyRegistry};
use partyline_cluster::redis::deploys::{Deploys, Served, VersionRecord, CHUNK_BYTES};
use partyline_cluster::redis::{Redis, RedisConfig};
use partyline_js::artifact::{self, Artifact, Manifest};
use partyline_js::{JsSettings, Project, CONFIG_FILE};

/// Largest artifact a cluster takes unless told otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How many versions are kept in Redis (older ones are deleted at each deploy; the current
/// one never is).
const KEEP_VERSIONS: usize = 10;

/// A process's report is refreshed this often, and one older than [`REPORT_MAX_AGE`] is a
/// process that is gone.
const REPORT_EVERY: Duration = Duration::from_secs(10);
const REPORT_MAX_AGE: Duration = Duration::from_secs(60);

/// Options of `partyline build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project's partykit.json (default: ./partykit.json).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the artifact (default: .partyline/project.partyline in the project).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn config_file(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    let file = config.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(CONFIG_FILE));
    if !file.is_file() {
        bail!("{} not found: run this in a PartyKit project or pass --config path/to/partykit.json", file.display());
    }
    Ok(file)
}

/// Bundles the project of `file` into an artifact: its bytes and where the project is.
async fn build_artifact(file: &Path) -> anyhow::Result<(Vec<u8>, PathBuf)> {
    let settings = JsSettings::default();
    let project = Project::load(file, &Limits::default(), &settings).await?;
    let bytes = project.artifact()?;
    Ok((bytes, project.config.root.clone()))
}

fn kib(n: u64) -> String {
    if n >= 10 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}

fn describe(m: &Manifest) -> String {
    let name = m.name.as_deref().unwrap_or("(unnamed)");
    let version = m.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
    format!("{name}{version}: parties {}, {} static file(s)", m.parties.join(", "), m.files)
}

/// `partyline build`.
pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let file = config_file(args.config.as_deref())?;
    let started = Instant::now();
    let (bytes, root) = build_artifact(&file).await?;
    let manifest = artifact::manifest_of(&bytes)?;
    let out = args.out.unwrap_or_else(|| root.join(".partyline").join("project.partyline"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!("Built {} ({}, {} ms)", out.display(), kib(bytes.len() as u64), started.elapsed().as_millis());
    println!("  {}", describe(&manifest));
    if !manifest.vars.is_empty() {
        println!("  vars inside (partykit.json `vars` and .env): {}", manifest.vars.join(", "));
    }
    if !manifest.crons.is_empty() {
        let crons: Vec<String> = manifest.crons.iter().map(|(n, c)| format!("{n} = {c:?}")).collect();
        println!("  crons: {}", crons.join(", "));
    }
    println!("  content hash {}", artifact::content_hash(&bytes));
    println!("Deploy it: partyline deploy {}", out.display());
    Ok(())
}

/// Options of `partyline deploy` besides where the cluster is.
#[derive(Debug, Args)]
pub struct DeployOptions {
    /// The artifact to deploy (from `partyline build`), or a project's partykit.json or
    /// directory to build first. Default: build ./partykit.json.
    pub artifact: Option<PathBuf>,
    /// List the deployed versions and what each process serves; deploy nothing.
    #[arg(long, conflicts_with_all = ["artifact", "rollback"])]
    pub list: bool,
    /// Serve an earlier version again: the one given, or the one before the current.
    #[arg(long, value_name = "VERSION", num_args = 0..=1, default_missing_value = "previous", conflicts_with = "artifact")]
    pub rollback: Option<String>,
    /// Largest artifact to upload; nodes and gateways refuse larger ones too
    /// (PARTYLINE_DEPLOY_MAX_BYTES on them).
    #[arg(long, env = "PARTYLINE_DEPLOY_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Move running rooms to the new version now instead of at their next start: rooms of
    /// parties that hibernate keep their sockets (the new code starts at their next event),
    /// others close theirs with 1012 and their clients reconnect.
    #[arg(long)]
    pub restart_rooms: bool,
    /// With --restart-rooms: rooms moved per second on each node.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub restart_rate: u32,
    /// Return once the version is stored, without waiting for the processes to serve it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for every process to serve the new version.
    #[arg(long, default_value = "60s", value_parser = crate::values::parse_duration)]
    pub wait_timeout: Duration,
}

fn who() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}

/// `partyline deploy`.
pub async fn deploy(opts: DeployOptions, redis: RedisConfig, secret: String) -> anyhow::Result<()> {
    let redis = Redis::connect(RedisConfig { response_timeout: Duration::from_secs(30), ..redis }).await?;
    let deploys = Deploys::of(&redis);
    if opts.list {
        return list(&deploys).await;
    }
    match deploys.secret_check().await? {
        Some(check) if check != artifact::secret_check(&secret) => bail!(
            "this cluster's nodes hold another cluster secret than the one given (PARTYLINE_CLUSTER_SECRET / --cluster-secret-file): nothing was deployed"
        ),
        Some(_) => {}
        None => eprintln!(
            "warning: no node of this cluster has published its secret check yet, so the secret cannot be checked; \
             nodes that hold another secret will refuse the version"
        ),
    }
    if let Some(which) = &opts.rollback {
        return rollback(&deploys, &secret, which, &opts).await;
    }
    let bytes = match &opts.artifact {
        Some(path) if path.is_file() && path.file_name().is_some_and(|n| n == CONFIG_FILE) => {
            build_artifact(path).await?.0
        }
        Some(path) if path.is_dir() => build_artifact(&path.join(CONFIG_FILE)).await?.0,
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => build_artifact(&config_file(None)?).await?.0,
    };
    if bytes.len() as u64 > opts.max_bytes {
        bail!(
            "the artifact is {} and the limit is {} (--max-bytes / PARTYLINE_DEPLOY_MAX_BYTES; the cluster's processes have the same limit): nothing was deployed",
            kib(bytes.len() as u64),
            kib(opts.max_bytes)
        );
    }
    let opened = Artifact::open(&bytes).map_err(|e| anyhow!("{e:#}: nothing was deployed"))?;
    let version = deploys.next_version().await?;
    let hash = artifact::content_hash(&bytes);
    let record = VersionRecord {
        version,
        hash: hash.clone(),
        bytes: bytes.len() as u64,
        chunks: bytes.len().div_ceil(CHUNK_BYTES).max(1) as u32,
        signature: artifact::sign(&secret, version, &hash),
        manifest: serde_json::to_value(&opened.manifest).expect("a manifest serializes"),
        deployed_at_ms: unix_ms(),
        by: who(),
    };
    deploys.put(&record, &bytes).await?;
    deploys.set_restart(version, opts.restart_rooms.then_some(opts.restart_rate)).await?;
    deploys.set_current(version).await?;
    let pruned = deploys.prune(KEEP_VERSIONS).await?;
    println!("Deployed version {version} ({}, {})", describe(&opened.manifest), kib(bytes.len() as u64));
    if !pruned.is_empty() {
        println!("  deleted old versions {pruned:?} (the newest {KEEP_VERSIONS} are kept)");
    }
    if !opts.no_wait {
        wait_for(&deploys, version, opts.wait_timeout).await?;
    }
    Ok(())
}

async fn rollback(deploys: &Deploys, secret: &str, which: &str, opts: &DeployOptions) -> anyhow::Result<()> {
    let current = deploys.current().await?;
    let versions = deploys.list().await?;
    let target = if which == "previous" {
        let current = current.ok_or_else(|| anyhow!("nothing is deployed yet: there is nothing to roll back"))?;
        versions
            .iter()
            .rev()
            .find(|r| r.version < current)
            .ok_or_else(|| anyhow!("version {current} is the oldest one stored: there is nothing before it"))?
            .clone()
    } else {
        let n: u64 = which.parse().map_err(|_| anyhow!("--rollback takes a version number, got {which:?}"))?;
        let stored: Vec<u64> = versions.iter().map(|r| r.version).collect();
        versions
            .iter()
            .find(|r| r.version == n)
            .ok_or_else(|| anyhow!("version {n} is not stored (stored: {stored:?})"))?
            .clone()
    };
    if !artifact::verify(secret, target.version, &target.hash, &target.signature) {
        bail!("version {} is not signed with this cluster secret: not serving it", target.version);
    }
    if deploys.artifact(&target).await?.is_none() {
        bail!("the artifact of version {} is incomplete in Redis: not serving it", target.version);
    }
    deploys.set_restart(target.version, opts.restart_rooms.then_some(opts.restart_rate)).await?;
    deploys.set_current(target.version).await?;
    let from = current.map(|c| format!(" (was {c})")).unwrap_or_default();
    println!("Serving version {} again{from}", target.version);
    if !opts.no_wait {
        wait_for(deploys, target.version, opts.wait_timeout).await?;
    }
    Ok(())
}

/// Waits until every process that reports serves `version`, printing who does.
async fn wait_for(deploys: &Deploys, version: u64, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let served = deploys.served(unix_ms(), REPORT_MAX_AGE.as_millis() as u64).await?;
        let failed: Vec<String> = served
            .iter()
            .filter_map(|(n, s)| s.failed.as_ref().filter(|(v, _)| *v == version).map(|(_, e)| format!("{n}: {e}")))
            .collect();
        if !failed.is_empty() {
            bail!(
                "version {version} failed to load on {} process(es); they keep serving the version they had:\n  {}",
                failed.len(),
                failed.join("\n  ")
            );
        }
        let behind: Vec<&String> = served.iter().filter(|(_, s)| s.version != Some(version)).map(|(n, _)| n).collect();
        if behind.is_empty() {
            println!(
                "  {} process(es) serve version {version} ({:.1} s after it was stored)",
                served.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("after {timeout:?}, these processes do not serve version {version} yet: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn list(deploys: &Deploys) -> anyhow::Result<()> {
    let current = deploys.current().await?;
    let versions = deploys.list().await?;
    if versions.is_empty() {
        println!("Nothing deployed yet (partyline deploy path/to/artifact).");
    }
    for r in &versions {
        let mark = if Some(r.version) == current { "*" } else { " " };
        let manifest: Option<Manifest> = serde_json::from_value(r.manifest.clone()).ok();
        let what = manifest.as_ref().map(describe).unwrap_or_else(|| "(manifest unreadable)".into());
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(r.deployed_at_ms));
        println!(
            "{mark} {:>4}  {when}  {:<10} {}  {what}  by {}",
            r.version,
            kib(r.bytes),
            &r.hash[..19.min(r.hash.len())],
            r.by
        );
    }
    print_served(deploys).await
}

/// What each process serves (for `deploy --list` and `status`).
pub async fn print_served(deploys: &Deploys) -> anyhow::Result<()> {
    let served = deploys.served(unix_ms(), REPORT_MAX_AGE.as_millis() as u64).await?;
    if served.is_empty() {
        return Ok(());
    }
    println!("{:<40} serves", "process");
    for (name, s) in served {
        let v = s.version.map(|v| format!("version {v}")).unwrap_or_else(|| "no deployed version".into());
        let failed = s.failed.map(|(v, e)| format!(" (version {v} failed to load: {e})")).unwrap_or_default();
        println!("{name:<40} {v}{failed}");
    }
    Ok(())
}

/// What this process serves, for its metrics: the deployed version (0: none) and the versions
/// it refused.
#[derive(Debug, Default)]
pub struct DeployStatus {
    /// The version served (0: none yet).
    pub version: std::sync::atomic::AtomicU64,
    /// Versions that failed to load.
    pub failures: std::sync::atomic::AtomicU64,
}

/// This process's [`DeployStatus`] (a process is one node or one gateway).
pub fn status() -> &'static DeployStatus {
    static STATUS: std::sync::OnceLock<DeployStatus> = std::sync::OnceLock::new();
    STATUS.get_or_init(DeployStatus::default)
}

/// One metric of [`status`]: name, help, kind, and how to read the value.
pub type DeployMetric = (String, &'static str, partyline_node::metrics::FnKind, fn() -> i64);

/// The metrics of [`status`], prefixed `partyline_<role>_` (`node`, `gateway`).
pub fn metrics(role: &str) -> [DeployMetric; 2] {
    use partyline_node::metrics::FnKind;
    use std::sync::atomic::Ordering::Relaxed;
    [
        (
            format!("partyline_{role}_deploy_version"),
            "The deployed version (partyline deploy) this process serves; 0: none.",
            FnKind::Gauge,
            || status().version.load(Relaxed) as i64,
        ),
        (
            format!("partyline_{role}_deploy_load_failures"),
            "Deployed versions this process refused to load (it kept serving the one it had).",
            FnKind::Counter,
            || status().failures.load(Relaxed) as i64,
        ),
    ]
}

/// How a node or gateway serves deployed versions.
#[derive(Clone, Debug)]
pub struct DeploySettings {
    /// How often the current version is read from Redis.
    pub poll: Duration,
    /// Largest artifact loaded.
    pub max_bytes: u64,
}

/// Adds the live part deployed versions go into to `parties`.
pub fn live(parties: PartyRegistry) -> (PartyRegistry, LiveParties) {
    let live = LiveParties::new();
    (parties.with_live(live.clone()), live)
}

/// What a process that serves deployed versions needs.
pub struct DeployServer {
    /// Its Redis.
    pub redis: RedisConfig,
    /// The secrets it takes signatures from (the cluster secret first).
    pub secrets: Vec<String>,
    /// Its name in reports.
    pub name: String,
    /// Where the deployed parties go.
    pub live: LiveParties,
    /// The parties it has besides them (a deployed party may not take their names).
    pub fixed: Vec<String>,
    /// Room limits.
    pub limits: Limits,
    /// JS engine settings.
    pub js: JsSettings,
    /// Poll and size settings.
    pub settings: DeploySettings,
    /// Publish the secret check (nodes).
    pub publish_check: bool,
}

/// Serves the cluster's current deployed version until the process ends (see the module docs).
pub async fn serve_deploys(server: DeployServer) {
    let redis = loop {
        match Redis::connect(RedisConfig { response_timeout: Duration::from_secs(10), ..server.redis.clone() }).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "deploys: cannot reach Redis yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let deploys = Deploys::of(&redis);
    let mut served = Served { version: None, failed: None, at_ms: 0 };
    let mut reported = None::<(Instant, Option<u64>, Option<u64>)>;
    loop {
        if server.publish_check {
            if let Err(e) = deploys.set_secret_check(&artifact::secret_check(&server.secrets[0])).await {
                tracing::debug!(error = %e, "deploys: publishing the secret check failed");
            }
        }
        match deploys.current().await {
            Ok(Some(v)) if Some(v) != served.version && served.failed.as_ref().map(|f| f.0) != Some(v) => {
                let started = Instant::now();
                match load_version(&deploys, &server, v).await {
                    Ok(Loaded::Serving(registry)) => {
                        let restart = deploys.restart_for(v).await.unwrap_or_else(|e| {
                            tracing::warn!(version = v, error = %e, "deploys: reading --restart-rooms failed; rooms move at their next start");
                            None
                        });
                        server.live.replace_with(&registry, restart);
                        tracing::info!(
                            version = v,
                            ms = started.elapsed().as_millis() as u64,
                            "serving deployed version"
                        );
                        served.version = Some(v);
                        served.failed = None;
                        status().version.store(v, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Loaded::Retry(why)) => tracing::debug!(version = v, "deploys: {why}; retrying"),
                    Err(e) => {
                        let keeps =
                            served.version.map(|v| format!("version {v}")).unwrap_or_else(|| "no version".into());
                        tracing::error!(version = v, error = %format!("{e:#}"), "deployed version refused; still serving {keeps}");
                        served.failed = Some((v, format!("{e:#}")));
                        status().failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            // Back on the version it serves (a rollback after a refused one): nothing failed.
            Ok(Some(v)) if Some(v) == served.version => served.failed = None,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "deploys: reading the current version failed"),
        }
        let state = (served.version, served.failed.as_ref().map(|f| f.0));
        let due = reported.is_none_or(|(at, v, f)| (v, f) != state || at.elapsed() >= REPORT_EVERY);
        if due {
            served.at_ms = unix_ms();
            if deploys.report(&server.name, &served).await.is_ok() {
                reported = Some((Instant::now(), state.0, state.1));
            }
        }
        tokio::time::sleep(server.settings.poll).await;
    }
}

enum Loaded {
    Serving(PartyRegistry),
    /// Not there yet (a record without its chunks, Redis unreachable): try again.
    Retry(String),
}

async fn load_version(deploys: &Deploys, server: &DeployServer, version: u64) -> anyhow::Result<Loaded> {
    let record = match deploys.record(version).await {
        Ok(Some(r)) => r,
        Ok(None) => bail!("version {version} has no record in Redis"),
        Err(e) => return Ok(Loaded::Retry(e.to_string())),
    };
    if record.bytes > server.settings.max_bytes {
        bail!(
            "version {version} is {} bytes, over this process's limit of {} (PARTYLINE_DEPLOY_MAX_BYTES)",
            record.bytes,
            server.settings.max_bytes
        );
    }
    if !server.secrets.iter().any(|s| artifact::verify(s, version, &record.hash, &record.signature)) {
        bail!("version {version} is not signed with this cluster's secret");
    }
    let bytes = match deploys.artifact(&record).await {
        Ok(Some(b)) => b,
        Ok(None) => bail!("the artifact of version {version} is incomplete in Redis"),
        Err(e) => return Ok(Loaded::Retry(e.to_string())),
    };
    let hash = artifact::content_hash(&bytes);
    if hash != record.hash {
        bail!(
            "the artifact of version {version} in Redis has content hash {hash}, its signed record says {}",
            record.hash
        );
    }
    let opened = Artifact::open(&bytes)?;
    if let Some(clash) = opened.manifest.parties.iter().find(|p| server.fixed.contains(p)) {
        bail!("party {clash:?} of version {version} is also one this process serves on its own");
    }
    Ok(Loaded::Serving(opened.load(&server.limits, &server.js).await?))
}
