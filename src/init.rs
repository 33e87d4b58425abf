//! `partyline init`: creates a cluster in Redis, once.
//!
//! A cluster exists once Redis holds its cluster marker (see
//! [`partyline_cluster::redis::marker`]). Nodes never create it on their own (a Redis with no
//! marker and no live node may be a new cluster or one that lost its data): this command does,
//! or a node started with `--init-cluster`.
//!
//! Run by hand, once, it needs nothing more. But deployments run it again and again (compose at
//! every `up`, a Kubernetes Job at every apply after its clean-up), and an empty Redis looks the
//! same to it as to a node: created afresh, a Redis that lost its data would silently start the
//! cluster over, the very inference the marker exists to refuse. So with `--record` it keeps the
//! cluster's id in a file beside the deployment (not in Redis): once the record exists, a Redis
//! without that marker is a Redis that lost the cluster's data, and init refuses (exit status 1)
//! instead of creating anything. Starting over, empty, is then an explicit act: `--start-over`,
//! or deleting the record.
//!
//! On a Redis Cluster a primary can lose its data alone: its shards' copies of the marker are
//! gone while the marker is not. Nodes refuse to serve then; init says so (exit status 1) and
//! writes the copies back, starting those shards over empty, only with `--start-over`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use partyline::runtime::placement::SHARDS;
use partyline_cluster::redis::marker::{fresh_value, Claim, Persistence};
use partyline_cluster::redis::{redact, Redis, RedisConfig};
use tokio::time::Instant;

/// How often an unreachable Redis is tried again within `--wait`.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// What `partyline init` was asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// How long to keep trying to reach Redis.
    pub wait: Duration,
    /// The file keeping the id of the cluster created or found here (see the module docs).
    pub record: Option<PathBuf>,
    /// Start over, empty, on purpose: ignore a record Redis no longer matches, and write back
    /// the shard marker copies a Redis Cluster primary lost.
    pub start_over: bool,
}

/// Creates the cluster in `redis` unless it exists, and says which; refuses when the record
/// names a cluster Redis lost. Redis is tried for up to `wait` (it may still be starting, as in
/// a compose file or a Kubernetes Job started together with it).
pub async fn run(redis: RedisConfig, options: InitOptions) -> anyhow::Result<()> {
    let place = format!("Redis {}, prefix {}", redact(&redis.url), redis.prefix);
    let recorded = match &options.record {
        Some(path) => read_record(path)?,
        None => None,
    };
    let deadline = Instant::now() + options.wait;
    let (redis, found) = loop {
        match look(&redis).await {
            Ok(done) => break done,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "could not reach Redis yet; trying again");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => return Err(e).with_context(|| format!("could not initialize the cluster in {place}")),
        }
    };
    let marker = redis.marker();

    let claim = match (&recorded, found) {
        (Some(id), Some(v)) if *id == v => Claim::Existing(v),
        (Some(id), found) => {
            let record = options.record.as_deref().map(Path::display).map(|p| p.to_string()).unwrap_or_default();
            if !options.start_over {
                bail!("{}", lost_cluster(id, found.as_deref(), &record, &place));
            }
            eprintln!(
                "warning: --start-over: {record} names cluster {id}, which Redis no longer holds ({place}; it \
                 lost the cluster's data): starting over without it"
            );
            marker
                .claim(&fresh_value())
                .await
                .with_context(|| format!("could not write the cluster marker in {place}"))?
        }
        (None, _) => marker
            .claim(&fresh_value())
            .await
            .with_context(|| format!("could not write the cluster marker in {place}"))?,
    };
    match &claim {
        Claim::Created(id) => println!("created cluster {id} ({place})"),
        Claim::Existing(id) => println!("already initialized: cluster {id} ({place})"),
    }
    let id = claim.value();
    if let Some(path) = &options.record {
        if recorded.as_deref() != Some(id) {
            write_record(path, id)?;
        }
    }

    // Redis Cluster: a primary that lost its data alone.
    let lost = marker.lost_copies().await.with_context(|| format!("could not check the marker's copies in {place}"))?;
    if !lost.is_empty() {
        if !options.start_over {
            bail!(
                "Redis LOST THE DATA of {n} of cluster {id}'s {SHARDS} shards: their copies of the cluster marker are \
                 gone ({place}; a Redis Cluster primary restarted without persistence or failed over to a replica \
                 that missed writes). Nodes refuse to serve until they are back. Restore that primary from its AOF \
                 or a backup (nodes resume by themselves; docs/operations.md, \"Redis lost its data\"), or start \
                 those {n} shards over, EMPTY, on purpose: run this again with --start-over",
                n = lost.len()
            );
        }
        let restored = marker
            .restore_copies(id)
            .await
            .with_context(|| format!("could not write the marker's copies back in {place}"))?;
        eprintln!(
            "warning: --start-over: Redis had lost the data of {restored} of cluster {id}'s {SHARDS} shards; their \
             marker copies are written back, so those shards start over, EMPTY (running nodes serve them again \
             within a few heartbeats)"
        );
    }

    // Nodes still serving a cluster whose data Redis lost keep refusing: they need a restart.
    let live = redis.membership().live().await.unwrap_or_default();
    let stale: Vec<&str> =
        live.iter().filter(|n| !n.cluster.is_empty() && n.cluster != id).map(|n| n.id.as_str()).collect();
    if !stale.is_empty() {
        eprintln!(
            "warning: {} live node(s) still serve a cluster whose data Redis lost ({}): they refuse rooms \
             until restarted; restart them to serve cluster {id}",
            stale.len(),
            stale.join(", ")
        );
    }
    match marker.persistence().await {
        Persistence::None => eprintln!(
            "warning: Redis has no persistence: a Redis restart loses the cluster (nodes then refuse to serve \
             until it is restored or initialized again); use AOF (appendonly yes)"
        ),
        Persistence::Snapshots(_) => eprintln!(
            "warning: Redis persists by snapshots only: a Redis crash loses every write since the last snapshot; \
             use AOF (appendonly yes)"
        ),
        Persistence::Aof(_) | Persistence::Unknown => {}
    }
    Ok(())
}

