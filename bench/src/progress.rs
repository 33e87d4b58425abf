//! The progress bar: elapsed time against the plan, with live rates, on stderr.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::stats::{count, rate, Live};

/// A progress bar over the planned run time (hidden with `--quiet` or when stderr is not a
/// terminal).
pub struct Progress {
    bar: ProgressBar,
    live: Arc<Live>,
    clients: u64,
    last: Instant,
    last_sent: u64,
    last_received: u64,
    /// What "sent"/"received" count in this scenario.
    units: (&'static str, &'static str),
}

impl Progress {
    /// A bar for a run planned to take `planned`.
    pub fn new(
        quiet: bool,
        planned: Duration,
        live: Arc<Live>,
        clients: usize,
        units: (&'static str, &'static str),
    ) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(planned.as_millis().max(1) as u64),
            if quiet || !std::io::stderr().is_terminal() {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr_with_hz(4)
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<10} [{bar:24}] {elapsed:>4} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress { bar, live, clients: clients as u64, last: Instant::now(), last_sent: 0, last_received: 0, units }
    }

    /// Redraws with the current phase, position and rates.
    pub fn tick(&mut self, phase: &str, elapsed: Duration) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt < 0.2 {
            return;
        }
        let sent = Live::get(&self.live.sent);
        let received = Live::get(&self.live.received);
        let msg = format!(
            "open {}/{} | {} {}/s | {} {}/s | errors {}",
            count(Live::get(&self.live.open)),
            count(self.clients),
            self.units.0,
            rate(sent.saturating_sub(self.last_sent) as f64 / dt),
            self.units.1,
            rate(received.saturating_sub(self.last_received) as f64 / dt),
            count(Live::get(&self.live.errors)),
        );
        self.last = now;
        self.last_sent = sent;
        self.last_received = received;
        self.bar.set_prefix(phase.to_string());
        self.bar.set_position(elapsed.as_millis() as u64);
        self.bar.set_message(msg);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Ticks `progress` every 100 ms until `until` or until `done()` holds; returns whether
/// `done()` held.
pub async fn wait(
    progress: &mut Progress,
    started: Instant,
    phase: &str,
    until: Instant,
    mut done: impl FnMut() -> bool,
) -> bool {
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        progress.tick(phase, now.duration_since(started));
        tokio::time::sleep_until(until.min(now + Duration::from_millis(100))).await;
    }
}
