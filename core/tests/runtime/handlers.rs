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

/// A party whose `GET /wait` answers later ([`web::deferred`]), from the `POST /give` that
/// follows it; `GET /drop` answers later with nothing.
struct Deferring {
    waiting: Option<web::ResponseSender>,
}

impl Party for Deferring {
    fn new(_room: Room) -> Self {
        Deferring { waiting: None }
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        match (req.method().as_str(), req.uri().path().rsplit('/').next().unwrap_or("")) {
            ("GET", "wait") => {
                let (tx, res) = web::deferred();
                self.waiting = Some(tx);
                Ok(res)
            }
            ("GET", "drop") => Ok(web::deferred().1),
            ("GET", "refuse") => {
                let (tx, res) = web::deferred();
                let _ = tx.send(Err(HttpError::new(StatusCode::FORBIDDEN, "not you").into()));
                Ok(res)
            }
            _ => {
                if let Some(tx) = self.waiting.take() {
                    let _ = tx.send(Ok(web::text(StatusCode::OK, "released")));
                }
                Ok(web::text(StatusCode::OK, "given"))
            }
        }
    }
}

#[timed_test]
async fn a_deferred_response_answers_later_while_the_room_goes_on() {
    use partyline::testing::{body_text, request, TestRoom};
    let room = TestRoom::new::<Deferring>("main", "deferring");
    let handle = room.handle().clone();
    let waiting = tokio::spawn(async move { handle.request(request("GET", "/parties/main/deferring/wait", "")).await });
    // The room answers the next request while the first one waits (it can only be released by it).
    loop {
        let res = room.post("").await;
        assert_eq!(body_text(&res), "given");
        if waiting.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = waiting.await.expect("the task").expect("an answer");
    assert_eq!(body_text(&res), "released");
    let res = room.get(Some("/parties/main/deferring/refuse")).await;
    assert_eq!((res.status(), body_text(&res)), (StatusCode::FORBIDDEN, "not you"));
    let res = room.get(Some("/parties/main/deferring/drop")).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "a dropped answer is a 500");
}
