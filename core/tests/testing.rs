//! The test kit (`partyline::testing`) on a small party that uses what authors test: connection
//! ids, query and headers, tags, state, broadcast, storage, an alarm, HTTP, the static hooks,
//! and a restart on the same storage.

use std::time::Duration;

use partyline::http::StatusCode;
use partyline::storage::now_ms;
use partyline::testing::{body_text, request, Connect, Event, Hooks, TestRoom};
use partyline::web::{self, query_param};
use partyline::{Before, Connection, ConnectionContext, Lobby, Message, Party, Request, Response, Room};
use partyline_test_macros::timed_test;

/// Counts messages; `alarm` sets an alarm an hour away that resets the count; `close` closes
/// the sender with 4000. A `?role=` query becomes the connection's tag; the `x-name` header
/// its state. `on_before_connect` refuses a request without `token=ok`.
struct Counter {
    room: Room,
    count: u64,
}

impl Party for Counter {
    fn new(room: Room) -> Self {
        Counter { room, count: 0 }
    }

    async fn on_before_connect(req: Request, _lobby: Lobby) -> anyhow::Result<Before> {
        if query_param(req.uri(), "token").as_deref() == Some("ok") {
            Ok(Before::Continue(req))
        } else {
            Ok(Before::Respond(web::text(StatusCode::UNAUTHORIZED, "no token")))
        }
    }

    async fn on_start(&mut self) -> anyhow::Result<()> {
        self.count = self.room.storage().get("count").await?.unwrap_or(0);
        Ok(())
    }

    async fn get_connection_tags(
        &mut self,
        conn: &Connection,
        _ctx: &ConnectionContext,
    ) -> anyhow::Result<Vec<String>> {
        Ok(query_param(&conn.uri().parse()?, "role").into_iter().collect())
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        if let Some(name) = ctx.request.headers().get("x-name") {
            conn.set_state(name.to_str()?)?;
        }
        conn.send(format!("count {}", self.count));
        Ok(())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        match message.as_text() {
            Some("alarm") => self.room.storage().set_alarm(now_ms() + 3_600_000).await?,
            Some("close") => sender.close(4000, "asked to"),
            _ => {
                self.count += 1;
                self.room.storage().put("count", &self.count).await?;
                self.room.broadcast(format!("count {}", self.count));
            }
        }
        Ok(())
    }

    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        self.count = 0;
        self.room.storage().put("count", &self.count).await?;
        self.room.broadcast("reset");
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        Ok(web::text(StatusCode::OK, format!("{} {}", req.method(), self.count)))
    }
}

#[timed_test]
async fn clients_connect_send_receive_and_close() {
    let room = TestRoom::new::<Counter>("counter", "r");
    let mut a = room.connect("a").await;
    assert_eq!(a.recv_text().await, "count 0");
    let mut b =
        room.connect_with(Connect::new("b").query("role=admin").header("x-name", "Bea")).await.expect("accepted");
    assert_eq!(b.tags(), ["b", "admin"], "the id is always the first tag");
    assert_eq!(b.state(), Some(serde_json::json!("Bea")));
    assert_eq!(b.recv_text().await, "count 0");

    a.send("+1").await;
    assert_eq!(a.recv_text().await, "count 1");
    assert_eq!(b.recv_text().await, "count 1");
    b.send("close").await;
    assert_eq!(b.recv_close().await, (4000, "asked to".to_string()));
    a.expect_nothing(Duration::from_millis(100)).await;
    a.close().await;

    let res = room.post("ignored").await;
    assert_eq!(body_text(&res), "POST 1");
    assert_eq!(room.stored::<u64>("count").await, Some(1));
    assert_eq!(room.stored_all().await.len(), 1);
}

#[timed_test]
async fn the_alarm_runs_when_the_test_says_and_a_restart_reads_storage() {
    let mut room = TestRoom::new::<Counter>("counter", "r");
    let mut a = room.connect("a").await;
    assert_eq!(a.recv_text().await, "count 0");
    a.send("+1").await;
    a.send("+1").await;
    a.send("alarm").await;
    assert_eq!(a.recv_text().await, "count 1");
    assert_eq!(a.recv_text().await, "count 2");
    let at = room.alarm().await.expect("an alarm is set");
    assert!(at > now_ms() + 3_000_000, "an hour away");
    assert_eq!(room.run_alarm().await, Some(at));
    assert_eq!(a.recv_text().await, "reset");
    assert_eq!(room.alarm().await, None, "a fired alarm is cleared");
    assert_eq!(room.run_alarm().await, None);

    a.send("+1").await;
    assert_eq!(a.recv_text().await, "count 1");
    room.restart().await;
    assert_eq!(a.recv_event().await, Event::Closed { code: 1001, reason: "the test stopped the room".into() });
    let mut b = room.connect("b").await;
    assert_eq!(b.recv_text().await, "count 1", "on_start read what was stored");
}

#[timed_test]
async fn the_static_hooks_run_like_a_gateway_runs_them() {
    let hooks = Hooks::of::<Counter>("counter");
    let refused = hooks.before_connect("r", request("GET", "/parties/counter/r", "")).await.unwrap();
    match refused {
        Before::Respond(res) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
        Before::Continue(_) => panic!("a request without a token went on"),
    }
    let ok = hooks.before_connect("r", request("GET", "/parties/counter/r?token=ok", "")).await.unwrap();
    assert!(matches!(ok, Before::Continue(_)));
    assert!(hooks.fetch(request("GET", "/", "")).await.is_none());
}
