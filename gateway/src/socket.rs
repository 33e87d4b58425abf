//! One client WebSocket after the upgrade, driven by one task: it passes the client's frames to
//! the room in order and writes the client's send queue, coalescing whatever is queued into one
//! socket write. It also keeps the socket honest: it holds each socket to its message rate,
//! marks that it heard from the client (the gateway's liveness sweep pings a socket that went
//! silent and drops one that stops answering; a socket keeps no timer of its own), and after
//! closing a socket for the client's fault keeps reading (and discarding) for a moment, so the
//! client gets the close frame rather than a reset.
//!
//! One task per socket, polled by hand ([`Socket::poll`]) rather than a reader and a writer
//! task: an idle socket then costs one small task (its state is the [`Socket`] value, with no
//! per-await futures inside) and no timer, which is most of what the gateway holds per client.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, Stream};
use hyper_util::rt::TokioIo;
use partyline::client_text;
use partyline::runtime::link::{close_code, close_reason, SocketId, ToRoom};
use partyline::{Message, Text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::clients::{Bucket, ClientSlot};
use crate::limits::EdgeLimits;
use crate::links::LinkState;
use crate::metrics::Metrics;
use crate::router::RouteError;
use crate::send_queue::{CutOff, Queued, SendQueue, Written};
use crate::Inner;

/// How long a closing socket waits for the client's close frame before dropping the TCP
/// connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a socket closed for the client's fault waits for its close frame to be written
/// before it starts lingering anyway.
const REFUSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes gathered from the queue into one write before flushing.
const COALESCE_BYTES: usize = 64 << 10;
/// The read buffer of each client socket (see [`ws_config`]).
const READ_BUFFER: usize = 512;
/// Frames read in one poll before the task yields to others.
const READS_PER_POLL: usize = 32;

pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The tungstenite settings for client sockets: a small read buffer and the inbound message
/// limit. The read buffer is allocated for every socket and kept while it is idle, so it is a
/// good part of what an idle socket costs: 512 bytes holds several typical frames per read, and
/// a larger frame grows it to the frame's size (tungstenite reserves a frame's whole length
/// once its header is read). With the 128 KiB default an idle socket would cost ~135 KB. Writes
/// are not capped here: any frame up to the rooms' outbound limit (16 MiB by default) goes out
/// whole, and the send queue bounds what waits.
pub(crate) fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(COALESCE_BYTES)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Everything a socket task needs.
pub(crate) struct SocketTask {
    pub(crate) sid: SocketId,
    pub(crate) link: Arc<LinkState>,
    pub(crate) queue: SendQueue,
    /// The client address's count of open sockets, given back when the socket ends.
    pub(crate) client: Option<ClientSlot>,
}

/// How a socket ended.
enum End {
    /// The client closed, or the socket failed: nothing more to do.
    Done,
    /// The gateway closed the socket for the client's fault: read and discard what the client
    /// still sends before closing TCP.
    Linger,
}

/// How a socket ended, and the error the room hears (if any).
type Ending = (End, Option<String>);

/// Runs a socket until it closes, then takes it out of its room.
pub(crate) async fn run(gw: Arc<Inner>, ws: Ws, task: SocketTask) {
    let mut socket = Socket::new(&gw, &task, ws);
    let (end, error) = std::future::poll_fn(|cx| socket.poll(cx)).await;
    // 1006: the connection ended without a close frame either way.
    gw.metrics.client_closes.inc(socket.close_code.unwrap_or(close_code::ABNORMAL));
    // The ends are boxed: this task lives as long as the socket, and its size is that of its
    // largest state, which should be the running socket's.
    if let End::Linger = end {
        Box::pin(linger(socket.ws, &gw.edge)).await;
    } else {
        drop(socket);
    }
    task.queue.shut();
    Box::pin(gw.detach(&task.link, task.sid, error)).await;
    drop(task.client);
}

/// A running socket: the WebSocket and what its reading and writing halves are doing.
struct Socket<'a> {
    gw: &'a Inner,
    task: &'a SocketTask,
    ws: Ws,
    bucket: Bucket,
    /// A frame for the room waiting for space in the link (the queue was full, or the link is
    /// being opened or moved): reading stops until it is taken.
    sending: Option<futures::future::BoxFuture<'static, Result<(), RouteError>>>,
    /// Frames taken from the send queue and not yet given to tungstenite, and the messages
    /// given to it since the queue was last told (see [`SendQueue::refill`]).
    taken: VecDeque<Queued>,
    written: Written,
    /// Messages given to tungstenite since the last flush, and their bytes (for the metrics).
    batch_frames: u64,
    batch_bytes: usize,
    /// Anything (a message, a ping, a close) given to tungstenite since the last flush.
    unflushed: bool,
    /// Flushing the batch (set when the queue ran empty or the batch is large).
    flushing: bool,
    /// Our close frame is in the batch being flushed.
    close_sent: bool,
    /// The code of the first close frame sent or received (the metrics count it).
    close_code: Option<u16>,
    /// Our close frame went out: the client has this long to answer it.
    closing: Option<Pin<Box<Sleep>>>,
    /// Closed for the client's fault: the reason, and how long the close frame may take to go
    /// out before lingering starts.
    refused: Option<(String, Pin<Box<Sleep>>)>,
}

