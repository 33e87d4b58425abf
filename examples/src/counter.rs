//! The `counter` party: a stored counter in a room that hibernates, showing connection tags,
//! connection state that survives hibernation, and the room alarm.
//!
//! Storage: `count` (integer, the counter) and `alarms_fired` (integer, how many times
//! `on_alarm` ran). Connection state: `{"messages": <frames this connection sent>}`, 0 on
//! connect, incremented for every frame (text or binary) before it is handled. Tags: the id,
//! then `role:<r>` when the connection URL has a non-empty `?role=<r>`.
//!
//! Frames (all JSON text):
//! - on connect, to the new connection: `{"count": n}`.
//! - `inc` from a client: increments and stores the counter, then broadcasts `{"count": n,
//!   "inst": <instance>}` to every connection, the sender included. `inst` names this instance
//!   of the room (a new one every time it starts, also on waking from hibernation), so that a
//!   test can tell which instance committed a count (the chaos run's "ran twice" check).
//! - `alarm <ms>` (ms a non-negative integer): sets the room alarm to now + ms and answers the
//!   sender `{"alarm_at": <ms since the Unix epoch>}`. When it fires, `on_alarm` increments
//!   `alarms_fired` and broadcasts `{"alarm": true, "count": n}`.
//! - `slow <ms>` (ms a non-negative integer, at most 20000): a busy handler: sleeps ms, then
//!   answers the sender `{"slow": ms, "count": n, "inst": <instance>}` (the chaos run SIGTERMs
//!   a node while one runs).
//! - any other text: answers the sender `{"count": n, "mine": <its state's messages>, "id":
//!   <conn id>, "tags": [...], "started": <on_start runs in this process>}`.
//! - binary frames: counted in the state, otherwise ignored.
//!
//! HTTP: `GET` answers `{"count": n, "alarms_fired": n}`; `POST` increments, broadcasts `{"count": n,
//! "inst": <instance>}` and answers `{"count": n}`; other methods answer 405.
//!
//! `started` counts `on_start` runs across all counter rooms of the process ([`starts`]): a
//! room that hibernated and woke up again ran it once more, while its connections kept their
//! ids, tags and state.

use std::sync::atomic::{AtomicU64, Ordering};

use partyline::prelude::*;
use partyline::storage::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The party's name.
pub const NAME: &str = "counter";

/// The storage key of the counter.
pub const COUNT_KEY: &str = "count";

/// The storage key of the number of alarms that fired.
pub const ALARMS_KEY: &str = "alarms_fired";

static STARTS: AtomicU64 = AtomicU64::new(0);

/// How many times `on_start` of a counter room has run in this process.
pub fn starts() -> u64 {
    STARTS.load(Ordering::Relaxed)
}

/// The longest `slow` handler, in milliseconds.
pub const MAX_SLOW_MS: u64 = 20_000;

/// `<pid>-<ms since the Unix epoch when the first room started>` in hex: with the start count,
/// an instance id unique across the processes of a cluster.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| format!("{:x}-{:x}", std::process::id(), now_ms()))
}

/// The counter room.
pub struct Counter {
    room: Room,
    count: i64,
    /// This instance's id (`<process tag>-<start count>`), set by `on_start`.
    inst: String,
}

/// A connection's state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ConnState {
    /// Frames this connection sent.
    messages: u64,
}

impl Party for Counter {
    fn new(room: Room) -> Self {
        Counter { room, count: 0, inst: String::new() }
    }

    fn options() -> PartyOptions {
        PartyOptions { hibernate: true }
    }

    async fn on_start(&mut self) -> anyhow::Result<()> {
        let n = STARTS.fetch_add(1, Ordering::Relaxed) + 1;
        self.inst = format!("{}-{n}", process_tag());
        self.count = self.room.storage().get(COUNT_KEY).await?.unwrap_or(0);
        Ok(())
    }

    async fn get_connection_tags(
        &mut self,
        _conn: &Connection,
        ctx: &ConnectionContext,
    ) -> anyhow::Result<Vec<String>> {
        let role = web::query_param(ctx.request.uri(), "role").filter(|r| !r.is_empty());
        Ok(role.map(|r| format!("role:{r}")).into_iter().collect())
    }

