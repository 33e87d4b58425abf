//! Test helpers: runs example parties in the SDK's room runtime without sockets. A [`Gateway`]
//! is one gateway link into a room, driven with `ToRoom` messages and read as `FromRoom` ones.

use std::sync::Arc;
use std::time::Duration;

use partyline::actor::{spawn_room, LinkSender, RoomConfig, RoomExit, RoomHandle};
use partyline::http;
use partyline::link::{FromRoom, SocketId, ToRoom};
use partyline::{
    async_trait, Bytes, Env, Limits, Lobby, MemoryStore, Message, Parties, PartiesClient, Request, Response, RoomKey,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for one answer from a room before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A `PartiesClient` for rooms that must not call other rooms.
struct NoParties;

#[async_trait]
impl PartiesClient for NoParties {
    async fn fetch(&self, room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        anyhow::bail!("tests have no other rooms (asked for {room})")
    }

    fn has_party(&self, _party: &str) -> bool {
        false
    }
}

/// Other rooms, for tests: every call fails.
pub(crate) fn parties() -> Parties {
    Parties::new(Arc::new(NoParties))
}

/// What the static hooks of party `party` see for room `room`.
pub(crate) fn lobby(party: &str, room: Option<&str>) -> Lobby {
    Lobby { id: room.map(str::to_string), party: party.to_string(), env: Env::default(), parties: parties() }
}

/// Starts room `room` of example party `party` on `store`, with `limits`.
pub(crate) fn spawn(
    party: &str,
    room: &str,
    store: &Arc<MemoryStore>,
    limits: Limits,
) -> (RoomHandle, JoinHandle<RoomExit>) {
    let factory = crate::registry().get(party).expect("an example party").clone();
    spawn_room(RoomConfig {
        key: RoomKey::new(party, room),
        factory,
        store: store.clone(),
        fence: None,
        limits: Arc::new(limits),
        env: Env::default(),
        parties: parties(),
        may_exit: Box::new(|| false),
        observer: None,
        on_exit: None,
    })
}

/// Starts room `room` of `party` on a fresh store with default limits.
pub(crate) fn spawn_fresh(party: &str, room: &str) -> RoomHandle {
    spawn(party, room, &Arc::new(MemoryStore::new()), Limits::default()).0
}

/// A request with `method`, `uri` and `body`.
pub(crate) fn request(method: &str, uri: &str, body: impl Into<Bytes>) -> Request {
    http::Request::builder().method(method).uri(uri).body(body.into()).expect("a valid request")
}

/// A response's body as text.
pub(crate) fn body_text(res: &Response) -> &str {
    std::str::from_utf8(res.body()).expect("a UTF-8 body")
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

/// The frame `msg` delivers to socket `sid`, if any.
pub(crate) fn frame_for(msg: &FromRoom, sid: SocketId) -> Option<&Message> {
    match msg {
        FromRoom::Send { sid: s, msg } if *s == sid => Some(msg),
        FromRoom::Broadcast { msg, except } if !except.contains(&sid) => Some(msg),
        _ => None,
    }
}

/// One gateway link into a room: it sends socket events and reads what the room answers.
pub(crate) struct Gateway {
    link: LinkSender,
    rx: mpsc::Receiver<FromRoom>,
}

/// What the room answered to a connect: everything up to the verdict.
pub(crate) struct Connected {
    /// Messages before the verdict (`Joined`, frames sent in `on_connect`, `State`).
    pub(crate) before: Vec<FromRoom>,
    /// `Accepted`, `Refused` or `Failed`.
    pub(crate) verdict: FromRoom,
}

impl Connected {
    /// The tags, or a panic when the connection was not accepted.
    pub(crate) fn tags(&self) -> &[String] {
        match &self.verdict {
            FromRoom::Accepted { tags, .. } => tags,
            other => panic!("connection not accepted: {other:?}"),
        }
    }

    /// The frames sent to `sid` while it connected.
    pub(crate) fn frames(&self, sid: SocketId) -> Vec<Message> {
        self.before.iter().filter_map(|m| frame_for(m, sid)).cloned().collect()
    }
}

impl Gateway {
    /// Opens a link into `room`.
    pub(crate) async fn open(room: &RoomHandle) -> Gateway {
        let (tx, rx) = mpsc::channel(1024);
        let link = room.open_link(tx).await.expect("the room is running");
        Gateway { link, rx }
    }

    /// The next message from the room; panics after [`WAIT`] or when the link closed.
    pub(crate) async fn next(&mut self) -> FromRoom {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("the room closed the link"),
            Err(_) => panic!("no message from the room within {WAIT:?}"),
        }
    }

    /// Connects socket `sid` with connection id `id`, `request` being the upgrade request as the
    /// static hook left it.
    pub(crate) async fn connect_with(&mut self, sid: SocketId, id: &str, request: Request) -> Connected {
        let uri = format!("http://localhost{}", request.uri());
        self.link
            .send(ToRoom::Connect { sid, id: id.to_string(), uri, request: Box::new(request) })
            .await
            .expect("the room is running");
        let mut before = Vec::new();
        loop {
            let msg = self.next().await;
            match msg {
                FromRoom::Accepted { sid: s, .. }
                | FromRoom::Refused { sid: s, .. }
                | FromRoom::Failed { sid: s, .. }
                    if s == sid =>
                {
                    return Connected { before, verdict: msg };
                }
                other => before.push(other),
            }
        }
    }

    /// Connects socket `sid` with connection id `id` to `path_and_query` (e.g.
    /// `/parties/main/r?_pk=a`).
    pub(crate) async fn connect(&mut self, sid: SocketId, id: &str, path_and_query: &str) -> Connected {
        self.connect_with(sid, id, request("GET", path_and_query, Bytes::new())).await
    }

    /// Sends a frame from socket `sid`.
    pub(crate) async fn send(&self, sid: SocketId, msg: impl Into<Message>) {
        self.link.send(ToRoom::Message { sid, msg: msg.into() }).await.expect("the room is running");
    }

    /// Tells the room socket `sid` closed.
    pub(crate) async fn close(&self, sid: SocketId) {
        self.link.send(ToRoom::Closed { sid, error: None }).await.expect("the room is running");
    }

    /// The next frame for socket `sid`, skipping `State` messages; panics on anything else.
    pub(crate) async fn frame(&mut self, sid: SocketId) -> Message {
        loop {
            let msg = self.next().await;
            if let FromRoom::State { .. } = msg {
                continue;
            }
            return frame_for(&msg, sid).cloned().unwrap_or_else(|| panic!("expected a frame for {sid}, got {msg:?}"));
        }
    }

    /// The next message, which must be a `State` update for `sid`: its JSON.
    pub(crate) async fn state(&mut self, sid: SocketId) -> serde_json::Value {
        match self.next().await {
            FromRoom::State { sid: s, state: Some(bytes) } if s == sid => {
                serde_json::from_slice(&bytes).expect("state is JSON")
            }
            other => panic!("expected a state update for {sid}, got {other:?}"),
        }
    }
}
