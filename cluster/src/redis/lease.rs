//! Shard leases: which node owns a virtual shard, and the epoch that fences its writes.
//!
//! A lease is the hash `pl:{s<shard>}:lease` (`owner`, `inc`, `epoch`, `addr`) with a `PEXPIRE`
//! TTL; all three operations are compare-and-set Lua scripts:
//!
//! - **acquire**: held by another incarnation → `Held`; otherwise (free, or held by our own
//!   incarnation from a grant the caller no longer uses) a **new** epoch
//!   `max(INCR pl:{s}:epoch, Redis TIME in ms)`, written back to the counter. An epoch is never
//!   granted twice: a room instance that may still be writing under an older grant of the same
//!   node is fenced like any zombie. Epochs strictly increase per shard, and even a counter lost
//!   in a Redis failover or restart cannot hand out a live zombie's epoch again (unless Redis's
//!   clock goes back).
//! - **renew**: `(inc, epoch)` must match, then `PEXPIRE`.
//! - **release**: `(inc, epoch)` must match, then `DEL`.
//!
//! Leases given the cluster marker ([`Leases::expecting_marker`]) grant a shard only while the
//! marker is there, in the same script: on one Redis server the marker itself (a Redis that came
//! back without its data grants nothing, even before the node's periodic marker check notices),
//! on a Redis Cluster the shard's copy of it (a shard whose copy is gone lives on a primary that
//! lost its data). Otherwise acquire fails with [`Error::Lost`].
//!
//! Grants and releases are published on `pl:owners` (message: the shard number), from inside the
//! scripts (an ordinary `PUBLISH`, which a Redis Cluster forwards to every node). Times are only
//! compared on Redis's clock: a lease is free once Redis has expired it. The holder must stop
//! using the lease at its own self-fence deadline (renew *sent* + TTL − margin), but safety does
//! not depend on it: every write is checked against the lease epoch by Redis.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};

use super::conn::{Connection, Replicas};
use super::keys::Keys;
use super::{Error, Result};

/// KEYS: lease, epoch counter[, the cluster marker or the shard's copy of it]. ARGV: owner, inc,
/// addr, ttl ms, owners channel, shard[, expected marker, `copy` or `marker`]. Returns
/// `{'granted', epoch}`, `{'held', owner, addr, epoch}` or `{'lost'}` (the marker is missing, or
/// on one Redis server holds another cluster's value). A shard's marker copy with another value
/// (left by a cluster started before on this Redis, or by a node that lost the race to create
/// the cluster) is taken over.
const ACQUIRE: &str = r#"
if KEYS[3] then
  local m = redis.call('GET', KEYS[3])
  if not m then return {'lost'} end
  if m ~= ARGV[7] then
    if ARGV[8] == 'copy' then redis.call('SET', KEYS[3], ARGV[7]) else return {'lost'} end
  end
end
local cur = redis.call('HMGET', KEYS[1], 'owner', 'inc', 'epoch', 'addr')
if cur[2] and cur[3] and cur[2] ~= ARGV[2] then
  return {'held', cur[1] or '', cur[4] or '', cur[3]}
end
local n = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = string.format('%.0f', math.max(n, ms))
redis.call('SET', KEYS[2], e)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'inc', ARGV[2], 'epoch', e, 'addr', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'granted', e}
"#;

/// KEYS: lease. ARGV: inc, epoch, ttl ms. Returns 1 if renewed, 0 if not ours.
const RENEW: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'inc', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS: lease. ARGV: inc, epoch, owners channel, shard. Returns 1 if released, 0 if not ours.
const RELEASE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'inc', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// KEYS: lease. ARGV: inc, epoch, owners channel, shard. Deletes the lease if that grant still
/// holds it (another node breaking a crashed holder's lease). Returns 1 if broken.
const BREAK: &str = RELEASE;

static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static BREAK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BREAK));

/// The outcome of [`Leases::acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours at this epoch, never granted before.
    Granted {
        /// Fence writes with this epoch.
        epoch: u64,
    },
    /// Another incarnation holds it.
    Held {
        /// The holder's node id.
        owner: String,
        /// The holder's gRPC address (where to redirect).
        addr: String,
        /// The holder's epoch.
        epoch: u64,
    },
}

