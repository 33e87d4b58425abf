//! The embedded on-disk [`Store`] of `partyline dev`: one [redb](https://docs.rs/redb) file,
//! usually `.partyline/store.redb`, holding every room's key/value data and alarm.
//!
//! # Layout
//!
//! Every room is identified by its *room prefix*: `u32 BE len(party) ‖ party ‖ u32 BE len(room) ‖
//! room`. The prefix is self-delimiting, so no room's prefix is a prefix of another room's keys,
//! and everything after it is the user key's raw UTF-8 bytes, which keeps a room's keys contiguous
//! and in UTF-8 byte order (so `list` is one bounded range scan). Tables:
//!
//! - `data`: room prefix ‖ user key → value bytes.
//! - `alarms`: room prefix → alarm time (ms since the Unix epoch, `i64`).
//! - `alarm_index`: time as sign-flipped `u64 BE` ‖ room prefix → `()`: alarms in time order, so
//!   [`Store::due_alarms`] reads only the due entries instead of scanning all rooms.
//! - `usage`: room prefix → keys and bytes (keys plus values) it stores, `u64 BE` each; kept while
//!   a quota is enforced, dropped (and recomputed by a scan when next needed) while none is.
//! - `meta`: `"format"` → layout version.
//!
//! # Writes
//!
//! Every commit is durable (redb's `Durability::Immediate`: an fsync per transaction). To keep
//! throughput up, one writer thread does *group commit*: it takes every request queued at that
//! moment, applies them in order in one write transaction, commits once and answers each caller.
//! Reads use their own read transactions on the blocking thread pool, concurrently with the writer.

use partyline_cluster::redis::keys::successor;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use partyline::store::{usage_after, Fence, ListOptions, Quota, RoomKey, Store, StoreError, Usage, WriteOp};
use redb::backends::InMemoryBackend;
use redb::{AccessGuard, Database, DatabaseError, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const ALARMS: TableDefinition<&[u8], i64> = TableDefinition::new("alarms");
const ALARM_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("alarm_index");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("usage");

/// Version of the key layout above, stored under `meta["format"]`.
const FORMAT_VERSION: u64 = 1;

/// At most this many commit requests go into one write transaction.
const MAX_GROUP: usize = 1024;

/// The largest entries redb accepts (its `MAX_VALUE_LENGTH` / `MAX_PAIR_LENGTH`).
const REDB_LIMITS: Limits = Limits { max_len: 3 << 30, max_pair: (3 << 30) + (768 << 20) };

/// Size limits a request is validated against before any of its ops is applied.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Largest stored key (room prefix included) or value.
    max_len: usize,
    /// Largest stored key plus value.
    max_pair: usize,
}

/// The embedded redb-backed [`Store`]: durable, single-process, with group commit.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Option<PathBuf>,
    /// Queue of the writer thread; `None` only while dropping.
    tx: Option<mpsc::Sender<CommitRequest>>,
    writer: Option<JoinHandle<()>>,
    /// Write transactions committed so far (one per group).
    groups: Arc<AtomicU64>,
    /// The per-room quota commits are held to.
    quota: Arc<Mutex<Quota>>,
}

