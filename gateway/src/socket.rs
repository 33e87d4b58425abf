//! One client WebSocket after the upgrade: a reader that passes frames to the room in order,
//! and a writer that drains the client's send queue, coalescing whatever is queued into one
//! socket write. The reader also keeps the socket honest: it pings a socket that went silent
//! and drops one that stops answering, holds each socket to its message rate, and after
//! closing a socket for the client's fault keeps reading (and discarding) for a moment, so the
//! client gets the close frame rather than a reset.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use partyline::client_text;
use partyline::runtime::link::{close_code, close_reason, SocketId, ToRoom};
use partyline::{Message, Text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::clients::{Bucket, ClientSlot};
use crate::limits::EdgeLimits;
use crate::links::LinkState;
use crate::metrics::Metrics;
use crate::router::RouteError;
use crate::send_queue::{Queued, SendQueue};
use crate::Inner;

/// How long a closing socket waits for the client's close frame before dropping the TCP
/// connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bytes gathered from the queue into one write before flushing.
const COALESCE_BYTES: usize = 64 << 10;

pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The tungstenite settings for client sockets: small read buffers (an idle socket costs a few
/// KiB instead of ~135 KB with the 128 KiB default) and the inbound message limit. Writes are not
/// capped here: any frame up to the rooms' outbound limit (16 MiB by default) goes out whole, and
/// the send queue bounds what waits.
pub(crate) fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(COALESCE_BYTES)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Everything a socket task needs.
pub(crate) struct SocketTask {
    pub(crate) sid: SocketId,
    pub(crate) link: std::sync::Arc<LinkState>,
    pub(crate) queue: SendQueue,
    /// The client address's count of open sockets, given back when the socket ends.
    pub(crate) client: Option<ClientSlot>,
}

/// How the reader loop ended.
enum End {
    /// The client closed, or the socket failed: nothing more to do.
    Done,
    /// The gateway closed the socket for the client's fault: read and discard what the client
    /// still sends before closing TCP.
    Linger,
}

/// Runs a socket until it closes, then takes it out of its room.
pub(crate) async fn run(gw: std::sync::Arc<Inner>, ws: Ws, task: SocketTask) {
    let (sink, stream) = ws.split();
    let closing = CancellationToken::new();
    let kill = task.queue.kill().clone();
    let metrics = gw.metrics.clone();
    let writer = tokio::spawn(write_loop(metrics.clone(), sink, task.queue.clone(), kill.clone(), closing.clone()));
    let (end, error, stream) = read_loop(&gw, &task, stream, &closing, &kill).await;
    kill.cancel();
    let sink = writer.await.ok();
    if let (End::Linger, Some(sink)) = (end, sink) {
        if let Ok(ws) = stream.reunite(sink) {
            linger(ws, &gw.edge).await;
        }
    }
    task.queue.shut();
    gw.detach(&task.link, task.sid, error).await;
    drop(task.client);
}

/// Reads the client's frames until the socket closes; returns how it ended, the error the room
/// hears (if any), and the stream (for lingering).
async fn read_loop(
    gw: &Inner,
    task: &SocketTask,
    mut stream: SplitStream<Ws>,
    closing: &CancellationToken,
    kill: &CancellationToken,
) -> (End, Option<String>, SplitStream<Ws>) {
    let edge: &EdgeLimits = &gw.edge;
    let metrics = &gw.metrics;
    let rate = edge.max_messages_per_second;
    let mut bucket = Bucket::full(edge.message_burst);
    let grace = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    // Made once, not per frame: a fresh cancellation future per loop turn costs a waiter
    // registration every time.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    // Liveness: a socket silent for the ping interval is pinged; one silent for the pong
    // timeout after that is gone.
    let mut heard = Instant::now();
    let mut pinged: Option<Instant> = None;
    let ping_every = edge.ping_interval.unwrap_or(Duration::MAX);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    // Closes the socket for the client's fault: the close frame, then lingering.
    let refuse = |code: u16, reason: String| {
        gw.send_close(&task.link, task.sid, code, reason.clone());
        (End::Linger, Some(reason))
    };
    let (end, error) = loop {
        let check = match pinged {
            Some(at) => at + edge.pong_timeout,
            None => heard.checked_add(ping_every).unwrap_or(far),
        };
        // Biased, frames first: the other branches are only polled when no frame is ready.
        tokio::select! {
            biased;
            frame = stream.next() => {
                heard = Instant::now();
                pinged = None;
                let msg = match frame {
                    None => break (End::Done, None),
                    Some(Ok(tungstenite::Message::Text(t))) => Message::Text(text(t)),
                    Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(_)) => continue, // ping/pong are answered by tungstenite; close is replied to on the next read
                    Some(Err(e)) => {
                        let (code, reason) = match &e {
                            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                                {
                                tracing::debug!(size, max_size, "message over the limit");
                                (close_code::TOO_BIG, client_text::MESSAGE_TOO_LARGE.into())
                            }
                            }
                            tungstenite::Error::Utf8(_) => (close_code::INVALID_PAYLOAD, client_text::INVALID_UTF8.into()),
                            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => break (End::Done, None),
                            tungstenite::Error::Protocol(p) if *p != ProtocolError::ResetWithoutClosingHandshake => {
                                {
                                tracing::debug!(error = %p, "protocol error");
                                (close_code::PROTOCOL_ERROR, client_text::PROTOCOL_ERROR.into())
                            }
                            }
                            other => break (End::Done, Some(other.to_string())),
                        };
                        break refuse(code, reason);
                    }
                };
                if rate > 0 && !bucket.take(rate, edge.message_burst) {
                    Metrics::inc(&metrics.rate_limited);
                    break refuse(close_code::POLICY, client_text::RATE_LIMITED.into());
                }
                Metrics::inc(&metrics.frames_from_clients);
                metrics.bytes_from_clients.inc_by(msg.len() as u64);
                match task.link.send(ToRoom::Message { sid: task.sid, msg }).await {
                    Ok(()) => {}
                    Err(RouteError::Busy(_)) => {
                        Metrics::inc(&metrics.overloaded);
                        break refuse(close_code::TRY_AGAIN_LATER, client_text::OVERLOADED.into());
                    }
                    Err(_) => {
                        gw.send_close(&task.link, task.sid, close_code::INTERNAL_ERROR, client_text::ROOM_UNAVAILABLE.into());
                        break (End::Done, Some("room unavailable".into()));
                    }
                }
            }
            _ = &mut killed => {
                Metrics::inc(&metrics.slow_clients_closed);
                break (End::Done, Some("client did not read its messages; send queue full".into()));
            }
            _ = &mut grace => break (End::Done, None),
            _ = tokio::time::sleep_until(check), if edge.ping_interval.is_some() => {
                if pinged.is_some() {
                    Metrics::inc(&metrics.ping_timeouts);
                    gw.send_close(&task.link, task.sid, close_code::GOING_AWAY, client_text::NO_PONG.into());
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing.cancelled()).await;
                    break (End::Done, Some("the client stopped answering pings".into()));
                }
                task.queue.ping();
                pinged = Some(Instant::now());
            }
        }
    };
    if matches!(end, End::Linger) {
        // Give the writer a moment to put the close frame on the wire.
        let _ = tokio::time::timeout(Duration::from_secs(1), closing.cancelled()).await;
    }
    (end, error, stream)
}

