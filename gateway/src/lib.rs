//! Partyline gateway: the client-facing edge. It terminates HTTP and WebSocket connections,
//! runs the static hooks (`on_before_connect`, `on_before_request`, `on_fetch`), routes each
//! `(party, room)` to its room through a [`RoomRouter`], holds the client sockets and their
//! connection records, and fans a room's broadcasts out to its local sockets.
//!
//! Modules:
//! - [`routing`]: which party and room a URL names.
//! - [`links`]: one link per room this gateway has sockets in; the [`RoomRouter`] seam.
//! - [`grpc`]: the cluster's router: rooms on their owner nodes over gRPC.
//! - `socket`: one client WebSocket (reader, coalescing writer, bounded send queue, pings,
//!   message rate, lingering close).
//! - `edge`: the HTTP handler (upgrades, hooks, requests, `on_fetch`).
//! - [`listener`]: the accept loop (TCP cap, header, body and idle timeouts, TLS).
//! - [`limits`]: the edge's own limits ([`EdgeLimits`]).
//! - [`clients`]: client addresses (trusted proxies, forwarded headers) and per-address limits.
//! - [`metrics`]: counters and histograms (`/metrics` or `/_partyline/metrics`).
//! - `fuzzing`: the checks the fuzz targets in `fuzz/` run (the test suite replays the corpus).
//! - [`admin`]: health and metrics endpoints, on an admin listener or the client port.

pub mod admin;
pub mod clients;
mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod limits;
pub mod links;
pub mod listener;
pub mod metrics;
pub mod routing;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use partyline::runtime::link::{SocketId, ToRoom};
use partyline::sync::Lock;
use partyline::{Env, Limits, Parties, PartyRegistry, RoomKey};
use tokio::net::TcpListener;

pub use limits::EdgeLimits;
pub use links::{OpenLink, RoomLink, RoomRouter, RouteError, LINK_QUEUE};
pub use listener::tls_config;

use links::{Admission, LinkState, Outbox, SocketEntry};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Limits on messages, queues and handlers.
    pub limits: Arc<Limits>,
    /// Most client WebSockets this gateway holds; more answer 503.
    pub max_connections: usize,
    /// Limits of the listener, of each WebSocket and of each client address.
    pub edge: EdgeLimits,
    /// Serve `https://` and `wss://` with this configuration (see [`tls_config`]).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { limits: Arc::default(), max_connections: 100_000, edge: EdgeLimits::default(), tls: None }
    }
}

/// A gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) parties: PartyRegistry,
    pub(crate) router: Arc<dyn RoomRouter>,
    pub(crate) lobby_parties: Parties,
    pub(crate) env: Env,
    pub(crate) limits: Arc<Limits>,
    pub(crate) max_connections: usize,
    pub(crate) edge: EdgeLimits,
    pub(crate) tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    pub(crate) clients: Arc<clients::ClientTable>,
    pub(crate) links: Arc<Mutex<HashMap<RoomKey, Arc<LinkState>>>>,
    pub(crate) next_sid: AtomicU64,
    pub(crate) sockets: AtomicUsize,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) health: admin::Health,
}

impl Gateway {
    /// A gateway for `parties`, reaching rooms through `router`. `lobby_parties` and `env` are
    /// what the static hooks see.
    pub fn new(
        cfg: GatewayConfig,
        parties: PartyRegistry,
        router: Arc<dyn RoomRouter>,
        lobby_parties: Parties,
        env: Env,
    ) -> Self {
        let metrics: Arc<metrics::Metrics> = Arc::default();
        let router = Arc::new(metrics::TimedRouter { inner: router, metrics: metrics.clone() });
        Gateway {
            inner: Arc::new(Inner {
                parties,
                router,
                lobby_parties,
                env,
                limits: cfg.limits,
                max_connections: cfg.max_connections,
                clients: clients::ClientTable::new(clients::PerClient {
                    max_open: cfg.edge.max_connections_per_ip,
                    rate: cfg.edge.max_connects_per_ip_per_second,
                    burst: cfg.edge.connect_burst,
                }),
                edge: cfg.edge,
                tls: cfg.tls,
                links: Arc::new(Mutex::new(HashMap::new())),
                next_sid: AtomicU64::new(1),
                sockets: AtomicUsize::new(0),
                metrics,
                health: admin::Health::default(),
            }),
        }
    }

