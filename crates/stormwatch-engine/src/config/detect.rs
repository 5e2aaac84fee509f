//! `[detect]`: the detectors' thresholds, windows and throttling.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stormwatch_detect::{DetectConfig, EngineConfig};

use super::ConfigError;

/// `[detect]`: the detectors' thresholds, windows and throttling.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSection {
    /// Baseline quantile thresholds are built on.
    pub quantile: f64,
    /// Alert above `quantile x ratio` ...
    pub ratio: f64,
    /// ... and above `quantile + min_excess`.
    pub min_excess: f64,
    /// `min_excess` of work in time (`cost_amplification`): a request's calls on an edge must
    /// take this much longer than the baseline's quantile before it alerts.
    #[serde(with = "humantime_serde")]
    pub min_excess_work: Duration,
    /// `min_excess` of payload bytes (`egress_amplification`): a request must send back (or
    /// make a callee return) this many bytes beyond the baseline's quantile before it alerts.
    pub min_excess_bytes: u64,
    /// `min_excess` of rows a database returned (`egress_amplification` on an edge into a
    /// database, from `db.response.returned_rows`): rows beyond the baseline's quantile.
    pub min_excess_rows: u64,
    /// Critical at this multiple of the threshold.
    pub critical_factor: f64,
    /// Heavy-tailed baselines: the per-observation false-alarm probability their tail is
    /// extrapolated to.
    pub false_alarm_rate: f64,
    /// Repeats of one incident within this event time are folded into one summary alert.
    #[serde(with = "humantime_serde")]
    pub throttle: Duration,
    /// Length of the tumbling event-time windows of the window-level detectors.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Windows with fewer entry requests are neither judged nor learned.
    pub window_min_requests: u64,
    /// Smallest excess of calls (retries, database reads) in one window that alerts.
    pub window_min_excess: u64,
    /// Smallest excess of a callee's time on one edge in one window that alerts
    /// (`cost_amplification` at window level).
    #[serde(with = "humantime_serde")]
    pub window_min_excess_work: Duration,
    /// Smallest excess of payload bytes on one edge in one window that alerts
    /// (`egress_amplification` at window level).
    pub window_min_excess_bytes: u64,
    /// Smallest excess of rows returned on one edge into a database in one window that
    /// alerts (`egress_amplification` at window level).
    pub window_min_excess_rows: u64,
    /// Windows a window-level baseline needs before it judges.
    pub window_min_windows: u64,
    /// Probability sampling: the most traces one sampled trace (`tracestate` `ot=th:...`)
    /// stands for in window counts; 1 counts every trace once, as if unsampled.
    pub max_adjusted_count: u64,
}

impl Default for DetectSection {
    fn default() -> Self {
        let defaults = DetectConfig::default();
        let window = stormwatch_detect::WindowConfig::default();
        DetectSection {
            quantile: defaults.quantile,
            ratio: defaults.ratio,
            min_excess: defaults.min_excess,
            min_excess_work: Duration::from_secs_f64(defaults.min_excess_work_ms / 1_000.0),
            min_excess_bytes: defaults.min_excess_bytes as u64,
            min_excess_rows: defaults.min_excess_rows as u64,
            critical_factor: defaults.critical_factor,
            false_alarm_rate: defaults.false_alarm_rate,
            throttle: Duration::from_nanos(EngineConfig::default().throttle_nanos),
            window: Duration::from_nanos(window.window_nanos),
            window_min_requests: window.min_entry_requests,
            window_min_excess: window.min_excess,
            window_min_excess_work: Duration::from_micros(window.min_excess_work_micros),
            window_min_excess_bytes: window.min_excess_bytes,
            window_min_excess_rows: window.min_excess_rows,
            window_min_windows: window.min_windows,
            max_adjusted_count: window.max_adjusted_count,
        }
    }
}

impl DetectSection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.quantile > 0.0 && self.quantile <= 1.0) {
            invalid!("detect.quantile: must be in (0, 1], got {}", self.quantile);
        }
        if self.ratio.is_nan() || self.ratio < 1.0 {
            invalid!("detect.ratio: must be at least 1.0, got {}", self.ratio);
        }
        if !(self.critical_factor.is_finite() && self.critical_factor > 0.0) {
            invalid!("detect.critical_factor: must be a positive number, got {}", self.critical_factor);
        }
        if !(self.false_alarm_rate > 0.0 && self.false_alarm_rate < 1.0) {
            invalid!("detect.false_alarm_rate: must be in (0, 1), got {}", self.false_alarm_rate);
        }
        if self.min_excess.is_nan() || self.min_excess < 0.0 {
            invalid!("detect.min_excess: must be zero or more, got {}", self.min_excess);
        }
        if self.window_min_windows == 0 {
            invalid!("detect.window_min_windows: must be at least 1");
        }
        if self.max_adjusted_count == 0 {
            invalid!("detect.max_adjusted_count: must be at least 1 (1 ignores sampling)");
        }
        if self.window < Duration::from_secs(1) {
            invalid!("detect.window: must be at least 1s, got {}", humantime::format_duration(self.window));
        }
        Ok(())
    }
}
