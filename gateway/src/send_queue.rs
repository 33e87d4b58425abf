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
//!
//! Both ends work in batches, since a broadcast costs one push per client: the link's reader
//! queues a run of broadcasts for a client under one lock and wakes it once
//! ([`SendQueue::push_many`]), and the socket's task takes everything queued in one swap
//! ([`SendQueue::refill`]) and reports what it wrote once per write ([`SendQueue::wrote`]), so
//! the bounds count exactly what the client has not been handed yet. A message's text is
//! checked as UTF-8 once, when it becomes a [`WsMessage`], not once per client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use futures::task::AtomicWaker;
use partyline::sync::Lock;
use partyline::Message;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

/// A message as the socket writes it. Cheap to clone (the payload is shared), so one broadcast
/// converts once and every client's queue gets a clone.
pub(crate) type WsMessage = tungstenite::Message;

/// The socket form of a room's message.
pub(crate) fn ws_message(msg: Message) -> WsMessage {
    match msg {
        // A `Text` is valid UTF-8 by construction: the check cannot fail.
        Message::Text(t) => WsMessage::Text(Utf8Bytes::try_from(t.into_bytes()).unwrap_or_default()),
        Message::Binary(b) => WsMessage::Binary(b),
    }
}

/// A frame queued for one client.
pub(crate) enum Queued {
    Msg(WsMessage),
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

/// Messages a socket's task took from its queue and handed to the socket, not yet reported
/// (see [`SendQueue::wrote`]).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    msgs: usize,
    bytes: usize,
}

impl Written {
    /// One message of `len` bytes handed to the socket.
    pub(crate) fn add(&mut self, len: usize) {
        self.msgs += 1;
        self.bytes += len;
    }
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
    pub(crate) fn push(&self, msg: WsMessage) -> bool {
        self.push_many(std::iter::once(msg))
    }

