//! A bounded streaming distribution of non-negative counts: a sparse log-bucket histogram
//! (exact up to 63, then eight buckets per power of two, so quantiles are within 12.5%) and
//! exponentially weighted mean and variance. A few hundred bytes per baseline.
//!
//! **The tail guard.** Anomalous values are never learned, but values just under the
//! threshold are, and a flood of them would move the tail, then the threshold, then the tail
//! again: three bursts of fake "normal" traffic could teach a baseline to accept a 10x storm.
//! So the quantiles a baseline reports are held under a *ceiling* that follows the learned
//! p99.9 freely while nothing pushes it, and otherwise rises at most [`TAIL_GROWTH_PER_DAY`]
//! times a day of event time. A young baseline (up to [`TAIL_STABLE_SAMPLES`] samples, while a
//! heavy tail's p99.9 still rises as the sample grows) follows its tail freely. A legitimate
//! change of a tail is accepted within days; a poisoning campaign must last as long, in event
//! time.
//!
//! **Held back.** A young baseline has no tail guard yet, and its p99 over a few dozen
//! samples is its largest value: a window just under the threshold would raise the threshold
//! it is judged by, then the next one higher still (a surge teaching itself). So for
//! light-tailed metrics ([`Distribution::observe_guarded`]: window averages), from
//! [`HOLD_FROM_SAMPLES`] samples until the tail guard takes over, a value beyond anything the
//! baseline has learned (and beyond twice its median, so a tight distribution's tail still
//! fills in) is *held back*: counted, not learned. Values a detector judged against
//! someone else's baseline can be held the same way ([`Distribution::hold`]). Held values are
//! learned together once they have recurred in [`RELEASE_HOURS`] different hours of event time
//! (a legitimately heavier level is accepted within hours; a storm shorter than three hours
//! teaches nothing), and forgotten after a day without one; a baseline that grows up with
//! values held forgets them (the tail guard takes over). Heavy-tailed counts (calls per parent
//! or per request) are not guarded so: their largest value over a few dozen samples is far
//! below their p99, and holding what lies beyond it would cut the tail they are judged by.

use serde::{Deserialize, Serialize};

mod held;

use held::Held;
pub use held::{HOLD_FROM_SAMPLES, RELEASE_HOURS};

/// Counts are halved when the histogram holds this many samples, so old behaviour fades and
/// a baseline keeps adapting to slow, legitimate change.
const DECAY_AT: u64 = 100_000;
/// Weight of a new sample in the EWMAs.
const EWMA_ALPHA: f64 = 0.01;
const EXACT_BUCKETS: u64 = 64;
const SUB_BUCKET_BITS: u32 = 3;
/// The quantile the tail ceiling follows.
const TAIL_QUANTILE: f64 = 0.999;
/// How far the tail ceiling may rise per day of event time under pressure.
pub const TAIL_GROWTH_PER_DAY: f64 = 2.0;
/// Up to this many samples the ceiling follows the tail freely.
pub const TAIL_STABLE_SAMPLES: u64 = 1_000;
const DAY_NANOS: f64 = 86_400e9;
/// The latest event time a snapshot may hold (2200-01-01T00:00:00Z): later is an absurd
/// timestamp, refused.
pub const LATEST_UNIX_NANO: u64 = 7_258_118_400 * 1_000_000_000;
/// The most observations a snapshot may claim for one baseline (a million a second for thirty
/// years).
const MOST_SAMPLES: u64 = 1 << 50;

/// What one baseline learned: a decaying log-bucket histogram of the observed values (the
/// quantiles), their exponentially weighted mean and variance, the largest value, how many
/// were learned since when, and the guards of a young or heavy tail.
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
    /// Event time of the latest observation (absent in snapshots written before it existed:
    /// `since_unix_nano` stands in).
    #[serde(default, skip_serializing_if = "is_zero")]
    last_unix_nano: u64,
    /// The tail guard (absent in snapshots written before it existed: set at the next
    /// observation from what was learned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail_ceiling: Option<TailCeiling>,
    /// Values held back while young (absent when none are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<Box<Held>>,
    /// Changed since the store last listed its changed baselines ([`crate::BaselineStore`]'s
    /// change list holds its key once while this is set). Not part of what was learned: never
    /// saved, and equal in every distribution.
    #[serde(skip)]
    pub(crate) listed: Listed,
}