/// A shard's current lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The holder's node id.
    pub owner: String,
    /// The holder's incarnation (node id + boot nonce).
    pub inc: String,
    /// The holder's gRPC address.
    pub addr: String,
    /// The lease epoch.
    pub epoch: u64,
}

/// Shard leases; see the module docs. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct Leases {
    conn: Connection,
    /// Where grants go (`conn` unless [`Leases::with_replicas`] says otherwise).
    writes: Connection,
    replicas: Replicas,
    keys: Keys,
    marker: Option<String>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("prefix", &self.keys.prefix()).finish_non_exhaustive()
    }
}

/// A TTL in ms as Redis wants it (at least 1).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn parse_epoch(s: &str) -> Result<u64> {
    s.parse().map_err(|_| Error::Protocol(format!("lease epoch {s:?} is not a number")))
}

impl Leases {
    /// Leases over `conn` with the key layout `keys` (usually from [`super::Redis::leases`]).
    pub fn new(conn: Connection, keys: Keys) -> Self {
        Leases { writes: conn.clone(), conn, keys, marker: None, replicas: Replicas::default() }
    }

    /// Sends acquisitions over `writes`, each followed by `WAIT` for `replicas` (see
    /// [`super::RedisConfig::min_replicas`]): an acquisition fewer replicas acknowledged in
    /// time fails (an error: the lease is not obtained; a grant that landed on the primary
    /// anyway expires, or is granted again to this incarnation under a new epoch).
    pub fn with_replicas(mut self, writes: Connection, replicas: Replicas) -> Self {
        self.writes = writes;
        self.replicas = replicas;
        self
    }

    /// These leases, granting a shard only while the cluster marker `marker` is in Redis (on a
    /// Redis Cluster, the shard's copy of it; see [`super::marker`]).
    pub fn expecting_marker(mut self, marker: &str) -> Self {
        self.marker = Some(marker.to_string());
        self
    }

    /// Tries to take the lease of `shard` for `ttl`, announcing `node_id` and `addr` as its
    /// owner. A lease our incarnation `inc` already holds is granted again under a new epoch,
    /// which fences whatever still writes under the old one.
    pub async fn acquire(&self, shard: u16, node_id: &str, inc: &str, addr: &str, ttl: Duration) -> Result<Acquire> {
        let mut script = ACQUIRE_SCRIPT.key(self.keys.lease(shard));
        script.key(self.keys.epoch(shard));
        script.arg(node_id).arg(inc).arg(addr).arg(ttl_ms(ttl)).arg(self.keys.owners_channel()).arg(shard);
        if let Some(marker) = &self.marker {
            if self.keys.is_cluster() {
                script.key(self.keys.shard_marker(shard)).arg(marker).arg("copy");
            } else {
                script.key(self.keys.cluster()).arg(marker).arg("marker");
            }
        }
        let reply: Vec<String> = script.invoke_async(&mut self.writes.replicated(self.replicas)).await?;
        match reply.as_slice() {
            [tag] if tag == "lost" => Err(Error::Lost(shard)),
            [tag, epoch] if tag == "granted" => Ok(Acquire::Granted { epoch: parse_epoch(epoch)? }),
            [tag, owner, addr, epoch] if tag == "held" => {
                Ok(Acquire::Held { owner: owner.clone(), addr: addr.clone(), epoch: parse_epoch(epoch)? })
            }
            other => Err(Error::Protocol(format!("acquire answered {other:?}"))),
        }
    }

