//! The cluster marker: how a node notices that Redis lost the cluster's data.
//!
//! Redis that restarts without persistence, or fails over to a replica that missed writes,
//! comes back without some or all of the cluster's keys. Leases then vanish early (fencing still
//! holds: a write under a vanished lease is refused) and acknowledged room storage is silently
//! gone, so rooms would restart empty. To refuse that loudly instead, the first node that starts
//! on an empty Redis writes `pl:cluster` (a random id, no TTL) and every node announces the id it
//! serves under in its membership record. Nodes check the marker with every heartbeat and
//! before every lease acquisition; a node that finds it gone or changed drops its shards and
//! refuses to serve rooms until it is restarted (or the marker comes back). A node that starts
//! while live members announce a marker Redis no longer has refuses too: only a Redis with no
//! marker and no live members is taken as a new cluster.
//!
//! What this cannot see: a whole cluster restarted together on a Redis that lost everything is
//! indistinguishable from a new cluster. Durable Redis (AOF) is the protection against that;
//! docs/operations.md says how to run it.

use ::redis::aio::ConnectionManager;

use super::keys::Keys;
use super::Result;

/// What [`Marker::claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The marker exists: the cluster's data is here.
    Existing(String),
    /// There was none and this call wrote it: a new cluster.
    Created(String),
}

impl Claim {
    /// The marker's value.
    pub fn value(&self) -> &str {
        match self {
            Claim::Existing(v) | Claim::Created(v) => v,
        }
    }
}

/// How Redis keeps its data across a restart, as far as `CONFIG GET` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Append-only file with this `appendfsync` policy (`always`, `everysec`, `no`).
    Aof(String),
    /// Periodic snapshots only (`save` rules): writes since the last snapshot are lost in a crash.
    Snapshots(String),
    /// Nothing: a restart loses everything.
    None,
    /// `CONFIG` is not allowed (managed Redis services often disable it).
    Unknown,
}

/// The marker; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Marker {
    conn: ConnectionManager,
    keys: Keys,
}

impl Marker {
    /// The marker over `conn`.
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Marker { conn, keys }
    }

    /// The marker's value, if Redis has it.
    pub async fn get(&self) -> Result<Option<String>> {
        Ok(::redis::cmd("GET").arg(self.keys.cluster()).query_async(&mut self.conn.clone()).await?)
    }

    /// The marker, writing a new one (with `fresh`) if Redis has none.
    pub async fn claim(&self, fresh: &str) -> Result<Claim> {
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.keys.cluster())
            .arg(fresh)
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await?;
        if set.is_some() {
            return Ok(Claim::Created(fresh.to_string()));
        }
        match self.get().await? {
            Some(v) => Ok(Claim::Existing(v)),
            // Deleted between the two commands: try once more.
            None => Ok(
                match ::redis::cmd("SET")
                    .arg(self.keys.cluster())
                    .arg(fresh)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut self.conn.clone())
                    .await?
                {
                    Some(_) => Claim::Created(fresh.to_string()),
                    None => Claim::Existing(self.get().await?.unwrap_or_default()),
                },
            ),
        }
    }

    /// Whether Redis still holds the marker `expected`.
    pub async fn holds(&self, expected: &str) -> Result<bool> {
        Ok(self.get().await?.as_deref() == Some(expected))
    }

    /// How the server persists its data (best effort).
    pub async fn persistence(&self) -> Persistence {
        let get = |name: &'static str| async move {
            let pair: ::redis::RedisResult<Vec<String>> =
                ::redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut self.conn.clone()).await;
            pair.ok().and_then(|p| p.get(1).cloned())
        };
        let Some(aof) = get("appendonly").await else { return Persistence::Unknown };
        if aof == "yes" {
            return Persistence::Aof(get("appendfsync").await.unwrap_or_default());
        }
        match get("save").await {
            Some(save) if !save.trim().is_empty() => Persistence::Snapshots(save),
            _ => Persistence::None,
        }
    }
}

/// A fresh random marker value.
pub fn fresh_value() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::RedisServer;
    use crate::redis::{Redis, RedisConfig};

    #[tokio::test]
    async fn the_first_claim_creates_the_marker_and_a_restart_without_persistence_loses_it() {
        let mut server = RedisServer::start();
        let redis = Redis::connect(RedisConfig::new(server.url())).await.unwrap();
        let marker = redis.marker();
        let first = marker.claim("one").await.unwrap();
        assert_eq!(first, Claim::Created("one".into()));
        assert_eq!(marker.claim("two").await.unwrap(), Claim::Existing("one".into()));
        assert!(marker.holds("one").await.unwrap());
        assert_eq!(marker.persistence().await, Persistence::None, "the test server keeps nothing");
        server.restart();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match marker.holds("one").await {
                Ok(held) => {
                    assert!(!held, "a restart without persistence keeps no marker");
                    break;
                }
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
