//! Storage semantics: reads of own writes, deletes, lists, limits, sync.

use super::*;

fn direct(id: &str, store: Arc<dyn Store>, limits: Limits) -> Storage {
    Storage::new(key(id), store, None, Arc::new(limits))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[timed_test]
async fn storage_reads_its_own_writes_before_they_are_committed() {
    let store = TestStore::new();
    let storage = direct("ryw", store.clone(), Limits::default());
    store.hold();
    storage.put("k", &1).await.unwrap();
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(1));
    assert_eq!(store.commits(), 0);

    let s = storage.clone();
    let first = tokio::spawn(async move { s.sync().await });
    store.wait_commits(1).await;
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(1), "a commit in flight hides the value");
    storage.put("k", &2).await.unwrap();
    assert_eq!(storage.get::<i32>("k").await.unwrap(), Some(2));
    assert!(storage.delete("k").await.unwrap());
    assert_eq!(storage.get::<i32>("k").await.unwrap(), None);
    assert_eq!(store.value(&key("ryw"), "k").await, None);

    store.release();
    timeout(WAIT, first).await.expect("sync hung").unwrap().unwrap();
    timeout(WAIT, storage.sync()).await.expect("sync hung").unwrap();
    assert_eq!(store.value(&key("ryw"), "k").await, None);
}

#[timed_test]
async fn storage_delete_reports_whether_the_key_existed() {
    let store = Arc::new(MemoryStore::new());
    let room = key("delete");
    store.commit(&room, None, &[WriteOp::Put("stored".into(), b("1"))]).await.unwrap();
    let storage = direct("delete", store.clone(), Limits::default());

    assert!(storage.delete("stored").await.unwrap(), "a key only in the store existed");
    assert!(!storage.delete("stored").await.unwrap());
    assert!(!storage.delete("never").await.unwrap());
    storage.put("buffered", "x").await.unwrap();
    assert!(storage.delete("buffered").await.unwrap(), "a buffered key existed");
    storage.put_bytes("a", b("1")).await.unwrap();
    assert_eq!(storage.delete_many(["a", "b", "buffered"]).await.unwrap(), 1);
    storage.sync().await.unwrap();
    assert_eq!(store.get(&room, &["stored".into(), "buffered".into()]).await.unwrap(), vec![None, None]);
}

#[timed_test]
async fn storage_delete_all_hides_every_key_while_the_commit_is_pending() {
    let store = TestStore::new();
    let room = key("delete_all");
    store
        .commit(&room, None, &[WriteOp::Put("seen".into(), b("1")), WriteOp::Put("unseen".into(), b("2"))])
        .await
        .unwrap();
    let storage = direct("delete_all", store.clone(), Limits::default());
    assert_eq!(storage.get_bytes("seen").await.unwrap(), Some(b("1")));
    storage.set_alarm(12_345).await.unwrap();
    storage.sync().await.unwrap();

    store.hold();
    storage.delete_all().await.unwrap();
    let s = storage.clone();
    let pending = tokio::spawn(async move { s.sync().await });
    store.wait_commits(3).await;
    assert_eq!(storage.get_bytes("seen").await.unwrap(), None);
    assert_eq!(storage.get_bytes("unseen").await.unwrap(), None, "a key never read came back from the store");
    assert!(store.value(&room, "unseen").await.is_some(), "the store changed before the commit");
    storage.put("new", "n").await.unwrap();
    assert_eq!(storage.get::<String>("new").await.unwrap().as_deref(), Some("n"));

    store.release();
    timeout(WAIT, pending).await.expect("sync hung").unwrap().unwrap();
    storage.sync().await.unwrap();
    let keys: Vec<String> =
        store.list(&room, &ListOptions::default()).await.unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(keys, ["new"]);
    assert_eq!(store.get_alarm(&room).await.unwrap(), Some(12_345), "delete_all keeps the alarm");
}

#[timed_test]
async fn storage_list_sees_buffered_writes() {
    let store = Arc::new(MemoryStore::new());
    let room = key("list");
    let seed: Vec<WriteOp> = ["a1", "a2", "b1", "c1"].iter().map(|k| WriteOp::Put(k.to_string(), b(k))).collect();
    store.commit(&room, None, &seed).await.unwrap();
    let storage = direct("list", store.clone(), Limits::default());
    storage.put_bytes("a3", b("a3")).await.unwrap();
    storage.put_bytes("b0", b("b0")).await.unwrap();
    assert!(storage.delete("a1").await.unwrap());

    let keys = |entries: Vec<(String, Bytes)>| entries.into_iter().map(|e| e.0).collect::<Vec<_>>();
    let list = |opts: ListOptions| {
        let storage = storage.clone();
        async move { keys(storage.list(opts).await.unwrap()) }
    };
    assert_eq!(list(ListOptions::default()).await, ["a2", "a3", "b0", "b1", "c1"]);
    assert_eq!(list(ListOptions { prefix: Some("a".into()), ..Default::default() }).await, ["a2", "a3"]);
    assert_eq!(
        list(ListOptions { start: Some("a3".into()), end: Some("c1".into()), ..Default::default() }).await,
        ["a3", "b0", "b1"]
    );
    assert_eq!(
        list(ListOptions { start_after: Some("a2".into()), limit: Some(2), ..Default::default() }).await,
        ["a3", "b0"]
    );
    assert_eq!(list(ListOptions { reverse: true, limit: Some(2), ..Default::default() }).await, ["c1", "b1"]);
    assert_eq!(
        list(ListOptions { prefix: Some("a".into()), reverse: true, limit: Some(1), ..Default::default() }).await,
        ["a3"]
    );
    // Writes made after a list are seen by the next one.
    storage.delete("c1").await.unwrap();
    storage.put_bytes("c2", b("c2")).await.unwrap();
    assert_eq!(list(ListOptions { start: Some("c".into()), ..Default::default() }).await, ["c2"]);
}

