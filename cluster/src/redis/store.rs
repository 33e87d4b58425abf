//! [`RedisStore`]: room storage in Redis, every write fenced by the shard lease.
//!
//! A room of shard `s` lives in `pl:{s<s>}:k:<room>` (ZSET of keys, score 0), `pl:{s<s>}:v:<room>`
//! (HASH key → value), `pl:{s<s>}:a:<room>` (alarm) and `pl:{s<s>}:u:<room>` (its usage, for the
//! quota), plus its member in the shard's alarm index `pl:{s<s>}:alarms` (see [`super::keys`] and
//! [`super::alarms`]): every key of a commit is in the shard's hash slot, so a commit is one
//! script on one Redis Cluster primary.
//!
//! **Writes.** [`Store::commit`] runs one Lua script: it compares the fence's holder and epoch
//! with the `inc` and `epoch` fields of the shard's lease hash and, only if both are equal,
//! applies the ops in order. The holder matters when Redis failed over to a replica that missed
//! the last grants: the promoted replica can grant an epoch again, to another incarnation, and
//! the old holder must stay fenced. A missing (expired, released) lease, another holder or
//! another epoch answers `FENCED`, which becomes
//! [`StoreError::Fenced`]; nothing is written. With a [`Quota`] ([`RedisStore::with_quota`]) the
//! same script first works out the room's usage after the ops (from the usage hash, the length of
//! every value it replaces or deletes, and what it writes) and answers `QUOTA` instead of writing
//! when that would grow the room past the quota, so the check and the write are one atomic step,
//! as the fence check is. The usage hash is kept exact while a quota is set, deleted by commits
//! without one, and rebuilt from the room's values (one pass in the script) when missing. A fence must be presented: in the cluster every
//! write is fenced, so `commit(.., None, ..)` is refused with `StoreError::Backend("unfenced
//! write")`. The fence is [`fence_for`]`(shard, inc, epoch)`: its `lease` is the room's shard
//! number in decimal, its `holder` the incarnation the lease was granted to; a fence naming
//! another shard is refused as fenced (it does not cover the room).
//!
//! **Reads** are plain commands (`HMGET`, `GET`, `ZRANGEBYSCORE`) or, for `list`, one Lua script
//! that reads the key range and the values together so they are consistent.
//!
//! **Redis Cluster.** A commit can meet a slot that is being migrated between primaries: the
//! connection follows `ASK`/`MOVED` and retries `TRYAGAIN` (the script's keys are split between
//! the two primaries for a moment) within the response timeout. The script runs where all its
//! keys are, or not at all, so the fence check and the write stay one atomic step.
//!
//! There is no unfenced mode. The tests run `partyline::store::conformance::run` (which commits
//! with `None`) through a small wrapper that acquires each touched shard's lease on first use and
//! presents its fence, so the suite exercises the real fenced path.

use std::ops::Bound;
use std::sync::LazyLock;

use std::sync::Arc;

use ::redis::{Script, Value};
use async_trait::async_trait;
use bytes::Bytes;
use partyline::runtime::placement::shard_of;
use partyline::store::{Fence, ListOptions, Quota, RoomKey, Store, StoreError, Usage, WriteOp};

use super::alarms::{self, Hints};
use super::conn::{Connection, Replicas};
use super::keys::{self, Keys};

/// The usage of a room (keys, bytes of keys plus values) from its values HASH, `v`: one pass.
const SCAN_USAGE: &str = r#"
local function scan_usage(v)
  local keys, bytes = 0, 0
  for _, k in ipairs(redis.call('HKEYS', v)) do
    keys = keys + 1
    bytes = bytes + #k + redis.call('HSTRLEN', v, k)
  end
  return keys, bytes
end
"#;

