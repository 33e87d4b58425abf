//! Storage under abuse: `list` reads a room in pages and refuses results past its limit, one
//! handler's writes and one commit are bounded, and a room's quota is an error at `put`,
//! exact even for keys whose previous value the room never read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use partyline::store::{Fence, Quota, StoreError, Usage, WriteOp};
use partyline::{async_trait, Bytes, Limits, ListOptions, MemoryStore, RoomKey, Storage, StorageError, Store};
use partyline_test_macros::timed_test;

fn room() -> RoomKey {
    RoomKey::new("main", "limits")
}

fn storage(store: Arc<dyn Store>, limits: Limits) -> Storage {
    Storage::new(room(), store, None, Arc::new(limits))
}

/// A [`MemoryStore`] that records the `list` limits and the commit sizes it was asked for, and
/// can hold commits back.
struct Recording {
    inner: MemoryStore,
    lists: Mutex<Vec<Option<usize>>>,
    commits: Mutex<Vec<usize>>,
    /// Commits wait while a test holds this for writing.
    gate: tokio::sync::RwLock<()>,
}

impl Recording {
    fn new(inner: MemoryStore) -> Arc<Self> {
        Arc::new(Recording {
            inner,
            lists: Mutex::default(),
            commits: Mutex::default(),
            gate: tokio::sync::RwLock::new(()),
        })
    }
}

#[async_trait]
impl Store for Recording {
    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let _open = self.gate.read().await;
        let bytes = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(k, v) => k.len() + v.len(),
                WriteOp::Delete(k) => k.len(),
                _ => 0,
            })
            .sum();
        self.commits.lock().unwrap().push(bytes);
        self.inner.commit(room, fence, ops).await
    }
    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.inner.due_alarms(now_ms, limit).await
    }
    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.inner.get_fenced(room, fence, keys).await
    }
    async fn list_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.lists.lock().unwrap().push(opts.limit);
        self.inner.list_fenced(room, fence, opts).await
    }
    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        self.inner.get_alarm_fenced(room, fence).await
    }
    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        self.inner.usage(room).await
    }
    fn quota(&self) -> Quota {
        self.inner.quota()
    }
}

async fn seed(store: &dyn Store, n: usize) {
    let ops: Vec<WriteOp> = (0..n).map(|i| WriteOp::Put(format!("k{i:04}"), Bytes::from(vec![b'v'; 10]))).collect();
    store.commit(&room(), None, &ops).await.unwrap();
}

fn keys(entries: &[(String, Bytes)]) -> Vec<String> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

#[timed_test]
async fn list_reads_the_store_in_pages_and_keeps_order_bounds_and_limit() {
    let store = Recording::new(MemoryStore::new());
    seed(store.as_ref(), 1000).await;
    let s = storage(store.clone(), Limits::default());
    let all: Vec<String> = (0..1000).map(|i| format!("k{i:04}")).collect();

    assert_eq!(keys(&s.list(ListOptions::default()).await.unwrap()), all);
    let pages = std::mem::take(&mut *store.lists.lock().unwrap());
    assert!(pages.len() >= 4 && pages.iter().all(|l| l.is_some_and(|l| l <= 256)), "{pages:?}");

    let rev = s.list(ListOptions { reverse: true, ..Default::default() }).await.unwrap();
    assert_eq!(keys(&rev), all.iter().rev().cloned().collect::<Vec<_>>());
    let some = s.list(ListOptions { start_after: Some("k0100".into()), limit: Some(300), ..Default::default() });
    assert_eq!(keys(&some.await.unwrap()), all[101..401].to_vec());
    let bounded = ListOptions {
        start: Some("k0200".into()),
        end: Some("k0700".into()),
        reverse: true,
        limit: Some(400),
        ..Default::default()
    };
    assert_eq!(keys(&s.list(bounded).await.unwrap()), all[300..700].iter().rev().cloned().collect::<Vec<_>>());
    let prefix = ListOptions { prefix: Some("k09".into()), ..Default::default() };
    assert_eq!(keys(&s.list(prefix).await.unwrap()), all[900..].to_vec());
}

