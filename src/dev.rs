//! `partyline dev`: a gateway and a node in one process, linked in-process, with storage in an
//! embedded store on local disk (or in memory with `--ephemeral`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use partyline::client_text::{OVERLOADED, TOO_MANY_ROOMS};
use partyline::runtime::handle::LinkSender;
use partyline::runtime::handle::SendError;
use partyline::runtime::link::ToRoom;
use partyline::{Env, Limits, MemoryStore, PartyRegistry, Request, Response, RoomKey, Store};
use partyline_gateway::{
    channel_events, EdgeLimits, Gateway, GatewayConfig, OpenLink, RoomLink, RoomRouter, RouteError, LINK_QUEUE,
};
use partyline_node::alarms;
use partyline_node::crons::{Crons, LocalClaims};
use partyline_node::host::HostAlarms;
use partyline_node::store::EmbeddedStore;
use partyline_node::{HostConfig, HostError, RoomHost};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::process::{bind, scheme, shutdown_signal};
use crate::project::ProjectArgs;

/// A dev server process as its command line asks for it (`partyline dev`, [`crate::cli`]).
#[derive(Debug)]
pub struct DevProcess {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The PartyKit project to serve (`--config`, or ./partykit.json when present).
    pub project: ProjectArgs,
    /// Variables for parties (`--var`); a project's own are under them.
    pub vars: BTreeMap<String, String>,
    /// The server's settings; its `env` is made from `vars` (and a project's variables).
    pub config: DevConfig,
}

impl DevProcess {
    /// Serves `parties` (or the project, reloaded when its files change) until Ctrl-C or
    /// SIGTERM.
    pub async fn run(self, parties: PartyRegistry) -> anyhow::Result<()> {
        let DevProcess { listen, project, vars, config } = self;
        #[cfg(feature = "partykit")]
        if let Some(file) = &project.artifact {
            anyhow::bail!(
                "--artifact {} is for nodes and gateways; `partyline dev` serves a project from its partykit.json (--config)",
                file.display()
            );
        }
        let listener = bind(listen).await?;
        let local = listener.local_addr()?;
        let scheme = scheme(config.tls.is_some());
        if let Some(file) = project.config_file(true) {
            println!("Partyline dev server listening on {scheme}://{local}");
            println!("  project: {} (reloads when its files change)", file.display());
            return crate::project::run_dev(file, project, config, vars, parties, listener, shutdown_signal()).await;
        }
        let names = parties.names();
        println!("Partyline dev server listening on {scheme}://{local}");
        println!("  parties: {}", names.join(", "));
        match &config.data_dir {
            Some(dir) => println!("  storage: {} (--ephemeral keeps it in memory)", store_path(dir).display()),
            None => println!("  storage: in memory (gone when the process exits)"),
        }
        if parties.get("main").is_some() {
            println!("  open {scheme}://{local}/ for the chat page; Ctrl-C stops");
        }
        let config = DevConfig { env: Env::new(vars), ..config };
        run(config, parties, listener, shutdown_signal()).await
    }
}

/// Settings of a dev server.
#[derive(Clone, Debug)]
pub struct DevConfig {
    /// Directory of the on-disk store; `None` keeps storage in memory.
    pub data_dir: Option<PathBuf>,
    /// Limits in force.
    pub limits: Limits,
    /// Party variables.
    pub env: Env,
    /// Most client WebSockets.
    pub max_connections: usize,
    /// Limits of the listener, of each WebSocket and of each client address.
    pub edge: EdgeLimits,
    /// Serve `https://` and `wss://` with this TLS configuration.
    pub tls: Option<Arc<partyline_gateway::listener::ServerConfig>>,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: None,
            limits: Limits::default(),
            env: Env::default(),
            max_connections: 100_000,
            edge: EdgeLimits::default(),
            tls: None,
        }
    }
}

/// The file of the embedded store inside a data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store.redb")
}