/// One caller's `commit`, queued for the writer thread.
struct CommitRequest {
    room: RoomKey,
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`, creating its parent directories. Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("cannot create the directory {} for the store: {e}", parent.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => {
                StoreError::Backend(format!("the store at {} is in use by another process", path.display()))
            }
            e => StoreError::Backend(format!("cannot open the store at {}: {e}", path.display())),
        })?;
        Self::start(db, Some(path.to_path_buf()))
    }

    /// A store that lives in process memory only (redb's in-memory backend), for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(InMemoryBackend::new()).map_err(backend)?;
        Self::start(db, None)
    }

    /// Holds every room's commits to `quota` (checked in the commit, atomically with it).
    pub fn with_quota(self, quota: Quota) -> Self {
        *self.quota.lock().unwrap_or_else(|p| p.into_inner()) = quota;
        self
    }

    /// The file this store lives in, `None` for [`EmbeddedStore::in_memory`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Write transactions committed so far; each carries one or more grouped commits.
    pub fn write_transactions(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    /// Creates the tables, checks the layout version and starts the writer thread.
    fn start(db: Database, path: Option<PathBuf>) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(DATA).map_err(backend)?;
            txn.open_table(ALARMS).map_err(backend)?;
            txn.open_table(ALARM_INDEX).map_err(backend)?;
            txn.open_table(USAGE).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let found = meta.get("format").map_err(backend)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(backend)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Backend(format!(
                        "the store has layout version {other}, this build reads version {FORMAT_VERSION}"
                    )));
                }
            }
        }
        txn.commit().map_err(backend)?;

        let db = Arc::new(db);
        let groups = Arc::new(AtomicU64::new(0));
        let quota = Arc::new(Mutex::new(Quota::NONE));
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (db, groups, quota) = (db.clone(), groups.clone(), quota.clone());
            std::thread::Builder::new()
                .name("partyline-store-writer".into())
                .spawn(move || writer_loop(&db, &rx, &groups, &quota))
                .map_err(|e| StoreError::Backend(format!("cannot start the store writer thread: {e}")))?
        };
        Ok(EmbeddedStore { db, path, tx: Some(tx), writer: Some(writer), groups, quota })
    }

    /// Runs `f` with a read transaction on the blocking thread pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(backend)?))
            .await
            .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))?
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Drop for EmbeddedStore {
    /// Closes the queue and waits for the writer to finish queued commits and release the file, so
    /// the same path can be opened again right after.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let prefix = room_prefix(room)?;
        let keys = keys.to_vec();
        self.read(move |txn| {
            let table = txn.open_table(DATA).map_err(backend)?;
            let mut full = prefix.clone();
            keys.iter()
                .map(|k| {
                    full.truncate(prefix.len());
                    full.extend_from_slice(k.as_bytes());
                    Ok(table.get(full.as_slice()).map_err(backend)?.map(|v| Bytes::copy_from_slice(v.value())))
                })
                .collect()
        })
        .await
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let prefix = room_prefix(room)?;
        let opts = opts.clone();
        let room = room.clone();
        self.read(move |txn| {
            let limit = opts.limit.unwrap_or(usize::MAX);
            let Some((lower, upper)) = scan_bounds(&prefix, &opts).filter(|_| limit > 0) else {
                return Ok(Vec::new());
            };
            let table = txn.open_table(DATA).map_err(backend)?;
            let range = table.range::<&[u8]>((as_slice(&lower), as_slice(&upper))).map_err(backend)?;
            // Decodes one entry; `None` once past the room (only possible with an unbounded upper end).
            let decode = |item: Result<(AccessGuard<&[u8]>, AccessGuard<&[u8]>), redb::StorageError>| {
                let (k, v) = match item {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(backend(e))),
                };
                let user = k.value().strip_prefix(prefix.as_slice())?;
                Some(match std::str::from_utf8(user) {
                    Ok(key) => Ok((key.to_string(), Bytes::copy_from_slice(v.value()))),
                    Err(_) => Err(StoreError::Backend(format!("a stored key of room {room} is not UTF-8"))),
                })
            };
            let wanted = |r: &Result<(String, Bytes), StoreError>| r.as_ref().map_or(true, |(k, _)| opts.contains(k));
            if opts.reverse {
                range.rev().map_while(decode).filter(wanted).take(limit).collect()
            } else {
                range.map_while(decode).filter(wanted).take(limit).collect()
            }
        })
        .await
    }

    async fn commit(&self, room: &RoomKey, _fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        // The fence is ignored: the embedded store has a single writer (this process), so there is
        // no lease to check.
        if ops.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest { room: room.clone(), ops: ops.to_vec(), reply };
        let stopped = || StoreError::Backend("the store writer has stopped".into());
        self.tx.as_ref().ok_or_else(stopped)?.send(request).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, _fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        let prefix = room_prefix(room)?;
        self.read(move |txn| {
            let table = txn.open_table(ALARMS).map_err(backend)?;
            Ok(table.get(prefix.as_slice()).map_err(backend)?.map(|v| v.value()))
        })
        .await
    }

    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        let prefix = room_prefix(room)?;
        self.read(move |txn| {
            let usage = txn.open_table(USAGE).map_err(backend)?;
            if let Some(u) = usage.get(prefix.as_slice()).map_err(backend)? {
                return Ok(Some(decode_usage(u.value())));
            }
            let data = txn.open_table(DATA).map_err(backend)?;
            Ok(Some(scan_usage(&data, &prefix)?))
        })
        .await
    }

    fn quota(&self) -> Quota {
        *self.quota.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |txn| {
            let table = txn.open_table(ALARM_INDEX).map_err(backend)?;
            // The index is in time order: read from the earliest and stop at the first alarm not due.
            let mut due = Vec::new();
            for item in table.iter().map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let (time, room) = decode_index_key(k.value())?;
                if time > now_ms {
                    break;
                }
                due.push((room, time));
                if due.len() >= limit {
                    break;
                }
            }
            Ok(due)
        })
        .await
    }
}

/// The writer thread: takes every queued request, commits them as one group, answers each.
fn writer_loop(db: &Database, rx: &mpsc::Receiver<CommitRequest>, groups: &AtomicU64, quota: &Mutex<Quota>) {
    while let Ok(first) = rx.recv() {
        let quota = *quota.lock().unwrap_or_else(|p| p.into_inner());
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let results = write_group(db, &group, REDB_LIMITS, quota);
        groups.fetch_add(1, Ordering::Relaxed);
        match results {
            Ok(results) => {
                for (request, result) in group.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(message) => {
                tracing::error!(requests = group.len(), "store write transaction failed: {message}");
                for request in group {
                    let _ = request.reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

/// Applies `group` in order in one durable write transaction. The outer error (a redb failure)
/// fails every request; an inner error (a request that fails validation) fails only that one.
fn write_group(
    db: &Database,
    group: &[CommitRequest],
    limits: Limits,
    quota: Quota,
) -> Result<Vec<Result<(), StoreError>>, String> {
    let mut txn = db.begin_write().map_err(text)?;
    txn.set_durability(Durability::Immediate);
    let results = apply_group(&txn, group, limits, quota)?;
    txn.commit().map_err(text)?;
    Ok(results)
}

/// Validates and applies each request of `group` inside `txn`.
fn apply_group(
    txn: &WriteTransaction,
    group: &[CommitRequest],
    limits: Limits,
    quota: Quota,
) -> Result<Vec<Result<(), StoreError>>, String> {
    let mut data = txn.open_table(DATA).map_err(text)?;
    let mut alarms = txn.open_table(ALARMS).map_err(text)?;
    let mut index = txn.open_table(ALARM_INDEX).map_err(text)?;
    let mut usage = txn.open_table(USAGE).map_err(text)?;
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        // Validate the whole request first so a refused request leaves nothing behind.
        let prefix = match validate(&request.room, &request.ops, limits) {
            Ok(prefix) => prefix,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let touches_data = request.ops.iter().any(|op| !matches!(op, WriteOp::SetAlarm(_) | WriteOp::DeleteAlarm));
        if touches_data {
            if quota.is_limited() {
                // The room's usage after this request, from the previous size of every key it
                // writes; refused before anything is applied.
                let before = match usage.get(prefix.as_slice()).map_err(text)? {
                    Some(u) => decode_usage(u.value()),
                    None => scan_usage(&data, &prefix).map_err(text)?,
                };
                let mut full = prefix.clone();
                let after = usage_after(before, &request.ops, |k| {
                    full.truncate(prefix.len());
                    full.extend_from_slice(k.as_bytes());
                    Ok(data.get(full.as_slice()).map_err(backend)?.map(|v| v.value().len()))
                });
                match after.and_then(|after| quota.check(before, after).map(|()| after)) {
                    Ok(after) => {
                        usage.insert(prefix.as_slice(), encode_usage(after).as_slice()).map_err(text)?;
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                }
            } else {
                // Not kept without a quota: recomputed when a quota is set again.
                usage.remove(prefix.as_slice()).map_err(text)?;
            }
        }
        let mut full = prefix.clone();
        for op in &request.ops {
            match op {
                WriteOp::Put(k, v) => {
                    full.truncate(prefix.len());
                    full.extend_from_slice(k.as_bytes());
                    data.insert(full.as_slice(), v.as_ref()).map_err(text)?;
                }
                WriteOp::Delete(k) => {
                    full.truncate(prefix.len());
                    full.extend_from_slice(k.as_bytes());
                    data.remove(full.as_slice()).map_err(text)?;
                }
                WriteOp::DeleteAll => {
                    let upper = successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
                    let range = (Bound::Included(prefix.as_slice()), as_slice(&upper));
                    data.retain_in::<&[u8], _>(range, |k, _| !k.starts_with(&prefix)).map_err(text)?;
                }
                WriteOp::SetAlarm(t) => {
                    let old = alarms.insert(prefix.as_slice(), *t).map_err(text)?.map(|v| v.value());
                    if let Some(old) = old {
                        index.remove(index_key(old, &prefix).as_slice()).map_err(text)?;
                    }
                    index.insert(index_key(*t, &prefix).as_slice(), ()).map_err(text)?;
                }
                WriteOp::DeleteAlarm => {
                    let old = alarms.remove(prefix.as_slice()).map_err(text)?.map(|v| v.value());
                    if let Some(old) = old {
                        index.remove(index_key(old, &prefix).as_slice()).map_err(text)?;
                    }
                }
            }
        }
        results.push(Ok(()));
    }
    Ok(results)
}

/// `keys ‖ bytes`, `u64 BE` each.
fn encode_usage(u: Usage) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&u.keys.to_be_bytes());
    out[8..].copy_from_slice(&u.bytes.to_be_bytes());
    out
}

fn decode_usage(b: &[u8]) -> Usage {
    let word = |r: std::ops::Range<usize>| b.get(r).and_then(|s| s.try_into().ok()).map_or(0, u64::from_be_bytes);
    Usage { keys: word(0..8), bytes: word(8..16) }
}

/// What a room stores, counted by scanning its keys (a room's usage row is missing when no quota
/// was enforced before).
fn scan_usage(data: &impl ReadableTable<&'static [u8], &'static [u8]>, prefix: &[u8]) -> Result<Usage, StoreError> {
    let upper = successor(prefix).map_or(Bound::Unbounded, Bound::Excluded);
    let range = data.range::<&[u8]>((Bound::Included(prefix), as_slice(&upper))).map_err(backend)?;
    let mut u = Usage::default();
    for item in range {
        let (k, v) = item.map_err(backend)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        u.keys += 1;
        u.bytes += (k.value().len() - prefix.len() + v.value().len()) as u64;
    }
    Ok(u)
}

/// Checks that every entry of `ops` fits redb's limits; returns the room prefix.
fn validate(room: &RoomKey, ops: &[WriteOp], limits: Limits) -> Result<Vec<u8>, StoreError> {
    let prefix = room_prefix(room)?;
    for op in ops {
        let (key, value) = match op {
            WriteOp::Put(k, v) => (k, v.len()),
            WriteOp::Delete(k) => (k, 0),
            _ => continue,
        };
        let key_len = prefix.len() + key.len();
        if key_len > limits.max_len || value > limits.max_len || key_len + value > limits.max_pair {
            return Err(StoreError::Backend(format!(
                "entry too large for the store: key of {} bytes, value of {value} bytes in room {room}",
                key.len()
            )));
        }
    }
    Ok(prefix)
}

/// Maps any redb error to [`StoreError::Backend`].
fn backend(e: impl fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The message of a redb error that fails a whole write group.
fn text(e: impl fmt::Display) -> String {
    e.to_string()
}

/// `u32 BE len(party) ‖ party ‖ u32 BE len(room) ‖ room`.
pub fn room_prefix(room: &RoomKey) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(8 + room.party.len() + room.room.len());
    for part in [&room.party, &room.room] {
        let len = u32::try_from(part.len()).map_err(|_| StoreError::Backend(format!("room name too long: {room}")))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    Ok(out)
}

/// Reads a room prefix that makes up all of `bytes`.
pub fn decode_room_prefix(bytes: &[u8]) -> Result<RoomKey, StoreError> {
    fn part(bytes: &[u8]) -> Option<(String, &[u8])> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (s, rest) = (rest.get(..len)?, rest.get(len..)?);
        Some((std::str::from_utf8(s).ok()?.to_string(), rest))
    }
    let (party, rest) = part(bytes).ok_or_else(corrupt)?;
    let (room, rest) = part(rest).ok_or_else(corrupt)?;
    if !rest.is_empty() {
        return Err(corrupt());
    }
    Ok(RoomKey { party, room })
}

fn corrupt() -> StoreError {
    StoreError::Backend("corrupt room key in the alarm index".into())
}

/// Alarm index key: time ‖ room prefix.
pub fn index_key(t: i64, prefix: &[u8]) -> Vec<u8> {
    // The time as 8 bytes that sort like the number: sign bit flipped, big-endian.
    let mut out = Vec::with_capacity(8 + prefix.len());
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(prefix);
    out
}

/// Splits an alarm index key into its time and room.
pub fn decode_index_key(key: &[u8]) -> Result<(i64, RoomKey), StoreError> {
    let (time, prefix) = key.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let time = (u64::from_be_bytes(*time) ^ (1 << 63)) as i64;
    Ok((time, decode_room_prefix(prefix)?))
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A range of redb keys: lower and upper bound.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The redb key range of `opts` inside the room of `prefix`, `None` if it is empty.
fn scan_bounds(prefix: &[u8], opts: &ListOptions) -> Option<KeyRange> {
    let full = |k: &str| [prefix, k.as_bytes()].concat();
    let lower = match opts.lower_bound() {
        Bound::Included(k) => Bound::Included(full(&k)),
        Bound::Excluded(k) => Bound::Excluded(full(&k)),
        Bound::Unbounded => Bound::Included(prefix.to_vec()),
    };
    // Every upper candidate is exclusive; the smallest wins.
    let candidates =
        [successor(prefix), opts.end.as_deref().map(full), opts.prefix.as_deref().and_then(|p| successor(&full(p)))];
    let upper = candidates.into_iter().flatten().min();
    if let (Bound::Included(l) | Bound::Excluded(l), Some(u)) = (&lower, &upper) {
        if l >= u {
            return None;
        }
    }
    Some((lower, upper.map_or(Bound::Unbounded, Bound::Excluded)))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use partyline::store::conformance;

    use super::*;

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put(k.to_string(), Bytes::copy_from_slice(v.as_bytes()))
    }

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[tokio::test]
    async fn in_memory_store_conforms() {
        conformance::run(&EmbeddedStore::in_memory().unwrap()).await;
    }

    #[tokio::test]
    async fn quota_is_enforced_in_the_commit() {
        conformance::quota(&EmbeddedStore::in_memory().unwrap().with_quota(conformance::QUOTA)).await;
    }

    #[tokio::test]
    async fn usage_of_data_written_without_a_quota_is_counted_when_one_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let room = RoomKey::new("main", "old");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&room, None, &[put("a", "12345"), put("b", "1")]).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap().with_quota(Quota { max_keys: 3, max_bytes: 0 });
        assert_eq!(store.usage(&room).await.unwrap(), Some(Usage { keys: 2, bytes: 8 }));
        store.commit(&room, None, &[put("c", "x")]).await.unwrap();
        let err = store.commit(&room, None, &[put("d", "x")]).await.unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { keys: 4, .. }), "{err}");
        assert_eq!(store.usage(&room).await.unwrap(), Some(Usage { keys: 3, bytes: 10 }));
    }

    #[tokio::test]
    async fn file_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&EmbeddedStore::open(&dir.path().join("store.redb")).unwrap()).await;
    }

    #[tokio::test]
    async fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/.partyline/store.redb");
        let room = RoomKey::new("main", "durable");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&room, None, &[put("k", "v"), put("gone", "x"), WriteOp::SetAlarm(1_234)]).await.unwrap();
            store.commit(&room, None, &[WriteOp::Delete("gone".into())]).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.path(), Some(path.as_path()));
        assert_eq!(store.get(&room, &keys(&["k", "gone"])).await.unwrap(), vec![Some(Bytes::from("v")), None]);
        assert_eq!(store.get_alarm(&room).await.unwrap(), Some(1_234));
        assert_eq!(store.due_alarms(2_000, 10).await.unwrap(), vec![(room, 1_234)]);
    }

    #[tokio::test]
    async fn second_open_reports_the_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("is in use by another process"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_are_grouped_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let room = RoomKey::new("main", format!("room-{i}"));
                    store.commit(&room, None, &[put("n", &i.to_string()), WriteOp::SetAlarm(i)]).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for i in 0..200 {
            let room = RoomKey::new("main", format!("room-{i}"));
            assert_eq!(store.get(&room, &keys(&["n"])).await.unwrap(), vec![Some(Bytes::from(i.to_string()))]);
        }
        let due = store.due_alarms(1_000, 1_000).await.unwrap();
        assert_eq!(due.iter().map(|(_, t)| *t).collect::<Vec<_>>(), (0..200).collect::<Vec<i64>>());
        assert!(store.write_transactions() <= 201);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ops_in_one_commit_are_atomic_and_ordered() {
        let store = Arc::new(EmbeddedStore::in_memory().unwrap());
        let room = RoomKey::new("main", "atomic");

        // Order: later ops see the effect of earlier ones.
        let ops = [put("a", "1"), put("b", "1"), WriteOp::DeleteAll, put("a", "2"), WriteOp::Delete("a".into())];
        store.commit(&room, None, &ops).await.unwrap();
        assert!(store.list(&room, &ListOptions::default()).await.unwrap().is_empty());
        let ops = [WriteOp::SetAlarm(5), WriteOp::DeleteAlarm, WriteOp::SetAlarm(7), WriteOp::SetAlarm(6)];
        store.commit(&room, None, &ops).await.unwrap();
        assert_eq!(store.get_alarm(&room).await.unwrap(), Some(6));
        assert_eq!(store.due_alarms(100, 10).await.unwrap(), vec![(room.clone(), 6)]);

        // Atomicity: a concurrent reader never sees one key of a commit without the other.
        let writer = {
            let (store, room) = (store.clone(), room.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let v = i.to_string();
                    store.commit(&room, None, &[put("x", &v), put("y", &v)]).await.unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let got = store.get(&room, &keys(&["x", "y"])).await.unwrap();
            assert_eq!(got[0], got[1]);
        }
        writer.await.unwrap();
        assert_eq!(store.get(&room, &keys(&["x", "y"])).await.unwrap(), vec![Some(Bytes::from("99")); 2]);
    }

    #[test]
    fn a_refused_request_fails_alone_and_leaves_nothing() {
        let db = Database::builder().create_with_backend(InMemoryBackend::new()).unwrap();
        let store_tables = db.begin_write().unwrap();
        store_tables.open_table(DATA).unwrap();
        store_tables.commit().unwrap();
        let request = |room: &str, ops: Vec<WriteOp>| CommitRequest {
            room: RoomKey::new("main", room),
            ops,
            reply: oneshot::channel().0,
        };
        let group = [
            request("a", vec![put("k", "ok")]),
            request("b", vec![put("k", "ok"), put("big", &"x".repeat(100))]),
            request("c", vec![put("k", "ok")]),
        ];
        let results = write_group(&db, &group, Limits { max_len: 64, max_pair: 96 }, Quota::NONE).unwrap();
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(matches!(&results[1], Err(StoreError::Backend(m)) if m.contains("too large")), "{:?}", results[1]);
        let txn = db.begin_read().unwrap();
        let data = txn.open_table(DATA).unwrap();
        let stored = |room: &str| {
            data.get([room_prefix(&RoomKey::new("main", room)).unwrap(), b"k".to_vec()].concat().as_slice())
                .unwrap()
                .is_some()
        };
        assert!(stored("a") && !stored("b") && stored("c"));
    }

    #[test]
    fn keys_are_unambiguous_and_bounds_stay_in_the_room() {
        let p1 = room_prefix(&RoomKey::new("ab", "c")).unwrap();
        let p2 = room_prefix(&RoomKey::new("a", "bc")).unwrap();
        assert_ne!(p1, p2);
        assert_eq!(decode_room_prefix(&p1).unwrap(), RoomKey::new("ab", "c"));
        let (time, room) = decode_index_key(&index_key(-5, &p2)).unwrap();
        assert_eq!((time, room), (-5, RoomKey::new("a", "bc")));
        assert!(index_key(-1, &p1) < index_key(0, &p1) && index_key(0, &p1) < index_key(i64::MAX, &p1));
        assert_eq!(successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(successor(&[0xFF]), None);
        let opts = ListOptions { start: Some("b".into()), end: Some("a".into()), ..Default::default() };
        assert!(scan_bounds(&p1, &opts).is_none());
    }

    /// Throughput figures; run with `cargo test -p partyline-node throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, not a check"]
    async fn throughput() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let n = 1_000;
        let start = Instant::now();
        for i in 0..n {
            store.commit(&RoomKey::new("seq", "r"), None, &[put(&format!("k{i}"), "v")]).await.unwrap();
        }
        let seq = start.elapsed();
        let before = store.write_transactions();
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.commit(&RoomKey::new("conc", format!("r{i}")), None, &[put("k", "v")]).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let conc = start.elapsed();
        let groups = store.write_transactions() - before;
        println!(
            "{n} sequential commits: {:?} ({:.0}/s); {n} concurrent commits: {:?} ({:.0}/s) in {groups} transactions",
            seq,
            n as f64 / seq.as_secs_f64(),
            conc,
            n as f64 / conc.as_secs_f64()
        );
    }
}
