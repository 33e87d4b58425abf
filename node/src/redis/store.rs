//! [`RedisStore`]: room storage in Redis, every write fenced by the shard lease.
//!
//! A room of shard `s` lives in `pl:{s<s>}:k:<room>` (ZSET of keys, score 0), `pl:{s<s>}:v:<room>`
//! (HASH key → value) and `pl:{s<s>}:a:<room>` (alarm), plus its member in the global `pl:alarms`
//! ZSET (see [`super::keys`]).
//!
//! **Writes.** [`Store::commit`] runs one Lua script: it compares the fence's epoch with the
//! `epoch` field of the shard's lease hash and, only if they are equal, applies the ops in order.
//! A missing (expired, released) lease or another epoch answers `FENCED`, which becomes
//! [`StoreError::Fenced`]; nothing is written. A fence must be presented: in the cluster every
//! write is fenced, so `commit(.., None, ..)` is refused with `StoreError::Backend("unfenced
//! write")`. The fence is [`fence_for`]`(shard, epoch)`: its `lease` is the room's shard number
//! in decimal; a fence naming another shard is refused as fenced (it does not cover the room).
//!
//! **Reads** are plain commands (`HMGET`, `GET`, `ZRANGEBYSCORE`) or, for `list`, one Lua script
//! that reads the key range and the values together so they are consistent.
//!
//! There is no unfenced mode. The tests run `partyline::store::conformance::run` (which commits
//! with `None`) through a small wrapper that acquires each touched shard's lease on first use and
//! presents its fence, so the suite exercises the real fenced path.

use std::ops::Bound;
use std::sync::LazyLock;

use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value};
use async_trait::async_trait;
use bytes::Bytes;
use partyline::placement::shard_of;
use partyline::store::{Fence, ListOptions, RoomKey, Store, StoreError, WriteOp};

use super::keys::{self, Keys};

/// KEYS: lease, room keys ZSET, room values HASH, room alarm, global alarms ZSET.
/// ARGV: epoch, alarm member, then the ops: `P key value` | `D key` | `X` | `A time` | `R`.
const COMMIT: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held at this epoch')
end
local i, n = 3, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'P' then
    redis.call('ZADD', KEYS[2], 0, ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'D' then
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
    i = i + 2
  elseif op == 'X' then
    redis.call('DEL', KEYS[2], KEYS[3])
    i = i + 1
  elseif op == 'A' then
    redis.call('SET', KEYS[4], ARGV[i + 1])
    redis.call('ZADD', KEYS[5], ARGV[i + 1], ARGV[2])
    i = i + 2
  elseif op == 'R' then
    redis.call('DEL', KEYS[4])
    redis.call('ZREM', KEYS[5], ARGV[2])
    i = i + 1
  else
    return redis.error_reply('BADOP ' .. tostring(op))
  end
end
return 1
"#;

/// KEYS: room keys ZSET, room values HASH. ARGV: min, max (ZRANGEBYLEX syntax), `1` for
/// reverse, limit (`-1` = none). Returns `{keys, values}`.
const LIST: &str = r#"
local ks
if ARGV[3] == '1' then
  ks = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[4])
else
  ks = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[4])
end
local vs = {}
local chunk = 1000
for i = 1, #ks, chunk do
  local part = redis.call('HMGET', KEYS[2], unpack(ks, i, math.min(i + chunk - 1, #ks)))
  for j = 1, #part do vs[#vs + 1] = part[j] end
end
return {ks, vs}
"#;

/// The fence check that starts every fenced read: ARGV[1] is the reader's epoch, KEYS[1] its
/// shard's lease.
const READ_FENCE: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held at this epoch')
end
"#;

/// KEYS: lease, room values HASH. ARGV: epoch, then the keys. Returns their values.
const GET_FENCED: &str = "return redis.call('HMGET', KEYS[2], unpack(ARGV, 2))";

/// KEYS: lease, room alarm. ARGV: epoch. Returns the alarm time or nil.
const ALARM_FENCED: &str = "return redis.call('GET', KEYS[2])";

static COMMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT));
static LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIST));
static GET_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{READ_FENCE}{GET_FENCED}")));
static ALARM_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{READ_FENCE}{ALARM_FENCED}")));
/// [`LIST`] behind the fence check, with every key and argument index shifted by one.
static LIST_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    let body = LIST.replace("KEYS[2]", "KEYS[3]").replace("KEYS[1]", "KEYS[2]");
    let body = (1..=4).rev().fold(body, |b, i| b.replace(&format!("ARGV[{i}]"), &format!("ARGV[{}]", i + 1)));
    Script::new(&format!("{READ_FENCE}{body}"))
});

