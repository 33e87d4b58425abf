//! What a client sees when the server, not the party, closes its socket or answers with an
//! error: one of a small set of fixed texts, listed here and in docs/operations.md ("Failures
//! and what clients see"). What went wrong inside (error chains, storage and lease errors, node
//! ids, addresses) goes to the log only. Where an operator needs to match a user's report to a
//! log line, the text carries a short opaque reference, `internal error (ref 5f3a91c2)`, and the
//! log line the same value as `error_ref`.
//!
//! A party's own words are its own: a close it makes with `Connection::close(code, reason)`, a
//! `Response` it returns and an [`HttpError`](crate::web::HttpError) reach the client unchanged.
//! An error a handler returns or throws otherwise, a panic or a time-out is the server's to
//! report: the client gets [`INTERNAL_ERROR`] (a socket) or [`INTERNAL_SERVER_ERROR`] (HTTP) with
//! a reference.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

// ---- close reasons (WebSocket close frames)

/// 1012: the room moved to another node (a drain, a rebalance, a failover); reconnect.
pub const ROOM_MOVED: &str = "room moved";
/// 1012: an operator closed the room (`partyline room close`, the console); reconnect to a
/// fresh instance.
pub const CLOSED_BY_OPERATOR: &str = "closed by an operator";
/// 1011 or 1012: the room cannot go on here (its storage failed); reconnect. With a reference.
pub const ROOM_UNAVAILABLE: &str = "room unavailable";
/// 1011: the party failed (an error, a panic, a time-out, a tag it may not set). With a reference.
pub const INTERNAL_ERROR: &str = "internal error";
/// 1011: a JS room ran out of memory and starts afresh; reconnect.
pub const ROOM_RESTARTED: &str = "room restarted";
/// 1012: the room's party has a new deployed version (`partyline deploy --restart-rooms`);
/// reconnect.
pub const ROOM_RESTARTED_FOR_DEPLOY: &str = "room restarted for a new version";
/// 1001: the gateway or node is shutting down.
pub const SHUTTING_DOWN: &str = "server shutting down";
/// 1001: the client did not answer the server's pings.
pub const NO_PONG: &str = "no answer to ping";
/// 4409: a newer connection with the same id joined the room.
pub const REPLACED: &str = "replaced by a newer connection with the same id";
/// 1009: a message over the size limit (in either direction).
pub const MESSAGE_TOO_LARGE: &str = "message too large";
/// 1007: a text frame that is not UTF-8.
pub const INVALID_UTF8: &str = "text frame is not valid UTF-8";
/// 1002: the client broke the WebSocket protocol.
pub const PROTOCOL_ERROR: &str = "protocol error";
/// 1008: the client sent messages faster than its rate limit.
pub const RATE_LIMITED: &str = "too many messages, slow down";
/// 1013 (socket) or 503 (HTTP): the room's queue is full; try again later.
pub const OVERLOADED: &str = "Room overloaded, try again later";

// ---- HTTP error bodies

/// 404: nothing at this path (PartyKit's text).
pub const NOT_FOUND: &str = "Not found";
/// 400: `/parties//room` (PartyKit's text).
pub const NO_PARTY: &str = "No party found in request url";
/// 400: the room id is over the limit.
pub const ROOM_ID_TOO_LONG: &str = "room id too long";
/// 400: the connection id (`_pk`) is over the limit.
pub const CONNECTION_ID_TOO_LONG: &str = "_pk too long";
/// 400: the connection id (`_pk`) is not UTF-8 once decoded.
pub const CONNECTION_ID_NOT_UTF8: &str = "_pk is not valid UTF-8";
/// 400: an upgrade without `Sec-WebSocket-Version: 13`.
pub const WS_VERSION: &str = "ERROR: The requested WebSocket version is not supported.";
/// 400: an upgrade without `Sec-WebSocket-Key`.
pub const WS_KEY: &str = "ERROR: Missing Sec-WebSocket-Key";
/// 400: an upgrade over a connection that cannot be upgraded.
pub const NOT_UPGRADABLE: &str = "ERROR: this connection cannot be upgraded";
/// 401: a static `on_before_connect` / `on_before_request` hook failed. With a reference.
pub const UNAUTHORIZED: &str = "Unauthorized";
/// 408: the request body did not arrive within the body time-out.
pub const BODY_TIMEOUT: &str = "the request body did not arrive in time";
/// 413: the request body is over the limit.
pub const BODY_TOO_LARGE: &str = "request body too large";
/// 429: too many open sockets from the client's address.
pub const TOO_MANY_CONNECTIONS: &str = "Too many connections from your address";
/// 429: too many new sockets a second from the client's address.
pub const TOO_MANY_CONNECTS: &str = "Too many new connections from your address, slow down";
/// 500: the party failed to answer (an error, a panic, a time-out). With a reference.
pub const INTERNAL_SERVER_ERROR: &str = "Internal Server Error";
/// 500: the party has no request handler.
pub const NO_ON_REQUEST: &str = "No onRequest handler";
/// 503: the room cannot be reached now (no owner, its node down, storage refused); try again.
pub const TRY_AGAIN_LATER: &str = "Room unavailable, try again later";
/// 503: the room is at its connection limit.
pub const ROOM_FULL: &str = "room is full";
/// 503: the node hosts as many rooms as it may.
pub const TOO_MANY_ROOMS: &str = "Too many rooms, try again later";
/// 503: the gateway holds as many sockets (or TCP connections) as it may.
pub const GATEWAY_FULL: &str = "gateway connection limit reached";
/// 504: the room did not answer a connection within the limit.
pub const CONNECT_TIMEOUT: &str = "the room did not answer the connection in time";

