//! The Redis layer of the owner node: room storage ([`RedisStore`]), shard leases ([`Leases`]),
//! cluster membership ([`Membership`]) and the cluster marker ([`Marker`]), all over one
//! auto-reconnecting connection to one Redis server or to a Redis Cluster.
//!
//! [`Redis::connect`] parses the URL (`redis://…` one server, `redis+cluster://host:port,…` a
//! Redis Cluster; see [`conn`]), connects once (failing within the connect timeout, with the
//! URL in the message, when Redis is down) and hands out the parts, which share the connection.
//! Each of them is cheap to clone.
//!
//! The key layout is in [`keys`]. Correctness rests on one rule: every storage write runs in one
//! Lua script that first checks the writer's fence (the shard number and lease epoch) against the
//! shard's lease hash, so a node whose lease expired or was taken over cannot write, whatever its
//! own clock says. Every key such a script touches carries its shard's hash tag, so on a Redis
//! Cluster each script runs on the one primary that serves the shard's slot.
//!
//! [`testing`] starts throwaway `redis-server` processes and Redis Clusters for tests (also used
//! by other crates).

pub mod alarms;
pub mod conn;
pub mod crons;
pub mod deploys;
pub mod events;
pub mod gateways;
pub mod keys;
pub mod lease;
pub mod marker;
pub mod membership;
pub mod router;
pub mod store;
pub mod testing;

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

pub use conn::{Connection, Replicas, Target};
pub use keys::Keys;
pub use lease::{Acquire, LeaseInfo, LeaseTiming, Leases};
pub use marker::{Claim, Marker, Persistence};
pub use membership::{heartbeat_for, member_ttl_for, Change, Membership, NodeInfo};
pub use store::{fence_for, RedisStore};

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first connection could not be made (Redis down, wrong address, bad credentials).
    #[error("cannot connect to Redis at {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The configuration is invalid (bad URL or key prefix).
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    /// A command failed (connection lost, timeout, server error).
    #[error("Redis command failed: {0}")]
    Command(#[from] ::redis::RedisError),
    /// Redis answered something this layer does not understand (corrupt or foreign data).
    #[error("unexpected data in Redis: {0}")]
    Protocol(String),
    /// The shard's copy of the cluster marker is gone: the Redis Cluster primary that serves it
    /// lost its data (see [`marker`]).
    #[error("Redis lost the data of shard {0} (the cluster marker, or on a Redis Cluster the shard's copy of it, is gone or replaced): refusing to take it")]
    Lost(u16),
}

/// Result of the Redis layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Where Redis is and how to talk to it.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` for one server, or
    /// `redis+cluster://[user:password@]host:port[,host:port...]` for a Redis Cluster (seed
    /// nodes; the others are discovered).
    pub url: String,
    /// First segment of every key and channel (default `pl`); see [`keys`].
    pub prefix: String,
    /// Bound on establishing the first connection (default 2 s).
    pub connect_timeout: Duration,
    /// Bound on each command's answer (default 2 s); a paused or partitioned Redis surfaces as an
    /// error after this long instead of a hang.
    pub response_timeout: Duration,
    /// Replicas that must hold a write before it counts (default 0). Above 0, every commit
    /// script and every lease grant is followed by `WAIT min_replicas replica_timeout` in the
    /// same pipeline, on the same connection (on a Redis Cluster, to the primary that took the
    /// write); fewer acknowledgements fail the write: the party gets a storage error, its
    /// output is never released, a lease is not obtained. The write may still be on the
    /// primary, and a later failover may keep or lose it: it was just never acknowledged.
    /// These writes then go over a connection of their own, so a `WAIT` that blocks (a replica
    /// behind) holds up only other writes, not reads, renewals or membership.
    pub min_replicas: u32,
    /// How long a write waits for `min_replicas` replicas (default 500 ms; at most half of
    /// `response_timeout`).
    pub replica_timeout: Duration,
}

impl RedisConfig {
    /// The defaults with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig { url: url.into(), ..Default::default() }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: keys::DEFAULT_PREFIX.into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            min_replicas: 0,
            replica_timeout: Duration::from_millis(500),
        }
    }
}

