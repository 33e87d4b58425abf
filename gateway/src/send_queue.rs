//! One client's send queue: the frames waiting for the socket's task to write them. It is
//! bounded by [`Limits::max_outbox_messages`](partyline::Limits::max_outbox_messages) and
//! [`Limits::max_outbox_bytes`](partyline::Limits::max_outbox_bytes) (pings and close frames
//! are not counted). A client that lets it fill is not reading: it is cut off (the socket ends
//! without a close frame, and the room hears it closed) rather than allowed to grow the
//! gateway's memory; the room keeps serving everyone else.
//!
//! The socket's task is woken through one [`AtomicWaker`] for everything that concerns it (a
//! frame queued, a close, a ping, a cut-off): it registers its waker before it looks, so it
//! never misses one, and an idle socket's queue holds no allocation but the shared part itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use futures::task::AtomicWaker;
use partyline::sync::Lock;
use partyline::Message;

/// A frame queued for one client.
pub(crate) enum Queued {
    Msg(Message),
    /// A liveness ping (not counted against the limits).
    Ping,
    Close(u16, String),
}

/// Why a client was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CutOff {
    /// Its queue filled: it does not read what it is sent.
    Slow,
    /// It stopped answering pings.
    Silent,
}

const NOT_CUT: u8 = 0;
const CUT_SLOW: u8 = 1;
const CUT_SILENT: u8 = 2;

/// One client's bounded send queue (cheap to clone: the clones share it).
#[derive(Clone)]
pub(crate) struct SendQueue {
    shared: Arc<Shared>,
}

/// The half shared by the socket's task and everyone who queues for it.
struct Shared {
    frames: Mutex<Frames>,
    /// The socket's task.
    task: AtomicWaker,
    /// Set once, to why the client was cut off.
    cut: AtomicU8,
    /// The client sent something (a frame, a pong) since the liveness sweep last looked.
    heard: AtomicBool,
    max_msgs: usize,
    max_bytes: usize,
}

/// What is queued, under the queue's lock.
#[derive(Default)]
struct Frames {
    items: VecDeque<Queued>,
    /// The messages among `items` (pings and close frames are not counted), and their bytes.
    msgs: usize,
    bytes: usize,
    closed: bool,
}

impl SendQueue {
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Self {
        let shared = Shared {
            frames: Mutex::new(Frames::default()),
            task: AtomicWaker::new(),
            cut: AtomicU8::new(NOT_CUT),
            heard: AtomicBool::new(false),
            max_msgs,
            max_bytes,
        };
        SendQueue { shared: Arc::new(shared) }
    }

    fn cut_off(&self, why: u8) {
        let _ = self.shared.cut.compare_exchange(NOT_CUT, why, Ordering::AcqRel, Ordering::Acquire);
        self.shared.task.wake();
    }

    /// Cuts the client off for not answering pings.
    pub(crate) fn cut_off_silent(&self) {
        self.cut_off(CUT_SILENT);
    }

    /// Whether (and why) the client was cut off.
    pub(crate) fn cut(&self) -> Option<CutOff> {
        match self.shared.cut.load(Ordering::Acquire) {
            CUT_SLOW => Some(CutOff::Slow),
            CUT_SILENT => Some(CutOff::Silent),
            _ => None,
        }
    }