#[timed_test]
async fn a_list_larger_than_its_limit_is_an_error() {
    let store = Arc::new(MemoryStore::new());
    seed(store.as_ref(), 1000).await;
    // 1000 entries of 15 bytes: 15,000 bytes.
    let s = storage(store, Limits { max_list_bytes: 14_000, ..Default::default() });
    assert!(matches!(s.list(ListOptions::default()).await, Err(StorageError::ListTooLarge { max: 14_000 })));
    let part = s.list(ListOptions { limit: Some(900), ..Default::default() }).await.unwrap();
    assert_eq!(part.len(), 900, "a limit keeps it under");
}

#[timed_test]
async fn one_handlers_writes_are_bounded_and_sync_makes_room() {
    let store = Arc::new(MemoryStore::new());
    let s = storage(store.clone(), Limits { max_commit_bytes: 100, ..Default::default() });
    s.put_bytes("a", vec![0u8; 59]).await.unwrap();
    let err = s.put_bytes("b", vec![0u8; 59]).await.unwrap_err();
    assert!(matches!(err, StorageError::CommitTooLarge { bytes: 120, max: 100 }), "{err}");
    assert_eq!(s.get_bytes("b").await.unwrap(), None, "nothing of a refused write");
    s.sync().await.unwrap();
    s.put_bytes("b", vec![0u8; 59]).await.unwrap();
    s.sync().await.unwrap();
    assert_eq!(store.usage(&room()).await.unwrap(), Some(Usage { keys: 2, bytes: 120 }));
}

#[timed_test]
async fn queued_batches_merge_into_commits_no_larger_than_the_limit() {
    let store = Recording::new(MemoryStore::new());
    let s = storage(store.clone(), Limits { max_commit_bytes: 1000, ..Default::default() });
    // Hold the first commit so the next batches queue up behind it.
    let held = store.gate.write().await;
    for i in 0..20 {
        s.put_bytes(&format!("k{i:02}"), vec![0u8; 297]).await.unwrap();
        s.seal();
    }
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), s.sync()).await.expect("sync").unwrap();
    let commits = store.commits.lock().unwrap().clone();
    assert!(commits.iter().all(|b| *b <= 1000), "{commits:?}");
    assert!(commits.len() < 20, "batches were merged: {commits:?}");
    assert_eq!(commits.iter().sum::<usize>(), 20 * 300);
}

#[timed_test]
async fn the_quota_is_an_error_at_put_and_exact_for_keys_never_read() {
    let quota = Quota { max_keys: 3, max_bytes: 100 };
    let store = Arc::new(MemoryStore::new().with_quota(quota));
    store
        .commit(
            &room(),
            None,
            &[WriteOp::Put("a".into(), Bytes::from("1")), WriteOp::Put("b".into(), Bytes::from("1"))],
        )
        .await
        .unwrap();
    let s = storage(store.clone(), Limits::default());
    s.put_bytes("c", "1").await.unwrap();
    // "a" was never read here: counted as new it would make 4 keys; the room checks.
    s.put_bytes("a", "22").await.unwrap();
    let err = s.put_bytes("d", "1").await.unwrap_err();
    assert!(matches!(err, StorageError::Store(StoreError::QuotaExceeded { keys: 4, .. })), "{err}");
    assert_eq!(s.get_bytes("d").await.unwrap(), None);
    let err = s.put_bytes("b", vec![0u8; 95]).await.unwrap_err();
    assert!(matches!(err, StorageError::Store(StoreError::QuotaExceeded { bytes: 101, .. })), "{err}");
    // A delete makes room; delete_all starts over.
    assert!(s.delete("b").await.unwrap());
    s.put_bytes("d", "1").await.unwrap();
    s.delete_all().await.unwrap();
    for k in ["x", "y", "z"] {
        s.put_bytes(k, "1").await.unwrap();
    }
    assert!(s.put_bytes("w", "1").await.is_err());
    s.sync().await.unwrap();
    assert_eq!(store.usage(&room()).await.unwrap(), Some(Usage { keys: 3, bytes: 6 }));
    // The room goes on using its storage after refusals.
    assert_eq!(s.get_bytes("x").await.unwrap(), Some(Bytes::from("1")));
}