/// KEYS: lease, room keys ZSET, room values HASH, room alarm, the shard's alarm index, room
/// usage HASH. ARGV: epoch, holder (incarnation), alarm member, most keys, most bytes (0: no
/// limit; both 0: no quota), then the ops: `P key value` | `D key` | `X` | `A time` | `R`.
const COMMIT: &str = r#"
local held = redis.call('HMGET', KEYS[1], 'inc', 'epoch')
if held[1] ~= ARGV[2] or held[2] ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held by this holder at this epoch')
end
local max_keys, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #ARGV
local quota = max_keys > 0 or max_bytes > 0
local touches = false
local keys, bytes
if quota then
  local u = redis.call('HMGET', KEYS[6], 'keys', 'bytes')
  keys, bytes = tonumber(u[1]), tonumber(u[2])
  if keys == nil or bytes == nil then
    keys, bytes = scan_usage(KEYS[3])
  end
  local keys0, bytes0 = keys, bytes
  -- The length of each key's value as the ops leave it (false: absent).
  local now, cleared = {}, false
  local i = 6
  while i <= n do
    local op = ARGV[i]
    if op == 'P' or op == 'D' then
      touches = true
      local k = ARGV[i + 1]
      local prev = now[k]
      if prev == nil then
        prev = false
        if not cleared then
          local len = redis.call('HSTRLEN', KEYS[3], k)
          if len > 0 or redis.call('HEXISTS', KEYS[3], k) == 1 then prev = len end
        end
      end
      if prev then
        keys = keys - 1
        bytes = bytes - #k - prev
      end
      if op == 'P' then
        local len = #ARGV[i + 2]
        keys = keys + 1
        bytes = bytes + #k + len
        now[k] = len
        i = i + 3
      else
        now[k] = false
        i = i + 2
      end
    elseif op == 'X' then
      touches = true
      keys, bytes, now, cleared = 0, 0, {}, true
      i = i + 1
    elseif op == 'A' then
      i = i + 2
    elseif op == 'R' then
      i = i + 1
    else
      return redis.error_reply('BADOP ' .. tostring(op))
    end
  end
  -- Only growth past a limit is refused: a room over a lowered quota can always shrink.
  if (max_keys > 0 and keys > max_keys and keys > keys0) or (max_bytes > 0 and bytes > max_bytes and bytes > bytes0) then
    return redis.error_reply(string.format('QUOTA %d %d', keys, bytes))
  end
end
local i = 6
while i <= n do
  local op = ARGV[i]
  if op == 'P' then
    redis.call('ZADD', KEYS[2], 0, ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    touches = true
    i = i + 3
  elseif op == 'D' then
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
    touches = true
    i = i + 2
  elseif op == 'X' then
    redis.call('DEL', KEYS[2], KEYS[3])
    touches = true
    i = i + 1
  elseif op == 'A' then
    redis.call('SET', KEYS[4], ARGV[i + 1])
    redis.call('ZADD', KEYS[5], ARGV[i + 1], ARGV[3])
    i = i + 2
  elseif op == 'R' then
    redis.call('DEL', KEYS[4])
    redis.call('ZREM', KEYS[5], ARGV[3])
    i = i + 1
  else
    return redis.error_reply('BADOP ' .. tostring(op))
  end
end
if touches then
  if quota and keys > 0 then
    redis.call('HSET', KEYS[6], 'keys', keys, 'bytes', bytes)
  else
    -- Empty, or not kept without a quota (rebuilt when a quota is set again).
    redis.call('DEL', KEYS[6])
  end
end
return 1
"#;

/// KEYS: room values HASH, room usage HASH. Returns `{keys, bytes}`.
const USAGE: &str = r#"
local u = redis.call('HMGET', KEYS[2], 'keys', 'bytes')
if u[1] and u[2] then
  return {tonumber(u[1]), tonumber(u[2])}
end
local keys, bytes = scan_usage(KEYS[1])
return {keys, bytes}
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

/// The fence check that starts every fenced read: ARGV[1] is the reader's epoch, ARGV[2] its
/// incarnation, KEYS[1] its shard's lease.
const READ_FENCE: &str = r#"
local held = redis.call('HMGET', KEYS[1], 'inc', 'epoch')
if held[1] ~= ARGV[2] or held[2] ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not held by this holder at this epoch')
end
"#;

/// KEYS: lease, room values HASH. ARGV: epoch, holder, then the keys. Returns their values.
const GET_FENCED: &str = "return redis.call('HMGET', KEYS[2], unpack(ARGV, 3))";

/// KEYS: lease, room alarm. ARGV: epoch, holder. Returns the alarm time or nil.
const ALARM_FENCED: &str = "return redis.call('GET', KEYS[2])";

static COMMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SCAN_USAGE}{COMMIT}")));
static USAGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SCAN_USAGE}{USAGE}")));
static LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIST));
static GET_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{READ_FENCE}{GET_FENCED}")));
static ALARM_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{READ_FENCE}{ALARM_FENCED}")));
/// [`LIST`] behind the fence check, with every key index shifted by one (the lease comes first)
/// and every argument index by two (the epoch and the holder come first).
static LIST_FENCED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    let body = LIST.replace("KEYS[2]", "KEYS[3]").replace("KEYS[1]", "KEYS[2]");
    let body = (1..=4).rev().fold(body, |b, i| b.replace(&format!("ARGV[{i}]"), &format!("ARGV[{}]", i + 2)));
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

