//! Tests of [`RedisStore`]. Each check runs against one Redis server (a test each) and against a
//! 3-primary Redis Cluster (all in one test, each under its own key prefix).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use partyline::store::conformance;

use super::*;
use crate::redis::testing::{self, RedisCluster, RedisServer};
use crate::redis::{Acquire, Leases, Redis};

fn put(k: &str, v: &str) -> WriteOp {
    WriteOp::Put(k.to_string(), Bytes::copy_from_slice(v.as_bytes()))
}

fn strings(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

async fn single() -> (RedisServer, Redis) {
    let server = RedisServer::start();
    let redis = testing::connect(&server.url(), "pl").await;
    (server, redis)
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

impl Fenced {
    async fn fence(&self, room: &RoomKey) -> Fence {
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
        fence_for(shard, "conformance", epoch)
    }
}

#[async_trait]
impl Store for Fenced {
    async fn get_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.store.get(room, keys).await
    }
    async fn list_fenced(
        &self,
        room: &RoomKey,
        _fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.store.list(room, opts).await
    }
    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        assert!(fence.is_none());
        self.store.commit(room, Some(&self.fence(room).await), ops).await
    }
    async fn get_alarm_fenced(&self, room: &RoomKey, _fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        self.store.get_alarm(room).await
    }
    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.store.due_alarms(now_ms, limit).await
    }
    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        self.store.usage(room).await
    }
    fn quota(&self) -> Quota {
        self.store.quota()
    }
}

async fn conforms_with_fenced_commits(redis: Redis) {
    let fenced = Fenced { store: redis.store(), leases: redis.leases(), epochs: Mutex::default() };
    conformance::run(&fenced).await;
    assert!(!fenced.epochs.lock().unwrap().is_empty());
}

/// The quota suite through fenced commits; then data written without a quota is counted once
/// one is set (the usage is rebuilt from the values), and a room over a lowered quota can still
/// shrink.
async fn enforces_the_quota_in_the_commit(redis: Redis) {
    let quota_store = redis.store().with_quota(conformance::QUOTA);
    let fenced = Fenced { store: quota_store, leases: redis.leases(), epochs: Mutex::default() };
    conformance::quota(&fenced).await;

    let room = RoomKey::new("main", "counted-later");
    let plain = Fenced { store: redis.store(), leases: redis.leases(), epochs: Mutex::default() };
    plain.commit(&room, None, &[put("a", "1"), put("b", "22"), put("c", ""), put("d", "4444")]).await.unwrap();
    let usage_key = redis.keys().room_usage(shard_of(&room), &room);
    let exists: bool = ::redis::cmd("EXISTS").arg(&usage_key).query_async(&mut redis.connection()).await.unwrap();
    assert!(!exists, "no account is kept without a quota");
    let limited = Fenced {
        store: redis.store().with_quota(Quota { max_keys: 3, max_bytes: 0 }),
        leases: redis.leases(),
        epochs: Mutex::new(plain.epochs.lock().unwrap().clone()),
    };
    // Four keys (an empty value counts as a key), 11 bytes.
    assert_eq!(limited.usage(&room).await.unwrap(), Some(Usage { keys: 4, bytes: 11 }));
    let err = limited.commit(&room, None, &[put("e", "5")]).await.unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { keys: 5, bytes: 13, max_keys: 3, max_bytes: 0 }), "{err}");
    limited.commit(&room, None, &[put("a", "11")]).await.unwrap();
    limited.commit(&room, None, &[WriteOp::Delete("c".into()), WriteOp::Delete("nothing".into())]).await.unwrap();
    assert_eq!(limited.usage(&room).await.unwrap(), Some(Usage { keys: 3, bytes: 11 }));
    let err = limited.commit(&room, None, &[put("f", "6")]).await.unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { keys: 4, .. }), "{err}");
    assert_eq!(limited.get(&room, &strings(&["c", "f"])).await.unwrap(), vec![None, None]);
    // delete_all empties the room and its account.
    limited.commit(&room, None, &[WriteOp::DeleteAll]).await.unwrap();
    assert_eq!(limited.usage(&room).await.unwrap(), Some(Usage::default()));
}

