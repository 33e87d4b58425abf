//! What runs rooms: used by the server crates (node, gateway, `dev`) and the test kit; party
//! code does not need any of it.
//!
//! - [`actor`]: the room task: one per live room, handlers one at a time, hibernation, alarms,
//!   the time limit, and the output gate (the private `gate`: frames wait until the
//!   writes before them are durable).
//! - [`link`]: the messages between a gateway's socket and a room ([`link::ToRoom`],
//!   [`link::FromRoom`]) and the WebSocket close codes the runtime uses.
//! - [`placement`]: room -> virtual shard -> preferred node (xxh3 + rendezvous hashing).
//! - [`observe`]: what the runtime reports for metrics (event times, alarms).

pub mod actor;
pub(crate) mod gate;
pub mod link;
pub mod observe;
pub mod placement;