    /// The axum router serving every path.
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback(edge::handle).with_state(self.inner.clone())
    }

    /// Serves clients on `listener` until `shutdown` resolves, then closes every socket with
    /// 1001 (going away).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let gw = self.clone();
        let serve = listener::Serve {
            router: self.router(),
            limits: self.inner.edge.clone(),
            tls: self.inner.tls.clone(),
            metrics: self.inner.metrics.clone(),
        };
        listener::serve(listener, serve, async move {
            shutdown.await;
            gw.inner.health.set_shutting_down();
            gw.close_all(partyline::close_code::GOING_AWAY, "server shutting down");
        })
        .await
    }

    /// Client WebSockets open now.
    pub fn connection_count(&self) -> usize {
        self.inner.sockets.load(Ordering::Acquire)
    }

    /// This gateway's counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Rooms this gateway has a link into.
    pub fn link_count(&self) -> usize {
        self.inner.links.locked().len()
    }

    /// The connection records this gateway holds for a room's sockets, in no particular order:
    /// what a new room instance needs to take them over (id, tags, state as JSON).
    pub fn records(&self, key: &RoomKey) -> Vec<ConnRecord> {
        let Some(link) = self.inner.links.locked().get(key).cloned() else { return Vec::new() };
        let sockets = link.sockets.locked();
        sockets
            .values()
            .filter(|s| s.joined)
            .map(|s| ConnRecord { id: s.id.clone(), tags: s.tags.clone(), state: s.state.clone() })
            .collect()
    }

    /// Closes every client socket with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &str) {
        let links: Vec<Arc<LinkState>> = self.inner.links.locked().values().cloned().collect();
        for link in links {
            for s in link.sockets.locked().values() {
                s.outbox.close(code, reason.to_string());
            }
        }
    }
}

/// What a gateway keeps of a connection besides its socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Connection id.
    pub id: String,
    /// Tags, the id first.
    pub tags: Vec<String>,
    /// State as JSON bytes.
    pub state: Option<bytes::Bytes>,
}

/// A socket registered with its room's link, before its upgrade completes.
pub(crate) struct Attached {
    pub(crate) link: Arc<LinkState>,
    pub(crate) outbox: Outbox,
    pub(crate) admission: tokio::sync::oneshot::Receiver<Admission>,
}

impl Inner {
    /// Registers a new socket with the link of its room, creating the link if needed; `None`
    /// when the gateway holds as many sockets as it may (checked and counted in one step).
    pub(crate) fn attach(self: &Arc<Self>, key: &RoomKey, sid: SocketId, id: String, uri: String) -> Option<Attached> {
        let max = self.max_connections;
        self.sockets.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        let outbox = Outbox::new(self.limits.max_outbox_messages, self.limits.max_outbox_bytes);
        let (adm_tx, adm_rx) = tokio::sync::oneshot::channel();
        let mut links = self.links.locked();
        let link =
            links.entry(key.clone()).or_insert_with(|| LinkState::new(key.clone(), Arc::downgrade(self))).clone();
        link.sockets.locked().insert(
            sid,
            SocketEntry {
                outbox: outbox.clone(),
                joined: false,
                admission: Some(adm_tx),
                id,
                uri,
                tags: Vec::new(),
                state: None,
            },
        );
        Some(Attached { link, outbox, admission: adm_rx })
    }

    /// Takes a socket out of its room: the room hears it closed (with `error` when it failed),
    /// and the link closes when it was the last socket.
    pub(crate) async fn detach(&self, link: &Arc<LinkState>, sid: SocketId, error: Option<String>) {
        let last = {
            let mut links = self.links.locked();
            let mut sockets = link.sockets.locked();
            if sockets.remove(&sid).is_none() {
                return;
            }
            self.sockets.fetch_sub(1, Ordering::AcqRel);
            let last = sockets.is_empty();
            if last && links.get(&link.key).is_some_and(|l| Arc::ptr_eq(l, link)) {
                links.remove(&link.key);
            }
            last
        };
        link.send_if_open(ToRoom::Closed { sid, error }).await;
        if last {
            link.close().await;
        }
    }

    /// Queues a close frame for a socket.
    pub(crate) fn send_close(&self, link: &LinkState, sid: SocketId, code: u16, reason: String) {
        if let Some(s) = link.sockets.locked().get(&sid) {
            s.outbox.close(code, reason);
        }
    }
}
