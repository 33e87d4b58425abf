//! A document in room storage: a snapshot plus a log of the updates since, every value split
//! under the storage value limit.
//!
//! Keys (all under `yjs:`, so a party can keep its own keys beside them):
//! - `yjs:s:<part, 6 digits>`: the snapshot, one encoded update (Yjs update format v1) cut in
//!   pieces;
//! - `yjs:u:<seq, 16 digits>:<part, 6 digits>`: one logged update per `seq`, cut in pieces.
//!
//! Zero-padded numbers make key order numeric order, so one `list` returns everything in the
//! order to apply it. Every update is appended as it is applied; compaction writes the whole
//! document as the new snapshot and deletes the log and the surplus snapshot pieces. Writes
//! made in one handler commit as one atomic batch, and a compaction never reads between its
//! writes, so a reader sees either the old snapshot and log or the new snapshot, never a mix.

use partyline::{ListOptions, Storage, StorageError};

/// Prefix of every key this module writes.
pub const PREFIX: &str = "yjs:";
const SNAPSHOT: &str = "yjs:s:";
const LOG: &str = "yjs:u:";

/// Why stored document data could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored pieces do not form a document (a piece is missing or a key is foreign).
    #[error("stored document is damaged: {0}")]
    Damaged(String),
}

/// What storage held for a document.
#[derive(Debug, Default)]
pub struct Stored {
    /// The snapshot, if one was written.
    pub snapshot: Option<Vec<u8>>,
    /// Logged updates after the snapshot, oldest first.
    pub updates: Vec<Vec<u8>>,
}

impl Stored {
    /// Whether storage held nothing for this document.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }
}

/// The stored form of one document, and what is known about its keys.
pub struct DocLog {
    storage: Storage,
    max_value: usize,
    max_keys: usize,
    next_seq: u64,
    log_keys: Vec<String>,
    log_updates: usize,
    log_bytes: usize,
    snapshot_parts: usize,
}

impl DocLog {
    /// Reads the document from `storage`; values are at most `max_value` bytes and calls touch
    /// at most `max_keys` keys (the room's limits).
    pub async fn load(storage: Storage, max_value: usize, max_keys: usize) -> Result<(Self, Stored), PersistError> {
        let entries = storage.list(ListOptions { prefix: Some(PREFIX.to_string()), ..ListOptions::default() }).await?;
        let mut log = DocLog {
            storage,
            max_value: max_value.max(1),
            max_keys: max_keys.max(1),
            next_seq: 0,
            log_keys: Vec::new(),
            log_updates: 0,
            log_bytes: 0,
            snapshot_parts: 0,
        };
        let mut stored = Stored::default();
        let mut snapshot = Vec::new();
        // The update being assembled: its seq, next expected part, bytes.
        let mut current: Option<(u64, usize, Vec<u8>)> = None;
        for (key, value) in entries {
            if let Some(part) = key.strip_prefix(SNAPSHOT) {
                let part = parse_num(part).ok_or_else(|| damaged(&key, "bad part number"))?;
                if part != log.snapshot_parts as u64 {
                    return Err(damaged(&key, "snapshot part out of sequence"));
                }
                log.snapshot_parts += 1;
                snapshot.extend_from_slice(&value);
            } else if let Some(rest) = key.strip_prefix(LOG) {
                let (seq, part) = rest.split_once(':').ok_or_else(|| damaged(&key, "no part number"))?;
                let seq = parse_num(seq).ok_or_else(|| damaged(&key, "bad sequence number"))?;
                let part = parse_num(part).ok_or_else(|| damaged(&key, "bad part number"))? as usize;
                match &mut current {
                    Some((s, next, bytes)) if *s == seq => {
                        if part != *next {
                            return Err(damaged(&key, "update part out of sequence"));
                        }
                        *next += 1;
                        bytes.extend_from_slice(&value);
                    }
                    _ => {
                        if part != 0 {
                            return Err(damaged(&key, "update starts after part 0"));
                        }
                        if let Some((_, _, bytes)) = current.take() {
                            log.count(&bytes);
                            stored.updates.push(bytes);
                        }
                        log.next_seq = seq + 1;
                        current = Some((seq, 1, value.to_vec()));
                    }
                }
                log.log_keys.push(key);
            } else {
                tracing::warn!(key = %key, "ignoring an unknown key under the yjs: prefix");
            }
        }
        if let Some((_, _, bytes)) = current {
            log.count(&bytes);
            stored.updates.push(bytes);
        }
        if log.snapshot_parts > 0 {
            stored.snapshot = Some(snapshot);
        }
        Ok((log, stored))
    }

    fn count(&mut self, update: &[u8]) {
        self.log_updates += 1;
        self.log_bytes += update.len();
    }

    /// Updates in the log since the last snapshot.
    pub fn log_updates(&self) -> usize {
        self.log_updates
    }

    /// Bytes in the log since the last snapshot.
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }

    /// Appends one update to the log (buffered; durable when the handler's writes commit).
    pub async fn append(&mut self, update: &[u8]) -> Result<(), StorageError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entries: Vec<(String, bytes::Bytes)> = pieces(update, self.max_value)
            .enumerate()
            .map(|(part, piece)| (format!("{LOG}{seq:016}:{part:06}"), bytes::Bytes::copy_from_slice(piece)))
            .collect();
        self.log_keys.extend(entries.iter().map(|(k, _)| k.clone()));
        self.put(entries).await?;
        self.count(update);
        Ok(())
    }

    /// Replaces snapshot and log with `state`, the whole document as one update.
    pub async fn compact(&mut self, state: &[u8]) -> Result<(), StorageError> {
        let entries: Vec<(String, bytes::Bytes)> = pieces(state, self.max_value)
            .enumerate()
            .map(|(part, piece)| (format!("{SNAPSHOT}{part:06}"), bytes::Bytes::copy_from_slice(piece)))
            .collect();
        let parts = entries.len();
        self.put(entries).await?;
        let mut stale: Vec<String> = (parts..self.snapshot_parts).map(|p| format!("{SNAPSHOT}{p:06}")).collect();
        stale.append(&mut self.log_keys);
        for keys in stale.chunks(self.max_keys) {
            self.storage.delete_many(keys).await?;
        }
        self.snapshot_parts = parts;
        self.log_updates = 0;
        self.log_bytes = 0;
        Ok(())
    }

    async fn put(&self, entries: Vec<(String, bytes::Bytes)>) -> Result<(), StorageError> {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let batch: Vec<_> = entries.by_ref().take(self.max_keys).collect();
            self.storage.put_many(batch).await?;
        }
        Ok(())
    }
}

