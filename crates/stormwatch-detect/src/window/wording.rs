//! Findings in words: a window detector's finding as the engine reports it, and the
//! `correlated_storm` finding of a window's PCA residual.

use stormwatch_baseline::WindowMetric;
use stormwatch_model::{AlertKind, Contributor, Edge, TraceId};

use super::{Pending, Window, MAX_EXEMPLARS};
use crate::detectors::{DetectConfig, Judgement};
use crate::Finding;

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
        .map(|(edge, share)| Contributor { name: format!("edge {edge}"), share: *share })
        .collect();
    let named: Vec<String> =
        residual.contributions.iter().take(3).map(|(edge, share)| format!("{edge} ({:.0}%)", share * 100.0)).collect();
    let explanation = format!(
        "Edges moved together in a way no learned traffic pattern explains (residual {:.1}, normally {:.1}, alert \
         above {:.1}); most off-pattern: {}.",
        residual.spe,
        residual.typical,
        residual.threshold,
        named.join(", ")
    );
    Finding::judged(
        AlertKind::CorrelatedStorm,
        residual.spe,
        residual.typical,
        residual.threshold,
        "residual_spe",
        detect,
    )
    .on(top)
    .shown_by(exemplars)
    .caused_by(contributors)
    .during(window.start, window.end)
    .against(residual.samples as u64, window.start, None)
    .explained(explanation)
}

impl Pending {
    /// The finding as reported: in the measured unit, with its severity and sentence.
    pub(super) fn finish(self, window: &Window, detect: &DetectConfig) -> Finding {
        let Judgement { expected, threshold, samples, since, .. } = self.judgement;
        // Thousandths; of microseconds and bytes, reported in milliseconds and kilobytes.
        let payload = self.edge.to.kind.payload_unit();
        let scale = reported_scale(self.metric, self.edge);
        let observed = self.value as f64 / scale;
        let (expected, threshold) = (expected / scale, threshold / scale);
        let unit = match self.metric {
            WindowMetric::WorkPerEntry => "calls_per_entry_request",
            WindowMetric::RetryRatio => "retry_ratio",
            WindowMetric::CacheMissRatio => "cache_miss_ratio",
            WindowMetric::TimePerCall => "work_ms_per_call",
            WindowMetric::BytesPerCall => payload.per("call"),
        };
        let at_this_hour = if self.hourly { " at this hour of day" } else { "" };
        let limits = match self.metric {
            WindowMetric::WorkPerEntry | WindowMetric::TimePerCall | WindowMetric::BytesPerCall => {
                format!("normally {expected:.2}{at_this_hour}, alert above {threshold:.2}")
            }
            _ => format!(
                "{:.0}% against normally {:.0}%, alert above {:.0}%",
                observed * 100.0,
                expected * 100.0,
                threshold * 100.0
            ),
        };
        Finding::judged(self.kind, observed, expected, threshold, unit, detect)
            .on(Some(self.edge))
            .entering(self.top_class)
            .shown_by(self.exemplars)
            .caused_by(self.contributors)
            .during(window.start, window.end)
            .against(samples, since, None)
            .explained(format!("{} ({limits}).", self.sentence))
    }
}

/// What a window baseline's thousandths of `metric` on `edge` are divided by to be reported:
/// thousandths of microseconds in milliseconds, of bytes in kilobytes, of rows in rows.
pub(super) fn reported_scale(metric: WindowMetric, edge: Edge) -> f64 {
    match metric {
        WindowMetric::TimePerCall => 1_000_000.0,
        WindowMetric::BytesPerCall => 1_000.0 * edge.to.kind.payload_unit().scale(),
        _ => 1000.0,
    }
}
