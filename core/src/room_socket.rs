//! A WebSocket-like connection from party code to another room of the same process
//! (PartyKit's `room.parties.<name>.get(id).socket()`): the room sees an ordinary client.

use tokio::sync::mpsc;

use crate::message::Message;
use crate::runtime::handle::RoomHandle;
use crate::runtime::link::{close_code, FromRoom, SocketId, ToRoom};
use crate::storage::Storage;
use crate::web::Request;

/// The one socket of the link a [`RoomSocket`] opens (in this process or over the cluster).
pub const SID: SocketId = 1;

/// How many events from the room wait for the socket's reader before the room's frames wait.
const EVENTS: usize = 1024;

/// What goes over a [`RoomSocket`], either way.
#[derive(Clone, Debug, PartialEq)]
pub enum SocketEvent {
    /// A frame.
    Message(Message),
    /// The socket closed (from the room: its code and reason; to the room: the client closes).
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// A connection to another room, as one of its clients: frames sent with [`SocketSender::send`],
/// what the room sends read from `events`. The events end after a [`SocketEvent::Close`] (or
/// with none when the room went away without one).
pub struct RoomSocket {
    /// Sends frames and the close to the room.
    pub sender: SocketSender,
    /// Frames from the room, then its close.
    pub events: mpsc::Receiver<SocketEvent>,
}

/// The sending half of a [`RoomSocket`].
#[derive(Clone)]
pub struct SocketSender {
    tx: mpsc::UnboundedSender<(Option<(Storage, u64)>, SocketEvent)>,
    /// The calling room's storage: a frame leaves once the writes made before it are durable.
    gate: Option<Storage>,
}

impl SocketSender {
    /// Sends a frame or closes the socket; after a close nothing more is sent. A frame from a
    /// room leaves once every write the room made before it is durable (the output gate).
    pub fn send(&self, event: SocketEvent) {
        let gate = self.gate.as_ref().map(|s| (s.clone(), s.gate_seq()));
        // The socket's task is gone once it closed: frames after that go nowhere, as on a
        // closed WebSocket.
        let _ = self.tx.send((gate, event));
    }

    pub(crate) fn gated_by(&mut self, storage: Storage) {
        self.gate = Some(storage);
    }
}

impl RoomSocket {
    /// Connects to `room` as client `id` with upgrade request `req` (its URI the room's path
    /// and query, as `web::room_request` makes them). Fails when the room refuses the
    /// connection or is gone.
    pub async fn open(room: &RoomHandle, id: &str, req: Request) -> anyhow::Result<RoomSocket> {
        let (tx, mut rx) = mpsc::channel(EVENTS);
        let link = room.open_link(tx).await?;
        let uri = match req.uri().scheme() {
            Some(_) => req.uri().to_string(),
            None => format!("http://partyline.internal{}", req.uri()),
        };
        link.send(ToRoom::Connect { sid: SID, id: id.to_string(), uri, request: Box::new(req) }).await?;
        let mut before = Vec::new();
        loop {
            match rx.recv().await {
                Some(FromRoom::Accepted { .. }) => break,
                Some(FromRoom::Refused { status, reason, .. }) => {
                    anyhow::bail!("room {} refused the connection ({status}): {reason}", room.key())
                }
                Some(FromRoom::Failed { reason, .. }) => {
                    before.push(SocketEvent::Close { code: close_code::INTERNAL_ERROR, reason });
                    break;
                }
                Some(FromRoom::Gone { reason, .. }) => anyhow::bail!("room {} is gone: {reason}", room.key()),
                Some(msg) => before.extend(event_of(msg)),
                None => anyhow::bail!("room {} closed the connection", room.key()),
            }
        }
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (out_tx, mut out) = mpsc::unbounded_channel::<(Option<(Storage, u64)>, SocketEvent)>();
        tokio::spawn(async move {
            for e in before {
                let closed = matches!(e, SocketEvent::Close { .. });
                if events_tx.send(e).await.is_err() || closed {
                    link.close().await;
                    return;
                }
            }
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        if matches!(msg, FromRoom::Pause) {
                            // The room moves: this client does not follow it, it is closed.
                            let _ = link.send(ToRoom::Paused).await;
                            let reason = crate::client_text::ROOM_MOVED.to_string();
                            let _ = events_tx.send(SocketEvent::Close { code: close_code::SERVICE_RESTART, reason }).await;
                            break;
                        }
                        let Some(e) = event_of(msg) else { continue };
                        let closed = matches!(e, SocketEvent::Close { .. });
                        if events_tx.send(e).await.is_err() || closed {
                            break;
                        }
                    }
                    sent = out.recv() => {
                        let Some((gate, e)) = sent else {
                            let _ = link.send(ToRoom::Closed { sid: SID, error: None }).await;
                            break;
                        };
                        if !passes_gate(gate).await {
                            // The writes before it were refused: the frame must not leave.
                            let _ = link.send(ToRoom::Closed { sid: SID, error: None }).await;
                            break;
                        }
                        match e {
                            SocketEvent::Message(msg) => {
                                if link.send(ToRoom::Message { sid: SID, msg }).await.is_err() {
                                    break;
                                }
                            }
                            SocketEvent::Close { .. } => {
                                let _ = link.send(ToRoom::Closed { sid: SID, error: None }).await;
                                break;
                            }
                        }
                    }
                }
            }
            link.close().await;
        });
        Ok(RoomSocket { sender: SocketSender { tx: out_tx, gate: None }, events })
    }
}

