//! Partyline owner node: hosts room instances, their storage and alarms.
//!
//! Modules:
//! - [`host`]: [`RoomHost`], the rooms of this process (start on demand, idle stop, alarms).
//! - [`store`]: storage backends (the embedded on-disk store of `partyline dev`).
//! - [`redis`]: the cluster's Redis layer (fenced room storage, shard leases, membership).

pub mod client;
pub mod host;
pub mod redis;
pub mod server;
pub mod service;
pub mod shards;
pub mod store;
pub mod wire;

pub use host::{HostConfig, HostError, RoomHost};
