//! Gateways' records, for operators: each gateway writes what it serves every couple of
//! seconds (connections, links, counters), so any gateway's console and `partyline status` can
//! list them all. Routing never reads them.
//!
//! One Redis hash, `pl:gateways`, of JSON [`GatewayRecord`]s by gateway id. A record older than
//! the age its reader allows is not listed, and is removed by [`Gateways::live`].

use std::collections::BTreeMap;
use std::time::Duration;

use partyline::storage::unix_ms;

use serde::{Deserialize, Serialize};

use super::conn::Connection;
use super::keys::Keys;
use super::Result;

/// Counters of one gateway since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCounters {
    /// WebSocket upgrades completed, and refused.
    pub connects: u64,
    pub refused: u64,
    /// Frames from clients, and to clients (every delivery of a broadcast counts).
    pub frames_in: u64,
    pub frames_out: u64,
    /// HTTP requests forwarded to rooms.
    pub requests: u64,
    /// Link opens that failed, slow clients cut off, rate-limited and overloaded closes.
    pub errors: u64,
    /// Client sockets closed, by close code.
    #[serde(default)]
    pub closes: BTreeMap<u16, u64>,
}

/// What a gateway says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// The gateway's name (`gateway <client address>`).
    pub id: String,
    /// Its client address.
    pub addr: String,
    /// Its admin listener, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Client WebSockets open, and links into rooms.
    pub connections: u64,
    pub links: u64,
    /// Nodes it can route to.
    pub live_nodes: u64,
    /// When it wrote this, in ms since the Unix epoch.
    pub unix_ms: u64,
    pub started_unix_ms: u64,
    pub counters: GatewayCounters,
}

/// The gateways' records; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Gateways {
    conn: Connection,
    keys: Keys,
}

impl Gateways {
    pub(super) fn new(conn: Connection, keys: Keys) -> Self {
        Gateways { conn, keys }
    }

    /// Writes `record` (stamped now) under its id.
    pub async fn publish(&self, record: &GatewayRecord) -> Result<()> {
        let record = GatewayRecord { unix_ms: unix_ms(), ..record.clone() };
        let json = serde_json::to_vec(&record).expect("a record serializes");
        let _: () = ::redis::cmd("HSET")
            .arg(self.keys.gateways())
            .arg(&record.id)
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Removes gateway `id`'s record (it is stopping).
    pub async fn leave(&self, id: &str) -> Result<()> {
        let _: () = ::redis::cmd("HDEL").arg(self.keys.gateways()).arg(id).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// The records written within `max_age`, by id; older ones are removed.
    pub async fn live(&self, max_age: Duration) -> Result<Vec<GatewayRecord>> {
        let raw: Vec<(String, Vec<u8>)> =
            ::redis::cmd("HGETALL").arg(self.keys.gateways()).query_async(&mut self.conn.clone()).await?;
        let oldest = unix_ms().saturating_sub(max_age.as_millis() as u64);
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (id, json) in raw {
            match serde_json::from_slice::<GatewayRecord>(&json) {
                Ok(r) if r.unix_ms >= oldest => live.push(r),
                _ => stale.push(id),
            }
        }
        if !stale.is_empty() {
            let _: () =
                ::redis::cmd("HDEL").arg(self.keys.gateways()).arg(&stale).query_async(&mut self.conn.clone()).await?;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::{self, RedisServer};

    #[tokio::test]
    async fn records_are_listed_until_they_are_stale_or_leave() {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), "gw").await;
        let gateways = redis.gateways();
        let mut a =
            GatewayRecord { id: "gateway a".into(), addr: "127.0.0.1:1".into(), connections: 3, ..Default::default() };
        a.counters.closes.insert(1000, 2);
        gateways.publish(&a).await.unwrap();
        gateways.publish(&GatewayRecord { id: "gateway b".into(), ..Default::default() }).await.unwrap();
        let live = gateways.live(Duration::from_secs(10)).await.unwrap();
        assert_eq!(live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["gateway a", "gateway b"]);
        assert_eq!(live[0].connections, 3);
        assert_eq!(live[0].counters.closes.get(&1000), Some(&2));
        gateways.leave("gateway b").await.unwrap();
        assert_eq!(gateways.live(Duration::from_secs(10)).await.unwrap().len(), 1);
        // A record older than the allowed age is not listed, and is removed.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(gateways.live(Duration::from_millis(10)).await.unwrap().is_empty());
        assert!(gateways.live(Duration::from_secs(10)).await.unwrap().is_empty());
    }
}
