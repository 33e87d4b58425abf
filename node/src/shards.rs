//! The shards this node owns: leases acquired on demand, renewed in one pipelined round trip,
//! and dropped by the node itself (self-fence) before they can expire in Redis. A dropped shard
//! takes its rooms down with it; Redis refuses any write they still attempt (fencing), and the
//! node stops relaying their frames at the self-fence deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::redis::{Acquire, Leases};

/// Lease timing. The node stops serving a shard `fence_after` after the *send* time of its last
/// successful renewal, which is before Redis can expire the lease (`ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Lease time to live in Redis.
    pub ttl: Duration,
    /// How often owned leases are renewed.
    pub renew_every: Duration,
    /// Self-fence delay after the last successful renewal was sent.
    pub fence_after: Duration,
}

impl LeaseTiming {
    /// The production profile: TTL 10 s, renewed every 2 s, self-fence at 8 s.
    pub const STANDARD: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_secs(2),
        fence_after: Duration::from_secs(8),
    };
    /// The fast profile for tests and small clusters: TTL 3 s, renewed every 500 ms, self-fence
    /// at 2.4 s.
    pub const FAST: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
        fence_after: Duration::from_millis(2400),
    };

    /// Checks the timing is coherent.
    pub fn validate(&self) -> Result<(), String> {
        if self.fence_after >= self.ttl {
            return Err(format!("self-fence ({:?}) must come before the lease TTL ({:?})", self.fence_after, self.ttl));
        }
        if self.renew_every * 2 > self.fence_after {
            return Err(format!(
                "renewing every {:?} leaves too little margin before the self-fence at {:?}",
                self.renew_every, self.fence_after
            ));
        }
        Ok(())
    }
}

/// The lease operations a node needs, bound to its identity.
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// Acquires (or re-confirms) the shard's lease for this node.
    async fn acquire(&self, shard: u16) -> anyhow::Result<Acquire>;
    /// Renews the given leases in one round trip; true for each still held.
    async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<bool>>;
    /// Releases one lease.
    async fn release(&self, shard: u16, epoch: u64) -> anyhow::Result<bool>;
}

/// [`Leases`] bound to one node incarnation.
pub struct RedisLeases {
    /// The Redis leases.
    pub leases: Leases,
    /// Node id.
    pub node_id: String,
    /// Incarnation (node id + boot nonce).
    pub inc: String,
    /// The node's gRPC address, recorded in the lease for redirects.
    pub addr: String,
    /// Lease TTL.
    pub ttl: Duration,
}

#[async_trait]
impl LeaseBackend for RedisLeases {
    async fn acquire(&self, shard: u16) -> anyhow::Result<Acquire> {
        Ok(self.leases.acquire(shard, &self.node_id, &self.inc, &self.addr, self.ttl).await?)
    }
    async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<bool>> {
        Ok(self.leases.renew_many(leases, &self.inc, self.ttl).await?)
    }
    async fn release(&self, shard: u16, epoch: u64) -> anyhow::Result<bool> {
        Ok(self.leases.release(shard, &self.inc, epoch).await?)
    }
}

/// Proof of owning a shard at an epoch, with a deadline that the renewal loop pushes forward.
#[derive(Clone, Debug)]
pub struct ShardGuard {
    /// The shard.
    pub shard: u16,
    /// The lease epoch (the fence for writes).
    pub epoch: u64,
    deadline: Arc<AtomicU64>,
    base: Instant,
}

impl ShardGuard {
    /// Whether this node may still act for the shard (before its self-fence deadline, and not
    /// dropped).
    pub fn is_valid(&self) -> bool {
        let now = Instant::now().saturating_duration_since(self.base).as_millis() as u64;
        now < self.deadline.load(Ordering::Acquire)
    }
}

/// What placing a shard on this node gave.
#[derive(Debug)]
pub enum Placement {
    /// This node owns the shard.
    Here(ShardGuard),
    /// Another node holds the lease.
    Held {
        /// Its node id.
        owner: String,
        /// Its gRPC address.
        addr: String,
    },
}

struct Owned {
    epoch: u64,
    deadline: Arc<AtomicU64>,
}

