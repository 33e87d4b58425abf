//! Sockets from party code to rooms anywhere in the cluster (PartyKit's `stub.socket()`), the
//! cluster's [`PartiesClient::socket`](partyline::PartiesClient::socket): the calling process
//! opens a link stream of its own to the room's owner ([`ClusterClient::open_link`]), connects
//! one socket on it as a gateway would, and carries the socket's frames both ways. The room
//! sees an ordinary client.
//!
//! How such a socket ends, as the party sees it (its events):
//! - the room closes it (or is gone): that close, as under `partyline dev`;
//! - the room moves to another node (it pauses the link), or its node loses the room's shard,
//!   is found unusable or leaves the membership, or a message arrives after the node's
//!   self-fence deadline: a close with 1012 [`client_text::ROOM_MOVED`]. The socket does not
//!   follow the room: the party opens a new one (as a client would reconnect). The pause is not
//!   answered: the link closes instead, so the room's move does not count this socket among
//!   those its next owner waits to adopt;
//! - the stream breaks (the node died, the connection was cut): the events end without a close,
//!   which reads as an abnormal closure (1006) in JS, as a WebSocket whose connection dropped.
//!
//! Frames keep their order each way. The room's frames wait in the socket's event queue (as
//! under `dev`); when the party does not read them, the stream stops being read and HTTP/2 flow
//! control holds the room's frames back at the node. The party's frames wait for its output
//! gate, then for room in the link's queue.

use std::future::Future;
use std::pin::Pin;

use partyline::client_text;
use partyline::room_socket::{event_of, RoomSocket, SocketEvent, SocketPeer, SID};
use partyline::runtime::link::{close_code, FromRoom, ToRoom};
use partyline::{Request, RoomKey};
use partyline_proto::pb;
use tokio::sync::mpsc;

use crate::client::ClusterClient;
use crate::wire;

/// Connects to `room` as client `id` with upgrade request `req` (as `web::room_request` makes
/// it). Fails when the room cannot be reached, refuses the connection, or is gone or moving
/// before it accepted.
pub async fn open(client: &ClusterClient, room: RoomKey, id: String, req: Request) -> anyhow::Result<RoomSocket> {
    let opened = client.open_link(&room).await?;
    let watch = client.clone();
    let (shard, epoch, node) = (opened.shard, opened.epoch, opened.node_id.clone());
    let lost: Lost = Box::pin(async move {
        tokio::select! {
            _ = watch.lost(shard, epoch) => "the room's node lost its shard",
            _ = watch.node_down(&node) => "the room's node is unusable or gone",
        }
    });
    let mut link = Inbound { rx: opened.rx, lost, room: room.clone() };
    let uri = match req.uri().scheme() {
        Some(_) => req.uri().to_string(),
        None => format!("http://partyline.internal{}", req.uri()),
    };
    let connect = ToRoom::Connect { sid: SID, id, uri, request: Box::new(req) };
    if opened.tx.send(wire::link_in(connect)).await.is_err() {
        anyhow::bail!("room {room} closed the connection");
    }
    let mut before = Vec::new();
    loop {
        match link.next().await {
            Next::Room(FromRoom::Accepted { .. }) => break,
            Next::Room(FromRoom::Refused { status, reason, .. }) => {
                anyhow::bail!("room {room} refused the connection ({status}): {reason}")
            }
            Next::Room(FromRoom::Failed { reason, .. }) => {
                before.push(SocketEvent::Close { code: close_code::INTERNAL_ERROR, reason });
                break;
            }
            Next::Room(FromRoom::Gone { reason, .. }) => anyhow::bail!("room {room} is gone: {reason}"),
            Next::Room(FromRoom::Pause | FromRoom::Moved { .. }) => {
                anyhow::bail!("room {room} is moving to another node: try again")
            }
            Next::Room(msg) => before.extend(event_of(msg)),
            Next::Lost(why) => anyhow::bail!("room {room} is unavailable: {why}"),
            Next::Broken(why) => anyhow::bail!("room {room} closed the connection: {why}"),
        }
    }
    let (socket, peer) = RoomSocket::pair();
    tokio::spawn(carry(link, opened.tx, peer, before));
    Ok(socket)
}

/// Resolves when the link's node can no longer act for the room.
type Lost = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// The incoming half of a room socket's link.
struct Inbound {
    rx: tonic::Streaming<pb::LinkOut>,
    lost: Lost,
    room: RoomKey,
}

