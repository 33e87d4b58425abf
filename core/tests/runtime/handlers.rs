//! Handler containment: panics, errors and time limits stay in their socket or request.

use super::*;

#[timed_test]
async fn a_panic_in_on_message_closes_that_socket_with_1011_and_the_room_goes_on() {
    let id = "panic_message";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "p1", "").await;
    gw.join(2, "p2", "").await;

    gw.send(1, "panic").await;
    let reason = assert_close(&gw.next().await, 1, close_code::INTERNAL_ERROR);
    assert_hidden(&reason, client_text::INTERNAL_ERROR, "panic");
    events.until_eq("close:p1:open=false:same=0").await;

    gw.send(2, "send:still here").await;
    assert_eq!(gw.text(2).await, "still here");
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:p2");
}

#[timed_test]
async fn an_error_from_on_message_reaches_on_error() {
    let id = "error_message";
    let fx = Fixture::register(id);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.join(1, "e1", "").await;

    gw.send(1, "error:boom").await;
    assert_eq!(gw.text(1).await, "on_error:boom");
    events.until_eq("error:e1:boom").await;
    // The socket stays open.
    gw.send(1, "send:still open").await;
    assert_eq!(gw.text(1).await, "still open");
}

#[timed_test(start_paused = true)]
async fn a_handler_past_the_time_limit_closes_its_socket_with_1011() {
    let id = "handler_timeout";
    Fixture::register(id);
    let limits = Limits { handler_timeout: Duration::from_millis(200), ..Limits::default() };
    let (room, _exit) = spawn(id, Opts { limits, ..Opts::default() });
    let mut gw = Gw::open(&room).await;
    gw.join(1, "slow", "").await;
    gw.join(2, "fast", "").await;

    gw.send(1, "hang").await;
    let reason = assert_close(&gw.next().await, 1, close_code::INTERNAL_ERROR);
    assert_hidden(&reason, client_text::INTERNAL_ERROR, "timed out");
    gw.send(2, "send:alive").await;
    assert_eq!(gw.text(2).await, "alive");
}

#[timed_test]
async fn an_on_connect_error_fails_the_connection_with_a_reference_not_its_text() {
    let id = "connect_error";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;
    gw.connect(1, "bad", "fail=no+entry+for+you").await;
    match gw.verdict(1).await.1 {
        FromRoom::Failed { reason, .. } => assert_hidden(&reason, client_text::INTERNAL_ERROR, "no entry for you"),
        other => panic!("expected Failed, got {other:?}"),
    }
    gw.join(2, "good", "").await;
    gw.send(2, "ids").await;
    assert_eq!(gw.text(2).await, "ids:good");
}

#[timed_test]
async fn on_request_panics_answer_500_and_http_errors_their_status() {
    let id = "request_errors";
    Fixture::register(id);
    let (room, _exit) = spawn(id, Opts::default());
    let res = call(&room, "/panic").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_hidden(body(&res), client_text::INTERNAL_SERVER_ERROR, "panic");
    let res = call(&room, "/teapot").await;
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(body(&res), "short and stout");
    let res = call(&room, "/ping").await;
    assert_eq!(res.status(), StatusCode::OK, "the room goes on after a panic");
}

#[timed_test]
async fn a_failed_on_start_fails_the_first_event_and_the_next_event_retries() {
    let id = "start_retry";
    let fx = Fixture::register(id);
    fx.fail_start_first.store(1, Ordering::SeqCst);
    let mut events = fx.events();
    let (room, _exit) = spawn(id, Opts::default());
    let mut gw = Gw::open(&room).await;

    gw.connect(1, "first", "").await;
    match gw.verdict(1).await.1 {
        FromRoom::Failed { reason, .. } => assert_hidden(&reason, client_text::INTERNAL_ERROR, "start failure 1"),
        other => panic!("expected Failed, got {other:?}"),
    }
    gw.join(2, "second", "").await;
    let seen = events.until(|e| e.starts_with("connect:")).await;
    assert_eq!(seen, ["new:1", "start:1", "new:2", "start:2", "connect:second:1"]);

    // Same through HTTP: 500 first, then served.
    let id = "start_retry_http";
    let fx = Fixture::register(id);
    fx.fail_start_first.store(1, Ordering::SeqCst);
    let (room, _exit) = spawn(id, Opts::default());
    let res = call(&room, "/ping").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_hidden(body(&res), client_text::INTERNAL_SERVER_ERROR, "start failure 1");
    assert_eq!(call(&room, "/ping").await.status(), StatusCode::OK);
    assert_eq!(fx.count(&fx.starts), 2);
}
