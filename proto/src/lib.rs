//! The gRPC contract between Partyline gateways and nodes, generated from `partyline.proto`
//! (tonic + prost, compiled by protox at build time). [`pb`] holds the messages, the `Node`
//! client and the server trait.

/// Generated messages and services of `partyline.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("partyline.v1");
}

/// Metadata key carrying the cluster secret.
pub const AUTH_HEADER: &str = "authorization";
