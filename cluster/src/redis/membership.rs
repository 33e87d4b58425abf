//! Cluster membership in Redis: a hint for routing and placement, never a grant of ownership.
//!
//! Each node writes `pl:node:<id>` (JSON [`NodeInfo`], `PX` = TTL) every second or so and keeps
//! its id in the set `pl:members`; a node is live while its key exists. Joins, changes and
//! leaves are published on `pl:members`; lease grants and releases on `pl:owners`.
//! [`Membership::subscribe`] turns both channels into a stream of [`Change`]s for gateways and
//! nodes, which also re-read everything periodically (pub/sub is at-most-once).
//!
//! On a Redis Cluster the node keys and the member set share the hash tag `{m}` (one slot, so
//! the scripts below run unchanged), and the channels are ordinary pub/sub channels: Redis
//! Cluster forwards every `PUBLISH` to all its nodes, so a subscription to any one node sees
//! every event (and a subscription whose node goes away reconnects to another one). Sharded
//! pub/sub (`SSUBSCRIBE`) would not fit: every gateway and node wants every event, and the
//! events (joins, lease grants) are few.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::conn::{Connection, PubSubSource};
use super::keys::Keys;
use super::{Error, Result};
use futures::future::BoxFuture;

/// KEYS: node key, members set. ARGV: id, JSON, ttl ms, members channel.
/// Returns 1 if the node was new or changed (and was announced), else 0.
const HEARTBEAT: &str = r#"
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 or old ~= ARGV[2] then
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: members set. ARGV: node key prefix. Returns the JSON of every live member, removing the
/// ids whose node key has expired. (The node keys are not declared: on a Redis Cluster they
/// share the member set's slot.)
const LIVE: &str = r#"
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v else redis.call('SREM', KEYS[1], id) end
end
return out
"#;

/// KEYS: node key, members set. ARGV: id, members channel. Returns 1 if the node was known.
const LEAVE: &str = r#"
local n = redis.call('DEL', KEYS[1]) + redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return n > 0 and 1 or 0
"#;

static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT));
static LIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIVE));
static LEAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LEAVE));

/// How often a node with leases of `lease` writes its membership record: every second, or
/// four times per lease TTL when that is shorter (`fast`: every 750 ms).
pub fn heartbeat_for(lease: &super::LeaseTiming) -> Duration {
    Duration::from_secs(1).min(lease.ttl / 4)
}

/// How long a node's membership record lives with leases of `lease`: 5 s, but never longer than
/// the lease TTL (`fast`: 3 s). A node that stalls or is cut from Redis leaves the gateways'
/// view no later than its leases can expire, so its clients are not sent back to it after
/// another node could have taken its rooms.
pub fn member_ttl_for(lease: &super::LeaseTiming) -> Duration {
    Duration::from_secs(5).min(lease.ttl)
}

/// What a node announces about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Stable node id (the key of rendezvous hashing).
    pub id: String,
    /// Incarnation: node id + boot nonce, new at every start.
    pub inc: String,
    /// gRPC address gateways and nodes reach it at.
    pub addr: String,
    /// Shutting down: place no new shards on it.
    #[serde(default)]
    pub draining: bool,
    /// The cluster marker this node serves under (see [`super::marker`]); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// The node found that Redis lost the cluster's data and refuses to serve rooms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refusing: bool,
}

/// One notification from [`Membership::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node joined, changed (e.g. started draining) or left: re-read [`Membership::live`].
    Members(String),
    /// A shard's lease was granted or released: re-read its owner.
    Owner(u16),
    /// Events may have been missed (the subscription reconnected, or the receiver lagged):
    /// re-read everything.
    Resync,
}

/// Membership; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    pubsub: PubSubSource,
    conn: Connection,
    keys: Keys,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("prefix", &self.keys.prefix()).finish_non_exhaustive()
    }
}

/// Capacity of a subscription's channel; past it, events are replaced by one [`Change::Resync`].
const SUBSCRIPTION_BUFFER: usize = 1024;

impl Membership {
    /// Membership over `conn`; `pubsub` opens the pub/sub connections (usually from
    /// [`super::Redis::membership`]).
    pub fn new(pubsub: PubSubSource, conn: Connection, keys: Keys) -> Self {
        Membership { pubsub, conn, keys }
    }

