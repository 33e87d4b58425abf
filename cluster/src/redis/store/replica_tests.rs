//! Commits and lease grants that wait for replicas ([`crate::redis::RedisConfig::min_replicas`]),
//! against a real primary and replica (`redis-server --replicaof`), and against a Redis Cluster
//! with a replica per primary.

use std::time::{Duration, Instant};

use super::*;
use crate::redis::testing::{RedisCluster, RedisServer};
use crate::redis::{Acquire, Leases, Redis, RedisConfig};

fn put(k: &str, v: &str) -> WriteOp {
    WriteOp::Put(k.to_string(), Bytes::copy_from_slice(v.as_bytes()))
}

/// Long enough for a healthy replica on a busy 2-core machine to acknowledge a write (300 ms
/// was not, once, for the first grant), short enough for the tests that wait it out.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(1);

async fn connect(url: &str, min_replicas: u32) -> Redis {
    let config = RedisConfig { min_replicas, replica_timeout: REPLICA_TIMEOUT, ..RedisConfig::new(url) };
    Redis::connect(config).await.unwrap()
}

/// Grants `shard`'s lease, trying again for a while if the replicas did not acknowledge it in
/// time (what the tests check comes after).
async fn grant(leases: &Leases, shard: u16) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match leases.acquire(shard, "n", "n", "127.0.0.1:1", Duration::from_secs(60)).await {
            Ok(Acquire::Granted { epoch }) => return epoch,
            Ok(held) => panic!("shard {shard} is held: {held:?}"),
            Err(e) if e.to_string().contains("replicas") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("shard {shard}: {e}"),
        }
    }
}

/// Resumes a paused server when dropped, also when the test fails.
struct Paused<'a>(&'a RedisServer);

impl<'a> Paused<'a> {
    fn pause(server: &'a RedisServer) -> Self {
        server.pause();
        Paused(server)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

/// The value of `key` in the room's values as the server at `url` holds it (a replica too).
async fn value_at(url: &str, store: &RedisStore, room: &RoomKey, key: &str) -> Option<String> {
    let mut conn = ::redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("HGET")
        .arg(store.keys().room_values(shard_of(room), room))
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn with_one_replica_required_a_commit_is_acknowledged_only_once_the_replica_holds_it() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let redis = connect(&primary.url(), 1).await;
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "replicated");
    let shard = shard_of(&room);
    let fence = fence_for(shard, "n", grant(&leases, shard).await);

    store.commit(&room, Some(&fence), &[put("k", "v1"), put("j", "w")]).await.unwrap();
    // WAIT answered 1: the replica has it the moment the commit returns.
    assert_eq!(value_at(&replica.url(), &store, &room, "k").await.as_deref(), Some("v1"));

    let paused = Paused::pause(&replica);
    let start = Instant::now();
    let err = store.commit(&room, Some(&fence), &[put("k", "v2")]).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("0 of the 1 replicas")), "{err:?}");
    // At the timeout, not long after (the bound only catches a commit that hangs).
    assert!(took >= REPLICA_TIMEOUT && took < Duration::from_secs(10), "failed after {took:?}");
    // The primary may hold the write (that is expected): the caller was just never told it was saved.
    assert_eq!(value_at(&primary.url(), &store, &room, "k").await.as_deref(), Some("v2"));

    // A lease grant is not obtained either.
    let other = (shard + 1) % partyline::runtime::placement::SHARDS;
    let err = leases.acquire(other, "n", "n", "127.0.0.1:1", Duration::from_secs(60)).await.unwrap_err();
    assert!(err.to_string().contains("0 of the 1 replicas"), "{err}");

    // Reads and renewals go over the other connection: a blocked WAIT does not hold them up.
    let start = Instant::now();
    assert!(leases.renew(shard, "n", fence.epoch, Duration::from_secs(60)).await.unwrap());
    assert_eq!(store.get(&room, &["j".to_string()]).await.unwrap(), vec![Some(Bytes::from("w"))]);
    assert!(start.elapsed() < REPLICA_TIMEOUT, "{:?}", start.elapsed());

    drop(paused);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = store.commit(&room, Some(&fence), &[put("k", "v3")]).await {
        assert!(Instant::now() < deadline, "still failing after the replica resumed: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value_at(&replica.url(), &store, &room, "k").await.as_deref(), Some("v3"));
}

#[tokio::test]
async fn without_replicas_required_commits_and_grants_do_not_wait_for_them() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let redis = connect(&primary.url(), 0).await;
    let (store, leases) = (redis.store(), redis.leases());
    let room = RoomKey::new("main", "unreplicated");
    let shard = shard_of(&room);
    let _paused = Paused::pause(&replica);
    let start = Instant::now();
    let fence = fence_for(shard, "n", grant(&leases, shard).await);
    store.commit(&room, Some(&fence), &[put("k", "v")]).await.unwrap();
    assert!(start.elapsed() < REPLICA_TIMEOUT, "{:?}", start.elapsed());
    assert_eq!(store.get(&room, &["k".to_string()]).await.unwrap(), vec![Some(Bytes::from("v"))]);
}