/// The fence of a writer holding shard `shard`'s lease as incarnation `inc` at `epoch` (the
/// grant's whole identity, see the module docs).
pub fn fence_for(shard: u16, inc: &str, epoch: u64) -> Fence {
    Fence { lease: shard.to_string(), holder: inc.to_string(), epoch }
}

/// Room storage in Redis; see the module docs. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    /// Where commits go (`conn` unless [`RedisStore::with_replicas`] says otherwise).
    writes: Connection,
    replicas: Replicas,
    keys: Keys,
    hints: Arc<Hints>,
    quota: Quota,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.keys.prefix()).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store over `conn` with the key layout `keys`, sharing `hints` about the alarm index
    /// with the other stores of the process (usually from [`super::Redis::store`]).
    pub fn new(conn: Connection, keys: Keys, hints: Arc<Hints>) -> Self {
        RedisStore { writes: conn.clone(), conn, keys, hints, quota: Quota::NONE, replicas: Replicas::default() }
    }

    /// Sends commits over `writes`, each followed by `WAIT` for `replicas` (see
    /// [`super::RedisConfig::min_replicas`]): a commit fewer replicas acknowledged in time fails
    /// with [`StoreError::Backend`].
    pub fn with_replicas(self, writes: Connection, replicas: Replicas) -> Self {
        RedisStore { writes, replicas, ..self }
    }

    /// Enforces `quota` per room in every commit.
    pub fn with_quota(self, quota: Quota) -> Self {
        RedisStore { quota, ..self }
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Like [`Store::due_alarms`], but only the alarms of `shards` (each with the lease epoch
    /// this node owns it under, `None` for a shard it should own but does not), leaving out the
    /// rooms `skip` says to, and reading only the shards' indexes that may hold a due alarm (see
    /// [`super::alarms`]). A shard whose index cannot be read is left out until the next call.
    pub async fn due_alarms_in(
        &self,
        now_ms: i64,
        limit: usize,
        shards: &[(u16, Option<u64>)],
        skip: impl Fn(&RoomKey) -> bool,
    ) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        alarms::due_in(&self.conn, &self.keys, &self.hints, now_ms, limit, shards, skip).await
    }

    /// Moves what the obsolete global alarm index of earlier versions holds into the shards'
    /// indexes (also done by [`RedisStore::due_alarms_in`], at most every 30 s); how many
    /// entries moved.
    pub async fn move_legacy_alarms(&self) -> Result<usize, StoreError> {
        alarms::move_legacy(&self.conn, &self.keys, &self.hints).await
    }
}