    /// Writes `node`'s record with `ttl` and keeps it in the member set; announces it when it is
    /// new or changed. Returns whether it was announced.
    pub async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<bool> {
        let json = serde_json::to_string(node).map_err(|e| Error::Protocol(format!("encoding NodeInfo: {e}")))?;
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let announced: i64 = HEARTBEAT_SCRIPT
            .key(self.keys.node(&node.id))
            .key(self.keys.members())
            .arg(&node.id)
            .arg(json)
            .arg(ttl)
            .arg(self.keys.members_channel())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(announced == 1)
    }

    /// Removes node `id` at once (graceful shutdown) and announces it. Returns whether it was known.
    pub async fn leave(&self, id: &str) -> Result<bool> {
        let known: i64 = LEAVE_SCRIPT
            .key(self.keys.node(id))
            .key(self.keys.members())
            .arg(id)
            .arg(self.keys.members_channel())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(known == 1)
    }

    /// Node `id`'s record while it lives: `None` once it expired or the node left (its
    /// incarnation says which process wrote it).
    pub async fn record(&self, id: &str) -> Result<Option<NodeInfo>> {
        let raw: Option<Vec<u8>> =
            ::redis::cmd("GET").arg(self.keys.node(id)).query_async(&mut self.conn.clone()).await?;
        raw.map(|json| {
            serde_json::from_slice::<NodeInfo>(&json)
                .map_err(|e| Error::Protocol(format!("node record {:?}: {e}", String::from_utf8_lossy(&json))))
        })
        .transpose()
    }

