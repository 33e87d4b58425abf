//! Partyline owner node: hosts room instances, their storage and alarms.
//!
//! Modules:
//! - [`host`]: [`RoomHost`], the rooms of this process (start on demand, idle stop, moves).
//! - [`alarms`]: the scheduler that wakes rooms whose alarm is due (parking those that cannot run).
//! - [`store`]: storage backends (the embedded on-disk store of `partyline dev`).
//! - [`redis`]: the cluster's Redis layer (fenced room storage, shard leases, membership).
//! - [`shards`]: the shards this node owns: leases acquired on demand, renewed, self-fenced,
//!   handed over.
//! - [`service`]: the gRPC service gateways call (links, requests, info).
//! - [`server`]: `partyline node`: the process (membership, renewals, alarms, drain).
//! - [`client`]: reaching rooms anywhere in the cluster over gRPC (used by gateways, and by
//!   nodes for calls between rooms).
//! - [`wire`]: conversions between the link protocol and its protobuf form.
//! - [`tls`]: TLS between gateways and nodes (mutual, against a cluster CA).
//! - `fuzzing`: the checks the fuzz targets in `fuzz/` run (the test suite replays the corpus).
//! - [`metrics`], [`admin`]: metrics, readiness, and the `--metrics-listen` HTTP endpoints.
//! - [`secret`]: the cluster secret (from a file, length checked).
//! - [`telemetry`]: trace context carried in gRPC metadata.

pub mod admin;
pub mod alarms;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod metrics;
pub mod redis;
pub mod secret;
pub mod server;
pub mod service;
pub mod shards;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use host::{HostConfig, HostError, RoomHost};
