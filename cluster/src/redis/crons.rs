//! Claims of cron firings: each firing of a project's cron schedule (PartyKit's `crons`) runs on
//! one node of the cluster only. Every node computes the same due times; at each, every node
//! tries to claim it with `SET pl:cron:<scheduled ms>:<name> <node id> NX PX <ttl>` and only the
//! node whose `SET` succeeded runs `onCron`.
//!
//! The rule that every write is fenced by a shard lease is about room storage (see
//! [`super`]). A claim is not room storage: it belongs to no shard and guards no data, only the
//! decision of which node runs one firing, so a plain `SET NX` is the right tool. The key
//! expires after [`CLAIM_TTL`], long after every node has tried it (nodes skip a firing they
//! are late for by more than a minute), so claims do not pile up. Claims do not wait for
//! replicas: a Redis failover that loses a fresh claim could let a second node run that one
//! firing.

use std::time::Duration;

use super::conn::Connection;
use super::keys::Keys;
use super::Result;

/// How long a claim is kept: far longer than any node can be late to try it.
pub const CLAIM_TTL: Duration = Duration::from_secs(15 * 60);

/// Cron claims over one connection; cheap to clone.
#[derive(Clone)]
pub struct CronClaims {
    conn: Connection,
    keys: Keys,
    node: String,
}

impl std::fmt::Debug for CronClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronClaims").field("prefix", &self.keys.prefix()).field("node", &self.node).finish()
    }
}

impl CronClaims {
    /// Claims made by the node `node` (its id is the claim's value, for operators).
    pub fn new(conn: Connection, keys: Keys, node: impl Into<String>) -> Self {
        CronClaims { conn, keys, node: node.into() }
    }

    /// Claims of `node` over `redis`'s connection.
    pub fn of(redis: &super::Redis, node: impl Into<String>) -> Self {
        Self::new(redis.connection(), redis.keys().clone(), node)
    }

    /// Claims the firing of `name` due at `scheduled_ms`: `true` if this call won it (run the
    /// cron), `false` if some node claimed it before (it runs there). An error (Redis
    /// unreachable) claims nothing; the caller must not run the firing.
    pub async fn claim(&self, name: &str, scheduled_ms: i64) -> Result<bool> {
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.keys.cron(name, scheduled_ms))
            .arg(&self.node)
            .arg("NX")
            .arg("PX")
            .arg(CLAIM_TTL.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// The node that claimed the firing, if it is claimed (and the claim has not expired).
    pub async fn holder(&self, name: &str, scheduled_ms: i64) -> Result<Option<String>> {
        Ok(::redis::cmd("GET").arg(self.keys.cron(name, scheduled_ms)).query_async(&mut self.conn.clone()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::{self, RedisCluster, RedisServer};

    #[tokio::test]
    async fn a_firing_is_claimed_once_and_expires() {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), "pl").await;
        let (a, b) = (CronClaims::of(&redis, "node-a"), CronClaims::of(&redis, "node-b"));
        assert!(a.claim("daily", 1_000).await.unwrap());
        assert!(!b.claim("daily", 1_000).await.unwrap());
        assert!(!a.claim("daily", 1_000).await.unwrap(), "a second try by the winner does not win again");
        assert_eq!(b.holder("daily", 1_000).await.unwrap().as_deref(), Some("node-a"));
        // Another time, another schedule: claims of their own.
        assert!(b.claim("daily", 2_000).await.unwrap());
        assert!(b.claim("hourly", 1_000).await.unwrap());
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(redis.keys().cron("daily", 1_000))
            .query_async(&mut redis.connection())
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= CLAIM_TTL.as_millis() as i64, "{ttl}");
    }

    #[tokio::test]
    async fn claims_work_on_a_redis_cluster() {
        let cluster = RedisCluster::start(3);
        let redis = testing::connect(&cluster.url(), "pl").await;
        let (a, b) = (CronClaims::of(&redis, "node-a"), CronClaims::of(&redis, "node-b"));
        for t in 0..20 {
            let ms = 1_700_000_000_000 + t * 60_000;
            assert!(a.claim("every minute", ms).await.unwrap());
            assert!(!b.claim("every minute", ms).await.unwrap());
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_claims_nothing() {
        let mut server = RedisServer::start();
        let redis = testing::connect(&server.url(), "pl").await;
        server.stop();
        assert!(CronClaims::of(&redis, "n").claim("daily", 1_000).await.is_err());
    }
}
