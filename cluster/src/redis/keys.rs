//! The Redis key layout. Part of the storage format: changing it strands the data of every
//! deployed cluster.
//!
//! Every key starts with a configurable prefix (default `pl`). Every key of one virtual shard
//! carries the hash tag `{s<shard>}`, so a shard's keys map to one Redis Cluster slot and one Lua
//! script may touch them all (the lease check and the write it guards, the room's alarm and the
//! shard's alarm index).
//!
//! | Key | Type | Contents |
//! |---|---|---|
//! | `pl:{s<shard>}:lease` | HASH | `owner` (node id), `inc` (incarnation: node id + boot nonce), `epoch`, `addr` (the owner's gRPC address); `PEXPIRE` = lease TTL |
//! | `pl:{s<shard>}:epoch` | STRING | the shard's epoch counter, no TTL; every grant writes back `max(INCR, TIME ms)` |
//! | `pl:{s<shard>}:k:<room tag>` | ZSET | the room's keys, all with score 0, so `ZRANGEBYLEX` walks them in byte order (= UTF-8 order) |
//! | `pl:{s<shard>}:v:<room tag>` | HASH | the room's key → value |
//! | `pl:{s<shard>}:a:<room tag>` | STRING | the room's alarm time (ms since the Unix epoch, decimal) |
//! | `pl:{s<shard>}:u:<room tag>` | HASH | `keys`, `bytes`: what the room stores, kept while a storage quota is set (absent: not counted; rebuilt from the values when needed) |
//! | `pl:{s<shard>}:alarms` | ZSET | member `<alarm member>`, score = alarm time in ms: the shard's rooms with an alarm, in time order |
//! | `pl:{s<shard>}:cluster` | STRING | Redis Cluster only: the shard's copy of the cluster marker (see [`super::marker`]) |
//! | `pl:cluster` | STRING | the cluster marker: written once when the first node starts on an empty Redis; a Redis without it has lost the cluster's data (see [`super::marker`]) |
//! | `pl:node:<id>` | STRING | JSON [`NodeInfo`](super::NodeInfo) of a live node, `PX` = membership TTL |
//! | `pl:members` | SET | ids of nodes that have heartbeated (pruned when their node key has expired) |
//! | `pl:cron:<scheduled ms>:<name>` | STRING | a cron firing's claim: the id of the node that runs it, `PX` = [`super::crons::CLAIM_TTL`] (see [`super::crons`]) |
//! | `pl:deploy:seq` | STRING | the last version number handed out by `partyline deploy` (see [`super::deploys`]) |
//! | `pl:deploy:versions` | HASH | version number → JSON [`VersionRecord`](super::deploys::VersionRecord) |
//! | `pl:deploy:artifact:<version>:<chunk>` | STRING | the artifact of a version, in chunks of [`super::deploys::CHUNK_BYTES`] |
//! | `pl:deploy:current` | STRING | the version the cluster serves |
//! | `pl:deploy:restart` | STRING | `<version> <rooms per second>`: processes loading that version move running rooms to it now |
//! | `pl:deploy:served` | HASH | process name → JSON [`Served`](super::deploys::Served): the version it serves |
//! | `pl:deploy:check` | STRING | a value derived from the cluster secret, published by nodes so `partyline deploy` can tell a wrong secret |
//! | `pl:alarms` | ZSET | obsolete: the single alarm index of earlier versions; its entries are moved to the shards' indexes (see [`super::alarms`]) |
//!
//! On a Redis Cluster the two membership keys carry the hash tag `{m}` (`pl:{m}:node:<id>`,
//! `pl:{m}:members`), so the membership scripts, which touch both, run on one primary.
//!
//! Channels: `pl:members` (a node joined, changed or left; message: the node id) and `pl:owners`
//! (a shard lease was granted or released; message: the shard number). They are ordinary
//! pub/sub channels, which a Redis Cluster forwards to every node.
//!
//! The *room tag* is `<len(party)>:<party>/<room>` with the party's length in bytes, in decimal:
//! the length makes it unambiguous whatever bytes the party or room contain (`ab`/`c` is
//! `2:ab/c`, `a`/`bc` is `1:a/bc`). The *alarm member* is `<shard>:<room tag>`.
//!
//! **No cross-slot command.** Every command and script touches the keys of one shard, or one
//! membership or marker key (or, on a Redis Cluster, the two `{m}` keys). Work over many
//! shards (renewing leases, reading alarm indexes) is many such commands, pipelined on one
//! server and sent concurrently to the owning primaries on a cluster.

use partyline::store::RoomKey;

use super::{Error, Result};

/// The prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "pl";

