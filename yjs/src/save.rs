//! The debounced save callback (y-partykit's `callback.handler`): after the document changed, a
//! party's handler gets a copy of it once changes pause for `debounce_wait`, and at least every
//! `debounce_max_wait` while they go on. The handler runs in its own task with a time limit, on
//! a private copy of the document, so it never holds up or locks the room.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// The handler type: gets a copy of the document.
pub type SaveHandler = Arc<dyn Fn(Doc) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A save callback and its timing (defaults as y-partykit's: 2 s, 10 s, 5 s).
#[derive(Clone)]
pub struct OnSave {
    pub(crate) handler: SaveHandler,
    /// Quiet time after the last change before the handler runs.
    pub debounce_wait: Duration,
    /// Longest time a change waits for the handler while changes keep coming.
    pub debounce_max_wait: Duration,
    /// Time limit of one handler run.
    pub timeout: Duration,
}

impl OnSave {
    /// A callback with the default timing.
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Doc) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        OnSave {
            handler: Arc::new(move |doc| Box::pin(handler(doc))),
            debounce_wait: Duration::from_secs(2),
            debounce_max_wait: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }

    /// Sets the quiet time.
    pub fn debounce_wait(mut self, wait: Duration) -> Self {
        self.debounce_wait = wait;
        self
    }

    /// Sets the longest wait.
    pub fn debounce_max_wait(mut self, wait: Duration) -> Self {
        self.debounce_max_wait = wait;
        self
    }

    /// Sets the handler's time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl std::fmt::Debug for OnSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnSave")
            .field("debounce_wait", &self.debounce_wait)
            .field("debounce_max_wait", &self.debounce_max_wait)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The running debouncer of one loaded document. Dropping it saves what is pending, then the
/// task ends.
pub(crate) struct Saver {
    changed: mpsc::UnboundedSender<()>,
    task: JoinHandle<()>,
}

impl Saver {
    /// Starts the debouncer for `doc`; its first save waits for `previous` (the task of the
    /// document's previous load) so saves stay in order.
    pub(crate) fn start(room: String, doc: Doc, on_save: OnSave, previous: Option<JoinHandle<()>>) -> Self {
        let (changed, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(room, doc, on_save, rx, previous));
        Saver { changed, task }
    }

    /// The document changed.
    pub(crate) fn changed(&self) {
        let _ = self.changed.send(());
    }

    /// Stops taking changes; the returned task saves what is pending and ends.
    pub(crate) fn finish(self) -> JoinHandle<()> {
        drop(self.changed);
        self.task
    }
}

async fn run(
    room: String,
    doc: Doc,
    on_save: OnSave,
    mut changed: mpsc::UnboundedReceiver<()>,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        let _ = p.await;
    }
    // (fire at, fire no later than) while a change is pending.
    let mut due: Option<(Instant, Instant)> = None;
    loop {
        let wake = due.map(|(at, _)| at);
        tokio::select! {
            msg = changed.recv() => {
                let now = Instant::now();
                match msg {
                    Some(()) => {
                        let latest = due.map_or(now + on_save.debounce_max_wait, |(_, latest)| latest);
                        due = Some(((now + on_save.debounce_wait).min(latest), latest));
                    }
                    None => {
                        if due.is_some() {
                            save(&room, &doc, &on_save).await;
                        }
                        return;
                    }
                }
            }
            _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                due = None;
                save(&room, &doc, &on_save).await;
            }
        }
    }
}

async fn save(room: &str, doc: &Doc, on_save: &OnSave) {
    let copy = match copy(doc).await {
        Ok(copy) => copy,
        Err(e) => {
            tracing::warn!(room, error = %e, "could not copy the document for the save callback");
            return;
        }
    };
    match tokio::time::timeout(on_save.timeout, (on_save.handler)(copy)).await {
        Ok(Ok(())) => tracing::debug!(room, "document saved by the callback"),
        Ok(Err(e)) => tracing::warn!(room, error = %format!("{e:#}"), "the document save callback failed"),
        Err(_) => tracing::warn!(room, timeout = ?on_save.timeout, "the document save callback timed out"),
    }
}

/// A private copy of `doc`. The room only writes the document inside synchronous sections, so a
/// read transaction is at most briefly unavailable.
async fn copy(doc: &Doc) -> anyhow::Result<Doc> {
    fn try_encode(doc: &Doc) -> Option<Vec<u8>> {
        let txn = doc.try_transact().ok()?;
        Some(txn.encode_state_as_update_v1(&StateVector::default()))
    }
    let state = loop {
        match try_encode(doc) {
            Some(state) => break state,
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    let copy = Doc::new();
    copy.transact_mut().apply_update(Update::decode_v1(&state)?)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use yrs::{GetString, Text};

    use super::*;

    type Saves = Arc<Mutex<Vec<(Instant, String)>>>;

    fn recorder() -> (OnSave, Saves) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let on_save = OnSave::new(move |doc: Doc| {
            let log = log.clone();
            async move {
                let text = doc.get_or_insert_text("t");
                let s = text.get_string(&doc.transact());
                log.lock().unwrap().push((Instant::now(), s));
                Ok(())
            }
        });
        (on_save, seen)
    }

    fn edit(doc: &Doc, s: &str) {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
    }

    #[tokio::test(start_paused = true)]
    async fn debounces_and_caps_the_wait() {
        let doc = Doc::new();
        let (on_save, seen) = recorder();
        let saver = Saver::start("r".into(), doc.clone(), on_save, None);
        let t0 = Instant::now();
        // Changes at 0 s, 1.5 s, 2.5 s, ... 14.5 s: quiet never lasts 2 s, so only the 10 s cap
        // fires (between the changes at 9.5 s and 10.5 s).
        for i in 0..15 {
            edit(&doc, &i.to_string());
            saver.changed();
            let pause = if i == 0 { 1500 } else { 1000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1, "one capped save");
            assert_eq!(seen[0].0 - t0, Duration::from_secs(10));
            assert_eq!(seen[0].1, "0123456789");
        }
        // Then 2 s after the last change (14.5 s).
        tokio::time::sleep(Duration::from_secs(3)).await;
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[1].0 - t0, Duration::from_millis(16_500));
            assert_eq!(seen[1].1, "01234567891011121314");
        }
        // Finishing with nothing pending saves nothing more.
        saver.finish().await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_saves_what_is_pending_and_next_load_waits() {
        let doc = Doc::new();
        let (on_save, seen) = recorder();
        let saver = Saver::start("r".into(), doc.clone(), on_save.clone(), None);
        edit(&doc, "a");
        saver.changed();
        let previous = saver.finish();
        let doc2 = Doc::new();
        let next = Saver::start("r".into(), doc2.clone(), on_save, Some(previous));
        edit(&doc2, "b");
        next.changed();
        next.finish().await.unwrap();
        let seen: Vec<String> = seen.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(seen, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_or_hanging_handler_is_contained() {
        let doc = Doc::new();
        let hang = OnSave::new(|_doc| std::future::pending::<anyhow::Result<()>>()).timeout(Duration::from_secs(1));
        let saver = Saver::start("r".into(), doc.clone(), hang, None);
        saver.changed();
        tokio::time::timeout(Duration::from_secs(5), saver.finish()).await.expect("the timeout ends it").unwrap();
        let fail = OnSave::new(|_doc| async { anyhow::bail!("nope") });
        let saver = Saver::start("r".into(), doc, fail, None);
        saver.changed();
        saver.finish().await.unwrap();
    }
}
