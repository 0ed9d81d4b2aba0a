//! Counters and histograms that engines keep without allocating.
//!
//! A [`LinearHistogram`] counts small integers exactly (batch sizes: 0..=batch_max), allocated
//! once. Latency histograms with wide ranges live in the load generator (HDR); here nothing
//! needs more.

/// Exact counts of values `0..=max`; larger values land in the last bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearHistogram {
    counts: Vec<u64>,
}

impl LinearHistogram {
    /// A histogram for values `0..=max`.
    pub fn new(max: usize) -> Self {
        Self {
            counts: vec![0; max + 1],
        }
    }
    /// Counts one value.
    pub fn record(&mut self, value: usize) {
        let last = self.counts.len() - 1;
        self.counts[value.min(last)] += 1;
    }
    /// The count per value.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// The number of values recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// The mean of the values recorded, 0 when empty.
    pub fn mean(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let sum: u64 = self
            .counts
            .iter()
            .enumerate()
            .map(|(v, &c)| v as u64 * c)
            .sum();
        sum as f64 / total as f64
    }
    /// Adds another histogram's counts (sizes must match).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
    /// Compact text: `value:count` for non-zero buckets.
    pub fn summary(&self) -> String {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(v, c)| format!("{v}:{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_clamps() {
        let mut h = LinearHistogram::new(4);
        h.record(0);
        h.record(4);
        h.record(9);
        assert_eq!(h.counts(), &[1, 0, 0, 0, 2]);
        assert_eq!(h.total(), 3);
        assert!((h.mean() - 8.0 / 3.0).abs() < 1e-9);
        assert_eq!(h.summary(), "0:1 4:2");
    }
}
