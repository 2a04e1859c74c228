//! A fixed-size log-linear latency histogram (no allocation per sample).

use std::time::Duration;

/// Sub-buckets per power of two (4 bits of mantissa: ≤ 6.25 % error).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// Latency histogram over nanoseconds.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("summary", &self.summary())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let mantissa = ((ns >> shift) as usize) & (SUB - 1);
    ((shift as usize + 1) << SUB_BITS) | mantissa
}

/// Upper bound (inclusive) of the values in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let shift = (b >> SUB_BITS) as u32 - 1;
    let mantissa = (b & (SUB - 1)) as u64;
    let low = (SUB as u64 | mantissa) << shift;
    low + ((1u64 << shift) - 1)
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Record one sample.
    pub fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns += ns as u128;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Add another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), rounded up to its bucket's
    /// upper bound and clamped to the observed max. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(bucket_high(b).min(self.max_ns).max(self.min_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// Summary (count, mean, min, p50, p90, p99, p99.9, max).
    pub fn summary(&self) -> LatencySummary {
        let mean = if self.total == 0 {
            0
        } else {
            (self.sum_ns / self.total as u128) as u64
        };
        LatencySummary {
            count: self.total,
            mean: Duration::from_nanos(mean),
            min: if self.total == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.min_ns)
            },
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: Duration::from_nanos(self.max_ns),
        }
    }
}

/// Percentiles of a [`LatencyHistogram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: Duration,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_monotonic_and_tight() {
        let mut prev = 0;
        for b in 1..(40 * SUB) {
            let h = bucket_high(b);
            assert!(h > prev, "bucket {b}");
            prev = h;
        }
        for ns in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            1000,
            4095,
            4096,
            123_456,
            10_000_000_000,
        ] {
            let b = bucket_of(ns);
            assert!(bucket_high(b) >= ns, "{ns}");
            if b > 0 {
                assert!(bucket_high(b - 1) < ns, "{ns}");
            }
            // relative error bound
            assert!((bucket_high(b) - ns) as f64 <= ns as f64 / SUB as f64 + 1.0);
        }
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let mut h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let p50 = s.p50.as_micros() as f64;
        let p99 = s.p99.as_micros() as f64;
        assert!((500.0..=500.0 * 1.07).contains(&p50), "p50 {p50}");
        assert!((990.0..=1000.0).contains(&p99), "p99 {p99}");
        assert_eq!(s.max, Duration::from_micros(1000));
        assert_eq!(s.min, Duration::from_micros(1));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(1000));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(LatencyHistogram::new().quantile(0.5), Duration::ZERO);
    }
}
