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
//! Grants and releases are published on `pl:owners` (message: the shard number). Times are only
//! compared on Redis's clock: a lease is free once Redis has expired it. The holder must stop
//! using the lease at its own self-fence deadline (renew *sent* + TTL − margin), but safety does
//! not depend on it: every write is checked against the lease epoch by Redis.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value};

use super::keys::Keys;
use super::{Error, Result};

/// KEYS: lease, epoch counter. ARGV: owner, inc, addr, ttl ms, owners channel, shard.
/// Returns `{'granted', epoch}` or `{'held', owner, addr, epoch}`.
const ACQUIRE: &str = r#"
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
    conn: ConnectionManager,
    keys: Keys,
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
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        Leases { conn, keys }
    }

    /// Tries to take the lease of `shard` for `ttl`, announcing `node_id` and `addr` as its
    /// owner. A lease our incarnation `inc` already holds is granted again under a new epoch,
    /// which fences whatever still writes under the old one.
    pub async fn acquire(&self, shard: u16, node_id: &str, inc: &str, addr: &str, ttl: Duration) -> Result<Acquire> {
        let reply: Vec<String> = ACQUIRE_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.epoch(shard))
            .arg(node_id)
            .arg(inc)
            .arg(addr)
            .arg(ttl_ms(ttl))
            .arg(self.keys.owners_channel())
            .arg(shard)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match reply.as_slice() {
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

    /// [`Leases::renew`] for many shards in one round trip (one pipeline); the answers are in the
    /// order of `leases`.
    pub async fn renew_many(&self, leases: &[(u16, u64)], inc: &str, ttl: Duration) -> Result<Vec<bool>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = ttl_ms(ttl);
        let mut pipe = ::redis::pipe();
        // Loading first makes the EVALSHAs after it safe even right after a Redis restart (which
        // forgets scripts); for a script already loaded it costs one hash lookup.
        pipe.cmd("SCRIPT").arg("LOAD").arg(RENEW).ignore();
        for (shard, epoch) in leases {
            pipe.cmd("EVALSHA")
                .arg(RENEW_SCRIPT.get_hash())
                .arg(1)
                .arg(self.keys.lease(*shard))
                .arg(inc)
                .arg(*epoch)
                .arg(ttl);
        }
        let answers: Vec<i64> = pipe.query_async(&mut self.conn.clone()).await?;
        if answers.len() != leases.len() {
            return Err(Error::Protocol(format!("renew_many: {} answers for {} leases", answers.len(), leases.len())));
        }
        Ok(answers.into_iter().map(|a| a == 1).collect())
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
        let mut pipe = ::redis::pipe();
        for shard in shards {
            pipe.cmd("HMGET").arg(self.keys.lease(*shard)).arg(&["owner", "inc", "addr", "epoch"]);
        }
        let rows: Vec<Vec<Value>> = pipe.query_async(&mut self.conn.clone()).await?;
        rows.into_iter().map(parse_info).collect()
    }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::redis::testing::RedisServer;
    use crate::redis::{Redis, RedisConfig};

    async fn connect(server: &RedisServer) -> Redis {
        Redis::connect(RedisConfig::new(server.url())).await.unwrap()
    }

    fn granted(a: Acquire) -> u64 {
        match a {
            Acquire::Granted { epoch } => epoch,
            held => panic!("expected a grant, got {held:?}"),
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn acquire_grants_then_reports_the_holder() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
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

    #[tokio::test]
    async fn epochs_strictly_increase_and_are_floored_by_redis_time() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
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
        // Shards have independent counters, but every epoch is time-floored.
        let other = granted(leases.acquire(5, "n", "z", "a", LONG).await.unwrap());
        assert!(other >= a);
    }

    #[tokio::test]
    async fn renew_only_by_the_holder_and_only_while_held() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
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

    #[tokio::test]
    async fn release_only_by_the_holder() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
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
    }

    #[tokio::test]
    async fn renew_many_answers_per_shard_in_one_pipeline() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
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
        let before = evalsha_calls(&redis).await;
        let got = leases.renew_many(&ask, "me", Duration::from_secs(30)).await.unwrap();
        let mut want = vec![true; mine.len()];
        want.extend([false, false, false]);
        assert_eq!(got, want);
        assert_eq!(evalsha_calls(&redis).await - before, ask.len() as u64, "one script call per shard");
        assert!(leases.renew_many(&[], "me", LONG).await.unwrap().is_empty());

        // Right after a restart Redis has forgotten the scripts: renew_many still answers.
        let mut server = server;
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match leases.renew_many(&ask[..2], "me", LONG).await {
                Ok(got) => {
                    assert_eq!(got, vec![false, false], "the leases died with the server");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `INFO commandstats` calls of EVALSHA so far.
    async fn evalsha_calls(redis: &Redis) -> u64 {
        let info: String = ::redis::cmd("INFO").arg("commandstats").query_async(&mut redis.connection()).await.unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Run with `cargo test -p partyline-node redis::lease::tests::renew_throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, not a check"]
    async fn renew_throughput() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let leases = redis.leases();
        let mut held = Vec::new();
        for shard in 0..partyline::placement::SHARDS {
            held.push((shard, granted(leases.acquire(shard, "me", "me", "x", LONG).await.unwrap())));
        }
        let start = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            assert!(leases.renew_many(&held, "me", LONG).await.unwrap().iter().all(|r| *r));
        }
        let per = start.elapsed() / rounds;
        println!("renew_many of all {} shards: {per:?} per round", held.len());
    }
}