/// Maps a fenced read's error: `FENCED` to [`StoreError::Fenced`].
fn read_error(e: ::redis::RedisError, fence: &Fence) -> StoreError {
    if e.code() == Some("FENCED") {
        StoreError::Fenced { lease: fence.lease.clone(), epoch: fence.epoch }
    } else {
        backend(e)
    }
}

/// The fence of a writer holding shard `shard`'s lease at `epoch`.
pub fn fence_for(shard: u16, epoch: u64) -> Fence {
    Fence { lease: shard.to_string(), epoch }
}

/// Room storage in Redis; see the module docs. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.keys.prefix()).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store over `conn` with the key layout `keys` (usually from [`super::Redis::store`]).
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        RedisStore { conn, keys }
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Like [`Store::due_alarms`], but only rooms whose shard passes `wanted` (e.g. the shards
    /// this node owns), reading the index page by page so other nodes' due alarms cannot crowd
    /// this node's out of the first `limit`.
    pub async fn due_alarms_where(
        &self,
        now_ms: i64,
        limit: usize,
        wanted: impl Fn(u16, &RoomKey) -> bool + Send,
    ) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        const PAGE: usize = 512;
        let mut out = Vec::new();
        let mut offset = 0;
        while out.len() < limit {
            let page = self.due_page(now_ms, offset, PAGE).await?;
            let n = page.len();
            out.extend(
                page.into_iter().filter(|(s, r, _)| wanted(*s, r)).map(|(_, r, t)| (r, t)).take(limit - out.len()),
            );
            if n < PAGE {
                break;
            }
            offset += n;
        }
        Ok(out)
    }

    /// Due alarms `offset..offset + count` in index order: (shard, room, time).
    async fn due_page(&self, now_ms: i64, offset: usize, count: usize) -> Result<Vec<(u16, RoomKey, i64)>, StoreError> {
        let raw: Vec<(Vec<u8>, f64)> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.alarms())
            .arg("-inf")
            .arg(now_ms)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        raw.into_iter()
            .map(|(member, score)| {
                let (shard, room) = keys::parse_alarm_member(&member).ok_or_else(|| {
                    StoreError::Backend(format!(
                        "corrupt member {:?} in the alarm index",
                        String::from_utf8_lossy(&member)
                    ))
                })?;
                Ok((shard, room, score as i64))
            })
            .collect()
    }
}

