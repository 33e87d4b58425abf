//! What an operator sees of a room's storage ([`RedisStore::inspect`]): how many keys, how many
//! bytes, the first key names, the next alarm. One read-only script over the room's keys (all in
//! its shard's hash slot), unfenced: any node may answer it, whether the room runs or not.

use std::sync::LazyLock;

use ::redis::Script;
use partyline::runtime::placement::shard_of;
use partyline::store::{RoomKey, StoreError};

use super::{backend, RedisStore, SCAN_USAGE};

/// What a room stores, as [`RedisStore::inspect`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomStorage {
    /// How many keys the room stores.
    pub keys: u64,
    /// Bytes of its keys plus values, as the storage quota counts them (`Limits::max_room_bytes`).
    pub bytes: u64,
    /// The first key names, in key order (UTF-8 byte order), at most as many as asked for.
    pub first_keys: Vec<String>,
    /// The room's alarm, in ms since the Unix epoch, if it has one.
    pub next_alarm_ms: Option<i64>,
}

/// KEYS: room keys ZSET, room values HASH, room usage HASH, room alarm. ARGV: how many key
/// names to list. Returns `{keys, bytes, {names}, alarm or ''}`. The bytes come from the usage
/// hash when the quota keeps it, else from one pass over the values (`scan_usage`).
const INSPECT: &str = r#"
local n = redis.call('ZCARD', KEYS[1])
local bytes
local u = redis.call('HMGET', KEYS[3], 'keys', 'bytes')
if u[1] and u[2] then
  bytes = tonumber(u[2])
else
  local _, b = scan_usage(KEYS[2])
  bytes = b
end
local names = {}
local max = tonumber(ARGV[1])
if max > 0 then
  names = redis.call('ZRANGEBYLEX', KEYS[1], '-', '+', 'LIMIT', 0, max)
end
local alarm = redis.call('GET', KEYS[4])
return {n, bytes, names, alarm or ''}
"#;

static INSPECT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SCAN_USAGE}{INSPECT}")));

impl RedisStore {
    /// A room's storage as an operator sees it (see [`RoomStorage`]), with its first `max_keys`
    /// key names. Unfenced and read-only: it works for a room that runs nowhere, and any node
    /// may answer it. Without a quota in force (no usage hash kept) the byte count is one pass
    /// over the room's values inside Redis.
    pub async fn inspect(&self, room: &RoomKey, max_keys: usize) -> Result<RoomStorage, StoreError> {
        let shard = shard_of(room);
        let (keys, bytes, names, alarm): (u64, u64, Vec<Vec<u8>>, String) = INSPECT_SCRIPT
            .key(self.keys.room_keys(shard, room))
            .key(self.keys.room_values(shard, room))
            .key(self.keys.room_usage(shard, room))
            .key(self.keys.room_alarm(shard, room))
            .arg(max_keys)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        let next_alarm_ms = match alarm.as_str() {
            "" => None,
            t => Some(t.parse::<i64>().map_err(|_| StoreError::Backend(format!("room {room}: alarm {t:?}")))?),
        };
        Ok(RoomStorage {
            keys,
            bytes,
            first_keys: names.into_iter().map(|k| String::from_utf8_lossy(&k).into_owned()).collect(),
            next_alarm_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use partyline::store::{Quota, Store, WriteOp};

    use super::*;
    use crate::redis::testing::{self, RedisCluster, RedisServer};
    use crate::redis::{fence_for, Acquire, Redis};

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put(k.to_string(), Bytes::copy_from_slice(v.as_bytes()))
    }

    #[tokio::test]
    async fn inspect_counts_keys_and_bytes_lists_keys_in_order_and_reads_the_alarm() {
        let server = RedisServer::start();
        inspect_reads_a_room(testing::connect(&server.url(), "pl").await).await;
    }

    #[tokio::test]
    async fn inspect_works_on_a_redis_cluster() {
        let cluster = RedisCluster::start(3);
        inspect_reads_a_room(testing::connect(&cluster.url(), "pl").await).await;
    }

    async fn inspect_reads_a_room(redis: Redis) {
        let room = RoomKey::new("main", "inspected");
        let shard = shard_of(&room);
        let epoch = match redis.leases().acquire(shard, "n1", "n1-1", "127.0.0.1:1", Duration::from_secs(60)).await {
            Ok(Acquire::Granted { epoch }) => epoch,
            other => panic!("shard {shard} not granted: {other:?}"),
        };
        let fence = fence_for(shard, "n1-1", epoch);
        // A room that stores nothing (and never ran): nothing, and no alarm.
        let plain = redis.store();
        assert_eq!(plain.inspect(&room, 10).await.unwrap(), RoomStorage::default());

        // Written without a quota (no usage hash: the bytes are counted from the values).
        let ops = [put("b", "22"), put("a", "1"), put("c/é", "333"), WriteOp::SetAlarm(1_900_000_000_000)];
        plain.commit(&room, Some(&fence), &ops).await.unwrap();
        let bytes = (1 + 2) + (1 + 1) + ("c/é".len() as u64 + 3);
        let seen = plain.inspect(&room, 2).await.unwrap();
        assert_eq!(
            seen,
            RoomStorage {
                keys: 3,
                bytes,
                first_keys: vec!["a".into(), "b".into()],
                next_alarm_ms: Some(1_900_000_000_000)
            }
        );
        assert!(plain.inspect(&room, 0).await.unwrap().first_keys.is_empty(), "no names asked for");
        assert_eq!(plain.inspect(&room, 100).await.unwrap().first_keys, ["a", "b", "c/é"]);

        // Written under a quota (the usage hash is kept): the same figures, from the hash.
        let quota = redis.store().with_quota(Quota { max_keys: 100, max_bytes: 10_000 });
        quota.commit(&room, Some(&fence), &[put("d", "4444"), WriteOp::Delete("b".into())]).await.unwrap();
        let usage = quota.usage(&room).await.unwrap().expect("usage");
        let seen = quota.inspect(&room, 10).await.unwrap();
        assert_eq!((seen.keys, seen.bytes), (3, bytes - 3 + 5));
        assert_eq!((usage.keys, usage.bytes), (seen.keys, seen.bytes), "the quota's own figures");
        assert_eq!(seen.first_keys, ["a", "c/é", "d"]);

        // The alarm deleted: none.
        quota.commit(&room, Some(&fence), &[WriteOp::DeleteAlarm]).await.unwrap();
        assert_eq!(quota.inspect(&room, 1).await.unwrap().next_alarm_ms, None);
    }
}
