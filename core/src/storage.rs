//! Room storage as party code sees it: Durable Object semantics over a [`Store`].
//!
//! Writes (`put`, `delete`, alarms) go into the room's write buffer and its cache at once and
//! return; the buffer is committed as one atomic batch when the handler finishes or awaits a
//! read that must reach the store. Reads see the buffer (read-your-writes). Frames and
//! responses that follow a write are held by the output gate until the store acknowledged it,
//! so nobody observes a write that could still be lost. A refused or failed commit resets the
//! room.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, watch};

use crate::limits::Limits;
use crate::store::{entry_bytes, Fence, ListOptions, Quota, RoomKey, Store, StoreError, Usage, WriteOp};
use crate::sync::Lock;

/// Cached bytes above which clean entries are dropped from a room's cache.
const MAX_CACHE_BYTES: usize = 32 << 20;
/// Entries `list` reads from the store at a time.
const LIST_PAGE: usize = 256;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is longer than the limit.
    #[error("storage key is {len} bytes, the limit is {max}")]
    KeyTooLarge {
        /// Key length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is larger than the limit.
    #[error("value for key {key:?} is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// Value length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many keys in one batch call.
    #[error("{n} keys in one call, the limit is {max}")]
    TooManyKeys {
        /// Keys in the call.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// A value could not be encoded or decoded as JSON.
    #[error("value for key {key:?} is not valid for this type: {source}")]
    Json {
        /// The key.
        key: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// More was written since the last commit than one commit may carry.
    #[error("{bytes} bytes written since the last commit, the limit is {max}; call sync() between large writes")]
    CommitTooLarge {
        /// Bytes the write buffer would hold.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A `list` result would be larger than the limit.
    #[error("list() would return more than {max} bytes; ask for a range or a limit")]
    ListTooLarge {
        /// The limit.
        max: usize,
    },
    /// The backend refused or failed (a refused write resets the room), or the write would take
    /// the room past its storage quota (nothing was written).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier write failed, so this room instance can no longer use storage.
    #[error("room storage failed earlier: {0}")]
    Failed(String),
}

/// Progress of a room's writes, published by its writer task.
#[derive(Clone, Debug, Default)]
pub struct WriteProgress {
    /// Highest batch sequence number the store acknowledged.
    pub acked: u64,
    /// Set once a commit failed; no later batch is written.
    pub failed: Option<Arc<String>>,
    /// True when the failure was a fencing refusal (another owner).
    pub fenced: bool,
}

struct State {
    /// Known values: `Some(None)` means known absent.
    cache: HashMap<String, Option<Bytes>>,
    /// When true, a key missing from `cache` is known absent (after `delete_all`).
    complete: bool,
    cache_bytes: usize,
    buffer: Vec<WriteOp>,
    /// Bytes of keys and values in `buffer`.
    buffer_bytes: usize,
    /// What the room's data takes with the buffered writes applied, when the store keeps an
    /// account (quota checks): exact for keys whose previous value is known, an upper bound
    /// otherwise (a put over a key not known counts as a new key).
    usage: Option<Usage>,
    /// Sequence number the open buffer will be sealed with.
    next_seq: u64,
    /// `None` when unknown; `Some(None)` when known unset.
    alarm: Option<Option<i64>>,
}

impl State {
    /// Caches a key's value (`None`: known absent), keeping `cache_bytes` equal to what the cache
    /// holds.
    fn cache_put(&mut self, key: String, value: Option<Bytes>) {
        let size = |k: &str, v: &Option<Bytes>| k.len() + v.as_ref().map_or(0, |b| b.len());
        let added = size(&key, &value);
        if let Some(old) = self.cache.insert(key.clone(), value) {
            self.cache_bytes -= size(&key, &old);
        }
        self.cache_bytes += added;
    }

    /// What the room will take after `entries` are put, from `base`: the keys whose previous
    /// value is not known count as new and are collected in `unknown`.
    fn usage_with(&self, base: Usage, entries: &[(String, Bytes)], unknown: &mut Vec<String>) -> Usage {
        let mut u = base;
        let mut put: HashMap<&str, usize> = HashMap::new();
        for (k, v) in entries {
            let prev = match put.get(k.as_str()) {
                Some(len) => Some(*len),
                None => match self.cache.get(k) {
                    Some(v) => v.as_ref().map(Bytes::len),
                    None if self.complete => None,
                    None => {
                        unknown.push(k.clone());
                        None
                    }
                },
            };
            if let Some(len) = prev {
                u.keys = u.keys.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(entry_bytes(k, len));
            }
            u.keys += 1;
            u.bytes += entry_bytes(k, v.len());
            put.insert(k, v.len());
        }
        u
    }
}

/// A room's storage. Cheap to clone; all clones share the cache and write buffer.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    room: RoomKey,
    store: Arc<dyn Store>,
    limits: Arc<Limits>,
    state: Mutex<State>,
    sealed: mpsc::UnboundedSender<(u64, Vec<WriteOp>)>,
    progress: watch::Receiver<WriteProgress>,
    /// Reads are fenced like writes; a refused read fails the room like a refused write.
    fence: Option<Fence>,
    progress_tx: Arc<watch::Sender<WriteProgress>>,
}

impl Storage {
    /// Storage for `room`, writing through `store` with `fence`; spawns the room's writer task,
    /// which ends when every clone is dropped.
    pub fn new(room: RoomKey, store: Arc<dyn Store>, fence: Option<Fence>, limits: Arc<Limits>) -> Self {
        let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = watch::channel(WriteProgress::default());
        let max_commit = limits.max_commit_bytes;
        let progress_tx = Arc::new(progress_tx);
        tokio::spawn(writer(room.clone(), store.clone(), fence.clone(), max_commit, sealed_rx, progress_tx.clone()));
        Storage {
            inner: Arc::new(Inner {
                room,
                store,
                limits,
                state: Mutex::new(State {
                    cache: HashMap::new(),
                    complete: false,
                    cache_bytes: 0,
                    buffer: Vec::new(),
                    buffer_bytes: 0,
                    usage: None,
                    next_seq: 1,
                    alarm: None,
                }),
                sealed: sealed_tx,
                progress: progress_rx,
                fence,
                progress_tx,
            }),
        }
    }

    /// A read's result; a fenced read fails the room (it is not this room's storage any more).
    fn read_result<T>(&self, read: Result<T, StoreError>) -> Result<T, StorageError> {
        if let Err(StoreError::Fenced { .. }) = &read {
            self.inner.progress_tx.send_modify(|p| {
                if p.failed.is_none() {
                    p.failed = Some(Arc::new("a read was refused: the room's lease is not held any more".into()));
                    p.fenced = true;
                }
            });
        }
        Ok(read?)
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.inner.progress.borrow().failed {
            Some(msg) => Err(StorageError::Failed(msg.to_string())),
            None => Ok(()),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), StorageError> {
        let max = self.inner.limits.max_key_bytes;
        if key.len() > max {
            return Err(StorageError::KeyTooLarge { len: key.len(), max });
        }
        Ok(())
    }

    fn check_batch(&self, n: usize) -> Result<(), StorageError> {
        let max = self.inner.limits.max_batch_keys;
        if n > max {
            return Err(StorageError::TooManyKeys { n, max });
        }
        Ok(())
    }

    /// The value of `key` decoded from JSON, or `None` when absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.get_bytes(key).await? {
            None => Ok(None),
            Some(b) => decode(key, &b).map(Some),
        }
    }

    /// The raw value of `key`, or `None` when absent.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let mut map = self.get_many([key]).await?;
        Ok(map.remove(key))
    }

    /// The values of `keys` that exist, ordered by key bytes (at most 128 keys).
    pub async fn get_many<I, K>(&self, keys: I) -> Result<BTreeMap<String, Bytes>, StorageError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.check_failed()?;
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
        self.check_batch(keys.len())?;
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let st = self.inner.state.locked();
            for k in keys {
                self.check_key(&k)?;
                match st.cache.get(&k) {
                    Some(Some(v)) => {
                        out.insert(k, v.clone());
                    }
                    Some(None) => {}
                    None if st.complete => {}
                    None => missing.push(k),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let read = self.inner.store.get_fenced(&self.inner.room, self.inner.fence.as_ref(), &missing).await;
        let values = self.read_result(read)?;
        let mut st = self.inner.state.locked();
        for (k, v) in missing.into_iter().zip(values) {
            // A write made while the read was in flight wins over what the read saw.
            let v = match st.cache.get(&k) {
                Some(cached) => cached.clone(),
                None => {
                    st.cache_put(k.clone(), v.clone());
                    v
                }
            };
            if let Some(v) = v {
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Stores `value` as JSON under `key`.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = encode(key, value)?;
        self.put_bytes(key, bytes).await
    }

    /// Stores raw bytes under `key`.
    pub async fn put_bytes(&self, key: &str, value: impl Into<Bytes>) -> Result<(), StorageError> {
        self.put_many([(key.to_string(), value.into())]).await
    }

    /// Stores several raw values atomically (at most 128).
    pub async fn put_many<I>(&self, entries: I) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = (String, Bytes)>,
    {
        self.check_failed()?;
        let entries: Vec<(String, Bytes)> = entries.into_iter().collect();
        self.check_batch(entries.len())?;
        let max = self.inner.limits.max_value_bytes;
        for (k, v) in &entries {
            self.check_key(k)?;
            if v.len() > max {
                return Err(StorageError::ValueTooLarge { key: k.clone(), len: v.len(), max });
            }
        }
        let added: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.check_commit_size(added)?;
        let quota = self.inner.store.quota();
        if quota.is_limited() {
            self.check_quota(quota, &entries).await?;
        }
        let mut st = self.inner.state.locked();
        if let Some(base) = st.usage {
            let after = st.usage_with(base, &entries, &mut Vec::new());
            st.usage = Some(after);
        }
        st.buffer_bytes += added;
        for (k, v) in entries {
            st.cache_put(k.clone(), Some(v.clone()));
            st.buffer.push(WriteOp::Put(k, v));
        }
        Ok(())
    }

    fn check_commit_size(&self, added: usize) -> Result<(), StorageError> {
        let max = self.inner.limits.max_commit_bytes;
        let bytes = self.inner.state.locked().buffer_bytes + added;
        if max > 0 && bytes > max {
            return Err(StorageError::CommitTooLarge { bytes, max });
        }
        Ok(())
    }

    /// Reads the room's storage usage now, when the store enforces a quota and the usage is not
    /// known yet, so that later puts are checked without waiting on the store unless they come
    /// near the quota. Parties whose puts must finish at once (JS parties) call it before they
    /// run.
    pub async fn prepare_quota(&self) -> Result<(), StorageError> {
        if !self.inner.store.quota().is_limited() || self.inner.state.locked().usage.is_some() {
            return Ok(());
        }
        self.sync().await?;
        if let Some(u) = self.inner.store.usage(&self.inner.room).await? {
            self.inner.state.locked().usage.get_or_insert(u);
        }
        Ok(())
    }

    /// Refuses a put that would take the room past its quota. The room's usage is read from the
    /// store once; after that it is kept here, exact where previous values are known and an
    /// upper bound where they are not. Only when that bound breaks the quota is the exact
    /// figure fetched (the buffered writes committed, the previous values read).
    async fn check_quota(&self, quota: Quota, entries: &[(String, Bytes)]) -> Result<(), StorageError> {
        let known = self.inner.state.locked().usage;
        let base = match known {
            Some(u) => u,
            None => {
                self.sync().await?;
                let Some(u) = self.inner.store.usage(&self.inner.room).await? else { return Ok(()) };
                *self.inner.state.locked().usage.get_or_insert(u)
            }
        };
        let mut unknown = Vec::new();
        let estimate = self.inner.state.locked().usage_with(base, entries, &mut unknown);
        if quota.check(base, estimate).is_ok() {
            return Ok(());
        }
        if !unknown.is_empty() {
            self.sync().await?;
            let exact = self.inner.store.usage(&self.inner.room).await?.unwrap_or(base);
            unknown.sort();
            unknown.dedup();
            let read = self.inner.store.get_fenced(&self.inner.room, self.inner.fence.as_ref(), &unknown).await;
            let previous = self.read_result(read)?;
            let mut st = self.inner.state.locked();
            for (k, v) in unknown.into_iter().zip(previous) {
                if !st.cache.contains_key(&k) {
                    st.cache_put(k, v);
                }
            }
            st.usage = Some(exact);
            let estimate = st.usage_with(exact, entries, &mut Vec::new());
            return Ok(quota.check(exact, estimate)?);
        }
        Ok(quota.check(base, estimate)?)
    }

    /// Deletes `key`; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.delete_many([key]).await? == 1)
    }

    /// Deletes several keys atomically (at most 128); returns how many existed.
    pub async fn delete_many<I, K>(&self, keys: I) -> Result<usize, StorageError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
        let existing = self.get_many(&keys).await?;
        self.check_commit_size(keys.iter().map(String::len).sum())?;
        let mut st = self.inner.state.locked();
        if let Some(u) = st.usage.as_mut() {
            for (k, v) in &existing {
                u.keys = u.keys.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(entry_bytes(k, v.len()));
            }
        }
        for k in keys {
            st.buffer_bytes += k.len();
            st.cache_put(k.clone(), None);
            st.buffer.push(WriteOp::Delete(k));
        }
        Ok(existing.len())
    }

    /// Deletes every key of the room (the alarm stays).
    pub async fn delete_all(&self) -> Result<(), StorageError> {
        self.check_failed()?;
        let mut st = self.inner.state.locked();
        st.cache.clear();
        st.cache_bytes = 0;
        st.complete = true;
        st.usage = Some(Usage::default());
        st.buffer.push(WriteOp::DeleteAll);
        Ok(())
    }

    /// The entries in the range, ordered by key bytes (descending with `reverse`). The store is
    /// read a page at a time; a result larger than the list limit (32 MiB by default) is an
    /// error: ask for a range or a `limit`.
    pub async fn list(&self, opts: ListOptions) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.sync().await?;
        let max = self.inner.limits.max_list_bytes;
        let mut entries: Vec<(String, Bytes)> = Vec::new();
        let mut bytes = 0usize;
        let mut page = opts.clone();
        let mut left = opts.limit;
        loop {
            let want = left.map_or(LIST_PAGE, |n| n.min(LIST_PAGE));
            if want == 0 {
                break;
            }
            page.limit = Some(want);
            let read = self.inner.store.list_fenced(&self.inner.room, self.inner.fence.as_ref(), &page).await;
            let got = self.read_result(read)?;
            let n = got.len();
            bytes += got.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            if max > 0 && bytes > max {
                return Err(StorageError::ListTooLarge { max });
            }
            let last = got.last().map(|(k, _)| k.clone());
            entries.extend(got);
            left = left.map(|l| l - n);
            let Some(last) = last.filter(|_| n == want) else { break };
            // The next page continues after the last key (before it, in reverse); the other
            // bounds still hold.
            if opts.reverse {
                page.end = Some(last);
            } else {
                page.start = None;
                page.start_after = Some(last);
            }
        }
        let mut st = self.inner.state.locked();
        for (k, v) in &entries {
            if !st.cache.contains_key(k) {
                st.cache_put(k.clone(), Some(v.clone()));
            }
        }
        Ok(entries)
    }

    /// The alarm time in ms since the Unix epoch, if one is set.
    pub async fn get_alarm(&self) -> Result<Option<i64>, StorageError> {
        self.check_failed()?;
        if let Some(a) = self.inner.state.locked().alarm {
            return Ok(a);
        }
        let read = self.inner.store.get_alarm_fenced(&self.inner.room, self.inner.fence.as_ref()).await;
        let a = self.read_result(read)?;
        let mut st = self.inner.state.locked();
        Ok(*st.alarm.get_or_insert(a))
    }

    /// Sets the room's one alarm (ms since the Unix epoch); a time in the past fires at once.
    pub async fn set_alarm(&self, at_ms: i64) -> Result<(), StorageError> {
        self.check_failed()?;
        let mut st = self.inner.state.locked();
        st.alarm = Some(Some(at_ms));
        st.buffer.push(WriteOp::SetAlarm(at_ms));
        Ok(())
    }

    /// Removes the room's alarm.
    pub async fn delete_alarm(&self) -> Result<(), StorageError> {
        self.check_failed()?;
        let mut st = self.inner.state.locked();
        st.alarm = Some(None);
        st.buffer.push(WriteOp::DeleteAlarm);
        Ok(())
    }

    /// Waits until every write made so far is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let target = self.seal();
        let mut rx = self.inner.progress.clone();
        let progress = rx
            .wait_for(|p| p.acked >= target || p.failed.is_some())
            .await
            .map_err(|_| StorageError::Failed("room writer stopped".into()))?;
        match &progress.failed {
            Some(msg) => Err(StorageError::Failed(msg.to_string())),
            None => Ok(()),
        }
    }

    // ---- runtime side (used by the room actor, hidden from party authors) ----

    /// Commits the open write buffer as one batch; returns the sequence number every write made
    /// so far is covered by.
    #[doc(hidden)]
    pub fn seal(&self) -> u64 {
        let mut st = self.inner.state.locked();
        if !st.buffer.is_empty() {
            let batch = std::mem::take(&mut st.buffer);
            st.buffer_bytes = 0;
            let seq = st.next_seq;
            st.next_seq += 1;
            // The writer only stops when every sender is gone, and we hold one.
            let _ = self.inner.sealed.send((seq, batch));
        }
        let acked = self.inner.progress.borrow().acked;
        if st.cache_bytes > MAX_CACHE_BYTES && acked + 1 == st.next_seq {
            st.cache.clear();
            st.cache_bytes = 0;
            st.complete = false;
        }
        st.next_seq - 1
    }

    /// The batch sequence number an outbound frame sent now must wait for.
    #[doc(hidden)]
    pub fn gate_seq(&self) -> u64 {
        let st = self.inner.state.locked();
        if st.buffer.is_empty() {
            st.next_seq - 1
        } else {
            st.next_seq
        }
    }

    /// The writer's progress, for the output gate.
    #[doc(hidden)]
    pub fn progress(&self) -> watch::Receiver<WriteProgress> {
        self.inner.progress.clone()
    }

    /// The alarm as this room last knew it (`None` when never read or written).
    #[doc(hidden)]
    pub fn known_alarm(&self) -> Option<Option<i64>> {
        self.inner.state.locked().alarm
    }

    /// Drops cached values (when the room hibernates), if no write is in flight.
    #[doc(hidden)]
    pub fn clear_cache(&self) {
        let mut st = self.inner.state.locked();
        let acked = self.inner.progress.borrow().acked;
        if st.buffer.is_empty() && acked + 1 == st.next_seq {
            st.cache.clear();
            st.cache_bytes = 0;
            st.complete = false;
            // The alarm stays known: this room is its only writer, and a hibernated room must
            // still wake for it.
        }
    }
}

