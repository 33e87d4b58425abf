//! # Partyline: PartyKit's `Party.Server` model in Rust
//!
//! A *party* is a type implementing [`Party`]; a *room* is one live instance of it, identified
//! by party name and room id, reachable over WebSocket and HTTP at
//! `/parties/:party/:room`. This crate is everything party code touches, and the room runtime
//! that runs it; it has no sockets and no Redis, so all of it is testable with channels.
//!
//! Modules:
//! - [`party`]: the [`Party`] trait, options, static hooks, and the [`PartyRegistry`].
//! - [`room`]: [`Room`]: identity, env, broadcast, connections, calls to other rooms.
//! - [`connection`]: [`Connection`]: id, uri, tags, state, send, close.
//! - [`room_socket`]: [`room_socket::RoomSocket`]: party code's connection to another room as its
//!   client.
//! - [`storage`]: [`Storage`]: Durable Object style key/value storage and one alarm per room.
//! - [`store`]: the [`Store`] backend trait and [`MemoryStore`].
//! - [`message`]: [`Message`], text and binary kept apart.
//! - [`web`]: HTTP request/response types and helpers.
//! - [`limits`]: every limit, with defaults.
//! - [`sync`]: locks that a panic does not poison for everyone else.
//! - [`runtime`]: what runs rooms, for the server crates (party code does not need it): the
//!   room task and its output gate, the messages between a gateway and a room, placement, and
//!   what the runtime reports for metrics.
//! - `testing` (feature `testing`): a test kit for parties: a room in a test, clients that
//!   connect, send and receive, HTTP requests, the alarm run on demand, storage inspection,
//!   the static hooks.
//!
//! ```
//! use partyline::prelude::*;
//!
//! struct Echo;
//!
//! impl Party for Echo {
//!     fn new(_room: Room) -> Self {
//!         Echo
//!     }
//!     async fn on_message(&mut self, msg: Message, sender: &Connection) -> anyhow::Result<()> {
//!         sender.send(msg);
//!         Ok(())
//!     }
//! }
//!
//! let parties = PartyRegistry::new().with::<Echo>("echo");
//! assert!(parties.get("echo").is_some());
//! ```

pub mod client_text;
pub mod connection;
pub mod cron;
pub mod limits;
pub mod message;
pub mod party;
pub mod room;
pub mod room_socket;
pub mod runtime;
pub mod storage;
pub mod store;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod web;

/// For implementing [`Store`] and [`PartiesClient`]; a [`Party`] needs no attribute.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use connection::{Connection, StateError, TooLarge};
pub use limits::Limits;
pub use message::{Message, Text};
pub use party::{
    Before, ConnectionContext, CronEvent, CronSchedule, DynParty, LiveChange, LiveParties, Lobby, Party, PartyFactory,
    PartyOptions, PartyRegistry, Wakeup,
};
pub use room::{Env, Parties, PartiesClient, Room, RoomStub};
pub use runtime::link::close_code;
pub use storage::{Storage, StorageError};
pub use store::{ListOptions, MemoryStore, RoomKey, Store};
pub use web::{HttpError, Request, Response};

/// What a party module usually imports.
pub mod prelude {
    pub use crate::close_code;
    pub use crate::web::{self, HttpError, Request, Response};
    pub use crate::{
        Before, Bytes, Connection, ConnectionContext, Env, ListOptions, Lobby, Message, Party, PartyOptions,
        PartyRegistry, Room, Storage, Text,
    };
    pub use http::{Method, StatusCode};
}

pub use http;