    /// Queues frames in order, under one lock and with one wake-up; false (and the client is
    /// cut off, and the rest not queued) when its queue fills.
    pub(crate) fn push_many(&self, msgs: impl IntoIterator<Item = WsMessage>) -> bool {
        let mut pushed = false;
        {
            let mut q = self.shared.frames.locked();
            if q.closed {
                return false;
            }
            for msg in msgs {
                let len = msg.len();
                // A lone frame larger than the byte bound (up to the outbound message limit)
                // still goes into an empty queue.
                if q.msgs >= self.shared.max_msgs || (q.bytes > 0 && q.bytes + len > self.shared.max_bytes) {
                    drop(q);
                    self.cut_off(CUT_SLOW);
                    return false;
                }
                q.msgs += 1;
                q.bytes += len;
                q.items.push_back(Queued::Msg(msg));
                pushed = true;
            }
        }
        if pushed {
            self.shared.task.wake();
        }
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

    /// The next queued frame, if any (one at a time: for sockets that see few frames).
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

    /// Moves everything queued into `batch` (which must be empty) in one step, for the socket's
    /// task to write, after taking `written` off the bounds (as [`wrote`](Self::wrote), in the
    /// same lock). The messages moved count against the bounds until the task reports them
    /// handed to the socket. False when nothing was queued.
    pub(crate) fn refill(&self, batch: &mut VecDeque<Queued>, written: &mut Written) -> bool {
        debug_assert!(batch.is_empty(), "refilled before the batch was written");
        let mut q = self.shared.frames.locked();
        q.msgs -= written.msgs;
        q.bytes -= written.bytes;
        *written = Written::default();
        if q.items.is_empty() {
            // Nothing to take. One buffer per socket, not two (the queue's and the batch's, once
            // it has seen two batches): the batch's goes back to the queue, for its next push,
            // when the queue has none, and is freed otherwise. An idle socket keeps one.
            let spare = std::mem::take(batch);
            if q.items.capacity() == 0 {
                q.items = spare;
            }
            return false;
        }
        std::mem::swap(&mut q.items, batch);
        if q.items.capacity() > 64 {
            // A burst is over: give its memory back (the batch's buffer became the queue's).
            q.items = VecDeque::new();
        }
        true
    }

    /// Messages taken by [`refill`](Self::refill) were handed to the socket: they no longer
    /// count against the bounds. Resets `written`.
    pub(crate) fn wrote(&self, written: &mut Written) {
        if written.msgs > 0 {
            let mut q = self.shared.frames.locked();
            q.msgs -= written.msgs;
            q.bytes -= written.bytes;
        }
        *written = Written::default();
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

    /// A waker that counts its wake-ups.
    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn text(s: &str) -> WsMessage {
        ws_message(Message::Text(s.into()))
    }

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_queue_cuts_the_client_off_and_wakes_its_task() {
        let q = SendQueue::new(2, 1 << 20);
        let (count, waker) = counting_waker();
        q.register(&Context::from_waker(&waker));
        assert!(q.push(text("a")));
        q.register(&Context::from_waker(&waker));
        assert!(q.push(text("b")));
        assert_eq!(q.cut(), None);
        q.register(&Context::from_waker(&waker));
        assert!(!q.push(text("c")), "over the message bound");
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
        assert!(q.push(text("a")));
        assert!(q.push(text("b")));
        assert_eq!(q.cut(), None);
        assert!(matches!(q.pop(), Some(Queued::Ping)));
        assert!(matches!(q.pop(), Some(Queued::Close(1000, _))));
        assert!(!q.push(text("c")), "two messages are still queued");
        assert_eq!(q.cut(), Some(CutOff::Slow));
    }

    #[test]
    fn control_frames_keep_their_order_and_nothing_is_queued_once_shut() {
        let q = SendQueue::new(8, 1 << 20);
        q.ping();
        q.close(1000, "bye".into());
        assert!(q.push(text("a")));
        assert!(matches!(q.pop(), Some(Queued::Ping)));
        assert!(matches!(q.pop(), Some(Queued::Close(1000, _))));
        assert!(matches!(q.pop(), Some(Queued::Msg(_))));
        q.shut();
        assert!(!q.push(text("b")));
        q.ping();
        assert!(q.pop().is_none());
        assert_eq!(q.cut(), None, "a shut queue refuses without cutting anyone off");
    }

    #[test]
    fn a_run_is_queued_in_order_with_one_wake_and_cut_off_where_it_overflows() {
        let q = SendQueue::new(3, 1 << 20);
        let (count, waker) = counting_waker();
        q.register(&Context::from_waker(&waker));
        assert!(q.push_many([text("a"), text("b")]));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the run");
        assert!(q.push_many(std::iter::empty()), "an empty run");
        assert_eq!(q.cut(), None);
        assert!(!q.push_many([text("c"), text("d"), text("e")]), "the fourth message overflows");
        assert_eq!(q.cut(), Some(CutOff::Slow));
        let got: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|f| match f {
                Queued::Msg(m) => m.into_text().expect("text").to_string(),
                _ => panic!("only messages were queued"),
            })
            .collect();
        assert_eq!(got, ["a", "b", "c"], "in order, up to the bound");
    }

    #[test]
    fn a_batch_taken_counts_against_the_bound_until_reported_written() {
        let q = SendQueue::new(3, 1 << 20);
        let mut batch = VecDeque::new();
        let mut written = Written::default();
        assert!(!q.refill(&mut batch, &mut written), "nothing queued");
        assert!(q.push_many([text("a"), text("b")]));
        assert!(q.refill(&mut batch, &mut written));
        assert_eq!(batch.len(), 2);
        // One of the two taken is written and reported; the other still counts.
        batch.pop_front();
        written.add(1);
        q.wrote(&mut written);
        assert_eq!(written, Written::default(), "reset once reported");
        assert!(q.push(text("c")));
        assert!(q.push(text("d")));
        assert_eq!(q.cut(), None);
        assert!(!q.push(text("e")), "b (taken, not written), c and d fill the bound");
        assert_eq!(q.cut(), Some(CutOff::Slow));

        // Written messages reported by the refill itself.
        let q = SendQueue::new(2, 1 << 20);
        let (mut batch, mut written) = (VecDeque::new(), Written::default());
        assert!(q.push_many([text("a"), text("b")]));
        assert!(q.refill(&mut batch, &mut written));
        batch.clear();
        written.add(1);
        written.add(1);
        assert!(!q.refill(&mut batch, &mut written));
        assert_eq!(written, Written::default());
        assert!(q.push_many([text("c"), text("d")]), "both written: the bound is free again");
        assert_eq!(q.cut(), None);
    }

    #[test]
    fn a_socket_between_batches_keeps_one_buffer() {
        let q = SendQueue::new(8, 1 << 20);
        let (mut batch, mut written) = (VecDeque::new(), Written::default());
        for round in 0..3 {
            assert!(q.push(text("a")));
            assert!(q.refill(&mut batch, &mut written));
            batch.clear();
            written.add(1);
            assert!(!q.refill(&mut batch, &mut written), "round {round}: nothing more");
            assert_eq!(batch.capacity(), 0, "round {round}: the batch gave its buffer up");
            assert!(q.shared.frames.locked().items.capacity() > 0, "round {round}: the queue kept one");
        }
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
