//! Limits on everything a client or a party can make the server hold. Each has a default (from
//! PartyKit / Durable Objects where one exists) and a flag in the `partyline` binary.

use std::time::Duration;

/// Size, count and time limits applied by rooms and gateways.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest inbound WebSocket message; larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Largest frame a room may send (one `send` or `broadcast`); the gRPC link between gateway
    /// and node is sized to carry it. A larger `send` closes that connection with 1009; a
    /// larger `broadcast` is dropped with an error in the log.
    pub max_outbound_message_bytes: usize,
    /// Largest HTTP request body sent to a room; larger answers 413.
    pub max_request_body_bytes: usize,
    /// Largest encoded connection state (`set_state` returns an error above it).
    pub max_state_bytes: usize,
    /// Most tags per connection, the connection id included.
    pub max_tags: usize,
    /// Longest tag, in bytes.
    pub max_tag_bytes: usize,
    /// Longest storage key, in bytes.
    pub max_key_bytes: usize,
    /// Largest storage value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one `get_many` / `put_many` / `delete_many`.
    pub max_batch_keys: usize,
    /// Longest room id, in bytes; longer answers 400.
    pub max_room_id_bytes: usize,
    /// Longest connection id (`?_pk=`), in bytes after percent-decoding; longer (or not UTF-8)
    /// answers 400 before the upgrade.
    pub max_connection_id_bytes: usize,
    /// Most open connections in one room; more answers 503 before the upgrade.
    pub max_connections_per_room: usize,
    /// Most messages queued for one client before it counts as not reading and is closed.
    pub max_outbox_messages: usize,
    /// Most bytes queued for one client before it counts as not reading and is closed (one frame
    /// larger than this is still queued when nothing else is).
    pub max_outbox_bytes: usize,
    /// Time one party handler may run; past it the connection is closed with 1011 (or the
    /// request answered 500).
    pub handler_timeout: Duration,
    /// Idle time after which a room with `hibernate: true` is unloaded while its sockets stay
    /// open.
    pub hibernate_idle: Duration,
    /// Idle time after which a room with no connections is unloaded.
    pub room_idle: Duration,
    /// Most rooms one process hosts at once (0: no limit). A new room beyond it first makes
    /// idle rooms nobody is connected to leave; if none can, it is refused with 503 before any
    /// 101.
    pub max_rooms: usize,
    /// Longest a client message, connection or request waits for space in a room's queue
    /// (1,024 commands) before it is refused: the socket is closed with 1013 (try again later),
    /// the request answered 503. Without it a stuck room would make senders wait forever.
    pub room_queue_timeout: Duration,
    /// Most keys one room may store (0: no limit); a write beyond it is an error to the party.
    pub max_room_keys: u64,
    /// Most bytes (keys plus values) one room may store (0: no limit); a write beyond it is an
    /// error to the party.
    pub max_room_bytes: u64,
    /// Most bytes one handler may write before its writes are committed (the write buffer), and
    /// most bytes one commit carries when queued batches are merged; a write beyond it is an
    /// error to the party (`sync()` commits what is buffered).
    pub max_commit_bytes: usize,
    /// Most bytes one `list()` may return; a larger result is an error to the party (ask for a
    /// range or a `limit`). Lists are read from the store in pages, never in one piece.
    pub max_list_bytes: usize,
}

impl Limits {
    /// The storage quota of one room.
    pub fn quota(&self) -> crate::store::Quota {
        crate::store::Quota { max_keys: self.max_room_keys, max_bytes: self.max_room_bytes }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_outbound_message_bytes: 16 << 20,
            max_request_body_bytes: 1 << 20,
            max_state_bytes: 16 << 10,
            max_tags: 10,
            max_tag_bytes: 256,
            max_key_bytes: 2048,
            max_value_bytes: 128 << 10,
            max_batch_keys: 128,
            max_room_id_bytes: 256,
            max_connection_id_bytes: 256,
            max_connections_per_room: 32_768,
            max_outbox_messages: 4096,
            max_outbox_bytes: 8 << 20,
            handler_timeout: Duration::from_secs(30),
            hibernate_idle: Duration::from_secs(10),
            room_idle: Duration::from_secs(60),
            max_rooms: 100_000,
            room_queue_timeout: Duration::from_secs(5),
            max_room_keys: 1_000_000,
            max_room_bytes: 256 << 20,
            max_commit_bytes: 32 << 20,
            max_list_bytes: 32 << 20,
        }
    }
}
