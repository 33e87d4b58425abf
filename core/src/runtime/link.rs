//! The messages between a gateway and a room: what one gateway's sockets do in one room, and
//! what the room asks that gateway to do with them. `dev` passes them over in-process channels;
//! the cluster carries the same messages over one gRPC stream per (gateway, room).
//! Beside them: the WebSocket close codes the runtime uses ([`close_code`]) and [`close_reason`],
//! which fits a close reason in a close frame.

use bytes::Bytes;

use crate::message::Message;
use crate::web::Request;

/// A socket's number, unique within its gateway. Connections are keyed by socket, not by their
/// client-chosen id, so two sockets that share an id are never confused.
pub type SocketId = u64;

/// What a gateway tells a room about its sockets.
#[derive(Debug)]
pub enum ToRoom {
    /// A client asks to connect; the room answers [`FromRoom::Accepted`], `Refused` or `Failed`.
    Connect {
        /// The socket.
        sid: SocketId,
        /// Connection id (`?_pk=`, or generated).
        id: String,
        /// The full request URL.
        uri: String,
        /// The upgrade request, as `on_before_connect` left it (body empty).
        request: Box<Request>,
    },
    /// A frame from a client, in the order it was received.
    Message {
        /// The socket.
        sid: SocketId,
        /// The frame.
        msg: Message,
    },
    /// The client's socket closed or failed.
    Closed {
        /// The socket.
        sid: SocketId,
        /// Set when the socket failed rather than closed cleanly; the room calls `on_error`.
        error: Option<String>,
    },
    /// The answer to [`FromRoom::Pause`]: nothing more comes on this link.
    Paused,
    /// A socket that was in the room on its previous owner joins this instance as it was, with
    /// its id, tags and state, without `on_connect` (the room moved; the client saw nothing).
    Adopt {
        /// The socket.
        sid: SocketId,
        /// Connection id.
        id: String,
        /// The URL it connected with.
        uri: String,
        /// Its tags, the id first.
        tags: Vec<String>,
        /// Its state (JSON bytes).
        state: Option<Bytes>,
    },
    /// This link's adoptions are complete. `links` is how many links the previous instance
    /// handed over ([`FromRoom::Moved`]): the room holds other work until that many links have
    /// adopted their sockets (bounded in time), so no broadcast misses a socket in transit.
    Adopted {
        /// Links the previous instance handed over.
        links: u32,
    },
}

/// What a room tells a gateway to do with that gateway's sockets.
#[derive(Clone, Debug)]
pub enum FromRoom {
    /// The socket joined the room (before `on_connect` runs): broadcasts from here on include it.
    Joined {
        /// The socket.
        sid: SocketId,
    },
    /// `on_connect` finished: complete the upgrade.
    Accepted {
        /// The socket.
        sid: SocketId,
        /// Its tags (the id first).
        tags: Vec<String>,
    },
    /// The room will not take the connection: answer the upgrade with this HTTP status.
    Refused {
        /// The socket.
        sid: SocketId,
        /// HTTP status.
        status: u16,
        /// Response body.
        reason: String,
    },
    /// Setting up the connection failed: complete the upgrade, then close with 1011 and reason.
    Failed {
        /// The socket.
        sid: SocketId,
        /// Close reason.
        reason: String,
    },
    /// Send one frame to one socket.
    Send {
        /// The socket.
        sid: SocketId,
        /// The frame.
        msg: Message,
    },
    /// Send one frame to every socket of this gateway in the room, but those in `except`.
    Broadcast {
        /// The frame, shared by all recipients.
        msg: Message,
        /// Sockets to skip.
        except: Vec<SocketId>,
    },
    /// Close one socket.
    Close {
        /// The socket.
        sid: SocketId,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The connection's state changed (JSON bytes; `None` cleared). Kept by the gateway so it
    /// can hand connections to a new room instance.
    State {
        /// The socket.
        sid: SocketId,
        /// The new state.
        state: Option<Bytes>,
    },
    /// The room instance is gone (storage refused, shut down): close every socket of this link
    /// with this code.
    Gone {
        /// Close code (1011 failure, 1012 restart).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The room is moving to another node: send nothing more on this link and answer
    /// [`ToRoom::Paused`]; frames from clients wait at the gateway until the room moved.
    Pause,
    /// The room moved, with every earlier message of this link delivered and its writes
    /// durable: open a link to the room's new owner and hand it this link's sockets
    /// ([`ToRoom::Adopt`] each, then [`ToRoom::Adopted`]).
    Moved {
        /// How many links the room handed over (so the new instance knows whom to wait for).
        links: u32,
    },
}

/// Close codes Partyline uses, beyond the RFC 6455 ones clients already know.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never sent: a close frame that carried no code (as the receiver reports it).
    pub const NO_STATUS: u16 = 1005;
    /// Never sent: the connection ended without a close frame (as the receiver reports it).
    pub const ABNORMAL: u16 = 1006;
    /// Text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: the client sent messages faster than its rate limit.
    pub const POLICY: u16 = 1008;
    /// Message larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The party failed (error, panic, time limit).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The room restarts elsewhere; reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The room is overloaded; reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Another connection with the same id joined the room and replaced this one.
    pub const REPLACED: u16 = 4409;
}

/// A close reason fits in a control frame: at most 123 bytes, cut at a character boundary.
pub fn close_reason(text: &str) -> String {
    if text.len() <= 123 {
        return text.to_string();
    }
    let mut end = 123;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
