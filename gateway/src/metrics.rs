//! Gateway counters, served in the Prometheus text format at `/_partyline/metrics`. They show,
//! among other things, that a room broadcast crosses the gateway↔room link once per gateway
//! (`room_broadcasts`) and fans out to every local socket (`frames_to_clients`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The reserved path prefix for the gateway's own endpoints (never routed to `on_fetch`).
pub const ADMIN_PREFIX: &str = "/_partyline/";

/// Counters of one gateway.
#[derive(Default, Debug)]
pub struct Metrics {
    /// WebSocket upgrades completed (101 sent).
    pub connections_accepted: AtomicU64,
    /// Upgrades refused (hooks, limits, room refusals).
    pub connections_refused: AtomicU64,
    /// Clients cut off because their send queue filled.
    pub slow_clients_closed: AtomicU64,
    /// Frames received from clients.
    pub frames_from_clients: AtomicU64,
    /// Frames written to clients.
    pub frames_to_clients: AtomicU64,
    /// `Broadcast` messages received from rooms (one per room broadcast per gateway).
    pub room_broadcasts: AtomicU64,
    /// `Send` messages received from rooms (one per directed frame).
    pub room_sends: AtomicU64,
    /// HTTP requests forwarded to rooms.
    pub room_requests: AtomicU64,
    /// Links opened to rooms.
    pub links_opened: AtomicU64,
    /// Links whose room moved to another node with its sockets handed over.
    pub links_moved: AtomicU64,
    /// Room moves whose sockets could not be handed over (closed with 1012 instead).
    pub moves_failed: AtomicU64,
    /// TCP connections answered 503 at the TCP connection cap.
    pub tcp_refused: AtomicU64,
    /// HTTP connections closed for moving no bytes for the idle timeout.
    pub http_idle_closed: AtomicU64,
    /// WebSockets refused 429 for their client address's limits.
    pub clients_refused: AtomicU64,
    /// WebSockets closed with 1008 for sending faster than the message rate limit.
    pub rate_limited: AtomicU64,
    /// WebSockets closed with 1013 because their room's queue stayed full.
    pub overloaded: AtomicU64,
    /// WebSockets dropped for not answering pings.
    pub ping_timeouts: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the counters plus the given gauges.
    pub fn render(&self, open_sockets: usize, open_links: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP partyline_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE partyline_gateway_{name} counter");
            let _ = writeln!(out, "partyline_gateway_{name} {}", v.load(Ordering::Relaxed));
        };
        counter("connections_accepted_total", "WebSocket upgrades completed.", &self.connections_accepted);
        counter("connections_refused_total", "WebSocket upgrades refused.", &self.connections_refused);
        counter(
            "slow_clients_closed_total",
            "Clients cut off because their send queue filled.",
            &self.slow_clients_closed,
        );
        counter("frames_from_clients_total", "Frames received from clients.", &self.frames_from_clients);
        counter("frames_to_clients_total", "Frames written to clients.", &self.frames_to_clients);
        counter(
            "room_broadcasts_total",
            "Broadcasts received from rooms: one per room broadcast per gateway, whatever the room size.",
            &self.room_broadcasts,
        );
        counter("room_sends_total", "Directed frames received from rooms.", &self.room_sends);
        counter("room_requests_total", "HTTP requests forwarded to rooms.", &self.room_requests);
        counter("links_opened_total", "Links opened to rooms.", &self.links_opened);
        counter("links_moved_total", "Links whose room moved with its sockets handed over.", &self.links_moved);
        counter("moves_failed_total", "Room moves whose sockets were closed instead.", &self.moves_failed);
        counter("tcp_refused_total", "TCP connections refused at the connection cap.", &self.tcp_refused);
        counter("http_idle_closed_total", "HTTP connections closed by the idle timeout.", &self.http_idle_closed);
        counter(
            "clients_refused_total",
            "WebSockets refused for their client address's limits.",
            &self.clients_refused,
        );
        counter("rate_limited_total", "WebSockets closed for exceeding the message rate.", &self.rate_limited);
        counter("overloaded_total", "WebSockets closed because their room was overloaded.", &self.overloaded);
        counter("ping_timeouts_total", "WebSockets dropped for not answering pings.", &self.ping_timeouts);
        let _ = writeln!(out, "# HELP partyline_gateway_open_sockets Client WebSockets open now.");
        let _ = writeln!(out, "# TYPE partyline_gateway_open_sockets gauge");
        let _ = writeln!(out, "partyline_gateway_open_sockets {open_sockets}");
        let _ = writeln!(out, "# HELP partyline_gateway_open_links Rooms this gateway has a link into.");
        let _ = writeln!(out, "# TYPE partyline_gateway_open_links gauge");
        let _ = writeln!(out, "partyline_gateway_open_links {open_links}");
        out
    }
}
