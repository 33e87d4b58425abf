//! Delivery accounting per (receiver, sender): which sequence numbers arrived, which are
//! duplicates, which arrived after a later one (out of order), and how many of the measured
//! ones never arrived (losses).

use std::collections::HashMap;

/// Most gaps remembered per (receiver, sender); older gaps are forgotten (a late frame for a
/// forgotten gap then counts as a duplicate, and its loss stays counted).
const MAX_GAPS: usize = 1024;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or a later one (leaving a gap).
    InOrder,
    /// A sequence number below the highest seen that had not arrived yet.
    OutOfOrder,
    /// Already seen.
    Duplicate,
}

/// The sequence numbers seen from one sender by one receiver. Sequence numbers start at 0.
/// Costs no allocation while frames arrive in order.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// One past the highest sequence number seen (0: none yet).
    next: u64,
    /// Gaps below `next`: half-open ranges `[start, end)` of numbers not seen, ascending.
    gaps: Vec<(u64, u64)>,
    /// Distinct sequence numbers seen.
    pub unique: u64,
    /// Arrivals of a number already seen.
    pub duplicates: u64,
    /// Arrivals that filled a gap.
    pub out_of_order: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.gaps.push((self.next, seq));
                if self.gaps.len() > MAX_GAPS {
                    self.gaps.remove(0);
                }
            }
            self.next = seq + 1;
            self.unique += 1;
            return Arrival::InOrder;
        }
        // Below the highest: fills a gap, or is a duplicate.
        let i = self.gaps.partition_point(|&(_, end)| end <= seq);
        match self.gaps.get(i).copied() {
            Some((start, end)) if start <= seq => {
                match (seq == start, seq + 1 == end) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq,
                    (false, false) => {
                        self.gaps[i].1 = seq;
                        self.gaps.insert(i + 1, (seq + 1, end));
                        if self.gaps.len() > MAX_GAPS {
                            self.gaps.remove(0);
                        }
                    }
                }
                self.unique += 1;
                self.out_of_order += 1;
                Arrival::OutOfOrder
            }
            _ => {
                self.duplicates += 1;
                Arrival::Duplicate
            }
        }
    }
}

/// One receiver's view of one sender: the tracker, plus how many distinct *measured* frames
/// (sent after the warm-up) arrived.
#[derive(Debug, Default, Clone)]
pub struct PairTrack {
    /// Order and duplicates over every frame of the sender.
    pub seq: SeqTracker,
    /// Distinct measured frames that arrived.
    pub measured_unique: u64,
}

impl PairTrack {
    /// Records one arrival; `measured` says whether the frame was sent in the measured window.
    pub fn observe(&mut self, seq: u64, measured: bool) -> Arrival {
        let a = self.seq.observe(seq);
        if measured && a != Arrival::Duplicate {
            self.measured_unique += 1;
        }
        a
    }
}

/// Senders below this index are tracked in a vector (senders are the tester's client indices,
/// so all of them in practice); any other in a map.
const DENSE_SENDERS: u64 = 1 << 16;

/// Everything one receiver saw, by sender. Looked up for every frame received, so the usual
/// senders (small indices) are found by indexing, not hashing.
#[derive(Debug, Default)]
pub struct ReceiverTrack {
    dense: Vec<PairTrack>,
    sparse: HashMap<u64, PairTrack>,
}

impl ReceiverTrack {
    /// Records a frame from `sender`.
    pub fn observe(&mut self, sender: u64, seq: u64, measured: bool) -> Arrival {
        let pair = if sender < DENSE_SENDERS {
            let i = sender as usize;
            if i >= self.dense.len() {
                self.dense.resize_with(i + 1, PairTrack::default);
            }
            &mut self.dense[i]
        } else {
            self.sparse.entry(sender).or_default()
        };
        pair.observe(seq, measured)
    }

    /// Adds this receiver's counts into `totals`.
    pub fn add_to(&self, totals: &mut Totals) {
        for p in self.dense.iter().chain(self.sparse.values()) {
            totals.delivered += p.measured_unique;
            totals.duplicates += p.seq.duplicates;
            totals.out_of_order += p.seq.out_of_order;
        }
    }
}