/// After a close frame sent for the client's fault (it may still be sending a large message):
/// half-close the TCP connection and read and discard what arrives, bounded in bytes and time,
/// until the client closes its side. Closing with unread data would make the kernel answer
/// with a reset, and the client would never see the close frame.
async fn linger(mut ws: Ws, edge: &EdgeLimits) {
    let io = ws.get_mut();
    let deadline = Instant::now() + edge.linger;
    let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
    let mut buf = vec![0u8; 16 << 10];
    let mut left = edge.linger_bytes;
    while left > 0 {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

fn text(t: Utf8Bytes) -> Text {
    // tungstenite validated the UTF-8 already; this re-check is cheap and keeps Text's guarantee local.
    Text::from_utf8(Bytes::from(t)).unwrap_or_default()
}

type Sink = SplitSink<Ws, tungstenite::Message>;

/// Writes the client's queue until the socket closes; hands the sink back (for lingering).
async fn write_loop(
    metrics: std::sync::Arc<Metrics>,
    mut sink: Sink,
    queue: SendQueue,
    kill: CancellationToken,
    closing: CancellationToken,
) -> Sink {
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        let first = match queue.pop() {
            Some(out) => out,
            None => {
                tokio::select! {
                    biased;
                    _ = queue.ready() => continue,
                    _ = &mut killed => return sink,
                }
            }
        };
        let write = async {
            let mut next = Some(first);
            let mut batch_bytes = 0;
            let mut close = None;
            while let Some(out) = next.take() {
                match out {
                    Queued::Msg(msg) => {
                        batch_bytes += msg.len();
                        metrics.bytes_to_clients.inc_by(msg.len() as u64);
                        let frame = match msg {
                            Message::Text(t) => {
                                tungstenite::Message::Text(Utf8Bytes::try_from(t.into_bytes()).unwrap_or_default())
                            }
                            Message::Binary(b) => tungstenite::Message::Binary(b),
                        };
                        sink.feed(frame).await?;
                        Metrics::inc(&metrics.frames_to_clients);
                    }
                    Queued::Ping => sink.feed(tungstenite::Message::Ping(Bytes::new())).await?,
                    Queued::Close(code, reason) => {
                        close = Some((code, reason));
                        break;
                    }
                }
                if batch_bytes < COALESCE_BYTES {
                    next = queue.pop();
                }
            }
            sink.flush().await?;
            if let Some((code, reason)) = close {
                let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(close_reason(&reason)) };
                sink.send(tungstenite::Message::Close(Some(frame))).await?;
                return Ok::<bool, tungstenite::Error>(true);
            }
            Ok(false)
        };
        let done = tokio::select! {
            biased;
            r = write => Some(r),
            _ = &mut killed => None,
        };
        match done {
            None => return sink,
            Some(Ok(false)) => {}
            Some(Ok(true) | Err(_)) => {
                closing.cancel();
                return sink;
            }
        }
    }
}