    /// The socket's task wants to be woken when anything is queued or the client is cut off.
    /// Register before looking ([`pop`](Self::pop), [`cut`](Self::cut)), so nothing is missed.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.shared.task.register(cx.waker());
    }

    /// The client sent something: called by the socket's task for every frame it reads. A
    /// load first, so a busy socket does not write the shared line on every frame.
    pub(crate) fn heard(&self) {
        if !self.shared.heard.load(Ordering::Relaxed) {
            self.shared.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the client sent something since the last call (for the liveness sweep).
    pub(crate) fn take_heard(&self) -> bool {
        self.shared.heard.load(Ordering::Relaxed) && self.shared.heard.swap(false, Ordering::Relaxed)
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
            if q.msgs >= self.shared.max_msgs || (q.bytes > 0 && q.bytes + len > self.shared.max_bytes) {
                drop(q);
                self.cut_off(CUT_SLOW);
                return false;
            }
            q.msgs += 1;
            q.bytes += len;
            q.items.push_back(Queued::Msg(msg));
        }
        self.shared.task.wake();
        true
    }

    /// Queues a close frame (not counted against the limits).
    pub(crate) fn close(&self, code: u16, reason: String) {
        self.push_control(Queued::Close(code, reason));
    }

    /// Queues a ping (not counted against the limits).
    pub(crate) fn ping(&self) {
        self.push_control(Queued::Ping);
    }

    fn push_control(&self, item: Queued) {
        {
            let mut q = self.shared.frames.locked();
            if q.closed {
                return;
            }
            q.items.push_back(item);
        }
        self.shared.task.wake();
    }

    /// The next queued frame, if any.
    pub(crate) fn pop(&self) -> Option<Queued> {
        let mut q = self.shared.frames.locked();
        let out = q.items.pop_front()?;
        if let Queued::Msg(m) = &out {
            q.msgs -= 1;
            q.bytes -= m.len();
        }
        if q.items.is_empty() && q.items.capacity() > 64 {
            // A burst is over: give its memory back.
            q.items.shrink_to(8);
        }
        Some(out)
    }

    /// The socket is gone: drop what is queued and refuse more.
    pub(crate) fn shut(&self) {
        let mut q = self.shared.frames.locked();
        q.closed = true;
        q.items = VecDeque::new();
        q.msgs = 0;
        q.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_queue_cuts_the_client_off_and_wakes_its_task() {
        let q = SendQueue::new(2, 1 << 20);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        q.register(&Context::from_waker(&waker));
        assert!(q.push(Message::Text("a".into())));
        q.register(&Context::from_waker(&waker));
        assert!(q.push(Message::Text("b".into())));
        assert_eq!(q.cut(), None);
        q.register(&Context::from_waker(&waker));
        assert!(!q.push(Message::Text("c".into())), "over the message bound");
        assert_eq!(q.cut(), Some(CutOff::Slow));
        assert_eq!(count.0.load(Ordering::SeqCst), 3, "woken for each push and for the cut-off");
        // The first reason stays.
        q.cut_off_silent();
        assert_eq!(q.cut(), Some(CutOff::Slow));
    }

    #[test]
    fn pings_and_closes_do_not_count_against_the_message_bound() {
        let q = SendQueue::new(2, 1 << 20);
        q.ping();
        q.close(1000, "bye".into());
        assert!(q.push(Message::Text("a".into())));
        assert!(q.push(Message::Text("b".into())));
        assert_eq!(q.cut(), None);
        assert!(matches!(q.pop(), Some(Queued::Ping)));
        assert!(matches!(q.pop(), Some(Queued::Close(1000, _))));
        assert!(!q.push(Message::Text("c".into())), "two messages are still queued");
        assert_eq!(q.cut(), Some(CutOff::Slow));
    }

    #[test]
    fn control_frames_keep_their_order_and_nothing_is_queued_once_shut() {
        let q = SendQueue::new(8, 1 << 20);
        q.ping();
        q.close(1000, "bye".into());
        assert!(q.push(Message::Text("a".into())));
        assert!(matches!(q.pop(), Some(Queued::Ping)));
        assert!(matches!(q.pop(), Some(Queued::Close(1000, _))));
        assert!(matches!(q.pop(), Some(Queued::Msg(_))));
        q.shut();
        assert!(!q.push(Message::Text("b".into())));
        q.ping();
        assert!(q.pop().is_none());
        assert_eq!(q.cut(), None, "a shut queue refuses without cutting anyone off");
    }

    #[test]
    fn the_liveness_flag_is_taken_once() {
        let q = SendQueue::new(8, 1 << 20);
        assert!(!q.take_heard());
        q.heard();
        q.heard();
        assert!(q.take_heard());
        assert!(!q.take_heard());
    }
}
