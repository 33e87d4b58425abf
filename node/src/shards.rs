//! The shards this node owns: leases acquired on demand, renewed in one pipelined round trip,
//! and dropped by the node itself (self-fence) before they can expire in Redis. A dropped shard
//! takes its rooms down with it; Redis refuses any write they still attempt (fencing), and the
//! node stops relaying their frames at the self-fence deadline.
//!
//! The deadline is kept twice, fixed when the renewal that set it was *sent*: on the monotonic
//! clock (immune to wall-clock steps) and on the wall clock (what gateways compare the stamp on
//! every frame with). Either one past means past: `CLOCK_MONOTONIC` does not advance while the
//! machine is suspended, so a process that wakes from a suspend would otherwise believe it
//! still holds leases that Redis expired meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use partyline::sync::Lock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::NodeEvents;
use crate::metrics::NodeMetrics;
use partyline_cluster::redis::Acquire;

pub use partyline_cluster::redis::LeaseTiming;

/// For tests only: shifts this node's wall clock ([`wall_ms`]) by this many ms (may be
/// negative), to run a node whose clock is off the gateways'. Read once; never set it in a
/// deployment.
pub const TEST_CLOCK_SKEW_ENV: &str = "PARTYLINE_TEST_CLOCK_SKEW_MS";

/// This node's wall clock, in ms since the Unix epoch: what it stamps frames with and tells
/// gateways in its ping answers. The system clock, shifted by [`TEST_CLOCK_SKEW_ENV`] when a
/// test set it.
pub fn wall_ms() -> u64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        let skew = std::env::var(TEST_CLOCK_SKEW_ENV).ok().and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
        if skew != 0 {
            tracing::warn!(
                skew_ms = skew,
                "{TEST_CLOCK_SKEW_ENV} is set: this node's wall clock is shifted (tests only)"
            );
        }
        skew
    });
    u64::try_from(partyline::storage::now_ms().saturating_add(skew)).unwrap_or(0)
}

/// A wall clock in ms since the Unix epoch ([`wall_ms`], or a test's fake).
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The lease operations a node needs, bound to its identity.
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// Acquires (or re-confirms) the shard's lease for this node.
    async fn acquire(&self, shard: u16) -> anyhow::Result<Acquire>;
    /// Renews the given leases in one round trip: `Some(true)` for each still held,
    /// `Some(false)` for each lost, `None` for one that got no answer (on a Redis Cluster, its
    /// primary is down: the other answers still count).
    async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<Option<bool>>>;
    /// Releases one lease.
    async fn release(&self, shard: u16, epoch: u64) -> anyhow::Result<bool>;
}

/// Proof of owning a shard at an epoch, with a deadline that the renewal loop pushes forward.
#[derive(Clone)]
pub struct ShardGuard {
    /// The shard.
    pub shard: u16,
    /// The lease epoch (the fence for writes).
    pub epoch: u64,
    deadline: Arc<AtomicU64>,
    deadline_wall: Arc<AtomicU64>,
    accepting: Arc<AtomicBool>,
    dropped: CancellationToken,
    base: Instant,
    wall: WallClock,
}

