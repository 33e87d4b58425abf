//! Deployed versions of a project (`partyline deploy`): the artifacts, which one the cluster
//! serves, and which one each process serves.
//!
//! A version is a number from `pl:deploy:seq`; its artifact is stored in chunks of
//! [`CHUNK_BYTES`] (each one plain `GET`, within any command timeout) and described by a
//! [`VersionRecord`] in the hash `pl:deploy:versions`, with the artifact's content hash and a
//! signature made with the cluster secret. `pl:deploy:current` names the version the cluster
//! serves; processes poll it, and each reports what it serves in the hash `pl:deploy:served`.
//!
//! Like cron claims, none of this is room storage: no shard lease fences it. What protects it
//! is the signature: a process that can write to Redis but lacks the cluster secret can delete
//! versions or point `current` at an older signed one, but cannot make a node run code of its
//! own (nodes check the signature and the hash before loading).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conn::Connection;
use super::keys::Keys;
use super::{Error, Result};

/// Size of one stored chunk of an artifact.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One deployed version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version number (1, 2, ...).
    pub version: u64,
    /// The content hash of the whole artifact (`sha256:<hex>`).
    pub hash: String,
    /// The artifact's size.
    pub bytes: u64,
    /// How many chunks it is stored in.
    pub chunks: u32,
    /// The signature over version and hash, made with the cluster secret.
    pub signature: String,
    /// The artifact's manifest (as `partyline build` wrote it).
    pub manifest: serde_json::Value,
    /// When it was deployed (ms since the Unix epoch).
    pub deployed_at_ms: u64,
    /// Who deployed it (user and host, as the deploying command saw them).
    pub by: String,
}

/// What one process serves, as it reported last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// The version it serves (`None`: none yet).
    pub version: Option<u64>,
    /// A newer version it could not load, and why (it keeps serving `version`).
    pub failed: Option<(u64, String)>,
    /// When it reported (ms since the Unix epoch).
    pub at_ms: u64,
}

/// The deploy keys over one connection; cheap to clone.
#[derive(Clone)]
pub struct Deploys {
    conn: Connection,
    keys: Keys,
}

impl std::fmt::Debug for Deploys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploys").field("prefix", &self.keys.prefix()).finish()
    }
}

fn protocol(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("{what}: {e}"))
}

impl Deploys {
    /// The deploy keys of `redis`.
    pub fn of(redis: &super::Redis) -> Self {
        Deploys { conn: redis.connection(), keys: redis.keys().clone() }
    }

    /// A new version number (never handed out twice).
    pub async fn next_version(&self) -> Result<u64> {
        Ok(::redis::cmd("INCR").arg(self.keys.deploy("seq")).query_async(&mut self.conn.clone()).await?)
    }