/// A connected Redis: hands out the store, the leases, the membership and the marker, sharing
/// one connection.
#[derive(Clone)]
pub struct Redis {
    conn: Connection,
    /// Where storage commits and lease grants go: `conn`, or with `min_replicas` a connection
    /// of their own (a `WAIT` blocks the connection it is sent on).
    writes: Connection,
    pubsub: conn::PubSubSource,
    keys: Keys,
    config: RedisConfig,
    alarms: Arc<alarms::Hints>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redact(&self.config.url))
            .field("prefix", &self.keys.prefix())
            .field("cluster", &self.conn.is_cluster())
            .finish()
    }
}

impl Redis {
    /// Connects (bounded by `config.connect_timeout`) and checks the server, or every primary
    /// of a cluster, answers.
    #[inline(never)]
    pub fn connect(config: RedisConfig) -> BoxFuture<'static, Result<Self>> {
        Box::pin(Self::connect_unboxed(config))
    }

    async fn connect_unboxed(config: RedisConfig) -> Result<Self> {
        let target = Target::parse(&config.url)?;
        let keys = match target {
            Target::Single(_) => Keys::new(&config.prefix)?,
            Target::Cluster(_) => Keys::for_cluster(&config.prefix)?,
        };
        let (conn, pubsub) = conn::connect(&target, &config).await?;
        let writes = if config.min_replicas > 0 { conn::connect(&target, &config).await?.0 } else { conn.clone() };
        Ok(Redis { conn, writes, pubsub, keys, config, alarms: Arc::default() })
    }

    /// Room storage over this connection. Stores of one `Redis` share what they know about
    /// the alarm index (see [`alarms`]).
    pub fn store(&self) -> RedisStore {
        RedisStore::new(self.conn.clone(), self.keys.clone(), self.alarms.clone())
            .with_replicas(self.writes.clone(), Replicas::of(&self.config))
    }

    /// Shard leases over this connection.
    pub fn leases(&self) -> Leases {
        Leases::new(self.conn.clone(), self.keys.clone()).with_replicas(self.writes.clone(), Replicas::of(&self.config))
    }

    /// The cluster marker over this connection.
    pub fn marker(&self) -> Marker {
        Marker::new(self.conn.clone(), self.keys.clone())
    }

    /// Membership over this connection (its subscriptions open their own pub/sub connections).
    pub fn membership(&self) -> Membership {
        Membership::new(self.pubsub.clone(), self.conn.clone(), self.keys.clone())
    }

    /// The cluster's recent events over this connection.
    pub fn events(&self) -> events::Events {
        events::Events::new(self.conn.clone(), self.keys.clone())
    }

    /// The gateways' records over this connection.
    pub fn gateways(&self) -> gateways::Gateways {
        gateways::Gateways::new(self.conn.clone(), self.keys.clone())
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration this was connected with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// On a Redis Cluster, its primaries (`host:port`) as last seen; `None` on one server.
    pub fn cluster_primaries(&self) -> Option<Vec<String>> {
        match &self.conn {
            Connection::Cluster(router) => Some(router.primaries()),
            Connection::Single(_) => None,
        }
    }

    /// The shared connection, for commands this layer does not wrap.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// Redis's clock (`TIME`) in ms since the Unix epoch: the clock lease epochs are floored by.
    pub async fn time_ms(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut self.conn.clone()).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// `url` with the password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..scheme_end], user, &rest[at..])
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:secret@host:1/0"), "redis://:***@host:1/0");
        assert_eq!(redact("redis://user:secret@host:1"), "redis://user:***@host:1");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
    }

    #[tokio::test]
    async fn connecting_to_a_down_redis_fails_fast_naming_the_url() {
        // A port nobody listens on: bind one, then release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("redis://127.0.0.1:{port}");
        let start = Instant::now();
        let err = Redis::connect(RedisConfig::new(&url)).await.unwrap_err();
        let elapsed = start.elapsed();
        let msg = err.to_string();
        assert!(msg.contains(&url), "{msg}");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        // Bounded, not a hang (generous: the bound is ~2 s).
        assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn bad_config_is_refused() {
        let err = Redis::connect(RedisConfig::new("not a url")).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let config = RedisConfig { prefix: "a{b".into(), ..RedisConfig::new("redis://127.0.0.1:1") };
        assert!(matches!(Redis::connect(config).await.unwrap_err(), Error::Config(_)));
    }
}
