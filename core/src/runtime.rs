//! What runs rooms: used by the server crates (node, gateway, `dev`) and the test kit; party
//! code does not need any of it.
//!
//! - [`handle`]: what a room's callers hold: [`handle::RoomHandle`], a gateway's
//!   [`handle::LinkSender`], the errors they see and how a room ended ([`handle::RoomExit`]).
//! - [`actor`]: the room task ([`actor::spawn_room`]): one per live room, handlers one at a
//!   time, hibernation, alarms, the time limit, and the output gate (the private `gate`: frames
//!   wait until the writes before them are durable). Its calls into the party are in the private
//!   `handlers`, its moves between nodes in the private `handover`.
//! - [`link`]: the messages between a gateway's socket and a room ([`link::ToRoom`],
//!   [`link::FromRoom`]), the WebSocket close codes the runtime uses and
//!   [`link::close_reason`].
//! - [`placement`]: room -> virtual shard -> preferred node (xxh3 + rendezvous hashing).
//! - [`observe`]: what the runtime reports for metrics (event times, alarms).

pub mod actor;
pub(crate) mod gate;
pub mod handle;
mod handlers;
mod handover;
pub mod link;
pub mod observe;
pub mod placement;