/// Builds the keys and channel names of one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    /// The layout under `prefix`, which must be non-empty and contain no `{`, `}` (they would
    /// change the hash tag) or whitespace.
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.is_empty() || prefix.chars().any(|c| c == '{' || c == '}' || c.is_whitespace()) {
            return Err(Error::Config(format!(
                "key prefix {prefix:?} must be non-empty, without braces or whitespace"
            )));
        }
        Ok(Keys { prefix: prefix.to_string(), cluster: false })
    }

    /// The layout under `prefix` on a Redis Cluster: membership keys share one hash tag, and
    /// every shard keeps a copy of the cluster marker.
    pub fn for_cluster(prefix: &str) -> Result<Self> {
        Ok(Keys { cluster: true, ..Keys::new(prefix)? })
    }

    /// Whether this is the Redis Cluster layout.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `pl:{s<shard>}:` — the start of every key of the shard.
    fn shard(&self, shard: u16) -> String {
        format!("{}:{{s{shard}}}:", self.prefix)
    }

    /// The shard's lease hash.
    pub fn lease(&self, shard: u16) -> String {
        self.shard(shard) + "lease"
    }

    /// The shard's epoch counter.
    pub fn epoch(&self, shard: u16) -> String {
        self.shard(shard) + "epoch"
    }

    /// The cluster marker.
    pub fn cluster(&self) -> String {
        format!("{}:cluster", self.prefix)
    }

    /// The shard's copy of the cluster marker (Redis Cluster only).
    pub fn shard_marker(&self, shard: u16) -> String {
        self.shard(shard) + "cluster"
    }

    /// The ZSET of the room's keys.
    pub fn room_keys(&self, shard: u16, room: &RoomKey) -> String {
        format!("{}k:{}", self.shard(shard), room_tag(room))
    }

    /// The HASH of the room's values.
    pub fn room_values(&self, shard: u16, room: &RoomKey) -> String {
        format!("{}v:{}", self.shard(shard), room_tag(room))
    }

    /// The room's alarm.
    pub fn room_alarm(&self, shard: u16, room: &RoomKey) -> String {
        format!("{}a:{}", self.shard(shard), room_tag(room))
    }

    /// The HASH of the room's usage (`keys`, `bytes`), for the storage quota.
    pub fn room_usage(&self, shard: u16, room: &RoomKey) -> String {
        format!("{}u:{}", self.shard(shard), room_tag(room))
    }

    /// The shard's alarm index.
    pub fn shard_alarms(&self, shard: u16) -> String {
        self.shard(shard) + "alarms"
    }

    /// The single alarm index of earlier versions, read only to move its entries.
    pub fn legacy_alarms(&self) -> String {
        format!("{}:alarms", self.prefix)
    }

    /// The claim of one firing of the cron schedule `name` due at `scheduled_ms`:
    /// `pl:cron:<scheduled ms>:<name>` (the time first, so any name is unambiguous). A single key
    /// in any slot: its commands touch it alone.
    pub fn cron(&self, name: &str, scheduled_ms: i64) -> String {
        format!("{}:cron:{scheduled_ms}:{name}", self.prefix)
    }

    /// A key of deployed versions: `pl:deploy:<part>` (see [`super::deploys`]).
    pub fn deploy(&self, part: &str) -> String {
        format!("{}:deploy:{part}", self.prefix)
    }

    /// One chunk of a deployed artifact: `pl:deploy:artifact:<version>:<chunk>`.
    pub fn deploy_chunk(&self, version: u64, chunk: u32) -> String {
        format!("{}:deploy:artifact:{version}:{chunk}", self.prefix)
    }

    /// The start of the membership keys: `pl:` or, on a cluster, `pl:{m}:`.
    fn membership(&self) -> String {
        if self.cluster {
            format!("{}:{{m}}:", self.prefix)
        } else {
            format!("{}:", self.prefix)
        }
    }

    /// A live node's record.
    pub fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.membership())
    }

    /// The set of node ids.
    pub fn members(&self) -> String {
        self.membership() + "members"
    }

    /// The cluster's recent events (a list of JSON, newest first; see [`super::events`]).
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The gateways' records (a hash of JSON by gateway id; see [`super::gateways`]).
    pub fn gateways(&self) -> String {
        format!("{}:gateways", self.prefix)
    }

    /// Channel announcing membership changes (message: node id).
    pub fn members_channel(&self) -> String {
        format!("{}:members", self.prefix)
    }

    /// Channel announcing lease grants and releases (message: shard number).
    pub fn owners_channel(&self) -> String {
        format!("{}:owners", self.prefix)
    }
}

/// `<len(party)>:<party>/<room>`.
pub fn room_tag(room: &RoomKey) -> String {
    format!("{}:{}/{}", room.party.len(), room.party, room.room)
}