async fn unfenced_and_unleased_writes_are_refused(redis: Redis) {
    let store = redis.store();
    let room = RoomKey::new("main", "r");
    let shard = shard_of(&room);

    let err = store.commit(&room, None, &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m == "unfenced write"), "{err:?}");

    // No lease at all for the shard.
    let err = store.commit(&room, Some(&fence_for(shard, "n1", 1)), &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { ref lease, epoch: 1 } if *lease == shard.to_string()), "{err:?}");

    // A lease of another shard does not cover the room.
    let other = (shard + 1) % partyline::runtime::placement::SHARDS;
    let e = grant(&redis.leases(), other, "n1", Duration::from_secs(30)).await;
    let err = store.commit(&room, Some(&fence_for(other, "n1", e)), &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");

    // The right shard, the wrong epoch.
    let e = grant(&redis.leases(), shard, "n1", Duration::from_secs(30)).await;
    let err = store.commit(&room, Some(&fence_for(shard, "n1", e - 1)), &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![None]);
    assert_eq!(store.list(&room, &ListOptions::default()).await.unwrap(), vec![]);

    // And the right fence works.
    store.commit(&room, Some(&fence_for(shard, "n1", e)), &[put("k", "v"), WriteOp::SetAlarm(7)]).await.unwrap();
    assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![Some(Bytes::from("v"))]);
    assert_eq!(store.get_alarm(&room).await.unwrap(), Some(7));
}

async fn a_zombie_is_fenced_after_takeover_and_leaves_data_unchanged(redis: Redis) {
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "contested");
    let shard = shard_of(&room);

    let old = grant(&leases, shard, "node-a#1", Duration::from_millis(300)).await;
    let old_fence = fence_for(shard, "node-a#1", old);
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
    store.commit(&room, Some(&fence_for(shard, "node-b#1", new)), &[put("k2", "from-b")]).await.unwrap();

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

async fn list_bounds_cover_prefixes_and_edges(redis: Redis) {
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "lists");
    let shard = shard_of(&room);
    let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
    let ks = ["", "a", "a\u{7f}", "a\u{80}", "aé", "a😀", "a\u{10FFFF}", "b", "\u{10FFFF}"];
    let ops: Vec<_> = ks.iter().map(|k| put(k, k)).collect();
    store.commit(&room, Some(&fence_for(shard, "n", e)), &ops).await.unwrap();
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
                    let mut want: Vec<String> = ks.iter().filter(|k| opts.contains(k)).map(|k| k.to_string()).collect();
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

async fn due_alarms_come_from_the_given_shards_reading_only_what_may_be_due(redis: Redis) {
    let (store, leases) = (redis.store(), redis.leases());
    let mut mine = Vec::new();
    let mut epochs = BTreeMap::new();
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
        store.commit(&room, Some(&fence_for(shard, "n", e)), &[WriteOp::SetAlarm(i)]).await.unwrap();
        if shard % 2 == 0 {
            mine.push((room, i));
        }
    }
    let owned: Vec<(u16, Option<u64>)> =
        epochs.iter().filter(|(s, _)| *s % 2 == 0).map(|(s, e)| (*s, Some(*e))).collect();
    let none = |_: &RoomKey| false;
    assert_eq!(store.due_alarms_in(1_000, 1_000, &owned, none).await.unwrap(), mine);
    assert_eq!(store.due_alarms_in(1_000, 2, &owned, none).await.unwrap(), mine[..2]);
    let first = mine[0].0.clone();
    assert_eq!(store.due_alarms_in(1_000, 2, &owned, |r| *r == first).await.unwrap(), mine[1..3]);
    // Not yet due: nothing.
    assert!(store.due_alarms_in(-1, 10, &owned, none).await.unwrap().is_empty());

    // 100 owned shards without alarms: read once, then not again while nothing may be due.
    let quiet: Vec<(u16, Option<u64>)> = (0..partyline::runtime::placement::SHARDS)
        .filter(|s| !epochs.contains_key(s))
        .take(100)
        .map(|s| (s, Some(1)))
        .collect();
    assert!(store.due_alarms_in(1_000, 10, &quiet, none).await.unwrap().is_empty());
    let before = testing::command_calls(&redis, "zrangebyscore").await;
    for _ in 0..3 {
        assert!(store.due_alarms_in(1_000, 10, &quiet, none).await.unwrap().is_empty());
    }
    assert_eq!(testing::command_calls(&redis, "zrangebyscore").await - before, 0, "no reads while nothing may be due");
    // This process commits an alarm in one of them: the next poll reads that shard and finds it.
    let (shard, _) = quiet[7];
    let room = (0..).map(|i| RoomKey::new("main", format!("q{i}"))).find(|r| shard_of(r) == shard).unwrap();
    let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
    store.commit(&room, Some(&fence_for(shard, "n", e)), &[WriteOp::SetAlarm(500)]).await.unwrap();
    let quiet_now: Vec<(u16, Option<u64>)> =
        quiet.iter().map(|&(s, ep)| if s == shard { (s, Some(e)) } else { (s, ep) }).collect();
    assert_eq!(store.due_alarms_in(1_000, 10, &quiet_now, none).await.unwrap(), vec![(room.clone(), 500)]);
    assert_eq!(testing::command_calls(&redis, "zrangebyscore").await - before, 1, "one shard read");

    // The single index of earlier versions is moved into the shards' indexes.
    let legacy_room = RoomKey::new("old", "room");
    let legacy_shard = shard_of(&legacy_room);
    let _: () = ::redis::cmd("ZADD")
        .arg(redis.keys().legacy_alarms())
        .arg(42)
        .arg(keys::alarm_member(legacy_shard, &legacy_room))
        .query_async(&mut redis.connection())
        .await
        .unwrap();
    assert_eq!(store.move_legacy_alarms().await.unwrap(), 1);
    assert_eq!(store.move_legacy_alarms().await.unwrap(), 0);
    let got = store.due_alarms_in(1_000, 10, &[(legacy_shard, None)], none).await.unwrap();
    assert!(got.contains(&(legacy_room, 42)), "{got:?}");
}

