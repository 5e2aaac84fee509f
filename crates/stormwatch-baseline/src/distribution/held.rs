//! Values a young baseline holds back (see the parent module's documentation): counted, not
//! learned, until they recur in [`RELEASE_HOURS`] different hours of event time.

use serde::{Deserialize, Serialize};

use super::{bucket_of, bucket_upper, Distribution, DECAY_AT, EWMA_ALPHA, LATEST_UNIX_NANO, MOST_SAMPLES};
use super::{TailCeiling, TAIL_QUANTILE, TAIL_STABLE_SAMPLES};

/// From this many samples (until [`TAIL_STABLE_SAMPLES`]) values beyond the largest learned
/// are held back.
pub const HOLD_FROM_SAMPLES: u64 = 12;
/// A young baseline learns values up to this multiple of its median even beyond its largest,
/// so a tight distribution's tail can still fill in (a median moves only when half the
/// samples do: this bounds what a surge can teach to one step).
const HOLD_BEYOND_MEDIAN: u64 = 2;
/// Held values are learned once they were held in this many different hours of event time.
pub const RELEASE_HOURS: usize = 4;
/// Held values are forgotten when none came for this long (event time).
const HELD_EXPIRY_NANOS: u64 = 86_400 * 1_000_000_000;
const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
/// Buckets a held record keeps (a new value beyond them joins the nearest): a few dozen bytes.
const HELD_BUCKETS: usize = 8;

/// Values a young baseline held back: beyond anything it learned, waiting to recur over time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Held {
    /// (bucket index, weight), sorted by index, at most [`HELD_BUCKETS`].
    buckets: Vec<(u16, u32)>,
    /// Values held.
    count: u64,
    max: u64,
    pub(super) first_unix_nano: u64,
    pub(super) last_unix_nano: u64,
    /// The different hours of event time (hours since the epoch) values were held in, at
    /// most [`RELEASE_HOURS`].
    hours: Vec<u32>,
}

impl Distribution {
    /// Learns one observation, or holds it back (see the module's documentation) when the
    /// baseline is young and has learned nothing like it. For light-tailed metrics (window
    /// averages), whose largest value is their p99 while young.
    pub fn observe_guarded(&mut self, value: u64, at_unix_nano: u64) {
        if (HOLD_FROM_SAMPLES..TAIL_STABLE_SAMPLES).contains(&self.samples)
            && value > self.max.max(self.raw_quantile(0.5).saturating_mul(HOLD_BEYOND_MEDIAN))
        {
            self.hold(value, at_unix_nano);
        } else {
            self.observe(value, at_unix_nano);
        }
    }

    /// Holds `value` back instead of learning it: it is learned with the other held values
    /// once they were held in [`RELEASE_HOURS`] different hours (a day without one forgets
    /// them). For values a young baseline must not learn yet, such as those beyond a
    /// threshold it borrowed.
    pub fn hold(&mut self, value: u64, at_unix_nano: u64) {
        let held = self.held.get_or_insert_with(Box::default);
        if held.count > 0 && at_unix_nano > held.last_unix_nano.saturating_add(HELD_EXPIRY_NANOS) {
            **held = Held::default();
        }
        if held.count == 0 {
            held.first_unix_nano = at_unix_nano;
        }
        let bucket = bucket_of(value);
        match held.buckets.binary_search_by_key(&bucket, |(index, _)| *index) {
            Ok(position) => held.buckets[position].1 = held.buckets[position].1.saturating_add(1),
            Err(position) if held.buckets.len() < HELD_BUCKETS => held.buckets.insert(position, (bucket, 1)),
            // Full: the nearest bucket below takes it (or the lowest, for a value below all).
            Err(position) => {
                let nearest = position.saturating_sub(1);
                held.buckets[nearest].1 = held.buckets[nearest].1.saturating_add(1);
            }
        }
        held.count += 1;
        held.max = held.max.max(value);
        held.last_unix_nano = held.last_unix_nano.max(at_unix_nano);
        let hour = (at_unix_nano / HOUR_NANOS).min(u64::from(u32::MAX)) as u32;
        if !held.hours.contains(&hour) {
            held.hours.push(hour);
        }
        if held.hours.len() >= RELEASE_HOURS {
            self.release(at_unix_nano);
        }
    }

