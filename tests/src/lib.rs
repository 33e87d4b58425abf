//! Test harness for Partyline's integration suites: starts real servers on `127.0.0.1:0`, and
//! speaks to them with a real WebSocket client and a raw HTTP/1.1 client.
//!
//! - [`DevServer`]: a `partyline dev` server in this process, stopped on drop.
//! - [`Client`]: a WebSocket client with receive helpers that time out instead of hanging.
//! - [`http()`](fn@http): one HTTP request over a fresh TCP connection, exact bytes kept.
//! - [`parties`]: parties that misbehave on purpose (panic, hang, fail) for the limits tests
//!   (`tests/tests/limits.rs`), the edge tests and the cluster tests.
//! - [`cluster`]: [`cluster::TestCluster`], Redis + nodes + gateways on loopback.
//! - [`procs`]: [`procs::ProcCluster`], Redis + nodes + gateways as child processes of the real
//!   `partyline` binary, for fault tests (SIGKILL, SIGSTOP, SIGTERM, Redis cut or restarted).
//! - [`proxy`]: [`proxy::TcpProxy`], a loopback TCP proxy that can drop or hold traffic.
//! - [`load`]: [`load::Load`], WebSocket clients in many rooms that record everything they see.
//! - [`checks`]: what a load run must satisfy against storage and lease epochs.
//! - [`netns`]: network namespaces for process-cluster nodes, to partition them from each other.
//! - [`faults`]: fault scenarios (SIGKILL, SIGSTOP, a node cut from Redis, Redis restarts,
//!   drains, joins) on a process cluster under load, returning what was measured; the fault
//!   tests and the chaos runner (`partyline-chaos`, `scripts/chaos.sh`) use them.
//! - [`run_partysocket_checks`], [`run_yjs_checks`]: the real npm `partysocket` client and the
//!   real `y-partykit` provider under Node.
//! - [`client_texts`]: what clients may read in a close reason or an HTTP error body (issue
//!   22). The test client, [`http()`](fn@http), [`raw_upgrade`] and [`close_payload`] panic at
//!   anything else; the load clients count it as a finding.
//! - [`capture_logs`]: the logs of in-process servers go to the test's output, which the test
//!   runner shows for a failing test (process clusters keep a log file per process instead).

pub mod checks;
pub mod client_texts;
pub mod cluster;
pub mod deploy;
pub mod faults;
pub mod load;
pub mod netns;
pub mod parties;
pub mod procs;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use partyline::PartyRegistry;
use partyline_server::dev::{self, DevConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a receive waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `fut` with a time limit, failing the test when it runs out.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// The example parties plus the test parties.
pub fn all_parties() -> PartyRegistry {
    parties::register(partyline_examples::registry())
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Runs `tests/interop/partysocket.mjs` (the real npm `partysocket` under Node) against `addr`;
/// returns its output, failing the test when any check failed.
pub async fn run_partysocket_checks(addr: SocketAddr) -> String {
    run_interop_script("partysocket.mjs", &[&addr.to_string()], 120).await
}

/// Runs `tests/interop/yjs.mjs` (the real npm `yjs` + `y-partykit` provider under Node) with
/// these arguments (`check <host> [<host>]`, `write <host> <room>`, `read <host> <room>`);
/// returns its output, failing the test when any check failed.
pub async fn run_yjs_checks(args: &[&str]) -> String {
    run_interop_script("yjs.mjs", args, 200).await
}

/// Runs a check script of `tests/interop` under Node with `args`, within `secs`; it must print
/// `N passed, 0 failed` and exit 0.
pub async fn run_interop_script(script: &str, args: &[&str], secs: u64) -> String {
    let root = repo_root();
    let modules = root.join("tests/interop/node_modules");
    assert!(
        modules.join("partysocket").exists() && modules.join("y-partykit").exists(),
        "the interop tests need their npm packages: run scripts/test.sh (it runs `npm ci` in tests/interop)"
    );
    let child = tokio::process::Command::new("node")
        .arg(root.join("tests/interop").join(script))
        .args(args)
        .current_dir(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the interop tests");
    let what = format!("the interop script {script}");
    let out = within(secs, &what, child.wait_with_output()).await.expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{script} checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line:\n{stdout}");
    stdout
}

/// A dev server running in this process.
/// Sends what in-process servers log (`tracing`) to the running test's output, so a failing
/// test shows what the servers said (libtest and nextest print a test's output only when it
/// fails). `RUST_LOG` chooses what is logged; the default is warnings, and Partyline's own info
/// lines. [`DevServer`] and [`cluster::TestCluster`] call it; calling it again does nothing.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,partyline=info,partyline_node=info,partyline_gateway=info,partyline_cluster=info,partyline_server=info",
            )
        });
        // Another subscriber may be set already (a test that installs its own): keep it.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