    async fn on_connect(&mut self, conn: &Connection, _ctx: &ConnectionContext) -> anyhow::Result<()> {
        conn.set_state(&ConnState::default())?;
        conn.send(json!({ "count": self.count }).to_string());
        Ok(())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        let mut state: ConnState = sender.state().unwrap_or_default();
        state.messages += 1;
        sender.set_state(&state)?;
        let Message::Text(text) = message else { return Ok(()) };
        if text.as_str() == "inc" {
            self.increment().await?;
        } else if let Some(ms) = text.strip_prefix("alarm ").and_then(|ms| ms.parse::<u64>().ok()) {
            let at = now_ms().saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
            self.room.storage().set_alarm(at).await?;
            sender.send(json!({ "alarm_at": at }).to_string());
        } else if let Some(ms) = text.strip_prefix("slow ").and_then(|ms| ms.parse::<u64>().ok()) {
            let ms = ms.min(MAX_SLOW_MS);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            sender.send(json!({ "slow": ms, "count": self.count, "inst": self.inst }).to_string());
        } else {
            let reply = json!({
                "count": self.count,
                "mine": state.messages,
                "id": sender.id(),
                "tags": sender.tags(),
                "started": starts(),
            });
            sender.send(reply.to_string());
        }
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        match *req.method() {
            Method::GET => {
                let fired: u64 = self.room.storage().get(ALARMS_KEY).await?.unwrap_or(0);
                Ok(web::json(StatusCode::OK, &json!({ "count": self.count, "alarms_fired": fired })))
            }
            Method::POST => {
                self.increment().await?;
                Ok(web::json(StatusCode::OK, &json!({ "count": self.count })))
            }
            _ => Ok(web::text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")),
        }
    }

    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        let fired: u64 = self.room.storage().get(ALARMS_KEY).await?.unwrap_or(0);
        self.room.storage().put(ALARMS_KEY, &(fired + 1)).await?;
        self.room.broadcast(json!({ "alarm": true, "count": self.count }).to_string());
        Ok(())
    }
}

impl Counter {
    /// Increments and stores the counter, and broadcasts it.
    async fn increment(&mut self) -> anyhow::Result<()> {
        let next = self.count + 1;
        self.room.storage().put(COUNT_KEY, &next).await?;
        self.count = next;
        self.room.broadcast(json!({ "count": next, "inst": self.inst }).to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use partyline::{Limits, MemoryStore, RoomKey, Store};
    use serde_json::Value;

    use super::*;
    use crate::testkit::{self, body_text, json, request, Gateway};

    /// Serializes the tests that start counter rooms, so each can count `on_start` runs exactly.
    static STARTS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn stored(store: &MemoryStore, room: &str, key: &str) -> Option<Value> {
        let values = store.get(&RoomKey::new(NAME, room), &[key.to_string()]).await.unwrap();
        values[0].as_ref().map(|b| serde_json::from_slice(b).unwrap())
    }

    #[tokio::test]
    async fn tags_state_and_counting() {
        let _serial = STARTS_LOCK.lock().await;
        let store = Arc::new(MemoryStore::new());
        let (room, _task) = testkit::spawn(NAME, "r", &store, Limits::default());
        let mut a = Gateway::open(&room).await;
        let mut b = Gateway::open(&room).await;

        let joined = a.connect(1, "a", "/parties/counter/r?_pk=a&role=admin").await;
        assert_eq!(joined.tags(), ["a", "role:admin"]);
        assert_eq!(joined.frames(1).iter().map(json).collect::<Vec<_>>(), [serde_json::json!({"count": 0})]);
        let joined = b.connect(2, "b", "/parties/counter/r?_pk=b&role=").await;
        assert_eq!(joined.tags(), ["b"]);

        a.send(1, "inc").await;
        assert_eq!(a.state(1).await, serde_json::json!({"messages": 1}));
        let first = json(&a.frame(1).await);
        assert_eq!(first["count"], 1);
        let inst = first["inst"].as_str().expect("a broadcast names its instance").to_string();
        assert_eq!(json(&b.frame(2).await), serde_json::json!({"count": 1, "inst": inst}));
        assert_eq!(stored(&store, "r", COUNT_KEY).await, Some(serde_json::json!(1)));

        a.send(1, b"binary counts too".to_vec()).await;
        a.send(1, "hello").await;
        let started = starts();
        let reply = json(&a.frame(1).await);
        assert_eq!(
            reply,
            serde_json::json!({"count": 1, "mine": 3, "id": "a", "tags": ["a", "role:admin"], "started": started})
        );
        b.send(2, "hello").await;
        let reply = json(&b.frame(2).await);
        assert_eq!(reply["mine"], 1);
        assert_eq!(reply["tags"], serde_json::json!(["b"]));

        let res = room.request(request("POST", "/parties/counter/r", Bytes::new())).await.unwrap();
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!({"count": 2}));
        assert_eq!(json(&a.frame(1).await), serde_json::json!({"count": 2, "inst": inst}));
        assert_eq!(json(&b.frame(2).await), serde_json::json!({"count": 2, "inst": inst}));
        let res = room.request(request("GET", "/parties/counter/r", Bytes::new())).await.unwrap();
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!({"alarms_fired": 0, "count": 2}));
        let res = room.request(request("DELETE", "/parties/counter/r", Bytes::new())).await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test(start_paused = true)]
    async fn hibernation_reruns_on_start_and_keeps_connections() {
        let _serial = STARTS_LOCK.lock().await;
        let store = Arc::new(MemoryStore::new());
        let limits = Limits { hibernate_idle: Duration::from_millis(100), ..Limits::default() };
        let (room, _task) = testkit::spawn(NAME, "h", &store, limits);
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/counter/h?_pk=a&role=viewer").await.tags();
        a.send(1, "inc").await;
        let first = json(&a.frame(1).await);
        assert_eq!(first["count"], 1);
        a.send(1, "hello").await;
        let before = json(&a.frame(1).await);
        assert_eq!(before["mine"], 2);

        // Idle past `hibernate_idle`: the party value is dropped, the connection stays.
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.send(1, "hello").await;
        let after = json(&a.frame(1).await);
        assert_eq!(after["started"].as_u64().unwrap(), before["started"].as_u64().unwrap() + 1, "on_start ran again");
        assert_eq!(after["count"], 1, "the counter was reloaded from storage");
        assert_eq!(after["mine"], 3, "the state survived");
        assert_eq!(after["id"], "a");
        assert_eq!(after["tags"], serde_json::json!(["a", "role:viewer"]));
        a.send(1, "inc").await;
        let woken = json(&a.frame(1).await);
        assert_eq!(woken["count"], 2);
        assert_ne!(woken["inst"], first["inst"], "a room that woke up is another instance");
        let res = room.request(request("GET", "/", Bytes::new())).await.unwrap();
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!({"alarms_fired": 0, "count": 2}));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_after_sleeping() {
        let _serial = STARTS_LOCK.lock().await;
        let store = Arc::new(MemoryStore::new());
        let (room, _task) = testkit::spawn(NAME, "s", &store, Limits::default());
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/counter/s?_pk=a").await.tags();
        let t = tokio::time::Instant::now();
        a.send(1, "slow 400").await;
        let reply = json(&a.frame(1).await);
        assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
        assert_eq!(reply["slow"], 400);
        assert_eq!(reply["count"], 0);
        assert!(reply["inst"].is_string(), "{reply}");
    }

