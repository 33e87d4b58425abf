//! Handovers, when a room moves between nodes: the leaving instance pauses its links, makes its
//! writes durable and tells each link the room moved (or that it is gone); the new instance
//! adopts the sockets those links hand over, holding other work until they have (gathering).

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::client_text;
use crate::connection::ConnShared;
use crate::room::LinkId;
use crate::runtime::actor::{Actor, Gathering, Moving};
use crate::runtime::handle::RoomExit;
use crate::runtime::link::{close_code, FromRoom, SocketId};
use crate::sync::Lock;

/// How long a room that was moved here waits for the links of its previous instance to adopt
/// their sockets before it serves anything else.
const GATHER_WAIT: Duration = Duration::from_secs(3);

impl Gathering {
    pub(super) fn new() -> Self {
        Gathering { deadline: Instant::now() + GATHER_WAIT, expected: None, adopted: HashSet::new() }
    }

    pub(super) fn complete(&self) -> bool {
        self.expected.is_some_and(|n| self.adopted.len() >= n)
    }
}

impl Actor {
    /// Starts moving out; `Some` when the room can stop at once.
    pub(super) async fn begin_move(&mut self, deadline: Instant) -> Option<RoomExit> {
        if self.moving.is_some() {
            return None;
        }
        // Work held while gathering ran before this (see the actor loop): nothing is dropped.
        self.gathering = None;
        self.moving = Some(Moving { deadline, waiting: HashSet::new(), paused: Vec::new() });
        if self.hibernate && !self.links.is_empty() {
            let links: Vec<LinkId> = self.links.iter().copied().collect();
            for link in &links {
                self.shared().emit_link(*link, FromRoom::Pause);
            }
            self.moving.as_mut().expect("set").waiting = links.into_iter().collect();
            return None;
        }
        Some(self.finish_move().await)
    }

    /// A link answered its pause: it will hand its sockets over.
    pub(super) fn paused(&mut self, link: LinkId) {
        if let Some(m) = self.moving.as_mut() {
            if m.waiting.remove(&link) {
                m.paused.push(link);
            }
        }
    }

    /// Ends a move: writes durable (bounded by the deadline), then every paused link hears the
    /// room moved and every other link that it is gone.
    pub(super) async fn finish_move(&mut self) -> RoomExit {
        let Some(moving) = self.moving.take() else { return RoomExit::Moved };
        self.after_handler().await;
        if tokio::time::timeout_at(moving.deadline, self.storage().sync()).await.is_err() {
            tracing::warn!("writes not durable by the move deadline");
        }
        let links = moving.paused.len() as u32;
        for link in &self.links {
            let msg = if moving.paused.contains(link) {
                FromRoom::Moved { links }
            } else {
                FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: client_text::ROOM_MOVED.into() }
            };
            self.shared().emit_link(*link, msg);
        }
        RoomExit::Moved
    }

    /// Takes over a socket from the room's previous instance: it joins the table as it was,
    /// without `on_connect` (as after hibernation). The party starts on the next event.
    pub(super) fn adopt(
        &mut self,
        link: LinkId,
        sid: SocketId,
        id: String,
        uri: String,
        tags: Vec<String>,
        state: Option<Bytes>,
    ) {
        self.gathering.get_or_insert_with(Gathering::new);
        let mut table = self.shared().conns.locked();
        table.next_order += 1;
        let order = table.next_order;
        table.insert(Arc::new(ConnShared {
            key: (link, sid),
            id,
            uri,
            tags: Mutex::new(tags),
            state: Mutex::new(state),
            open: AtomicBool::new(true),
            order,
        }));
    }

    /// A link finished adopting its sockets; `links`: how many the previous instance handed over.
    pub(super) fn adopted(&mut self, link: LinkId, links: u32) {
        let g = self.gathering.get_or_insert_with(Gathering::new);
        g.expected = Some(g.expected.unwrap_or(0).max(links as usize));
        g.adopted.insert(link);
    }
}