    /// Extends the lease of `shard` by `ttl` if `(inc, epoch)` still hold it; `false` if not
    /// (expired, taken over, released): the caller must drop the shard at once.
    pub async fn renew(&self, shard: u16, inc: &str, epoch: u64, ttl: Duration) -> Result<bool> {
        let renewed: i64 = RENEW_SCRIPT
            .key(self.keys.lease(shard))
            .arg(inc)
            .arg(epoch)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// [`Leases::renew`] for many shards: one pipeline on one Redis server, concurrent commands
    /// to the primaries of a Redis Cluster. The answers are in the order of `leases`: `Some(held)`,
    /// or `None` for a lease whose Redis primary did not answer (its deadline must not move,
    /// but a primary that fails over does not take the other primaries' shards down with it).
    /// An error when no lease got an answer.
    pub async fn renew_many(&self, leases: &[(u16, u64)], inc: &str, ttl: Duration) -> Result<Vec<Option<bool>>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = ttl_ms(ttl);
        let cmds = |which: &[usize]| {
            which
                .iter()
                .map(|&i| {
                    let (shard, epoch) = leases[i];
                    let mut cmd = ::redis::cmd("EVALSHA");
                    cmd.arg(RENEW_SCRIPT.get_hash()).arg(1).arg(self.keys.lease(shard)).arg(inc).arg(epoch).arg(ttl);
                    cmd
                })
                .collect::<Vec<_>>()
        };
        let all: Vec<usize> = (0..leases.len()).collect();
        // Loading first makes the EVALSHAs after it safe even right after a Redis restart (which
        // forgets scripts): on one server it rides in the same pipeline, and for a script
        // already loaded it costs one hash lookup.
        let mut load = ::redis::cmd("SCRIPT");
        load.arg("LOAD").arg(RENEW);
        let mut answers = self.conn.each_after(Some(load), cmds(&all)).await;
        // A primary that took over meanwhile may not have the script: load it and send those
        // again.
        let missing: Vec<usize> = (0..answers.len()).filter(|&i| is_noscript(&answers[i])).collect();
        if !missing.is_empty() {
            ::redis::cmd("SCRIPT").arg("LOAD").arg(RENEW).query_async::<Value>(&mut self.conn.clone()).await?;
            for (i, answer) in missing.iter().zip(self.conn.each(cmds(&missing)).await) {
                answers[*i] = answer;
            }
        }
        if answers.iter().all(|a| a.is_err()) {
            return Err(answers.into_iter().find_map(|a| a.err()).expect("one answer per lease").into());
        }
        answers
            .into_iter()
            .map(|a| match a {
                Ok(Value::Int(n)) => Ok(Some(n == 1)),
                Ok(other) => Err(Error::Protocol(format!("renew answered {other:?}"))),
                Err(e) => {
                    tracing::debug!(error = %e, "a lease renewal got no answer");
                    Ok(None)
                }
            })
            .collect()
    }

    /// Gives up the lease of `shard` if `(inc, epoch)` hold it; `false` if they did not.
    pub async fn release(&self, shard: u16, inc: &str, epoch: u64) -> Result<bool> {
        let released: i64 = RELEASE_SCRIPT
            .key(self.keys.lease(shard))
            .arg(inc)
            .arg(epoch)
            .arg(self.keys.owners_channel())
            .arg(shard)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(released == 1)
    }

    /// Deletes the lease of `shard` if the grant `(inc, epoch)` still holds it: how another node
    /// takes over at once from a holder whose process is known to be gone, instead of waiting
    /// for the TTL. `false` if the lease changed meanwhile. Whoever acquires next gets a new
    /// epoch, so anything the old holder might still write is refused.
    pub async fn break_lease(&self, shard: u16, inc: &str, epoch: u64) -> Result<bool> {
        let broken: i64 = BREAK_SCRIPT
            .key(self.keys.lease(shard))
            .arg(inc)
            .arg(epoch)
            .arg(self.keys.owners_channel())
            .arg(shard)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(broken == 1)
    }

    /// The current lease of `shard`, if any.
    pub async fn owner(&self, shard: u16) -> Result<Option<LeaseInfo>> {
        Ok(self.owners(&[shard]).await?.pop().flatten())
    }

    /// The current leases of `shards` in one round trip, in the same order.
    pub async fn owners(&self, shards: &[u16]) -> Result<Vec<Option<LeaseInfo>>> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = shards
            .iter()
            .map(|shard| {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(self.keys.lease(*shard)).arg(&["owner", "inc", "addr", "epoch"]);
                cmd
            })
            .collect();
        self.conn
            .each(cmds)
            .await
            .into_iter()
            .map(|row| {
                parse_info(::redis::from_redis_value(row?).map_err(|e| Error::Protocol(format!("lease HMGET: {e}")))?)
            })
            .collect()
    }
}

fn is_noscript(answer: &::redis::RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if matches!(e.kind(), ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript)))
}