/// Whether a distribution's key is on its store's change list: bookkeeping, not learning, so
/// it compares equal whatever its value.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Listed(pub(crate) bool);

impl PartialEq for Listed {
    fn eq(&self, _: &Listed) -> bool {
        true
    }
}

/// Quantiles never report more than `value`. It was last raised, or last unpressed, at
/// `since_unix_nano` with `samples` learned; growth beyond it is allowed from there.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailCeiling {
    /// The ceiling.
    pub value: f64,
    /// Event time it was last raised or last unpressed at.
    pub since_unix_nano: u64,
    /// Observations learned by then.
    pub samples: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
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
        if self.samples >= TAIL_STABLE_SAMPLES && self.held.is_some() {
            // Grown up: the tail guard decides from here how fast the tail may rise.
            self.held = None;
        }
        self.learn(value, at_unix_nano);
    }

    fn learn(&mut self, value: u64, at_unix_nano: u64) {
        if self.samples == 0 {
            self.since_unix_nano = at_unix_nano;
            self.ewma_mean = value as f64;
        }
        self.last_unix_nano = self.last_unix_nano.max(at_unix_nano);
        // Only a value above the ceiling can push the tail past it: look at the tail then.
        let pressed_before = match self.tail_ceiling {
            Some(ceiling) if value as f64 > ceiling.value => {
                Some(self.raw_quantile(TAIL_QUANTILE) as f64 > ceiling.value)
            }
            _ => None,
        };
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
        match (self.tail_ceiling, pressed_before) {
            (None, _) => {
                self.tail_ceiling = Some(TailCeiling {
                    value: self.raw_quantile(TAIL_QUANTILE) as f64,
                    since_unix_nano: at_unix_nano,
                    samples: self.samples,
                })
            }
            (Some(_), None) => {}
            (Some(mut ceiling), Some(pressed)) => {
                if !pressed {
                    // Pressure starts now: growth is counted from here, never banked.
                    ceiling.since_unix_nano = at_unix_nano;
                    ceiling.samples = self.samples - 1;
                }
                let raw = self.raw_quantile(TAIL_QUANTILE) as f64;
                let days = at_unix_nano.saturating_sub(ceiling.since_unix_nano) as f64 / DAY_NANOS;
                let allowed = if self.samples <= TAIL_STABLE_SAMPLES {
                    f64::INFINITY
                } else {
                    ceiling.value.max(1.0) * TAIL_GROWTH_PER_DAY.powf(days)
                };
                let raised = raw.min(allowed);
                if raised > ceiling.value {
                    ceiling = TailCeiling { value: raised, since_unix_nano: at_unix_nano, samples: self.samples };
                }
                self.tail_ceiling = Some(ceiling);
            }
        }
    }

    fn decay(&mut self) {
        for (_, weight) in &mut self.buckets {
            *weight /= 2;
        }
        self.buckets.retain(|(_, weight)| *weight > 0);
        self.weight = self.buckets.iter().map(|(_, weight)| u64::from(*weight)).sum();
    }

    /// Whether this distribution (read from a snapshot) is one that learning can build: buckets
    /// in order and in range, their weights adding up, finite non-negative moments, times no
    /// later than [`LATEST_UNIX_NANO`]. The error says what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        let last_bucket = bucket_of(u64::MAX);
        let mut previous: Option<u16> = None;
        let mut sum = 0u64;
        for &(index, weight) in &self.buckets {
            if index > last_bucket {
                return Err(format!("bucket {index} does not exist (the last is {last_bucket})"));
            }
            if previous.is_some_and(|p| index <= p) {
                return Err("buckets are not in increasing order".into());
            }
            if weight == 0 || u64::from(weight) > DECAY_AT {
                return Err(format!("bucket {index} has weight {weight} (1 to {DECAY_AT})"));
            }
            sum += u64::from(weight);
            previous = Some(index);
        }
        if sum != self.weight {
            return Err(format!("weight {} is not the sum of its buckets ({sum})", self.weight));
        }
        if self.samples > MOST_SAMPLES || self.weight > self.samples {
            return Err(format!("samples {} for a weight of {}", self.samples, self.weight));
        }
        for (name, value) in [("ewma_mean", self.ewma_mean), ("ewma_variance", self.ewma_variance)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} is {value}, not a finite number of at least 0"));
            }
        }
        for (name, at) in [("since_unix_nano", self.since_unix_nano), ("last_unix_nano", self.last_unix_nano)] {
            if at > LATEST_UNIX_NANO {
                return Err(format!("{name} {at} is after the year 2200"));
            }
        }
        if let Some(held) = &self.held {
            held.check().map_err(|error| format!("held: {error}"))?;
        }
        if let Some(ceiling) = self.tail_ceiling {
            if !(ceiling.value.is_finite() && ceiling.value >= 0.0) {
                return Err(format!("tail_ceiling.value is {}", ceiling.value));
            }
            if ceiling.since_unix_nano > LATEST_UNIX_NANO || ceiling.samples > self.samples {
                return Err("tail_ceiling is later, or has more samples, than its distribution".into());
            }
        }
        Ok(())
    }

    /// Observations ever learned (held ones once released).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Event time of the first observation.
    pub fn since_unix_nano(&self) -> u64 {
        match &self.held {
            // Nothing learned yet, only held: history starts with the first held value.
            Some(held) if self.samples == 0 => held.first_unix_nano,
            _ => self.since_unix_nano,
        }
    }

    /// Event time of the latest observation, Unix nanoseconds.
    pub fn last_seen_unix_nano(&self) -> u64 {
        let held = self.held.as_ref().map_or(0, |held| held.last_unix_nano);
        self.last_unix_nano.max(self.since_unix_nano).max(held)
    }

    /// The largest value ever learned.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The exponentially weighted mean of the values learned.
    pub fn mean(&self) -> f64 {
        self.ewma_mean
    }

    /// The `q` quantile (0..=1), rounded up to its bucket's upper bound, held under the tail
    /// ceiling; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let raw = self.raw_quantile(q);
        match self.tail_ceiling {
            Some(ceiling) => raw.min(ceiling.value as u64),
            None => raw,
        }
    }

    /// The tail guard, once anything was learned.
    pub fn tail_ceiling(&self) -> Option<TailCeiling> {
        self.tail_ceiling
    }

    /// Whether the learned tail stands above the ceiling: the baseline is being pushed up
    /// faster than it may follow.
    pub fn tail_held(&self) -> bool {
        self.tail_ceiling.is_some_and(|ceiling| self.raw_quantile(TAIL_QUANTILE) as f64 > ceiling.value)
    }

    /// The `q` quantile of what was learned, ignoring the ceiling.
    pub fn raw_quantile(&self, q: f64) -> u64 {
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
    fn learned_distributions_pass_their_check_and_absurd_ones_do_not() {
        let mut d = Distribution::default();
        for i in 0..5_000u64 {
            d.observe(i % 700, 1_000 + i);
        }
        assert_eq!(d.check(), Ok(()));
        assert_eq!(Distribution::default().check(), Ok(()));
        let broken = |change: fn(&mut Distribution)| {
            let mut copy = d.clone();
            change(&mut copy);
            copy.check().unwrap_err()
        };
        assert!(broken(|d| d.ewma_variance = -1.0).contains("ewma_variance"));
        assert!(broken(|d| d.ewma_mean = f64::NAN).contains("ewma_mean"));
        assert!(broken(|d| d.since_unix_nano = u64::MAX).contains("2200"));
        assert!(broken(|d| d.weight += 1).contains("sum of its buckets"));
        assert!(broken(|d| d.buckets.reverse()).contains("order"));
        assert!(broken(|d| d.buckets[0].0 = u16::MAX).contains("does not exist"));
        assert!(broken(|d| d.samples = u64::MAX).contains("samples"));
        assert!(broken(|d| d.tail_ceiling.as_mut().unwrap().value = f64::INFINITY).contains("tail_ceiling"));
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

    const HOUR: u64 = 3_600_000_000_000;

    /// 2,000 requests of a loop of 1-5, an hour apart in total.
    fn loop_1_to_5() -> Distribution {
        let mut d = Distribution::default();
        for i in 0..2_000u64 {
            d.observe(1 + i % 5, i * HOUR / 2_000);
        }
        d
    }

    #[test]
    fn bursts_just_under_the_threshold_do_not_move_the_tail() {
        let mut d = loop_1_to_5();
        assert_eq!(d.quantile(0.99), 5);
        // Three bursts of 300, each at the threshold the last one would have made (3x p99).
        for (burst, value) in [12u64, 30, 80].into_iter().enumerate() {
            for i in 0..300u64 {
                d.observe(value, HOUR + burst as u64 * HOUR / 10 + i);
            }
        }
        assert!(d.raw_quantile(0.99) >= 30, "what was learned moved");
        assert!(d.tail_held());
        assert_eq!(d.quantile(0.99), 5, "what is judged did not: {:?}", d.tail_ceiling());
    }

    #[test]
    fn a_lasting_change_is_accepted_within_days() {
        let mut d = loop_1_to_5();
        // From now on the loop is 10-20, for a week.
        let mut days_to_accept = None;
        for i in 0..7 * 24 * 60u64 {
            let at = HOUR + i * 60_000_000_000;
            d.observe(10 + i % 11, at);
            if days_to_accept.is_none() && d.quantile(0.99) >= 20 {
                days_to_accept = Some((at - HOUR) as f64 / (24 * HOUR) as f64);
            }
        }
        let days = days_to_accept.expect("the new loop was never accepted");
        assert!((1.0..3.0).contains(&days), "accepted after {days:.2} days");
    }

    #[test]
    fn a_young_heavy_tail_is_followed_as_it_fills_in() {
        // A Pareto(1, 1.5) call count, by its quantile function over a scrambled grid, learned
        // in one instant: a young ceiling follows the sample, not the clock.
        let mut d = Distribution::default();
        for i in 0..1_000u64 {
            let u = ((i * 7_919) % 1_000) as f64 / 1_000.0;
            d.observe((1.0 / (1.0 - u).powf(1.0 / 1.5)).floor() as u64, 0);
        }
        assert_eq!(d.quantile(0.99), d.raw_quantile(0.99));
        assert!(!d.tail_held());
    }

    #[test]
    fn snapshots_without_a_ceiling_still_load_and_get_one() {
        let mut d = loop_1_to_5();
        d.tail_ceiling = None;
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("tail_ceiling"));
        let mut back: Distribution = serde_json::from_str(&text).unwrap();
        back.observe(3, 2 * HOUR);
        assert_eq!(back.tail_ceiling().unwrap().value, 5.0);
    }

    proptest::proptest! {
        #[test]
        fn quantile_brackets_the_data(values in proptest::collection::vec(0u64..1_000_000, 1..300)) {
            let mut d = Distribution::default();
            for v in &values { d.observe(*v, 0); }
            let max = *values.iter().max().unwrap();
            let min = *values.iter().min().unwrap();
            proptest::prop_assert!(d.raw_quantile(1.0) == max);
            proptest::prop_assert!(d.quantile(1.0) <= max);
            proptest::prop_assert!(d.quantile(0.0) >= min.min(d.quantile(1.0)));
            proptest::prop_assert!(d.quantile(0.5) <= d.quantile(0.99));
        }
    }
}
