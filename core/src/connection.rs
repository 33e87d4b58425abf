//! A client connection as party code sees it: id, URL, tags, state, and a way to send and
//! close. The socket itself lives in a gateway; a `Connection` addresses it through the room.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::message::Message;
use crate::room::{LinkId, RoomShared};
use crate::runtime::link::{close_code, FromRoom, SocketId};
use crate::sync::Lock;

/// Identifies one socket in a room: the gateway link it came over and its number there.
pub(crate) type ConnKey = (LinkId, SocketId);

/// Why `set_state` failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The encoded state is larger than the limit.
    #[error("connection state is {len} bytes encoded, the limit is {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value could not be encoded as JSON.
    #[error("connection state could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A frame larger than the outbound limit (`Limits::max_outbound_message_bytes`): nothing was
/// sent.
#[derive(Debug, thiserror::Error)]
#[error("outbound message is too large: {len} > {max}")]
pub struct TooLarge {
    /// The frame's length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

pub(crate) struct ConnShared {
    pub(crate) key: ConnKey,
    pub(crate) id: String,
    pub(crate) uri: String,
    pub(crate) tags: Mutex<Vec<String>>,
    pub(crate) state: Mutex<Option<Bytes>>,
    pub(crate) open: AtomicBool,
    /// Join order, so iteration follows it as PartyKit's does.
    pub(crate) order: u64,
}

/// One client connection in a room. Cheap to clone; clones address the same socket.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) room: Arc<RoomShared>,
}

impl Connection {
    /// The connection id: the client's `?_pk=` value, or one generated when it sent none.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The full URL the client connected with, query included.
    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// The connection's tags; the id is always the first.
    pub fn tags(&self) -> Vec<String> {
        self.shared.tags.locked().clone()
    }

    /// Whether the socket is still open (as far as the room knows).
    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// The connection's state decoded from JSON; `None` when unset (or not of this type).
    pub fn state<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.shared.state.locked().clone()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The connection's state as stored (JSON bytes).
    pub fn state_bytes(&self) -> Option<Bytes> {
        self.shared.state.locked().clone()
    }

    /// Replaces the connection's state. It lives as long as the socket, survives hibernation,
    /// and is limited in size (16 KiB encoded by default).
    pub fn set_state<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), StateError> {
        let bytes = Bytes::from(serde_json::to_vec(value)?);
        let max = self.room.limits.max_state_bytes;
        if bytes.len() > max {
            return Err(StateError::TooLarge { len: bytes.len(), max });
        }
        *self.shared.state.locked() = Some(bytes.clone());
        if self.is_open() {
            self.emit(FromRoom::State { sid: self.shared.key.1, state: Some(bytes) });
        }
        Ok(())
    }

    /// Clears the connection's state.
    pub fn clear_state(&self) {
        *self.shared.state.locked() = None;
        self.emit(FromRoom::State { sid: self.shared.key.1, state: None });
    }

    /// Sends a frame to this connection. Frames to one connection arrive in the order sent. A
    /// frame over the outbound limit (`Limits::max_outbound_message_bytes`) is not sent: the
    /// connection is closed with 1009 instead, so the client learns that it missed something.
    pub fn send(&self, msg: impl Into<Message>) {
        let msg = msg.into();
        let max = self.room.limits.max_outbound_message_bytes;
        if msg.len() > max {
            tracing::warn!(room = %self.room.key, conn = %self.shared.id, len = msg.len(), max, "outbound message over the limit; closing the connection");
            self.close(close_code::TOO_BIG, crate::client_text::MESSAGE_TOO_LARGE);
            return;
        }
        if self.is_open() {
            self.emit(FromRoom::Send { sid: self.shared.key.1, msg });
        }
    }

    /// Like [`Connection::send`], but a frame over the outbound limit is an error for the party
    /// to handle, and the connection stays open.
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<(), TooLarge> {
        let msg = msg.into();
        let max = self.room.limits.max_outbound_message_bytes;
        if msg.len() > max {
            return Err(TooLarge { len: msg.len(), max });
        }
        if self.is_open() {
            self.emit(FromRoom::Send { sid: self.shared.key.1, msg });
        }
        Ok(())
    }

    /// Closes the connection with a close code and reason; `on_close` follows.
    pub fn close(&self, code: u16, reason: &str) {
        self.room.close_connection(&self.shared, code, reason);
    }

    fn emit(&self, msg: FromRoom) {
        self.room.emit_link(self.shared.key.0, msg);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.shared.id).field("uri", &self.shared.uri).finish()
    }
}