/// One `HMGET owner inc addr epoch` row; `None` when the lease does not exist.
fn parse_info(row: Vec<Value>) -> Result<Option<LeaseInfo>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    let fields: Vec<Option<String>> = row.iter().map(text).collect();
    match fields.as_slice() {
        [owner, inc, addr, Some(epoch)] if inc.is_some() => Ok(Some(LeaseInfo {
            owner: owner.clone().unwrap_or_default(),
            inc: inc.clone().unwrap_or_default(),
            addr: addr.clone().unwrap_or_default(),
            epoch: parse_epoch(epoch)?,
        })),
        [_, _, _, _] => Ok(None),
        _ => Err(Error::Protocol(format!("lease HMGET answered {} fields", fields.len()))),
    }
}

/// Lease timing. The node stops serving a shard `fence_after` after the *send* time of its last
/// successful renewal, which is before Redis can expire the lease (`ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lease time to live in Redis.
    pub ttl: Duration,
    /// How often owned leases are renewed.
    pub renew_every: Duration,
    /// Self-fence delay after the last successful renewal was sent.
    pub fence_after: Duration,
}

impl LeaseTiming {
    /// The production profile: TTL 10 s, renewed every 2 s, self-fence at 8 s.
    pub const STANDARD: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_secs(2),
        fence_after: Duration::from_secs(8),
    };
    /// The fast profile for tests and small clusters: TTL 3 s, renewed every 500 ms, self-fence
    /// at 2.4 s.
    pub const FAST: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
        fence_after: Duration::from_millis(2400),
    };

    /// Checks the timing is coherent.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.fence_after >= self.ttl {
            return Err(format!("self-fence ({:?}) must come before the lease TTL ({:?})", self.fence_after, self.ttl));
        }
        if self.renew_every * 2 > self.fence_after {
            return Err(format!(
                "renewing every {:?} leaves too little margin before the self-fence at {:?}",
                self.renew_every, self.fence_after
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::redis::testing::{self, RedisCluster, RedisServer};
    use crate::redis::Redis;

    fn granted(a: Acquire) -> u64 {
        match a {
            Acquire::Granted { epoch } => epoch,
            held => panic!("expected a grant, got {held:?}"),
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    // Each check runs against one Redis server (a test each) and against a 3-primary Redis
    // Cluster (all of them in one test, each under its own key prefix).

    async fn acquire_grants_then_reports_the_holder(redis: Redis) {
        let leases = redis.leases();
        let e = granted(leases.acquire(7, "node-a", "node-a#1", "10.0.0.1:7000", LONG).await.unwrap());
        assert_eq!(
            leases.owner(7).await.unwrap(),
            Some(LeaseInfo { owner: "node-a".into(), inc: "node-a#1".into(), addr: "10.0.0.1:7000".into(), epoch: e })
        );
        let held = leases.acquire(7, "node-b", "node-b#1", "10.0.0.2:7000", LONG).await.unwrap();
        assert_eq!(held, Acquire::Held { owner: "node-a".into(), addr: "10.0.0.1:7000".into(), epoch: e });
        // The same node after a reboot is another incarnation: held too.
        assert!(matches!(leases.acquire(7, "node-a", "node-a#2", "x", LONG).await.unwrap(), Acquire::Held { .. }));
        // Our own incarnation gets it again, under a new epoch: a room instance that may still
        // write under the old grant is fenced (an epoch is never granted twice).
        let e2 = granted(leases.acquire(7, "node-a", "node-a#1", "10.0.0.1:7000", LONG).await.unwrap());
        assert!(e2 > e, "re-grant {e2} after {e}");
        assert!(!leases.renew(7, "node-a#1", e, LONG).await.unwrap(), "the old grant is dead");
        assert_eq!(leases.owner(8).await.unwrap(), None);
        let all = leases.owners(&[8, 7, 9]).await.unwrap();
        assert_eq!(all.iter().map(|o| o.as_ref().map(|i| i.epoch)).collect::<Vec<_>>(), vec![None, Some(e2), None]);
    }

    async fn epochs_strictly_increase_and_are_floored_by_redis_time(redis: Redis) {
        let leases = redis.leases();
        let mut last = 0;
        for i in 0..5 {
            let before = redis.time_ms().await.unwrap();
            let inc = format!("n#{i}");
            let e = granted(leases.acquire(3, "n", &inc, "a", LONG).await.unwrap());
            assert!(e > last, "epoch {e} after {last}");
            assert!(e >= before, "epoch {e} below Redis TIME {before}");
            assert!(leases.release(3, &inc, e).await.unwrap());
            last = e;
        }
        // Acquisitions within one millisecond still get distinct epochs (the counter part).
        let a = granted(leases.acquire(4, "n", "x", "a", LONG).await.unwrap());
        assert!(leases.release(4, "x", a).await.unwrap());
        let b = granted(leases.acquire(4, "n", "y", "a", LONG).await.unwrap());
        assert!(b > a);
        // Shards have independent counters, but every epoch is time-floored (on a cluster, by
        // the clock of the primary that serves the shard: the test primaries share one clock).
        let other = granted(leases.acquire(5, "n", "z", "a", LONG).await.unwrap());
        assert!(other >= a);
    }

    async fn renew_only_by_the_holder_and_only_while_held(redis: Redis) {
        let leases = redis.leases();
        let e = granted(leases.acquire(1, "a", "a#1", "x", Duration::from_millis(400)).await.unwrap());
        assert!(!leases.renew(1, "b#1", e, LONG).await.unwrap(), "another incarnation renewed");
        assert!(!leases.renew(1, "a#1", e + 1, LONG).await.unwrap(), "a wrong epoch renewed");
        assert!(leases.renew(1, "a#1", e, LONG).await.unwrap());
        // The renewal took: the lease outlives its first 400 ms TTL.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(leases.owner(1).await.unwrap().map(|i| i.epoch), Some(e));
        // Once it expired, renew fails.
        assert!(leases.renew(1, "a#1", e, Duration::from_millis(300)).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while leases.owner(1).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "lease never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!leases.renew(1, "a#1", e, LONG).await.unwrap());
        assert_eq!(leases.owner(1).await.unwrap(), None, "renew must not resurrect an expired lease");
    }

    async fn release_only_by_the_holder(redis: Redis) {
        let leases = redis.leases();
        let e = granted(leases.acquire(2, "a", "a#1", "x", LONG).await.unwrap());
        assert!(!leases.release(2, "b#1", e).await.unwrap());
        assert!(!leases.release(2, "a#1", e - 1).await.unwrap());
        assert!(leases.owner(2).await.unwrap().is_some());
        assert!(leases.release(2, "a#1", e).await.unwrap());
        assert_eq!(leases.owner(2).await.unwrap(), None);
        assert!(!leases.release(2, "a#1", e).await.unwrap(), "released twice");
        let e2 = granted(leases.acquire(2, "b", "b#1", "y", LONG).await.unwrap());
        assert!(e2 > e);
        // Breaking is the same compare-and-delete, by another node.
        assert!(!leases.break_lease(2, "b#1", e2 + 1).await.unwrap());
        assert!(leases.break_lease(2, "b#1", e2).await.unwrap());
        assert_eq!(leases.owner(2).await.unwrap(), None);
    }

    /// Returns the leases asked for, for the restart part of the single-server test.
    async fn renew_many_answers_per_shard(redis: Redis) -> Vec<(u16, u64)> {
        let leases = redis.leases();
        let mut mine = Vec::new();
        for shard in 0..300u16 {
            let inc = if shard % 3 == 0 { "other" } else { "me" };
            let e = granted(leases.acquire(shard, inc, inc, "x", LONG).await.unwrap());
            if shard % 3 != 0 {
                mine.push((shard, e));
            }
        }
        let mut ask: Vec<(u16, u64)> = mine.clone();
        ask.push((0, 1)); // held by another
        ask.push((1000, 1)); // no lease
        let stale = mine[0];
        ask.push((stale.0, stale.1 + 1)); // ours, wrong epoch
        let before = testing::command_calls(&redis, "evalsha").await;
        let got = leases.renew_many(&ask, "me", Duration::from_secs(30)).await.unwrap();
        let mut want = vec![Some(true); mine.len()];
        want.extend([Some(false), Some(false), Some(false)]);
        assert_eq!(got, want);
        let calls = testing::command_calls(&redis, "evalsha").await - before;
        assert_eq!(calls, ask.len() as u64, "one script call per shard");
        assert!(leases.renew_many(&[], "me", LONG).await.unwrap().is_empty());
        ask
    }

    async fn single(prefix: &str) -> (RedisServer, Redis) {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), prefix).await;
        (server, redis)
    }

    #[tokio::test]
    async fn acquire_grants_then_reports_the_holder_single() {
        let (_server, redis) = single("pl").await;
        acquire_grants_then_reports_the_holder(redis).await;
    }

    #[tokio::test]
    async fn epochs_strictly_increase_and_are_floored_by_redis_time_single() {
        let (_server, redis) = single("pl").await;
        epochs_strictly_increase_and_are_floored_by_redis_time(redis).await;
    }

    #[tokio::test]
    async fn renew_only_by_the_holder_and_only_while_held_single() {
        let (_server, redis) = single("pl").await;
        renew_only_by_the_holder_and_only_while_held(redis).await;
    }

    #[tokio::test]
    async fn release_only_by_the_holder_single() {
        let (_server, redis) = single("pl").await;
        release_only_by_the_holder(redis).await;
    }

    #[tokio::test]
    async fn renew_many_answers_per_shard_in_one_pipeline_single() {
        let (mut server, redis) = single("pl").await;
        let ask = renew_many_answers_per_shard(redis.clone()).await;
        // Right after a restart Redis has forgotten the scripts: renew_many still answers.
        server.restart();
        let leases = redis.leases();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match leases.renew_many(&ask[..2], "me", LONG).await {
                Ok(got) => {
                    assert_eq!(got, vec![Some(false), Some(false)], "the leases died with the server");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test]
    async fn the_lease_checks_pass_on_a_redis_cluster() {
        let cluster = RedisCluster::start(3);
        let url = cluster.url();
        let redis = |prefix: &'static str| testing::connect(&url, prefix);
        tokio::join!(
            async { acquire_grants_then_reports_the_holder(redis("c1").await).await },
            async { epochs_strictly_increase_and_are_floored_by_redis_time(redis("c2").await).await },
            async { renew_only_by_the_holder_and_only_while_held(redis("c3").await).await },
            async { release_only_by_the_holder(redis("c4").await).await },
        );
        // Alone, so the script call count is its own.
        renew_many_answers_per_shard(redis("c5").await).await;
        // The 300 leases are spread over the three primaries.
        for port in cluster.primaries() {
            let leases = cluster.keys_on(port, "c5:*:lease");
            assert!(leases.len() > 50, "primary {port} holds {} of the 300 leases", leases.len());
        }
    }

    #[tokio::test]
    async fn a_primary_that_does_not_answer_fails_only_its_own_renewals() {
        let cluster = RedisCluster::start(3);
        let redis = testing::connect(&cluster.url(), "pl").await;
        let leases = redis.leases();
        let mut held = Vec::new();
        for shard in 0..60u16 {
            held.push((shard, granted(leases.acquire(shard, "me", "me", "x", LONG).await.unwrap())));
        }
        let stalled = cluster.primary_of(cluster.slot_of(&redis.keys().lease(0)));
        cluster.pause(stalled);
        let got = leases.renew_many(&held, "me", LONG).await.unwrap();
        cluster.resume(stalled);
        for ((shard, _), answer) in held.iter().zip(&got) {
            let on_stalled = cluster.primary_of(cluster.slot_of(&redis.keys().lease(*shard))) == stalled;
            assert_eq!(*answer, if on_stalled { None } else { Some(true) }, "shard {shard}");
        }
        assert!(got.iter().filter(|a| a.is_none()).count() >= 5, "{got:?}");
        // Once it answers again, every renewal goes through.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = leases.renew_many(&held, "me", LONG).await.unwrap();
            if got.iter().all(|a| *a == Some(true)) {
                break;
            }
            assert!(Instant::now() < deadline, "{got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run with `cargo test -p partyline-cluster redis::lease::tests::renew_throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, not a check"]
    async fn renew_throughput() {
        let server = RedisServer::start();
        let cluster = RedisCluster::start(3);
        for (what, url) in [("one Redis", server.url()), ("a 3-primary Redis Cluster", cluster.url())] {
            let redis = testing::connect(&url, "pl").await;
            let leases = redis.leases();
            let mut held = Vec::new();
            for shard in 0..partyline::runtime::placement::SHARDS {
                held.push((shard, granted(leases.acquire(shard, "me", "me", "x", LONG).await.unwrap())));
            }
            let start = Instant::now();
            let rounds = 20;
            for _ in 0..rounds {
                assert!(leases.renew_many(&held, "me", LONG).await.unwrap().iter().all(|r| *r == Some(true)));
            }
            let per = start.elapsed() / rounds;
            println!("renew_many of all {} shards on {what}: {per:?} per round", held.len());
        }
    }
}