    #[tokio::test]
    async fn alarm_broadcasts_and_counts() {
        let _serial = STARTS_LOCK.lock().await;
        let store = Arc::new(MemoryStore::new());
        let (room, _task) = testkit::spawn(NAME, "al", &store, Limits::default());
        let mut a = Gateway::open(&room).await;
        let mut b = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/counter/al?_pk=a").await.tags();
        b.connect(2, "b", "/parties/counter/al?_pk=b").await.tags();
        let before = now_ms();
        a.send(1, "alarm 50").await;
        let at = json(&a.frame(1).await)["alarm_at"].as_i64().unwrap();
        assert!(at >= before + 50, "{at} vs {before}");
        assert_eq!(json(&a.frame(1).await), serde_json::json!({"alarm": true, "count": 0}));
        assert_eq!(json(&b.frame(2).await), serde_json::json!({"alarm": true, "count": 0}));
        assert!(now_ms() >= at);
        assert_eq!(stored(&store, "al", ALARMS_KEY).await, Some(serde_json::json!(1)));

        a.send(1, "alarm 0").await;
        json(&a.frame(1).await);
        assert_eq!(json(&a.frame(1).await), serde_json::json!({"alarm": true, "count": 0}));
        assert_eq!(stored(&store, "al", ALARMS_KEY).await, Some(serde_json::json!(2)));
        assert_eq!(store.get_alarm(&RoomKey::new(NAME, "al")).await.unwrap(), None, "a fired alarm is cleared");

        // Not a number: an ordinary message.
        a.send(1, "alarm soon").await;
        assert_eq!(json(&a.frame(1).await)["mine"], 3);
    }

    #[tokio::test]
    async fn alarm_fires_in_a_hibernated_room_when_the_host_delivers_it() {
        let _serial = STARTS_LOCK.lock().await;
        let store = Arc::new(MemoryStore::new());
        let limits = Limits { hibernate_idle: Duration::from_millis(20), ..Limits::default() };
        let (room, _task) = testkit::spawn(NAME, "ha", &store, limits);
        let mut a = Gateway::open(&room).await;
        a.connect(1, "a", "/parties/counter/ha?_pk=a").await.tags();
        a.send(1, "alarm 200").await;
        let at = json(&a.frame(1).await)["alarm_at"].as_i64().unwrap();
        while now_ms() <= at {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The room hibernated before the alarm was due: a hibernated room keeps no alarm timer,
        // the host's alarm scheduler wakes it (as `RoomHandle::alarm` does here).
        room.alarm().await.unwrap();
        assert_eq!(json(&a.frame(1).await), serde_json::json!({"alarm": true, "count": 0}));
        assert_eq!(stored(&store, "ha", ALARMS_KEY).await, Some(serde_json::json!(1)));
    }
}
