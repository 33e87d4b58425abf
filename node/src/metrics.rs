//! A node's metrics (Prometheus / OpenMetrics, with `prometheus-client`), served with its health
//! on `--admin-listen` (see [`crate::admin`]). One [`NodeMetrics`] per node, so several nodes
//! in one process (tests) keep their own figures.
//!
//! Names start with `partyline_node_`; counters end in `_total`, durations are histograms in
//! seconds.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use partyline::runtime::observe::{RoomObserver, EVENTS};
use partyline::store::{Fence, Quota, StoreError, Usage, WriteOp};
use partyline::sync::Lock;
use partyline::{ListOptions, RoomKey, Store};
use partyline_cluster::metrics::AtomicHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Label set of the per-event histogram.
pub type EventLabel = [(&'static str, &'static str); 1];
type Histograms = Family<EventLabel, AtomicHistogram, fn() -> AtomicHistogram>;

/// Durations: 100 µs to ~13 s, doubling.
fn duration_histogram() -> AtomicHistogram {
    AtomicHistogram::seconds(18)
}

/// A node's counters and histograms.
pub struct NodeMetrics {
    registry: Mutex<Registry>,
    /// Link streams opened by gateways (and by nodes for calls between rooms).
    pub links_opened: Counter,
    /// Messages from gateways to rooms over links (connects, frames, closes).
    pub link_messages_in: Counter,
    /// Messages from rooms to gateways over links (frames, broadcasts, closes, ...).
    pub link_messages_out: Counter,
    /// HTTP requests for rooms (`Request` calls) served here.
    pub requests: Counter,
    /// Calls answered "not owner" (the caller was redirected).
    pub redirects: Counter,
    /// Shard leases granted to this node.
    pub lease_acquisitions: Counter,
    /// Lease acquisitions refused because another node holds the shard.
    pub lease_acquisitions_held: Counter,
    /// Renewal round trips that succeeded (one renews every owned lease).
    pub lease_renewals: Counter,
    /// Renewal round trips that failed (Redis unreachable or slow).
    pub lease_renewal_failures: Counter,
    /// Leases found taken over or expired at renewal (the shard is dropped at once).
    pub lease_losses: Counter,
    /// Shards dropped by the self-fence: no successful renewal in time.
    pub self_fences: Counter,
    /// Drains started (graceful shutdowns, and operators' drains of a node that stays up).
    pub drains: Counter,
    /// `on_alarm` runs.
    pub alarms_fired: Counter,
    /// Room storage commits that failed or were refused by the fence.
    pub commit_failures: Counter,
    /// Room starts this node refused: the room's shard is closed here (the node drains, or
    /// refuses to serve) or being handed over, or the node hosts as many rooms as it may. A
    /// "not owner" redirect is not a refusal.
    pub rooms_refused: Counter,
    /// Time to handle one room event, by event.
    pub events: Histograms,
    /// The histograms of [`EVENTS`], in that order.
    event_histograms: Vec<AtomicHistogram>,
    /// Time of one storage commit (one Redis round trip per batch).
    pub commit_seconds: AtomicHistogram,
    /// Cron firings this node handled, by outcome (`ran`, `failed`, `skipped_late`,
    /// `claimed_elsewhere`, `claim_failed`; see [`crate::crons::Outcome`]).
    pub cron_runs: Family<EventLabel, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let m = NodeMetrics {
            registry: Mutex::new(Registry::default()),
            links_opened: Counter::default(),
            link_messages_in: Counter::default(),
            link_messages_out: Counter::default(),
            requests: Counter::default(),
            redirects: Counter::default(),
            lease_acquisitions: Counter::default(),
            lease_acquisitions_held: Counter::default(),
            lease_renewals: Counter::default(),
            lease_renewal_failures: Counter::default(),
            lease_losses: Counter::default(),
            self_fences: Counter::default(),
            drains: Counter::default(),
            alarms_fired: Counter::default(),
            commit_failures: Counter::default(),
            rooms_refused: Counter::default(),
            events: Family::new_with_constructor(duration_histogram as fn() -> AtomicHistogram),
            event_histograms: Vec::new(),
            commit_seconds: duration_histogram(),
            cron_runs: Family::default(),
        };
        let mut m = m;
        m.event_histograms = EVENTS.iter().map(|e| m.events.get_or_create(&[("event", *e)]).clone()).collect();
        // Every outcome exported from the start (at 0), so a rule's increase() sees the first one.
        for outcome in crate::crons::Outcome::ALL {
            drop(m.cron_runs.get_or_create(&[("outcome", outcome.label())]));
        }
        {
            let mut r = m.registry.locked();
            let counters: [(&str, &str, &Counter); 15] = [
                ("links_opened", "Link streams opened into rooms on this node.", &m.links_opened),
                ("link_messages_in", "Messages from gateways to rooms over links.", &m.link_messages_in),
                ("link_messages_out", "Messages from rooms to gateways over links.", &m.link_messages_out),
                ("requests", "HTTP requests for rooms served by this node.", &m.requests),
                ("redirects", "Calls answered \"not owner\" (the caller was redirected).", &m.redirects),
                ("lease_acquisitions", "Shard leases granted to this node.", &m.lease_acquisitions),
                (
                    "lease_acquisitions_held",
                    "Lease acquisitions refused because another node holds the shard.",
                    &m.lease_acquisitions_held,
                ),
                ("lease_renewals", "Successful lease renewal rounds.", &m.lease_renewals),
                ("lease_renewal_failures", "Failed lease renewal rounds.", &m.lease_renewal_failures),
                ("lease_losses", "Leases found lost at renewal (shard dropped).", &m.lease_losses),
                ("self_fences", "Shards dropped by the self-fence (no renewal in time).", &m.self_fences),
                ("drains", "Drains started (graceful shutdowns and operators' drains).", &m.drains),
                ("alarms_fired", "on_alarm runs.", &m.alarms_fired),
                ("commit_failures", "Storage commits that failed or were refused by the fence.", &m.commit_failures),
                (
                    "rooms_refused",
                    "Room starts refused (shard closed or handed over here, or the node at its room limit).",
                    &m.rooms_refused,
                ),
            ];
            for (name, help, c) in counters {
                r.register(format!("partyline_node_{name}"), help, c.clone());
            }
            r.register(
                "partyline_node_event_duration_seconds",
                "Time to handle one room event (party handlers and storage reads), by event.",
                m.events.clone(),
            );
            r.register(
                "partyline_node_commit_duration_seconds",
                "Time of one room storage commit (one Redis round trip per batch).",
                m.commit_seconds.clone(),
            );
            r.register(
                "partyline_node_cron_runs",
                "Cron firings handled by this node, by outcome (ran, failed, skipped_late, claimed_elsewhere, \
                 claim_failed).",
                m.cron_runs.clone(),
            );
        }
        m
    }
}