#[tokio::test]
async fn with_no_replica_at_all_a_required_replica_fails_the_commit_and_fencing_still_comes_first() {
    let primary = RedisServer::start();
    let redis = connect(&primary.url(), 1).await;
    let plain = connect(&primary.url(), 0).await;
    let room = RoomKey::new("main", "alone");
    let shard = shard_of(&room);
    let err = redis.leases().acquire(shard, "n", "n", "127.0.0.1:1", Duration::from_secs(60)).await.unwrap_err();
    assert!(err.to_string().contains("0 of the 1 replicas"), "{err}");
    let fence = fence_for(shard, "n", grant(&plain.leases(), shard).await);
    let err = redis.store().commit(&room, Some(&fence), &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("replicas")), "{err:?}");
    // A fenced commit is refused as fenced, whatever WAIT answers.
    let stale = fence_for(shard, "n", fence.epoch + 1);
    let err = redis.store().commit(&room, Some(&stale), &[put("k", "v")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
}

/// On a Redis Cluster the WAIT goes to the primary that took the write: with one primary's
/// replica paused, its rooms fail and the other primary's rooms commit.
#[tokio::test]
async fn on_a_redis_cluster_the_wait_goes_to_the_primary_that_took_the_write() {
    let cluster = RedisCluster::start_with_replicas(2, 1);
    // A generous wait: the healthy primary's replica must ack in time on a busy machine (the
    // paused one never does, whatever the wait).
    let config =
        RedisConfig { min_replicas: 1, replica_timeout: Duration::from_secs(3), ..RedisConfig::new(cluster.url()) };
    let redis = Redis::connect(config).await.unwrap();
    let (store, leases) = (redis.store(), redis.leases());
    // Two rooms whose shards live on different primaries.
    let primary_of = |room: &RoomKey| cluster.primary_of(cluster.slot_of(&store.keys().lease(shard_of(room))));
    let a = RoomKey::new("main", "a");
    let b = (0..).map(|i| RoomKey::new("main", format!("b{i}"))).find(|b| primary_of(b) != primary_of(&a)).unwrap();
    let fa = fence_for(shard_of(&a), "n", grant(&leases, shard_of(&a)).await);
    let fb = fence_for(shard_of(&b), "n", grant(&leases, shard_of(&b)).await);
    store.commit(&a, Some(&fa), &[put("k", "1")]).await.unwrap();
    store.commit(&b, Some(&fb), &[put("k", "1")]).await.unwrap();

    let replica = cluster.replica_of(primary_of(&a)).expect("a replica of a's primary");
    cluster.pause(replica);
    let failed = store.commit(&a, Some(&fa), &[put("k", "2")]).await;
    let other = store.commit(&b, Some(&fb), &[put("k", "2")]).await;
    cluster.resume(replica);
    let err = failed.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("0 of the 1 replicas")), "{err:?}");
    other.unwrap();
}

/// Commit latency with `min_replicas` 0 and 1 against a local primary (no persistence) and its
/// replica: single commits one after the other (p50, p99), then 16 rooms committing at once
/// (commits per second); figures in docs/benchmarks.md. Run with
/// `cargo test --release -p partyline-cluster redis::store::replica_tests::commit_latency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn commit_latency_with_0_and_1_replicas() {
    const N: usize = 3_000;
    const WRITERS: usize = 16;
    let primary = RedisServer::start();
    let _replica = RedisServer::start_replica_of(&primary);
    for min_replicas in [0, 1] {
        let redis = connect(&primary.url(), min_replicas).await;
        let (store, leases) = (redis.store(), redis.leases());
        let rooms: Vec<RoomKey> = (0..WRITERS).map(|i| RoomKey::new("main", format!("r{min_replicas}-{i}"))).collect();
        let mut fences = Vec::new();
        for room in &rooms {
            let shard = shard_of(room);
            let epoch = match leases.acquire(shard, "n", "n", "127.0.0.1:1", Duration::from_secs(600)).await.unwrap() {
                Acquire::Granted { epoch } => epoch,
                Acquire::Held { epoch, .. } => epoch,
            };
            fences.push(fence_for(shard, "n", epoch));
        }
        let (room, fence) = (&rooms[0], &fences[0]);
        for i in 0..200 {
            store.commit(room, Some(fence), &[put(&format!("warm{i}"), "v")]).await.unwrap();
        }
        let mut took = Vec::with_capacity(N);
        for i in 0..N {
            let start = Instant::now();
            store.commit(room, Some(fence), &[put(&format!("k{i}"), "value")]).await.unwrap();
            took.push(start.elapsed());
        }
        took.sort();
        let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        let start = Instant::now();
        let tasks: Vec<_> = rooms
            .iter()
            .cloned()
            .zip(fences.iter().cloned())
            .map(|(room, fence)| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..N / WRITERS {
                        store.commit(&room, Some(&fence), &[put(&format!("c{i}"), "value")]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let conc = start.elapsed();
        println!(
            "min_replicas {min_replicas}: {N} single commits p50 {:?} p99 {:?} max {:?}; {WRITERS} rooms at once: {:.0} commits/s",
            at(0.5),
            at(0.99),
            took[took.len() - 1],
            (N / WRITERS * WRITERS) as f64 / conc.as_secs_f64()
        );
    }
}