impl<'a> Socket<'a> {
    fn new(gw: &'a Inner, task: &'a SocketTask, ws: Ws) -> Self {
        Socket {
            gw,
            task,
            ws,
            bucket: Bucket::full(gw.edge.message_burst),
            sending: None,
            taken: VecDeque::new(),
            written: Written::default(),
            batch_frames: 0,
            batch_bytes: 0,
            unflushed: false,
            flushing: false,
            close_sent: false,
            close_code: None,
            closing: None,
            refused: None,
        }
    }

    /// Drives the socket: a cut-off first, then writing (so the queue drains even while the
    /// room is slow to take frames), then reading. Ready when the socket is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        // Registered before looking at the queue: a frame queued after this wakes the task.
        self.task.queue.register(cx);
        if let Some(cut) = self.task.queue.cut() {
            return Poll::Ready(match cut {
                CutOff::Slow => {
                    Metrics::inc(&self.gw.metrics.slow_clients_closed);
                    (End::Done, Some("client did not read its messages; send queue full".into()))
                }
                CutOff::Silent => (End::Done, Some("the client stopped answering pings".into())),
            });
        }
        if let Poll::Ready(end) = self.poll_write(cx) {
            return Poll::Ready(end);
        }
        self.poll_read(cx)
    }

    /// Writes what is queued: frames fed to tungstenite until the queue is empty or the batch
    /// is large, then one flush. Pending while there is nothing to write or the socket is not
    /// writable; ready only when the socket is over.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        loop {
            if self.flushing {
                // What was handed to tungstenite is the client's now: it stops counting against
                // the send queue's bounds (a no-op when reported already).
                self.task.queue.wrote(&mut self.written);
                match Pin::new(&mut self.ws).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready((End::Done, write_error(e))),
                    Poll::Ready(Ok(())) => {}
                }
                self.flushing = false;
                self.unflushed = false;
                // Counted per batch, not per frame: the counters are shared by every socket.
                let metrics = &self.gw.metrics;
                metrics.frames_to_clients.inc_by(std::mem::take(&mut self.batch_frames));
                metrics.bytes_to_clients.inc_by(std::mem::take(&mut self.batch_bytes) as u64);
                if std::mem::take(&mut self.close_sent) {
                    if let Some((reason, _)) = self.refused.take() {
                        return Poll::Ready((End::Linger, Some(reason)));
                    }
                    self.closing = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
                }
            }
            if self.closing.is_some() {
                return Poll::Pending; // nothing goes out after our close frame
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready((End::Done, write_error(e))),
                Poll::Ready(Ok(())) => {}
            }
            let out = match self.taken.pop_front() {
                Some(out) => out,
                None => {
                    if self.taken.capacity() > 64 {
                        // A burst is over: give its memory back.
                        self.taken = VecDeque::new();
                    }
                    if !self.task.queue.refill(&mut self.taken, &mut self.written) {
                        if self.unflushed {
                            self.flushing = true;
                            continue;
                        }
                        return Poll::Pending;
                    }
                    continue;
                }
            };
            let frame = match out {
                Queued::Msg(msg) => {
                    self.batch_frames += 1;
                    self.batch_bytes += msg.len();
                    self.written.add(msg.len());
                    msg
                }
                Queued::Ping => tungstenite::Message::Ping(Bytes::new()),
                Queued::Close(code, reason) => {
                    self.close_sent = true;
                    self.close_code.get_or_insert(code);
                    self.flushing = true;
                    let frame =
                        CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(close_reason(&reason)) };
                    tungstenite::Message::Close(Some(frame))
                }
            };
            if let Err(e) = Pin::new(&mut self.ws).start_send(frame) {
                return Poll::Ready((End::Done, write_error(e)));
            }
            self.unflushed = true;
            if self.batch_bytes >= COALESCE_BYTES {
                self.flushing = true;
            }
        }
    }

    /// Reads the client's frames and passes them to the room, in order. Pending while there is
    /// nothing to read or a frame waits for the room; ready when the socket is over.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        if let Some((reason, wait)) = &mut self.refused {
            // Closed for the client's fault: the close frame goes out (poll_write), or the wait
            // ends, then lingering.
            return match wait.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready((End::Linger, Some(std::mem::take(reason)))),
                Poll::Pending => Poll::Pending,
            };
        }
        if let Some(grace) = &mut self.closing {
            if grace.as_mut().poll(cx).is_ready() {
                return Poll::Ready((End::Done, None));
            }
        }
        for _ in 0..READS_PER_POLL {
            if let Some(sending) = &mut self.sending {
                let sent = match sending.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(sent) => sent,
                };
                self.sending = None;
                if let Some(end) = self.sent(cx, sent) {
                    return end;
                }
            }
            let frame = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            self.task.queue.heard();
            let msg = match frame {
                None => return Poll::Ready((End::Done, None)),
                Some(Ok(tungstenite::Message::Text(t))) => Message::Text(text(t)),
                Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                // A close is replied to on the next read.
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // 1005: a close frame without a code.
                    self.close_code.get_or_insert(frame.map_or(close_code::NO_STATUS, |f| u16::from(f.code)));
                    continue;
                }
                // Pings are answered by tungstenite.
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    let (code, reason) = match &e {
                        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                            tracing::debug!(size, max_size, "message over the limit");
                            (close_code::TOO_BIG, client_text::MESSAGE_TOO_LARGE)
                        }
                        tungstenite::Error::Utf8(_) => (close_code::INVALID_PAYLOAD, client_text::INVALID_UTF8),
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                            return Poll::Ready((End::Done, None));
                        }
                        tungstenite::Error::Protocol(p) if *p != ProtocolError::ResetWithoutClosingHandshake => {
                            tracing::debug!(error = %p, "protocol error");
                            (close_code::PROTOCOL_ERROR, client_text::PROTOCOL_ERROR)
                        }
                        other => return Poll::Ready((End::Done, Some(other.to_string()))),
                    };
                    return self.refuse(cx, code, reason);
                }
            };
            let edge = &self.gw.edge;
            let rate = edge.max_messages_per_second;
            let metrics = &self.gw.metrics;
            if rate > 0 && !self.bucket.take(rate, edge.message_burst) {
                Metrics::inc(&metrics.rate_limited);
                return self.refuse(cx, close_code::POLICY, client_text::RATE_LIMITED);
            }
            Metrics::inc(&metrics.frames_from_clients);
            metrics.bytes_from_clients.inc_by(msg.len() as u64);
            // Almost always taken at once; waiting (a full queue, a link being opened or moved)
            // is boxed, so the socket's own state stays small.
            match self.task.link.try_send(ToRoom::Message { sid: self.task.sid, msg }) {
                Ok(sent) => {
                    if let Some(end) = self.sent(cx, sent) {
                        return end;
                    }
                }
                Err(msg) => {
                    let link = self.task.link.clone();
                    self.sending = Some(Box::pin(async move { link.send(msg).await }));
                }
            }
        }
        // A fast client: let the other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// What a frame handed to the room means for the socket: `None` to go on.
    fn sent(&mut self, cx: &mut Context<'_>, sent: Result<(), RouteError>) -> Option<Poll<Ending>> {
        match sent {
            Ok(()) => None,
            Err(RouteError::Busy(_)) => {
                Metrics::inc(&self.gw.metrics.overloaded);
                Some(self.refuse(cx, close_code::TRY_AGAIN_LATER, client_text::OVERLOADED))
            }
            Err(_) => {
                let reason = client_text::ROOM_UNAVAILABLE.into();
                self.gw.send_close(&self.task.link, self.task.sid, close_code::INTERNAL_ERROR, reason);
                Some(Poll::Ready((End::Done, Some("room unavailable".into()))))
            }
        }
    }

    /// Closes the socket for the client's fault: the close frame, then lingering. Reading stops.
    fn refuse(&mut self, cx: &mut Context<'_>, code: u16, reason: &str) -> Poll<Ending> {
        self.gw.send_close(&self.task.link, self.task.sid, code, reason.to_string());
        self.refused = Some((reason.to_string(), Box::pin(tokio::time::sleep(REFUSE_WAIT))));
        // The close frame was queued (which wakes the task): write it on the next poll.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The error the room hears for a failed write (none for a connection that simply closed).
fn write_error(e: tungstenite::Error) -> Option<String> {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => None,
        other => Some(other.to_string()),
    }
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
