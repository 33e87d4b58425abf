//! What every server process (`dev`, `node`, `gateway`) does the same way: listening on an
//! address, waiting for Ctrl-C or SIGTERM, and, for a cluster process, adding a PartyKit
//! project's parties to its own.

use std::net::SocketAddr;

use anyhow::Context;
use partyline::{Env, Limits, PartyRegistry};

use crate::project::ProjectArgs;

/// Listens on `addr`, or says why it cannot.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr}: is another server using the port? pick another one"))
}

/// The URL scheme clients use: `https` with TLS, else `http`.
pub(crate) fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The parties and environment of a node or gateway: with `--config`, the project's beside
/// `parties`.
pub(crate) async fn cluster_parties(
    project: &ProjectArgs,
    limits: &Limits,
    parties: PartyRegistry,
    env: Env,
) -> anyhow::Result<(PartyRegistry, Env)> {
    #[cfg(feature = "partykit")]
    if let Some(file) = &project.artifact {
        return Ok((project.load_artifact(file, limits, parties).await?, env));
    }
    match project.config_file(false) {
        Some(file) => {
            let (_project, parties, env) = crate::project::load(&file, project, limits, parties, env.vars()).await?;
            Ok((parties, env))
        }
        None => Ok((parties, env)),
    }
}

/// Serves the cluster's deployed versions (`partyline deploy`) beside `parties`, reporting as
/// `name`; `node`: publish the secret check too. The parties to serve.
#[cfg(feature = "partykit")]
pub(crate) fn serve_deploys(
    project: &ProjectArgs,
    parties: PartyRegistry,
    limits: &Limits,
    redis: partyline_cluster::redis::RedisConfig,
    secrets: Vec<String>,
    name: String,
    node: bool,
) -> PartyRegistry {
    let (parties, fixed, live) = if project.deploy_replaces_parties {
        // The live part starts with them and a deployed version takes their place.
        let live = partyline::LiveParties::new();
        live.replace(&parties);
        (PartyRegistry::new().with_live(live.clone()), Vec::new(), live)
    } else {
        let fixed = parties.names();
        let (parties, live) = crate::deploy::live(parties);
        (parties, fixed, live)
    };
    tokio::spawn(crate::deploy::serve_deploys(crate::deploy::DeployServer {
        redis,
        secrets,
        name,
        live,
        fixed,
        limits: limits.clone(),
        js: project.settings(None),
        settings: crate::deploy::DeploySettings { poll: project.deploy_poll, max_bytes: project.deploy_max_bytes },
        publish_check: node,
    }));
    parties
}

/// Without the JS engine there is nothing to deploy.
#[cfg(not(feature = "partykit"))]
pub(crate) fn serve_deploys(
    _project: &ProjectArgs,
    parties: PartyRegistry,
    _limits: &Limits,
    _redis: partyline_cluster::redis::RedisConfig,
    _secrets: Vec<String>,
    _name: String,
    _node: bool,
) -> PartyRegistry {
    parties
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    println!("shutting down");
}