    /// Learns what was held back, all at once.
    fn release(&mut self, at_unix_nano: u64) {
        let Some(held) = self.held.take() else { return };
        if self.samples == 0 {
            self.since_unix_nano = held.first_unix_nano;
            self.ewma_mean = bucket_upper(held.buckets[0].0).min(held.max) as f64;
        }
        for &(bucket, weight) in &held.buckets {
            let value = bucket_upper(bucket).min(held.max) as f64;
            match self.buckets.binary_search_by_key(&bucket, |(index, _)| *index) {
                Ok(position) => self.buckets[position].1 = self.buckets[position].1.saturating_add(weight),
                Err(position) => self.buckets.insert(position, (bucket, weight)),
            }
            self.weight += u64::from(weight);
            // The moments move as `weight` observations of the bucket's value would move them.
            let keep = (1.0 - EWMA_ALPHA).powf(f64::from(weight));
            let delta = value - self.ewma_mean;
            self.ewma_mean += (1.0 - keep) * delta;
            self.ewma_variance = keep * self.ewma_variance + (1.0 - keep) * delta * delta;
        }
        self.samples += held.count;
        self.max = self.max.max(held.max);
        self.last_unix_nano = self.last_unix_nano.max(at_unix_nano);
        while self.buckets.iter().any(|(_, weight)| u64::from(*weight) > DECAY_AT) || self.weight >= DECAY_AT {
            self.decay();
        }
        if self.samples <= TAIL_STABLE_SAMPLES {
            let raw = self.raw_quantile(TAIL_QUANTILE) as f64;
            let ceiling =
                self.tail_ceiling.get_or_insert(TailCeiling { value: raw, since_unix_nano: at_unix_nano, samples: 0 });
            *ceiling =
                TailCeiling { value: ceiling.value.max(raw), since_unix_nano: at_unix_nano, samples: self.samples };
        }
    }

    /// Values held back (see [`Distribution::hold`]), not yet learned.
    pub fn held(&self) -> u64 {
        self.held.as_ref().map_or(0, |held| held.count)
    }

    /// The largest value held back, when any is.
    pub fn held_max(&self) -> Option<u64> {
        self.held.as_ref().map(|held| held.max)
    }
}

