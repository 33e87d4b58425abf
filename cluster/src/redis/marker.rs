//! The cluster marker: how a node notices that Redis lost the cluster's data.
//!
//! Redis that restarts without persistence, or fails over to a replica that missed writes,
//! comes back without some or all of the cluster's keys. Leases then vanish early (fencing still
//! holds: a write under a vanished lease is refused) and acknowledged room storage is silently
//! gone, so rooms would restart empty. To refuse that loudly instead, creating a cluster writes
//! `pl:cluster` (a random id, no TTL) and every node announces the id it serves under in its
//! membership record. Nodes check the marker with every heartbeat and before every lease
//! acquisition; a node that finds it gone or changed drops its shards and refuses to serve rooms
//! until it is restarted (or the marker comes back). A node that starts while live members
//! announce a marker Redis no longer has refuses too.
//!
//! Creating the cluster is an explicit step, never inferred from an empty Redis: a Redis with no
//! marker and no live members looks the same whether the cluster is new or every node restarted
//! after Redis lost everything. `partyline init` ([`Marker::claim`]) creates it, once; so does a
//! node started with `--init-cluster`. A node without it that finds no marker waits, serving
//! nothing, until the marker exists. Durable Redis (AOF) is still what keeps the data;
//! docs/operations.md says how to run it.
//!
//! **Redis Cluster.** The marker key lives on one primary; any other primary can lose its data
//! alone (restarted without persistence, or failed over to a replica that had not synced). So
//! on a cluster every shard keeps a copy, `pl:{s<shard>}:cluster`, in its own hash slot, which
//! moves with the shard's data. Whoever creates the cluster writes every copy (`SET NX`)
//! *before* the marker itself, so once the marker exists a missing copy means lost data:
//!
//! - acquiring a shard whose copy is missing fails (checked inside the acquire script, see
//!   [`super::lease`]); the node notes the shard ([`Marker::note_lost`]);
//! - [`Marker::check`] (the heartbeat) looks at the noted shards and at a window of 256 other
//!   shards each time, so it sweeps all 4096 in 16 heartbeats; any missing copy makes it answer
//!   `false` (the node refuses to serve), until the copies are back;
//! - a node that starts reads every copy ([`Marker::lost_copies`]) and, finding some missing,
//!   refuses to serve from the start, whether other nodes run or not.
//!
//! A copy with another value (a cluster started earlier on this Redis, or a node that lost the
//! race to create the cluster) is not lost data: the acquire script takes it over. Writing
//! missing copies back starts those shards over, empty, so like creating the cluster it is an
//! explicit step, never inferred from a restart: `partyline init --start-over`
//! ([`Marker::restore_copies`]). Restarting every node does not do it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ::redis::Value;
use partyline::runtime::placement::SHARDS;
use partyline::sync::Lock;

use super::conn::Connection;
use super::keys::Keys;
use super::Result;
use futures::future::BoxFuture;

/// Shards whose marker copy [`Marker::check`] reads per call, besides those noted lost.
const SWEEP: u16 = 256;

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

/// The marker; see the module docs. Cheap to clone (clones share what they noted).
#[derive(Clone)]
pub struct Marker {
    conn: Connection,
    keys: Keys,
    /// Redis Cluster: shards found without their marker copy, and where the sweep goes on.
    lost: Arc<Mutex<(BTreeSet<u16>, u16)>>,
}

impl Marker {
    /// The marker over `conn`.
    pub fn new(conn: Connection, keys: Keys) -> Self {
        Marker { conn, keys, lost: Arc::default() }
    }

    /// Notes that `shard`'s marker copy was found missing (a refused acquisition); the next
    /// [`Marker::check`] answers `false` while it stays missing.
    pub fn note_lost(&self, shard: u16) {
        self.lost.locked().0.insert(shard);
    }

    /// The shards last found without their marker copy (Redis Cluster).
    pub fn lost_shards(&self) -> Vec<u16> {
        self.lost.locked().0.iter().copied().collect()
    }

    /// Whether Redis still holds the marker `expected` and, on a Redis Cluster, the shards
    /// noted lost and the next window of the sweep have their copy (see the module docs). Meant
    /// for the heartbeat; [`Marker::holds`] is the cheap check.
    pub async fn check(&self, expected: &str) -> Result<bool> {
        if !self.holds(expected).await? {
            return Ok(false);
        }
        if !self.keys.is_cluster() {
            return Ok(true);
        }
        let (noted, from) = {
            let lost = self.lost.locked();
            (lost.0.clone(), lost.1)
        };
        let window: Vec<u16> = (0..SWEEP).map(|i| (from + i) % SHARDS).filter(|s| !noted.contains(s)).collect();
        let shards: Vec<u16> = noted.iter().copied().chain(window).collect();
        let missing = self.missing_copies(&shards).await?;
        let mut lost = self.lost.locked();
        lost.0.retain(|s| missing.contains(s));
        lost.0.extend(missing.iter().copied());
        lost.1 = (from + SWEEP) % SHARDS;
        Ok(lost.0.is_empty())
    }

