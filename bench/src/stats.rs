//! Live counters (for the progress bar), latency histograms, errors by kind, and the report.

// The report structs' fields are the JSON keys; docs/benchmarks.md describes them.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::sys::Mem;
use crate::track::Totals;

/// Counters every task adds to; read by the progress bar and for the drain check.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections currently open.
    pub open: AtomicU64,
    /// Connections that completed the handshake.
    pub connected: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failed: AtomicU64,
    /// Messages (or requests, or connect/close cycles) sent.
    pub sent: AtomicU64,
    /// Frames (or responses) received.
    pub received: AtomicU64,
    /// Distinct measured frames received (the drain waits for it to reach the expected count).
    pub measured: AtomicU64,
    /// Deliveries expected so far (senders add the receivers of each measured message).
    pub expected: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
}

impl Live {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Reads `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A latency histogram in nanoseconds, 1 ns .. 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// A shared histogram that tasks record into through small local buffers.
#[derive(Debug)]
pub struct SharedHist(Mutex<Histogram<u64>>);

impl Default for SharedHist {
    fn default() -> Self {
        SharedHist(Mutex::new(histogram()))
    }
}

impl SharedHist {
    /// Records every value of `buf` and empties it.
    pub fn record_all(&self, buf: &mut Vec<u64>) {
        if buf.is_empty() {
            return;
        }
        let mut h = self.0.lock().expect("histogram lock");
        for &v in buf.iter() {
            h.saturating_record(v.max(1));
        }
        buf.clear();
    }

    /// Records one value.
    pub fn record_one(&self, v: u64) {
        self.0.lock().expect("histogram lock").saturating_record(v.max(1));
    }

    /// The quantiles so far.
    pub fn quantiles(&self) -> Quantiles {
        Quantiles::of(&self.0.lock().expect("histogram lock"))
    }
}

/// A local buffer in front of a [`SharedHist`].
pub struct HistBuf<'a> {
    shared: &'a SharedHist,
    buf: Vec<u64>,
}

impl<'a> HistBuf<'a> {
    /// An empty buffer for `shared`.
    pub fn new(shared: &'a SharedHist) -> Self {
        HistBuf { shared, buf: Vec::new() }
    }

    /// Records `ns`.
    pub fn record(&mut self, ns: u64) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(256);
        }
        self.buf.push(ns);
        if self.buf.len() >= 256 {
            self.shared.record_all(&mut self.buf);
        }
    }

    /// Records what is buffered.
    pub fn flush(&mut self) {
        self.shared.record_all(&mut self.buf);
    }
}

impl Drop for HistBuf<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Errors by kind.
#[derive(Debug, Default)]
pub struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    /// Counts one error of `kind` (also in `live.errors`).
    pub fn add(&self, live: &Live, kind: impl Into<String>) {
        let mut kind = kind.into();
        if kind.len() > 160 {
            let mut cut = 160;
            while !kind.is_char_boundary(cut) {
                cut -= 1;
            }
            kind.truncate(cut);
        }
        *self.0.lock().expect("errors lock").entry(kind).or_default() += 1;
        Live::add(&live.errors, 1);
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("errors lock").clone()
    }
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// The quantiles of a nanosecond histogram, in ms.
    pub fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Quantiles {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    fn line(&self) -> String {
        if self.count == 0 {
            return "none recorded".into();
        }
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={}, min {}, mean {})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count,
            ms(self.min),
            ms(self.mean)
        )
    }
}

fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0}µs", v * 1000.0)
    } else if v < 100.0 {
        format!("{v:.2}ms")
    } else {
        format!("{v:.0}ms")
    }
}

/// Formats a count with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate for humans: 12.3k, 1.23M.
pub fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The parameters of a run, as given (after defaults).
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub party: String,
    pub clients: usize,
    pub rooms: usize,
    pub senders: usize,
    /// Messages per second per sender; 0 = as fast as the window allows.
    pub rate: f64,
    pub window: usize,
    pub size: usize,
    pub binary: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub ramp_per_s: f64,
    pub source_ips: usize,
    pub room_prefix: String,
}

/// Connection figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Still open when the measurement ended.
    pub open_at_end: u64,
    /// TCP connect + WebSocket handshake (until the 101), ms.
    pub connect_ms: Quantiles,
    /// Seconds from the first attempt until the last connection was up.
    pub ramp_s: f64,
}

/// Message figures (fanout, echo, idle).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Messages {
    /// Messages sent in the measured window.
    pub sent: u64,
    /// `sent` per second of the measured window.
    pub sent_per_s: f64,
    /// Messages sent during the warm-up (not measured).
    pub warmup_sent: u64,
    #[serde(flatten)]
    pub totals: Totals,
    /// Measured deliveries per second of the measured window.
    pub delivered_per_s: f64,
    /// Frames that were not the tester's payload (a party's own frames, e.g. chat history).
    pub other_frames: u64,
    /// Latency from the send time in the payload to its arrival at each receiver, ms.
    pub latency_ms: Quantiles,
}

/// HTTP figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpFigures {
    /// Measured requests that got a response.
    pub responses: u64,
    pub per_s: f64,
    /// Measured responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    pub latency_ms: Quantiles,
}

/// Churn figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnFigures {
    /// Measured connect-hold-close cycles completed.
    pub cycles: u64,
    pub cycles_per_s: f64,
    /// Closes initiated by the server (by code), e.g. 4409 when an id was reused too fast.
    pub server_closes: BTreeMap<String, u64>,
}

/// Idle figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleFigures {
    /// Seconds the connections were held before the broadcast.
    pub hold_s: f64,
    /// Connections open when the hold began.
    pub held: u64,
    /// Of those, still open after the hold.
    pub alive_after_hold: u64,
    /// Receivers the final broadcast should reach and did reach.
    pub broadcast_expected: u64,
    pub broadcast_reached: u64,
    /// Time until the last receiver had a broadcast, ms: the median over the broadcasts
    /// (`None` if not all got every one).
    pub broadcast_all_ms: Option<f64>,
    /// Each broadcast's time until the last receiver had it, ms, in order.
    pub broadcast_each_ms: Vec<f64>,
}

/// Memory of a watched server process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMem {
    pub pid: u32,
    pub name: String,
    pub before: Mem,
    /// After all connections were up.
    pub connected: Mem,
    /// When the measurement ended (before closing).
    pub end: Mem,
    /// (RSS at end - RSS before) / connections open at end, KiB.
    pub per_connection_kib: Option<f64>,
    /// CPU used during the measured window (idle: the hold), % of one core.
    pub cpu_pct: Option<f64>,
}

/// Everything a run measured; printed as a summary and written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub url: String,
    pub label: Option<String>,
    pub params: Params,
    /// Seconds from the first connection attempt to the end.
    pub elapsed_s: f64,
    /// Seconds of the measured window.
    pub measured_s: f64,
    pub connections: Connections,
    pub messages: Option<Messages>,
    pub http: Option<HttpFigures>,
    pub churn: Option<ChurnFigures>,
    pub idle: Option<IdleFigures>,
    pub servers: Vec<ServerMem>,
    pub errors: BTreeMap<String, u64>,
    /// The tester's own peak memory, KiB.
    pub tester_hwm_kib: u64,
    /// The tester's own CPU during the measured window, % of one core.
    pub tester_cpu_pct: Option<f64>,
    pub nofile_limit: u64,
}

impl Report {
    /// The readable summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let p = &self.params;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "partyline bench {} -> {} (party {}){}",
            self.scenario,
            self.url,
            p.party,
            self.label.as_deref().map(|l| format!(" [{l}]")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "  {} clients in {} room(s), {} sender(s), {} B {} messages, rate {}, window {}, warm-up {:.1}s, measured {:.1}s",
            p.clients,
            p.rooms,
            p.senders,
            p.size,
            if p.binary { "binary" } else { "text" },
            if p.rate > 0.0 { format!("{}/s per sender", rate(p.rate)) } else { "max".into() },
            p.window,
            p.warmup_s,
            self.measured_s
        );
        let c = &self.connections;
        let _ = writeln!(
            s,
            "connections: {} of {} up ({} failed) in {:.2}s; open at end {}; connect {}",
            count(c.connected),
            count(c.attempted),
            count(c.failed),
            c.ramp_s,
            count(c.open_at_end),
            c.connect_ms.line()
        );
        if let Some(m) = &self.messages {
            let t = &m.totals;
            let _ = writeln!(
                s,
                "messages:    sent {} ({}/s), warm-up {}",
                count(m.sent),
                rate(m.sent_per_s),
                count(m.warmup_sent)
            );
            let _ = writeln!(
                s,
                "deliveries:  {} of {} expected ({}/s); lost {}, duplicates {}, out of order {}, other frames {}",
                count(t.delivered),
                count(t.expected),
                rate(m.delivered_per_s),
                count(t.lost),
                count(t.duplicates),
                count(t.out_of_order),
                count(m.other_frames)
            );
            let _ = writeln!(s, "latency:     {}", m.latency_ms.line());
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                s,
                "idle:        {} held {:.0}s, {} alive after; broadcast reached {} of {}{}",
                count(i.held),
                i.hold_s,
                count(i.alive_after_hold),
                count(i.broadcast_reached),
                count(i.broadcast_expected),
                i.broadcast_all_ms
                    .map(|v| {
                        let each: Vec<String> = i.broadcast_each_ms.iter().map(|e| ms(*e)).collect();
                        format!(", all within {} (median of {}: {})", ms(v), each.len(), each.join(", "))
                    })
                    .unwrap_or_else(|| ", NOT all".into())
            );
        }
        if let Some(h) = &self.http {
            let statuses: Vec<String> = h.statuses.iter().map(|(k, v)| format!("{k}: {}", count(*v))).collect();
            let _ = writeln!(
                s,
                "http:        {} responses ({}/s); {}",
                count(h.responses),
                rate(h.per_s),
                statuses.join(", ")
            );
            let _ = writeln!(s, "latency:     {}", h.latency_ms.line());
        }
        if let Some(ch) = &self.churn {
            let closes: Vec<String> = ch.server_closes.iter().map(|(k, v)| format!("{k}: {}", count(*v))).collect();
            let _ = writeln!(
                s,
                "churn:       {} connect/close cycles ({}/s); server closes: {}",
                count(ch.cycles),
                rate(ch.cycles_per_s),
                if closes.is_empty() { "none".into() } else { closes.join(", ") }
            );
        }
        for m in &self.servers {
            let _ = writeln!(
                s,
                "server {} ({}): RSS {} KiB before, {} KiB connected, {} KiB at end (peak {} KiB){}",
                m.pid,
                m.name,
                count(m.before.rss_kib),
                count(m.connected.rss_kib),
                count(m.end.rss_kib),
                count(m.end.hwm_kib),
                m.per_connection_kib.map(|k| format!("; {k:.2} KiB per connection")).unwrap_or_default()
            );
            if let Some(c) = m.cpu_pct {
                let _ = writeln!(s, "  CPU {c:.0}% of a core while measuring");
            }
        }
        if let Some(c) = self.tester_cpu_pct {
            let _ = writeln!(
                s,
                "tester:      CPU {c:.0}% of a core while measuring, peak RSS {} KiB",
                count(self.tester_hwm_kib)
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors:      none");
        } else {
            let _ = writeln!(s, "errors:");
            for (k, v) in &self.errors {
                let _ = writeln!(s, "  {:>9}  {k}", count(*v));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(100), "100");
        assert_eq!(rate(1_234_567.0), "1.23M");
        assert_eq!(rate(12_345.0), "12.3k");
        assert_eq!(ms(0.25), "250µs");
        assert_eq!(ms(2.5), "2.50ms");
    }

    #[test]
    fn histogram_quantiles_in_ms() {
        let shared = SharedHist::default();
        {
            let mut b = HistBuf::new(&shared);
            for i in 1..=1000u64 {
                b.record(i * 1000); // 1 µs .. 1 ms
            }
        }
        let q = shared.quantiles();
        assert_eq!(q.count, 1000);
        assert!((q.p50 - 0.5).abs() < 0.01, "{q:?}");
        assert!((q.max - 1.0).abs() < 0.01, "{q:?}");
    }
}