impl Held {
    pub(super) fn check(&self) -> Result<(), String> {
        let last_bucket = bucket_of(u64::MAX);
        if self.buckets.is_empty() || self.buckets.len() > HELD_BUCKETS {
            return Err(format!("{} buckets (1 to {HELD_BUCKETS})", self.buckets.len()));
        }
        if self.buckets.windows(2).any(|pair| pair[0].0 >= pair[1].0) || self.buckets.iter().any(|b| b.0 > last_bucket)
        {
            return Err("buckets are not in increasing order, or do not exist".into());
        }
        let weights: u64 = self.buckets.iter().map(|(_, weight)| u64::from(*weight)).sum();
        if self.buckets.iter().any(|(_, weight)| *weight == 0) || weights > self.count || self.count > MOST_SAMPLES {
            return Err(format!("count {} for buckets weighing {weights}", self.count));
        }
        if self.first_unix_nano > self.last_unix_nano || self.last_unix_nano > LATEST_UNIX_NANO {
            return Err("its times are out of order or after the year 2200".into());
        }
        if self.hours.is_empty() || self.hours.len() >= RELEASE_HOURS {
            return Err(format!("{} hours (1 to {})", self.hours.len(), RELEASE_HOURS - 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000_000;

    /// 40 windows of a light-tailed average (thousandths), a minute apart.
    fn young_window() -> Distribution {
        let mut d = Distribution::default();
        for i in 0..40u64 {
            d.observe_guarded(300 + i % 7 * 50, i * HOUR / 60);
        }
        d
    }

    #[test]
    fn a_young_baseline_holds_back_what_it_never_saw_until_it_recurs_for_hours() {
        let mut d = young_window();
        let before = d.clone();
        // The median is 450, reported at its bucket's upper bound.
        assert_eq!((d.max(), d.quantile(0.5)), (600, 479));
        // A surge an hour long, at up to 20 times the usual level: nothing of it is learned.
        for i in 0..360u64 {
            d.observe_guarded(1_000 + i % 19 * 500, HOUR + i * HOUR / 360);
        }
        assert_eq!((d.samples(), d.quantile(0.99), d.max()), (before.samples(), before.quantile(0.99), 600));
        assert_eq!((d.held(), d.held_max()), (360, Some(10_000)));
        // Up to twice the median (958) it still learns beyond its largest value (a tight tail
        // fills in).
        d.observe_guarded(900, 2 * HOUR);
        assert_eq!((d.samples(), d.max()), (41, 900));
        // The same level in a second, a third and a fourth hour: it was not an incident, it is
        // the level.
        d.observe_guarded(5_000, 2 * HOUR + 1);
        d.observe_guarded(5_000, 3 * HOUR + 1);
        assert_eq!(d.held(), 362);
        d.observe_guarded(5_000, 4 * HOUR + 1);
        assert_eq!((d.held(), d.samples(), d.max()), (0, 41 + 363, 10_000));
        assert!(d.quantile(0.5) > 1_000, "the released level is learned: {d:?}");
        assert_eq!(d.check(), Ok(()));
    }

    #[test]
    fn held_values_are_forgotten_after_a_quiet_day_and_when_the_baseline_grows_up() {
        let mut d = young_window();
        d.observe_guarded(5_000, HOUR);
        d.observe_guarded(5_000, 2 * HOUR);
        // A day without another: the next one starts a new record, in its first hour.
        d.observe_guarded(5_000, 27 * HOUR);
        assert_eq!(d.held(), 1);
        d.observe_guarded(5_000, 28 * HOUR);
        d.observe_guarded(5_000, 29 * HOUR);
        assert_eq!((d.held(), d.samples()), (3, 40), "three hours are not four");
        // Grown up (the tail guard takes over): what was held is dropped, not learned.
        for i in 0..1_000u64 {
            d.observe_guarded(300 + i % 7 * 50, 30 * HOUR + i);
        }
        assert_eq!((d.held(), d.max()), (0, 600));
        // Held before anything was learned: its history starts with what it held.
        let mut fresh = Distribution::default();
        fresh.hold(5_000, 7 * HOUR);
        assert_eq!((fresh.samples(), fresh.held(), fresh.since_unix_nano()), (0, 1, 7 * HOUR));
        // Unguarded learning never holds.
        let mut plain = young_window();
        plain.observe(5_000, HOUR);
        assert_eq!((plain.held(), plain.max()), (0, 5_000));
    }

    #[test]
    fn held_records_are_checked_and_kept_in_snapshots() {
        let mut d = young_window();
        d.observe_guarded(5_000, HOUR);
        d.observe_guarded(7_000, HOUR);
        let text = serde_json::to_string(&d).unwrap();
        let back: Distribution = serde_json::from_str(&text).unwrap();
        assert_eq!((back.held(), back.held_max(), back.check()), (2, Some(7_000), Ok(())));
        let broken = |change: fn(&mut Held)| {
            let mut copy = d.clone();
            change(copy.held.as_mut().unwrap());
            copy.check().unwrap_err()
        };
        assert!(broken(|h| h.count = 1).starts_with("held: count"));
        assert!(broken(|h| h.buckets.reverse()).contains("order"));
        assert!(broken(|h| h.last_unix_nano = u64::MAX).contains("2200"));
        assert!(broken(|h| h.hours = vec![1, 2, 3, 4]).contains("hours"));
        assert!(broken(|h| h.buckets = vec![(1, 1); 9]).contains("buckets"));
        // Without a record, as written before holding existed, it loads as holding nothing.
        assert!(!serde_json::to_string(&young_window()).unwrap().contains("held"));
    }
}
