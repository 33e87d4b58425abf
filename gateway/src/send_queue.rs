//! One client's send queue: the frames waiting for the socket's writer. It is bounded by
//! [`Limits::max_outbox_messages`](partyline::Limits::max_outbox_messages) and
//! [`Limits::max_outbox_bytes`](partyline::Limits::max_outbox_bytes) (pings and close frames
//! are not counted). A client that lets it fill is not reading: it is cut off (the queue's kill
//! token ends the socket, without a close frame, and the room hears it closed) rather than
//! allowed to grow the gateway's memory; the room keeps serving everyone else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use partyline::sync::Lock;
use partyline::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A frame queued for one client.
pub(crate) enum Queued {
    Msg(Message),
    /// A liveness ping (not counted against the limits).
    Ping,
    Close(u16, String),
}

/// One client's bounded send queue (cheap to clone: the clones share it). An idle socket's queue
/// holds no allocation (a channel would keep a block of slots per socket).
#[derive(Clone)]
pub(crate) struct SendQueue {
    shared: Arc<Shared>,
}

/// The half shared by the socket's writer and everyone who queues for it.
struct Shared {
    frames: Mutex<Frames>,
    ready: Notify,
    kill: CancellationToken,
    max_msgs: usize,
    max_bytes: usize,
}

/// What is queued, under the queue's lock.
#[derive(Default)]
struct Frames {
    items: VecDeque<Queued>,
    bytes: usize,
    closed: bool,
}

impl SendQueue {
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Self {
        let shared = Shared {
            frames: Mutex::new(Frames::default()),
            ready: Notify::new(),
            kill: CancellationToken::new(),
            max_msgs,
            max_bytes,
        };
        SendQueue { shared: Arc::new(shared) }
    }

    /// The token that cuts the client off.
    pub(crate) fn kill(&self) -> &CancellationToken {
        &self.shared.kill
    }

    /// Queues a frame; false (and the client is cut off) when its queue is full.
    pub(crate) fn push(&self, msg: Message) -> bool {
        let len = msg.len();
        {
            let mut q = self.shared.frames.locked();
            if q.closed {
                return false;
            }
            // A lone frame larger than the byte bound (up to the outbound message limit) still
            // goes into an empty queue.
            if q.items.len() >= self.shared.max_msgs || (q.bytes > 0 && q.bytes + len > self.shared.max_bytes) {
                drop(q);
                self.shared.kill.cancel();
                return false;
            }
            q.bytes += len;
            q.items.push_back(Queued::Msg(msg));
        }
        self.shared.ready.notify_one();
        true
    }

    /// Queues a close frame (not counted against the limits).
    pub(crate) fn close(&self, code: u16, reason: String) {
        {
            let mut q = self.shared.frames.locked();
            if q.closed {
                return;
            }
            q.items.push_back(Queued::Close(code, reason));
        }
        self.shared.ready.notify_one();
    }

    /// Queues a ping (not counted against the limits).
    pub(crate) fn ping(&self) {
        {
            let mut q = self.shared.frames.locked();
            if q.closed {
                return;
            }
            q.items.push_back(Queued::Ping);
        }
        self.shared.ready.notify_one();
    }

    /// The next queued frame, if any.
    pub(crate) fn pop(&self) -> Option<Queued> {
        let mut q = self.shared.frames.locked();
        let out = q.items.pop_front()?;
        if let Queued::Msg(m) = &out {
            q.bytes -= m.len();
        }
        if q.items.is_empty() && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items.shrink_to(8);
        }
        Some(out)
    }

    /// Waits until something may have been queued since the last `pop` returned `None`.
    pub(crate) async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    /// The socket is gone: drop what is queued and refuse more.
    pub(crate) fn shut(&self) {
        let mut q = self.shared.frames.locked();
        q.closed = true;
        q.items = VecDeque::new();
        q.bytes = 0;
    }
}