impl NodeMetrics {
    /// Adds a value read at every scrape (a gauge such as rooms live, or a counter kept
    /// elsewhere). `name` is the full metric name (a counter's without `_total`).
    pub fn register_fn(&self, name: &str, help: &str, kind: FnKind, f: impl Fn() -> i64 + Send + Sync + 'static) {
        self.registry.locked().register_collector(Box::new(FnMetric::new(name, help, kind, f)));
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.locked());
        out
    }
}

impl RoomObserver for NodeMetrics {
    fn event_handled(&self, event: &'static str, elapsed: Duration) {
        match EVENTS.iter().position(|e| *e == event) {
            Some(i) => self.event_histograms[i].observe_duration(elapsed),
            None => self.events.get_or_create(&[("event", event)]).observe_duration(elapsed),
        }
    }

    fn alarm_fired(&self) {
        self.alarms_fired.inc();
    }
}

/// The content type of [`NodeMetrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a [`FnMetric`] reports as.
#[derive(Clone, Copy, Debug)]
pub enum FnKind {
    /// Goes up and down.
    Gauge,
    /// Only goes up.
    Counter,
}

/// A metric whose value is read at scrape time.
pub struct FnMetric {
    name: String,
    help: String,
    kind: FnKind,
    f: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl FnMetric {
    /// A metric named `name` (a counter's without `_total`) whose value `f` gives.
    pub fn new(name: &str, help: &str, kind: FnKind, f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        FnMetric { name: name.to_string(), help: help.to_string(), kind, f: Box::new(f) }
    }
}

impl fmt::Debug for FnMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnMetric").field("name", &self.name).field("kind", &self.kind).finish()
    }
}

impl Collector for FnMetric {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let v = (self.f)();
        match self.kind {
            FnKind::Gauge => {
                let g = ConstGauge::new(v);
                let e = encoder.encode_descriptor(&self.name, &self.help, None, g.metric_type())?;
                g.encode(e)
            }
            FnKind::Counter => {
                let c = ConstCounter::new(v.max(0) as u64);
                let e = encoder.encode_descriptor(&self.name, &self.help, None, c.metric_type())?;
                c.encode(e)
            }
        }
    }
}

/// A store that times commits into [`NodeMetrics`] and passes everything through.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<NodeMetrics>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<NodeMetrics>) -> Self {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn commit(&self, room: &RoomKey, fence: Option<&Fence>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.commit(room, fence, ops).await;
        self.metrics.commit_seconds.observe_duration(started.elapsed());
        if result.is_err() {
            self.metrics.commit_failures.inc();
        }
        result
    }

    async fn get_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.inner.get_fenced(room, fence, keys).await
    }

    async fn list_fenced(
        &self,
        room: &RoomKey,
        fence: Option<&Fence>,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.inner.list_fenced(room, fence, opts).await
    }

    async fn get_alarm_fenced(&self, room: &RoomKey, fence: Option<&Fence>) -> Result<Option<i64>, StoreError> {
        self.inner.get_alarm_fenced(room, fence).await
    }

    async fn due_alarms(&self, now_ms: i64, limit: usize) -> Result<Vec<(RoomKey, i64)>, StoreError> {
        self.inner.due_alarms(now_ms, limit).await
    }

    async fn usage(&self, room: &RoomKey) -> Result<Option<Usage>, StoreError> {
        self.inner.usage(room).await
    }

    fn quota(&self) -> Quota {
        self.inner.quota()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_metered_store_passes_the_quota_on() {
        use partyline::store::conformance;
        use partyline::MemoryStore;
        let inner = Arc::new(MemoryStore::new().with_quota(conformance::QUOTA));
        let store = MeteredStore::new(inner, Arc::new(NodeMetrics::default()));
        conformance::quota(&store).await;
    }

    #[test]
    fn renders_counters_histograms_and_sampled_values() {
        let m = NodeMetrics::default();
        m.lease_acquisitions.inc();
        m.event_handled("message", Duration::from_millis(3));
        m.register_fn("partyline_node_rooms", "Rooms live.", FnKind::Gauge, || 7);
        let text = m.render();
        assert!(text.contains("partyline_node_lease_acquisitions_total 1"), "{text}");
        assert!(text.contains("partyline_node_event_duration_seconds_count{event=\"message\"} 1"), "{text}");
        assert!(text.contains("partyline_node_rooms 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
