//! Partyline owner node: hosts room instances, their storage and alarms. What it shares with
//! gateways (the Redis layer, the cluster client, the wire format, TLS and the secret) is in
//! `partyline-cluster`.
//!
//! Modules:
//! - [`host`]: [`RoomHost`], the rooms of this process (start on demand, idle stop, moves).
//! - [`alarms`]: the scheduler that wakes rooms whose alarm is due (parking those that cannot run).
//! - [`store`]: storage backends (the embedded on-disk store of `partyline dev`).
//! - [`shards`]: the shards this node owns: leases acquired on demand, renewed, self-fenced,
//!   handed over.
//! - [`service`]: the gRPC service gateways call (links, requests, info) and operators call
//!   (inspect a room, drain the node, move a shard, close a room).
//! - [`server`]: `partyline node`: the process (membership, renewals, alarms, drain).
//! - [`events`]: what the node writes to the cluster's recent events.
//! - [`metrics`], [`admin`], [`process`]: metrics, readiness, the `--admin-listen` HTTP
//!   endpoints, and the process's CPU time and memory.
//! - `fuzzing`: the checks the fuzz targets in `fuzz/` run (the test suite replays the corpus).

pub mod admin;
pub mod alarms;
pub mod crons;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod metrics;
pub mod process;
pub mod server;
pub mod service;
pub mod shards;
pub mod store;

pub use host::{HostConfig, HostError, RoomHost};
