//! The gateway's accept loop: HTTP/1.1 over TCP (or TLS) served by hyper with a bound on
//! everything a client can hold open. A connection past the TCP cap is answered 503 and closed;
//! a request head must arrive within the header timeout (which also ends idle keep-alive
//! connections); a connection that moves no bytes either way for the idle timeout while no
//! request is being answered is closed (slow readers, stalled bodies); TCP keepalive notices
//! peers that vanished. Each request carries the TCP peer's address ([`Peer`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits::EdgeLimits;
use crate::metrics::Metrics;

pub use tokio_rustls::rustls::ServerConfig;

/// The TCP peer of a request (before any trusted proxy's forwarded headers are read).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// A rustls server configuration for `wss://` and `https://` from PEM files: the certificate
/// chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("could not read the TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("could not read a PEM private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What the accept loop needs besides the listener.
pub(crate) struct Serve {
    pub(crate) router: axum::Router,
    pub(crate) limits: EdgeLimits,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Accepts connections until `shutdown` resolves, then lets the open HTTP connections finish
/// their current request (idle ones close at once) and returns when they are gone. Upgraded
/// WebSockets are not waited for: their owner closes them.
pub(crate) async fn serve(
    listener: TcpListener,
    cfg: Serve,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cfg = Arc::new(cfg);
    let open = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let acceptor = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the connection is lost, the
                    // listener is not. Back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&open, cfg.limits.max_tcp_connections) else {
            Metrics::inc(&cfg.metrics.tcp_refused);
            if acceptor.is_none() {
                tracker.spawn(refuse(tcp));
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = cfg.limits.tcp_keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10).min(idle))
                .with_retries(3);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
        }
        let (cfg, stop, acceptor) = (cfg.clone(), stop.clone(), acceptor.clone());
        tracker.spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = Watched { io: tcp, activity: activity.clone() };
            match acceptor {
                None => serve_conn(io, peer, activity, &cfg, &stop).await,
                Some(acceptor) => match tokio::time::timeout(cfg.limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => serve_conn(tls, peer, activity, &cfg, &stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers a connection over the TCP cap with 503 and closes it.
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str = partyline::client_text::GATEWAY_FULL;
    let res = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(res.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Serves one connection's requests until it closes, is upgraded, idles out, or the gateway
/// shuts down (the request in flight is finished first).
async fn serve_conn<I>(io: I, peer: SocketAddr, activity: Arc<Activity>, cfg: &Serve, stop: &CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = cfg.router.clone();
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let router = router.clone();
        let busy = busy.clone();
        async move {
            let _busy = busy.request();
            router.oneshot(req.map(axum::body::Body::new)).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(cfg.limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let idle = cfg.limits.idle_timeout;
    let mut draining = false;
    loop {
        let check_at = activity.last() + idle;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                // Upgraded (or closed): a WebSocket watches its own liveness.
                activity.watching.store(false, Ordering::Relaxed);
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(check_at), if !idle.is_zero() => {
                if activity.idle_for(idle) {
                    Metrics::inc(&cfg.metrics.http_idle_closed);
                    tracing::debug!(%peer, "closing an HTTP connection that moved no bytes for the idle timeout");
                    return;
                }
            }
        }
    }
}

/// A free place under the TCP connection cap, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place if fewer than `max` are taken (checked and taken in one step).
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a connection last moved bytes, and how many requests it is answering now.
struct Activity {
    /// False once the connection is upgraded: the stream then stops recording.
    watching: AtomicBool,
    start: Instant,
    /// Milliseconds after `start` of the last read or write that moved bytes.
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            watching: AtomicBool::new(true),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        if !self.watching.load(Ordering::Relaxed) {
            return;
        }
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether no bytes moved for `idle` while no request was being answered.
    fn idle_for(&self, idle: Duration) -> bool {
        self.requests.load(Ordering::Acquire) == 0 && self.last().elapsed() >= idle
    }

    /// Counts a request being answered until the guard drops.
    fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that records when it last moved bytes.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
