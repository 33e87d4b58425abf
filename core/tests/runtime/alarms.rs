//! Alarms (wall clock): firing once, retries with backoff, due checks.

use super::*;

/// Polls the store until the room's alarm is `want`.
async fn wait_store_alarm(store: &dyn Store, room: &RoomKey, want: Option<i64>) {
    wait_store_alarm_where(store, room, |a| a == want).await;
}

/// Polls the store until the room's alarm satisfies `pred`.
async fn wait_store_alarm_where(store: &dyn Store, room: &RoomKey, pred: impl Fn(Option<i64>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = store.get_alarm(room).await.unwrap();
        if pred(got) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the store alarm stayed {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alarm_time(event: &str) -> i64 {
    event.rsplit(':').next().unwrap().parse().expect("alarm:N:TIME")
}

#[timed_test]
async fn an_alarm_fires_once_and_is_then_deleted() {
    let id = "alarm_once";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;

    let set_at = now_ms();
    gw.send(1, "alarm:300|send:set").await;
    assert_eq!(gw.text(1).await, "set");
    let fired = events.until(|e| e.starts_with("alarm:")).await;
    let fired = fired.last().unwrap();
    assert!(fired.starts_with("alarm:1:"), "{fired}");
    assert!(alarm_time(fired) >= set_at + 300, "fired early: {fired} (set at {set_at})");
    wait_store_alarm(store.as_ref(), &key(id), None).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.count(&fx.alarms), 1, "the alarm fired again");
}

#[timed_test]
async fn a_failing_alarm_is_retried_with_backoff_and_then_deleted() {
    let id = "alarm_retry";
    let fx = Fixture::register(id);
    fx.fail_alarms.store(1, Ordering::SeqCst);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    assert_eq!(call(&room, "/alarm/100").await.status(), StatusCode::OK);

    let first = events.until(|e| e.starts_with("alarm:")).await.pop().unwrap();
    assert!(first.starts_with("alarm:1:"), "{first}");
    // The retry is stored, so it would survive the room.
    let retry_after = alarm_time(&first) + 2000;
    wait_store_alarm_where(store.as_ref(), &key(id), |a| a.is_some_and(|t| t >= retry_after)).await;
    let second = events.until(|e| e.starts_with("alarm:")).await.pop().unwrap();
    assert!(second.starts_with("alarm:2:"), "{second}");
    let gap = alarm_time(&second) - alarm_time(&first);
    assert!(gap >= 1900, "retried after {gap} ms; the first backoff is 2 s");
    wait_store_alarm(store.as_ref(), &key(id), None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.count(&fx.alarms), 2);
}

#[timed_test]
async fn the_alarm_command_runs_on_alarm_only_when_an_alarm_is_due() {
    // No alarm at all.
    let id = "alarm_cmd_none";
    let fx = Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    room.alarm().await.unwrap();
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.alarms), 0);

    // An alarm an hour ahead.
    let id = "alarm_cmd_later";
    let fx = Fixture::register(id);
    let store = Arc::new(MemoryStore::new());
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    call(&room, "/alarm/3600000").await;
    let at = store.get_alarm(&key(id)).await.unwrap().expect("the alarm reached the store");
    room.alarm().await.unwrap();
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.alarms), 0);
    assert_eq!(store.get_alarm(&key(id)).await.unwrap(), Some(at));

    // A due alarm in the store of a room that has not started (the host scheduler's case).
    let id = "alarm_cmd_due";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let store = Arc::new(MemoryStore::new());
    store.commit(&key(id), None, &[WriteOp::SetAlarm(now_ms() - 1000)]).await.unwrap();
    let (room, _exit) = spawn(id, Opts { store: store.clone(), ..Opts::default() });
    room.alarm().await.unwrap();
    events.until(|e| e.starts_with("alarm:1:")).await;
    wait_store_alarm(store.as_ref(), &key(id), None).await;
}

#[timed_test]
async fn an_alarm_far_in_the_past_fires_at_once() {
    let id = "alarm_min";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, mut exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    gw.send(1, &format!("alarm_at:{}", i64::MIN)).await;
    tokio::select! {
        _ = events.until(|e| e.starts_with("alarm:1:")) => {}
        r = &mut exit => panic!("the room task ended: {r:?}"),
    }
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_room_whose_on_start_fails_on_an_alarm_does_not_spin() {
    let id = "alarm_start_spin";
    let fx = Fixture::register(id);
    fx.fail_start_after.store(1, Ordering::SeqCst); // the first start works, every later one fails
    let limits = Limits { hibernate_idle: Duration::from_millis(100), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { hibernate: true, limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "a", "").await;
    gw.send(1, "alarm:500|send:set").await;
    assert_eq!(gw.text(1).await, "set");
    // The room hibernates after 100 ms; at 500 ms the alarm wakes it and on_start fails.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let starts = fx.count(&fx.starts);
    let _ = room.shutdown(close_code::GOING_AWAY, "test over").await;
    assert!(starts <= 10, "on_start ran {starts} times in 2.5 s");
}