/// The time a `SetAlarm` sets.
fn alarm_time(op: &WriteOp) -> Option<i64> {
    match op {
        WriteOp::SetAlarm(t) => Some(*t),
        _ => None,
    }
}

impl RedisStore {
    /// The commit script's `QUOTA <keys> <bytes>` answer as [`StoreError::QuotaExceeded`].
    fn quota_error(&self, e: &::redis::RedisError) -> StoreError {
        let mut figures = e.detail().unwrap_or_default().split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
        StoreError::QuotaExceeded {
            keys: figures.next().unwrap_or(0),
            bytes: figures.next().unwrap_or(0),
            max_keys: self.quota.max_keys,
            max_bytes: self.quota.max_bytes,
        }
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
                .arg(&fence.holder)
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
        let (max_keys, max_bytes) = (self.quota.max_keys.to_string(), self.quota.max_bytes.to_string());
        let times: Vec<String> = ops
            .iter()
            .filter_map(|op| if let WriteOp::SetAlarm(t) = op { Some(t.to_string()) } else { None })
            .collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(5 + ops.len() * 3);
        args.extend([
            epoch.as_bytes(),
            fence.holder.as_bytes(),
            member.as_bytes(),
            max_keys.as_bytes(),
            max_bytes.as_bytes(),
        ]);
        encode_ops(ops, &mut args, &times);
        let result: ::redis::RedisResult<()> = COMMIT_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.room_keys(shard, room))
            .key(self.keys.room_values(shard, room))
            .key(self.keys.room_alarm(shard, room))
            .key(self.keys.shard_alarms(shard))
            .key(self.keys.room_usage(shard, room))
            .arg(args)
            .invoke_async(&mut self.writes.replicated(self.replicas))
            .await;
        let refused = matches!(&result, Err(e) if e.code() == Some("FENCED"));
        if let (false, Some(earliest)) = (refused, ops.iter().filter_map(alarm_time).min()) {
            // Even a commit that failed may have landed (a timeout): the alarm index may hold it.
            self.hints.wrote(shard, earliest);
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("FENCED") => {
                Err(StoreError::Fenced { lease: fence.lease.clone(), epoch: fence.epoch })
            }
            Err(e) if e.code() == Some("QUOTA") => Err(self.quota_error(&e)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        let shard = shard_of(room);
        let (keys, bytes): (u64, u64) = USAGE_SCRIPT
            .key(self.keys.room_values(shard, room))
            .key(self.keys.room_usage(shard, room))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        Ok(Some(Usage { keys, bytes }))
    }

    fn quota(&self) -> Quota {
        self.quota
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        alarms::due_everywhere(&self.conn, &self.keys, now_ms, limit).await
    }

    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let shard = shard_of(room);
        let values: Vec<Option<Vec<u8>>> = match fence {
            None => ::redis::cmd("HMGET")
                .arg(self.keys.room_values(shard, room))
                .arg(keys)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(backend)?,
            Some(fence) => GET_FENCED_SCRIPT
                .key(self.keys.lease(shard))
                .key(self.keys.room_values(shard, room))
                .arg(fence.epoch)
                .arg(&fence.holder)
                .arg(keys)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| read_error(e, fence))?,
        };
        if values.len() != keys.len() {
            return Err(StoreError::Backend(format!("HMGET answered {} values for {} keys", values.len(), keys.len())));
        }
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        let shard = shard_of(room);
        let Some(fence) = fence else {
            let key = self.keys.room_alarm(shard, room);
            return ::redis::cmd("GET").arg(key).query_async(&mut self.conn.clone()).await.map_err(backend);
        };
        ALARM_FENCED_SCRIPT
            .key(self.keys.lease(shard))
            .key(self.keys.room_alarm(shard, room))
            .arg(fence.epoch)
            .arg(&fence.holder)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| read_error(e, fence))
    }
}

mod inspect;
pub use inspect::RoomStorage;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod replica_tests;
