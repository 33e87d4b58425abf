//! Waking rooms whose alarm is due, also rooms that are not loaded and rooms whose owner
//! crashed. A scheduler polls the store every [`ALARM_POLL`] for due alarms in its scope (every
//! room in `dev`; the shards a node owns or should own in a cluster) and wakes those rooms,
//! many at a time. A loaded room also keeps its own timer; a room ignores a wake-up for an
//! alarm that is not due.
//!
//! A room that cannot run its alarm here (its party is not registered in this process, its
//! `on_start` keeps failing, it does not take the wake-up) would be found due again at every
//! poll and could take every slot of the poll from rooms that can run. Such rooms are *parked*:
//! left out of the polls for a while that doubles with each failure (1 s up to 60 s), with a
//! warning each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use partyline::storage::now_ms;
use partyline::store::StoreError;
use partyline::sync::Lock;
use partyline::RoomKey;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::host::HostError;
use futures::future::BoxFuture;

/// How often the scheduler looks for due alarms.
pub const ALARM_POLL: Duration = Duration::from_millis(250);
/// Due alarms read per poll.
const BATCH: usize = 256;
/// Rooms woken at the same time.
const CONCURRENT: usize = 64;
/// How long a wake-up may take (starting the room and queueing the alarm).
const WAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest park.
const PARK_FIRST: Duration = Duration::from_secs(1);
const PARK_MAX: Duration = Duration::from_secs(60);

/// Which alarms a scheduler looks after, and how it wakes a room.
#[async_trait]
pub trait AlarmScope: Send + Sync + 'static {
    /// Up to `limit` due alarms in scope, leaving out the `parked` rooms.
    async fn due(&self, now_ms: i64, limit: usize, parked: &Parked) -> Result<Vec<RoomKey>, StoreError>;

    /// Wakes one room for its alarm (starting it if needed).
    async fn wake(&self, room: &RoomKey) -> Result<(), HostError>;
}

#[derive(Clone, Copy)]
struct Park {
    until: Instant,
    strikes: u32,
}

/// Rooms left out of the polls for a while; see the module docs.
#[derive(Default)]
pub struct Parked {
    rooms: Mutex<HashMap<RoomKey, Park>>,
}

impl Parked {
    /// Whether `room` is parked now.
    pub fn contains(&self, room: &RoomKey) -> bool {
        self.rooms.locked().get(room).is_some_and(|p| p.until > Instant::now())
    }

    /// Parks `room` after a failure; returns for how long. A room that fails again soon after
    /// its park ended is parked twice as long.
    pub fn strike(&self, room: &RoomKey) -> Duration {
        let now = Instant::now();
        let mut rooms = self.rooms.locked();
        let strikes = match rooms.get(room) {
            Some(p) if now.saturating_duration_since(p.until) < PARK_MAX => p.strikes + 1,
            _ => 1,
        }
        .max(1);
        let wait = (PARK_FIRST * 2u32.saturating_pow(strikes.min(16) - 1)).min(PARK_MAX);
        rooms.insert(room.clone(), Park { until: now + wait, strikes });
        rooms.retain(|_, p| now.saturating_duration_since(p.until) < PARK_MAX);
        wait
    }

    /// Leaves `room` out of the polls for `wait` without counting a failure (a room being woken,
    /// or one that took its wake-up and will run the alarm itself).
    pub fn rest(&self, room: &RoomKey, wait: Duration) {
        let until = Instant::now() + wait;
        let mut rooms = self.rooms.locked();
        let strikes = rooms.get(room).map_or(0, |p| p.strikes);
        rooms.insert(room.clone(), Park { until, strikes });
    }

    /// How many rooms are parked now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.rooms.locked().values().filter(|p| p.until > now).count()
    }

    /// Whether no room is parked now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Polls `scope` for due alarms and wakes their rooms until `stop` is cancelled.
#[inline(never)]
pub fn run(scope: Arc<dyn AlarmScope>, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(run_unboxed(scope, stop))
}

async fn run_unboxed(scope: Arc<dyn AlarmScope>, stop: CancellationToken) {
    let parked = Arc::new(Parked::default());
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let mut tick = tokio::time::interval(ALARM_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let due = match scope.due(now_ms(), BATCH, &parked).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read due alarms");
                continue;
            }
        };
        for room in due {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            // While it is being woken, a room is left out of the next polls.
            parked.rest(&room, WAKE_TIMEOUT);
            let (scope, parked) = (scope.clone(), parked.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let woke = tokio::time::timeout(WAKE_TIMEOUT, scope.wake(&room)).await;
                match woke {
                    // It runs the alarm (and deletes or moves it) on its own now.
                    Ok(Ok(())) => parked.rest(&room, PARK_FIRST),
                    Ok(Err(e)) => {
                        let wait = parked.strike(&room);
                        tracing::warn!(room = %room, error = %e, retry_in = ?wait, "alarm due for a room that cannot run here");
                    }
                    Err(_) => {
                        let wait = parked.strike(&room);
                        tracing::warn!(room = %room, retry_in = ?wait, "waking a room for its alarm timed out");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn parks_double_and_reset() {
        let parked = Parked::default();
        let room = RoomKey::new("main", "r");
        assert!(!parked.contains(&room));
        parked.rest(&room, Duration::from_millis(100));
        assert!(parked.contains(&room));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!parked.contains(&room));
        assert_eq!(parked.strike(&room), Duration::from_secs(1), "a rest is not a failure");
        assert!(parked.contains(&room));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(!parked.contains(&room));
        assert_eq!(parked.strike(&room), Duration::from_secs(2));
        assert_eq!(parked.strike(&room), Duration::from_secs(4));
        for _ in 0..10 {
            parked.strike(&room);
        }
        assert_eq!(parked.strike(&room), PARK_MAX);
        // Long after its last park ended, a room starts over.
        tokio::time::advance(PARK_MAX * 3).await;
        assert_eq!(parked.strike(&room), Duration::from_secs(1));
    }
}
