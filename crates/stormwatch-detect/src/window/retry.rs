//! `retry_storm`: the share of calls on an edge that are retries far beyond its window
//! baseline.

use stormwatch_baseline::WindowMetric;
use stormwatch_model::{AlertKind, Edge};

use super::attribution::attribute;
use super::{excess, thousandths, EdgeWindow, Judged, Judging, Pending};
use crate::detectors::judge as judge_value;

/// Judges one edge's retry ratio in the window: a finding, or what is learned.
pub(super) fn judge(judging: &Judging<'_>, edge: Edge, counts: &EdgeWindow, judged: &mut Judged) {
    if counts.calls == 0 {
        return;
    }
    let ratio = thousandths(counts.retries, counts.calls);
    let baseline = judging.store.windows().get(&(WindowMetric::RetryRatio, edge));
    match judge_value(baseline, ratio, &judging.rules) {
        Some(judgement) if excess(counts.retries, &judgement, counts.calls) >= judging.config.min_excess => {
            let (contributors, top_class) = attribute(counts, edge, judging.window.entry_requests, judging.store);
            judged.pending.push(Pending {
                kind: AlertKind::RetryStorm,
                edge,
                metric: WindowMetric::RetryRatio,
                value: ratio,
                sentence: format!(
                    "{} retried {} of its {} calls to {} in {} s after {} failures",
                    edge.from,
                    counts.retries,
                    counts.calls,
                    edge.to,
                    judging.seconds(),
                    counts.errors
                ),
                judgement,
                exemplars: counts.retry_examples.clone(),
                contributors,
                top_class,
                fallback: None,
                hourly: false,
            });
        }
        Some(_) => {}
        None => judged.learn.push((WindowMetric::RetryRatio, edge, ratio)),
    }
}
