//! The `partyline node` process: listens for gRPC, resolves the address it advertises and its
//! id, serves metrics and health on its admin address when asked, and runs the node
//! (`partyline-node`) until Ctrl-C or SIGTERM, when it drains.

use std::net::SocketAddr;

use partyline::PartyRegistry;
use partyline_node::server::{NodeConfig, NodeTelemetry};
use tokio_util::sync::CancellationToken;

use crate::process::{bind, cluster_parties, shutdown_signal};
use crate::project::ProjectArgs;

/// A node process as its command line asks for it (`partyline node`, [`crate::cli`]).
#[derive(Debug)]
pub struct NodeProcess {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The address gateways and other nodes reach this node at; `None`: the address it listens
    /// on (which must then name a host).
    pub advertise: Option<String>,
    /// The node id; `None`: the advertised address.
    pub id: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP here.
    pub admin_listen: Option<SocketAddr>,
    /// A PartyKit project whose parties the node hosts beside its own.
    pub project: ProjectArgs,
    /// The node's settings. Its `id` and `advertise` are set from the fields above once the gRPC
    /// port is bound, and its `env` gets the project's variables.
    pub config: NodeConfig,
}

impl NodeProcess {
    /// Runs the node with `parties` until Ctrl-C or SIGTERM, then drains it. Metrics and health
    /// stay served through the drain, so probes see the node not ready meanwhile.
    pub async fn run(self, parties: PartyRegistry) -> anyhow::Result<()> {
        let NodeProcess { listen, advertise, id, admin_listen, project, mut config } = self;
        let (parties, env) =
            cluster_parties(&project, &config.limits, parties, std::mem::take(&mut config.env)).await?;
        config.env = env;
        let listener = bind(listen).await?;
        let local = listener.local_addr()?;
        config.advertise = match advertise {
            Some(a) => a,
            None if local.ip().is_unspecified() => {
                anyhow::bail!(
                    "listening on {local}: set --advertise (PARTYLINE_ADVERTISE) to the address others reach this node at"
                )
            }
            None => local.to_string(),
        };
        config.id = id.unwrap_or_else(|| config.advertise.clone());
        let mut secrets = vec![config.secret.clone()];
        secrets.extend(config.accept_secrets.iter().cloned());
        let parties = crate::process::serve_deploys(
            &project,
            parties,
            &config.limits,
            config.redis.clone(),
            secrets,
            format!("node {}", config.id),
            true,
        );
        let admin = match admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        println!("Partyline node {} serving gRPC on {local} (advertised as {})", config.id, config.advertise);
        println!("  redis: {} (prefix {})", partyline_cluster::redis::redact(&config.redis.url), config.redis.prefix);
        let telemetry = NodeTelemetry::default();
        #[cfg(feature = "partykit")]
        for (name, help, kind, f) in crate::deploy::metrics("node") {
            telemetry.metrics.register_fn(&name, help, kind, f);
        }
        let stop_admin = CancellationToken::new();
        let admin_task = match admin {
            Some(listener) => {
                println!("  metrics and health: http://{}/metrics, /healthz, /readyz", listener.local_addr()?);
                let serve = partyline_node::admin::serve(
                    listener,
                    telemetry.metrics.clone(),
                    telemetry.state.clone(),
                    stop_admin.clone().cancelled_owned(),
                );
                Some(tokio::spawn(serve))
            }
            None => None,
        };
        // The admin endpoints outlive the node's drain, so probes see it not ready meanwhile.
        let served = partyline_node::server::run_with(config, parties, listener, shutdown_signal(), telemetry).await;
        stop_admin.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        served
    }
}
