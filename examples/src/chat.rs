//! The `main` party: the chat room from PartyKit's `Party.Server` announcement, plus the page
//! that talks to it.
//!
//! Frames and requests:
//! - On connect the room sends one text frame: the history, a JSON array of strings, oldest
//!   first (`[]` when empty).
//! - A text frame from a client is a chat message: it is appended to the history, stored, and
//!   broadcast unchanged (as a text frame) to every connection, the sender included. Binary
//!   frames are ignored.
//! - `GET /parties/main/<room>` answers the history as `application/json`.
//! - `POST /parties/main/<room>` with a JSON string body (`"hello"`) appends, stores and
//!   broadcasts it like a frame, and answers 200 `OK`; any other body answers 400. Other methods
//!   answer 405 `Method not allowed`.
//! - `GET /` (the static `on_fetch`) serves the chat page, [`PAGE`]; `GET /text` and `GET
//!   /text.js` serve the collaborative text page of the `yjs` party ([`partyline_yjs::web`]).
//!
//! **Bounded history.** The history is stored as one value under the key `messages`, and a
//! value may not exceed the storage limit (`room.limits().max_value_bytes`, 128 KiB by
//! default). When appending a message would make the encoded JSON array larger than that, the
//! oldest messages are dropped until it fits. A message whose own encoding does not fit even in
//! an otherwise empty history is broadcast but not kept (the history stays as it was).

use std::collections::VecDeque;

use partyline::prelude::*;
use serde::Serialize;

/// The party's name.
pub const NAME: &str = "main";

/// The storage key of the history.
pub const HISTORY_KEY: &str = "messages";

/// The chat page served at `/`: plain HTML and JS, no external resources.
pub const PAGE: &str = include_str!("page.html");

/// The chat room.
pub struct Chat {
    room: Room,
    history: History,
}

impl Party for Chat {
    fn new(room: Room) -> Self {
        let max = room.limits().max_value_bytes;
        Chat { room, history: History::new(max) }
    }

    async fn on_fetch(req: Request, _lobby: Lobby) -> Option<Response> {
        if req.method() == Method::GET && req.uri().path() == "/" {
            Some(web::with_type(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(PAGE.as_bytes())))
        } else {
            partyline_yjs::web::serve(&req)
        }
    }

    async fn on_start(&mut self) -> anyhow::Result<()> {
        let stored: Vec<String> = self.room.storage().get(HISTORY_KEY).await?.unwrap_or_default();
        let dropped = self.history.load(stored);
        if dropped > 0 {
            tracing::info!(room = %self.room.key(), dropped, "stored chat history exceeds the value limit; oldest dropped");
        }
        Ok(())
    }

    async fn on_connect(&mut self, conn: &Connection, _ctx: &ConnectionContext) -> anyhow::Result<()> {
        conn.send(serde_json::to_string(&self.history)?);
        Ok(())
    }

    async fn on_message(&mut self, message: Message, _sender: &Connection) -> anyhow::Result<()> {
        if let Message::Text(text) = message {
            self.add(text).await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        match *req.method() {
            Method::GET => Ok(web::json(StatusCode::OK, &self.history)),
            Method::POST => match serde_json::from_slice::<String>(req.body()) {
                Ok(text) => {
                    self.add(Text::from(text)).await?;
                    Ok(web::text(StatusCode::OK, "OK"))
                }
                Err(_) => Ok(web::text(
                    StatusCode::BAD_REQUEST,
                    "The body must be a JSON string: the message to post, e.g. \"hello\"",
                )),
            },
            _ => Ok(web::text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")),
        }
    }
}

impl Chat {
    /// Appends `text` to the history, stores the history, and broadcasts `text` to everyone.
    async fn add(&mut self, text: Text) -> anyhow::Result<()> {
        if self.history.push(text.to_string()) {
            self.room.storage().put(HISTORY_KEY, &self.history).await?;
        } else {
            tracing::debug!(room = %self.room.key(), len = text.len(), "chat message too large to keep in the history");
        }
        self.room.broadcast(text);
        Ok(())
    }
}

/// The chat history, oldest first, whose encoding as a JSON array never exceeds `max` bytes.
#[derive(Debug, Default)]
struct History {
    messages: VecDeque<String>,
    /// Encoded length of each message (a JSON string), in the same order.
    lens: VecDeque<usize>,
    /// Encoded length of the whole array.
    encoded: usize,
    max: usize,
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.messages.serialize(serializer)
    }
}

impl History {
    /// An empty history bounded by `max` encoded bytes.
    fn new(max: usize) -> Self {
        History { encoded: 2, max, ..Default::default() }
    }

    /// Replaces the history with `messages`, dropping the oldest that do not fit; returns how
    /// many were dropped.
    fn load(&mut self, messages: Vec<String>) -> usize {
        let n = messages.len();
        *self = History::new(self.max);
        for m in messages {
            self.push(m);
        }
        n - self.messages.len()
    }