    /// Which of `shards` have no marker copy (any value counts as present).
    async fn missing_copies(&self, shards: &[u16]) -> Result<BTreeSet<u16>> {
        let cmds = shards
            .iter()
            .map(|s| {
                let mut cmd = ::redis::cmd("EXISTS");
                cmd.arg(self.keys.shard_marker(*s));
                cmd
            })
            .collect();
        let mut missing = BTreeSet::new();
        for (shard, answer) in shards.iter().zip(self.conn.each(cmds).await) {
            if matches!(answer?, Value::Int(0)) {
                missing.insert(*shard);
            }
        }
        Ok(missing)
    }

    /// Redis Cluster: the shards whose marker copy is missing (their primary lost its data),
    /// reading every shard's copy. They are noted lost, so [`Marker::check`] answers `false`
    /// until they are back. Empty on one Redis server.
    pub async fn lost_copies(&self) -> Result<Vec<u16>> {
        if !self.keys.is_cluster() {
            return Ok(Vec::new());
        }
        let all: Vec<u16> = (0..SHARDS).collect();
        let missing = self.missing_copies(&all).await?;
        self.lost.locked().0.extend(missing.iter().copied());
        Ok(missing.into_iter().collect())
    }

    /// Redis Cluster: writes back the shards' marker copies that are missing (their primary
    /// lost its data), so those shards start over, EMPTY. Only an operator's explicit
    /// `partyline init --start-over` calls it: nodes never do (see the module docs). Returns
    /// how many were missing (0 on one Redis server).
    pub async fn restore_copies(&self, value: &str) -> Result<usize> {
        if !self.keys.is_cluster() {
            return Ok(0);
        }
        let all: Vec<u16> = (0..SHARDS).collect();
        let missing = self.missing_copies(&all).await?;
        if !missing.is_empty() {
            self.write_copies(value).await?;
        }
        self.lost.locked().0.clear();
        Ok(missing.len())
    }

    /// Redis Cluster: writes every shard's marker copy that is missing, with `value`.
    async fn write_copies(&self, value: &str) -> Result<()> {
        let cmds = (0..SHARDS)
            .map(|s| {
                let mut cmd = ::redis::cmd("SET");
                cmd.arg(self.keys.shard_marker(s)).arg(value).arg("NX");
                cmd
            })
            .collect();
        for answer in self.conn.each(cmds).await {
            answer?;
        }
        Ok(())
    }

    /// The marker's key (`pl:cluster`), for messages.
    pub fn key(&self) -> String {
        self.keys.cluster()
    }

    /// The marker's value, if Redis has it.
    pub async fn get(&self) -> Result<Option<String>> {
        Ok(::redis::cmd("GET").arg(self.keys.cluster()).query_async(&mut self.conn.clone()).await?)
    }

    /// The marker, writing a new one (with `fresh`) if Redis has none. On a Redis Cluster the
    /// shards' copies are written first (see the module docs).
    #[inline(never)]
    pub fn claim<'a>(&'a self, fresh: &'a str) -> BoxFuture<'a, Result<Claim>> {
        Box::pin(self.claim_unboxed(fresh))
    }

