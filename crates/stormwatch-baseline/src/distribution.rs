//! A bounded streaming distribution of non-negative counts: a sparse log-bucket histogram
//! (exact up to 63, then eight buckets per power of two, so quantiles are within 12.5%) and
//! exponentially weighted mean and variance. A few hundred bytes per baseline.

use serde::{Deserialize, Serialize};

/// Counts are halved when the histogram holds this many samples, so old behaviour fades and
/// a baseline keeps adapting to slow, legitimate change.
const DECAY_AT: u64 = 100_000;
/// Weight of a new sample in the EWMAs.
const EWMA_ALPHA: f64 = 0.01;
const EXACT_BUCKETS: u64 = 64;
const SUB_BUCKET_BITS: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// (bucket index, weight), sorted by index. A weight never exceeds `DECAY_AT`, so 32 bits
    /// hold it: 8 bytes a bucket.
    buckets: Vec<(u16, u32)>,
    /// Weight held in `buckets` (decays).
    weight: u64,
    /// Observations ever learned (never decays).
    samples: u64,
    max: u64,
    ewma_mean: f64,
    ewma_variance: f64,
    /// Event time of the first observation, Unix nanoseconds.
    since_unix_nano: u64,
}

fn bucket_of(value: u64) -> u16 {
    if value < EXACT_BUCKETS {
        return value as u16;
    }
    let magnitude = 63 - value.leading_zeros(); // >= 6
    let sub = (value >> (magnitude - SUB_BUCKET_BITS)) & ((1 << SUB_BUCKET_BITS) - 1);
    (EXACT_BUCKETS + u64::from(magnitude - 6) * (1 << SUB_BUCKET_BITS) + sub) as u16
}

/// Largest value that falls in `bucket` (quantiles are reported conservatively high).
fn bucket_upper(bucket: u16) -> u64 {
    let bucket = u64::from(bucket);
    if bucket < EXACT_BUCKETS {
        return bucket;
    }
    let offset = bucket - EXACT_BUCKETS;
    let magnitude = offset / (1 << SUB_BUCKET_BITS) + 6;
    let sub = offset % (1 << SUB_BUCKET_BITS);
    let width = 1u64 << (magnitude - u64::from(SUB_BUCKET_BITS));
    ((1 << SUB_BUCKET_BITS) + sub) * width + (width - 1)
}

impl Distribution {
    /// Learns one observation made at event time `at_unix_nano`.
    pub fn observe(&mut self, value: u64, at_unix_nano: u64) {
        if self.samples == 0 {
            self.since_unix_nano = at_unix_nano;
            self.ewma_mean = value as f64;
        }
        self.samples += 1;
        self.weight += 1;
        self.max = self.max.max(value);
        let bucket = bucket_of(value);
        match self.buckets.binary_search_by_key(&bucket, |(index, _)| *index) {
            Ok(position) => self.buckets[position].1 += 1,
            Err(position) => {
                // Grow by little: a baseline holds a few dozen buckets at most, and millions of
                // baselines would otherwise carry up to half their capacity unused.
                if self.buckets.len() == self.buckets.capacity() {
                    self.buckets.reserve_exact(4);
                }
                self.buckets.insert(position, (bucket, 1));
            }
        }
        let delta = value as f64 - self.ewma_mean;
        self.ewma_mean += EWMA_ALPHA * delta;
        self.ewma_variance = (1.0 - EWMA_ALPHA) * (self.ewma_variance + EWMA_ALPHA * delta * delta);
        if self.weight >= DECAY_AT {
            self.decay();
        }
    }

    fn decay(&mut self) {
        for (_, weight) in &mut self.buckets {
            *weight /= 2;
        }
        self.buckets.retain(|(_, weight)| *weight > 0);
        self.weight = self.buckets.iter().map(|(_, weight)| u64::from(*weight)).sum();
    }

    /// Observations ever learned.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Event time of the first observation.
    pub fn since_unix_nano(&self) -> u64 {
        self.since_unix_nano
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        self.ewma_mean
    }

    /// The `q` quantile (0..=1), rounded up to its bucket's upper bound; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.weight == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.weight as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, weight) in &self.buckets {
            seen += u64::from(*weight);
            if seen >= rank {
                return bucket_upper(*bucket).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_then_logarithmic() {
        for v in 0..64 {
            assert_eq!(bucket_upper(bucket_of(v)), v);
        }
        for v in [64u64, 100, 1_000, 65_535, 1 << 40] {
            let upper = bucket_upper(bucket_of(v));
            assert!(upper >= v && (upper as f64) < v as f64 * 1.13, "{v} -> {upper}");
        }
        assert!(bucket_of(u64::MAX) > bucket_of(1 << 62));
    }

    #[test]
    fn quantiles_of_a_small_loop() {
        let mut d = Distribution::default();
        for i in 0..1_000u64 {
            d.observe(1 + i % 5, 7);
        }
        assert_eq!(d.samples(), 1_000);
        assert_eq!(d.quantile(0.5), 3);
        assert_eq!(d.quantile(0.99), 5);
        assert_eq!(d.max(), 5);
        assert_eq!(d.since_unix_nano(), 7);
        assert!((d.mean() - 3.0).abs() < 0.5);
    }

    #[test]
    fn decays_but_keeps_counting() {
        let mut d = Distribution::default();
        for _ in 0..DECAY_AT + 10 {
            d.observe(2, 0);
        }
        assert_eq!(d.samples(), DECAY_AT + 10);
        assert!(d.weight < DECAY_AT);
        assert_eq!(d.quantile(0.99), 2);
    }

    proptest::proptest! {
        #[test]
        fn quantile_brackets_the_data(values in proptest::collection::vec(0u64..1_000_000, 1..300)) {
            let mut d = Distribution::default();
            for v in &values { d.observe(*v, 0); }
            let max = *values.iter().max().unwrap();
            let min = *values.iter().min().unwrap();
            proptest::prop_assert!(d.quantile(1.0) == max);
            proptest::prop_assert!(d.quantile(0.0) >= min);
            proptest::prop_assert!(d.quantile(0.5) <= d.quantile(0.99));
        }
    }
}