    /// The live nodes (those whose record has not expired), sorted by id; prunes the others
    /// from the member set.
    #[inline(never)]
    pub fn live(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>>> {
        Box::pin(self.live_unboxed())
    }

    async fn live_unboxed(&self) -> Result<Vec<NodeInfo>> {
        let raw: Vec<Vec<u8>> =
            LIVE_SCRIPT.key(self.keys.members()).arg(self.keys.node("")).invoke_async(&mut self.conn.clone()).await?;
        let mut nodes = raw
            .iter()
            .map(|json| {
                serde_json::from_slice::<NodeInfo>(json)
                    .map_err(|e| Error::Protocol(format!("node record {:?}: {e}", String::from_utf8_lossy(json))))
            })
            .collect::<Result<Vec<_>>>()?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Subscribes to membership and lease changes on a dedicated pub/sub connection. Returns once
    /// subscribed, so every change published after this returns is delivered (or covered by a
    /// [`Change::Resync`]). A background task reconnects when the connection drops (sending
    /// `Resync` once it is back) and stops when the receiver is dropped.
    #[inline(never)]
    pub fn subscribe(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Change>>> {
        Box::pin(self.subscribe_unboxed())
    }

    async fn subscribe_unboxed(&self) -> Result<mpsc::Receiver<Change>> {
        let channels = [self.keys.members_channel(), self.keys.owners_channel()];
        let pubsub = open_pubsub(&self.pubsub, &channels).await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        tokio::spawn(pump(self.pubsub.clone(), channels, pubsub, tx));
        Ok(rx)
    }
}

async fn open_pubsub(source: &PubSubSource, channels: &[String; 2]) -> Result<::redis::aio::PubSub> {
    let mut pubsub = source.open().await?;
    pubsub.subscribe(channels.as_slice()).await?;
    Ok(pubsub)
}

/// Forwards messages to `tx`, reconnecting as needed, until `tx` is closed.
async fn pump(source: PubSubSource, channels: [String; 2], first: ::redis::aio::PubSub, tx: mpsc::Sender<Change>) {
    let [members, owners] = &channels;
    let mut pubsub = Some(first);
    let mut lagged = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut stream = match pubsub.take() {
            Some(p) => p.into_on_message(),
            None => {
                let opened = tokio::select! {
                    opened = open_pubsub(&source, &channels) => opened,
                    _ = tx.closed() => return,
                };
                match opened {
                    Ok(p) => {
                        backoff = Duration::from_millis(100);
                        lagged = true; // anything published while we were away is lost
                        p.into_on_message()
                    }
                    Err(e) => {
                        tracing::debug!("membership subscription: reconnect failed: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = tx.closed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
        };
        loop {
            tokio::select! {
                permit = tx.reserve(), if lagged => match permit {
                    Ok(permit) => {
                        permit.send(Change::Resync);
                        lagged = false;
                    }
                    Err(_) => return,
                },
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(change) = to_change(&msg, members, owners) else { continue };
                    if lagged {
                        continue; // the pending Resync covers it
                    }
                    match tx.try_send(change) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => lagged = true,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                _ = tx.closed() => return,
            }
        }
        tracing::debug!("membership subscription: connection lost, reconnecting");
    }
}

/// The change a pub/sub message announces, `None` for other channels.
fn to_change(msg: &::redis::Msg, members: &str, owners: &str) -> Option<Change> {
    let payload: String = msg.get_payload().unwrap_or_default();
    let channel = msg.get_channel_name();
    if channel == owners {
        Some(payload.parse().map_or(Change::Resync, Change::Owner))
    } else if channel == members {
        Some(Change::Members(payload))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::redis::testing::{self, RedisCluster, RedisServer};
    use crate::redis::Redis;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            inc: format!("{id}#1"),
            addr: format!("127.0.0.1:{}", 7000 + id.len()),
            ..NodeInfo::default()
        }
    }

    async fn connect(server: &RedisServer) -> Redis {
        testing::connect(&server.url(), "pl").await
    }

    /// The next change other than `Resync`, within a generous bound.
    async fn next_change(rx: &mut mpsc::Receiver<Change>) -> Change {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Change::Resync)) => continue,
                Ok(Some(change)) => return change,
                Ok(None) => panic!("subscription ended"),
                Err(_) => panic!("no change within 20 s"),
            }
        }
    }

    // Each check runs against one Redis server (a test each) and against a 3-primary Redis
    // Cluster (all in one test, each under its own key prefix).

    async fn heartbeat_lists_leave_removes(redis: Redis) {
        let m = redis.membership();
        let ttl = Duration::from_secs(30);
        assert!(m.live().await.unwrap().is_empty());
        assert!(m.heartbeat(&node("b"), ttl).await.unwrap(), "a new node is announced");
        assert!(m.heartbeat(&node("a"), ttl).await.unwrap());
        assert!(!m.heartbeat(&node("a"), ttl).await.unwrap(), "an unchanged heartbeat is not announced");
        assert_eq!(m.live().await.unwrap(), vec![node("a"), node("b")]);
        assert_eq!(m.record("a").await.unwrap(), Some(node("a")), "one node's live record");
        assert_eq!(m.record("nobody").await.unwrap(), None);
        let draining = NodeInfo { draining: true, ..node("a") };
        assert!(m.heartbeat(&draining, ttl).await.unwrap(), "a change is announced");
        assert_eq!(m.live().await.unwrap(), vec![draining, node("b")]);
        assert!(m.leave("a").await.unwrap());
        assert!(!m.leave("a").await.unwrap());
        assert_eq!(m.live().await.unwrap(), vec![node("b")]);
        assert_eq!(m.record("a").await.unwrap(), None, "a node that left has no record");
    }

    async fn a_node_without_heartbeats_expires_and_is_pruned(redis: Redis) {
        let m = redis.membership();
        m.heartbeat(&node("short"), Duration::from_millis(300)).await.unwrap();
        m.heartbeat(&node("long"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(m.live().await.unwrap().len(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.live().await.unwrap().len() == 2 {
            assert!(Instant::now() < deadline, "the 300 ms record never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(m.live().await.unwrap(), vec![node("long")]);
        let ids: Vec<String> =
            ::redis::cmd("SMEMBERS").arg(redis.keys().members()).query_async(&mut redis.connection()).await.unwrap();
        assert_eq!(ids, vec!["long".to_string()], "the expired id is pruned");
        // Coming back is a join again.
        assert!(m.heartbeat(&node("short"), Duration::from_secs(60)).await.unwrap());
    }

    async fn subscribe_sees_joins_leaves_and_lease_changes(redis: Redis) {
        let m = redis.membership();
        let mut rx = m.subscribe().await.unwrap();
        m.heartbeat(&node("n1"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(next_change(&mut rx).await, Change::Members("n1".into()));
        let leases = redis.leases();
        let epoch = match leases.acquire(42, "n1", "n1#1", "x", Duration::from_secs(30)).await.unwrap() {
            crate::redis::Acquire::Granted { epoch } => epoch,
            held => panic!("{held:?}"),
        };
        assert_eq!(next_change(&mut rx).await, Change::Owner(42));
        assert!(leases.release(42, "n1#1", epoch).await.unwrap());
        assert_eq!(next_change(&mut rx).await, Change::Owner(42));
        m.leave("n1").await.unwrap();
        assert_eq!(next_change(&mut rx).await, Change::Members("n1".into()));
    }

    #[test]
    fn the_member_record_lives_no_longer_than_the_lease() {
        use crate::redis::LeaseTiming;
        for lease in [LeaseTiming::STANDARD, LeaseTiming::FAST] {
            assert!(member_ttl_for(&lease) <= lease.ttl, "{lease:?}");
            assert!(heartbeat_for(&lease) * 4 <= member_ttl_for(&lease), "{lease:?}: four heartbeats per record TTL");
        }
        assert_eq!(member_ttl_for(&LeaseTiming::STANDARD), Duration::from_secs(5));
        assert_eq!(member_ttl_for(&LeaseTiming::FAST), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn heartbeat_lists_leave_removes_single() {
        let server = RedisServer::start();
        heartbeat_lists_leave_removes(connect(&server).await).await;
    }

    #[tokio::test]
    async fn a_node_without_heartbeats_expires_and_is_pruned_single() {
        let server = RedisServer::start();
        a_node_without_heartbeats_expires_and_is_pruned(connect(&server).await).await;
    }

    #[tokio::test]
    async fn subscribe_sees_joins_leaves_and_lease_changes_single() {
        let server = RedisServer::start();
        subscribe_sees_joins_leaves_and_lease_changes(connect(&server).await).await;
    }

    #[tokio::test]
    async fn the_membership_checks_pass_on_a_redis_cluster_and_survive_a_node_loss() {
        let mut cluster = RedisCluster::start(3);
        let url = cluster.url();
        let redis = |prefix: &'static str| testing::connect(&url, prefix);
        tokio::join!(
            async { heartbeat_lists_leave_removes(redis("c1").await).await },
            async { a_node_without_heartbeats_expires_and_is_pruned(redis("c2").await).await },
            async { subscribe_sees_joins_leaves_and_lease_changes(redis("c3").await).await },
        );
        // Subscribed (at a node chosen at random), events keep coming when a primary dies: the
        // subscription either was elsewhere or moves to a live node (and says Resync).
        let redis = redis("c4").await;
        let m = redis.membership();
        let mut rx = m.subscribe().await.unwrap();
        let members_primary = cluster.primary_of(cluster.slot_of(&redis.keys().members()));
        let victim = cluster.primaries().into_iter().find(|p| *p != members_primary).unwrap();
        cluster.kill(victim);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        'outer: loop {
            n += 1;
            let id = format!("after{n}");
            if m.heartbeat(&node(&id), Duration::from_secs(30)).await.is_ok() {
                let wait = Instant::now() + Duration::from_secs(3);
                while let Ok(Some(change)) = tokio::time::timeout_at(wait.into(), rx.recv()).await {
                    if change == Change::Members(id.clone()) {
                        break 'outer;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no event after a primary died");
        }
    }

    #[tokio::test]
    async fn subscription_survives_a_redis_restart() {
        let mut server = RedisServer::start();
        let redis = connect(&server).await;
        let m = redis.membership();
        let mut rx = m.subscribe().await.unwrap();
        server.restart();
        // After the restart the subscription reconnects and says so.
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(Change::Resync)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("no Resync within 20 s of the restart"),
        }
        // And it delivers again (retry the heartbeat while the command connection comes back).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            n += 1;
            let id = format!("after{n}");
            if m.heartbeat(&node(&id), Duration::from_secs(30)).await.is_ok() {
                match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                    Ok(Some(Change::Members(got))) if got == id => break,
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => panic!("subscription ended"),
                }
            }
            assert!(Instant::now() < deadline, "no event after the restart");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
