//! The connection table: ids, replacement, tags, broadcast exclusions, closes, the room limit.

use super::*;

#[timed_test]
async fn a_second_connection_with_the_same_id_replaces_the_first() {
    let id = "duplicate_id";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "dup", "").await;
    a.join(3, "other", "").await;
    b.join(4, "bee", "").await;
    events.until_eq("connect:bee:1").await;

    // The same id again, over another link.
    b.connect(2, "dup", "").await;
    let reason = assert_close(&a.next().await, 1, close_code::REPLACED);
    assert!(!reason.is_empty());
    assert!(matches!(b.verdict(2).await.1, FromRoom::Accepted { .. }));
    // on_close ran for the first before the second joined: no handler ever saw both.
    let seen = events.until(|e| e.starts_with("connect:dup")).await;
    assert_eq!(seen, ["close:dup:open=false:same=0", "connect:dup:1"]);
    b.send(2, "ids").await;
    assert_eq!(b.text(2).await, "ids:other,bee,dup");

    // The gateway reports the replaced socket closed: that must not touch the new one.
    a.closed(1, None).await;
    b.send(2, "whoami").await;
    let who: serde_json::Value = serde_json::from_str(&b.text(2).await).unwrap();
    assert_eq!(who["id"], "dup");
    assert!(events.drain().is_empty(), "a second on_close ran");

    // Excluding the id excludes the socket that holds it now (sid 2 on link b, not sid 1).
    a.send(3, "broadcast_without:hi:dup").await;
    match b.next().await {
        FromRoom::Broadcast { except, msg } => {
            assert_eq!(except, vec![2]);
            assert_eq!(msg.as_text(), Some("hi"));
        }
        other => panic!("link b: expected a broadcast, got {other:?}"),
    }
    match a.next().await {
        FromRoom::Broadcast { except, msg } => {
            assert!(except.is_empty(), "link a: except {except:?}");
            assert_eq!(msg.as_text(), Some("hi"));
        }
        other => panic!("link a: expected a broadcast, got {other:?}"),
    }
}

#[timed_test]
async fn broadcast_without_excludes_by_id_and_skips_links_with_no_recipient() {
    let id = "broadcast_without";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "a1", "").await;
    a.join(2, "a2", "").await;
    b.join(3, "b1", "").await;

    b.send(3, "broadcast_without:one:a2").await;
    match a.next().await {
        FromRoom::Broadcast { msg, except } => {
            assert_eq!(msg.as_text(), Some("one"));
            assert_eq!(except, vec![2]);
        }
        other => panic!("expected a broadcast, got {other:?}"),
    }
    match b.next().await {
        FromRoom::Broadcast { except, .. } => assert!(except.is_empty()),
        other => panic!("expected a broadcast, got {other:?}"),
    }

    // Every recipient on link b excluded: b gets nothing, a gets the frame.
    b.send(3, "broadcast_without:two:b1|send:done").await;
    assert_eq!(a.text(1).await, "two");
    assert_eq!(b.text(3).await, "done");
    b.quiet(QUIET).await;
}

#[timed_test]
async fn broadcast_without_a_repeated_id_still_reaches_the_others() {
    let id = "broadcast_without_repeat";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    a.join(1, "a1", "").await;
    a.join(2, "a2", "").await;
    b.join(3, "b1", "").await;

    b.send(3, "broadcast_without:hi:a1,a1").await;
    b.send(3, "broadcast:end").await;
    // a2 is not excluded, so link a must get "hi" (before "end").
    assert_eq!(a.text(2).await, "hi");
    assert_eq!(a.text(2).await, "end");
}

#[timed_test]
async fn tags_are_validated_and_filter_get_connections() {
    let id = "tags";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;

    assert_eq!(gw.join(1, "t1", "tags=red,blue").await, ["t1", "red", "blue"]);
    assert_eq!(gw.join(2, "t2", "tags=red").await, ["t2", "red"]);
    assert_eq!(gw.join(3, "t3", "").await, ["t3"]);

    // Nine tags besides the id fit the default limit of ten; ten do not.
    let nine: Vec<String> = (0..9).map(|i| format!("x{i}")).collect();
    assert_eq!(gw.join(4, "t4", &format!("tags={}", nine.join(","))).await.len(), 10);
    let ten: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
    gw.connect(5, "t5", &format!("tags={}", ten.join(","))).await;
    assert!(matches!(gw.verdict(5).await.1, FromRoom::Failed { .. }), "eleven tags were accepted");
    // An empty tag.
    gw.connect(6, "t6", "tags=").await;
    assert!(matches!(gw.verdict(6).await.1, FromRoom::Failed { .. }), "an empty tag was accepted");
    gw.connect(7, "t7", "tags=a,,b").await;
    assert!(matches!(gw.verdict(7).await.1, FromRoom::Failed { .. }), "an empty tag was accepted");
    // A tag longer than the limit.
    gw.connect(8, "t8", &format!("tags={}", "y".repeat(257))).await;
    assert!(matches!(gw.verdict(8).await.1, FromRoom::Failed { .. }), "a 257-byte tag was accepted");

    for (query, want) in
        [("ids", "ids:t1,t2,t3,t4"), ("ids:red", "ids:t1,t2"), ("ids:blue", "ids:t1"), ("ids:t3", "ids:t3")]
    {
        gw.send(3, query).await;
        assert_eq!(gw.text(3).await, want, "{query}");
    }
}

