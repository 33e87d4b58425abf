//! The cluster's recent events, for operators (the console, `partyline status`): failovers,
//! drains, rebalances, fenced writes, refused rooms, nodes routed around, and every action an
//! operator took, with who asked.
//!
//! One Redis list, `pl:events`, of JSON [`Event`]s, newest first, trimmed to [`KEEP`]. Writers
//! never wait on it: [`Events::spawn_record`] sends in the background and a failed write is
//! logged and dropped (events are for people; nothing depends on them). On a Redis Cluster the
//! list is one key in one slot, which is fine for a few events per second at most.

use partyline::storage::unix_ms;

use serde::{Deserialize, Serialize};

use super::conn::Connection;
use super::keys::Keys;
use super::Result;

/// How many events the list keeps.
pub const KEEP: usize = 500;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A node took over shards of a node that was gone (before their leases ran out).
    Failover,
    /// A node lost leases (taken over, expired at renewal, or dropped by its self-fence).
    LeaseLost,
    /// A node began draining.
    Drain,
    /// A node finished draining.
    Drained,
    /// A node handed shards to their preferred owners.
    Rebalance,
    /// A room's storage write was refused by its fence (another owner holds the shard).
    Fenced,
    /// Rooms were refused (shard not held here, node closed or full).
    Refused,
    /// A gateway routed around a node (stalled, cut from Redis, or clock off).
    NodeRefused,
    /// An operator acted (drain, move, close); `who` says who asked.
    Action,
}

impl Kind {
    /// The name used in JSON and on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::LeaseLost => "lease_lost",
            Kind::Drain => "drain",
            Kind::Drained => "drained",
            Kind::Rebalance => "rebalance",
            Kind::Fenced => "fenced",
            Kind::Refused => "refused",
            Kind::NodeRefused => "node_refused",
            Kind::Action => "action",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in ms since the Unix epoch (the writer's clock).
    pub unix_ms: u64,
    pub kind: Kind,
    /// Which process saw it: a node id or a gateway name.
    pub source: String,
    /// Who asked, for an operator's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// What happened, in a sentence.
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
    /// `party/room`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

impl Event {
    /// An event of `kind` from `source`, stamped now.
    pub fn new(kind: Kind, source: impl Into<String>, text: impl Into<String>) -> Self {
        let unix_ms = unix_ms();
        Event { unix_ms, kind, source: source.into(), who: None, text: text.into(), shard: None, room: None }
    }

    /// The same event, asked for by `who`.
    pub fn by(mut self, who: impl Into<String>) -> Self {
        self.who = Some(who.into());
        self
    }

    /// The same event, about `shard`.
    pub fn shard(mut self, shard: u16) -> Self {
        self.shard = Some(shard);
        self
    }

    /// The same event, about room `party/room`.
    pub fn room(mut self, room: impl Into<String>) -> Self {
        self.room = Some(room.into());
        self
    }
}

/// The events list; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    conn: Connection,
    keys: Keys,
}

impl Events {
    pub(super) fn new(conn: Connection, keys: Keys) -> Self {
        Events { conn, keys }
    }

    /// Adds `event` (newest first) and trims the list to [`KEEP`].
    pub async fn record(&self, event: &Event) -> Result<()> {
        let json = serde_json::to_vec(event).expect("an event serializes");
        let key = self.keys.events();
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(KEEP as i64 - 1)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Records `event` in the background; a failure is logged at debug level and dropped.
    pub fn spawn_record(&self, event: Event) {
        let events = self.clone();
        tokio::spawn(async move {
            if let Err(e) = events.record(&event).await {
                tracing::debug!(error = %e, kind = event.kind.as_str(), "could not record an event");
            }
        });
    }

    /// The newest `n` events, newest first (entries that do not parse are skipped).
    pub async fn recent(&self, n: usize) -> Result<Vec<Event>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
            .arg(self.keys.events())
            .arg(0)
            .arg(n as i64 - 1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw.iter().filter_map(|r| serde_json::from_slice(r).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::{self, RedisServer};

    #[tokio::test]
    async fn events_come_back_newest_first_and_the_list_is_trimmed() {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), "ev").await;
        let events = redis.events();
        assert!(events.recent(10).await.unwrap().is_empty());
        for i in 0..KEEP + 5 {
            events.record(&Event::new(Kind::Rebalance, "n1", format!("event {i}")).shard(i as u16)).await.unwrap();
        }
        let drain = Event::new(Kind::Action, "gateway 1", "drain n1").by("alice");
        events.record(&drain).await.unwrap();
        let recent = events.recent(3).await.unwrap();
        assert_eq!(recent[0], drain);
        assert_eq!(recent[1].text, format!("event {}", KEEP + 4));
        assert_eq!(recent[1].shard, Some((KEEP + 4) as u16));
        assert_eq!(events.recent(10_000).await.unwrap().len(), KEEP);
    }
}
