//! Builds without the `partykit` feature: PartyKit projects (`partykit.json`) are not served;
//! asking for one is an error that says how to get it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use clap::Args;
use partyline::{Env, Limits, PartyRegistry};

use crate::dev::DevConfig;

/// Options for PartyKit projects (this build cannot serve them).
#[derive(Debug, Args, Clone)]
pub struct ProjectArgs {
    /// A PartyKit project's partykit.json to serve: not in this build (it was built without
    /// the `partykit` feature of partyline-server).
    #[arg(long = "config", env = "PARTYLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ProjectArgs {
    /// Whether a project is asked for (`--config`).
    pub fn has_project(&self, _look_in_cwd: bool) -> bool {
        self.config.is_some()
    }

    /// `--config` when given (this build never looks for ./partykit.json).
    pub fn config_file(&self, _look_in_cwd: bool) -> Option<PathBuf> {
        self.config.clone()
    }
}

fn unsupported(file: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot serve the PartyKit project {}: this build of partyline-server has no JS engine \
         (enable its `partykit` feature)",
        file.display()
    )
}

/// Always an error: see the module docs.
pub async fn load(
    file: &Path,
    _args: &ProjectArgs,
    _limits: &Limits,
    _rust: PartyRegistry,
    _cli_vars: &BTreeMap<String, String>,
) -> anyhow::Result<((), PartyRegistry, Env)> {
    Err(unsupported(file))
}

/// Always an error: see the module docs.
pub async fn run_dev(
    file: PathBuf,
    _args: ProjectArgs,
    _cfg: DevConfig,
    _vars: BTreeMap<String, String>,
    _rust: PartyRegistry,
    _listener: tokio::net::TcpListener,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Err(unsupported(&file))
}
