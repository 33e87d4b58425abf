//! What a node writes to the cluster's recent events ([`partyline_cluster::redis::events`]),
//! for operators: failovers, lost leases, drains, rebalances, fenced writes, refused rooms and
//! the actions operators asked for. Every write is in the background
//! ([`Events::spawn_record`]): nothing waits on it, and a failed write is only logged.
//!
//! Two kinds could come in floods and are rate-limited: [`NodeEvents::fenced`] (at most one
//! event per shard per [`EVERY`]) and [`NodeEvents::room_refused`] (at most one event per node
//! per [`EVERY`], counting the refusals since the last one; the last ones of a burst are
//! reported when the period ends, so none goes unreported).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use partyline::sync::Lock;
use partyline::RoomKey;
use partyline_cluster::redis::events::{Event, Events, Kind};
use tokio::time::Instant;

/// The least time between two rate-limited events of one kind (per shard for fenced writes).
pub const EVERY: Duration = Duration::from_secs(10);

/// A node's writer of events; see the module docs. `source` is the node id.
pub struct NodeEvents {
    events: Option<Events>,
    source: String,
    refused: Mutex<Refused>,
    fenced: Mutex<HashMap<u16, Instant>>,
    /// [`EVERY`], but for tests.
    every: Duration,
}

/// Room refusals not reported yet.
#[derive(Default)]
struct Refused {
    /// When the last refusal event was recorded.
    last: Option<Instant>,
    /// Refusals since, and the reason of the latest.
    pending: u64,
    why: &'static str,
    /// A task will record the pending ones when the period ends.
    scheduled: bool,
}

impl NodeEvents {
    /// Events from node `source`, written to `events`.
    pub fn new(events: Events, source: impl Into<String>) -> Arc<Self> {
        Arc::new(Self::with(Some(events), source.into()))
    }

    /// Records nothing (a node under test without a Redis).
    pub fn none(source: impl Into<String>) -> Arc<Self> {
        Arc::new(Self::with(None, source.into()))
    }

    fn with(events: Option<Events>, source: String) -> Self {
        NodeEvents { events, source, refused: Mutex::default(), fenced: Mutex::default(), every: EVERY }
    }

    /// An event of `kind` from this node, stamped now.
    pub fn event(&self, kind: Kind, text: impl Into<String>) -> Event {
        Event::new(kind, self.source.clone(), text)
    }

    /// Records `event` in the background.
    pub fn record(&self, event: Event) {
        if let Some(events) = &self.events {
            events.spawn_record(event);
        }
    }

    /// Leases lost in one occurrence (one renewal round, one self-fence check): one event for
    /// all of them. `shards` are the shards dropped.
    pub fn leases_lost(&self, shards: &[u16], why: &str) {
        let Some(first) = shards.first() else { return };
        let n = shards.len();
        let text = if n == 1 {
            format!("lost the lease of shard {first} ({why}); its rooms stopped")
        } else {
            format!("lost the leases of {n} shards ({why}); their rooms stopped")
        };
        let event = self.event(Kind::LeaseLost, text);
        self.record(if n == 1 { event.shard(*first) } else { event });
    }

    /// A room's storage write (or read) was refused by its fence: at most one event per shard
    /// per [`EVERY`].
    pub fn fenced(&self, room: &RoomKey, shard: u16, epoch: u64) {
        let now = Instant::now();
        {
            let mut fenced = self.fenced.locked();
            if fenced.get(&shard).is_some_and(|t| now.duration_since(*t) < self.every) {
                return;
            }
            fenced.retain(|_, t| now.duration_since(*t) < self.every);
            fenced.insert(shard, now);
        }
        let text = format!(
            "a write of room {room} was refused by its fence (shard {shard}, epoch {epoch}: another node holds the \
             shard now); the shard's rooms stopped here"
        );
        self.record(self.event(Kind::Fenced, text).shard(shard).room(room.to_string()));
    }

    /// The node refused to start a room (`why`): counted, and reported at most once per
    /// [`EVERY`] with how many were refused since the last report.
    pub fn room_refused(self: &Arc<Self>, why: &'static str) {
        let now = Instant::now();
        let mut r = self.refused.locked();
        r.pending += 1;
        r.why = why;
        match r.last {
            Some(last) if now.duration_since(last) < self.every => {
                if !r.scheduled {
                    r.scheduled = true;
                    let (me, at): (Weak<Self>, Instant) = (Arc::downgrade(self), last + self.every);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        if let Some(me) = me.upgrade() {
                            let mut r = me.refused.locked();
                            r.scheduled = false;
                            me.report_refused(&mut r, Instant::now());
                        }
                    });
                }
            }
            _ => self.report_refused(&mut r, now),
        }
    }

    fn report_refused(&self, r: &mut Refused, now: Instant) {
        if r.pending == 0 {
            return;
        }
        let text = match (r.pending, r.last) {
            (1, _) => format!("refused to start a room ({})", r.why),
            (n, Some(last)) => format!(
                "refused to start {n} rooms in the last {} s (latest: {})",
                now.duration_since(last).as_secs().max(1),
                r.why
            ),
            (n, None) => format!("refused to start {n} rooms (latest: {})", r.why),
        };
        r.pending = 0;
        r.last = Some(now);
        self.record(self.event(Kind::Refused, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use partyline_cluster::redis::testing::{self, RedisServer};

    /// The events recorded so far, oldest first, once `n` are there.
    async fn wait_for(events: &Events, n: usize) -> Vec<Event> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut got = events.recent(100).await.unwrap();
            if got.len() >= n || std::time::Instant::now() > deadline {
                got.reverse();
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn refusals_and_fenced_writes_are_rate_limited_but_all_counted() {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), "ev").await;
        let events = redis.events();
        // A period long enough for the calls below to fall within it on a busy machine.
        let every = Duration::from_secs(3);
        let node = Arc::new(NodeEvents { every, ..NodeEvents::with(Some(events.clone()), "n1".into()) });
        // A burst: the first is reported at once, the rest when the period ends, as one event.
        for _ in 0..5 {
            node.room_refused("the node is draining");
        }
        let room = RoomKey::new("main", "r");
        node.fenced(&room, 7, 3);
        node.fenced(&room, 7, 3);
        node.fenced(&room, 8, 3);
        node.leases_lost(&[1, 2, 3], "taken over or expired at renewal");
        node.leases_lost(&[], "nothing");
        tokio::time::sleep(every).await;
        let got = wait_for(&events, 5).await;
        let kinds = |k: Kind| got.iter().filter(|e| e.kind == k).collect::<Vec<_>>();
        let refused = kinds(Kind::Refused);
        assert_eq!(refused.len(), 2, "{got:?}");
        assert!(refused.iter().any(|e| e.text == "refused to start a room (the node is draining)"), "{refused:?}");
        assert!(refused.iter().any(|e| e.text.starts_with("refused to start 4 rooms in the last")), "{refused:?}");
        let fenced = kinds(Kind::Fenced);
        assert_eq!(fenced.iter().map(|e| e.shard).collect::<Vec<_>>().len(), 2, "one per shard: {fenced:?}");
        assert!(fenced.iter().all(|e| e.room.as_deref() == Some("main/r") && e.source == "n1"));
        let lost = kinds(Kind::LeaseLost);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].text.contains("3 shards"), "{lost:?}");
    }
}
