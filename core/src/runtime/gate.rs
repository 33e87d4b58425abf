//! The output gate: everything a room sends out (frames, closes, HTTP responses, link
//! bookkeeping) passes here in order, tagged with the write batch it follows. An item whose
//! writes are already durable, with nothing held before it, is handed to its link at once by the
//! task that emitted it; anything else is held and released in order by the room's pump task as
//! the store acknowledges writes. A failed write discards what is held and tells every link the
//! room is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch, Notify};

use crate::client_text::{self, ErrorRef};
use crate::room::{LinkId, Outbound};
use crate::runtime::handle::Answer;
use crate::runtime::link::{close_code, FromRoom};
use crate::storage::WriteProgress;
use crate::sync::Lock;

/// An outbound item with the write batch it must wait for.
struct Held {
    seq: u64,
    item: Outbound,
}

struct State {
    links: HashMap<LinkId, mpsc::Sender<FromRoom>>,
    held: VecDeque<Held>,
    /// The room has stopped: nothing more will be emitted.
    closed: bool,
    /// A write failed: everything is dropped from now on.
    failed: bool,
}

/// One room's output gate.
pub(crate) struct Gate {
    state: Mutex<State>,
    wake: Notify,
    progress: watch::Receiver<WriteProgress>,
}

/// Applies an item to the links now, or gives it back when its link's queue is full.
fn apply(links: &mut HashMap<LinkId, mpsc::Sender<FromRoom>>, item: Outbound) -> Result<(), Outbound> {
    match item {
        Outbound::Link(link, msg) => {
            let Some(tx) = links.get(&link) else { return Ok(()) };
            match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(msg)) => Err(Outbound::Link(link, msg)),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    links.remove(&link);
                    Ok(())
                }
            }
        }
        Outbound::Response(reply, res) => {
            let _ = reply.send(Answer::Done(*res));
            Ok(())
        }
        Outbound::OpenLink(link, tx) => {
            links.insert(link, tx);
            Ok(())
        }
        Outbound::CloseLink(link) => {
            links.remove(&link);
            Ok(())
        }
    }
}

impl Gate {
    /// A gate released by `progress`; spawn [`pump`] with it.
    pub(crate) fn new(progress: watch::Receiver<WriteProgress>) -> Arc<Self> {
        Arc::new(Gate {
            state: Mutex::new(State { links: HashMap::new(), held: VecDeque::new(), closed: false, failed: false }),
            wake: Notify::new(),
            progress,
        })
    }

    /// Sends `item` once write batch `seq` is durable and everything emitted before it is out.
    pub(crate) fn emit(&self, seq: u64, item: Outbound) {
        let mut st = self.state.locked();
        if st.failed {
            return;
        }
        if st.held.is_empty() && seq <= self.progress.borrow().acked {
            match apply(&mut st.links, item) {
                Ok(()) => {}
                Err(item) => {
                    st.held.push_back(Held { seq, item });
                    drop(st);
                    self.wake.notify_one();
                }
            }
            return;
        }
        st.held.push_back(Held { seq, item });
    }

    /// The room stopped: the pump ends once it released what it holds.
    pub(crate) fn close(&self) {
        self.state.locked().closed = true;
        self.wake.notify_one();
    }
}

/// What the pump must do after releasing what it could.
enum Step {
    /// Nothing more can go now.
    Idle,
    /// The front item waits for room in its link's queue.
    Wait(mpsc::Sender<FromRoom>, LinkId),
    /// A write failed: these links must hear the room is gone.
    Failed(Vec<mpsc::Sender<FromRoom>>),
}

/// Releases, in order, every held item whose writes are durable, as far as the links take them.
fn release(gate: &Gate, p: &WriteProgress) -> Step {
    let mut st = gate.state.locked();
    if p.failed.is_some() {
        return Step::Failed(fail(&mut st));
    }
    while st.held.front().is_some_and(|h| h.seq <= p.acked) {
        let h = st.held.pop_front().expect("checked");
        if let Err(item) = apply(&mut st.links, h.item) {
            let Outbound::Link(link, msg) = item else { unreachable!("only link messages wait for queue space") };
            st.held.push_front(Held { seq: h.seq, item: Outbound::Link(link, msg) });
            if let Some(tx) = st.links.get(&link) {
                return Step::Wait(tx.clone(), link);
            }
        }
    }
    Step::Idle
}

/// Sends the front item (a message for `link`) with the queue space the pump waited for. Only the
/// pump takes items off the front, so it is still the same item.
fn finish_wait(gate: &Gate, link: LinkId, permit: Result<mpsc::Permit<'_, FromRoom>, mpsc::error::SendError<()>>) {
    let mut st = gate.state.locked();
    if st.failed {
        return;
    }
    let Some(Held { item: Outbound::Link(_, msg), .. }) = st.held.pop_front() else { return };
    match permit {
        Ok(permit) => permit.send(msg),
        Err(_) => {
            st.links.remove(&link);
        }
    }
}

/// Releases held items in order as writes become durable; ends when the room stopped and
/// nothing is held (or nothing more can be released), or after a failed write.
pub(crate) async fn pump(gate: Arc<Gate>) {
    let mut progress = gate.progress.clone();
    let mut writer_alive = true;
    loop {
        let p = progress.borrow_and_update().clone();
        match release(&gate, &p) {
            Step::Idle => {}
            Step::Wait(tx, link) => {
                let permit = tx.reserve().await;
                finish_wait(&gate, link, permit);
                continue;
            }
            Step::Failed(links) => {
                // Fenced: another node holds the room's lease now, so the room moved. Otherwise
                // the store failed; either way the details stay in the log.
                let failed = p.failed.as_deref().map_or("", |s| s.as_str());
                let (code, reason) = if p.fenced {
                    tracing::info!(error = failed, "room storage write fenced; its sockets reconnect to the new owner");
                    (close_code::SERVICE_RESTART, client_text::ROOM_MOVED.to_string())
                } else {
                    let r = ErrorRef::new();
                    tracing::warn!(error_ref = %r, error = failed, "room storage failed; closing the room's sockets");
                    (close_code::INTERNAL_ERROR, r.tag(client_text::ROOM_UNAVAILABLE))
                };
                for tx in links {
                    let _ = tx.send(FromRoom::Gone { code, reason: reason.clone() }).await;
                }
                return;
            }
        }
        let done = {
            let st = gate.state.locked();
            st.closed && (st.held.is_empty() || !writer_alive)
        };
        if done {
            return;
        }
        tokio::select! {
            _ = gate.wake.notified() => {}
            changed = progress.changed(), if writer_alive => {
                if changed.is_err() {
                    writer_alive = false;
                }
            }
        }
    }
}

/// A write failed: drops what is held and returns every link (also those whose opening was
/// held), which must all hear that the room is gone.
fn fail(st: &mut State) -> Vec<mpsc::Sender<FromRoom>> {
    st.failed = true;
    for h in std::mem::take(&mut st.held) {
        if let Outbound::OpenLink(link, tx) = h.item {
            st.links.insert(link, tx);
        }
    }
    st.links.drain().map(|(_, tx)| tx).collect()
}