pub struct DevServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl DevServer {
    /// Starts a server with the example and test parties.
    pub async fn start(cfg: DevConfig) -> Self {
        Self::start_with(cfg, all_parties()).await
    }

    /// Starts a server with these parties.
    pub async fn start_with(cfg: DevConfig, parties: PartyRegistry) -> Self {
        capture_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dev::run(cfg, parties, listener, async {
            let _ = stopped.await;
        }));
        DevServer { addr, stop: Some(stop), task: Some(task) }
    }

    /// A dev config with storage in `dir`.
    pub fn on_disk(dir: impl Into<PathBuf>) -> DevConfig {
        DevConfig { data_dir: Some(dir.into()), ..DevConfig::default() }
    }

    /// `ws://addr{path}`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connects a WebSocket client to `path`.
    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.ws(path)).await.unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    /// One HTTP request to `path`.
    pub async fn http(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        http(self.addr, method, path, &[], body).await
    }

    /// Stops the server and waits until it has released its store.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(20, "server shutdown", task).await.expect("server task").expect("server result");
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A received WebSocket event.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame with code and reason.
    Close(u16, String),
    /// The connection ended without a close frame, or failed.
    Ended,
}

/// A WebSocket client (over TCP unless opened over another stream with
/// [`Client::from_stream`]).
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
}

impl Client {
    /// Connects to `url`; the error includes the HTTP status when the upgrade was refused.
    /// Panics when a refusal's body is not a documented text ([`client_texts::check_body`]).
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _res)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                if let Some(body) = client_texts::refused_upgrade_body(&res) {
                    assert_documented(client_texts::check_body(res.status().as_u16(), &body));
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(res))
            }
            Err(e) => Err(e),
        }
    }
}

/// Fails the test at a close reason or error body that is not a documented text.
#[track_caller]
fn assert_documented(checked: Result<(), String>) {
    if let Err(e) = checked {
        panic!("{e} (issue 22: clients get documented texts only; see partyline::client_text)");
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    /// A client on a WebSocket opened some other way (over TLS, say).
    pub fn from_stream(ws: WebSocketStream<S>) -> Self {
        Client { ws }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.expect("send text");
    }

    /// Sends a text frame; an error (rather than a panic) once the socket is gone.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(WsMessage::text(text)).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(WsMessage::binary(Bytes::copy_from_slice(data))).await.expect("send binary");
    }

    /// Sends a close frame.
    pub async fn close(&mut self, code: u16) {
        let frame =
            tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::from(code), reason: "".into() };
        let _ = self.ws.send(WsMessage::Close(Some(frame))).await;
    }

    /// The next event; fails the test after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Received {
        within(RECV_TIMEOUT.as_secs(), "waiting for a frame", self.next()).await
    }

    /// The next event, or `None` when none comes within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }

    async fn next(&mut self) -> Received {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => return Received::Text(t.to_string()),
                Some(Ok(WsMessage::Binary(b))) => return Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(f))) => {
                    let (code, reason) = match f {
                        Some(f) => (f.code.into(), f.reason.to_string()),
                        None => (1005, String::new()),
                    };
                    assert_documented(client_texts::check_close(code, &reason));
                    return Received::Close(code, reason);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Ended,
            }
        }
    }

    /// The next event, which must be a text frame.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Received::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame parsed as JSON.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        let t = self.recv_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    /// Waits for the close frame, skipping data frames; returns code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Received::Close(code, reason) => return (code, reason),
                Received::Ended => panic!("connection ended without a close frame"),
                _ => continue,
            }
        }
    }
}

