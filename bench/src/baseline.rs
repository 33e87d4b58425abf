//! The bare baseline: a minimal one-process tokio-tungstenite server, the reference the
//! benchmarks compare Partyline with. No routing, no parties, no gRPC, no Redis.
//!
//! - A WebSocket on any path joins the room named by the path (the query is ignored). Every
//!   frame, text or binary, goes to every socket of the room, the sender included (what the
//!   `broadcast` party does). Paths under `/parties/echo/` echo each frame to its sender only
//!   (what the `echo` party does).
//! - Any other HTTP request is answered `200 OK` (the `http` scenario).
//! - Socket buffers as Partyline's gateway sets them (`gateway/src/socket.rs`): 4 KiB read
//!   buffer, writes coalesced from a per-connection queue into up to 64 KiB before one flush,
//!   and a client whose queue reaches 4,096 messages is cut off.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes gathered from a socket's queue into one write before flushing (as the gateway).
const COALESCE_BYTES: usize = 64 << 10;
/// Messages queued for one socket before it is cut off (the gateway's default).
const MAX_QUEUED: usize = 4096;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The socket settings: as the gateway's (`gateway/src/socket.rs`).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(COALESCE_BYTES)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

struct Member {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    kill: Arc<Notify>,
}

impl Member {
    fn deliver(&self, msg: Message) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            self.kill.notify_one();
        } else {
            let _ = self.tx.send(msg);
        }
    }
}

#[derive(Default)]
struct Room {
    members: RwLock<Vec<Member>>,
}

/// The server's state.
#[derive(Default)]
pub struct Baseline {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    next_id: AtomicU64,
}

impl Baseline {
    fn join(&self, key: &str, member: Member) -> Arc<Room> {
        let room = self.rooms.lock().expect("rooms lock").entry(key.to_string()).or_default().clone();
        room.members.write().expect("room lock").push(member);
        room
    }

    fn leave(&self, key: &str, room: &Room, id: u64) {
        let empty = {
            let mut m = room.members.write().expect("room lock");
            m.retain(|m| m.id != id);
            m.is_empty()
        };
        if empty {
            let mut rooms = self.rooms.lock().expect("rooms lock");
            if rooms.get(key).is_some_and(|r| r.members.read().expect("room lock").is_empty()) {
                rooms.remove(key);
            }
        }
    }
}

/// Serves on `listener` until the process ends. `nodelay` sets TCP_NODELAY on accepted sockets
/// (off only to show what Nagle's algorithm does to latency).
pub async fn serve(listener: TcpListener, nodelay: bool) -> anyhow::Result<()> {
    let state = Arc::new(Baseline::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                eprintln!("partyline-baseline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(nodelay);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Binds `addr` and serves.
pub async fn run(addr: SocketAddr, nodelay: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("partyline-baseline listening on http://{}", listener.local_addr()?);
    serve(listener, nodelay).await
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn handle(state: Arc<Baseline>, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = req.headers();
    let is_upgrade = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Ok(text(StatusCode::OK, "OK"));
    }
    let Some(key) = h.get(hyper::header::SEC_WEBSOCKET_KEY) else {
        return Ok(text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let path = req.uri().path().to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
            socket(state, path, ws).await;
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
    h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("accept key is a valid header value"));
    Ok(resp)
}

async fn socket(state: Arc<Baseline>, path: String, ws: Ws) {
    let echo = path.starts_with("/parties/echo/");
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let kill = Arc::new(Notify::new());
    let me = Member { id, tx, queued: queued.clone(), kill: kill.clone() };
    let (sink, mut stream) = ws.split();
    let writer = tokio::spawn(write_loop(sink, rx, queued.clone()));
    let (room, me) = if echo { (None, Some(me)) } else { (Some(state.join(&path, me)), None) };
    loop {
        let frame = tokio::select! {
            _ = kill.notified() => break,
            f = stream.next() => f,
        };
        let msg = match frame {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        match (&room, &me) {
            (Some(room), _) => {
                for m in room.members.read().expect("room lock").iter() {
                    m.deliver(msg.clone());
                }
            }
            (None, Some(me)) => me.deliver(msg),
            (None, None) => unreachable!("a socket is in a room or echoes"),
        }
    }
    if let Some(room) = &room {
        state.leave(&path, room, id);
    }
    drop(me); // the last sender: the writer drains and ends
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut bytes = 0;
        let mut ok = true;
        while let Some(msg) = next.take() {
            bytes += msg.len();
            let fed = sink.feed(msg).await;
            queued.fetch_sub(1, Ordering::AcqRel);
            if fed.is_err() {
                ok = false;
                break;
            }
            if bytes < COALESCE_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !ok || sink.flush().await.is_err() {
            rx.close();
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