    /// Stores `artifact` and its record (the record last: a version is listed only once its
    /// artifact is whole).
    pub async fn put(&self, record: &VersionRecord, artifact: &[u8]) -> Result<()> {
        for (i, chunk) in artifact.chunks(CHUNK_BYTES).enumerate() {
            let _: () = ::redis::cmd("SET")
                .arg(self.keys.deploy_chunk(record.version, i as u32))
                .arg(chunk)
                .query_async(&mut self.conn.clone())
                .await?;
        }
        let json = serde_json::to_string(record).expect("a record serializes");
        let _: () = ::redis::cmd("HSET")
            .arg(self.keys.deploy("versions"))
            .arg(record.version)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Makes `version` the one the cluster serves.
    pub async fn set_current(&self, version: u64) -> Result<()> {
        let _: () = ::redis::cmd("SET")
            .arg(self.keys.deploy("current"))
            .arg(version)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The version the cluster serves, if any was deployed.
    pub async fn current(&self) -> Result<Option<u64>> {
        let v: Option<String> =
            ::redis::cmd("GET").arg(self.keys.deploy("current")).query_async(&mut self.conn.clone()).await?;
        v.map(|v| v.parse().map_err(|e| protocol("deploy:current", e))).transpose()
    }

    /// The record of `version`.
    pub async fn record(&self, version: u64) -> Result<Option<VersionRecord>> {
        let v: Option<String> = ::redis::cmd("HGET")
            .arg(self.keys.deploy("versions"))
            .arg(version)
            .query_async(&mut self.conn.clone())
            .await?;
        v.map(|v| serde_json::from_str(&v).map_err(|e| protocol("deploy:versions", e))).transpose()
    }

    /// Every version still stored, oldest first.
    pub async fn list(&self) -> Result<Vec<VersionRecord>> {
        let all: BTreeMap<u64, String> =
            ::redis::cmd("HGETALL").arg(self.keys.deploy("versions")).query_async(&mut self.conn.clone()).await?;
        all.values().map(|v| serde_json::from_str(v).map_err(|e| protocol("deploy:versions", e))).collect()
    }

    /// The artifact of `record`, or `None` when a chunk is missing.
    pub async fn artifact(&self, record: &VersionRecord) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(record.bytes as usize);
        for i in 0..record.chunks {
            let chunk: Option<Vec<u8>> = ::redis::cmd("GET")
                .arg(self.keys.deploy_chunk(record.version, i))
                .query_async(&mut self.conn.clone())
                .await?;
            match chunk {
                Some(c) => out.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Deletes the versions older than the newest `keep` (never `current`); their numbers.
    pub async fn prune(&self, keep: usize) -> Result<Vec<u64>> {
        let current = self.current().await?;
        let all = self.list().await?;
        let cut = all.len().saturating_sub(keep);
        let mut gone = Vec::new();
        for r in all.into_iter().take(cut).filter(|r| Some(r.version) != current) {
            let _: () = ::redis::cmd("HDEL")
                .arg(self.keys.deploy("versions"))
                .arg(r.version)
                .query_async(&mut self.conn.clone())
                .await?;
            for i in 0..r.chunks {
                let _: () = ::redis::cmd("DEL")
                    .arg(self.keys.deploy_chunk(r.version, i))
                    .query_async(&mut self.conn.clone())
                    .await?;
            }
            gone.push(r.version);
        }
        Ok(gone)
    }

    /// Records what process `name` serves.
    pub async fn report(&self, name: &str, served: &Served) -> Result<()> {
        let json = serde_json::to_string(served).expect("a report serializes");
        let _: () = ::redis::cmd("HSET")
            .arg(self.keys.deploy("served"))
            .arg(name)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// What every process reported, by name; reports older than `max_age_ms` (processes that
    /// are gone) are deleted and left out.
    pub async fn served(&self, now_ms: u64, max_age_ms: u64) -> Result<BTreeMap<String, Served>> {
        let all: BTreeMap<String, String> =
            ::redis::cmd("HGETALL").arg(self.keys.deploy("served")).query_async(&mut self.conn.clone()).await?;
        let mut out = BTreeMap::new();
        for (name, json) in all {
            let s: Served = serde_json::from_str(&json).map_err(|e| protocol("deploy:served", e))?;
            if now_ms.saturating_sub(s.at_ms) > max_age_ms {
                let _: () = ::redis::cmd("HDEL")
                    .arg(self.keys.deploy("served"))
                    .arg(&name)
                    .query_async(&mut self.conn.clone())
                    .await?;
            } else {
                out.insert(name, s);
            }
        }
        Ok(out)
    }

    /// Asks the processes that load `version` to move running rooms to it now, `per_second`
    /// rooms a second on each node (`None`: they move when they next start).
    pub async fn set_restart(&self, version: u64, per_second: Option<u32>) -> Result<()> {
        let key = self.keys.deploy("restart");
        let _: () = match per_second {
            Some(n) => {
                ::redis::cmd("SET").arg(key).arg(format!("{version} {n}")).query_async(&mut self.conn.clone()).await?
            }
            None => ::redis::cmd("DEL").arg(key).query_async(&mut self.conn.clone()).await?,
        };
        Ok(())
    }

    /// What [`Deploys::set_restart`] asked for `version`.
    pub async fn restart_for(&self, version: u64) -> Result<Option<u32>> {
        let v: Option<String> =
            ::redis::cmd("GET").arg(self.keys.deploy("restart")).query_async(&mut self.conn.clone()).await?;
        Ok(v.and_then(|v| {
            let (ver, rate) = v.split_once(' ')?;
            (ver.parse::<u64>().ok()? == version).then(|| rate.parse().ok()).flatten()
        }))
    }

    /// Publishes the value that shows which secret the cluster's processes hold.
    pub async fn set_secret_check(&self, check: &str) -> Result<()> {
        let _: () =
            ::redis::cmd("SET").arg(self.keys.deploy("check")).arg(check).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// The value [`Deploys::set_secret_check`] published, if a process did.
    pub async fn secret_check(&self) -> Result<Option<String>> {
        Ok(::redis::cmd("GET").arg(self.keys.deploy("check")).query_async(&mut self.conn.clone()).await?)
    }
}