/// An HTTP response as received.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request over a new connection and reads the whole response (the request
/// says `Connection: close`). Panics when an error's body (status 400 and above) is not a
/// documented text ([`client_texts::check_body`]).
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let res = http_unchecked(addr, method, path, headers, body).await;
    assert_documented(client_texts::check_body(res.status, &res.text()));
    res
}

/// [`http()`](fn@http) without the check of the body: for what is not a client's view (the
/// admin endpoints of gateways and nodes).
pub async fn http_unchecked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    within(10, "reading an HTTP response", stream.read_to_end(&mut raw)).await.expect("read response");
    parse_response(&raw)
}

/// Parses a raw HTTP/1.1 response (Content-Length or read-to-end bodies, and chunked).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).expect("status").parse().expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = nl + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// Performs a WebSocket handshake over raw TCP and returns the stream and the response head,
/// for tests that check exact bytes or send frames a normal client will not. When the upgrade
/// is refused (400 and above) with a `Content-Length`, the body is read too and must be a
/// documented text ([`client_texts::check_body`]), or the test fails.
pub async fn raw_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within(10, "reading the handshake response", stream.read(&mut byte)).await.unwrap();
        assert!(n == 1, "connection closed during the handshake: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let refused = parse_response(head.as_bytes());
    let length = refused.header("content-length").and_then(|l| l.parse::<usize>().ok());
    if let (true, Some(length)) = (refused.status >= 400, length) {
        let mut body = vec![0u8; length];
        if let Ok(Ok(_)) = tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut body)).await {
            assert_documented(client_texts::check_body(refused.status, &String::from_utf8_lossy(&body)));
        }
    }
    (stream, head)
}

/// Encodes one masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (fin, opcode, payload).
pub async fn read_server_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    within(10, "reading a frame", stream.read_exact(&mut h)).await.expect("frame header");
    let fin = h[0] & 0x80 != 0;
    let opcode = h[0] & 0x0f;
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let mut len = (h[1] & 0x7f) as usize;
    if len == 126 {
        let mut b = [0u8; 2];
        stream.read_exact(&mut b).await.unwrap();
        len = u16::from_be_bytes(b) as usize;
    } else if len == 127 {
        let mut b = [0u8; 8];
        stream.read_exact(&mut b).await.unwrap();
        len = u64::from_be_bytes(b) as usize;
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (fin, opcode, payload)
}

/// The close code and reason of a close frame payload (a server's); panics when the reason is
/// not a documented text ([`client_texts::check_close`]).
pub fn close_payload(payload: &[u8]) -> (u16, String) {
    if payload.len() < 2 {
        return (1005, String::new());
    }
    let (code, reason) =
        (u16::from_be_bytes([payload[0], payload[1]]), String::from_utf8_lossy(&payload[2..]).into_owned());
    assert_documented(client_texts::check_close(code, &reason));
    (code, reason)
}

/// TLS for tests: a client that trusts the test CA (`tests/certs/`, see its `gen.sh`).
pub mod tls {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use tokio::net::TcpStream;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, RootCertStore};
    use tokio_rustls::{client::TlsStream, TlsConnector};

    /// A connector that trusts only the CA in `ca` (PEM).
    pub fn connector(ca: &Path) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots.add(cert.expect("a PEM certificate")).expect("a CA certificate");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(cfg))
    }

    /// A TLS connection to `addr`, checking that it is `localhost`.
    pub async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").unwrap();
        crate::within(10, "the TLS handshake", connector.connect(name, tcp)).await.expect("a TLS handshake")
    }
}