#[timed_test]
async fn storage_enforces_key_value_and_batch_limits() {
    let limits = Limits { max_key_bytes: 8, max_value_bytes: 16, max_batch_keys: 3, ..Limits::default() };
    let store = Arc::new(MemoryStore::new());
    let storage = direct("limits", store.clone(), limits);
    let long_key = "k".repeat(9);

    assert!(matches!(storage.put(&long_key, "v").await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(matches!(storage.get::<String>(&long_key).await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(matches!(storage.delete(&long_key).await, Err(StorageError::KeyTooLarge { len: 9, max: 8 })));
    assert!(storage.put(&"k".repeat(8), "v").await.is_ok(), "a key at the limit");

    assert!(matches!(
        storage.put_bytes("v", vec![0u8; 17]).await,
        Err(StorageError::ValueTooLarge { len: 17, max: 16, .. })
    ));
    // JSON encoding counts: "aaaaaaaaaaaaaaa" is 17 bytes with its quotes.
    assert!(matches!(storage.put("v", &"a".repeat(15)).await, Err(StorageError::ValueTooLarge { len: 17, .. })));
    assert!(storage.put_bytes("v", vec![0u8; 16]).await.is_ok(), "a value at the limit");

    let four = |p: &str| (0..4).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert!(matches!(storage.get_many(four("g")).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    assert!(matches!(storage.delete_many(four("d")).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    let entries: Vec<(String, Bytes)> = four("p").into_iter().map(|k| (k, b("x"))).collect();
    assert!(matches!(storage.put_many(entries).await, Err(StorageError::TooManyKeys { n: 4, max: 3 })));
    // A refused batch writes nothing, not even its valid entries.
    let mixed = vec![("ok".to_string(), b("x")), ("big".to_string(), Bytes::from(vec![0u8; 17]))];
    assert!(matches!(storage.put_many(mixed).await, Err(StorageError::ValueTooLarge { .. })));
    assert_eq!(storage.get_bytes("ok").await.unwrap(), None);
    assert_eq!(storage.get_bytes("p0").await.unwrap(), None);
}

#[timed_test]
async fn storage_json_get_of_a_non_json_value_is_a_json_error() {
    let storage = direct("json", Arc::new(MemoryStore::new()), Limits::default());
    storage.put_bytes("raw", Bytes::from_static(&[0xff, 0x00, 0x01])).await.unwrap();
    match storage.get::<String>("raw").await {
        Err(StorageError::Json { key, .. }) => assert_eq!(key, "raw"),
        other => panic!("expected a JSON error, got {other:?}"),
    }
    storage.put("text", "hello").await.unwrap();
    assert!(matches!(storage.get::<u32>("text").await, Err(StorageError::Json { .. })));
    assert_eq!(storage.get_bytes("raw").await.unwrap(), Some(Bytes::from_static(&[0xff, 0x00, 0x01])));
}

#[timed_test]
async fn storage_sync_resolves_only_once_the_store_has_the_data() {
    let store = TestStore::new();
    let room = key("sync");
    let storage = direct("sync", store.clone(), Limits::default());
    timeout(WAIT, storage.sync()).await.expect("sync with nothing written hung").unwrap();

    store.hold();
    storage.put("k", "v").await.unwrap();
    let s = storage.clone();
    let pending = tokio::spawn(async move { s.sync().await });
    store.wait_commits(1).await;
    tokio::time::sleep(QUIET).await;
    assert!(!pending.is_finished(), "sync resolved while the commit was held");
    assert_eq!(store.value(&room, "k").await, None);

    store.release();
    timeout(WAIT, pending).await.expect("sync hung").unwrap().unwrap();
    assert_eq!(store.value(&room, "k").await, Some(b("\"v\"")));
}

#[timed_test]
async fn storage_alarm_round_trips_and_reaches_the_store() {
    let store = Arc::new(MemoryStore::new());
    let room = key("alarm_rt");
    let storage = direct("alarm_rt", store.clone(), Limits::default());
    assert_eq!(storage.get_alarm().await.unwrap(), None);

    storage.set_alarm(1_000_000).await.unwrap();
    assert_eq!(storage.get_alarm().await.unwrap(), Some(1_000_000));
    storage.sync().await.unwrap();
    assert_eq!(store.get_alarm(&room).await.unwrap(), Some(1_000_000));

    // A fresh instance reads it from the store.
    let again = direct("alarm_rt", store.clone(), Limits::default());
    assert_eq!(again.get_alarm().await.unwrap(), Some(1_000_000));

    storage.delete_alarm().await.unwrap();
    assert_eq!(storage.get_alarm().await.unwrap(), None);
    storage.sync().await.unwrap();
    assert_eq!(store.get_alarm(&room).await.unwrap(), None);
}