    async fn claim_unboxed(&self, fresh: &str) -> Result<Claim> {
        if self.keys.is_cluster() && self.get().await?.is_none() {
            self.write_copies(fresh).await?;
        }
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

    /// How the server persists its data (best effort; on a Redis Cluster, as one node answers).
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
    use crate::redis::testing::{self, RedisCluster, RedisServer};
    use crate::redis::{Acquire, Error, Redis, RedisConfig};

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

    #[tokio::test]
    async fn on_a_redis_cluster_every_shard_keeps_a_copy_and_a_wiped_primary_is_found() {
        let cluster = RedisCluster::start(3);
        let redis = testing::connect(&cluster.url(), "pl").await;
        let marker = redis.marker();
        assert_eq!(marker.claim("one").await.unwrap(), Claim::Created("one".into()));
        for port in cluster.primaries() {
            let copies = cluster.keys_on(port, "pl:{s*}:cluster").len();
            assert!(copies > 1000, "primary {port} holds {copies} marker copies");
        }
        // A full sweep (16 heartbeats) finds every copy.
        for _ in 0..16 {
            assert!(marker.check("one").await.unwrap(), "lost: {:?}", marker.lost_shards());
        }
        let leases = redis.leases().expecting_marker("one");
        assert!(matches!(
            leases.acquire(1, "n", "n#1", "a", std::time::Duration::from_secs(30)).await,
            Ok(Acquire::Granted { .. })
        ));

        // A primary that does not hold the marker itself loses its data.
        let marker_primary = cluster.primary_of(cluster.slot_of(&redis.keys().cluster()));
        let wiped = cluster.primaries().into_iter().find(|p| *p != marker_primary).unwrap();
        cluster.wipe(wiped);
        assert!(marker.holds("one").await.unwrap(), "the marker itself is still there");
        let lost_shard = (3..partyline::runtime::placement::SHARDS)
            .find(|s| cluster.primary_of(cluster.slot_of(&redis.keys().lease(*s))) == wiped)
            .unwrap();
        // Acquiring a shard of the wiped primary is refused...
        match leases.acquire(lost_shard, "n", "n#1", "a", std::time::Duration::from_secs(30)).await {
            Err(Error::Lost(s)) => assert_eq!(s, lost_shard),
            other => panic!("a shard without its marker copy was granted: {other:?}"),
        }
        // ...and the heartbeat's sweep finds the loss by itself within 16 checks.
        let mut found = false;
        for _ in 0..16 {
            if !marker.check("one").await.unwrap() {
                found = true;
                break;
            }
        }
        assert!(found, "the sweep never noticed the wiped primary");
        assert!(marker.lost_shards().len() > 10, "{:?}", marker.lost_shards());
        // When the copies are back (the data restored), the check passes again.
        for s in 0..partyline::runtime::placement::SHARDS {
            let _: Option<String> = ::redis::cmd("SET")
                .arg(redis.keys().shard_marker(s))
                .arg("one")
                .arg("NX")
                .query_async(&mut redis.connection())
                .await
                .unwrap();
        }
        for _ in 0..17 {
            assert!(marker.check("one").await.unwrap());
        }
        assert!(marker.lost_shards().is_empty());

        // A copy with another value (a cluster created before on this Redis) is taken over.
        let _: () = ::redis::cmd("SET")
            .arg(redis.keys().shard_marker(2))
            .arg("older")
            .query_async(&mut redis.connection())
            .await
            .unwrap();
        assert!(matches!(
            leases.acquire(2, "n", "n#1", "a", std::time::Duration::from_secs(30)).await,
            Ok(Acquire::Granted { .. })
        ));
        let copy: String =
            ::redis::cmd("GET").arg(redis.keys().shard_marker(2)).query_async(&mut redis.connection()).await.unwrap();
        assert_eq!(copy, "one");
        // The whole cluster restarted after a primary lost its data: a starting node finds every
        // lost copy at once and nothing writes them back by itself, so the check keeps failing.
        cluster.wipe(wiped);
        let fresh = testing::connect(&cluster.url(), "pl").await.marker();
        assert!(fresh.holds("one").await.unwrap());
        let lost = fresh.lost_copies().await.unwrap();
        assert!(lost.len() > 1000 && lost.len() < 2000, "{} copies were missing", lost.len());
        assert!(lost.contains(&lost_shard), "{lost_shard} is not among the lost shards");
        assert_eq!(fresh.lost_shards(), lost, "the lost shards are noted for the heartbeat");
        for _ in 0..17 {
            assert!(!fresh.check("one").await.unwrap(), "a check passed with copies missing");
        }
        assert_eq!(fresh.lost_copies().await.unwrap(), lost, "nothing wrote the copies back");
        // Only the explicit step (`partyline init --start-over`) writes them back: those shards
        // start over, the others are left alone.
        let restored = marker.restore_copies("one").await.unwrap();
        assert_eq!(restored, lost.len());
        assert_eq!(marker.restore_copies("one").await.unwrap(), 0);
        assert!(fresh.lost_copies().await.unwrap().is_empty());
        for _ in 0..17 {
            assert!(marker.check("one").await.unwrap());
            assert!(fresh.check("one").await.unwrap());
        }
        assert!(fresh.lost_shards().is_empty());
        // Leases without a marker (tools, tests) do not look at the copies.
        let _: () = ::redis::cmd("DEL")
            .arg(redis.keys().shard_marker(3000))
            .query_async(&mut redis.connection())
            .await
            .unwrap();
        let plain = redis.leases().acquire(3000, "t", "t#1", "a", std::time::Duration::from_secs(30)).await;
        assert!(matches!(plain, Ok(Acquire::Granted { .. })), "{plain:?}");
    }
}
