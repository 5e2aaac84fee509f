//! Seasonality: what a window metric usually is at each hour of the (UTC) day.
//!
//! Traffic has a daily rhythm that changes its *mix*, not only its volume: a morning batch of
//! reports, an evening of searches. Volume alone never alarms (window metrics are per entry
//! request), but a mix that is normal at 09:00 and nowhere else would. A [`DailyProfile`]
//! keeps, per hour of the day, the level the metric settled at on previous days (an EWMA over
//! days of that hour's mean). Once an hour has been seen on [`MIN_DAYS`] completed days, the
//! detectors may expect that level at that hour instead of the all-day baseline.

use serde::{Deserialize, Serialize};

const NANOS_PER_HOUR: u64 = 3_600 * 1_000_000_000;
const HOURS: usize = 24;
/// Completed days an hour needs before its level is used.
pub(crate) const MIN_DAYS: u16 = 2;
/// Weight of a new day in an hour's level.
const DAY_ALPHA: f32 = 0.3;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Hour {
    /// Day number (Unix days, modulo 65,536: only compared with the current one) of the
    /// values in `sum` and `count`.
    day: u16,
    /// Windows of the day in progress (at most 3,600 an hour at 1 s windows).
    count: u16,
    /// Completed days folded into `level` (saturating).
    days: u16,
    /// Single precision is plenty for a level that lifts a threshold, and keeps a profile
    /// at 24 x 16 bytes.
    sum: f32,
    /// EWMA over completed days of the hour's mean.
    level: f32,
}

/// Per hour of the day: the usual level of one window metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DailyProfile {
    hours: Vec<Hour>,
}

impl Default for DailyProfile {
    fn default() -> Self {
        DailyProfile { hours: vec![Hour::default(); HOURS] }
    }
}

fn hour_and_day(at_unix_nano: u64) -> (usize, u16) {
    let hours = at_unix_nano / NANOS_PER_HOUR;
    ((hours % HOURS as u64) as usize, (hours / HOURS as u64) as u16)
}

impl DailyProfile {
    /// Learns one window's value observed at event time `at_unix_nano`.
    pub fn observe(&mut self, value: f64, at_unix_nano: u64) {
        if !value.is_finite() {
            return;
        }
        if self.hours.len() != HOURS {
            self.hours = vec![Hour::default(); HOURS];
        }
        let (hour, day) = hour_and_day(at_unix_nano);
        let slot = &mut self.hours[hour];
        if slot.count > 0 && slot.day != day {
            let mean = slot.sum / slot.count as f32;
            slot.level = if slot.days == 0 { mean } else { slot.level + DAY_ALPHA * (mean - slot.level) };
            slot.days = slot.days.saturating_add(1);
            slot.sum = 0.0;
            slot.count = 0;
        }
        if slot.count == 0 {
            slot.day = day;
        }
        slot.sum += value as f32;
        slot.count = slot.count.saturating_add(1);
    }

    /// The usual level at the hour of `at_unix_nano`, once that hour has enough history.
    pub fn level_at(&self, at_unix_nano: u64) -> Option<f64> {
        let (hour, _) = hour_and_day(at_unix_nano);
        let slot = self.hours.get(hour)?;
        (slot.days >= MIN_DAYS).then_some(f64::from(slot.level))
    }

    /// Whether this profile (read from a snapshot) has its 24 hours and finite levels.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.hours.len() != HOURS {
            return Err(format!("{} hours, not {HOURS}", self.hours.len()));
        }
        if self.hours.iter().any(|h| !(h.sum.is_finite() && h.level.is_finite())) {
            return Err("an hour's sum or level is not a finite number".into());
        }
        Ok(())
    }

    /// Hours with enough history to be used.
    pub fn mature_hours(&self) -> usize {
        self.hours.iter().filter(|h| h.days >= MIN_DAYS).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * NANOS_PER_HOUR;

    #[test]
    fn an_hour_is_used_after_two_completed_days() {
        let mut profile = DailyProfile::default();
        let nine = 9 * NANOS_PER_HOUR;
        for day in 0..3u64 {
            // Day 2 has two days behind it, but the second is folded in only by day 2's first
            // value: the hour is used from then on.
            assert_eq!(profile.level_at(day * DAY + nine), None, "day {day}");
            for minute in 0..60 {
                profile.observe(3.0, day * DAY + nine + minute * 60_000_000_000);
                profile.observe(1.0, day * DAY + 15 * NANOS_PER_HOUR + minute * 60_000_000_000);
            }
        }
        assert_eq!(profile.level_at(3 * DAY + nine), Some(3.0));
        assert_eq!(profile.level_at(3 * DAY + 15 * NANOS_PER_HOUR), Some(1.0));
        assert_eq!(profile.level_at(3 * DAY + 12 * NANOS_PER_HOUR), None);
        assert_eq!(profile.mature_hours(), 2);
    }

    #[test]
    fn a_level_moves_a_bounded_step_per_day() {
        let mut profile = DailyProfile::default();
        for day in 0..3u64 {
            profile.observe(1.0, day * DAY);
        }
        // One day at ten times the level moves it 30% of the way.
        profile.observe(10.0, 3 * DAY);
        profile.observe(10.0, 4 * DAY);
        let level = profile.level_at(4 * DAY).unwrap();
        assert!((level - 3.7).abs() < 1e-6, "{level}");
        profile.observe(f64::NAN, 5 * DAY);
        assert!(profile.level_at(5 * DAY).unwrap().is_finite());
    }
}