/// The shards this node owns.
pub struct Shards {
    backend: Arc<dyn LeaseBackend>,
    timing: LeaseTiming,
    base: Instant,
    owned: Mutex<HashMap<u16, Owned>>,
    on_lost: Box<dyn Fn(u16) + Send + Sync>,
}

impl Shards {
    /// A table with no shards; `on_lost` is called (synchronously) for every shard dropped.
    pub fn new(backend: Arc<dyn LeaseBackend>, timing: LeaseTiming, on_lost: Box<dyn Fn(u16) + Send + Sync>) -> Self {
        Shards { backend, timing, base: Instant::now(), owned: Mutex::new(HashMap::new()), on_lost }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    fn guard(&self, shard: u16, owned: &Owned) -> ShardGuard {
        ShardGuard { shard, epoch: owned.epoch, deadline: owned.deadline.clone(), base: self.base }
    }

    /// The guard of a shard this node owns and may still act for.
    pub fn get(&self, shard: u16) -> Option<ShardGuard> {
        let owned = self.owned.lock().unwrap();
        let g = self.guard(shard, owned.get(&shard)?);
        g.is_valid().then_some(g)
    }

    /// Owns the shard if possible: the existing guard, or a new lease.
    pub async fn acquire(&self, shard: u16) -> anyhow::Result<Placement> {
        if let Some(g) = self.get(shard) {
            return Ok(Placement::Here(g));
        }
        let sent = Instant::now();
        match self.backend.acquire(shard).await? {
            Acquire::Granted { epoch } => {
                let deadline = self.ms(sent + self.timing.fence_after);
                let mut owned = self.owned.lock().unwrap();
                let entry = owned
                    .entry(shard)
                    .and_modify(|o| {
                        if o.epoch != epoch {
                            // A different grant than the one we remembered: start over with it.
                            o.epoch = epoch;
                            o.deadline = Arc::new(AtomicU64::new(0));
                        }
                    })
                    .or_insert_with(|| Owned { epoch, deadline: Arc::new(AtomicU64::new(0)) });
                entry.deadline.fetch_max(deadline, Ordering::AcqRel);
                tracing::debug!(shard, epoch, "shard acquired");
                Ok(Placement::Here(self.guard(shard, entry)))
            }
            Acquire::Held { owner, addr, .. } => Ok(Placement::Held { owner, addr }),
        }
    }

    /// The shards owned now, with their epochs.
    pub fn owned(&self) -> Vec<(u16, u64)> {
        self.owned.lock().unwrap().iter().map(|(s, o)| (*s, o.epoch)).collect()
    }

    /// How many shards are owned.
    pub fn count(&self) -> usize {
        self.owned.lock().unwrap().len()
    }

    /// Drops a shard: its guard turns invalid at once and `on_lost` runs.
    pub fn drop_shard(&self, shard: u16, why: &str) {
        let removed = self.owned.lock().unwrap().remove(&shard);
        if let Some(o) = removed {
            o.deadline.store(0, Ordering::Release);
            tracing::warn!(shard, epoch = o.epoch, why, "shard dropped");
            (self.on_lost)(shard);
        }
    }

    /// One renewal round: renews every owned lease in one round trip, pushes the deadlines of
    /// those still held, drops those lost, then drops any whose deadline passed (no successful
    /// renewal for `fence_after`).
    pub async fn renew_once(&self) {
        let owned = self.owned();
        if !owned.is_empty() {
            let sent = Instant::now();
            match self.backend.renew_many(&owned).await {
                Ok(held) => {
                    let deadline = self.ms(sent + self.timing.fence_after);
                    for ((shard, epoch), ok) in owned.iter().zip(held) {
                        if ok {
                            let table = self.owned.lock().unwrap();
                            if let Some(o) = table.get(shard).filter(|o| o.epoch == *epoch) {
                                o.deadline.fetch_max(deadline, Ordering::AcqRel);
                            }
                        } else {
                            self.drop_shard(*shard, "lease lost");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, shards = owned.len(), "lease renewal failed"),
            }
        }
        let now = self.ms(Instant::now());
        let expired: Vec<u16> = self
            .owned
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| o.deadline.load(Ordering::Acquire) <= now)
            .map(|(s, _)| *s)
            .collect();
        for shard in expired {
            self.drop_shard(shard, "self-fence: no successful renewal in time");
        }
    }

    /// Renews forever (every `renew_every`); run it as a task.
    pub async fn run_renewals(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.timing.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.renew_once().await;
        }
    }

    /// Releases every lease (graceful shutdown), so other nodes can take the shards at once.
    pub async fn release_all(&self) {
        let owned: Vec<(u16, u64)> = self
            .owned
            .lock()
            .unwrap()
            .drain()
            .map(|(s, o)| {
                o.deadline.store(0, Ordering::Release);
                (s, o.epoch)
            })
            .collect();
        for (shard, epoch) in owned {
            (self.on_lost)(shard);
            if let Err(e) = self.backend.release(shard, epoch).await {
                tracing::warn!(shard, error = %e, "could not release the lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A lease backend whose renewals can be made to fail.
    struct Fake {
        renew_ok: AtomicBool,
        renew_errors: AtomicBool,
        next_epoch: AtomicU64,
    }

    #[async_trait]
    impl LeaseBackend for Fake {
        async fn acquire(&self, _shard: u16) -> anyhow::Result<Acquire> {
            Ok(Acquire::Granted { epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed) })
        }
        async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<bool>> {
            if self.renew_errors.load(Ordering::Relaxed) {
                anyhow::bail!("redis unreachable");
            }
            Ok(vec![self.renew_ok.load(Ordering::Relaxed); leases.len()])
        }
        async fn release(&self, _shard: u16, _epoch: u64) -> anyhow::Result<bool> {
            Ok(true)
        }
    }

    fn table() -> (Arc<Fake>, Arc<Shards>, Arc<Mutex<Vec<u16>>>) {
        let fake = Arc::new(Fake {
            renew_ok: AtomicBool::new(true),
            renew_errors: AtomicBool::new(false),
            next_epoch: AtomicU64::new(1),
        });
        let lost = Arc::new(Mutex::new(Vec::new()));
        let l = lost.clone();
        let shards =
            Arc::new(Shards::new(fake.clone(), LeaseTiming::STANDARD, Box::new(move |s| l.lock().unwrap().push(s))));
        (fake, shards, lost)
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_a_shard_and_failures_fence_it_before_the_ttl() {
        let (fake, shards, lost) = table();
        let Placement::Here(g) = shards.acquire(7).await.unwrap() else { panic!("not granted") };
        assert!(g.is_valid());
        // Renewals every 2 s keep it valid well past the first 8 s.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(2)).await;
            shards.renew_once().await;
        }
        assert!(g.is_valid());
        // Redis becomes unreachable: the guard expires 8 s after the last successful renewal
        // was sent, before the 10 s TTL.
        fake.renew_errors.store(true, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(6)).await;
        shards.renew_once().await;
        assert!(g.is_valid(), "6 s after the last renewal it still holds");
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(!g.is_valid(), "8 s after the last renewal the guard is invalid");
        shards.renew_once().await;
        assert_eq!(*lost.lock().unwrap(), vec![7]);
        assert!(shards.get(7).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_drops_the_shard_at_once() {
        let (fake, shards, lost) = table();
        let Placement::Here(g) = shards.acquire(3).await.unwrap() else { panic!("not granted") };
        fake.renew_ok.store(false, Ordering::Relaxed);
        shards.renew_once().await;
        assert!(!g.is_valid());
        assert_eq!(*lost.lock().unwrap(), vec![3]);
        // Acquiring again gives a new epoch.
        fake.renew_ok.store(true, Ordering::Relaxed);
        let Placement::Here(g2) = shards.acquire(3).await.unwrap() else { panic!("not granted") };
        assert!(g2.epoch > g.epoch);
    }

    #[test]
    fn timing_profiles_are_coherent() {
        LeaseTiming::STANDARD.validate().unwrap();
        LeaseTiming::FAST.validate().unwrap();
        let bad = LeaseTiming {
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(2),
            fence_after: Duration::from_secs(6),
        };
        assert!(bad.validate().is_err());
    }
}
