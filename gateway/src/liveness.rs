//! Liveness of client WebSockets, room sockets and `on_socket` ones alike: one sweep per
//! gateway instead of a timer per socket.
//!
//! A socket's reader only marks that it heard from the client (a flag in its send queue, set on
//! every frame and pong); it keeps no timer. A task per gateway walks every socket a few times
//! per ping interval: a socket silent for the ping interval is pinged, one silent for the pong
//! timeout after that gets a close frame (1001) and, a second later, is cut off. A timer per
//! socket costs a timer wheel entry in memory and an insert and a removal for every frame that
//! leaves the reader waiting; the sweep costs a flag per frame and a pass over the sockets.

use std::sync::{Arc, Weak};
use std::time::Duration;

use partyline::client_text;
use partyline::runtime::link::close_code;
use partyline::sync::Lock;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::send_queue::SendQueue;
use crate::Inner;

/// How long a socket closed for silence has to put its close frame on the wire before it is
/// cut off.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the sweep knows of one socket (kept in its `SocketEntry`, under its link's lock).
#[derive(Debug)]
pub(crate) struct Liveness {
    /// When the sweep last found the client had sent something (or the socket opened).
    heard: Instant,
    /// When the sweep pinged the silent client.
    pinged: Option<Instant>,
    /// When the sweep queued the close frame for a client that did not answer the ping.
    closed: Option<Instant>,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        Liveness { heard: Instant::now(), pinged: None, closed: None }
    }
}

/// How often the sweep runs: a quarter of the shorter of the two intervals, between 10 ms and
/// 1 s, so a ping or a timeout comes at most that late.
pub(crate) fn sweep_every(ping_interval: Duration, pong_timeout: Duration) -> Duration {
    (ping_interval.min(pong_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Sweeps the gateway's sockets until the gateway is gone. Nothing to do when pings are off.
pub(crate) async fn sweep(gw: Weak<Inner>) {
    let Some(ping_interval) = gw.upgrade().and_then(|g| g.edge.ping_interval) else { return };
    let pong_timeout = gw.upgrade().map_or(Duration::MAX, |g| g.edge.pong_timeout);
    let mut tick = tokio::time::interval(sweep_every(ping_interval, pong_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gw) = gw.upgrade() else { return };
        sweep_once(&gw, ping_interval, pong_timeout, Instant::now());
    }
}

fn sweep_once(gw: &Arc<Inner>, ping_interval: Duration, pong_timeout: Duration, now: Instant) {
    let timing = Timing { ping_interval, pong_timeout, now };
    gw.each_socket(|s| check(gw, &s.queue, &mut s.live, &timing));
    for s in gw.lone_sockets.locked().values_mut() {
        check(gw, &s.queue, &mut s.live, &timing);
    }
}

struct Timing {
    ping_interval: Duration,
    pong_timeout: Duration,
    now: Instant,
}

/// One socket: pinged when silent for the ping interval, closed when silent for the pong
/// timeout after that, cut off a second after its close frame.
fn check(gw: &Inner, queue: &SendQueue, live: &mut Liveness, t: &Timing) {
    let now = t.now;
    if queue.take_heard() {
        *live = Liveness { heard: now, pinged: None, closed: None };
        return;
    }
    if let Some(at) = live.closed {
        if now.duration_since(at) >= CLOSE_WAIT {
            queue.cut_off_silent();
        }
        return;
    }
    match live.pinged {
        None if now.duration_since(live.heard) >= t.ping_interval => {
            queue.ping();
            live.pinged = Some(now);
        }
        Some(at) if now.duration_since(at) >= t.pong_timeout => {
            Metrics::inc(&gw.metrics.ping_timeouts);
            queue.close(close_code::GOING_AWAY, client_text::NO_PONG.into());
            live.closed = Some(now);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_a_few_times_per_interval_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(30), Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(sweep_every(Duration::from_millis(400), Duration::from_secs(30)), Duration::from_millis(100));
        assert_eq!(sweep_every(Duration::from_secs(30), Duration::from_millis(200)), Duration::from_millis(50));
        assert_eq!(sweep_every(Duration::from_millis(1), Duration::from_millis(1)), Duration::from_millis(10));
    }
}
