//! Serving a PartyKit project (`partykit.json` with TypeScript/JavaScript parties) through
//! `partyline-js`: the flags, the registry a project adds to, and `partyline dev`'s reload on
//! change.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use partyline::{Env, Limits, PartyRegistry};
use partyline_js::{FetchPolicy, JsSettings, Project, CONFIG_FILE};

use crate::dev::{self, DevConfig};

/// Options for PartyKit projects.
#[derive(Debug, Args, Clone)]
pub struct ProjectArgs {
    /// A PartyKit project's partykit.json to serve (`dev` also picks up ./partykit.json). Its
    /// `main` and `parties` (TypeScript or JavaScript) are bundled and served, `vars` and `.env`
    /// reach `room.env` and `process.env`, `define` and `build` apply, `serve` is answered as
    /// static files and `serve.build` (the page's client code) is bundled and served from
    /// memory.
    #[arg(long = "config", env = "PARTYLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A project built by `partyline build` to serve (nodes and gateways; an image with the
    /// artifact baked in): loaded at start, nothing is bundled. Not with --config.
    #[arg(long, env = "PARTYLINE_ARTIFACT", value_name = "FILE", conflicts_with = "config")]
    pub artifact: Option<PathBuf>,
    /// Heap limit in MiB of each JS party's realm in this process, which its rooms here share
    /// (as the Durable Objects of a Workers isolate, 128 MiB there too); over it, the party's
    /// rooms in this process are restarted (their sockets closed with 1011) and the error logged.
    #[arg(long, env = "PARTYLINE_JS_MEMORY_MB", default_value_t = 128)]
    pub js_memory_mb: usize,
    /// Hosts JS parties may `fetch` (comma-separated: `*` for any, `example.com`,
    /// `*.example.com`, `host:port`).
    #[arg(long, env = "PARTYLINE_FETCH_ALLOW", value_delimiter = ',', default_value = "*")]
    pub fetch_allow: Vec<String>,
    /// Time limit of one outbound `fetch` from a JS party (e.g. 10s).
    #[arg(long, env = "PARTYLINE_FETCH_TIMEOUT", default_value = "30s", value_parser = crate::values::parse_duration)]
    pub fetch_timeout: Duration,
    /// PEM files of CA certificates that `https` fetches from JS parties trust besides Mozilla's
    /// roots (comma-separated; e.g. a private CA or a local development certificate).
    #[arg(long, env = "PARTYLINE_FETCH_CA", value_delimiter = ',', value_name = "PEM")]
    pub fetch_ca: Vec<PathBuf>,
    /// How often a node or gateway checks Redis for a newly deployed version
    /// (`partyline deploy`).
    #[arg(long, env = "PARTYLINE_DEPLOY_POLL", default_value = "1s", value_parser = crate::values::parse_duration)]
    pub deploy_poll: Duration,
    /// Largest deployed artifact a node or gateway loads.
    #[arg(long, env = "PARTYLINE_DEPLOY_MAX_BYTES", default_value_t = crate::deploy::DEFAULT_MAX_BYTES)]
    pub deploy_max_bytes: u64,
    /// The parties registered in Rust are only a default (the stock binary's examples): a
    /// deployed project replaces them instead of being refused where names clash.
    #[arg(skip)]
    pub deploy_replaces_parties: bool,
}

impl Default for ProjectArgs {
    /// The defaults of the command line.
    fn default() -> Self {
        ProjectArgs {
            config: None,
            artifact: None,
            js_memory_mb: 128,
            fetch_allow: vec!["*".into()],
            fetch_timeout: Duration::from_secs(30),
            fetch_ca: Vec::new(),
            deploy_poll: Duration::from_secs(1),
            deploy_max_bytes: crate::deploy::DEFAULT_MAX_BYTES,
            deploy_replaces_parties: false,
        }
    }
}

impl ProjectArgs {
    /// The settings of the JS engine; `dev_host` is `partyline dev`'s address (it becomes
    /// `PARTYKIT_HOST` and turns on live reload and the dev routes).
    pub(crate) fn settings(&self, dev_host: Option<String>) -> JsSettings {
        JsSettings {
            live_reload: dev_host.is_some(),
            dev_routes: dev_host.is_some(),
            partykit_host: dev_host,
            memory_bytes: self.js_memory_mb << 20,
            fetch: FetchPolicy {
                allow: self.fetch_allow.clone(),
                timeout: self.fetch_timeout,
                extra_roots: self.fetch_ca.clone(),
            },
        }
    }

    /// Whether a project is to be served (`--config` or `--artifact`; for `dev`, also
    /// ./partykit.json).
    pub fn has_project(&self, look_in_cwd: bool) -> bool {
        self.artifact.is_some() || self.config_file(look_in_cwd).is_some()
    }

