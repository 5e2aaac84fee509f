//! Findings in words: a window detector's finding as the engine reports it, and the
//! `correlated_storm` finding of a window's PCA residual.

use stormwatch_baseline::WindowMetric;
use stormwatch_model::{AlertKind, Contributor, TraceId};

use super::{Pending, Window, MAX_EXEMPLARS};
use crate::detectors::{DetectConfig, Finding, Judgement};

/// A `correlated_storm` finding from the PCA residual of a window.
pub(crate) fn correlated_finding(
    window: &Window,
    residual: crate::correlated::Residual,
    detect: &DetectConfig,
) -> Finding {
    let top = residual.contributions.first().map(|(edge, _)| *edge);
    let exemplars: Vec<TraceId> = top
        .and_then(|edge| window.edges.get(&edge))
        .map(|counts| counts.examples.iter().map(|(_, trace)| *trace).take(MAX_EXEMPLARS).collect())
        .unwrap_or_default();
    let contributors: Vec<Contributor> = residual
        .contributions
        .iter()
        .take(3)
        .map(|(edge, share)| Contributor { name: format!("edge {edge}"), share: (share * 1000.0).round() / 1000.0 })
        .collect();
    let named: Vec<String> =
        residual.contributions.iter().take(3).map(|(edge, share)| format!("{edge} ({:.0}%)", share * 100.0)).collect();
    let severity = detect.severity(residual.spe, residual.threshold);
    Finding {
        kind: AlertKind::CorrelatedStorm,
        edge: top,
        entry: None,
        metric: None,
        observed: (residual.spe * 100.0).round() / 100.0,
        expected: (residual.typical * 100.0).round() / 100.0,
        threshold: (residual.threshold * 100.0).round() / 100.0,
        unit: "residual_spe",
        score: ((residual.spe / residual.threshold) * 100.0).round() / 100.0,
        severity,
        exemplars,
        contributors,
        start_unix_nano: window.start,
        end_unix_nano: window.end,
        baseline_samples: residual.samples as u64,
        baseline_since_unix_nano: window.start,
        baseline_from: None,
        explanation: format!(
            "Edges moved together in a way no learned traffic pattern explains (residual {:.1}, normally {:.1}, alert above {:.1}); most off-pattern: {}.",
            residual.spe,
            residual.typical,
            residual.threshold,
            named.join(", ")
        ),
    }
}

impl Pending {
    /// The finding as reported: in the measured unit, with its severity and sentence.
    pub(super) fn finish(self, window: &Window, detect: &DetectConfig) -> Finding {
        let Judgement { expected, threshold, samples, since, .. } = self.judgement;
        let observed = self.value as f64 / 1000.0;
        let (expected, threshold) = (expected / 1000.0, threshold / 1000.0);
        let unit = match self.metric {
            WindowMetric::WorkPerEntry => "calls_per_entry_request",
            WindowMetric::RetryRatio => "retry_ratio",
            WindowMetric::CacheMissRatio => "cache_miss_ratio",
        };
        let at_this_hour = if self.hourly { " at this hour of day" } else { "" };
        let limits = match self.metric {
            WindowMetric::WorkPerEntry => format!("normally {expected:.2}{at_this_hour}, alert above {threshold:.2}"),
            _ => format!(
                "{:.0}% against normally {:.0}%, alert above {:.0}%",
                observed * 100.0,
                expected * 100.0,
                threshold * 100.0
            ),
        };
        let severity = detect.severity(observed, threshold);
        Finding {
            kind: self.kind,
            edge: Some(self.edge),
            entry: self.top_class,
            metric: None,
            observed: (observed * 1000.0).round() / 1000.0,
            expected: (expected * 1000.0).round() / 1000.0,
            threshold: (threshold * 1000.0).round() / 1000.0,
            unit,
            score: ((observed / threshold.max(1e-9)) * 100.0).round() / 100.0,
            severity,
            exemplars: self.exemplars,
            contributors: self.contributors,
            start_unix_nano: window.start,
            end_unix_nano: window.end,
            baseline_samples: samples,
            baseline_since_unix_nano: since,
            baseline_from: None,
            explanation: format!("{} ({limits}).", self.sentence),
        }
    }
}
