//! The storage backend seam. A [`Store`] holds every room's key/value data and alarm; the room
//! runtime puts a write-through cache and the output gate in front of it ([`crate::Storage`]).
//! Implementations: [`MemoryStore`] (here, for tests and `dev --ephemeral`), the embedded
//! on-disk store and the Redis store (in `partyline-node`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use crate::sync::Lock;
use async_trait::async_trait;
use bytes::Bytes;

/// Identifies one room in the whole cluster: a party name and a room id (the raw URL segment).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    /// Party name, e.g. `main`.
    pub party: String,
    /// Room id, exactly as it appeared in the URL path.
    pub room: String,
}

impl RoomKey {
    /// The key of room `room` of party `party`.
    pub fn new(party: impl Into<String>, room: impl Into<String>) -> Self {
        RoomKey { party: party.into(), room: room.into() }
    }
}

impl std::fmt::Display for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.party, self.room)
    }
}

/// Proof that the writer still owns the room: checked by the store against the current lease in
/// the same atomic step as the write. `None` where there is only one writer (`dev`).
///
/// The whole grant is checked, holder and epoch: epochs only grow while the store keeps its
/// counter, but a store that fails over to a replica that missed the last grants can hand out
/// an epoch again, to another holder. Checking the holder too keeps the old holder fenced then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease the writer holds (a shard lease key in the cluster).
    pub lease: String,
    /// Who the lease was granted to (a node incarnation in the cluster).
    pub holder: String,
    /// The epoch of that lease the writer was granted.
    pub epoch: u64,
}

/// One mutation of a room's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to the value.
    Put(String, Bytes),
    /// Remove `key`.
    Delete(String),
    /// Remove every key of the room (not the alarm).
    DeleteAll,
    /// Set the room's single alarm to this time (ms since the Unix epoch).
    SetAlarm(i64),
    /// Remove the room's alarm.
    DeleteAlarm,
}

/// The range and order of a [`Store::list`] call. Keys compare by their UTF-8 bytes; `start` is
/// inclusive, `start_after` and `end` exclusive; `reverse` does not change what the bounds mean.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// First key to include.
    pub start: Option<String>,
    /// Include only keys after this one.
    pub start_after: Option<String>,
    /// Include only keys before this one.
    pub end: Option<String>,
    /// Include only keys with this prefix.
    pub prefix: Option<String>,
    /// Return keys in descending order.
    pub reverse: bool,
    /// Return at most this many keys.
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Whether `key` is in the range (not counting `limit`).
    pub fn contains(&self, key: &str) -> bool {
        self.start.as_deref().is_none_or(|s| key >= s)
            && self.start_after.as_deref().is_none_or(|s| key > s)
            && self.end.as_deref().is_none_or(|e| key < e)
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }

    /// The tightest lower bound implied by `start`, `start_after` and `prefix`.
    pub fn lower_bound(&self) -> Bound<String> {
        let mut lower: Bound<String> = Bound::Unbounded;
        let tighten = |lower: &mut Bound<String>, cand: Bound<String>| {
            let cand_key = match &cand {
                Bound::Included(k) | Bound::Excluded(k) => k.clone(),
                Bound::Unbounded => return,
            };
            let replace = match &*lower {
                Bound::Unbounded => true,
                Bound::Included(k) => cand_key > *k || (cand_key == *k && matches!(cand, Bound::Excluded(_))),
                Bound::Excluded(k) => cand_key > *k,
            };
            if replace {
                *lower = cand;
            }
        };
        if let Some(s) = &self.start {
            tighten(&mut lower, Bound::Included(s.clone()));
        }
        if let Some(s) = &self.start_after {
            tighten(&mut lower, Bound::Excluded(s.clone()));
        }
        if let Some(p) = &self.prefix {
            tighten(&mut lower, Bound::Included(p.clone()));
        }
        lower
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The writer's lease epoch is not the current one: another node owns the room now.
    #[error("write refused: lease {lease} is no longer held at epoch {epoch}")]
    Fenced {
        /// The lease that was checked.
        lease: String,
        /// The epoch the writer presented.
        epoch: u64,
    },
    /// The backend failed (I/O, connection, corruption).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The commit would take the room past its storage quota; nothing of it was applied.
    #[error("room storage quota exceeded: the write would make {keys} keys and {bytes} bytes (limits: {})", quota_text(*.max_keys, *.max_bytes))]
    QuotaExceeded {
        /// Keys the room would hold.
        keys: u64,
        /// Bytes (keys plus values) the room would hold.
        bytes: u64,
        /// The key limit (0: none).
        max_keys: u64,
        /// The byte limit (0: none).
        max_bytes: u64,
    },
}

