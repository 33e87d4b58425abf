//! TLS between gateways and nodes. Every process trusts one cluster CA; nodes serve gRPC with a
//! certificate it signed and require the same of their callers (mutual TLS), and callers check
//! the node's certificate against the address they dial. So the cluster secret only ever goes
//! to a process that proves it is a node of this cluster, whatever address is written in Redis.

use std::path::Path;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The cluster's TLS material (PEM).
#[derive(Clone)]
pub struct ClusterTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("identity", &self.identity.is_some()).finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Reads the CA certificate and, when given, this process's certificate chain and key.
    /// Nodes need a certificate valid for the address they advertise (as a server) and for
    /// client authentication (they call each other); gateways need one for client
    /// authentication.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Self> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).with_context(|| format!("could not read the {what} {}", p.display()))
        };
        let ca = read(ca, "cluster CA certificate")?;
        anyhow::ensure!(
            String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"),
            "the cluster CA file holds no PEM certificate"
        );
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c, "certificate")?, read(k, "private key")?)),
            (None, None) => None,
            _ => anyhow::bail!("a cluster TLS certificate needs its key, and the other way round"),
        };
        Ok(ClusterTls { ca, identity })
    }

    /// Whether this process has a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The server side (nodes): this process's certificate, and callers must present one the
    /// cluster CA signed.
    pub fn server(&self) -> anyhow::Result<ServerTlsConfig> {
        let (cert, key) =
            self.identity.as_ref().context("a node serving TLS needs --cluster-tls-cert and --cluster-tls-key")?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false))
    }

    /// The client side (gateways, and nodes calling nodes): only nodes with a certificate from
    /// the cluster CA for the dialled address are trusted; this process's certificate is
    /// presented when it has one.
    pub fn client(&self) -> ClientTlsConfig {
        let cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => cfg.identity(Identity::from_pem(cert, key)),
            None => cfg,
        }
    }
}
