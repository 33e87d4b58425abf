//! Partyline owner node: hosts room instances, their storage and alarms.
//!
//! Modules:
//! - [`host`]: [`RoomHost`], the rooms of this process (start on demand, idle stop, alarms).
//! - [`store`]: storage backends (the embedded on-disk store of `partyline dev`).

pub mod host;
pub mod store;

pub use host::{HostConfig, HostError, RoomHost};