/// Waits until the writes a frame follows are durable: `false` when they were refused.
async fn passes_gate(gate: Option<(Storage, u64)>) -> bool {
    let Some((storage, seq)) = gate else { return true };
    let mut progress = storage.progress();
    let durable = progress.wait_for(|p| p.acked >= seq || p.failed.is_some()).await;
    durable.is_ok_and(|p| p.failed.is_none())
}

/// The other end of a [`RoomSocket`] made by [`RoomSocket::pair`]: whoever carries the socket
/// (a gateway's WebSocket to a client, a link to a room in another process) reads what the
/// socket's user sends here and hands it the events of the far side.
pub struct SocketPeer {
    /// Events for the socket's user: frames, then a close.
    pub events: mpsc::Sender<SocketEvent>,
    sent: mpsc::UnboundedReceiver<(Option<(Storage, u64)>, SocketEvent)>,
}

impl SocketPeer {
    /// The next frame or close the socket's user sent, once the writes it follows are durable;
    /// `None` when the user dropped the socket. A frame whose writes were refused ends the
    /// socket: it reads as a close with 1011.
    pub async fn recv(&mut self) -> Option<SocketEvent> {
        let (gate, event) = self.sent.recv().await?;
        if passes_gate(gate).await {
            Some(event)
        } else {
            Some(SocketEvent::Close { code: close_code::INTERNAL_ERROR, reason: String::new() })
        }
    }
}

impl RoomSocket {
    /// A socket and its far end, connected to nothing yet: the far end carries it.
    pub fn pair() -> (RoomSocket, SocketPeer) {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (tx, sent) = mpsc::unbounded_channel();
        (RoomSocket { sender: SocketSender { tx, gate: None }, events }, SocketPeer { events: events_tx, sent })
    }
}

/// What a message of the room's link means for the socket [`SID`], if anything.
pub fn event_of(msg: FromRoom) -> Option<SocketEvent> {
    match msg {
        FromRoom::Send { sid: SID, msg } => Some(SocketEvent::Message(msg)),
        FromRoom::Broadcast { msg, except } if !except.contains(&SID) => Some(SocketEvent::Message(msg)),
        FromRoom::Close { sid: SID, code, reason } | FromRoom::Gone { code, reason } => {
            Some(SocketEvent::Close { code, reason })
        }
        _ => None,
    }
}
