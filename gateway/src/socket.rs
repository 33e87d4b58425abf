//! One client WebSocket after the upgrade: a reader that passes frames to the room in order,
//! and a writer that drains the client's send queue, coalescing whatever is queued into one
//! socket write.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use partyline::actor::close_reason;
use partyline::link::{close_code, SocketId, ToRoom};
use partyline::{Message, Text};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::links::{LinkState, Out, Outbox};
use crate::metrics::Metrics;
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
    pub(crate) outbox: Outbox,
}

/// Runs a socket until it closes, then takes it out of its room.
pub(crate) async fn run(gw: std::sync::Arc<Inner>, ws: Ws, task: SocketTask) {
    let (sink, mut stream) = ws.split();
    let closing = CancellationToken::new();
    let kill = task.outbox.kill().clone();
    let metrics = gw.metrics.clone();
    let writer = tokio::spawn(write_loop(metrics.clone(), sink, task.outbox.clone(), kill.clone(), closing.clone()));
    let mut error: Option<String> = None;
    let grace = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    // Made once, not per frame: a fresh cancellation future per loop turn costs a waiter
    // registration every time.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        // Biased, frames first: the other branches are only polled when no frame is ready.
        tokio::select! {
            biased;
            frame = stream.next() => {
                let msg = match frame {
                    None => break,
                    Some(Ok(tungstenite::Message::Text(t))) => Message::Text(text(t)),
                    Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                    Some(Ok(_)) => continue, // ping/pong are answered by tungstenite; close is replied to on the next read
                    Some(Err(e)) => {
                        let (code, reason) = match &e {
                            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                                (close_code::TOO_BIG, format!("Message is too large: {size} > {max_size}"))
                            }
                            tungstenite::Error::Utf8(_) => (close_code::INVALID_PAYLOAD, "text frame is not valid UTF-8".into()),
                            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => break,
                            other => {
                                error = Some(other.to_string());
                                break;
                            }
                        };
                        error = Some(reason.clone());
                        gw.send_close(&task.link, task.sid, code, reason);
                        // Give the writer a moment to put the close frame on the wire.
                        let _ = tokio::time::timeout(Duration::from_secs(1), closing.cancelled()).await;
                        break;
                    }
                };
                Metrics::inc(&metrics.frames_from_clients);
                if task.link.send(ToRoom::Message { sid: task.sid, msg }).await.is_err() {
                    gw.send_close(&task.link, task.sid, close_code::INTERNAL_ERROR, "room unavailable".into());
                    error = Some("room unavailable".into());
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing.cancelled()).await;
                    break;
                }
            }
            _ = &mut killed => {
                Metrics::inc(&metrics.slow_clients_closed);
                error = Some("client did not read its messages; send queue full".into());
                break;
            }
            _ = &mut grace => break,
        }
    }
    kill.cancel();
    let _ = writer.await;
    task.outbox.shut();
    gw.detach(&task.link, task.sid, error).await;
}

fn text(t: Utf8Bytes) -> Text {
    // tungstenite validated the UTF-8 already; this re-check is cheap and keeps Text's guarantee local.
    Text::from_utf8(Bytes::from(t)).unwrap_or_default()
}

async fn write_loop(
    metrics: std::sync::Arc<Metrics>,
    mut sink: futures::stream::SplitSink<Ws, tungstenite::Message>,
    outbox: Outbox,
    kill: CancellationToken,
    closing: CancellationToken,
) {
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        let first = match outbox.pop() {
            Some(out) => out,
            None => {
                tokio::select! {
                    biased;
                    _ = outbox.ready() => continue,
                    _ = &mut killed => return,
                }
            }
        };
        let write = async {
            let mut next = Some(first);
            let mut batch_bytes = 0;
            let mut close = None;
            while let Some(out) = next.take() {
                match out {
                    Out::Msg(msg) => {
                        batch_bytes += msg.len();
                        let frame = match msg {
                            Message::Text(t) => {
                                tungstenite::Message::Text(Utf8Bytes::try_from(t.into_bytes()).unwrap_or_default())
                            }
                            Message::Binary(b) => tungstenite::Message::Binary(b),
                        };
                        sink.feed(frame).await?;
                        Metrics::inc(&metrics.frames_to_clients);
                    }
                    Out::Close(code, reason) => {
                        close = Some((code, reason));
                        break;
                    }
                }
                if batch_bytes < COALESCE_BYTES {
                    next = outbox.pop();
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
            r = write => r,
            _ = &mut killed => return,
        };
        match done {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                closing.cancel();
                return;
            }
        }
    }
}
