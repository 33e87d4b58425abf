//! Metrics on the per-frame paths: a histogram of plain atomics.
//!
//! `prometheus-client`'s [`Histogram`](prometheus_client::metrics::histogram::Histogram) takes
//! a lock on every observation, and a labelled family adds a read lock and a hash of the labels.
//! On the paths every frame takes (a room's events, a gateway's broadcasts) that is a cost a
//! disabled metric would not have, so these use [`AtomicHistogram`]: fixed bucket bounds, one
//! `fetch_add` on the bucket and one on the sum, no lock. Values are whole units (nanoseconds,
//! sockets) and the bounds are given in the same units; the export scales them (`scale`), so
//! a duration histogram still exports seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of whole-unit observations kept in atomics (cheap to clone: clones share it).
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, in the observed unit.
    bounds: Box<[u64]>,
    /// One count per bound, then the count above the last bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, in the observed unit.
    sum: AtomicU64,
    /// What one unit is in the exported unit (1e-9 for nanoseconds exported as seconds).
    scale: f64,
}

impl AtomicHistogram {
    /// A histogram with `bounds` (ascending, in the observed unit), exported times `scale`.
    pub fn new(bounds: impl IntoIterator<Item = u64>, scale: f64) -> Self {
        let mut bounds: Vec<u64> = bounds.into_iter().collect();
        bounds.sort_unstable();
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram { inner: Arc::new(Inner { bounds: bounds.into(), counts, sum: AtomicU64::new(0), scale }) }
    }

    /// Durations from 100 µs doubling `n` times (to ~13 s with 18), exported in seconds.
    pub fn seconds(n: u32) -> Self {
        Self::new((0..n).map(|i| 100_000u64 << i), 1e-9)
    }

    /// Counts from 1 doubling `n` times (1, 2, 4, ...), exported as they are.
    pub fn counts(n: u32) -> Self {
        Self::new((0..n).map(|i| 1u64 << i), 1.0)
    }

    /// Records one observation of `v` units.
    pub fn observe(&self, v: u64) {
        let i = self.inner.bounds.partition_point(|&b| b < v);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration (for histograms in nanoseconds, as [`seconds`](Self::seconds) makes).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations in the exported unit.
    pub fn sum(&self) -> f64 {
        self.inner.sum.load(Ordering::Relaxed) as f64 * self.inner.scale
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let mut buckets = Vec::with_capacity(inner.counts.len());
        for (i, c) in inner.counts.iter().enumerate() {
            let bound = inner.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64 * inner.scale);
            buckets.push((bound, c.load(Ordering::Relaxed)));
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds_and_export_scaled() {
        let h = AtomicHistogram::seconds(3); // 100 µs, 200 µs, 400 µs
        h.observe_duration(Duration::from_micros(100)); // le 0.0001
        h.observe_duration(Duration::from_micros(150)); // le 0.0002
        h.observe_duration(Duration::from_micros(400)); // le 0.0004
        h.observe_duration(Duration::from_secs(2)); // +Inf
        assert_eq!(h.count(), 4);
        assert!((h.sum() - 2.00065).abs() < 1e-9, "{}", h.sum());

        let mut r = Registry::default();
        r.register("t", "test", h.clone());
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        for line in [
            "t_bucket{le=\"0.0001\"} 1",
            "t_bucket{le=\"0.0002\"} 2",
            "t_bucket{le=\"0.0004\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
            "# TYPE t histogram",
        ] {
            assert!(out.contains(line), "{line:?} not in\n{out}");
        }
    }

    #[test]
    fn counts_histogram_and_clones_share() {
        let h = AtomicHistogram::counts(4); // 1, 2, 4, 8
        let c = h.clone();
        for v in [0, 1, 3, 8, 9] {
            c.observe(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 21.0);
        let counts: Vec<u64> = h.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [2, 0, 1, 1, 1]);
    }
}
