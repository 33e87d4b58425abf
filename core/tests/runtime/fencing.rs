//! Fencing and storage failure: a fenced or failed write drops the room.

use super::*;

#[timed_test]
async fn a_fenced_write_drops_the_room_with_1012_and_discards_what_followed() {
    let id = "fenced";
    let fx = Fixture::register(id);
    fx.stash.store(true, Ordering::SeqCst);
    let mut events = fx.events();
    let store = TestStore::new();
    let fence = Some(Fence { lease: "shard-7".into(), holder: "node-a#1".into(), epoch: 3 });
    let (room, mut exit) = spawn(id, Opts { store: store.clone(), fence, ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    let mut b = Gw::open(&room).await;
    b.join(2, "b", "").await;
    let mut c = Gw::open(&room).await; // a link with no sockets

    store.fail_with(FailMode::Fenced);
    store.hold();
    a.send(1, "send:before|put:k:v|broadcast:after|send:after-send").await;
    assert_send(&a.next().await, 1, "before");
    // A handler that writes nothing, after the refused write: its frame must not leave either.
    b.send(2, "send:later|log:later-done").await;
    events.until_eq("log:later-done").await;
    store.wait_commits(1).await;
    store.release();

    for (name, gw) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        let rest = gw.rest().await;
        assert!(
            matches!(rest.as_slice(), [FromRoom::Gone { code: close_code::SERVICE_RESTART, .. }]),
            "link {name}: expected only Gone 1012, got {rest:?}"
        );
    }
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: true });
    assert_eq!(store.value(&key(id), "k").await, None);

    // This instance can no longer use storage.
    let storage = fx.room().storage().clone();
    assert!(matches!(storage.get::<String>("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.put("k", "again").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.delete("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.set_alarm(now_ms()).await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.sync().await, Err(StorageError::Failed(_))));
    assert!(room.request(request("/ping")).await.is_err(), "the room still answers");
}

/// Room `id` (registered by the caller) on a store whose next commit waits for `release` and then
/// fails as a backend failure, with socket 1 ("a") joined on one link.
async fn failing_room(id: &str) -> (Arc<TestStore>, RoomHandle, JoinHandle<RoomExit>, Gw) {
    let store = TestStore::new();
    let (room, exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    store.fail_with(FailMode::Backend);
    store.hold();
    (store, room, exit, a)
}

#[timed_test]
async fn a_failed_backend_write_drops_the_room_with_1011() {
    let id = "backend_failed";
    Fixture::register(id);
    let (store, room, mut exit, mut a) = failing_room(id).await;
    let r = room.clone();
    let pending = tokio::spawn(async move { r.request(request("/write")).await });
    store.wait_commits(1).await;
    store.release();

    let res = timeout(WAIT, pending).await.expect("the request hung").unwrap();
    assert!(res.is_err(), "a response revealing a failed write was released: {res:?}");
    let rest = a.rest().await;
    match rest.as_slice() {
        [FromRoom::Gone { code: close_code::INTERNAL_ERROR, reason }] => {
            assert_hidden(reason, client_text::ROOM_UNAVAILABLE, "disk on fire")
        }
        other => panic!("expected only Gone 1011, got {other:?}"),
    }
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: false });
}

#[timed_test]
async fn storage_fails_for_good_after_a_failed_commit() {
    let store = TestStore::new();
    store.fail_with(FailMode::Backend);
    let storage = Storage::new(key("direct_failed"), store.clone(), None, Arc::new(Limits::default()));
    storage.put("k", "v").await.unwrap();
    match timeout(WAIT, storage.sync()).await.expect("sync hung") {
        Err(StorageError::Failed(msg)) => assert!(msg.contains("disk on fire"), "{msg}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(matches!(storage.get::<String>("k").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.put("k", "v2").await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.delete_all().await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.get_alarm().await, Err(StorageError::Failed(_))));
    assert!(matches!(storage.list(ListOptions::default()).await, Err(StorageError::Failed(_))));
}

/// Socket messages queued behind a handler while the room's write fails never run: the failure
/// goes before the queue, whether the room waits for its next command or takes one already
/// queued without waiting.
#[timed_test]
async fn messages_queued_while_a_write_fails_never_run() {
    let id = "failed_then_queued";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (store, room, mut exit, a) = failing_room(id).await;
    a.send(1, "put:k:v").await;
    store.wait_commits(1).await;
    let r = room.clone();
    // A handler that waits for the commit: it returns once the failure is known.
    let running = tokio::spawn(async move { r.request(request("/sync")).await });
    events.until_eq("request:syncing").await;
    for i in 0..3 {
        a.send(1, &format!("log:queued-{i}")).await;
    }
    // The commit fails while the handler waits, with the three messages queued behind it.
    store.release();

    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: false });
    let _ = timeout(WAIT, running).await.expect("the request hung");
    let ran: Vec<String> = events.drain().into_iter().filter(|e| e.starts_with("log:queued")).collect();
    assert!(ran.is_empty(), "queued messages ran after the failed write: {ran:?}");
}
