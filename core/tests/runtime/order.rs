//! Per-connection order (invariant 3).

use super::*;

#[timed_test]
async fn messages_from_one_socket_reach_on_message_in_order() {
    let id = "order_in";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "o", "").await;
    events.until_eq("connect:o:1").await;
    for i in 0..500 {
        gw.send(1, &format!("log:{i}")).await;
    }
    for i in 0..500 {
        assert_eq!(events.next().await, format!("log:{i}"));
    }
}

#[timed_test]
async fn frames_to_one_socket_arrive_in_the_order_sent() {
    let id = "order_out";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "o", "").await;
    gw.send(1, "burst:500").await;
    for i in 0..500 {
        assert_eq!(gw.text(1).await, i.to_string());
    }
    // Sends and broadcasts interleaved keep their order too.
    gw.send(1, "send:1|broadcast:2|send:3|broadcast:4").await;
    for want in ["1", "2", "3", "4"] {
        assert_eq!(gw.text(1).await, want);
    }
}

// =============================================================================================
// Moves between nodes (invariant 6) and at-most-once requests (invariant 2)
// =============================================================================================

/// Answers every fetch with "ok" and counts the calls.
#[derive(Default)]
struct CountingParties {
    calls: AtomicUsize,
}

#[async_trait]
impl PartiesClient for CountingParties {
    async fn fetch(&self, _room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(web::text(StatusCode::OK, "ok"))
    }

    fn has_party(&self, _party: &str) -> bool {
        true
    }
}

#[timed_test]
async fn a_request_to_another_room_waits_for_the_callers_writes() {
    let store = TestStore::new();
    let parties = Arc::new(CountingParties::default());
    let (room, _exit) =
        spawn("fetch-gate", Opts { store: store.clone(), parties: Parties::new(parties.clone()), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.hold();
    gw.send(1, "put:k:v").await;
    store.wait_commits(1).await;
    gw.send(1, "put:k2:v2|fetch:b").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(parties.calls.load(Ordering::SeqCst), 0, "the request left before the caller's writes were durable");
    store.release();
    assert_eq!(gw.text(1).await, "fetched:ok");
    assert_eq!(parties.calls.load(Ordering::SeqCst), 1);
    assert_eq!(store.value(&key("fetch-gate"), "k2").await.as_deref(), Some(&b"\"v2\""[..]));
}

#[timed_test]
async fn a_fetch_after_a_refused_write_never_leaves() {
    let store = TestStore::new();
    let parties = Arc::new(CountingParties::default());
    let (room, mut exit) =
        spawn("fetch-fenced", Opts { store: store.clone(), parties: Parties::new(parties.clone()), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.fail_with(FailMode::Fenced);
    gw.send(1, "put:k:v|fetch:b").await;
    let rest = gw.rest().await;
    assert!(rest.iter().any(|m| matches!(m, FromRoom::Gone { code: 1012, .. })), "{rest:?}");
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::StorageFailed { fenced: true });
    assert_eq!(parties.calls.load(Ordering::SeqCst), 0);
}

#[timed_test]
async fn a_request_the_room_took_is_interrupted_not_undelivered_when_the_room_fails() {
    let store = TestStore::new();
    let (room, _exit) = spawn("interrupted", Opts { store: store.clone(), ..Opts::default() });
    store.hold();
    store.fail_with(FailMode::Fenced);
    let call = tokio::spawn({
        let room = room.clone();
        async move { room.request(request("/write")).await }
    });
    store.wait_commits(1).await;
    store.release();
    let res = timeout(WAIT, call).await.unwrap().unwrap();
    assert!(matches!(res, Err(partyline::runtime::handle::RequestError::Interrupted(_))), "{res:?}");
    // A request to a room that has stopped was never delivered: safe to send elsewhere.
    let res = timeout(WAIT, room.request(request("/write"))).await.unwrap();
    assert!(matches!(res, Err(partyline::runtime::handle::RequestError::NotDelivered(_))), "{res:?}");
}

/// Issue 17, item 4: a room shut down while a handler runs stops once that handler returns,
/// without starting what was queued behind it (it is stale, or its shard is gone): the queued
/// requests never ran, so they are answered `NotDelivered` (their callers send them to the next
/// instance), not `Interrupted` (which would fail them although they never ran). The old code
/// queued the shutdown behind them, so they ran on the stopping room; and a request queued
/// behind the shutdown was answered `Interrupted`.
#[timed_test]
async fn requests_queued_behind_a_slow_handler_are_not_delivered_when_the_room_shuts_down() {
    use partyline::runtime::handle::RequestError;

    let id = "shutdown-queued";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let store = TestStore::new();
    let (room, mut exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let send = |path: &'static str| {
        let room = room.clone();
        tokio::spawn(async move { room.request(request(path)).await })
    };
    let running = send("/sleep/1500");
    events.until_eq("request:sleeping").await;
    let queued: Vec<_> = (0..3).map(|_| send("/write")).collect();
    // Queued (an in-process send), well within the handler's sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;
    room.shutdown(close_code::SERVICE_RESTART, client_text::ROOM_MOVED).await.unwrap();
    let behind = send("/write");

    let res = timeout(WAIT, running).await.unwrap().unwrap();
    match res {
        Ok(res) => assert_eq!(body(&res), "slept", "the running request keeps its result"),
        Err(e) => assert!(matches!(e, RequestError::Interrupted(_)), "the running request: {e:?}"),
    }
    for (i, q) in queued.into_iter().chain([behind]).enumerate() {
        let res = timeout(WAIT, q).await.unwrap().unwrap();
        assert!(matches!(res, Err(RequestError::NotDelivered(_))), "queued request {i}: {res:?}");
    }
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Shutdown);
    assert!(store.value(&key(id), "http").await.is_none(), "a queued request ran on the stopping room");
}

/// Issue 17, item 4, on a move: what was queued before the move runs here (as begin_move
/// hands back nothing), and a request queued behind the move never runs here: it is answered
/// `NotDelivered`, so its caller sends it to the next owner (the old code answered it
/// `Interrupted`: a failure, although it never ran).
#[timed_test]
async fn a_request_queued_behind_a_move_is_not_delivered_and_one_before_it_runs() {
    use partyline::runtime::handle::RequestError;

    let id = "move-queued";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, mut exit) = spawn(id, Opts::default());
    let send = |path: &'static str| {
        let room = room.clone();
        tokio::spawn(async move { room.request(request(path)).await })
    };
    let running = send("/sleep/1000");
    events.until_eq("request:sleeping").await;
    let before = send("/ping");
    tokio::time::sleep(Duration::from_millis(100)).await;
    room.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    let behind = send("/ping");

    for (what, call) in [("the running request", running), ("the request queued before the move", before)] {
        let res = timeout(WAIT, call).await.unwrap().unwrap();
        assert_eq!(res.map(|r| r.status()).map_err(|e| e.to_string()), Ok(StatusCode::OK), "{what}");
    }
    let res = timeout(WAIT, behind).await.unwrap().unwrap();
    assert!(matches!(res, Err(RequestError::NotDelivered(_))), "the request queued behind the move: {res:?}");
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
}