    /// Appends `msg`, dropping the oldest messages until the encoding fits. Returns false (and
    /// changes nothing) when `msg` alone does not fit.
    fn push(&mut self, msg: String) -> bool {
        let len = json_len(&msg);
        if 2 + len > self.max {
            return false;
        }
        self.encoded += len + usize::from(!self.messages.is_empty());
        self.messages.push_back(msg);
        self.lens.push_back(len);
        while self.encoded > self.max {
            self.messages.pop_front();
            let dropped = self.lens.pop_front().expect("lens follows messages");
            // The message and the comma after it.
            self.encoded -= dropped + 1;
        }
        true
    }

    /// Length of the history encoded as a JSON array.
    #[cfg(test)]
    fn encoded_len(&self) -> usize {
        self.encoded
    }
}

/// The length of `s` encoded as a JSON string, without building it.
fn json_len(s: &str) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a string to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, s);
    count.0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use partyline::runtime::link::FromRoom;
    use partyline::{Limits, MemoryStore, PartyFactory};

    use super::*;
    use crate::testkit::{self, body_text, content_type, json, request, Gateway};

    fn history(max: usize) -> History {
        History::new(max)
    }

    #[test]
    fn history_encoding_is_tracked_exactly() {
        let mut h = history(1 << 20);
        assert_eq!(h.encoded_len(), serde_json::to_vec(&h).unwrap().len());
        for m in ["a", "", "quote \" and \\ backslash", "\n\t\u{1}", "émoji 🎉", "\u{7f}"] {
            assert!(h.push(m.to_string()));
            assert_eq!(h.encoded_len(), serde_json::to_vec(&h).unwrap().len(), "after {m:?}");
        }
    }

    #[test]
    fn history_drops_the_oldest_to_stay_under_the_limit() {
        // ["aaaa","bbbb"] is 15 bytes; a third message of 6 encoded bytes makes 22.
        let mut h = history(15);
        assert!(h.push("aaaa".into()));
        assert!(h.push("bbbb".into()));
        assert_eq!(h.encoded_len(), 15);
        assert!(h.push("cccc".into()));
        assert_eq!(h.messages, ["bbbb", "cccc"]);
        assert_eq!(h.encoded_len(), serde_json::to_vec(&h).unwrap().len());
        assert!(h.encoded_len() <= 15);
    }

    #[test]
    fn history_refuses_a_message_that_can_never_fit() {
        let mut h = history(10);
        assert!(h.push("ok".into()));
        assert!(!h.push("x".repeat(9)));
        assert_eq!(h.messages, ["ok"]);
        // Exactly at the limit fits: `["xxxxxx"]` is 10 bytes.
        assert!(h.push("x".repeat(6)));
        assert_eq!(h.messages, ["xxxxxx"]);
        assert_eq!(h.encoded_len(), 10);
    }

    #[test]
    fn history_load_trims_an_oversized_stored_list() {
        let mut h = history(15);
        assert_eq!(h.load(vec!["1111".into(), "2222".into(), "3333".into()]), 1);
        assert_eq!(h.messages, ["2222", "3333"]);
    }

    #[tokio::test]
    async fn history_on_connect_after_messages() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        let joined = a.connect(1, "a", "/parties/main/r?_pk=a").await;
        assert_eq!(joined.tags(), ["a"]);
        assert_eq!(joined.frames(1), [Message::from("[]")]);
        a.send(1, "hello").await;
        assert_eq!(a.frame(1).await, Message::from("hello"));
        a.send(1, "world").await;
        assert_eq!(a.frame(1).await, Message::from("world"));

        let mut b = Gateway::open(&room).await;
        let joined = b.connect(7, "b", "/parties/main/r?_pk=b").await;
        let frames = joined.frames(7);
        assert_eq!(frames.len(), 1, "one history frame: {frames:?}");
        assert_eq!(json(&frames[0]), serde_json::json!(["hello", "world"]));
    }

    #[tokio::test]
    async fn broadcast_includes_the_sender_and_ignores_binary() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        let mut b = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/main/r?_pk=a").await.tags();
        b.connect(1, "b", "/parties/main/r?_pk=b").await.tags();
        a.send(1, b"binary is ignored".to_vec()).await;
        a.send(1, "hi from a").await;
        // The sender gets its own message as a broadcast without exceptions.
        match a.next().await {
            FromRoom::Broadcast { msg, except } => {
                assert_eq!(msg, Message::from("hi from a"));
                assert!(except.is_empty());
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
        assert_eq!(b.frame(1).await, Message::from("hi from a"));
        let res = room.request(request("GET", "/parties/main/r", Bytes::new())).await.unwrap();
        assert_eq!(body_text(&res), r#"["hi from a"]"#);
    }

    #[tokio::test]
    async fn http_get_post_and_errors() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/main/r?_pk=a").await.tags();

        let res = room.request(request("GET", "/parties/main/r", Bytes::new())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(content_type(&res), "application/json");
        assert_eq!(body_text(&res), "[]");

        let res = room.request(request("POST", "/parties/main/r", r#""hello \"http\"""#)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(content_type(&res), web::TEXT_PLAIN);
        assert_eq!(body_text(&res), "OK");
        assert_eq!(a.frame(1).await, Message::from(r#"hello "http""#));

        for bad in ["hello", "", "42", r#"["a"]"#, r#"{"text":"a"}"#] {
            let res = room.request(request("POST", "/parties/main/r", bad)).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "body {bad:?}");
            assert!(body_text(&res).contains("JSON string"), "{}", body_text(&res));
        }
        for method in ["PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"] {
            let res = room.request(request(method, "/parties/main/r", Bytes::new())).await.unwrap();
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(body_text(&res), "Method not allowed");
        }

        let res = room.request(request("GET", "/parties/main/r", Bytes::new())).await.unwrap();
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!(["hello \"http\""]));
    }

    #[tokio::test]
    async fn history_survives_a_room_restart() {
        let store = Arc::new(MemoryStore::new());
        let (room, task) = testkit::spawn(NAME, "r", &store, Limits::default());
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/main/r?_pk=a").await.tags();
        a.send(1, "one").await;
        a.send(1, "two").await;
        // The output gate releases a broadcast only once the write before it is durable.
        assert_eq!(a.frame(1).await, Message::from("one"));
        assert_eq!(a.frame(1).await, Message::from("two"));
        room.shutdown(1012, "restart").await.unwrap();
        assert_eq!(
            tokio::time::timeout(testkit::WAIT, task).await.unwrap().unwrap(),
            partyline::runtime::handle::RoomExit::Shutdown
        );

        let (room, _task) = testkit::spawn(NAME, "r", &store, Limits::default());
        let mut b = Gateway::open(&room).await;
        let joined = b.connect(1, "b", "/parties/main/r?_pk=b").await;
        assert_eq!(json(&joined.frames(1)[0]), serde_json::json!(["one", "two"]));

        // Another room on the same store has its own history.
        let (other, _task) = testkit::spawn(NAME, "other", &store, Limits::default());
        let res = other.request(request("GET", "/parties/main/other", Bytes::new())).await.unwrap();
        assert_eq!(body_text(&res), "[]");
    }

    #[tokio::test]
    async fn stored_history_stays_under_the_value_limit() {
        let store = Arc::new(MemoryStore::new());
        let limits = Limits { max_value_bytes: 64, ..Limits::default() };
        let (room, _task) = testkit::spawn(NAME, "r", &store, limits);
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/main/r?_pk=a").await.tags();
        for i in 0..20 {
            let msg = format!("message number {i}");
            a.send(1, msg.as_str()).await;
            assert_eq!(a.frame(1).await, Message::from(msg));
        }
        // Too large to keep, still delivered.
        let huge = "h".repeat(100);
        a.send(1, huge.as_str()).await;
        assert_eq!(a.frame(1).await, Message::from(huge));

        let res = room.request(request("GET", "/parties/main/r", Bytes::new())).await.unwrap();
        assert!(res.body().len() <= 64, "{}", body_text(&res));
        assert_eq!(
            json(&Message::from(body_text(&res))),
            serde_json::json!(["message number 17", "message number 18", "message number 19"])
        );
        let stored = partyline::Store::get(&*store, &partyline::RoomKey::new(NAME, "r"), &[HISTORY_KEY.to_string()])
            .await
            .unwrap();
        assert_eq!(stored[0].as_deref(), Some(res.body().as_ref()));
    }

    #[tokio::test]
    async fn on_fetch_serves_the_page_at_root_only() {
        let reg = crate::registry();
        let factory: Arc<dyn PartyFactory> = reg.get(NAME).unwrap();
        let res = factory.on_fetch(request("GET", "/", Bytes::new()), testkit::lobby(NAME, None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(content_type(&res), "text/html; charset=utf-8");
        assert_eq!(body_text(&res), PAGE);
        assert!(factory.on_fetch(request("GET", "/nope", Bytes::new()), testkit::lobby(NAME, None)).await.is_none());
        let text = factory.on_fetch(request("GET", "/text", Bytes::new()), testkit::lobby(NAME, None)).await.unwrap();
        assert_eq!(body_text(&text), partyline_yjs::web::TEXT_PAGE);
        assert!(factory.on_fetch(request("POST", "/", Bytes::new()), testkit::lobby(NAME, None)).await.is_none());
    }

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"), "no external URLs");
        assert!(!PAGE.contains("innerHTML"), "message text must go through textContent");
        assert!(PAGE.contains("/parties/main/"));
    }
}
