//! What Partyline's gateways and nodes share to form a cluster.
//!
//! Modules:
//! - [`redis`]: the cluster's Redis layer, on one Redis server or a Redis Cluster: fenced room
//!   storage, shard leases and their timing, membership, the cluster marker, alarm indexes,
//!   and a test harness that runs real `redis-server`s.
//! - [`client`]: reaching rooms anywhere in the cluster over gRPC (used by gateways, and by
//!   nodes for calls between rooms): routing by shard, redirects, retries of what provably did
//!   not run.
//! - [`room_socket`]: sockets from party code to rooms anywhere in the cluster (PartyKit's
//!   `stub.socket()`), over a link stream of their own.
//! - [`wire`]: conversions between the link protocol and its protobuf form, and the gRPC
//!   message size.
//! - [`tls`]: TLS between gateways and nodes (mutual, against a cluster CA).
//! - [`secret`]: the cluster secret (from a file, length checked).
//! - [`telemetry`]: trace context carried in gRPC metadata.
//! - [`metrics`]: a histogram of plain atomics for the per-frame paths.

pub mod client;
pub mod metrics;
pub mod redis;
pub mod room_socket;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod wire;
