//! Opening client connections: TCP from a chosen local address, then the WebSocket handshake
//! with small buffers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Bytes gathered before a write reaches the socket (a sender's burst goes out in one write).
const WRITE_BUFFER: usize = 64 << 10;

/// The client's tungstenite settings: a 4 KiB read buffer keeps an idle connection small.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Opens a TCP connection to `addr`, from `source` if given (port chosen by the kernel).
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects a WebSocket to `ws://{authority}{path}` at `addr`, within `timeout`. The error is a
/// short kind for the error table.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<Ws, String> {
    let attempt = async {
        let stream = tcp(addr, source).await.map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let request = format!("ws://{authority}{path}")
            .into_client_request()
            .map_err(|e| format!("handshake: bad request: {e}"))?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| handshake_kind(&e))?;
        Ok(ws)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("connect: no 101 within {timeout:?}")),
    }
}

/// A short name for an I/O error.
pub fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timed out".into(),
        AddrNotAvailable => "no local address/port available (ephemeral ports exhausted? try --source-ips)".into(),
        _ if e.raw_os_error() == Some(24) => "too many open files (raise the hard limit: ulimit -Hn)".into(),
        _ => e.to_string(),
    }
}

fn handshake_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let body: String = body.chars().take(80).collect();
            format!("handshake: HTTP {} {}", resp.status().as_u16(), body.trim())
        }
        tungstenite::Error::Io(io) => format!("handshake: {}", io_kind(io)),
        other => format!("handshake: {other}"),
    }
}

/// A short name for a read/write error on an open socket.
pub fn ws_error_kind(what: &str, e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("{what}: {}", io_kind(io)),
        tungstenite::Error::Protocol(p) => format!("{what}: protocol: {p}"),
        other => format!("{what}: {other}"),
    }
}