/// Commits sealed batches in order, merging whatever queued up while the previous commit was in
/// flight into one atomic commit of at most `max_bytes` (0: no limit; a single batch larger than
/// that still goes alone).
async fn writer(
    room: RoomKey,
    store: Arc<dyn Store>,
    fence: Option<Fence>,
    max_bytes: usize,
    mut sealed: mpsc::UnboundedReceiver<(u64, Vec<WriteOp>)>,
    progress: Arc<watch::Sender<WriteProgress>>,
) {
    let mut carried: Option<(u64, Vec<WriteOp>)> = None;
    loop {
        let (mut seq, mut ops) = match carried.take() {
            Some(batch) => batch,
            None => match sealed.recv().await {
                Some(batch) => batch,
                None => return,
            },
        };
        let mut bytes = ops_bytes(&ops);
        while max_bytes == 0 || bytes < max_bytes {
            let Ok((s, more)) = sealed.try_recv() else { break };
            let more_bytes = ops_bytes(&more);
            if max_bytes > 0 && bytes + more_bytes > max_bytes {
                carried = Some((s, more));
                break;
            }
            seq = s;
            bytes += more_bytes;
            ops.extend(more);
        }
        let ops = compact(ops);
        match store.commit(&room, fence.as_ref(), &ops).await {
            Ok(()) => progress.send_modify(|p| p.acked = seq),
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "room write failed; resetting the room");
                let fenced = matches!(e, StoreError::Fenced { .. });
                progress.send_modify(|p| {
                    p.failed = Some(Arc::new(e.to_string()));
                    p.fenced = fenced;
                });
                return;
            }
        }
    }
}