fn quota_text(max_keys: u64, max_bytes: u64) -> String {
    let part = |n: u64, what: &str| if n == 0 { format!("no {what} limit") } else { format!("{n} {what}") };
    format!("{}, {}", part(max_keys, "keys"), part(max_bytes, "bytes"))
}

/// What a room's stored data takes: its keys, and the bytes of its keys plus values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys stored.
    pub keys: u64,
    /// Bytes of keys plus values.
    pub bytes: u64,
}

/// A room's storage quota; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys.
    pub max_keys: u64,
    /// Most bytes of keys plus values.
    pub max_bytes: u64,
}

impl Quota {
    /// No limit.
    pub const NONE: Quota = Quota { max_keys: 0, max_bytes: 0 };

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_keys > 0 || self.max_bytes > 0
    }

    /// Checks a change of a room's usage from `before` to `after`: only growth past a limit is
    /// refused, so a room over its quota (the quota was lowered) can always shrink.
    pub fn check(&self, before: Usage, after: Usage) -> Result<(), StoreError> {
        let keys = self.max_keys > 0 && after.keys > self.max_keys && after.keys > before.keys;
        let bytes = self.max_bytes > 0 && after.bytes > self.max_bytes && after.bytes > before.bytes;
        if keys || bytes {
            return Err(StoreError::QuotaExceeded {
                keys: after.keys,
                bytes: after.bytes,
                max_keys: self.max_keys,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// The bytes one entry counts for in a [`Usage`].
pub fn entry_bytes(key: &str, value_len: usize) -> u64 {
    (key.len() + value_len) as u64
}

/// A room's usage after applying `ops` to a room that used `before`. `old(key)` gives the length
/// of a key's value before the commit (`None`: absent); it is asked at most once per key.
pub fn usage_after(
    before: Usage,
    ops: &[WriteOp],
    mut old: impl FnMut(&str) -> Result<Option<usize>, StoreError>,
) -> Result<Usage, StoreError> {
    let mut now: HashMap<&str, Option<usize>> = HashMap::new();
    let mut cleared = false;
    let mut u = before;
    for op in ops {
        let (key, new) = match op {
            WriteOp::Put(k, v) => (k.as_str(), Some(v.len())),
            WriteOp::Delete(k) => (k.as_str(), None),
            WriteOp::DeleteAll => {
                u = Usage::default();
                cleared = true;
                now.clear();
                continue;
            }
            WriteOp::SetAlarm(_) | WriteOp::DeleteAlarm => continue,
        };
        let prev = match now.get(key) {
            Some(v) => *v,
            None if cleared => None,
            None => old(key)?,
        };
        if let Some(len) = prev {
            u.keys = u.keys.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(entry_bytes(key, len));
        }
        if let Some(len) = new {
            u.keys += 1;
            u.bytes += entry_bytes(key, len);
        }
        now.insert(key, new);
    }
    Ok(u)
}

/// A room's stored key/value data and alarm, for every room of a process or a cluster.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The values of `keys` (in the same order), `None` for absent keys: [`Store::get_fenced`]
    /// without a fence.
    async fn get(&self, room: &RoomKey, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.get_fenced(room, None, keys).await
    }
    /// The entries in the range, ordered by key bytes (descending with `reverse`):
    /// [`Store::list_fenced`] without a fence.
    async fn list(&self, room: &RoomKey, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.list_fenced(room, None, opts).await
    }
    /// Applies `ops` in order as one atomic step, checked against `fence` first.
    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError>;
    /// The room's alarm time (ms since the Unix epoch), if set: [`Store::get_alarm_fenced`]
    /// without a fence.
    async fn get_alarm(&self, room: &RoomKey) -> Result<Option<i64>, StoreError> {
        self.get_alarm_fenced(room, None).await
    }
    /// Rooms whose alarm is due at or before `now_ms`, earliest first, at most `limit`.
    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError>;
    /// What the room's stored data takes, for stores that enforce a [`Quota`] in `commit`
    /// (`None`: this store keeps no account, and rooms check no quota before committing).
    async fn usage(&self, _room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        Ok(None)
    }
    /// The quota `commit` enforces per room.
    fn quota(&self) -> Quota {
        Quota::NONE
    }

    /// The values of `keys` for a room writing under `fence` (`None`: no fence). A store that
    /// fences writes refuses the read as well ([`StoreError::Fenced`]) once the fence no longer
    /// holds, so a room never reads storage that is not its own any more, such as a Redis that
    /// restarted without its data. The fenced reads are the required ones and the unfenced
    /// reads call them, so a wrapper that forwards the required methods passes every fence on;
    /// a store without leases (one process owns every room) ignores the fence.
    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError>;

    /// The entries in the range (see [`Store::list`]) for a room writing under `fence`; see
    /// [`Store::get_fenced`].
    async fn list_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError>;

    /// The room's alarm time for a room writing under `fence`; see [`Store::get_fenced`].
    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError>;
}

/// Storage in process memory: for unit tests and `partyline dev --ephemeral`.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    quota: Quota,
}

#[derive(Default)]
struct MemoryInner {
    data: HashMap<RoomKey, BTreeMap<String, Bytes>>,
    usage: HashMap<RoomKey, Usage>,
    alarms: HashMap<RoomKey, i64>,
    by_time: BTreeSet<(i64, RoomKey)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store enforcing `quota` on every room's commits.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }
}

/// Selects the entries of `map` in the range of `opts`, honouring order and limit.
pub fn select_range<'a, I>(entries: I, opts: &ListOptions) -> Vec<(String, Bytes)>
where
    I: DoubleEndedIterator<Item = (&'a String, &'a Bytes)>,
{
    let limit = opts.limit.unwrap_or(usize::MAX);
    let pick = |(k, v): (&String, &Bytes)| opts.contains(k).then(|| (k.clone(), v.clone()));
    if opts.reverse {
        entries.rev().filter_map(pick).take(limit).collect()
    } else {
        entries.filter_map(pick).take(limit).collect()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let inner = self.inner.locked();
        let data = inner.data.get(room);
        Ok(keys.iter().map(|k| data.and_then(|d| d.get(k).cloned())).collect())
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let inner = self.inner.locked();
        let Some(data) = inner.data.get(room) else { return Ok(Vec::new()) };
        let range = data.range((opts.lower_bound(), Bound::Unbounded));
        Ok(select_range(range, opts))
    }

    async fn commit(&self, room: &RoomKey, _fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut inner = self.inner.locked();
        let before = inner.usage.get(room).copied().unwrap_or_default();
        let data = inner.data.get(room);
        let after = usage_after(before, ops, |k| Ok(data.and_then(|d| d.get(k)).map(|v| v.len())))?;
        self.quota.check(before, after)?;
        inner.usage.insert(room.clone(), after);
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    inner.data.entry(room.clone()).or_default().insert(k.clone(), v.clone());
                }
                WriteOp::Delete(k) => {
                    if let Some(d) = inner.data.get_mut(room) {
                        d.remove(k);
                    }
                }
                WriteOp::DeleteAll => {
                    inner.data.remove(room);
                }
                WriteOp::SetAlarm(t) => {
                    if let Some(old) = inner.alarms.insert(room.clone(), *t) {
                        inner.by_time.remove(&(old, room.clone()));
                    }
                    inner.by_time.insert((*t, room.clone()));
                }
                WriteOp::DeleteAlarm => {
                    if let Some(old) = inner.alarms.remove(room) {
                        inner.by_time.remove(&(old, room.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, _fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        Ok(self.inner.locked().alarms.get(room).copied())
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        let inner = self.inner.locked();
        Ok(inner.by_time.iter().take_while(|(t, _)| *t <= now_ms).take(limit).map(|(t, r)| (r.clone(), *t)).collect())
    }

    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        Ok(Some(self.inner.locked().usage.get(room).copied().unwrap_or_default()))
    }

    fn quota(&self) -> Quota {
        self.quota
    }
}

/// A behaviour suite every [`Store`] must pass; backends call it from their own tests.
pub mod conformance {
    use super::*;

    fn k(s: &str) -> String {
        s.to_string()
    }

    fn put(key: &str, v: &str) -> WriteOp {
        WriteOp::Put(k(key), Bytes::copy_from_slice(v.as_bytes()))
    }

    fn keys(entries: &[(String, Bytes)]) -> Vec<&str> {
        entries.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Runs every check against `store`, which must start empty. Panics on the first failure.
    pub async fn run(store: &dyn Store) {
        let a = RoomKey::new("main", "a");
        let b = RoomKey::new("main", "b");
        let other_party = RoomKey::new("other", "a");

        // Rooms are isolated, also across parties with the same room id.
        store.commit(&a, None, &[put("x", "1"), put("y", "2")]).await.unwrap();
        store.commit(&b, None, &[put("x", "b1")]).await.unwrap();
        store.commit(&other_party, None, &[put("x", "o1")]).await.unwrap();
        let got = store.get(&a, &[k("x"), k("nope"), k("y")]).await.unwrap();
        assert_eq!(got, vec![Some(Bytes::from("1")), None, Some(Bytes::from("2"))]);
        assert_eq!(store.get(&b, &[k("x")]).await.unwrap(), vec![Some(Bytes::from("b1"))]);
        assert_eq!(store.get(&other_party, &[k("x")]).await.unwrap(), vec![Some(Bytes::from("o1"))]);

        // Ops in one commit apply in order.
        store.commit(&a, None, &[put("z", "1"), WriteOp::Delete(k("z")), put("w", "1"), put("w", "2")]).await.unwrap();
        assert_eq!(store.get(&a, &[k("z"), k("w")]).await.unwrap(), vec![None, Some(Bytes::from("2"))]);

        // Keys order by UTF-8 bytes: "B" < "a" < "ab" < "b" < "é" (0xC3) < "😀" (0xF0).
        let room = RoomKey::new("main", "order");
        let ks = ["b", "é", "a", "😀", "ab", "B", "a\u{0}"];
        let ops: Vec<_> = ks.iter().map(|s| put(s, s)).collect();
        store.commit(&room, None, &ops).await.unwrap();
        let all = store.list(&room, &ListOptions::default()).await.unwrap();
        assert_eq!(keys(&all), vec!["B", "a", "a\u{0}", "ab", "b", "é", "😀"]);
        let rev =
            store.list(&room, &ListOptions { reverse: true, limit: Some(2), ..Default::default() }).await.unwrap();
        assert_eq!(keys(&rev), vec!["😀", "é"]);
        let pre = store.list(&room, &ListOptions { prefix: Some(k("a")), ..Default::default() }).await.unwrap();
        assert_eq!(keys(&pre), vec!["a", "a\u{0}", "ab"]);
        let bounded = ListOptions { start: Some(k("a")), end: Some(k("b")), ..Default::default() };
        assert_eq!(keys(&store.list(&room, &bounded).await.unwrap()), vec!["a", "a\u{0}", "ab"]);
        let after = ListOptions { start_after: Some(k("a")), end: Some(k("b")), ..Default::default() };
        assert_eq!(keys(&store.list(&room, &after).await.unwrap()), vec!["a\u{0}", "ab"]);
        let rev_bounded =
            ListOptions {
                start: Some(k("a")), end: Some(k("é")), reverse: true, limit: Some(3), ..Default::default()
            };
        assert_eq!(keys(&store.list(&room, &rev_bounded).await.unwrap()), vec!["b", "ab", "a\u{0}"]);
        let pre_after = ListOptions { prefix: Some(k("a")), start_after: Some(k("a\u{0}")), ..Default::default() };
        assert_eq!(keys(&store.list(&room, &pre_after).await.unwrap()), vec!["ab"]);
        let empty = store.list(&RoomKey::new("main", "never"), &ListOptions::default()).await.unwrap();
        assert!(empty.is_empty());

        // DeleteAll removes the room's keys only, not the alarm and not other rooms.
        store.commit(&a, None, &[WriteOp::SetAlarm(5_000)]).await.unwrap();
        store.commit(&a, None, &[WriteOp::DeleteAll, put("after", "1")]).await.unwrap();
        assert_eq!(keys(&store.list(&a, &ListOptions::default()).await.unwrap()), vec!["after"]);
        assert_eq!(store.get(&b, &[k("x")]).await.unwrap(), vec![Some(Bytes::from("b1"))]);
        assert_eq!(store.get_alarm(&a).await.unwrap(), Some(5_000));

        // One alarm per room; due alarms come earliest first.
        store.commit(&b, None, &[WriteOp::SetAlarm(3_000)]).await.unwrap();
        store.commit(&other_party, None, &[WriteOp::SetAlarm(9_000)]).await.unwrap();
        store.commit(&a, None, &[WriteOp::SetAlarm(4_000)]).await.unwrap();
        assert_eq!(store.get_alarm(&a).await.unwrap(), Some(4_000));
        let due = store.due_alarms(5_000, 10).await.unwrap();
        assert_eq!(due, vec![(b.clone(), 3_000), (a.clone(), 4_000)]);
        assert_eq!(store.due_alarms(5_000, 1).await.unwrap(), vec![(b.clone(), 3_000)]);
        store.commit(&b, None, &[WriteOp::DeleteAlarm]).await.unwrap();
        assert_eq!(store.get_alarm(&b).await.unwrap(), None);
        assert_eq!(store.due_alarms(10_000, 10).await.unwrap(), vec![(a.clone(), 4_000), (other_party.clone(), 9_000)]);
        assert!(store.due_alarms(1_000, 10).await.unwrap().is_empty());

        // Binary values round-trip byte for byte.
        let bin = Bytes::from_static(&[0, 159, 146, 150, 255]);
        store.commit(&a, None, &[WriteOp::Put(k("bin"), bin.clone())]).await.unwrap();
        assert_eq!(store.get(&a, &[k("bin")]).await.unwrap(), vec![Some(bin)]);
    }

    /// The quota [`quota`] expects the store to enforce.
    pub const QUOTA: Quota = Quota { max_keys: 3, max_bytes: 20 };

    /// Checks that `store` (empty, enforcing [`QUOTA`]) refuses commits past it atomically and
    /// keeps an exact account. Panics on the first failure.
    pub async fn quota(store: &dyn Store) {
        let room = RoomKey::new("main", "quota");
        let usage = |keys, bytes| Some(Usage { keys, bytes });
        assert_eq!(store.quota(), QUOTA);
        assert_eq!(store.usage(&room).await.unwrap(), usage(0, 0));
        store.commit(&room, None, &[put("a", "1"), put("b", "22"), put("c", "333")]).await.unwrap();
        assert_eq!(store.usage(&room).await.unwrap(), usage(3, 9));
        // A fourth key is refused, and nothing of that commit is applied.
        let err = store.commit(&room, None, &[put("a", "x"), put("d", "4")]).await.unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { keys: 4, max_keys: 3, .. }), "{err}");
        assert_eq!(store.get(&room, &[k("a"), k("d")]).await.unwrap(), vec![Some(Bytes::from("1")), None]);
        assert_eq!(store.usage(&room).await.unwrap(), usage(3, 9));
        // Overwrites count the difference; a delete makes room in the same commit.
        store.commit(&room, None, &[put("c", "3333333"), WriteOp::Delete(k("b")), put("d", "4")]).await.unwrap();
        assert_eq!(store.usage(&room).await.unwrap(), usage(3, 12));
        let err = store.commit(&room, None, &[put("d", "x".repeat(10).as_str())]).await.unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { bytes: 21, max_bytes: 20, .. }), "{err}");
        // Alarms are not counted; delete_all starts the count again.
        store.commit(&room, None, &[WriteOp::SetAlarm(1)]).await.unwrap();
        store.commit(&room, None, &[WriteOp::DeleteAll, put("e", "5")]).await.unwrap();
        assert_eq!(store.usage(&room).await.unwrap(), usage(1, 2));
        // Other rooms have their own quota.
        let other = RoomKey::new("main", "other");
        store.commit(&other, None, &[put("a", "1"), put("b", "1"), put("c", "1")]).await.unwrap();
        assert_eq!(store.usage(&other).await.unwrap(), usage(3, 6));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::run(&MemoryStore::new()).await;
        conformance::quota(&MemoryStore::new().with_quota(conformance::QUOTA)).await;
    }

    #[test]
    fn usage_after_counts_overwrites_deletes_and_delete_all() {
        let old = |k: &str| Ok(if k == "old" { Some(5) } else { None });
        let u =
            usage_after(Usage { keys: 1, bytes: 8 }, &[WriteOp::Put("old".into(), Bytes::from("12"))], old).unwrap();
        assert_eq!(u, Usage { keys: 1, bytes: 5 });
        let ops = [
            WriteOp::Put("n".into(), Bytes::from("1")),
            WriteOp::Put("n".into(), Bytes::from("123")),
            WriteOp::Delete("old".into()),
            WriteOp::Delete("never".into()),
        ];
        assert_eq!(usage_after(Usage { keys: 1, bytes: 8 }, &ops, old).unwrap(), Usage { keys: 1, bytes: 4 });
        let ops =
            [WriteOp::Put("x".into(), Bytes::from("1")), WriteOp::DeleteAll, WriteOp::Put("old".into(), Bytes::new())];
        assert_eq!(usage_after(Usage { keys: 9, bytes: 99 }, &ops, old).unwrap(), Usage { keys: 1, bytes: 3 });
        let q = Quota { max_keys: 2, max_bytes: 0 };
        assert!(q.check(Usage { keys: 2, bytes: 0 }, Usage { keys: 3, bytes: 0 }).is_err());
        assert!(
            q.check(Usage { keys: 5, bytes: 0 }, Usage { keys: 4, bytes: 0 }).is_ok(),
            "shrinking is always allowed"
        );
    }

    #[test]
    fn lower_bound_takes_the_tightest() {
        let o = ListOptions { start: Some("b".into()), prefix: Some("a".into()), ..Default::default() };
        assert_eq!(o.lower_bound(), Bound::Included("b".into()));
        let o = ListOptions { start: Some("b".into()), start_after: Some("b".into()), ..Default::default() };
        assert_eq!(o.lower_bound(), Bound::Excluded("b".into()));
    }
}