/// Delivery totals over a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Deliveries expected: every measured frame times the receivers that should get it.
    pub expected: u64,
    /// Distinct measured frames delivered.
    pub delivered: u64,
    /// Expected but never delivered.
    pub lost: u64,
    /// Frames delivered more than once (any frame, warm-up included).
    pub duplicates: u64,
    /// Frames that arrived after a later frame of the same sender (any frame).
    pub out_of_order: u64,
}

impl Totals {
    /// Fills `lost` from `expected` and `delivered` (deliveries beyond the expected, e.g. to a
    /// receiver that was not counted, do not make it negative).
    pub fn finish(&mut self) {
        self.lost = self.expected.saturating_sub(self.delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_allocates_no_gap() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            assert_eq!(t.observe(s), Arrival::InOrder);
        }
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (1000, 0, 0));
        assert!(t.gaps.is_empty());
    }

    #[test]
    fn duplicates_and_reorders_are_told_apart() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        assert_eq!(t.observe(0), Arrival::Duplicate);
        assert_eq!(t.observe(5), Arrival::InOrder); // gap 1..5
        assert_eq!(t.gaps, vec![(1, 5)]);
        assert_eq!(t.observe(3), Arrival::OutOfOrder); // splits the gap
        assert_eq!(t.gaps, vec![(1, 3), (4, 5)]);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(1), Arrival::OutOfOrder);
        assert_eq!(t.observe(4), Arrival::OutOfOrder);
        assert_eq!(t.gaps, vec![(2, 3)]);
        assert_eq!(t.observe(5), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::OutOfOrder);
        assert!(t.gaps.is_empty());
        assert_eq!(t.observe(6), Arrival::InOrder);
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (7, 3, 4));
    }

    #[test]
    fn a_stream_that_starts_late_counts_its_missing_head() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(2), Arrival::InOrder);
        assert_eq!(t.observe(0), Arrival::OutOfOrder);
        assert_eq!(t.observe(1), Arrival::OutOfOrder);
        assert_eq!(t.unique, 3);
    }

    #[test]
    fn gaps_are_bounded() {
        let mut t = SeqTracker::default();
        for s in 0..(3 * MAX_GAPS as u64) {
            t.observe(2 * s);
        }
        assert_eq!(t.gaps.len(), MAX_GAPS);
        // The oldest gap was forgotten: its late frame counts as a duplicate.
        assert_eq!(t.observe(1), Arrival::Duplicate);
        // A remembered one still fills.
        assert_eq!(t.observe(2 * (3 * MAX_GAPS as u64 - 1) - 1), Arrival::OutOfOrder);
    }

    #[test]
    fn losses_come_from_measured_frames_only() {
        // Two senders; receiver A gets everything from s1, misses s2's seq 3; a duplicate and a
        // reorder on top. Warm-up frames (seq 0) are not measured.
        let mut a = ReceiverTrack::default();
        for seq in 0..5 {
            a.observe(1, seq, seq > 0);
        }
        for seq in [0, 1, 2, 4] {
            a.observe(2, seq, seq > 0);
        }
        a.observe(2, 2, true); // duplicate
        let mut b = ReceiverTrack::default();
        for seq in [0, 2, 1, 3, 4] {
            b.observe(1, seq, seq > 0); // 1 arrives after 2
        }
        let mut totals = Totals { expected: 2 * 2 * 4, ..Totals::default() }; // 2 receivers x 2 senders x 4 measured
        a.add_to(&mut totals);
        b.add_to(&mut totals);
        totals.finish();
        assert_eq!(totals.delivered, 4 + 3 + 4);
        assert_eq!(totals.lost, 16 - 11, "B never heard from s2 (4) and A missed s2#3 (1)");
        assert_eq!(totals.duplicates, 1);
        assert_eq!(totals.out_of_order, 1);
    }
}