impl std::fmt::Debug for ShardGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGuard")
            .field("shard", &self.shard)
            .field("epoch", &self.epoch)
            .field("deadline_wall", &self.deadline_wall.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl ShardGuard {
    /// Whether this node may still act for the shard: relay its rooms' frames and let them
    /// write (before its self-fence deadline on both the monotonic and the wall clock, and not
    /// dropped). Stays true while the shard is handed over, until its lease is released.
    pub fn is_valid(&self) -> bool {
        let now = Instant::now().saturating_duration_since(self.base).as_millis() as u64;
        now < self.deadline.load(Ordering::Acquire) && (self.wall)() < self.deadline_wall.load(Ordering::Acquire)
    }

    /// The self-fence deadline as a wall-clock time, in ms since the Unix epoch: stamped on
    /// every message a room sends through a gateway, which drops a message that arrives after
    /// it (one that sat in the send buffer of a node that froze). It is the wall-clock time the
    /// last successful renewal was *sent* plus the self-fence delay, fixed then (not worked out
    /// now from a remaining monotonic duration, which a suspended machine does not count down).
    /// `None` once the deadline passed on either clock or the shard was dropped: the caller
    /// must not relay the message at all.
    pub fn valid_until_unix_ms(&self) -> Option<u64> {
        self.is_valid().then(|| self.deadline_wall.load(Ordering::Acquire).max(1))
    }

    /// Whether this node may start rooms and open links in the shard: valid, and not being
    /// handed over to another node.
    pub fn accepts(&self) -> bool {
        self.accepting.load(Ordering::Acquire) && self.is_valid()
    }

    /// Resolves when the shard is dropped (lost, self-fenced, or given up by a handover whose
    /// rooms did not stop in time): what relays a room's frames ends then, without waiting for
    /// the room's next frame, so its gateways route new sockets afresh.
    pub async fn dropped(&self) {
        self.dropped.cancelled().await
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
    /// This node is handing the shard over (or draining, or refusing to serve): try the next
    /// owner after a short wait.
    Leaving,
}

struct Owned {
    epoch: u64,
    deadline: Arc<AtomicU64>,
    deadline_wall: Arc<AtomicU64>,
    accepting: Arc<AtomicBool>,
    dropped: CancellationToken,
}

/// The shards this node owns.
pub struct Shards {
    backend: Arc<dyn LeaseBackend>,
    timing: LeaseTiming,
    base: Instant,
    wall: WallClock,
    /// When the last Redis call that succeeded was sent (ms since `base`): a renewal, or what
    /// the node reports with [`Shards::note_redis_ok`] (its membership heartbeats).
    redis_ok_at: AtomicU64,
    owned: Mutex<HashMap<u16, Owned>>,
    /// One acquisition at a time per shard, so two callers never get two epochs.
    acquiring: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<()>>>>,
    /// No new shards (draining, or Redis lost the cluster's data).
    closed: AtomicBool,
    on_lost: Box<dyn Fn(u16) + Send + Sync>,
    metrics: std::sync::OnceLock<Arc<NodeMetrics>>,
    events: std::sync::OnceLock<Arc<NodeEvents>>,
}

impl Shards {
    /// A table with no shards; `on_lost` is called (synchronously) for every shard dropped.
    pub fn new(backend: Arc<dyn LeaseBackend>, timing: LeaseTiming, on_lost: Box<dyn Fn(u16) + Send + Sync>) -> Self {
        Self::with_wall_clock(backend, timing, on_lost, Arc::new(wall_ms))
    }

    /// [`Shards::new`] on the wall clock `wall` (tests: a fake one, to suspend the machine).
    pub fn with_wall_clock(
        backend: Arc<dyn LeaseBackend>,
        timing: LeaseTiming,
        on_lost: Box<dyn Fn(u16) + Send + Sync>,
        wall: WallClock,
    ) -> Self {
        Shards {
            backend,
            timing,
            base: Instant::now(),
            wall,
            redis_ok_at: AtomicU64::new(0),
            owned: Mutex::new(HashMap::new()),
            acquiring: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            on_lost,
            metrics: Default::default(),
            events: Default::default(),
        }
    }

    /// Counts lease events into `metrics` from now on (once).
    pub fn set_metrics(&self, metrics: Arc<NodeMetrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Records lost leases in the cluster's events from now on (once): one event per renewal
    /// round that lost some, and per self-fence.
    pub fn set_events(&self, events: Arc<NodeEvents>) {
        let _ = self.events.set(events);
    }

    fn lost_event(&self, shards: &[u16], why: &str) {
        if let Some(e) = self.events.get() {
            e.leases_lost(shards, why);
        }
    }

    fn tally(&self, which: impl FnOnce(&NodeMetrics) -> &prometheus_client::metrics::counter::Counter) {
        if let Some(m) = self.metrics.get() {
            which(m).inc();
        }
    }

    /// The lease timing in force.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    fn fence_after_ms(&self) -> u64 {
        self.timing.fence_after.as_millis() as u64
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// A Redis call sent at `sent` succeeded (the node's membership heartbeat): the node is
    /// not cut from Redis.
    pub fn note_redis_ok(&self, sent: Instant) {
        self.redis_ok_at.fetch_max(self.ms(sent), Ordering::AcqRel);
    }

    /// How long ago the last Redis call that succeeded was sent (since this table was made,
    /// if none yet): past the self-fence delay, this node is cut from Redis.
    pub fn redis_age(&self) -> std::time::Duration {
        let now = self.ms(Instant::now());
        std::time::Duration::from_millis(now.saturating_sub(self.redis_ok_at.load(Ordering::Acquire)))
    }

    fn guard(&self, shard: u16, owned: &Owned) -> ShardGuard {
        ShardGuard {
            shard,
            epoch: owned.epoch,
            deadline: owned.deadline.clone(),
            deadline_wall: owned.deadline_wall.clone(),
            accepting: owned.accepting.clone(),
            dropped: owned.dropped.clone(),
            base: self.base,
            wall: self.wall.clone(),
        }
    }

    /// The guard of a shard this node owns and accepts new work for.
    pub fn get(&self, shard: u16) -> Option<ShardGuard> {
        let owned = self.owned.locked();
        let g = self.guard(shard, owned.get(&shard)?);
        g.accepts().then_some(g)
    }

    /// Owns the shard if possible: the existing guard, or a new lease under a new epoch.
    pub async fn acquire(&self, shard: u16) -> anyhow::Result<Placement> {
        if let Some(g) = self.get(shard) {
            return Ok(Placement::Here(g));
        }
        let lock = self.acquiring.locked().entry(shard).or_default().clone();
        let _one = lock.lock().await;
        if let Some(g) = self.get(shard) {
            return Ok(Placement::Here(g));
        }
        let stale = {
            let owned = self.owned.locked();
            match owned.get(&shard) {
                Some(o) if o.accepting.load(Ordering::Acquire) => true,
                Some(_) => return Ok(Placement::Leaving),
                None => false,
            }
        };
        if stale {
            // Past its self-fence deadline but not dropped yet: its rooms must stop before the
            // shard is taken again (under a new epoch, which fences anything they still write).
            self.tally(|m| &m.self_fences);
            self.drop_shard(shard, "self-fence: no successful renewal in time");
            self.lost_event(&[shard], "self-fence: no successful renewal in time");
        }
        if self.closed.load(Ordering::Acquire) {
            return Ok(Placement::Leaving);
        }
        let (sent, sent_wall) = (Instant::now(), (self.wall)());
        let placement = match self.backend.acquire(shard).await? {
            Acquire::Granted { epoch } => {
                self.note_redis_ok(sent);
                let deadline = self.ms(sent + self.timing.fence_after);
                let owned = Owned {
                    epoch,
                    deadline: Arc::new(AtomicU64::new(deadline)),
                    deadline_wall: Arc::new(AtomicU64::new(sent_wall + self.fence_after_ms())),
                    accepting: Arc::new(AtomicBool::new(true)),
                    dropped: CancellationToken::new(),
                };
                let guard = self.guard(shard, &owned);
                self.owned.locked().insert(shard, owned);
                tracing::debug!(shard, epoch, "shard acquired");
                self.tally(|m| &m.lease_acquisitions);
                Placement::Here(guard)
            }
            Acquire::Held { owner, addr, .. } => {
                self.tally(|m| &m.lease_acquisitions_held);
                Placement::Held { owner, addr }
            }
        };
        self.acquiring.locked().remove(&shard);
        Ok(placement)
    }

    /// The shards owned now, with their epochs (also those being handed over).
    pub fn owned(&self) -> Vec<(u16, u64)> {
        self.owned.locked().iter().map(|(s, o)| (*s, o.epoch)).collect()
    }

    /// How many shards are owned.
    pub fn count(&self) -> usize {
        self.owned.locked().len()
    }

    /// Stops taking shards: [`Shards::acquire`] answers [`Placement::Leaving`] from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Takes shards again after [`Shards::close`] (Redis has the cluster's data again).
    pub fn reopen(&self) {
        self.closed.store(false, Ordering::Release);
    }

    /// Starts handing a shard over: no new rooms or links start in it, while the rooms it has
    /// keep writing and their frames keep flowing until [`Shards::release`]. The guard, or
    /// `None` when the shard is not owned (or no longer valid).
    pub fn begin_handover(&self, shard: u16) -> Option<ShardGuard> {
        let owned = self.owned.locked();
        let o = owned.get(&shard)?;
        o.accepting.store(false, Ordering::Release);
        let g = self.guard(shard, o);
        g.is_valid().then_some(g)
    }

    /// Ends a handover: forgets the shard and releases its lease so the next owner can take it
    /// at once. Its rooms must have stopped (and their writes be durable) before this. Guards
    /// stay valid until their self-fence deadline (no longer pushed forward): what the stopped
    /// rooms emitted before they stopped may still be on its way to the gateways, and it is
    /// theirs to deliver (their gateways reach the next owner only after it).
    pub async fn release(&self, shard: u16) {
        let removed = self.owned.locked().remove(&shard);
        if let Some(o) = removed {
            match self.backend.release(shard, o.epoch).await {
                Ok(_) => tracing::debug!(shard, epoch = o.epoch, "shard released"),
                Err(e) => tracing::warn!(shard, error = %e, "could not release the lease; it expires by itself"),
            }
        }
    }

    /// Drops a shard: its guard turns invalid at once and `on_lost` runs.
    pub fn drop_shard(&self, shard: u16, why: &str) {
        let removed = self.owned.locked().remove(&shard);
        if let Some(o) = removed {
            o.deadline.store(0, Ordering::Release);
            o.deadline_wall.store(0, Ordering::Release);
            o.dropped.cancel();
            tracing::warn!(shard, epoch = o.epoch, why, "shard dropped");
            (self.on_lost)(shard);
        }
    }

    /// Drops every shard (Redis lost the cluster's data: nothing this node holds is backed).
    pub fn drop_all(&self, why: &str) {
        for (shard, _) in self.owned() {
            self.drop_shard(shard, why);
        }
    }

    /// One renewal round: renews every owned lease in one round trip, pushes the deadlines of
    /// those still held, drops those lost, then drops any whose deadline passed (no successful
    /// renewal for `fence_after`).
    pub async fn renew_once(&self) {
        // A shard already past its deadline is not revived by a renewal sent now (a process
        // that was stopped or suspended past it): its rooms stop first.
        self.fence_expired();
        let owned = self.owned();
        if !owned.is_empty() {
            let (sent, sent_wall) = (Instant::now(), (self.wall)());
            match self.backend.renew_many(&owned).await {
                Ok(held) => {
                    self.tally(|m| &m.lease_renewals);
                    self.note_redis_ok(sent);
                    let deadline = self.ms(sent + self.timing.fence_after);
                    let deadline_wall = sent_wall + self.fence_after_ms();
                    let mut lost = Vec::new();
                    for ((shard, epoch), held) in owned.iter().zip(held) {
                        match held {
                            Some(true) => {
                                let table = self.owned.locked();
                                if let Some(o) = table.get(shard).filter(|o| o.epoch == *epoch) {
                                    o.deadline.fetch_max(deadline, Ordering::AcqRel);
                                    o.deadline_wall.fetch_max(deadline_wall, Ordering::AcqRel);
                                }
                            }
                            Some(false) => {
                                let ours = self.owned.locked().get(shard).is_some_and(|o| o.epoch == *epoch);
                                if ours {
                                    self.tally(|m| &m.lease_losses);
                                    self.drop_shard(*shard, "lease lost");
                                    lost.push(*shard);
                                }
                            }
                            None => {}
                        }
                    }
                    self.lost_event(&lost, "taken over, or expired, at renewal");
                }
                Err(e) => {
                    self.tally(|m| &m.lease_renewal_failures);
                    tracing::warn!(error = %e, shards = owned.len(), "lease renewal failed");
                }
            }
        }
        self.fence_expired();
    }

    /// Drops every shard past its self-fence deadline on either clock (the wall clock also
    /// counts a machine suspend).
    fn fence_expired(&self) {
        let (now, wall) = (self.ms(Instant::now()), (self.wall)());
        let expired: Vec<u16> = self
            .owned
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| {
                o.deadline.load(Ordering::Acquire) <= now || o.deadline_wall.load(Ordering::Acquire) <= wall
            })
            .map(|(s, _)| *s)
            .collect();
        for shard in &expired {
            self.tally(|m| &m.self_fences);
            self.drop_shard(*shard, "self-fence: no successful renewal in time");
        }
        self.lost_event(&expired, "self-fence: no successful renewal in time");
    }

    /// Renews every `renew_every` until `stop` is cancelled; run it as a task.
    pub async fn run_renewals(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.timing.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.renew_once().await,
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A lease backend whose renewals can be made to fail.
    struct Fake {
        renew_ok: AtomicBool,
        renew_errors: AtomicBool,
        next_epoch: AtomicU64,
        /// Shards whose renewal gets no answer (their Redis Cluster primary is down).
        unanswered: Mutex<Vec<u16>>,
    }

    #[async_trait]
    impl LeaseBackend for Fake {
        async fn acquire(&self, _shard: u16) -> anyhow::Result<Acquire> {
            Ok(Acquire::Granted { epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed) })
        }
        async fn renew_many(&self, leases: &[(u16, u64)]) -> anyhow::Result<Vec<Option<bool>>> {
            if self.renew_errors.load(Ordering::Relaxed) {
                anyhow::bail!("redis unreachable");
            }
            let unanswered = self.unanswered.locked();
            Ok(leases
                .iter()
                .map(|(s, _)| (!unanswered.contains(s)).then(|| self.renew_ok.load(Ordering::Relaxed)))
                .collect())
        }
        async fn release(&self, _shard: u16, _epoch: u64) -> anyhow::Result<bool> {
            Ok(true)
        }
    }

    /// A wall clock that follows tokio's (paused) clock from a fixed start, plus whatever
    /// `jump` adds: a machine suspend moves the wall clock on while the monotonic clock stays.
    struct FakeWall {
        base: Instant,
        start: u64,
        jump: AtomicU64,
    }

    impl FakeWall {
        fn now(&self) -> u64 {
            self.start + self.base.elapsed().as_millis() as u64 + self.jump.load(Ordering::Acquire)
        }
    }

    fn table() -> (Arc<Fake>, Arc<Shards>, Arc<Mutex<Vec<u16>>>) {
        let (fake, shards, lost, _wall) = table_with_wall();
        (fake, shards, lost)
    }

    /// The shards dropped so far, in order.
    type Lost = Arc<Mutex<Vec<u16>>>;

    fn table_with_wall() -> (Arc<Fake>, Arc<Shards>, Lost, Arc<FakeWall>) {
        let fake = Arc::new(Fake {
            renew_ok: AtomicBool::new(true),
            renew_errors: AtomicBool::new(false),
            next_epoch: AtomicU64::new(1),
            unanswered: Mutex::default(),
        });
        let lost = Arc::new(Mutex::new(Vec::new()));
        let l = lost.clone();
        let wall = Arc::new(FakeWall { base: Instant::now(), start: 1_800_000_000_000, jump: AtomicU64::new(0) });
        let w = wall.clone();
        let shards = Arc::new(Shards::with_wall_clock(
            fake.clone(),
            LeaseTiming::STANDARD,
            Box::new(move |s| l.locked().push(s)),
            Arc::new(move || w.now()),
        ));
        (fake, shards, lost, wall)
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
        assert_eq!(*lost.locked(), vec![7]);
        assert!(shards.get(7).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_deadline_follows_the_renewals_and_ends_with_the_shard() {
        let (fake, shards, _lost, wall) = table_with_wall();
        let Placement::Here(g) = shards.acquire(6).await.unwrap() else { panic!("not granted") };
        // 8 s ahead (the self-fence after the grant), on the wall clock.
        let ahead = g.valid_until_unix_ms().unwrap().saturating_sub(wall.now());
        assert_eq!(ahead, 8_000);
        // A renewal sent 2 s later moves it to 8 s after that send.
        tokio::time::advance(Duration::from_secs(2)).await;
        shards.renew_once().await;
        assert_eq!(g.valid_until_unix_ms().unwrap().saturating_sub(wall.now()), 8_000);
        fake.renew_errors.store(true, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(6)).await;
        let ahead = g.valid_until_unix_ms().unwrap().saturating_sub(wall.now());
        assert_eq!(ahead, 2_000, "6 s without renewals");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(g.valid_until_unix_ms(), None, "past the deadline, nothing may be stamped");
        shards.renew_once().await;
        assert!(!g.is_valid());
        assert_eq!(g.valid_until_unix_ms(), None, "a dropped shard stamps no deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_machine_suspended_past_its_deadline_stamps_nothing_when_it_wakes() {
        let (_fake, shards, lost, wall) = table_with_wall();
        let Placement::Here(g) = shards.acquire(8).await.unwrap() else { panic!("not granted") };
        tokio::time::advance(Duration::from_secs(1)).await;
        let before = g.valid_until_unix_ms().expect("valid before the suspend");
        // The machine sleeps 30 s: CLOCK_MONOTONIC (tokio's Instant) does not move, the wall
        // clock does. The monotonic clock alone would still say 7 s are left.
        wall.jump.fetch_add(30_000, Ordering::AcqRel);
        assert!(wall.now() > before, "the wall-clock deadline passed during the suspend");
        assert!(!g.is_valid(), "the wall clock says the deadline passed");
        assert_eq!(g.valid_until_unix_ms(), None, "no frame may leave with a deadline it no longer holds");
        assert!(shards.get(8).is_none(), "nothing new starts in the shard");
        // The next renewal round (its renewal succeeds, but the shard was past its deadline
        // before it was sent) drops it rather than reviving it.
        shards.renew_once().await;
        assert_eq!(*lost.locked(), vec![8]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_fixed_when_the_renewal_is_sent_not_when_it_is_answered() {
        let (_fake, shards, _lost, wall) = table_with_wall();
        let sent = wall.now();
        let Placement::Here(g) = shards.acquire(2).await.unwrap() else { panic!("not granted") };
        // Stamped later, the deadline stays that of the send: it does not slide with the
        // stamping time.
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(g.valid_until_unix_ms(), Some(sent + 8_000));
        assert!(shards.redis_age() >= Duration::from_millis(1500), "the grant was the last Redis contact");
        shards.note_redis_ok(Instant::now());
        assert_eq!(shards.redis_age(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_without_answer_fences_only_its_own_shard() {
        let (fake, shards, lost) = table();
        let Placement::Here(a) = shards.acquire(1).await.unwrap() else { panic!("not granted") };
        let Placement::Here(b) = shards.acquire(2).await.unwrap() else { panic!("not granted") };
        // Shard 2's Redis Cluster primary stops answering; shard 1's keeps renewing.
        fake.unanswered.locked().push(2);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(2)).await;
            shards.renew_once().await;
        }
        assert!(a.is_valid(), "the shard whose primary answers is kept");
        assert!(!b.is_valid(), "the shard without answers self-fenced");
        assert_eq!(*lost.locked(), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_drops_the_shard_at_once() {
        let (fake, shards, lost) = table();
        let Placement::Here(g) = shards.acquire(3).await.unwrap() else { panic!("not granted") };
        fake.renew_ok.store(false, Ordering::Relaxed);
        shards.renew_once().await;
        assert!(!g.is_valid());
        assert_eq!(*lost.locked(), vec![3]);
        tokio::time::timeout(Duration::from_millis(10), g.dropped()).await.expect("the guard hears the drop");
        // Acquiring again gives a new epoch.
        fake.renew_ok.store(true, Ordering::Relaxed);
        let Placement::Here(g2) = shards.acquire(3).await.unwrap() else { panic!("not granted") };
        assert!(g2.epoch > g.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_shard_is_not_dropped_but_a_dropped_one_is() {
        let (_fake, shards, _lost) = table();
        let Placement::Here(a) = shards.acquire(1).await.unwrap() else { panic!("not granted") };
        let Placement::Here(b) = shards.acquire(2).await.unwrap() else { panic!("not granted") };
        shards.release(1).await;
        shards.drop_shard(2, "a test");
        let released = tokio::time::timeout(Duration::from_millis(10), a.dropped()).await;
        assert!(released.is_err(), "a released shard's frames in flight are still its own");
        tokio::time::timeout(Duration::from_millis(10), b.dropped()).await.expect("the dropped guard hears it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_past_its_deadline_is_dropped_before_it_is_taken_again() {
        let (fake, shards, lost) = table();
        let Placement::Here(g) = shards.acquire(5).await.unwrap() else { panic!("not granted") };
        // Renewals fail (Redis slow) but the lease itself survives in Redis: the guard expires
        // locally, and the next acquire must neither reuse the epoch nor leave the old rooms up.
        fake.renew_errors.store(true, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!g.is_valid());
        let Placement::Here(g2) = shards.acquire(5).await.unwrap() else { panic!("not granted") };
        assert_eq!(*lost.locked(), vec![5], "the old instance's rooms were stopped first");
        assert!(g2.epoch > g.epoch, "epoch {} reused", g.epoch);
        assert!(g2.accepts() && !g.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquires_share_one_grant() {
        let (_fake, shards, _lost) = table();
        let (a, b) = tokio::join!(shards.acquire(9), shards.acquire(9));
        let (Placement::Here(a), Placement::Here(b)) = (a.unwrap(), b.unwrap()) else { panic!("not granted") };
        assert_eq!(a.epoch, b.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_handed_over_keeps_serving_but_takes_nothing_new_until_released() {
        let (_fake, shards, lost) = table();
        let Placement::Here(g) = shards.acquire(4).await.unwrap() else { panic!("not granted") };
        let h = shards.begin_handover(4).expect("owned");
        assert!(h.is_valid() && !h.accepts() && g.is_valid());
        assert!(shards.get(4).is_none());
        assert!(matches!(shards.acquire(4).await.unwrap(), Placement::Leaving));
        // Renewals go on during the handover.
        tokio::time::advance(Duration::from_secs(6)).await;
        shards.renew_once().await;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(g.is_valid(), "renewed while handing over");
        shards.release(4).await;
        assert!(g.is_valid() && !g.accepts(), "what the moved rooms emitted may still be relayed");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!g.is_valid(), "until the self-fence deadline");
        assert!(shards.get(4).is_none());
        assert!(lost.locked().is_empty(), "a release is not a loss");
        // Closed: nothing new.
        shards.close();
        assert!(matches!(shards.acquire(6).await.unwrap(), Placement::Leaving));
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
