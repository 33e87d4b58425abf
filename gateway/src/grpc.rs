//! The gateway's side of gRPC: [`GrpcRouter`] reaches each room on its owner node through the
//! cluster client (`partyline_cluster::client`), one bidirectional stream per room link, and
//! turns the node's messages back into the link protocol. A link also ends when the room's node
//! loses its shard to another node, when the node is found unusable (stalled, cut from Redis,
//! its clock too far off: see `partyline_cluster::client::Unusable`) or leaves the membership,
//! or when a message from its node arrives after the node's self-fence deadline, so its sockets
//! are closed and reconnect to the new owner.

use std::sync::Mutex;

use async_trait::async_trait;
use futures::future::BoxFuture;
use partyline::client_text;
use partyline::runtime::link::{close_code, FromRoom, ToRoom};
use partyline::storage::unix_ms;
use partyline::sync::Lock;
use partyline::{Request, Response, RoomKey};
use partyline_cluster::client::{ClientError, ClusterClient};
use partyline_cluster::wire;
use partyline_proto::pb;
use tokio::sync::mpsc;

use crate::{OpenLink, RoomLink, RoomRouter, RouteError};

/// Reaches rooms on their owner nodes over gRPC.
pub struct GrpcRouter {
    /// The cluster client.
    pub client: ClusterClient,
}

fn route_error(e: ClientError) -> RouteError {
    match e {
        ClientError::UnknownParty(p) => RouteError::UnknownParty(p),
        ClientError::Busy(why) => RouteError::Busy(why),
        other => RouteError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl RoomRouter for GrpcRouter {
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError> {
        let opened = self.client.open_link(key).await.map_err(route_error)?;
        let room = key.clone();
        // Decoded on the task that applies them (no extra hop). A stream that breaks without the
        // room saying so ends with Gone, so the sockets are closed rather than left waiting; so
        // does a link whose node lost the room's shard to another node (it stalled, or was cut
        // from Redis), unless the room is moving (it said `Pause`: the move ends the link).
        // The same for a node the gateway's watch finds stalled, cut from Redis or with a clock
        // too far off, or that left the membership: its clients reconnect (and are routed
        // around it) within its self-fence time rather than when HTTP/2 keepalive gives up.
        let client = self.client.clone();
        let (shard, epoch, node) = (opened.shard, opened.epoch, opened.node_id.clone());
        let lost: BoxFuture<'static, &'static str> = Box::pin(async move {
            tokio::select! {
                _ = client.lost(shard, epoch) => "the room's node lost its shard; closing its sockets",
                _ = client.node_down(&node) => "the room's node is unusable or gone; closing its sockets",
            }
        });
        let state = LinkEvents { rx: opened.rx, lost, moving: false, done: false };
        let events = futures::stream::unfold(state, move |mut st| {
            let room = room.clone();
            async move {
                if st.done {
                    return None;
                }
                let gone = |reason: &str| FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: reason.into() };
                loop {
                    let next = tokio::select! {
                        biased;
                        m = st.rx.message() => m,
                        why = &mut st.lost, if !st.moving => {
                            tracing::info!(room = %room, "{why}");
                            st.done = true;
                            return Some((gone(client_text::ROOM_MOVED), st));
                        }
                    };
                    match next {
                        Ok(Some(pb::LinkOut { kind: Some(_), valid_until_ms })) if past(valid_until_ms) => {
                            tracing::warn!(
                                room = %room,
                                late_ms = unix_ms().saturating_sub(valid_until_ms),
                                "a message from the room's node arrived after its self-fence deadline; closing its sockets"
                            );
                            st.done = true;
                            return Some((gone(client_text::ROOM_MOVED), st));
                        }
                        Ok(Some(pb::LinkOut { kind: Some(kind), .. })) => match wire::from_room(kind) {
                            Ok(msg) => {
                                st.moving |= matches!(msg, FromRoom::Pause);
                                st.done = matches!(msg, FromRoom::Gone { .. } | FromRoom::Moved { .. });
                                return Some((msg, st));
                            }
                            Err(e) => tracing::warn!(room = %room, error = %e, "dropping a malformed room message"),
                        },
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            st.done = true;
                            return Some((gone(client_text::ROOM_UNAVAILABLE), st));
                        }
                    }
                }
            }
        });
        Ok(OpenLink { sender: Box::new(RemoteLink { tx: Mutex::new(Some(opened.tx)) }), events: Box::pin(events) })
    }

    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError> {
        self.client.request(key, req).await.map_err(route_error)
    }

    fn moved(&self, key: &RoomKey) {
        self.client.forget(partyline::runtime::placement::shard_of(key));
    }
}

/// Whether a node message stamped `valid_until_ms` arrived after its node's self-fence deadline
/// (a node that froze with it in its send buffer and woke up after its lease). Compares the
/// gateway's clock with the node's: clocks kept within a second by NTP are well inside the
/// margin (the deadline is at least `fence_after - renew_every` ahead while a node renews).
fn past(valid_until_ms: u64) -> bool {
    valid_until_ms != 0 && unix_ms() > valid_until_ms
}

/// A link's incoming side: the node's stream and a watch on the room's shard lease.
struct LinkEvents {
    rx: tonic::Streaming<pb::LinkOut>,
    lost: BoxFuture<'static, &'static str>,
    moving: bool,
    done: bool,
}

/// The sending half of a link stream to a node.
struct RemoteLink {
    tx: Mutex<Option<mpsc::Sender<pb::LinkIn>>>,
}

#[async_trait]
impl RoomLink for RemoteLink {
    async fn send(&self, msg: ToRoom) -> Result<(), RouteError> {
        let tx = self.tx.locked().clone();
        let Some(tx) = tx else { return Err(RouteError::Unavailable("the link is closed".into())) };
        tx.send(wire::link_in(msg)).await.map_err(|_| RouteError::Unavailable("the link to the node broke".into()))
    }

    fn try_send(&self, msg: ToRoom) -> Result<Result<(), RouteError>, ToRoom> {
        let guard = self.tx.locked();
        let Some(tx) = guard.as_ref() else { return Ok(Err(RouteError::Unavailable("the link is closed".into()))) };
        let sent = match tx.try_reserve() {
            Ok(permit) => {
                permit.send(wire::link_in(msg));
                Ok(Ok(()))
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                Ok(Err(RouteError::Unavailable("the link to the node broke".into())))
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(msg),
        };
        sent
    }

    async fn close(&self) {
        // Ending the request stream closes the link at the node.
        self.tx.locked().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_late_only_past_a_deadline_it_carries() {
        assert!(!past(0), "no deadline stamped (a message before the room's shard was known)");
        assert!(!past(unix_ms() + 5_000));
        assert!(past(unix_ms() - 1));
    }
}