#[timed_test]
async fn a_room_that_does_not_hibernate_closes_its_links_on_a_move_once_its_writes_are_durable() {
    let store = TestStore::new();
    let (room, mut exit) = spawn("move-plain", Opts { store: store.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    store.hold();
    gw.send(1, "put:k:v|send:after").await;
    store.wait_commits(1).await;
    room.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    gw.quiet(Duration::from_millis(200)).await;
    store.release();
    assert_send(&gw.next().await, 1, "after");
    assert!(matches!(gw.next().await, FromRoom::Gone { code: 1012, .. }));
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
    assert!(store.value(&key("move-plain"), "k").await.is_some(), "durable before the room let go");
}

/// One socket's record as a gateway keeps it.
struct Rec {
    sid: SocketId,
    id: String,
    tags: Vec<String>,
    state: Option<Bytes>,
}

impl Gw {
    /// Hands `recs` to a new instance over this link, as a gateway does after `Moved`.
    async fn adopt(&self, recs: &[Rec], links: u32) {
        for r in recs {
            let uri = format!("http://localhost/parties/hibernating/room?_pk={}", r.id);
            let msg = ToRoom::Adopt { sid: r.sid, id: r.id.clone(), uri, tags: r.tags.clone(), state: r.state.clone() };
            self.link.send_raw(msg).await;
        }
        self.link.send_raw(ToRoom::Adopted { links }).await;
    }
}

#[timed_test]
async fn a_hibernating_room_moves_its_sockets_to_a_new_instance_without_losing_a_frame() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let opts = || Opts { hibernate: true, store: store.clone(), ..Opts::default() };
    let mut events = Fixture::register("move-h").events();
    let (old, mut old_exit) = spawn("move-h", opts());
    let (mut g1, mut g2) = (Gw::open(&old).await, Gw::open(&old).await);
    g1.join(1, "a", "tags=red").await;
    g2.join(7, "b", "").await;
    g1.send(1, "setstate:alpha|put:n:1|broadcast:one").await;
    assert_eq!(g1.text(1).await, "one");
    assert_eq!(g2.text(7).await, "one");

    old.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    // Each link is asked to pause; a frame that was already on its way is still handled.
    assert!(matches!(g1.next().await, FromRoom::Pause));
    assert!(matches!(g2.next().await, FromRoom::Pause));
    g2.send(7, "put:n:2|broadcast:two").await;
    g2.link.send_raw(ToRoom::Paused).await;
    g1.link.send_raw(ToRoom::Paused).await;
    assert_eq!(g1.text(1).await, "two");
    assert_eq!(g2.text(7).await, "two");
    assert!(matches!(g1.next().await, FromRoom::Moved { links: 2 }));
    assert!(matches!(g2.next().await, FromRoom::Moved { links: 2 }));
    assert_eq!(exit_within(&mut old_exit, WAIT).await, RoomExit::Moved);

    // The next owner: the same sockets, ids, tags and state, no on_connect.
    let (new, _new_exit) = spawn("move-h", opts());
    let (mut n1, mut n2) = (Gw::open(&new).await, Gw::open(&new).await);
    let state = Some(Bytes::from(serde_json::to_vec(&serde_json::json!({"text": "alpha"})).unwrap()));
    n1.adopt(&[Rec { sid: 1, id: "a".into(), tags: vec!["a".into(), "red".into()], state }], 2).await;
    // The first link's client speaks before the second link adopted: held, so the broadcast
    // reaches both.
    n1.send(1, "broadcast:three").await;
    n2.quiet(Duration::from_millis(200)).await;
    n2.adopt(&[Rec { sid: 7, id: "b".into(), tags: vec!["b".into()], state: None }], 2).await;
    assert_eq!(n1.text(1).await, "three");
    assert_eq!(n2.text(7).await, "three");
    n1.send(1, "whoami|ids:red|get:n").await;
    let who: serde_json::Value = serde_json::from_str(&n1.text(1).await).unwrap();
    assert_eq!(who, serde_json::json!({"id": "a", "tags": ["a", "red"], "state": "alpha"}));
    assert_eq!(n1.text(1).await, "ids:a");
    assert_eq!(n1.text(1).await, "got:2", "the write made during the pause is there");
    let events = events.drain();
    let connects: Vec<&String> = events.iter().filter(|e| e.starts_with("connect:")).collect();
    assert_eq!(connects, ["connect:a:1", "connect:b:1"], "no on_connect for adopted sockets: {events:?}");
    assert_eq!(events.iter().filter(|e| e.starts_with("start:")).count(), 2, "one start per instance: {events:?}");
}

#[timed_test]
async fn a_link_that_does_not_pause_in_time_is_closed_and_the_rest_move() {
    let (old, mut exit) = spawn("move-late", Opts { hibernate: true, ..Opts::default() });
    let (mut g1, mut g2) = (Gw::open(&old).await, Gw::open(&old).await);
    g1.join(1, "a", "").await;
    g2.join(2, "b", "").await;
    old.move_out(tokio::time::Instant::now() + Duration::from_millis(500)).await.unwrap();
    assert!(matches!(g1.next().await, FromRoom::Pause));
    assert!(matches!(g2.next().await, FromRoom::Pause));
    g1.link.send_raw(ToRoom::Paused).await;
    assert!(matches!(g1.next().await, FromRoom::Moved { links: 1 }));
    assert!(matches!(g2.next().await, FromRoom::Gone { code: 1012, .. }));
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
}

#[timed_test]
async fn a_room_moved_again_while_gathering_runs_the_work_it_held_first() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let opts = || Opts { hibernate: true, store: store.clone(), ..Opts::default() };
    let mut events = Fixture::register("move-twice").events();
    // The room arrives from a previous owner that had two links: only one adopts in time.
    let (room, mut exit) = spawn("move-twice", opts());
    let (mut n1, mut n2) = (Gw::open(&room).await, Gw::open(&room).await);
    n1.adopt(&[Rec { sid: 1, id: "a".into(), tags: vec!["a".into()], state: None }], 2).await;
    n1.adopt(&[Rec { sid: 2, id: "b".into(), tags: vec!["b".into()], state: None }], 2).await;
    // Held while the room gathers: a message, a close and a request.
    n1.send(1, "put:n:1|send:handled").await;
    n1.link.send_raw(ToRoom::Closed { sid: 2, error: None }).await;
    let pending = tokio::spawn({
        let room = room.clone();
        async move { room.request(request("/write")).await }
    });
    n2.quiet(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "the request waits for the gathering");

    // The room moves on before the second link adopted: the held work runs first, in order.
    room.move_out(tokio::time::Instant::now() + WAIT).await.unwrap();
    assert_send(&n1.next().await, 1, "handled");
    let res = timeout(WAIT, pending).await.expect("the request hung").unwrap().expect("answered, not dropped");
    assert_eq!((res.status(), body(&res)), (StatusCode::OK, "written"));
    events.until_eq("close:b:open=false:same=0").await;
    assert!(matches!(n1.next().await, FromRoom::Pause));
    assert!(matches!(n2.next().await, FromRoom::Pause));
    n1.link.send_raw(ToRoom::Paused).await;
    n2.link.send_raw(ToRoom::Paused).await;
    assert!(matches!(n1.next().await, FromRoom::Moved { links: 2 }));
    assert!(matches!(n2.next().await, FromRoom::Moved { links: 2 }));
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Moved);
    let stored = store.get(&key("move-twice"), &["n".to_string(), "http".to_string()]).await.unwrap();
    assert!(stored.iter().all(Option::is_some), "the held writes are durable before the room let go: {stored:?}");
}
