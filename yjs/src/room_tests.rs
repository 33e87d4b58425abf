//! Yjs rooms in the room runtime, driven through gateway links by yrs clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use partyline::prelude::*;
use partyline::{Limits, MemoryStore};
use yrs::{Doc, GetString, Text, Transact};

use crate::protocol::{self, Frame};
use crate::room::{Persist, YjsOptions};
use crate::save::OnSave;
use crate::testkit::{self, awareness, eventually, request, set_options, stored_keys, Client, Got};

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn empty_document_handshake_matches_y_partykit() {
    let (room, _task) = testkit::spawn("yjs", "hs", &store(), Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/yjs/hs?_pk=a").await;
    // SyncStep1 with an empty state vector, and nothing else (no awareness yet).
    assert_eq!(a.frame().await, [0x00, 0x00, 0x01, 0x00]);
    assert!(a.quiet_for(Duration::from_millis(50)).await);
    // The provider's SyncStep1 is answered with SyncStep2 of the empty document.
    a.send(protocol::sync_step1(&[0x00])).await;
    assert_eq!(a.frame().await, [0x00, 0x01, 0x02, 0x00, 0x00]);
    // Query-awareness, auth, unknown types and stray text are ignored.
    a.send(vec![0x03]).await;
    a.send(vec![0x02, 0x00, 0x00]).await;
    a.send(vec![0x09]).await;
    a.send(vec![0x00, 0x07]).await;
    a.send("hello").await;
    assert!(a.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn updates_reach_everyone_including_the_sender_and_persist() {
    let store = store();
    let (room, task) = testkit::spawn("yjs", "doc", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/yjs/doc?_pk=a").await;
    let mut b = Client::connect(&room, "b", "/parties/yjs/doc?_pk=b").await;
    a.sync().await;
    b.sync().await;
    let update = a.edit("hello");
    a.send(protocol::update(&update)).await;
    // Both get it; the sender's copy is a duplicate for its replica.
    a.recv_update().await;
    b.recv_update().await;
    assert_eq!(b.text(), "hello");
    // Concurrent edits converge.
    let ua = a.edit(" from a");
    let ub = b.edit(" from b");
    a.send(protocol::update(&ua)).await;
    b.send(protocol::update(&ub)).await;
    for c in [&mut a, &mut b] {
        c.recv_update().await;
        c.recv_update().await;
    }
    assert_eq!(a.text(), b.text());
    let text = a.text();
    assert!(text.contains(" from a") && text.contains(" from b"), "{text}");
    // While connected, updates are in the log.
    let keys = stored_keys(&store, "yjs", "doc").await;
    assert!(keys.iter().all(|k| k.starts_with("yjs:u:")) && keys.len() >= 3, "{keys:?}");

    // Everyone leaves: the log becomes a snapshot.
    a.close(None).await;
    b.close(None).await;
    eventually("the log to be compacted", || async {
        let keys = stored_keys(&store, "yjs", "doc").await;
        keys == ["yjs:s:000000"]
    })
    .await;

    // A new room instance on the same store serves the whole document.
    testkit::stop(room, task).await;
    let (room, _task) = testkit::spawn("yjs", "doc", &store, Limits::default());
    let mut c = Client::connect(&room, "c", "/parties/yjs/doc?_pk=c").await;
    c.sync().await;
    assert_eq!(c.text(), text);
    // And over HTTP.
    let res = room.request(request("GET", "/parties/yjs/doc", Bytes::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let copy = Doc::new();
    copy.transact_mut().apply_update(yrs::updates::decoder::Decode::decode_v1(res.body()).unwrap()).unwrap();
    let t = copy.get_or_insert_text("t");
    assert_eq!(t.get_string(&copy.transact()), text);
    let res = room.request(request("POST", "/parties/yjs/doc", Bytes::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_duplicate_update_is_not_relayed() {
    let (room, _task) = testkit::spawn("yjs", "dup", &store(), Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/yjs/dup?_pk=a").await;
    a.sync().await;
    let u = a.edit("x");
    a.send(protocol::update(&u)).await;
    a.recv_update().await;
    a.send(protocol::update(&u)).await;
    // A reconnecting provider's SyncStep2 with what the server has is not relayed either.
    a.send(protocol::sync_step2(&u)).await;
    assert!(a.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_on_close_and_on_drop() {
    let (room, _task) = testkit::spawn("yjs", "aw", &store(), Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/yjs/aw?_pk=a").await;
    let mut b = Client::connect(&room, "b", "/parties/yjs/aw?_pk=b").await;
    a.sync().await;
    b.sync().await;
    // The provider's first state at clock 0 is not relayed.
    a.send(awareness(11, 0, "{}")).await;
    assert!(a.quiet_for(Duration::from_millis(50)).await);
    a.send(awareness(11, 1, r#"{"user":"a"}"#)).await;
    let entry = (11, 1, Some(r#"{"user":"a"}"#.to_string()));
    assert_eq!(a.recv_awareness().await, std::slice::from_ref(&entry));
    assert_eq!(b.recv_awareness().await, std::slice::from_ref(&entry));
    b.send(awareness(22, 1, r#"{"user":"b"}"#)).await;
    a.recv_awareness().await;
    b.recv_awareness().await;

    // A newcomer gets SyncStep1, then every state in one message.
    let mut c = Client::connect(&room, "c", "/parties/yjs/aw?_pk=c").await;
    assert!(matches!(protocol::decode(&c.frame().await), Ok(Frame::SyncStep1(_))));
    let all = c.recv_awareness().await;
    assert_eq!(all, [entry, (22, 1, Some(r#"{"user":"b"}"#.to_string()))]);

    // A clean close: the others see null at the same clock.
    a.close(None).await;
    assert_eq!(b.recv_awareness().await, [(11, 1, None)]);
    assert_eq!(c.recv_awareness().await, [(11, 1, None)]);
    // A dropped socket (the gateway reports an error): the same.
    b.close(Some("connection reset")).await;
    assert_eq!(c.recv_awareness().await, [(22, 1, None)]);
    assert!(c.quiet_for(Duration::from_millis(50)).await);
}

#[tokio::test]
async fn a_chunked_update_is_reassembled_and_sent_on_whole() {
    let (room, _task) = testkit::spawn("yjs", "big", &store(), Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/yjs/big?_pk=a").await;
    let mut b = Client::connect(&room, "b", "/parties/yjs/big?_pk=b").await;
    a.sync().await;
    b.sync().await;
    let big = "x".repeat(2_000_000);
    let msg = protocol::update(&a.edit(&big));
    let count = msg.len().div_ceil(1_000_000);
    a.send(format!(r#"y-pk-batch#{{"id":"bc","type":"start","size":{},"count":{count}}}"#, msg.len())).await;
    for chunk in msg.chunks(1_000_000) {
        a.send(chunk.to_vec()).await;
    }
    a.send(format!(r#"y-pk-batch#{{"id":"bc","type":"end","size":{},"count":{count}}}"#, msg.len())).await;
    let frame = b.recv_update().await;
    assert!(frame.len() > 2_000_000, "one frame of {} bytes", frame.len());
    assert_eq!(b.text().len(), 2_000_000);
    a.recv_update().await;

    // A fresh client gets it in one SyncStep2.
    let mut c = Client::connect(&room, "c", "/parties/yjs/big?_pk=c").await;
    c.sync().await;
    assert_eq!(c.text(), big);
}

#[tokio::test]
async fn a_bad_batch_closes_only_that_connection() {
    let limits = Limits { max_outbound_message_bytes: 10_000, ..Limits::default() };
    let (room, _task) = testkit::spawn("yjs", "bad", &store(), limits);
    let mut a = Client::connect(&room, "a", "/parties/yjs/bad?_pk=a").await;
    let mut b = Client::connect(&room, "b", "/parties/yjs/bad?_pk=b").await;
    let mut c = Client::connect(&room, "c", "/parties/yjs/bad?_pk=c").await;
    a.sync().await;
    b.sync().await;
    c.sync().await;
    // Over the limit (the outbound frame limit by default): 1009.
    a.send(r#"y-pk-batch#{"id":"x","type":"start","size":10001,"count":1}"#).await;
    assert!(matches!(a.next().await, Got::Close(1009, r) if r.contains("over the limit")));
    // Contradicting its markers: 1002.
    b.send(r#"y-pk-batch#{"id":"x","type":"start","size":4,"count":1}"#).await;
    b.send(vec![0u8; 4]).await;
    b.send(r#"y-pk-batch#{"id":"y","type":"end","size":4,"count":1}"#).await;
    assert!(matches!(b.next().await, Got::Close(1002, r) if r.contains("inconsistent")));
    // The room and the others go on.
    let u = c.edit("still here");
    c.send(protocol::update(&u)).await;
    c.recv_update().await;
    assert_eq!(c.text(), "still here");
}

#[tokio::test]
async fn a_document_over_the_frame_limit_closes_a_fresh_client_with_1009() {
    let limits = Limits { max_outbound_message_bytes: 4096, ..Limits::default() };
    let (room, _task) = testkit::spawn("yjs", "huge", &store(), limits);
    let mut a = Client::connect(&room, "a", "/parties/yjs/huge?_pk=a").await;
    a.sync().await;
    for _ in 0..3 {
        let u = a.edit(&"y".repeat(2000));
        a.send(protocol::update(&u)).await;
        a.recv_update().await;
    }
    let mut b = Client::connect(&room, "b", "/parties/yjs/huge?_pk=b").await;
    assert!(matches!(protocol::decode(&b.frame().await), Ok(Frame::SyncStep1(_))));
    b.send(protocol::sync_step1(&[0x00])).await;
    assert!(matches!(b.next().await, Got::Close(1009, r) if r.contains("frame limit")));
}

#[tokio::test]
async fn read_only_connections_read_but_do_not_write() {
    set_options("ro", YjsOptions::default().read_only(|conn, _ctx| conn.uri().contains("role=viewer")));
    let (room, _task) = testkit::spawn("test", "ro", &store(), Limits::default());
    let mut w = Client::connect(&room, "w", "/parties/test/ro?_pk=w").await;
    let mut v = Client::connect(&room, "v", "/parties/test/ro?_pk=v&role=viewer").await;
    w.sync().await;
    v.sync().await;
    let u = v.edit("viewer text");
    v.send(protocol::update(&u)).await;
    v.send(protocol::sync_step2(&u)).await;
    assert!(w.quiet_for(Duration::from_millis(100)).await, "a viewer's update is not applied");
    let u = w.edit("editor text");
    w.send(protocol::update(&u)).await;
    w.recv_update().await;
    v.recv_update().await;
    assert_eq!(w.text(), "editor text");
    // Awareness still works for viewers.
    v.send(awareness(5, 1, r#"{"viewer":true}"#)).await;
    assert_eq!(w.recv_awareness().await, [(5, 1, Some(r#"{"viewer":true}"#.to_string()))]);
}

#[tokio::test]
async fn other_connections_of_the_party_get_no_yjs_frames() {
    set_options("mixed", YjsOptions::default());
    let (room, _task) = testkit::spawn("test", "mixed", &store(), Limits::default());
    let mut plain = Client::connect(&room, "p", "/parties/test/mixed?_pk=p&yjs=0").await;
    let mut a = Client::connect(&room, "a", "/parties/test/mixed?_pk=a").await;
    a.sync().await;
    let u = a.edit("hi");
    a.send(protocol::update(&u)).await;
    a.recv_update().await;
    a.send(awareness(1, 1, "{}")).await;
    a.recv_awareness().await;
    assert!(plain.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn on_load_seeds_once_and_server_edits_are_sent_and_stored() {
    let loads = Arc::new(Mutex::new(0));
    let counter = loads.clone();
    let options = YjsOptions::default().on_load(move |_room| {
        *counter.lock().unwrap() += 1;
        async {
            let doc = Doc::new();
            doc.get_or_insert_text("t").insert(&mut doc.transact_mut(), 0, "seed");
            Ok(Some(doc))
        }
    });
    set_options("seed", options);
    let store = store();
    let (room, _task) = testkit::spawn("test", "seed", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/seed?_pk=a").await;
    a.sync().await;
    assert_eq!(a.text(), "seed");
    // The server edits (here from on_request): clients get the update.
    let res = room.request(request("POST", "/parties/test/seed", " + server")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    a.recv_update().await;
    assert_eq!(a.text(), "seed + server");
    a.close(None).await;
    // The seed was stored with the document: reloading does not seed again.
    let mut b = Client::connect(&room, "b", "/parties/test/seed?_pk=b").await;
    b.sync().await;
    assert_eq!(b.text(), "seed + server");
    assert_eq!(*loads.lock().unwrap(), 1);
}

#[tokio::test]
async fn the_log_is_compacted_past_its_bound_while_connected() {
    set_options(
        "bound",
        YjsOptions::default().persist(Persist::Snapshot { max_log_updates: 3, max_log_bytes: 1 << 20 }),
    );
    let store = store();
    let (room, _task) = testkit::spawn("test", "bound", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/bound?_pk=a").await;
    a.sync().await;
    for i in 0..4 {
        let u = a.edit(&i.to_string());
        a.send(protocol::update(&u)).await;
        a.recv_update().await;
    }
    // 3 updates triggered a snapshot; the 4th is in the log.
    eventually("a snapshot and one logged update", || async {
        let keys = stored_keys(&store, "test", "bound").await;
        keys.len() == 2 && keys[0] == "yjs:s:000000" && keys[1].starts_with("yjs:u:")
    })
    .await;
}

#[tokio::test]
async fn history_mode_keeps_updates_after_everyone_left() {
    set_options("hist", YjsOptions::default().persist(Persist::history()));
    let store = store();
    let (room, _task) = testkit::spawn("test", "hist", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/hist?_pk=a").await;
    a.sync().await;
    for s in ["a", "b"] {
        let u = a.edit(s);
        a.send(protocol::update(&u)).await;
        a.recv_update().await;
    }
    a.close(None).await;
    let mut b = Client::connect(&room, "b", "/parties/test/hist?_pk=b").await;
    b.sync().await;
    assert_eq!(b.text(), "ab");
    let keys = stored_keys(&store, "test", "hist").await;
    assert_eq!(keys.len(), 2, "two logged updates, no snapshot: {keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("yjs:u:")));
}

#[tokio::test]
async fn without_persistence_nothing_is_stored() {
    set_options("mem", YjsOptions::default().persist(Persist::None));
    let store = store();
    let (room, _task) = testkit::spawn("test", "mem", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/mem?_pk=a").await;
    a.sync().await;
    let u = a.edit("volatile");
    a.send(protocol::update(&u)).await;
    a.recv_update().await;
    a.close(None).await;
    // Still in memory for the next client of this room instance.
    let mut b = Client::connect(&room, "b", "/parties/test/mem?_pk=b").await;
    b.sync().await;
    assert_eq!(b.text(), "volatile");
    assert!(stored_keys(&store, "test", "mem").await.is_empty());
}

#[tokio::test]
async fn on_save_gets_the_document_after_changes() {
    let saved = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = saved.clone();
    let on_save = OnSave::new(move |doc: Doc| {
        let sink = sink.clone();
        async move {
            let t = doc.get_or_insert_text("t");
            let s = t.get_string(&doc.transact());
            sink.lock().unwrap().push(s);
            Ok(())
        }
    })
    .debounce_wait(Duration::from_millis(50))
    .debounce_max_wait(Duration::from_millis(500));
    set_options("save", YjsOptions::default().on_save(on_save));
    let (room, _task) = testkit::spawn("test", "save", &store(), Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/save?_pk=a").await;
    a.sync().await;
    for s in ["one", " two"] {
        let u = a.edit(s);
        a.send(protocol::update(&u)).await;
        a.recv_update().await;
    }
    eventually("a save of both edits", || async {
        saved.lock().unwrap().last().map(String::as_str) == Some("one two")
    })
    .await;
    // Leaving saves what is pending.
    let u = a.edit(" three");
    a.send(protocol::update(&u)).await;
    a.recv_update().await;
    a.close(None).await;
    eventually("the final save", || async {
        saved.lock().unwrap().last().map(String::as_str) == Some("one two three")
    })
    .await;
}

#[tokio::test]
async fn a_state_set_again_on_a_new_connection_survives_the_old_one_leaving() {
    let (room, _task) = testkit::spawn("yjs", "re", &store(), Limits::default());
    let mut watcher = Client::connect(&room, "w", "/parties/yjs/re?_pk=w").await;
    let mut old = Client::connect(&room, "old", "/parties/yjs/re?_pk=old").await;
    watcher.sync().await;
    old.sync().await;
    old.send(awareness(7, 1, r#"{"n":1}"#)).await;
    watcher.recv_awareness().await;
    // The provider reconnects (new connection id) and its next heartbeat goes there.
    let mut new = Client::connect(&room, "new", "/parties/yjs/re?_pk=new").await;
    new.sync().await;
    new.send(awareness(7, 2, r#"{"n":1}"#)).await;
    assert_eq!(watcher.recv_awareness().await, [(7, 2, Some(r#"{"n":1}"#.to_string()))]);
    old.close(Some("timed out")).await;
    assert!(watcher.quiet_for(Duration::from_millis(100)).await, "the state stays");
    new.close(None).await;
    assert_eq!(watcher.recv_awareness().await, [(7, 2, None)]);
}

#[tokio::test]
async fn a_connection_that_failed_after_the_handover_does_not_pin_the_document() {
    set_options("fail", YjsOptions::default());
    let store = store();
    let (room, _task) = testkit::spawn("test", "fail", &store, Limits::default());
    let mut a = Client::connect(&room, "a", "/parties/test/fail?_pk=a").await;
    a.sync().await;
    let failed = Client::connect(&room, "f", "/parties/test/fail?_pk=f&fail=1").await;
    assert!(matches!(failed.verdict, partyline::runtime::link::FromRoom::Failed { .. }));
    let u = a.edit("kept");
    a.send(protocol::update(&u)).await;
    a.recv_update().await;
    a.close(None).await;
    // The last real connection left: the document is stored as a snapshot and unloaded.
    eventually("the snapshot", || async { stored_keys(&store, "test", "fail").await == ["yjs:s:000000"] }).await;
}