/// Connects and reads the marker.
async fn look(config: &RedisConfig) -> anyhow::Result<(Redis, Option<String>)> {
    let redis = Redis::connect(config.clone()).await.context("could not connect")?;
    let found = redis.marker().get().await.context("could not read the cluster marker")?;
    Ok((redis, found))
}

/// Why init refuses when the record names cluster `id` and Redis holds `found` instead.
fn lost_cluster(id: &str, found: Option<&str>, record: &str, place: &str) -> String {
    let what = match found {
        None => "Redis has no cluster marker".to_string(),
        Some(other) => format!("Redis holds another cluster, {other}"),
    };
    format!(
        "Redis LOST the data of cluster {id}: {record} records that this deployment initialized cluster {id}, but \
         {what} ({place}): it restarted without persistence, lost its volume, or failed over to a replica that \
         missed writes. Refusing to create a cluster, which would start every room over, EMPTY. Restore Redis from \
         its AOF or a backup (docs/operations.md, \"Redis lost its data\"); or, to start over on purpose, run this \
         again with --start-over (or delete {record})"
    )
}

/// The cluster id in the record at `path`, if there is one.
fn read_record(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim() {
            "" => bail!(
                "the init record {} is empty: it should hold a cluster id; delete it to record the cluster Redis \
                 holds now",
                path.display()
            ),
            id => Ok(Some(id.to_string())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read the init record {}", path.display())),
    }
}

/// Writes `id` to the record at `path`, whole or not at all (a temporary file renamed over it):
/// a half-written record would make the next run refuse.
fn write_record(path: &Path, id: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced (best effort).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().with_context(|| {
        format!(
            "cluster {id} is initialized, but its record {} could not be written (without it a later run cannot \
             tell a Redis that lost its data from a new one)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/cluster-id");
        assert_eq!(read_record(&path).unwrap(), None, "no record yet");
        write_record(&path, "abc").unwrap();
        assert_eq!(read_record(&path).unwrap().as_deref(), Some("abc"));
        write_record(&path, "def").unwrap();
        assert_eq!(read_record(&path).unwrap().as_deref(), Some("def"));
        assert!(!dir.path().join("deep/er/cluster-id.tmp").exists());
        std::fs::write(&path, "\n").unwrap();
        let empty = read_record(&path).unwrap_err().to_string();
        assert!(empty.contains("empty") && empty.contains("delete it"), "{empty}");
    }

    #[test]
    fn the_refusal_names_the_cluster_and_both_ways_out() {
        let text = lost_cluster("c-1", None, "/r/cluster-id", "Redis redis://r:6379, prefix pl");
        for words in ["LOST", "c-1", "no cluster marker", "Restore Redis", "--start-over", "delete /r/cluster-id"] {
            assert!(text.contains(words), "{words:?} is not in: {text}");
        }
        let other = lost_cluster("c-1", Some("c-2"), "/r/cluster-id", "Redis");
        assert!(other.contains("another cluster, c-2"), "{other}");
    }
}