#[timed_test]
async fn joined_comes_before_accepted_with_on_connect_frames_between() {
    let id = "handshake_order";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "w", "welcome=1&tags=vip").await;
    let first = gw.next().await;
    assert!(matches!(first, FromRoom::Joined { sid: 1 }), "got {first:?}");
    assert_send(&gw.next().await, 1, "welcome");
    match gw.next().await {
        FromRoom::Accepted { sid: 1, tags } => assert_eq!(tags, ["w", "vip"]),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[timed_test]
async fn closing_a_connection_from_party_code_closes_the_socket_then_runs_on_close() {
    let id = "party_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "c1", "").await;
    gw.join(2, "c2", "").await;

    gw.send(1, "close:4000:bye").await;
    let reason = assert_close(&gw.next().await, 1, 4000);
    assert_eq!(reason, "bye");
    let seen = events.until(|e| e.starts_with("close:")).await;
    assert_eq!(seen.last().unwrap(), "close:c1:open=false:same=0");
    // Frames from the closed socket are ignored; the gateway's late Closed runs nothing.
    gw.send(1, "send:zombie").await;
    gw.closed(1, None).await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:c2");
    assert!(events.drain().is_empty(), "on_close ran twice");
}

#[timed_test]
async fn closing_a_connection_in_on_connect_closes_it_and_runs_on_close() {
    let id = "connect_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "nope", "close=4001").await;
    let mut got = Vec::new();
    while !got.iter().any(|m| matches!(m, FromRoom::Close { sid: 1, code: 4001, .. })) {
        got.push(gw.next().await);
    }
    events.until_eq("close:nope:open=false:same=0").await;
    gw.join(2, "yes", "").await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:yes");
}

#[timed_test]
async fn a_socket_that_failed_runs_on_error_then_on_close() {
    let id = "socket_error";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "s1", "").await;
    events.until_eq("connect:s1:1").await;

    gw.closed(1, Some("connection reset")).await;
    let seen = events.until(|e| e.starts_with("close:")).await;
    assert_eq!(seen, ["error:s1:connection reset", "close:s1:open=false:same=0"]);
}

#[timed_test]
async fn closing_a_link_runs_on_close_for_each_of_its_sockets() {
    let id = "link_close";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    let mut b = Gw::open(&room).await;
    let mut c = Gw::open(&room).await;
    a.join(1, "l1", "").await;
    a.join(2, "l2", "").await;
    b.join(3, "l3", "").await;
    c.join(4, "l4", "").await;
    events.until_eq("connect:l4:1").await;

    // Dropping the sender closes the link.
    let (link, mut rx) = a.link.into_parts();
    drop(link);
    let mut closed = vec![events.next().await, events.next().await];
    closed.sort();
    assert_eq!(closed, ["close:l1:open=false:same=0", "close:l2:open=false:same=0"]);
    assert!(timeout(WAIT, rx.recv()).await.expect("the link stayed open").is_none());

    // So does close().
    b.link.close_link().await;
    assert_eq!(events.next().await, "close:l3:open=false:same=0");
    assert!(b.rest().await.is_empty());

    c.send(4, "ids").await;
    assert_eq!(c.text(4).await, "ids:l4");
}

#[timed_test]
async fn connections_past_the_room_limit_are_refused_with_503() {
    let id = "room_full";
    Fixture::register(id);
    let limits = Limits { max_connections_per_room: 2, ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "f1", "").await;
    gw.join(2, "f2", "").await;
    gw.connect(3, "f3", "").await;
    match gw.verdict(3).await {
        (before, FromRoom::Refused { status: 503, .. }) => assert!(before.is_empty(), "before: {before:?}"),
        other => panic!("expected Refused 503, got {other:?}"),
    }
    gw.closed(1, None).await;
    gw.join(4, "f4", "").await;
}