async fn reads_under_a_fence_that_no_longer_holds_are_refused(redis: &Redis) {
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "fenced-reads");
    let shard = shard_of(&room);
    let e = grant(&leases, shard, "node-a#1", Duration::from_secs(60)).await;
    let fence = fence_for(shard, "node-a#1", e);
    store.commit(&room, Some(&fence), &[put("k", "v"), WriteOp::SetAlarm(42)]).await.unwrap();
    let keys = strings(&["k", "missing"]);
    assert_eq!(store.get_fenced(&room, Some(&fence), &keys).await.unwrap(), vec![Some(Bytes::from_static(b"v")), None]);
    let listed = store.list_fenced(&room, Some(&fence), &ListOptions::default()).await.unwrap();
    assert_eq!(listed, vec![("k".to_string(), Bytes::from_static(b"v"))]);
    assert_eq!(store.get_alarm_fenced(&room, Some(&fence)).await.unwrap(), Some(42));
    // A stale epoch reads nothing.
    let stale = fence_for(shard, "node-a#1", e - 1);
    assert!(matches!(store.get_fenced(&room, Some(&stale), &keys).await, Err(StoreError::Fenced { .. })));
    assert!(matches!(
        store.list_fenced(&room, Some(&stale), &ListOptions::default()).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(store.get_alarm_fenced(&room, Some(&stale)).await, Err(StoreError::Fenced { .. })));
}

/// A Redis that failed over to a replica which missed the last grants can grant an epoch again,
/// to another incarnation (the epoch is floored by Redis's clock, which a promoted replica's
/// clock may trail). The fence names the holder too, so the old holder stays fenced.
async fn the_same_epoch_granted_to_another_holder_fences_the_old_one(redis: &Redis) {
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "regranted");
    let shard = shard_of(&room);
    let e = grant(&leases, shard, "node-a#1", Duration::from_secs(60)).await;
    let old = fence_for(shard, "node-a#1", e);
    store.commit(&room, Some(&old), &[put("k", "from-a"), WriteOp::SetAlarm(42)]).await.unwrap();

    // The lease hash as the promoted replica could have it: the same epoch, another holder.
    let _: () = ::redis::cmd("HSET")
        .arg(redis.keys().lease(shard))
        .arg("owner")
        .arg("node-b")
        .arg("inc")
        .arg("node-b#1")
        .arg("addr")
        .arg("10.0.0.2:7000")
        .query_async(&mut redis.connection())
        .await
        .unwrap();
    let err = store.commit(&room, Some(&old), &[put("k", "zombie")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { epoch, .. } if epoch == e), "{err:?}");
    let keys = strings(&["k"]);
    assert!(matches!(store.get_fenced(&room, Some(&old), &keys).await, Err(StoreError::Fenced { .. })));
    assert!(matches!(
        store.list_fenced(&room, Some(&old), &ListOptions::default()).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(store.get_alarm_fenced(&room, Some(&old)).await, Err(StoreError::Fenced { .. })));

    // The new holder's fence covers the room; the refused commit changed nothing.
    let new = fence_for(shard, "node-b#1", e);
    assert_eq!(store.get_fenced(&room, Some(&new), &keys).await.unwrap(), vec![Some(Bytes::from("from-a"))]);
    store.commit(&room, Some(&new), &[put("k", "from-b")]).await.unwrap();
    assert_eq!(store.get(&room, &keys).await.unwrap(), vec![Some(Bytes::from("from-b"))]);
    assert_eq!(store.get_alarm_fenced(&room, Some(&new)).await.unwrap(), Some(42));
}