/// The shortest op list with the same effect as applying `ops` in order: what a `DeleteAll`
/// erases is dropped, only the last write of each key and the last alarm op are kept. A room
/// that rewrites one big value per message (a chat history) then ships it once per commit,
/// however many messages the commit covers.
pub fn compact(ops: Vec<WriteOp>) -> Vec<WriteOp> {
    if ops.len() < 2 {
        return ops;
    }
    let start = ops.iter().rposition(|op| matches!(op, WriteOp::DeleteAll)).unwrap_or(0);
    let mut out = Vec::with_capacity(ops.len() - start);
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut alarm: Option<WriteOp> = ops[..start].iter().rev().find(|op| is_alarm(op)).cloned();
    for op in ops.into_iter().skip(start) {
        match &op {
            WriteOp::Put(k, _) | WriteOp::Delete(k) => match keys.get(k) {
                Some(&i) => out[i] = op,
                None => {
                    keys.insert(k.clone(), out.len());
                    out.push(op);
                }
            },
            WriteOp::SetAlarm(_) | WriteOp::DeleteAlarm => alarm = Some(op),
            WriteOp::DeleteAll => out.push(op),
        }
    }
    out.extend(alarm);
    out
}

/// Bytes of keys and values in `ops`.
fn ops_bytes(ops: &[WriteOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            WriteOp::Put(k, v) => k.len() + v.len(),
            WriteOp::Delete(k) => k.len(),
            _ => 0,
        })
        .sum()
}

