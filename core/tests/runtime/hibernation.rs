//! Hibernation and idle exit (paused time).

use super::*;

async fn idle_then_whoami(hibernate: bool, id: &str) -> (Arc<Fixture>, serde_json::Value) {
    let fx = Fixture::register(id);
    // Both idle timers run out before the test's next message.
    let limits =
        Limits { hibernate_idle: Duration::from_secs(2), room_idle: Duration::from_secs(4), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { hibernate, limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    assert_eq!(gw.join(1, "h1", "tags=red,blue").await, ["h1", "red", "blue"]);
    gw.send(1, "setstate:kept|put:k:v|send:set").await;
    match gw.next().await {
        FromRoom::State { sid: 1, state: Some(state) } => assert_eq!(state, Bytes::from(r#"{"text":"kept"}"#)),
        other => panic!("expected a state update, got {other:?}"),
    }
    assert_eq!(gw.text(1).await, "set");
    assert_eq!((fx.count(&fx.news), fx.count(&fx.starts)), (1, 1));

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fx.count(&fx.news), 1, "idling created a party value");
    gw.send(1, "whoami").await;
    let who = serde_json::from_str(&gw.text(1).await).unwrap();
    gw.send(1, "get:k|ids").await;
    assert_eq!(gw.text(1).await, "got:v", "storage after idling");
    assert_eq!(gw.text(1).await, "ids:h1");
    (fx, who)
}

#[timed_test(start_paused = true)]
async fn a_hibernating_room_wakes_with_connection_ids_tags_and_state_intact() {
    let (fx, who) = idle_then_whoami(true, "hibernate_wake").await;
    assert_eq!(who, serde_json::json!({"id": "h1", "tags": ["h1", "red", "blue"], "state": "kept"}));
    assert_eq!(fx.count(&fx.news), 2, "the party was not re-created after hibernating");
    assert_eq!(fx.count(&fx.starts), 2, "on_start did not run again");
}

#[timed_test(start_paused = true)]
async fn a_non_hibernating_room_keeps_its_party_value_when_idle() {
    let (fx, who) = idle_then_whoami(false, "no_hibernate").await;
    assert_eq!(who, serde_json::json!({"id": "h1", "tags": ["h1", "red", "blue"], "state": "kept"}));
    assert_eq!(fx.count(&fx.news), 1);
    assert_eq!(fx.count(&fx.starts), 1);
}

#[timed_test(start_paused = true)]
async fn an_idle_room_with_nothing_attached_exits_when_the_host_allows() {
    let id = "idle_exit";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let room_idle = Duration::from_secs(5);
    let limits = Limits { room_idle, ..Limits::default() };
    let may_exit = Box::new(move || {
        asked2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let (room, mut exit) = spawn(id, Opts { limits, may_exit, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "x", "").await;

    // A connection keeps it; so does an open link with no connection.
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited with a connection");
    gw.closed(1, None).await;
    events.until_eq("close:x:open=false:same=0").await;
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited with a link open");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "may_exit asked while something was attached");

    gw.link.close_link().await;
    let closed_at = tokio::time::Instant::now();
    assert_eq!(exit_within(&mut exit, room_idle * 6).await, RoomExit::Idle);
    assert!(closed_at.elapsed() >= room_idle, "exited after {:?}", closed_at.elapsed());
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(room.request(request("/ping")).await.is_err());
}

/// The room keeps one idle timer and moves it lazily: a deadline that passes with events since it
/// was set is set again from the last event, so a busy room never exits, and a room that goes
/// quiet exits one idle period after its last event (not earlier, and not a stale period later).
#[timed_test(start_paused = true)]
async fn a_room_exits_one_idle_period_after_its_last_event() {
    let id = "idle_after_events";
    Fixture::register(id);
    let room_idle = Duration::from_secs(5);
    let limits = Limits { room_idle, ..Limits::default() };
    let (room, mut exit) = spawn(id, Opts { limits, may_exit: Box::new(|| true), ..Opts::default() });
    let mut last = tokio::time::Instant::now();
    // An event every 3 s for 30 s: every idle deadline passes with an event since it was set.
    for i in 0..10 {
        assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK, "request {i}");
        last = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!exit.is_finished(), "the room exited 3 s after request {i}, with a 5 s idle period");
    }
    assert_eq!(exit_within(&mut exit, room_idle * 6).await, RoomExit::Idle);
    let quiet = last.elapsed();
    assert!(quiet >= room_idle && quiet < room_idle * 2, "exited {quiet:?} after the last event");
}

#[timed_test(start_paused = true)]
async fn an_idle_room_stays_when_the_host_says_no() {
    let id = "idle_stay";
    Fixture::register(id);
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let room_idle = Duration::from_secs(5);
    let limits = Limits { room_idle, ..Limits::default() };
    let may_exit = Box::new(move || {
        asked2.fetch_add(1, Ordering::SeqCst);
        false
    });
    let (room, mut exit) = spawn(id, Opts { limits, may_exit, ..Opts::default() });
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert!(timeout(room_idle * 6, &mut exit).await.is_err(), "the room exited although told to stay");
    assert!(asked.load(Ordering::SeqCst) >= 1, "may_exit was never asked");
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
}

#[timed_test]
async fn shutdown_tells_every_link_the_room_is_gone() {
    let id = "shutdown";
    Fixture::register(id);
    let (room, mut exit) = spawn(id, Opts::default());
    let mut a = Gw::open(&room).await;
    a.join(1, "a", "").await;
    room.shutdown(close_code::SERVICE_RESTART, "moving").await.unwrap();
    let rest = a.rest().await;
    assert!(
        matches!(rest.as_slice(), [FromRoom::Gone { code: close_code::SERVICE_RESTART, reason }] if reason == "moving"),
        "got {rest:?}"
    );
    assert_eq!(exit_within(&mut exit, WAIT).await, RoomExit::Shutdown);
}
