//! A lock-free latency histogram: fixed buckets of relaxed atomics.
//!
//! One histogram is the only copy of a distribution: `/metrics` encodes its buckets as a
//! Prometheus histogram and `/_caje/stats` sends the same buckets (and percentiles read from
//! them) to the dashboard, which diffs two polls for the percentiles of the last interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 50 µs doubling by √2 up to about 60 s, so a
/// percentile read from them is within ±20 % of the truth.
fn bounds() -> &'static [f64] {
    static BOUNDS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        (0..41)
            .map(|i| 50e-6 * std::f64::consts::SQRT_2.powi(i))
            .collect()
    })
}

/// Counts of durations per bucket, their sum and their number.
#[derive(Debug)]
pub struct Histogram {
    /// One counter per bound, plus one for what is above the last bound.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..=bounds().len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// A copy of a histogram's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `(upper bound in seconds, observations in that bucket)`, not cumulative; the last
    /// bound is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = bounds().partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter (not atomically as a whole: a concurrent observation may be
    /// counted in `count` and not yet in its bucket, which a scrape tolerates).
    pub fn snapshot(&self) -> Snapshot {
        let b = bounds();
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    b.get(i).copied().unwrap_or(f64::INFINITY),
                    c.load(Ordering::Relaxed),
                )
            })
            .collect();
        Snapshot {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// The `q` quantile (0..=1) in seconds, interpolated inside its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|b| b.1).sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        let mut lower = 0.0;
        for &(upper, n) in &self.buckets {
            if n > 0 && (seen + n) as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
            lower = upper;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            h.observe(Duration::from_millis(1));
        }
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_millis(500));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert!((s.sum - (0.098 + 1.0)).abs() < 1e-6, "{}", s.sum);
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.0007..=0.0015).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((0.35..=0.72).contains(&p99), "{p99}");
        assert_eq!(s.buckets.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn huge_durations_go_to_the_last_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(3600));
        let s = h.snapshot();
        assert_eq!(s.buckets.last().unwrap().1, 1);
        assert!(s.quantile(0.5).unwrap() > 50.0);
    }
}
