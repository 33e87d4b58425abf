//! Partyline gateway: the client-facing edge. It terminates HTTP and WebSocket connections,
//! runs the static hooks (`on_before_connect`, `on_before_request`, `on_fetch`), routes each
//! `(party, room)` to its room through a [`RoomRouter`], holds the client sockets and their
//! connection records, and fans a room's broadcasts out to its local sockets.
//!
//! Modules:
//! - [`routing`]: which party and room a URL names.
//! - [`links`]: one link per room this gateway has sockets in; the [`RoomRouter`] seam.
//! - `socket`: one client WebSocket (reader, coalescing writer, bounded send queue).
//! - `edge`: the HTTP handler (upgrades, hooks, requests, `on_fetch`).
//! - [`metrics`]: counters and histograms (`/metrics` or `/_partyline/metrics`).
//! - [`admin`]: health and metrics endpoints, on an admin listener or the client port.

pub mod admin;
mod edge;
pub mod links;
pub mod metrics;
pub mod routing;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use partyline::link::{SocketId, ToRoom};
use partyline::{Env, Limits, Parties, PartyRegistry, RoomKey};
use tokio::net::TcpListener;

pub use links::{OpenLink, RoomLink, RoomRouter, RouteError, LINK_QUEUE};

use links::{Admission, LinkState, Outbox, SocketEntry};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Limits on messages, queues and handlers.
    pub limits: Arc<Limits>,
    /// Most client WebSockets this gateway holds; more answer 503.
    pub max_connections: usize,
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
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Small frames must not wait for the client's delayed ACK (Nagle); the writers already
        // coalesce what is queued into one write.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(async move {
            shutdown.await;
            gw.inner.health.set_shutting_down();
            gw.close_all(partyline::link::close_code::GOING_AWAY, "server shutting down");
            let _ = stop_tx.send(());
        });
        server.await?;
        let _ = stop_rx.await;
        Ok(())
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
        self.inner.links.lock().unwrap().len()
    }

    /// The connection records this gateway holds for a room's sockets, in no particular order:
    /// what a new room instance needs to take them over (id, tags, state as JSON).
    pub fn records(&self, key: &RoomKey) -> Vec<ConnRecord> {
        let Some(link) = self.inner.links.lock().unwrap().get(key).cloned() else { return Vec::new() };
        let sockets = link.sockets.lock().unwrap();
        sockets
            .values()
            .filter(|s| s.joined)
            .map(|s| ConnRecord { id: s.id.clone(), tags: s.tags.clone(), state: s.state.clone() })
            .collect()
    }

    /// Closes every client socket with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &str) {
        let links: Vec<Arc<LinkState>> = self.inner.links.lock().unwrap().values().cloned().collect();
        for link in links {
            for s in link.sockets.lock().unwrap().values() {
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
    /// Registers a new socket with the link of its room, creating the link if needed.
    pub(crate) fn attach(self: &Arc<Self>, key: &RoomKey, sid: SocketId, id: String, uri: String) -> Attached {
        let outbox = Outbox::new(self.limits.max_outbox_messages, self.limits.max_outbox_bytes);
        let (adm_tx, adm_rx) = tokio::sync::oneshot::channel();
        let mut links = self.links.lock().unwrap();
        let link =
            links.entry(key.clone()).or_insert_with(|| LinkState::new(key.clone(), Arc::downgrade(self))).clone();
        link.sockets.lock().unwrap().insert(
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
        self.sockets.fetch_add(1, Ordering::AcqRel);
        Attached { link, outbox, admission: adm_rx }
    }

    /// Takes a socket out of its room: the room hears it closed (with `error` when it failed),
    /// and the link closes when it was the last socket.
    pub(crate) async fn detach(&self, link: &Arc<LinkState>, sid: SocketId, error: Option<String>) {
        let last = {
            let mut links = self.links.lock().unwrap();
            let mut sockets = link.sockets.lock().unwrap();
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
        if let Some(s) = link.sockets.lock().unwrap().get(&sid) {
            s.outbox.close(code, reason);
        }
    }
}