/// Runs a dev server on `listener` until `shutdown` resolves. When this returns, every room has
/// stopped and the store is closed (so a new server may open it).
pub async fn run(
    cfg: DevConfig,
    parties: PartyRegistry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let quota = cfg.limits.quota();
    let store: Arc<dyn Store> = match &cfg.data_dir {
        Some(dir) => {
            let path = store_path(dir);
            Arc::new(
                EmbeddedStore::open(&path)
                    .with_context(|| format!("could not open the store at {}", path.display()))?
                    .with_quota(quota),
            )
        }
        None => Arc::new(MemoryStore::new().with_quota(quota)),
    };
    let limits = Arc::new(cfg.limits);
    let host = RoomHost::new(HostConfig {
        parties: parties.clone(),
        store: store.clone(),
        limits: limits.clone(),
        env: cfg.env.clone(),
        parties_client: None,
        observer: None,
        on_fenced: None,
    });
    let stop_alarms = tokio_util::sync::CancellationToken::new();
    let scheduler = tokio::spawn(alarms::run(Arc::new(HostAlarms(host.clone())), stop_alarms.clone()));
    // The `main` party's crons; one process, so every firing is claimed here.
    let crons = Crons::new(&parties, cfg.env.clone(), host.client(), Arc::new(LocalClaims))
        .map(|crons| tokio::spawn(crons.run(stop_alarms.clone())));
    let request_timeout = limits.handler_timeout + Duration::from_secs(5);
    let router = Arc::new(LocalRouter { host: host.clone(), request_timeout });
    let gateway = Gateway::new(
        GatewayConfig { limits, max_connections: cfg.max_connections, edge: cfg.edge, tls: cfg.tls },
        parties,
        router,
        host.client(),
        cfg.env,
    );
    let served = gateway.serve(listener, shutdown).await;
    stop_alarms.cancel();
    let _ = scheduler.await;
    if let Some(crons) = crons {
        let _ = crons.await;
    }
    host.shutdown().await;
    drop(host);
    // Rooms finish their last writes and drop their store handles; wait for that (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.context("the HTTP server failed")
}

/// Reaches rooms of an in-process [`RoomHost`].
pub struct LocalRouter {
    /// The rooms.
    pub host: RoomHost,
    /// Longest an HTTP request to a room may take (queue, handler, writes), as in a cluster.
    pub request_timeout: Duration,
}

fn route_error(e: HostError) -> RouteError {
    match e {
        HostError::UnknownParty(p) => RouteError::UnknownParty(p),
        HostError::Overloaded(_) => RouteError::Busy(OVERLOADED.into()),
        HostError::Full(_) => RouteError::Busy(TOO_MANY_ROOMS.into()),
        e => RouteError::Unavailable(e.to_string()),
    }
}

#[async_trait]
impl RoomRouter for LocalRouter {
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError> {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let link = self.host.open_link(key, tx).await.map_err(route_error)?;
        Ok(OpenLink { sender: Box::new(LocalLink(link)), events: channel_events(rx) })
    }

    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError> {
        match tokio::time::timeout(self.request_timeout, self.host.request(key, req)).await {
            Ok(res) => res.map_err(route_error),
            Err(_) => {
                Err(RouteError::Unavailable(format!("room {key} did not answer within {:?}", self.request_timeout)))
            }
        }
    }
}

struct LocalLink(LinkSender);

fn route_send_error(e: SendError) -> RouteError {
    match e {
        SendError::Overloaded(_) => RouteError::Busy(OVERLOADED.into()),
        e @ SendError::Gone(_) => RouteError::Unavailable(e.to_string()),
    }
}

#[async_trait]
impl RoomLink for LocalLink {
    async fn send(&self, msg: ToRoom) -> Result<(), RouteError> {
        self.0.send(msg).await.map_err(route_send_error)
    }

    fn try_send(&self, msg: ToRoom) -> Result<Result<(), RouteError>, ToRoom> {
        self.0.try_send(msg).map(|sent| sent.map_err(route_send_error))
    }

    async fn close(&self) {
        self.0.close().await;
    }
}
