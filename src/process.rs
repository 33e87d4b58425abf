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
    match project.config_file(false) {
        Some(file) => {
            let (_project, parties, env) = crate::project::load(&file, project, limits, parties, env.vars()).await?;
            Ok((parties, env))
        }
        None => Ok((parties, env)),
    }
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