    /// Loads `--artifact`: its parties beside `rust`.
    pub async fn load_artifact(
        &self,
        file: &Path,
        limits: &Limits,
        rust: PartyRegistry,
    ) -> anyhow::Result<PartyRegistry> {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read --artifact {}", file.display()))?;
        let artifact =
            partyline_js::artifact::Artifact::open(&bytes).with_context(|| format!("--artifact {}", file.display()))?;
        let project = artifact.load(limits, &self.settings(None)).await?;
        let mut out = rust;
        for name in project.names() {
            if out.get(&name).is_some() {
                anyhow::bail!("party {name:?} is in the artifact and registered in Rust");
            }
            out = out.with_factory(&name, project.get(&name).expect("listed"));
        }
        println!("  project: {} (artifact {})", artifact.manifest.name.as_deref().unwrap_or("unnamed"), file.display());
        Ok(out)
    }

    /// The config file to serve: `--config`, else (for `dev`) ./partykit.json when present.
    pub fn config_file(&self, look_in_cwd: bool) -> Option<PathBuf> {
        self.config.clone().or_else(|| look_in_cwd.then(|| PathBuf::from(CONFIG_FILE)).filter(|p| p.is_file()))
    }
}

/// Loads the project of `file` and returns the parties to serve (the project's beside `rust`)
/// and the environment (the project's vars, then `cli_vars` over them).
pub async fn load(
    file: &Path,
    args: &ProjectArgs,
    limits: &Limits,
    rust: PartyRegistry,
    cli_vars: &BTreeMap<String, String>,
) -> anyhow::Result<(Project, PartyRegistry, Env)> {
    load_with(file, &args.settings(None), limits, rust, cli_vars).await
}

async fn load_with(
    file: &Path,
    settings: &JsSettings,
    limits: &Limits,
    rust: PartyRegistry,
    cli_vars: &BTreeMap<String, String>,
) -> anyhow::Result<(Project, PartyRegistry, Env)> {
    let project = Project::load(file, limits, settings).await?;
    let registry = project.registry(rust)?;
    let mut vars = project.config.vars.clone();
    vars.extend(cli_vars.clone());
    Ok((project, registry, Env::new(vars)))
}

/// Modification times of `files` (missing files count as a state too).
fn stamp(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
}

/// Resolves when one of `files` changed.
async fn changed(files: Vec<PathBuf>) {
    let before = stamp(&files);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stamp(&files) != before {
            // Let an editor finish writing.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    }
}

/// `partyline dev` for a project: serves it, and reloads it when one of its files changes (the
/// server restarts in place on the same port: sockets are closed with 1001 and clients
/// reconnect, as with `partykit dev`). A project that fails to load after a change keeps the
/// previous version serving until the next change.
pub async fn run_dev(
    file: PathBuf,
    args: ProjectArgs,
    cfg: DevConfig,
    cli_vars: BTreeMap<String, String>,
    rust: PartyRegistry,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = listener.into_std().context("the listener")?;
    let settings = args.settings(Some(listener.local_addr().context("the listener")?.to_string()));
    let (project, registry, env) = load_with(&file, &settings, &cfg.limits, rust.clone(), &cli_vars).await?;
    print_parties(&registry);
    print_page(&project);
    let mut current = (project, registry, env);
    let mut shutdown = Box::pin(shutdown);
    loop {
        let (project, registry, env) = current;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let socket = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let server = tokio::spawn(dev::run(DevConfig { env, ..cfg.clone() }, registry, socket, async move {
            let _ = stop_rx.await;
        }));
        let files = project.files();
        let mut server = server;
        let next = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = stop_tx.send(());
                    return server.await.context("the dev server")?;
                }
                r = &mut server => return r.context("the dev server")?,
                _ = changed(files.clone()) => {}
            }
            println!("project changed, reloading {}", file.display());
            match load_with(&file, &settings, &cfg.limits, rust.clone(), &cli_vars).await {
                Ok(next) => break next,
                Err(e) => eprintln!("error: {e:#}\n  (still serving the previous version; fix it and save again)"),
            }
        };
        let _ = stop_tx.send(());
        server.await.context("the dev server")??;
        print_parties(&next.1);
        print_page(&next.0);
        drop(project);
        current = next;
    }
}

/// What `serve.build` made, when the project has a page to build.
fn print_page(project: &Project) {
    let Some(assets) = &project.config.assets else { return };
    let built = assets.built();
    if built.is_empty() {
        return;
    }
    let bytes: usize = built.values().map(|b| b.len()).sum();
    let names: Vec<&str> = built.keys().map(String::as_str).filter(|n| !n.ends_with(".map")).collect();
    println!("  page: {} ({} KiB with source maps, served from memory)", names.join(", "), bytes.div_ceil(1024));
}

fn print_parties(registry: &PartyRegistry) {
    let names = registry.names();
    println!("  parties: {}", names.join(", "));
}
