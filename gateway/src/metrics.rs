//! Gateway metrics (OpenMetrics text, with `prometheus-client`), served at `/metrics` on the
//! admin listener or at `/_partyline/metrics` on the client port. They show, among other
//! things, that a room broadcast crosses the gateway↔room link once per gateway
//! (`room_broadcasts`) and fans out to every local socket (`frames_to_clients`,
//! `broadcast_fanout`). One [`Metrics`] per gateway, so gateways in one process keep their own.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use partyline::sync::Lock;
use partyline::{Request, Response, RoomKey};
use partyline_cluster::client::{NodeObserver, Unusable};
use partyline_cluster::metrics::AtomicHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::router::{OpenLink, RoomRouter, RouteError};

/// The reserved path prefix for the gateway's own endpoints on the client port (never routed
/// to `on_fetch`).
pub const ADMIN_PREFIX: &str = "/_partyline/";

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Hooks = Family<[(&'static str, &'static str); 1], AtomicHistogram, fn() -> AtomicHistogram>;
type PerNode = Family<[(&'static str, String); 1], Gauge<f64, AtomicU64>>;
type ByReason = Family<[(&'static str, &'static str); 1], Counter>;

fn duration_histogram() -> AtomicHistogram {
    // 100 µs to ~13 s, doubling.
    AtomicHistogram::seconds(18)
}

/// Counters, gauges and histograms of one gateway.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// WebSocket upgrades completed (101 sent).
    pub connections_accepted: Counter,
    /// Upgrades refused (hooks, limits, room refusals).
    pub connections_refused: Counter,
    /// Clients cut off because their send queue filled.
    pub slow_clients_closed: Counter,
    /// Frames received from clients.
    pub frames_from_clients: Counter,
    /// Frames written to clients.
    pub frames_to_clients: Counter,
    /// Payload bytes received from clients.
    pub bytes_from_clients: Counter,
    /// Payload bytes written to clients.
    pub bytes_to_clients: Counter,
    /// `Broadcast` messages received from rooms (one per room broadcast per gateway).
    pub room_broadcasts: Counter,
    /// `Send` messages received from rooms (one per directed frame).
    pub room_sends: Counter,
    /// HTTP requests forwarded to rooms.
    pub room_requests: Counter,
    /// Links opened to rooms.
    pub links_opened: Counter,
    /// Links whose room moved to another node with its sockets handed over.
    pub links_moved: Counter,
    /// Room moves whose sockets could not be handed over (closed with 1012 instead).
    pub moves_failed: Counter,
    /// Link opens that failed (no owner reachable).
    pub link_failures: Counter,
    /// TCP connections answered 503 at the TCP connection cap.
    pub tcp_refused: Counter,
    /// HTTP connections closed for moving no bytes for the idle timeout.
    pub http_idle_closed: Counter,
    /// WebSockets refused 429 for their client address's limits.
    pub clients_refused: Counter,
    /// WebSockets closed with 1008 for sending faster than the message rate limit.
    pub rate_limited: Counter,
    /// WebSockets closed with 1013 because their room's queue stayed full.
    pub overloaded: Counter,
    /// WebSockets dropped for not answering pings.
    pub ping_timeouts: Counter,
    /// Local sockets one room broadcast was queued for.
    pub broadcast_fanout: AtomicHistogram,
    /// Time of the static hooks, by hook.
    pub hooks: Hooks,
    /// Time to open a link into a room (over gRPC in a cluster, redirects included).
    pub link_open_seconds: AtomicHistogram,
    /// Round trip of an HTTP request to a room (over gRPC in a cluster).
    pub room_request_seconds: AtomicHistogram,
    /// Each node's clock minus this gateway's, in seconds, as measured by the pings.
    pub node_clock_offset: PerNode,
    /// Nodes found unusable (routed around, links closed), by reason: `stalled`,
    /// `cut_from_redis`, `clock`.
    pub nodes_refused: ByReason,
    /// Client WebSockets closed, by close code.
    pub client_closes: Arc<CloseCodes>,
    open_sockets: Gauge,
    open_links: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            slow_clients_closed: Counter::default(),
            frames_from_clients: Counter::default(),
            frames_to_clients: Counter::default(),
            bytes_from_clients: Counter::default(),
            bytes_to_clients: Counter::default(),
            room_broadcasts: Counter::default(),
            room_sends: Counter::default(),
            room_requests: Counter::default(),
            links_opened: Counter::default(),
            links_moved: Counter::default(),
            moves_failed: Counter::default(),
            link_failures: Counter::default(),
            tcp_refused: Counter::default(),
            http_idle_closed: Counter::default(),
            clients_refused: Counter::default(),
            rate_limited: Counter::default(),
            overloaded: Counter::default(),
            ping_timeouts: Counter::default(),
            broadcast_fanout: AtomicHistogram::counts(17),
            hooks: Family::new_with_constructor(duration_histogram as fn() -> AtomicHistogram),
            link_open_seconds: duration_histogram(),
            room_request_seconds: duration_histogram(),
            node_clock_offset: PerNode::default(),
            nodes_refused: ByReason::default(),
            client_closes: Arc::default(),
            open_sockets: Gauge::default(),
            open_links: Gauge::default(),
        };
        // Every reason exported from the start (at 0), so a rule's increase() sees the first one.
        for reason in ["stalled", "cut_from_redis", "clock"] {
            drop(m.nodes_refused.get_or_create(&[("reason", reason)]));
        }
        {
            let mut r = m.registry.locked();
            let counters: [(&str, &str, &Counter); 20] = [
                ("connections_accepted", "WebSocket upgrades completed.", &m.connections_accepted),
                ("connections_refused", "WebSocket upgrades refused.", &m.connections_refused),
                ("slow_clients_closed", "Clients cut off because their send queue filled.", &m.slow_clients_closed),
                ("frames_from_clients", "Frames received from clients.", &m.frames_from_clients),
                ("frames_to_clients", "Frames written to clients.", &m.frames_to_clients),
                ("bytes_from_clients", "Payload bytes received from clients.", &m.bytes_from_clients),
                ("bytes_to_clients", "Payload bytes written to clients.", &m.bytes_to_clients),
                (
                    "room_broadcasts",
                    "Broadcasts received from rooms: one per room broadcast per gateway, whatever the room size.",
                    &m.room_broadcasts,
                ),
                ("room_sends", "Directed frames received from rooms.", &m.room_sends),
                ("room_requests", "HTTP requests forwarded to rooms.", &m.room_requests),
                ("links_opened", "Links opened to rooms.", &m.links_opened),
                ("links_moved", "Links whose room moved with its sockets handed over.", &m.links_moved),
                ("moves_failed", "Room moves whose sockets were closed instead.", &m.moves_failed),
                ("link_failures", "Links that could not be opened (no owner reachable).", &m.link_failures),
                ("tcp_refused", "TCP connections refused at the connection cap.", &m.tcp_refused),
                ("http_idle_closed", "HTTP connections closed by the idle timeout.", &m.http_idle_closed),
                ("clients_refused", "WebSockets refused for their client address's limits.", &m.clients_refused),
                ("rate_limited", "WebSockets closed for exceeding the message rate.", &m.rate_limited),
                ("overloaded", "WebSockets closed because their room was overloaded.", &m.overloaded),
                ("ping_timeouts", "WebSockets dropped for not answering pings.", &m.ping_timeouts),
            ];
            for (name, help, c) in counters {
                r.register(format!("partyline_gateway_{name}"), help, c.clone());
            }
            r.register("partyline_gateway_open_sockets", "Client WebSockets open now.", m.open_sockets.clone());
            r.register("partyline_gateway_open_links", "Rooms this gateway has a link into.", m.open_links.clone());
            r.register(
                "partyline_gateway_broadcast_fanout",
                "Local sockets one room broadcast was queued for.",
                m.broadcast_fanout.clone(),
            );
            r.register(
                "partyline_gateway_hook_duration_seconds",
                "Time of the static hooks (on_before_connect, on_before_request, on_fetch, on_socket), by hook.",
                m.hooks.clone(),
            );
            r.register(
                "partyline_gateway_link_open_duration_seconds",
                "Time to open a link into a room (gRPC in a cluster, redirects included).",
                m.link_open_seconds.clone(),
            );
            r.register(
                "partyline_gateway_room_request_duration_seconds",
                "Round trip of an HTTP request to a room (gRPC in a cluster).",
                m.room_request_seconds.clone(),
            );
            r.register(
                "partyline_gateway_node_clock_offset_seconds",
                "Each node's wall clock minus this gateway's, measured by pings (best of the last few).",
                m.node_clock_offset.clone(),
            );
            r.register(
                "partyline_gateway_nodes_refused",
                "Nodes found unusable and routed around, their links closed, by reason (stalled, cut_from_redis, clock).",
                m.nodes_refused.clone(),
            );
            r.register_collector(Box::new(CloseCodesCollector(m.client_closes.clone())));
        }
        m
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    /// Records how long a static hook took.
    pub fn hook(&self, hook: &'static str, started: Instant) {
        self.hooks.get_or_create(&[("hook", hook)]).observe_duration(started.elapsed());
    }

    /// Adds a metric collected at every scrape (such as a counter kept by the router).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.locked().register_collector(collector);
    }

    /// The OpenMetrics text exposition, with the given gauges.
    pub fn render(&self, open_sockets: usize, open_links: usize) -> String {
        self.open_sockets.set(open_sockets as i64);
        self.open_links.set(open_links as i64);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.locked());
        out
    }
}