fn is_alarm(op: &WriteOp) -> bool {
    matches!(op, WriteOp::SetAlarm(_) | WriteOp::DeleteAlarm)
}

/// Decodes a stored JSON value.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|source| StorageError::Json { key: key.to_string(), source })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Bytes, StorageError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|source| StorageError::Json { key: key.to_string(), source })
}

/// Milliseconds since the Unix epoch, the unit of alarm times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// [`now_ms`] unsigned: what records and events are stamped with (0 before the epoch).
pub fn unix_ms() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put(k.into(), Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn compact_keeps_the_last_write_per_key_and_what_delete_all_leaves() {
        let ops = vec![
            put("a", "1"),
            WriteOp::SetAlarm(5),
            put("b", "1"),
            put("a", "2"),
            WriteOp::Delete("b".into()),
            WriteOp::DeleteAlarm,
            put("c", "1"),
        ];
        assert_eq!(compact(ops), vec![put("a", "2"), WriteOp::Delete("b".into()), put("c", "1"), WriteOp::DeleteAlarm]);
        let ops = vec![put("a", "1"), WriteOp::SetAlarm(9), WriteOp::DeleteAll, put("a", "3"), put("d", "1")];
        assert_eq!(compact(ops), vec![WriteOp::DeleteAll, put("a", "3"), put("d", "1"), WriteOp::SetAlarm(9)]);
    }

    /// Applying the compacted list gives the same store contents as applying the original.
    #[tokio::test]
    async fn compact_has_the_same_effect() {
        let cases: Vec<Vec<WriteOp>> = vec![
            vec![put("a", "1"), put("a", "2"), WriteOp::Delete("a".into()), put("b", "x")],
            vec![put("a", "1"), WriteOp::DeleteAll, put("b", "2"), WriteOp::SetAlarm(3), WriteOp::DeleteAll],
            vec![WriteOp::SetAlarm(1), WriteOp::DeleteAlarm, put("z", "9"), WriteOp::SetAlarm(7)],
        ];
        for ops in cases {
            let room = RoomKey::new("main", "r");
            let (full, short) = (MemoryStore::new(), MemoryStore::new());
            let seed = [put("a", "0"), put("q", "0"), WriteOp::SetAlarm(100)];
            for st in [&full, &short] {
                st.commit(&room, None, &seed).await.unwrap();
            }
            full.commit(&room, None, &ops).await.unwrap();
            short.commit(&room, None, &compact(ops.clone())).await.unwrap();
            let all = ListOptions::default();
            assert_eq!(full.list(&room, &all).await.unwrap(), short.list(&room, &all).await.unwrap(), "{ops:?}");
            assert_eq!(full.get_alarm(&room).await.unwrap(), short.get_alarm(&room).await.unwrap(), "{ops:?}");
        }
    }
}
