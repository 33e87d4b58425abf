//! Partyline gateway: the client-facing edge. It terminates HTTP and WebSocket connections,
//! runs the static hooks (`on_before_connect`, `on_before_request`, `on_fetch`), routes each
//! `(party, room)` to its room through a [`RoomRouter`], holds the client sockets and their
//! connection records, and fans a room's broadcasts out to its local sockets.
//!
//! Modules:
//! - [`paths`]: which party and room a URL names.
//! - [`router`]: the [`RoomRouter`] seam: how the gateway opens links into rooms and forwards
//!   requests to them.
//! - `links`: one link per room this gateway has sockets in, the table of them, and the
//!   attaching and detaching of sockets (the lock order, links then sockets, is kept there).
//! - [`grpc`]: the cluster's router: rooms on their owner nodes over gRPC.
//! - `socket`: one client WebSocket (reader, coalescing writer, pings, message rate, lingering
//!   close).
//! - `send_queue`: one client's bounded send queue, and what happens to a client that does not
//!   read.
//! - `edge`: the HTTP handler (upgrades, hooks, requests, `on_fetch`).
//! - `fetch_socket`: WebSockets outside any room, handled by `on_socket`.
//! - `liveness`: pings and pong timeouts for every client WebSocket, from one sweep per gateway.
//! - [`listener`]: the accept loop (TCP cap, header, body and idle timeouts, TLS).
//! - [`limits`]: the edge's own limits ([`EdgeLimits`]).
//! - [`clients`]: client addresses (trusted proxies, forwarded headers) and per-address limits.
//! - [`metrics`]: counters and histograms (`/metrics` or `/_partyline/metrics`).
//! - `fuzzing`: the checks the fuzz targets in `fuzz/` run (the test suite replays the corpus).
//! - [`admin`]: health and metrics endpoints, on an admin listener or the client port.

pub mod admin;
pub mod clients;
mod edge;
mod fetch_socket;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod limits;
mod links;
pub mod listener;
mod liveness;
pub mod metrics;
pub mod paths;
pub mod router;
mod send_queue;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use partyline::{Env, Limits, Parties, PartyRegistry, RoomKey};
use tokio::net::TcpListener;

pub use limits::EdgeLimits;
pub use listener::tls_config;
pub use router::{channel_events, OpenLink, RoomLink, RoomRouter, RouteError, LINK_QUEUE};

use links::LinkState;

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
    /// The table of links (see `links` for its lock order).
    pub(crate) links: Arc<Mutex<HashMap<RoomKey, Arc<LinkState>>>>,
    pub(crate) next_sid: AtomicU64,
    /// Sockets outside any room (`on_socket`), by an id from `next_sid`: for the liveness sweep
    /// and for closing every socket at shutdown.
    pub(crate) lone_sockets: Mutex<HashMap<u64, fetch_socket::Lone>>,
    /// Client WebSockets attached now (counted against `max_connections`).
    pub(crate) open_sockets: AtomicUsize,
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
        let gw = Gateway {
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
                lone_sockets: Mutex::default(),
                open_sockets: AtomicUsize::new(0),
                metrics,
                health: admin::Health::default(),
            }),
        };
        // Pings and pong timeouts for every socket, while the gateway exists.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(liveness::sweep(Arc::downgrade(&gw.inner)));
        }
        gw
    }

    /// The axum router serving every path.
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback(edge::handle).with_state(self.inner.clone())
    }

    /// Serves clients on `listener` until `shutdown` resolves, then closes every socket with
    /// 1001 (going away).
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BoxFuture<'static, std::io::Result<()>> {
        self.serve_boxed(listener, Box::pin(shutdown))
    }

    /// The gateway's serving as one boxed future, made here: an `async fn`'s body is compiled
    /// again in every crate that awaits it, and this one holds every socket's frame path.
    #[inline(never)]
    fn serve_boxed(
        self,
        listener: TcpListener,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, std::io::Result<()>> {
        Box::pin(self.serve_unboxed(listener, shutdown))
    }

    async fn serve_unboxed(self, listener: TcpListener, shutdown: BoxFuture<'static, ()>) -> std::io::Result<()> {
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
            gw.close_all(partyline::close_code::GOING_AWAY, partyline::client_text::SHUTTING_DOWN);
        })
        .await
    }

    /// Client WebSockets open now.
    pub fn connection_count(&self) -> usize {
        self.inner.open_sockets.load(Ordering::Acquire)
    }

    /// This gateway's counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// This gateway's counters, shared: for what reports into them from outside the gateway
    /// (the cluster client's watch on the nodes, a `NodeObserver`).
    pub fn shared_metrics(&self) -> Arc<metrics::Metrics> {
        self.inner.metrics.clone()
    }

    /// Rooms this gateway has a link into.
    pub fn link_count(&self) -> usize {
        self.inner.link_count()
    }

    /// The connection records this gateway holds for a room's sockets, in no particular order:
    /// what a new room instance needs to take them over (id, tags, state as JSON).
    pub fn records(&self, key: &RoomKey) -> Vec<ConnRecord> {
        self.inner.records(key)
    }

    /// Closes every client socket with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.inner.close_all(code, reason)
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