/// Client sockets closed, by close code: the first close frame sent or received, 1005 for a
/// close frame without a code, 1006 for a connection that ended without one. Counted once per
/// socket, when it ends, so a mutex is cheap enough; exported as
/// `partyline_gateway_client_closes_total{code}`.
#[derive(Debug, Default)]
pub struct CloseCodes(Mutex<BTreeMap<u16, u64>>);

impl CloseCodes {
    /// Counts one socket closed with `code`.
    pub fn inc(&self, code: u16) {
        *self.0.locked().entry(code).or_default() += 1;
    }

    /// The counts so far, by code.
    pub fn snapshot(&self) -> BTreeMap<u16, u64> {
        self.0.locked().clone()
    }
}

/// Exports [`CloseCodes`] at every scrape.
#[derive(Debug)]
struct CloseCodesCollector(Arc<CloseCodes>);

impl Collector for CloseCodesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "partyline_gateway_client_closes",
            "Client WebSockets closed, by close code (1006: ended without a close frame).",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in self.0.snapshot() {
            let labels = [("code", code.to_string())];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The watch on the nodes reports here (`partyline_cluster::client::ClusterClient::watch_nodes`).
impl NodeObserver for Metrics {
    fn clock_offset(&self, node: &str, offset_ms: i64) {
        self.node_clock_offset.get_or_create(&[("node", node.to_string())]).set(offset_ms as f64 / 1000.0);
    }

    fn refused(&self, _node: &str, why: &Unusable) {
        let reason = match why {
            Unusable::Stalled { .. } => "stalled",
            Unusable::CutFromRedis { .. } => "cut_from_redis",
            Unusable::Clock { .. } => "clock",
        };
        self.nodes_refused.get_or_create(&[("reason", reason)]).inc();
    }

    fn forgotten(&self, node: &str) {
        self.node_clock_offset.remove(&[("node", node.to_string())]);
    }
}

/// A router that times link opens and requests into [`Metrics`].
pub(crate) struct TimedRouter {
    pub(crate) inner: Arc<dyn RoomRouter>,
    pub(crate) metrics: Arc<Metrics>,
}

#[async_trait]
impl RoomRouter for TimedRouter {
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError> {
        let started = Instant::now();
        let opened = self.inner.open_link(key).await;
        self.metrics.link_open_seconds.observe_duration(started.elapsed());
        if opened.is_err() {
            self.metrics.link_failures.inc();
        }
        opened
    }

    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError> {
        let started = Instant::now();
        let res = self.inner.request(key, req).await;
        self.metrics.room_request_seconds.observe_duration(started.elapsed());
        res
    }
}