/// `<shard>:<room tag>`: a room's member in its shard's alarm index.
pub fn alarm_member(shard: u16, room: &RoomKey) -> String {
    format!("{shard}:{}", room_tag(room))
}

/// Parses an alarm member back into its shard and room.
pub fn parse_alarm_member(member: &[u8]) -> Option<(u16, RoomKey)> {
    let s = std::str::from_utf8(member).ok()?;
    let (shard, rest) = s.split_once(':')?;
    let (len, rest) = rest.split_once(':')?;
    if !is_decimal(shard) || !is_decimal(len) {
        return None;
    }
    let (shard, len) = (shard.parse::<u16>().ok()?, len.parse::<usize>().ok()?);
    let party = rest.get(..len)?;
    let room = rest.get(len..)?.strip_prefix('/')?;
    Some((shard, RoomKey::new(party, room)))
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The smallest byte string greater than every string starting with `b`; `None` if there is
/// none (empty or all `0xFF`). UTF-8 text never contains `0xFF`, so for a key prefix this is the
/// prefix with its last byte incremented (not necessarily valid UTF-8, which Redis does not mind).
pub fn successor(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_pinned() {
        let k = Keys::new("pl").unwrap();
        let room = RoomKey::new("main", "a:b/c");
        assert_eq!(k.lease(12), "pl:{s12}:lease");
        assert_eq!(k.epoch(12), "pl:{s12}:epoch");
        assert_eq!(k.room_keys(12, &room), "pl:{s12}:k:4:main/a:b/c");
        assert_eq!(k.room_values(12, &room), "pl:{s12}:v:4:main/a:b/c");
        assert_eq!(k.room_usage(12, &room), "pl:{s12}:u:4:main/a:b/c");
        assert_eq!(k.room_alarm(12, &room), "pl:{s12}:a:4:main/a:b/c");
        assert_eq!(k.shard_alarms(12), "pl:{s12}:alarms");
        assert_eq!(k.legacy_alarms(), "pl:alarms");
        assert_eq!(k.cluster(), "pl:cluster");
        assert_eq!(k.node("n1"), "pl:node:n1");
        assert_eq!(k.members(), "pl:members");
        assert_eq!(k.members_channel(), "pl:members");
        assert_eq!(k.owners_channel(), "pl:owners");
        assert_eq!(alarm_member(12, &room), "12:4:main/a:b/c");
        assert_eq!(k.cron("daily", 1_700_000_000_000), "pl:cron:1700000000000:daily");
        // On a Redis Cluster: the same shard keys, membership under one hash tag.
        let c = Keys::for_cluster("pl").unwrap();
        assert_eq!(c.room_values(12, &room), k.room_values(12, &room));
        assert_eq!(c.shard_marker(12), "pl:{s12}:cluster");
        assert_eq!(c.node("n1"), "pl:{m}:node:n1");
        assert_eq!(c.members(), "pl:{m}:members");
        assert_eq!(c.members_channel(), "pl:members");
        assert!(Keys::for_cluster("a{").is_err());
    }

    #[test]
    fn room_tags_are_unambiguous_and_round_trip() {
        assert_ne!(room_tag(&RoomKey::new("ab", "c")), room_tag(&RoomKey::new("a", "bc")));
        assert_ne!(room_tag(&RoomKey::new("a/b", "c")), room_tag(&RoomKey::new("a", "b/c")));
        for (party, room) in [("main", "lobby"), ("a/b", "c"), ("", ""), ("é", "😀/{x}:1"), ("p", "12:3:x/y")] {
            let key = RoomKey::new(party, room);
            let member = alarm_member(4095, &key);
            assert_eq!(parse_alarm_member(member.as_bytes()), Some((4095, key)));
        }
        for bad in ["", "1", "1:", "x:4:main/a", "1:9:main/a", "1:4:mainXa", "1:+4:main/a", "70000:1:a/b"] {
            assert_eq!(parse_alarm_member(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_that_would_break_the_hash_tag_are_refused() {
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a{b").is_err());
        assert!(Keys::new("a}").is_err());
        assert!(Keys::new("a b").is_err());
        assert_eq!(Keys::new("staging:pl").unwrap().lease(0), "staging:pl:{s0}:lease");
    }

    #[test]
    fn successor_bounds_every_extension() {
        assert_eq!(successor(b"a"), Some(b"b".to_vec()));
        assert_eq!(successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(successor(&[0xFF]), None);
        assert_eq!(successor(b""), None);
        let p = "é".as_bytes();
        let s = successor(p).unwrap();
        assert!(s.as_slice() > "é😀".as_bytes() && s.as_slice() > "é\u{10FFFF}".as_bytes());
    }
}
