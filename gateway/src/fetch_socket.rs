//! WebSockets to URLs outside any room, handled by the `main` party's `on_socket` (PartyKit's
//! static `onSocket`): the hook runs before the upgrade completes (a hook that throws gets 500,
//! as on PartyKit), then the socket lives on the gateway, not in a room. Its frames go to the
//! hook's socket one at a time (bounded: a slow hook slows the client's reads), what the hook
//! sends goes to the client, and the edge's limits apply as to room sockets: message size, rate,
//! per-address sockets, and the gateway's liveness sweep pings a client that went silent.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use partyline::client_text;
use partyline::room_socket::{RoomSocket, SocketEvent, SocketPeer};
use partyline::runtime::link::{close_code, close_reason};
use partyline::sync::Lock;
use partyline::{Message, PartyFactory, Request};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::clients::{Bucket, ClientSlot};
use crate::edge::{self, AxumResponse};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::send_queue::{Queued, SendQueue};
use crate::socket::Ws;
use crate::Inner;

/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs `on_socket` for an upgrade request outside any room and completes the upgrade.
pub(crate) async fn upgrade(
    gw: Arc<Inner>,
    main: Arc<dyn PartyFactory>,
    req: http::Request<Body>,
    client: Option<IpAddr>,
) -> AxumResponse {
    let (mut parts, _body) = req.into_parts();
    let (ws_key, on_upgrade) = match edge::handshake(&mut parts) {
        Ok(h) => h,
        Err(res) => return *res,
    };
    let slot = match edge::admit(&gw, client) {
        Ok(slot) => slot,
        Err(res) => return *res,
    };
    parts.uri = edge::absolute_uri(&parts);
    let req = Request::from_parts(parts, Bytes::new());
    let (socket, peer) = RoomSocket::pair();
    let started = Instant::now();
    let life = main.on_socket(req, edge::lobby(&gw, "main", None), socket).await;
    gw.metrics.hook("on_socket", started);
    let life = match life {
        Ok(life) => life,
        Err(e) => {
            Metrics::inc(&gw.metrics.connections_refused);
            return edge::respond(partyline::web::error_response(
                &e.context("onSocket"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ));
        }
    };
    let config = crate::socket::ws_config(gw.limits.max_message_bytes);
    let span = partyline::runtime::observe::frame_span(|| {
        let span = tracing::info_span!(parent: None, "on_socket");
        span.follows_from(tracing::Span::current());
        span
    });
    tokio::spawn(life.instrument(span.clone()));
    Metrics::inc(&gw.metrics.connections_accepted);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                    pump(&gw, ws, peer, slot).await;
                }
                // The hook's socket hears the client went away.
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                }
            }
        }
        .instrument(span),
    );
    edge::switching_protocols(&ws_key)
}

/// A socket outside any room, as the liveness sweep and a shutdown see it: its queue carries
/// only their pings and close frames (what the hook sends is written by the pump directly).
pub(crate) struct Lone {
    pub(crate) queue: SendQueue,
    pub(crate) live: Liveness,
}

/// Takes a socket out of the gateway's table of sockets outside rooms when its pump ends.
struct Registered<'a> {
    gw: &'a Inner,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.gw.lone_sockets.locked().remove(&self.id);
    }
}

/// What the sweep or a shutdown queued for the socket, or `None` once it is cut off.
async fn control(queue: &SendQueue) -> Option<Queued> {
    std::future::poll_fn(|cx| {
        queue.register(cx);
        if queue.cut().is_some() {
            return Poll::Ready(None);
        }
        match queue.pop() {
            Some(item) => Poll::Ready(Some(item)),
            None => Poll::Pending,
        }
    })
    .await
}

/// Carries frames between the client and the hook's socket until either side closes. The
/// client's liveness is the gateway's sweep's (see `liveness`): the reader marks every frame
/// heard; the sweep's ping and close frames come through the socket's control queue.
async fn pump(gw: &Inner, ws: Ws, mut peer: SocketPeer, slot: Option<ClientSlot>) {
    let edge = &gw.edge;
    let (mut sink, mut stream) = ws.split();
    let rate = edge.max_messages_per_second;
    let mut bucket = Bucket::full(edge.message_burst);
    let queue = SendQueue::new(0, 0);
    let id = gw.next_sid.fetch_add(1, Ordering::Relaxed);
    gw.lone_sockets.locked().insert(id, Lone { queue: queue.clone(), live: Liveness::new() });
    let registered = Registered { gw, id };
    // The close the client sees, when this side ends the socket.
    let close: Option<(u16, String)> = loop {
        tokio::select! {
            frame = stream.next() => {
                queue.heard();
                let msg = match frame {
                    Some(Ok(tungstenite::Message::Text(t))) => Message::from(t.as_str()),
                    Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        let _ = peer.events.send(SocketEvent::Close { code, reason }).await;
                        break None;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket failed");
                        let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                        break Some((close_code::PROTOCOL_ERROR, client_text::PROTOCOL_ERROR.to_string()));
                    }
                    None => {
                        let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                        break None;
                    }
                };
                if rate > 0 && !bucket.take(rate, edge.message_burst) {
                    Metrics::inc(&gw.metrics.rate_limited);
                    let reason = client_text::RATE_LIMITED.to_string();
                    let _ = peer.events.send(SocketEvent::Close { code: close_code::POLICY, reason: reason.clone() }).await;
                    break Some((close_code::POLICY, reason));
                }
                Metrics::inc(&gw.metrics.frames_from_clients);
                if peer.events.send(SocketEvent::Message(msg)).await.is_err() {
                    break Some((close_code::INTERNAL_ERROR, client_text::INTERNAL_ERROR.to_string()));
                }
            }
            sent = peer.recv() => match sent {
                Some(SocketEvent::Message(msg)) => {
                    let frame = match msg {
                        Message::Text(t) => tungstenite::Message::Text(Utf8Bytes::from(t.as_str())),
                        Message::Binary(b) => tungstenite::Message::Binary(b),
                    };
                    if sink.send(frame).await.is_err() {
                        let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                        break None;
                    }
                }
                Some(SocketEvent::Close { code, reason }) => break Some((code, reason)),
                // The hook's code is gone (it failed): the client hears an internal error.
                None => break Some((close_code::INTERNAL_ERROR, client_text::INTERNAL_ERROR.to_string())),
            },
            queued = control(&queue) => match queued {
                Some(Queued::Ping) => {
                    if sink.send(tungstenite::Message::Ping(Bytes::new())).await.is_err() {
                        let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                        break None;
                    }
                }
                // The sweep (no pong) or a shutdown closes the socket: as far as the hook can
                // tell, the client went away without a close of its own.
                Some(Queued::Close(code, reason)) => {
                    let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                    break Some((code, reason));
                }
                // Nothing else is queued here.
                Some(Queued::Msg(_)) => {}
                None => {
                    let _ = peer.events.send(SocketEvent::Close { code: 1006, reason: String::new() }).await;
                    break None;
                }
            },
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(close_reason(&reason)) };
        if sink.send(tungstenite::Message::Close(Some(frame))).await.is_ok() {
            // The client's close frame, or the grace runs out, or the sweep cuts off a client
            // that went silent (a second after its close frame).
            let answered = async { while let Some(Ok(_)) = stream.next().await {} };
            let cut = async { while control(&queue).await.is_some() {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                tokio::select! {
                    _ = answered => {}
                    _ = cut => {}
                }
            })
            .await;
        }
    } else {
        // The client closed: tungstenite queued the reply; send it.
        let _ = sink.flush().await;
    }
    drop(registered);
    drop(slot);
}