/// What the link brought next.
enum Next {
    /// A message of the room.
    Room(FromRoom),
    /// The node can no longer act for the room (see [`Lost`]), or sent a message after its
    /// self-fence deadline.
    Lost(&'static str),
    /// The stream ended or broke without the room closing the socket.
    Broken(String),
}

impl Inbound {
    /// The next message of the room. After [`Next::Lost`] or [`Next::Broken`] it must not be
    /// called again.
    async fn next(&mut self) -> Next {
        loop {
            let msg = tokio::select! {
                biased;
                m = self.rx.message() => m,
                why = &mut self.lost => return Next::Lost(why),
            };
            match msg {
                Ok(Some(pb::LinkOut { kind: Some(_), valid_until_ms })) if past(valid_until_ms) => {
                    return Next::Lost("a message from the room's node arrived after its self-fence deadline");
                }
                Ok(Some(pb::LinkOut { kind: Some(kind), .. })) => match wire::from_room(kind) {
                    Ok(msg) => return Next::Room(msg),
                    Err(e) => tracing::warn!(room = %self.room, error = %e, "dropping a malformed room message"),
                },
                Ok(Some(_)) => {}
                Ok(None) => return Next::Broken("the room's node ended the link".into()),
                Err(status) => return Next::Broken(status.message().to_string()),
            }
        }
    }
}

/// Carries a socket between its party (`peer`) and the room's link until either side ends it;
/// the link closes when this returns (its request stream ends with `tx`).
async fn carry(mut link: Inbound, tx: mpsc::Sender<pb::LinkIn>, mut peer: SocketPeer, before: Vec<SocketEvent>) {
    // The two directions run as two loops, so that a frame whose output gate is pending is never
    // dropped by a race with the room's frames. The peer's sender is taken out, so the party's
    // events end as soon as the incoming loop does.
    let events = std::mem::replace(&mut peer.events, mpsc::channel(1).0);
    let room = link.room.clone();
    let incoming = async move {
        for e in before {
            let closed = matches!(e, SocketEvent::Close { .. });
            if events.send(e).await.is_err() || closed {
                return;
            }
        }
        loop {
            let e = match link.next().await {
                Next::Room(FromRoom::Pause) => {
                    tracing::debug!(room = %link.room, "the room moves; closing a room socket to it");
                    moved()
                }
                Next::Room(msg) => match event_of(msg) {
                    Some(e) => e,
                    None => continue,
                },
                Next::Lost(why) => {
                    tracing::info!(room = %link.room, "{why}; closing a room socket to it");
                    moved()
                }
                Next::Broken(why) => {
                    // No close: the party sees the connection drop (1006).
                    tracing::info!(room = %link.room, why = %why, "the link of a room socket broke");
                    return;
                }
            };
            let closed = matches!(e, SocketEvent::Close { .. });
            if events.send(e).await.is_err() || closed {
                return;
            }
        }
    };
    let out = tx.clone();
    // `true` when the party closed or dropped the socket; `false` when the link broke.
    let outgoing = async move {
        loop {
            let msg = match peer.recv().await {
                Some(SocketEvent::Message(msg)) => ToRoom::Message { sid: SID, msg },
                Some(SocketEvent::Close { .. }) | None => {
                    let _ = out.send(wire::link_in(ToRoom::Closed { sid: SID, error: None })).await;
                    return true;
                }
            };
            if out.send(wire::link_in(msg)).await.is_err() {
                return false;
            }
        }
    };
    tokio::pin!(incoming);
    tokio::select! {
        () = &mut incoming => {}
        closed = outgoing => {
            // A broken link: what the room sent before the break still reaches the party, then
            // the incoming loop sees the break.
            if !closed {
                incoming.await;
            }
        }
    }
    drop(tx);
    tracing::debug!(room = %room, "room socket closed");
}

/// The close of a socket whose room moved or whose node lost it.
fn moved() -> SocketEvent {
    SocketEvent::Close { code: close_code::SERVICE_RESTART, reason: client_text::ROOM_MOVED.into() }
}

/// Whether a node message stamped `valid_until_ms` arrived after its node's self-fence deadline
/// (as a gateway judges it).
fn past(valid_until_ms: u64) -> bool {
    valid_until_ms != 0 && u64::try_from(partyline::storage::now_ms()).unwrap_or(0) > valid_until_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use partyline::Message;

    #[test]
    fn only_this_sockets_messages_reach_it() {
        let text = || Message::from("x");
        assert_eq!(event_of(FromRoom::Send { sid: SID, msg: text() }), Some(SocketEvent::Message(text())));
        assert_eq!(event_of(FromRoom::Send { sid: 2, msg: text() }), None);
        assert_eq!(event_of(FromRoom::Broadcast { msg: text(), except: vec![] }), Some(SocketEvent::Message(text())));
        assert_eq!(event_of(FromRoom::Broadcast { msg: text(), except: vec![SID] }), None);
        let close = SocketEvent::Close { code: 4000, reason: "bye".into() };
        assert_eq!(event_of(FromRoom::Close { sid: SID, code: 4000, reason: "bye".into() }), Some(close.clone()));
        assert_eq!(event_of(FromRoom::Gone { code: 4000, reason: "bye".into() }), Some(close));
        assert_eq!(event_of(FromRoom::Joined { sid: SID }), None);
        assert_eq!(event_of(FromRoom::State { sid: SID, state: None }), None);
    }

    #[test]
    fn a_late_message_is_past_its_deadline() {
        assert!(!past(0));
        assert!(past(1));
        assert!(!past(u64::MAX));
    }
}
