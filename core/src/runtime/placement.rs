//! Where a room lives in a cluster: `xxh3(party/room) mod 4096` picks its virtual shard, and
//! rendezvous hashing (highest random weight) over the live nodes picks the shard's preferred
//! owner. Both are pure functions, stable across processes and releases (xxh3 is specified;
//! std's `DefaultHasher` is not), so every gateway and node computes the same answer from the
//! same membership. Routing is only a hint: the shard's lease in Redis is the truth.

use xxhash_rust::xxh3::xxh3_64;

use crate::store::RoomKey;

/// Number of virtual shards. Fixed forever: it is part of the storage layout.
pub const SHARDS: u16 = 4096;

/// The virtual shard of a room.
pub fn shard_of(key: &RoomKey) -> u16 {
    let mut buf = Vec::with_capacity(key.party.len() + 1 + key.room.len());
    buf.extend_from_slice(key.party.as_bytes());
    buf.push(b'/');
    buf.extend_from_slice(key.room.as_bytes());
    (xxh3_64(&buf) % SHARDS as u64) as u16
}

/// The weight of `node` for `shard`; the highest weight wins.
pub fn weight(shard: u16, node: &str) -> u64 {
    let mut buf = Vec::with_capacity(node.len() + 2);
    buf.extend_from_slice(&shard.to_be_bytes());
    buf.extend_from_slice(node.as_bytes());
    xxh3_64(&buf)
}

/// The node ids in preference order for `shard` (rendezvous hashing): the first is the
/// preferred owner, the rest are the fallbacks in order.
pub fn ranked<'a, I>(shard: u16, nodes: I) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut v: Vec<(u64, &str)> = nodes.into_iter().map(|n| (weight(shard, n), n)).collect();
    v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, n)| n).collect()
}

/// The preferred owner of `shard` among `nodes`.
pub fn preferred<'a, I>(shard: u16, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .map(|n| (weight(shard, n), n))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u16; 3] = [1280, 1974, 147];

    #[test]
    fn shard_is_stable() {
        // Pinned values: a change here moves every room in every deployed cluster.
        let got: Vec<u16> = ["lobby", "r1", "room-42"].iter().map(|r| shard_of(&RoomKey::new("main", *r))).collect();
        assert_eq!(got, PINNED);
        assert_eq!(weight(7, "node-a"), weight(7, "node-a"));
    }

    #[test]
    fn rendezvous_moves_only_the_lost_nodes_shards() {
        let three = ["n1", "n2", "n3"];
        let two = ["n1", "n2"];
        for shard in 0..SHARDS {
            let before = preferred(shard, three).unwrap();
            let after = preferred(shard, two).unwrap();
            if before != "n3" {
                assert_eq!(before, after, "shard {shard} moved although its owner stayed");
            }
            assert_eq!(ranked(shard, three)[0], before);
        }
    }

    #[test]
    fn rendezvous_balances() {
        let nodes = ["node-a", "node-b", "node-c", "node-d", "node-e"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..100_000u32 {
            let shard = shard_of(&RoomKey::new("main", format!("room-{i}")));
            *counts.entry(preferred(shard, nodes).unwrap()).or_insert(0u32) += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        let mean = 100_000.0 / nodes.len() as f64;
        assert!(max / mean < 1.1, "max/mean {:.3} with {counts:?}", max / mean);
    }
}