#[tokio::test]
async fn the_same_epoch_granted_to_another_holder_fences_the_old_one_single() {
    let (_server, redis) = single().await;
    the_same_epoch_granted_to_another_holder_fences_the_old_one(&redis).await;
}

#[tokio::test]
async fn conforms_with_fenced_commits_single() {
    let (_server, redis) = single().await;
    conforms_with_fenced_commits(redis).await;
}

#[tokio::test]
async fn enforces_the_quota_in_the_commit_single() {
    let (_server, redis) = single().await;
    enforces_the_quota_in_the_commit(redis).await;
}

#[tokio::test]
async fn unfenced_and_unleased_writes_are_refused_single() {
    let (_server, redis) = single().await;
    unfenced_and_unleased_writes_are_refused(redis).await;
}

#[tokio::test]
async fn a_zombie_is_fenced_after_takeover_and_leaves_data_unchanged_single() {
    let (_server, redis) = single().await;
    a_zombie_is_fenced_after_takeover_and_leaves_data_unchanged(redis).await;
}

#[tokio::test]
async fn list_bounds_cover_prefixes_and_edges_single() {
    let (_server, redis) = single().await;
    list_bounds_cover_prefixes_and_edges(redis).await;
}

#[tokio::test]
async fn due_alarms_come_from_the_given_shards_single() {
    let (_server, redis) = single().await;
    due_alarms_come_from_the_given_shards_reading_only_what_may_be_due(redis).await;
}

