//! The edge's own limits: what one TCP connection, one WebSocket and one client address may
//! hold or do. Room limits (message sizes, queues, storage) are [`partyline::Limits`].

use std::time::Duration;

use crate::clients::TrustedProxies;

/// Limits and timeouts of the client-facing listener. Every one has a default generous enough
/// that the benchmarks and real applications do not meet it, and a flag in the binary.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    /// Most TCP connections the gateway holds at once (HTTP and WebSocket); more are answered
    /// 503 and closed (0: no limit).
    pub max_tcp_connections: usize,
    /// Time a client has to send a complete request head (also the TLS handshake, and how long
    /// an idle keep-alive connection waits for its next request); past it the connection is
    /// closed.
    pub header_timeout: Duration,
    /// Time a client has to send a request body; past it: 408.
    pub body_timeout: Duration,
    /// An HTTP connection that moves no bytes either way for this long while no request is
    /// being answered is closed (slow readers, stalled bodies; 0: never).
    pub idle_timeout: Duration,
    /// TCP keepalive idle time on accepted connections (`None`: off), so peers that vanished
    /// without a FIN are noticed by the kernel.
    pub tcp_keepalive: Option<Duration>,
    /// How often the gateway pings a WebSocket that has been silent (`None`: never).
    pub ping_interval: Option<Duration>,
    /// A WebSocket that sends nothing (no frame, no pong) for this long after a ping is closed
    /// (1001) and dropped.
    pub pong_timeout: Duration,
    /// Messages per second one WebSocket may send on average (0: no limit); past its burst the
    /// socket is closed with 1008.
    pub max_messages_per_second: u32,
    /// Messages one WebSocket may send at once above the average rate.
    pub message_burst: u32,
    /// Most open WebSockets from one client address (IPv6: one /64); more are answered 429
    /// (0: no limit).
    pub max_connections_per_ip: usize,
    /// New WebSockets per second one client address may open on average (0: no limit); past
    /// its burst: 429.
    pub max_connects_per_ip_per_second: u32,
    /// New WebSockets one client address may open at once above the average rate.
    pub connect_burst: u32,
    /// After the gateway closes a WebSocket for a client's fault (1009, 1007, 1008), how long it
    /// keeps reading and discarding what the client still sends, so the close frame arrives
    /// instead of a reset.
    pub linger: Duration,
    /// Most bytes read and discarded while lingering.
    pub linger_bytes: usize,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` say who the client is; from anyone else
    /// those headers are replaced.
    pub trusted_proxies: TrustedProxies,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_tcp_connections: 110_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(60)),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(30),
            max_messages_per_second: 10_000,
            message_burst: 20_000,
            max_connections_per_ip: 30_000,
            // The load tester's idle run opens 4,000 a second from one address.
            max_connects_per_ip_per_second: 5_000,
            connect_burst: 10_000,
            linger: Duration::from_secs(5),
            linger_bytes: 64 << 20,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}