/// `data` cut in pieces of at most `max` bytes; an empty update is one empty piece.
fn pieces(data: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    let whole = if data.is_empty() { Some(empty) } else { None };
    whole.into_iter().chain(data.chunks(max))
}

impl std::fmt::Debug for DocLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocLog")
            .field("next_seq", &self.next_seq)
            .field("log_updates", &self.log_updates)
            .field("log_bytes", &self.log_bytes)
            .field("snapshot_parts", &self.snapshot_parts)
            .finish_non_exhaustive()
    }
}

fn parse_num(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn damaged(key: &str, why: &str) -> PersistError {
    PersistError::Damaged(format!("{why} at key {key:?}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use partyline::store::{Store, WriteOp};
    use partyline::{Limits, MemoryStore, RoomKey};

    use super::*;

    fn storage(store: &Arc<MemoryStore>) -> Storage {
        Storage::new(RoomKey::new("yjs", "r"), store.clone(), None, Arc::new(Limits::default()))
    }

    async fn keys(store: &MemoryStore) -> Vec<String> {
        let all = store.list(&RoomKey::new("yjs", "r"), &ListOptions::default()).await.unwrap();
        all.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn log_then_snapshot_round_trip_with_pieces() {
        let store = Arc::new(MemoryStore::new());
        let (mut log, stored) = DocLog::load(storage(&store), 4, 2).await.unwrap();
        assert!(stored.is_empty());
        log.append(b"abcdefghij").await.unwrap(); // 3 pieces
        log.append(b"").await.unwrap(); // 1 empty piece
        log.append(b"xy").await.unwrap();
        assert_eq!((log.log_updates(), log.log_bytes()), (3, 12));
        log.storage.sync().await.unwrap();
        assert_eq!(
            keys(&store).await,
            [
                "yjs:u:0000000000000000:000000",
                "yjs:u:0000000000000000:000001",
                "yjs:u:0000000000000000:000002",
                "yjs:u:0000000000000001:000000",
                "yjs:u:0000000000000002:000000",
            ]
        );

        let (mut log, stored) = DocLog::load(storage(&store), 4, 2).await.unwrap();
        assert_eq!(stored.snapshot, None);
        assert_eq!(stored.updates, [b"abcdefghij".to_vec(), vec![], b"xy".to_vec()]);
        assert_eq!(log.next_seq, 3);

        log.compact(b"0123456789AB").await.unwrap();
        log.append(b"tail").await.unwrap();
        log.storage.sync().await.unwrap();
        assert_eq!(
            keys(&store).await,
            ["yjs:s:000000", "yjs:s:000001", "yjs:s:000002", "yjs:u:0000000000000003:000000"]
        );

        // A smaller snapshot removes the surplus pieces.
        let (mut log, stored) = DocLog::load(storage(&store), 4, 2).await.unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(&b"0123456789AB"[..]));
        assert_eq!(stored.updates, [b"tail".to_vec()]);
        log.compact(b"small").await.unwrap();
        log.storage.sync().await.unwrap();
        assert_eq!(keys(&store).await, ["yjs:s:000000", "yjs:s:000001"]);
        let (_, stored) = DocLog::load(storage(&store), 4, 2).await.unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(&b"small"[..]));
        assert!(stored.updates.is_empty());
    }

    #[tokio::test]
    async fn other_keys_are_left_alone() {
        let store = Arc::new(MemoryStore::new());
        let room = RoomKey::new("yjs", "r");
        store.commit(&room, None, &[WriteOp::Put("mine".into(), bytes::Bytes::from_static(b"1"))]).await.unwrap();
        let (mut log, _) = DocLog::load(storage(&store), 128, 128).await.unwrap();
        log.append(b"u").await.unwrap();
        log.compact(b"s").await.unwrap();
        log.storage.sync().await.unwrap();
        assert_eq!(keys(&store).await, ["mine", "yjs:s:000000"]);
    }

    #[tokio::test]
    async fn damaged_storage_is_an_error() {
        for bad in [
            vec!["yjs:s:000001"],
            vec!["yjs:s:000000", "yjs:s:000002"],
            vec!["yjs:u:0000000000000000:000001"],
            vec!["yjs:u:0000000000000000:000000", "yjs:u:0000000000000000:000002"],
            vec!["yjs:u:x:000000"],
            vec!["yjs:u:0000000000000000"],
        ] {
            let store = Arc::new(MemoryStore::new());
            let ops: Vec<WriteOp> =
                bad.iter().map(|k| WriteOp::Put(k.to_string(), bytes::Bytes::from_static(b"v"))).collect();
            store.commit(&RoomKey::new("yjs", "r"), None, &ops).await.unwrap();
            let err = DocLog::load(storage(&store), 128, 128).await.unwrap_err();
            assert!(matches!(err, PersistError::Damaged(_)), "{bad:?}: {err}");
        }
    }
}