/// Every fixed text above.
pub const ALL: &[&str] = &[
    ROOM_MOVED,
    CLOSED_BY_OPERATOR,
    ROOM_UNAVAILABLE,
    INTERNAL_ERROR,
    ROOM_RESTARTED,
    ROOM_RESTARTED_FOR_DEPLOY,
    SHUTTING_DOWN,
    NO_PONG,
    REPLACED,
    MESSAGE_TOO_LARGE,
    INVALID_UTF8,
    PROTOCOL_ERROR,
    RATE_LIMITED,
    OVERLOADED,
    NOT_FOUND,
    NO_PARTY,
    ROOM_ID_TOO_LONG,
    CONNECTION_ID_TOO_LONG,
    CONNECTION_ID_NOT_UTF8,
    WS_VERSION,
    WS_KEY,
    NOT_UPGRADABLE,
    UNAUTHORIZED,
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_CONNECTS,
    INTERNAL_SERVER_ERROR,
    NO_ON_REQUEST,
    TRY_AGAIN_LATER,
    ROOM_FULL,
    TOO_MANY_ROOMS,
    GATEWAY_FULL,
    CONNECT_TIMEOUT,
];

/// 404 for an unknown party: `Party <name> not found` (PartyKit's text; the name is the one in
/// the client's own URL).
pub fn party_not_found(party: &str) -> String {
    format!("Party {party} not found")
}

/// A short opaque reference that ties a client's text to one log line (`error_ref` there).
/// Unique within a process run and unlikely to repeat across processes; it says nothing about
/// the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorRef(u32);

impl ErrorRef {
    /// A new reference.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // splitmix64: consecutive references look unrelated.
        let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ErrorRef((z ^ (z >> 31)) as u32)
    }

    /// `text (ref 5f3a91c2)`: what the client sees.
    pub fn tag(self, text: &str) -> String {
        format!("{text} (ref {self})")
    }
}

impl Default for ErrorRef {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ErrorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Whether `text` is one a server writes: a fixed text, optionally with a reference, or the
/// unknown-party 404. Tests hold what clients receive against it.
pub fn is_server_text(text: &str) -> bool {
    let base = strip_ref(text);
    ALL.contains(&base)
        || base.strip_prefix("Party ").and_then(|rest| rest.strip_suffix(" not found")).is_some_and(|p| !p.is_empty())
}

/// `text` without a trailing ` (ref xxxxxxxx)`.
fn strip_ref(text: &str) -> &str {
    match text.len().checked_sub(" (ref 00000000)".len()) {
        Some(at) if text.is_char_boundary(at) => {
            let (base, tail) = text.split_at(at);
            let hex = tail.strip_prefix(" (ref ").and_then(|t| t.strip_suffix(')'));
            match hex {
                Some(h) if h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()) => base,
                _ => text,
            }
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_short_distinct_and_recognised() {
        let (a, b) = (ErrorRef::new(), ErrorRef::new());
        assert_ne!(a, b);
        let text = a.tag(INTERNAL_ERROR);
        assert_eq!(text.len(), INTERNAL_ERROR.len() + " (ref 00000000)".len());
        assert!(is_server_text(&text), "{text}");
        assert!(is_server_text(ROOM_MOVED));
        assert!(is_server_text(&party_not_found("chat")));
    }

    #[test]
    fn anything_else_is_not_a_server_text() {
        for text in [
            "room storage failed: write refused: lease 823 is no longer held at epoch 1796527189502",
            "internal error (ref xyz)",
            "internal error (ref 5f3a91c2) and more",
            "Party  not found",
            "",
        ] {
            assert!(!is_server_text(text), "{text}");
        }
    }

    #[test]
    fn every_text_fits_a_close_frame_with_its_reference() {
        for text in ALL {
            assert!(ErrorRef::new().tag(text).len() <= 123, "{text}");
        }
    }
}
