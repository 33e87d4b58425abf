//! The output gate (invariant 2): frames, responses and later frames wait for the commit.

use super::*;

#[timed_test]
async fn output_gate_holds_frames_that_follow_a_write_until_the_commit_is_acked() {
    let id = "gate_frames";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    let mut b = Gw::open(&room).await;
    b.join(2, "b", "").await;
    assert_eq!(store.commits(), 0, "connecting wrote nothing");

    store.hold();
    a.send(1, "send:before|put:k:v|broadcast:after").await;
    // The frame sent before the write is not held.
    assert_send(&a.next().await, 1, "before");
    store.wait_commits(1).await;
    // The broadcast follows the write: nobody sees it while the commit is pending.
    a.quiet(QUIET).await;
    b.quiet(QUIET).await;
    assert_eq!(store.value(&key(id), "k").await, None);

    store.release();
    assert_eq!(a.text(1).await, "after");
    assert_eq!(b.text(2).await, "after");
    assert_eq!(store.value(&key(id), "k").await, Some(Bytes::from("\"v\"")));
}

#[timed_test]
async fn output_gate_holds_later_frames_behind_a_held_one_in_order() {
    let id = "gate_order";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;

    store.hold();
    a.send(1, "send:1|put:k:v|send:2").await;
    // A later handler that writes nothing still may not overtake the held frame.
    a.send(1, "send:3").await;
    assert_eq!(a.text(1).await, "1");
    store.wait_commits(1).await;
    a.quiet(QUIET).await;
    store.release();
    assert_eq!(a.text(1).await, "2");
    assert_eq!(a.text(1).await, "3");
}

#[timed_test]
async fn output_gate_holds_an_http_response_until_the_commit_is_acked() {
    let id = "gate_http";
    Fixture::register(id);
    let store = TestStore::new();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });

    store.hold();
    let r = room.clone();
    let pending = tokio::spawn(async move { r.request(request("/write")).await });
    store.wait_commits(1).await;
    tokio::time::sleep(QUIET).await;
    assert!(!pending.is_finished(), "the response was released before its write was durable");
    assert_eq!(store.value(&key(id), "http").await, None);

    store.release();
    let res = timeout(WAIT, pending).await.expect("no response after the commit").unwrap().expect("room running");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(&res), "written");
    assert_eq!(store.value(&key(id), "http").await, Some(Bytes::from("\"written\"")));
}
