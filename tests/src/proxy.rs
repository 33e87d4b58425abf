//! [`TcpProxy`]: a TCP proxy on loopback that a test can switch between passing traffic,
//! dropping every connection, and holding traffic (a partition), to cut a process from a server
//! for real. The process-level harness ([`crate::procs`]) puts one in front of Redis for each
//! node, so a test can cut a node from Redis while everything else keeps working.
//!
//! - [`Mode::Pass`]: connections are forwarded both ways.
//! - [`Mode::Drop`]: every open connection is reset (both sides, `SO_LINGER` 0), and new ones
//!   are accepted and reset at once: the server looks down.
//! - [`Mode::Hold`]: nothing is forwarded and nothing is closed: open connections stay
//!   established but silent, new ones are accepted and left waiting. Bytes sent meanwhile wait
//!   in the kernel buffers and are delivered when the mode goes back to `Pass`, as TCP
//!   retransmission delivers them after a partition heals; a `Drop` resets them instead.
//!
//! The listener stays bound in every mode, so the address never changes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Reset every connection, open and new.
    Drop,
    /// Forward nothing, close nothing.
    Hold,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    reset: AtomicU64,
}

/// A TCP proxy on `127.0.0.1`; see the module docs. Dropping it closes everything it holds.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` on a free loopback port, in [`Mode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_on(Ipv4Addr::LOCALHOST, upstream).await
    }

    /// Like [`TcpProxy::start`], listening on a free port of `ip` instead (an address of this
    /// machine that a process in another network namespace reaches).
    pub async fn start_on(ip: Ipv4Addr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap_or_else(|e| panic!("bind the proxy on {ip}:0: {e}"));
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, upstream, mode.subscribe(), counters.clone()));
        TcpProxy { addr, upstream, mode, counters, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where traffic goes.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches the mode; takes effect on every connection at once.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Forward traffic again.
    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Reset every connection and refuse new ones (by resetting them).
    pub fn drop_all(&self) {
        self.set_mode(Mode::Drop);
    }

    /// Black-hole the traffic (a partition).
    pub fn hold(&self) {
        self.set_mode(Mode::Hold);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections that were connected upstream and forwarded.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    /// Connections reset by a `Drop` (or because the upstream refused them).
    pub fn reset(&self) -> u64 {
        self.counters.reset.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                conns.spawn(serve(client, upstream, mode.clone(), counters.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Waits while the mode is `Hold`; returns the first other mode.
async fn past_hold(mode: &mut watch::Receiver<Mode>) -> Mode {
    loop {
        let m = *mode.borrow_and_update();
        if m != Mode::Hold {
            return m;
        }
        if mode.changed().await.is_err() {
            return Mode::Drop;
        }
    }
}

fn reset(stream: TcpStream, counters: &Counters) {
    let _ = stream.set_zero_linger();
    counters.reset.fetch_add(1, Ordering::Relaxed);
    drop(stream);
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>, counters: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    if past_hold(&mut mode).await == Mode::Drop {
        return reset(client, &counters);
    }
    let server = tokio::select! {
        server = TcpStream::connect(upstream) => server,
        _ = wait_for(&mut mode, Mode::Drop) => return reset(client, &counters),
    };
    let Ok(server) = server else { return reset(client, &counters) };
    let _ = server.set_nodelay(true);
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let ((client_rd, server_wr, up), (server_rd, client_wr, down)) =
        tokio::join!(pump(client_rd, server_wr, mode.clone()), pump(server_rd, client_wr, mode.clone()));
    if up == End::Dropped || down == End::Dropped {
        if let (Ok(client), Ok(server)) = (client_rd.reunite(client_wr), server_rd.reunite(server_wr)) {
            reset(client, &counters);
            reset(server, &counters);
        }
    }
}

async fn wait_for(mode: &mut watch::Receiver<Mode>, wanted: Mode) {
    loop {
        if *mode.borrow_and_update() == wanted || mode.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The source closed (or failed): the other side was told with a FIN.
    Closed,
    /// The mode went to `Drop`.
    Dropped,
}

/// Copies `rd` to `wr` while the mode is `Pass`, pausing in `Hold`; returns the halves so the
/// caller can reset the whole sockets.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> (OwnedReadHalf, OwnedWriteHalf, End) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if past_hold(&mut mode).await == Mode::Drop {
            return (rd, wr, End::Dropped);
        }
        let n = tokio::select! {
            read = rd.read(&mut buf) => read,
            _ = mode.changed() => continue,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                let _ = wr.shutdown().await;
                return (rd, wr, End::Closed);
            }
            Ok(n) => n,
        };
        // Read just before a Hold: hold it too, so nothing crosses after the partition starts.
        if past_hold(&mut mode).await == Mode::Drop {
            return (rd, wr, End::Dropped);
        }
        let written = tokio::select! {
            w = wr.write_all(&buf[..n]) => w,
            _ = wait_for(&mut mode, Mode::Drop) => return (rd, wr, End::Dropped),
        };
        if written.is_err() {
            return (rd, wr, End::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use partyline_test_macros::timed_test;

    use super::*;

    /// An echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut).await.expect("timed out")
    }

    #[timed_test]
    async fn passes_holds_drops_and_passes_again() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(within(roundtrip(&mut a, b"one")).await.unwrap(), b"one");

        // Hold: the bytes go nowhere until the partition heals, then arrive.
        proxy.hold();
        a.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.read_exact(&mut buf)).await.is_err(),
            "nothing crosses a held proxy"
        );
        let mut b = within(TcpStream::connect(proxy.addr())).await.expect("a held proxy still accepts");
        b.write_all(b"new").await.unwrap();
        proxy.pass();
        within(a.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"held", "held bytes are delivered after the heal");
        let mut buf = [0u8; 3];
        within(b.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"new", "a connection accepted while held is forwarded after the heal");

        // Drop: open connections are reset, new ones too.
        proxy.drop_all();
        let mut one = [0u8; 1];
        match within(a.read(&mut one)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes from a dropped connection"),
        }
        let mut c = within(TcpStream::connect(proxy.addr())).await.unwrap();
        let r = within(roundtrip(&mut c, b"x")).await;
        assert!(r.is_err(), "a new connection is reset while dropping: {r:?}");
        assert!(proxy.reset() >= 3, "reset {}", proxy.reset());

        proxy.pass();
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(within(roundtrip(&mut d, b"back")).await.unwrap(), b"back");
        assert_eq!(proxy.mode(), Mode::Pass);
        assert!(proxy.forwarded() >= 3);
    }

    #[timed_test]
    async fn an_unreachable_upstream_resets_the_client() {
        let gone = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap();
        let proxy = TcpProxy::start(gone).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut one = [0u8; 1];
        match within(s.read(&mut one)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes"),
        }
    }

    #[timed_test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(within(roundtrip(&mut a, b"hi")).await.unwrap(), b"hi");
        drop(proxy);
        let mut one = [0u8; 1];
        match within(a.read(&mut one)).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes after the proxy was dropped"),
        }
    }
}