#[tokio::test]
async fn reads_under_a_fence_that_no_longer_holds_are_refused_single() {
    let (mut server, redis) = single().await;
    reads_under_a_fence_that_no_longer_holds_are_refused(&redis).await;
    // Redis comes back without its data: the lease is gone, so the room reads nothing either,
    // rather than an empty room.
    let store = redis.store();
    let room = RoomKey::new("main", "fenced-reads");
    let shard = shard_of(&room);
    let held = redis.leases().owner(shard).await.unwrap().expect("the lease is held");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get_fenced(&room, Some(&fence_for(shard, &held.inc, held.epoch)), &strings(&["k"])).await {
            Err(StoreError::Fenced { .. }) => break,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
            Ok(v) => panic!("read {v:?} from a Redis that lost the lease"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_store_checks_pass_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let redis = |prefix: &'static str| testing::connect(&url, prefix);
    tokio::join!(
        async { conforms_with_fenced_commits(redis("c1").await).await },
        async { unfenced_and_unleased_writes_are_refused(redis("c2").await).await },
        async { a_zombie_is_fenced_after_takeover_and_leaves_data_unchanged(redis("c3").await).await },
        async { list_bounds_cover_prefixes_and_edges(redis("c4").await).await },
        async { reads_under_a_fence_that_no_longer_holds_are_refused(&redis("c6").await).await },
        async { enforces_the_quota_in_the_commit(redis("c7").await).await },
        async { the_same_epoch_granted_to_another_holder_fences_the_old_one(&redis("c8").await).await },
    );
    // Alone, so the command counts are its own.
    due_alarms_come_from_the_given_shards_reading_only_what_may_be_due(redis("c5").await).await;
}

#[tokio::test]
async fn fenced_commits_stay_correct_while_their_slot_migrates() {
    let cluster = RedisCluster::start(3);
    let redis = testing::connect(&cluster.url(), "pl").await;
    let (store, leases) = (redis.store(), redis.leases());
    // Six rooms of one shard: their keys, the lease and the indexes all move with the slot.
    let shard = 77;
    let rooms: Vec<RoomKey> =
        (0..).map(|i| RoomKey::new("main", format!("m{i}"))).filter(|r| shard_of(r) == shard).take(6).collect();
    let epoch = grant(&leases, shard, "n", Duration::from_secs(60)).await;
    let fence = fence_for(shard, "n", epoch);
    for room in &rooms {
        store.commit(room, Some(&fence), &[put("seed", "x"), WriteOp::SetAlarm(1)]).await.unwrap();
    }
    let slot = cluster.slot_of(&redis.keys().lease(shard));
    let from = cluster.primary_of(slot);
    let to = cluster.primaries().into_iter().find(|p| *p != from).unwrap();

    // Writers commit as fast as they can while the slot moves key by key (20 ms apart).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = rooms
        .iter()
        .map(|room| {
            let (store, room, fence, stop) = (store.clone(), room.clone(), fence.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ops = [put(&format!("k{acked}"), "v"), put("last", &acked.to_string())];
                    store.commit(&room, Some(&fence), &ops).await.expect("a commit during the migration");
                    acked += 1;
                }
                acked
            })
        })
        .collect();
    let moved = tokio::task::spawn_blocking(move || {
        let moved = cluster.migrate_slot(slot, to, Duration::from_millis(20));
        (cluster, moved)
    })
    .await
    .unwrap();
    let (cluster, moved) = moved;
    // A little more traffic after the hand-over (MOVED, then the new slot map).
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(moved >= 6 * 3, "only {moved} keys moved");
    assert_eq!(cluster.primary_of(slot), to);
    for (room, writer) in rooms.iter().zip(writers) {
        let acked = writer.await.unwrap();
        assert!(acked > 10, "room {room}: only {acked} commits");
        // Every acknowledged commit is there, in one piece.
        let all = store.list(room, &ListOptions::default()).await.unwrap();
        assert_eq!(all.len() as u32, acked + 2, "room {room}");
        let last = store.get(room, &strings(&["last"])).await.unwrap();
        assert_eq!(last, vec![Some(Bytes::from((acked - 1).to_string()))]);
    }
    // The fence still holds on the new primary: another epoch is refused.
    let err = store.commit(&rooms[0], Some(&fence_for(shard, "n", epoch - 1)), &[put("z", "z")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert!(cluster.keys_on(from, "pl:*").is_empty(), "nothing of the shard is left behind");
}

#[tokio::test]
async fn works_again_after_redis_restarts() {
    let (mut server, redis) = single().await;
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "restart");
    let shard = shard_of(&room);
    let e = grant(&leases, shard, "n", Duration::from_secs(60)).await;
    store.commit(&room, Some(&fence_for(shard, "n", e)), &[put("k", "v")]).await.unwrap();

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
    let err = store.commit(&room, Some(&fence_for(shard, "n", e)), &[put("k", "old")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    store.commit(&room, Some(&fence_for(shard, "n", e2)), &[put("k", "v2")]).await.unwrap();
    assert_eq!(store.get(&room, &strings(&["k"])).await.unwrap(), vec![Some(Bytes::from("v2"))]);
    assert_eq!(store.list(&room, &ListOptions::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_paused_redis_errors_within_the_response_timeout_then_recovers() {
    let server = RedisServer::start();
    let config = crate::redis::RedisConfig {
        response_timeout: Duration::from_millis(500),
        ..crate::redis::RedisConfig::new(server.url())
    };
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

/// Throughput figures; run with
/// `cargo test -p partyline-cluster redis::store::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput() {
    let (_server, redis) = single().await;
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "bench");
    let shard = shard_of(&room);
    let e = grant(&leases, shard, "n", Duration::from_secs(600)).await;
    let fence = fence_for(shard, "n", e);
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

/// Seconds of CPU each Redis server (each primary of a cluster) has used (`INFO cpu`).
async fn redis_cpu(redis: &Redis) -> Vec<(String, f64)> {
    testing::info(redis, "cpu")
        .await
        .into_iter()
        .map(|(node, text)| {
            let field =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
            (node, field("used_cpu_sys:") + field("used_cpu_user:"))
        })
        .collect()
}

/// Fenced commits per second for many rooms, one Redis against a 3-primary Redis Cluster, with
/// each primary's share of the work (`INFO commandstats`); run with
/// `cargo test --release -p partyline-cluster redis::store::tests::many_rooms -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn many_rooms_single_vs_cluster() {
    const ROOMS: usize = 2_000;
    const WRITERS: usize = 64;
    const RUN: Duration = Duration::from_secs(5);
    let server = RedisServer::start();
    let cluster = RedisCluster::start(3);
    for (what, url) in [("one Redis", server.url()), ("Redis Cluster, 3 primaries", cluster.url())] {
        let redis = testing::connect(&url, "pl").await;
        let (store, leases) = (redis.store(), redis.leases());
        let rooms: Vec<RoomKey> = (0..ROOMS).map(|i| RoomKey::new("main", format!("room-{i}"))).collect();
        let mut epochs = HashMap::new();
        for shard in 0..partyline::runtime::placement::SHARDS {
            epochs.insert(shard, grant(&leases, shard, "bench", Duration::from_secs(600)).await);
        }
        let fences: Vec<Fence> = rooms.iter().map(|r| fence_for(shard_of(r), "bench", epochs[&shard_of(r)])).collect();
        let on_cluster = url.starts_with("redis+cluster");
        if on_cluster {
            cluster.reset_stats();
        }
        let cpu_before = redis_cpu(&redis).await;
        let before = testing::command_calls(&redis, "evalsha").await;
        let deadline = Instant::now() + RUN;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, rooms, fences) = (store.clone(), rooms.clone(), fences.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    let message = "m".repeat(100);
                    while Instant::now() < deadline {
                        let i = (w + n * WRITERS) % ROOMS;
                        store.commit(&rooms[i], Some(&fences[i]), &[put("messages", &message)]).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut commits = 0;
        for t in tasks {
            commits += t.await.unwrap();
        }
        let calls = testing::command_calls(&redis, "evalsha").await - before;
        let cpu: Vec<(String, f64)> = redis_cpu(&redis)
            .await
            .into_iter()
            .map(|(node, secs)| {
                let was = cpu_before.iter().find(|(n, _)| *n == node).map_or(0.0, |(_, s)| *s);
                (node, (secs - was) / RUN.as_secs_f64())
            })
            .collect();
        println!(
            "{what}: {ROOMS} rooms, {WRITERS} writers: {:.0} fenced commits/s ({calls} EVALSHA)",
            commits as f64 / RUN.as_secs_f64()
        );
        // Lease renewals of all 4096 shards, as one node owning them all would send them.
        let held: Vec<(u16, u64)> = epochs.iter().map(|(s, e)| (*s, *e)).collect();
        let start = Instant::now();
        let rounds = 10;
        for _ in 0..rounds {
            assert!(leases
                .renew_many(&held, "bench", Duration::from_secs(600))
                .await
                .unwrap()
                .iter()
                .all(|r| *r == Some(true)));
        }
        println!("{what}: renewing all {} shard leases: {:?} per round", held.len(), start.elapsed() / rounds);
        for (node, busy) in &cpu {
            println!("  {node}: Redis CPU {:.0}% of a core while committing", busy * 100.0);
        }
        if on_cluster {
            for port in cluster.primaries() {
                let stats = cluster.command_calls(port);
                let leases_here = cluster.keys_on(port, "pl:{s*}:lease").len();
                let rooms_here = rooms
                    .iter()
                    .filter(|r| {
                        cluster.primary_of(crate::redis::router::slot(redis.keys().lease(shard_of(r)).as_bytes()))
                            == port
                    })
                    .count();
                println!(
                    "  primary :{port}: {rooms_here} of the {ROOMS} rooms, {} of the 4096 shard leases, {} EVALSHA ({:.0}% of the commits and renewals)",
                    leases_here,
                    stats.get("evalsha").copied().unwrap_or(0),
                    100.0 * stats.get("evalsha").copied().unwrap_or(0) as f64 / (calls + rounds as u64 * 4096) as f64,
                );
            }
        }
    }
}
