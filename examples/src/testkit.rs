//! Glue between the example parties' tests and the SDK's test kit (`partyline::testing`):
//! rooms of the example registry, and two response helpers.

use std::sync::Arc;

use partyline::runtime::handle::{RoomExit, RoomHandle};
pub(crate) use partyline::testing::{body_text, request, Link as Gateway, WAIT};
use partyline::testing::{Hooks, TestRoom};
use partyline::{http, Limits, Lobby, MemoryStore, Message, Response};
use tokio::task::JoinHandle;

/// What the static hooks of example party `party` see for room `room`.
pub(crate) fn lobby(party: &str, room: Option<&str>) -> Lobby {
    Hooks::with_factory(party, factory(party)).lobby(room)
}

fn factory(party: &str) -> Arc<dyn partyline::PartyFactory> {
    crate::registry().get(party).expect("an example party").clone()
}

/// Starts room `room` of example party `party` on `store`, with `limits`.
pub(crate) fn spawn(
    party: &str,
    room: &str,
    store: &Arc<MemoryStore>,
    limits: Limits,
) -> (RoomHandle, JoinHandle<RoomExit>) {
    let mut room = TestRoom::with_factory(party, room, factory(party)).store(store.clone()).limits(limits).start();
    (room.handle().clone(), room.take_task())
}

/// Starts room `room` of `party` on a fresh store with default limits.
pub(crate) fn spawn_fresh(party: &str, room: &str) -> RoomHandle {
    spawn(party, room, &Arc::new(MemoryStore::new()), Limits::default()).0
}

/// A response's `content-type`.
pub(crate) fn content_type(res: &Response) -> &str {
    res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A text frame's content, parsed as JSON.
pub(crate) fn json(msg: &Message) -> serde_json::Value {
    let text = msg.as_text().unwrap_or_else(|| panic!("expected a text frame, got {msg:?}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("expected JSON, got {text:?}: {e}"))
}