/// Maps a Redis error to [`StoreError::Backend`].
fn backend(e: ::redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// A ZRANGEBYLEX bound: `[key`, `(key`, or `-`/`+` when unbounded.
fn lex_bound(b: Bound<&[u8]>, unbounded: &[u8]) -> Vec<u8> {
    match b {
        Bound::Included(k) => [b"[".as_slice(), k].concat(),
        Bound::Excluded(k) => [b"(".as_slice(), k].concat(),
        Bound::Unbounded => unbounded.to_vec(),
    }
}

/// The tightest key range of `opts` as ZRANGEBYLEX `(min, max)` arguments, `None` if it is empty.
fn lex_range(opts: &ListOptions) -> Option<(Vec<u8>, Vec<u8>)> {
    let lower = opts.lower_bound();
    // Every upper candidate is exclusive; the smallest wins.
    let candidates = [
        opts.end.as_ref().map(|e| e.as_bytes().to_vec()),
        opts.prefix.as_ref().and_then(|p| keys::successor(p.as_bytes())),
    ];
    let upper = candidates.into_iter().flatten().min();
    if let (Bound::Included(l) | Bound::Excluded(l), Some(u)) = (&lower, &upper) {
        if l.as_bytes() >= u.as_slice() {
            return None;
        }
    }
    let lower = lower.as_ref().map(|k| k.as_bytes());
    let upper = upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    Some((lex_bound(lower, b"-"), lex_bound(upper, b"+")))
}

/// Appends the ARGV encoding of `ops` to `args`.
fn encode_ops<'a>(ops: &'a [WriteOp], args: &mut Vec<&'a [u8]>, times: &'a [String]) {
    let mut t = times.iter();
    for op in ops {
        match op {
            WriteOp::Put(k, v) => args.extend([b"P".as_slice(), k.as_bytes(), v.as_ref()]),
            WriteOp::Delete(k) => args.extend([b"D".as_slice(), k.as_bytes()]),
            WriteOp::DeleteAll => args.push(b"X"),
            WriteOp::SetAlarm(_) => args.extend([b"A".as_slice(), t.next().expect("one time per SetAlarm").as_bytes()]),
            WriteOp::DeleteAlarm => args.push(b"R"),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, room: &RoomKey, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let hash = self.keys.room_values(shard_of(room), room);
        let values: Vec<Option<Vec<u8>>> =
            ::redis::cmd("HMGET").arg(hash).arg(keys).query_async(&mut self.conn.clone()).await.map_err(backend)?;
        if values.len() != keys.len() {
            return Err(StoreError::Backend(format!("HMGET answered {} values for {} keys", values.len(), keys.len())));
        }
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn list(&self, room: &RoomKey, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.list_fenced(room, None, opts).await
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        if opts.limit == Some(0) {
            return Ok(Vec::new());
        }
        let Some((min, max)) = lex_range(opts) else { return Ok(Vec::new()) };
        let shard = shard_of(room);
        let limit = opts.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let reverse = if opts.reverse { "1" } else { "0" };
        let (ks, vs): (Vec<Vec<u8>>, Vec<Value>) = match fence {
            None => LIST_SCRIPT
                .key(self.keys.room_keys(shard, room))
                .key(self.keys.room_values(shard, room))
                .arg(min)
                .arg(max)
                .arg(reverse)
                .arg(limit)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(backend)?,
            Some(fence) => LIST_FENCED_SCRIPT
                .key(self.keys.lease(shard))
                .key(self.keys.room_keys(shard, room))
                .key(self.keys.room_values(shard, room))
                .arg(fence.epoch)
                .arg(min)
                .arg(max)
                .arg(reverse)
                .arg(limit)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| read_error(e, fence))?,
        };
        if ks.len() != vs.len() {
            return Err(StoreError::Backend(format!("list answered {} values for {} keys", vs.len(), ks.len())));
        }
        ks.into_iter()
            .zip(vs)
            .map(|(k, v)| {
                let key = String::from_utf8(k)
                    .map_err(|_| StoreError::Backend(format!("a stored key of room {room} is not UTF-8")))?;
                match v {
                    Value::BulkString(b) => Ok((key, Bytes::from(b))),
                    other => Err(StoreError::Backend(format!(
                        "room {room}: key {key:?} is indexed but has no value ({other:?})"
                    ))),
                }
            })
            .collect()
    }

    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let Some(fence) = fence else { return Err(StoreError::Backend("unfenced write".into())) };
        let shard = shard_of(room);
        if fence.lease != shard.to_string() {
            // The fence is for another shard's lease: it does not cover this room.
            return Err(StoreError::Fenced { lease: fence.lease.clone(), epoch: fence.epoch });
        }
        if ops.is_empty() {
            return Ok(());
        }
        let epoch = fence.epoch.to_string();
        let member = keys::alarm_member(shard, room);
        let times: Vec<String> = ops
            .iter()
            .filter_map(|op| if let WriteOp::SetAlarm(t) = op { Some(t.to_string()) } else { None })
            .collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(2 + ops.len() * 3);
        args.extend([epoch.as_bytes(), member.as_bytes()]);
        encode_ops(ops, &mut args, &times);
        let result: ::redis::RedisResult<()> = COMMIT_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.room_keys(shard, room))
            .key(self.keys.room_values(shard, room))
            .key(self.keys.room_alarm(shard, room))
            .key(self.keys.alarms())
            .arg(args)
            .invoke_async(&mut self.conn.clone())
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("FENCED") => {
                Err(StoreError::Fenced { lease: fence.lease.clone(), epoch: fence.epoch })
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_alarm(&self, room: &RoomKey) -> Result<Option<i64>, StoreError> {
        let key = self.keys.room_alarm(shard_of(room), room);
        ::redis::cmd("GET").arg(key).query_async(&mut self.conn.clone()).await.map_err(backend)
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self.due_page(now_ms, 0, limit).await?.into_iter().map(|(_, r, t)| (r, t)).collect())
    }

    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let Some(fence) = fence else { return self.get(room, keys).await };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let shard = shard_of(room);
        let values: Vec<Option<Vec<u8>>> = GET_FENCED_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.room_values(shard, room))
            .arg(fence.epoch)
            .arg(keys)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| read_error(e, fence))?;
        if values.len() != keys.len() {
            return Err(StoreError::Backend(format!("HMGET answered {} values for {} keys", values.len(), keys.len())));
        }
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        let Some(fence) = fence else { return self.get_alarm(room).await };
        let shard = shard_of(room);
        ALARM_FENCED_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.room_alarm(shard, room))
            .arg(fence.epoch)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| read_error(e, fence))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use partyline::store::conformance;

    use super::*;
    use crate::redis::testing::RedisServer;
    use crate::redis::{Acquire, Leases, Redis, RedisConfig};

    fn put(k: &str, v: &str) -> WriteOp {
        WriteOp::Put(k.to_string(), Bytes::copy_from_slice(v.as_bytes()))
    }

    fn strings(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    async fn connect(server: &RedisServer) -> Redis {
        Redis::connect(RedisConfig::new(server.url())).await.unwrap()
    }

    async fn grant(leases: &Leases, shard: u16, inc: &str, ttl: Duration) -> u64 {
        match leases.acquire(shard, inc, inc, "127.0.0.1:1", ttl).await.unwrap() {
            Acquire::Granted { epoch } => epoch,
            held => panic!("shard {shard} is held: {held:?}"),
        }
    }

    /// Runs the conformance suite (which commits unfenced) through the real fenced path: the
    /// first write to a shard acquires its lease, every commit presents that lease's fence.
    struct Fenced {
        store: RedisStore,
        leases: Leases,
        epochs: Mutex<HashMap<u16, u64>>,
    }

    #[async_trait]
    impl Store for Fenced {
        async fn get(&self, room: &RoomKey, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
            self.store.get(room, keys).await
        }
        async fn list(&self, room: &RoomKey, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StoreError> {
            self.store.list(room, opts).await
        }
        async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
            assert!(fence.is_none());
            let shard = shard_of(room);
            let known = self.epochs.lock().unwrap().get(&shard).copied();
            let epoch = match known {
                Some(e) => e,
                None => {
                    let e = grant(&self.leases, shard, "conformance", Duration::from_secs(600)).await;
                    self.epochs.lock().unwrap().insert(shard, e);
                    e
                }
            };
            self.store.commit(room, Some(&fence_for(shard, epoch)), ops).await
        }
        async fn get_alarm(&self, room: &RoomKey) -> Result<Option<i64>, StoreError> {
            self.store.get_alarm(room).await
        }
        async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
            self.store.due_alarms(now_ms, limit).await
        }
    }

    #[tokio::test]
    async fn conforms_with_fenced_commits() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let fenced = Fenced { store: redis.store(), leases: redis.leases(), epochs: Mutex::default() };
        conformance::run(&fenced).await;
        assert!(!fenced.epochs.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn unfenced_and_unleased_writes_are_refused() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let store = redis.store();
        let room = RoomKey::new("main", "r");
        let shard = shard_of(&room);

        let err = store.commit(&room, None, &[put("k", "v")]).await.unwrap_err();
        assert!(matches!(&err, StoreError::Backend(m) if m == "unfenced write"), "{err:?}");

        // No lease at all for the shard.
        let err = store.commit(&room, Some(&fence_for(shard, 1)), &[put("k", "v")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { ref lease, epoch: 1 } if *lease == shard.to_string()), "{err:?}");

        // A lease of another shard does not cover the room.
        let other = (shard + 1) % partyline::placement::SHARDS;
        let e = grant(&redis.leases(), other, "n1", Duration::from_secs(30)).await;
        let err = store.commit(&room, Some(&fence_for(other, e)), &[put("k", "v")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");

        // The right shard, the wrong epoch.
        let e = grant(&redis.leases(), shard, "n1", Duration::from_secs(30)).await;
        let err = store.commit(&room, Some(&fence_for(shard, e - 1)), &[put("k", "v")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
        assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![None]);
        assert_eq!(store.list(&room, &ListOptions::default()).await.unwrap(), vec![]);

        // And the right fence works.
        store.commit(&room, Some(&fence_for(shard, e)), &[put("k", "v"), WriteOp::SetAlarm(7)]).await.unwrap();
        assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![Some(Bytes::from("v"))]);
        assert_eq!(store.get_alarm(&room).await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn reads_under_a_fence_that_no_longer_holds_are_refused() {
        let mut server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let room = RoomKey::new("main", "fenced-reads");
        let shard = shard_of(&room);
        let e = grant(&leases, shard, "node-a#1", Duration::from_secs(60)).await;
        let fence = fence_for(shard, e);
        store.commit(&room, Some(&fence), &[put("k", "v"), WriteOp::SetAlarm(42)]).await.unwrap();
        let keys = strings(&["k", "missing"]);
        assert_eq!(
            store.get_fenced(&room, Some(&fence), &keys).await.unwrap(),
            vec![Some(Bytes::from_static(b"v")), None]
        );
        let listed = store.list_fenced(&room, Some(&fence), &ListOptions::default()).await.unwrap();
        assert_eq!(listed, vec![("k".to_string(), Bytes::from_static(b"v"))]);
        assert_eq!(store.get_alarm_fenced(&room, Some(&fence)).await.unwrap(), Some(42));
        // A stale epoch reads nothing.
        let stale = fence_for(shard, e - 1);
        assert!(matches!(store.get_fenced(&room, Some(&stale), &keys).await, Err(StoreError::Fenced { .. })));
        assert!(matches!(
            store.list_fenced(&room, Some(&stale), &ListOptions::default()).await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(matches!(store.get_alarm_fenced(&room, Some(&stale)).await, Err(StoreError::Fenced { .. })));
        // Redis comes back without its data: the lease is gone, so the room reads nothing either,
        // rather than an empty room.
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match store.get_fenced(&room, Some(&fence), &keys).await {
                Err(StoreError::Fenced { .. }) => break,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
                Ok(v) => panic!("read {v:?} from a Redis that lost the lease"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_zombie_is_fenced_after_takeover_and_leaves_data_unchanged() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let room = RoomKey::new("main", "contested");
        let shard = shard_of(&room);

        let old = grant(&leases, shard, "node-a#1", Duration::from_millis(300)).await;
        let old_fence = fence_for(shard, old);
        store.commit(&room, Some(&old_fence), &[put("k", "from-a"), WriteOp::SetAlarm(100)]).await.unwrap();

        // node-a stalls past its TTL; node-b takes over once Redis has expired the lease.
        let deadline = Instant::now() + Duration::from_secs(10);
        let new = loop {
            match leases.acquire(shard, "node-b", "node-b#1", "10.0.0.2:7000", Duration::from_secs(30)).await.unwrap() {
                Acquire::Granted { epoch } => break epoch,
                Acquire::Held { .. } => {
                    assert!(Instant::now() < deadline, "the 300 ms lease never expired");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(new > old, "epoch {new} not after {old}");
        store.commit(&room, Some(&fence_for(shard, new)), &[put("k2", "from-b")]).await.unwrap();

        // The zombie wakes up and writes with its old fence: refused, nothing changes.
        let zombie_ops = [put("k", "zombie"), WriteOp::Delete("k2".into()), WriteOp::DeleteAll, WriteOp::DeleteAlarm];
        let err = store.commit(&room, Some(&old_fence), &zombie_ops).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { epoch, .. } if epoch == old), "{err:?}");
        assert_eq!(
            store.get(&room, &strings(&["k", "k2"])).await.unwrap(),
            vec![Some(Bytes::from("from-a")), Some(Bytes::from("from-b"))]
        );
        assert_eq!(store.get_alarm(&room).await.unwrap(), Some(100));
        assert_eq!(store.due_alarms(1_000, 10).await.unwrap(), vec![(room.clone(), 100)]);
        // Its renew fails too, so it learns it lost the shard.
        assert!(!leases.renew(shard, "node-a#1", old, Duration::from_secs(10)).await.unwrap());
    }

    #[tokio::test]
    async fn list_bounds_cover_prefixes_and_edges() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let room = RoomKey::new("main", "lists");
        let shard = shard_of(&room);
        let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
        let ks = ["", "a", "a\u{7f}", "a\u{80}", "aé", "a😀", "a\u{10FFFF}", "b", "\u{10FFFF}"];
        let ops: Vec<_> = ks.iter().map(|k| put(k, k)).collect();
        store.commit(&room, Some(&fence_for(shard, e)), &ops).await.unwrap();
        let list = |opts: ListOptions| {
            let store = store.clone();
            let room = room.clone();
            async move {
                let got = store.list(&room, &opts).await.unwrap();
                for (k, v) in &got {
                    assert_eq!(k.as_bytes(), v.as_ref());
                }
                got.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
            }
        };
        assert_eq!(list(ListOptions::default()).await, strings(&ks));
        let prefix = |p: &str| ListOptions { prefix: Some(p.into()), ..Default::default() };
        assert_eq!(list(prefix("a")).await, strings(&ks[1..7]));
        assert_eq!(list(prefix("")).await, strings(&ks));
        assert_eq!(list(prefix("\u{10FFFF}")).await, strings(&["\u{10FFFF}"]));
        assert_eq!(list(ListOptions { reverse: true, ..prefix("a") }).await, {
            let mut v = strings(&ks[1..7]);
            v.reverse();
            v
        });
        // Contradictory bounds: empty, no error.
        let none = ListOptions { start: Some("b".into()), end: Some("a".into()), ..Default::default() };
        assert!(list(none).await.is_empty());
        let none = ListOptions { prefix: Some("a".into()), start_after: Some("b".into()), ..Default::default() };
        assert!(list(none).await.is_empty());
        assert!(list(ListOptions { limit: Some(0), ..Default::default() }).await.is_empty());
        // Every combination agrees with the reference definition.
        let probes = [None, Some(""), Some("a"), Some("a\u{80}"), Some("aé"), Some("b"), Some("c")];
        for start in probes {
            for end in probes {
                for pre in [None, Some("a"), Some("a\u{7f}")] {
                    for reverse in [false, true] {
                        let opts = ListOptions {
                            start: start.map(Into::into),
                            end: end.map(Into::into),
                            prefix: pre.map(Into::into),
                            reverse,
                            limit: Some(3),
                            ..Default::default()
                        };
                        let mut want: Vec<String> =
                            ks.iter().filter(|k| opts.contains(k)).map(|k| k.to_string()).collect();
                        if reverse {
                            want.reverse();
                        }
                        want.truncate(3);
                        assert_eq!(list(opts.clone()).await, want, "{opts:?}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn works_again_after_redis_restarts() {
        let mut server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let room = RoomKey::new("main", "restart");
        let shard = shard_of(&room);
        let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
        store.commit(&room, Some(&fence_for(shard, e)), &[put("k", "v")]).await.unwrap();

        // The server loses everything (no persistence): the lease is gone, so writes are fenced
        // until the shard is acquired again, and the scripts must be reloaded (NOSCRIPT).
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        let e2 = loop {
            match leases.acquire(shard, "n", "n", "127.0.0.1:1", Duration::from_secs(60)).await {
                Ok(Acquire::Granted { epoch }) => break epoch,
                Ok(held) => panic!("held after restart: {held:?}"),
                Err(err) => {
                    assert!(Instant::now() < deadline, "Redis still unreachable after restart: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!(e2 > e, "time-floored epoch {e2} must exceed {e} even though the counter was lost");
        let err = store.commit(&room, Some(&fence_for(shard, e)), &[put("k", "old")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
        store.commit(&room, Some(&fence_for(shard, e2)), &[put("k", "v2")]).await.unwrap();
        assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![Some(Bytes::from("v2"))]);
        assert_eq!(store.list(&room, &ListOptions::default()).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_paused_redis_errors_within_the_response_timeout_then_recovers() {
        let server = RedisServer::start();
        let config = RedisConfig { response_timeout: Duration::from_millis(500), ..RedisConfig::new(server.url()) };
        let redis = Redis::connect(config).await.unwrap();
        let store = redis.store();
        let room = RoomKey::new("main", "paused");
        assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![None]);
        server.pause();
        let start = Instant::now();
        let err = store.get(&room, &strings(&["k"])).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        server.resume();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(err) = store.get(&room, &strings(&["k"])).await {
            assert!(Instant::now() < deadline, "still failing after resume: {err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test]
    async fn due_alarms_where_skips_other_shards() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let mut mine = Vec::new();
        let mut epochs = HashMap::new();
        for i in 0..40 {
            let room = RoomKey::new("main", format!("r{i}"));
            let shard = shard_of(&room);
            let e = match epochs.get(&shard) {
                Some(e) => *e,
                None => {
                    let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
                    epochs.insert(shard, e);
                    e
                }
            };
            store.commit(&room, Some(&fence_for(shard, e)), &[WriteOp::SetAlarm(i)]).await.unwrap();
            if shard % 2 == 0 {
                mine.push((room, i));
            }
        }
        let got = store.due_alarms_where(1_000, 1_000, |s, _| s % 2 == 0).await.unwrap();
        assert_eq!(got, mine);
        let got = store.due_alarms_where(1_000, 2, |s, _| s % 2 == 0).await.unwrap();
        assert_eq!(got, mine[..2]);
    }

    /// Throughput figures; run with
    /// `cargo test -p partyline-node redis::store::tests::throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, not a check"]
    async fn throughput() {
        let server = RedisServer::start();
        let redis = connect(&server).await;
        let (store, leases) = (redis.store(), redis.leases());
        let room = RoomKey::new("main", "bench");
        let shard = shard_of(&room);
        let e = grant(&leases, shard, "n", Duration::from_secs(600)).await;
        let fence = fence_for(shard, e);
        let n = 5_000;
        let start = Instant::now();
        for i in 0..n {
            store.commit(&room, Some(&fence), &[put(&format!("k{i}"), "v")]).await.unwrap();
        }
        let seq = start.elapsed();
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (store, fence) = (store.clone(), fence.clone());
                let room = room.clone();
                tokio::spawn(async move { store.commit(&room, Some(&fence), &[put(&format!("c{i}"), "v")]).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let conc = start.elapsed();
        let start = Instant::now();
        let all = store.list(&room, &ListOptions::default()).await.unwrap();
        let list = start.elapsed();
        println!(
            "{n} sequential fenced commits: {seq:?} ({:.0}/s); {n} concurrent: {conc:?} ({:.0}/s); list of {}: {list:?}",
            n as f64 / seq.as_secs_f64(),
            n as f64 / conc.as_secs_f64(),
            all.len()
        );
    }
}
