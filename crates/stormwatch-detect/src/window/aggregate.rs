//! `aggregate_amplification`: calls on an edge per entry request far beyond the edge's
//! window baseline (lifted to the level usual at the hour of day), with an absolute excess
//! that stands without the heaviest traces and beyond the window's compound-Poisson noise.

use stormwatch_baseline::{BaselineStore, WindowMetric};
use stormwatch_model::{AlertKind, Edge};

use super::attribution::attribute;
use super::{excess, thousandths, EdgeWindow, Judged, Judging, Pending};
use crate::detectors::{judge as judge_value, DetectConfig, Judgement};

/// Judges one edge's work per entry request in the window: a finding, or what is learned.
pub(super) fn judge(judging: &Judging<'_>, edge: Edge, counts: &EdgeWindow, judged: &mut Judged) {
    let entries = judging.window.entry_requests;
    // Work per entry request, without the traces per-trace detectors already reported: this
    // detector is for amplification no single trace shows.
    let calls = counts.calls.saturating_sub(counts.flagged_calls);
    // Breadth: the excess must stand without the few heaviest traces.
    let heaviest: u64 = counts.heaviest.iter().sum();
    let work = thousandths(calls, entries);
    judged.seasonal.push((edge, work));
    let (judgement, hourly) = judge_hourly(judging.store, edge, work, judging.window.end, &judging.rules);
    match judgement {
        Some(judgement)
            if excess(calls, &judgement, entries).saturating_sub(heaviest) >= judging.config.min_excess
                && significant(calls, &judgement, entries, counts) =>
        {
            judged.pending.push(finding(judging, edge, counts, calls, judgement, hourly));
        }
        // Beyond the ratio but too few calls (or within chance) to alert: not learned either.
        // An attack's first, thin windows must not teach the baseline the attack; the cost
        // is that a low-volume edge that legitimately shifted keeps its old baseline until
        // its volume makes the shift significant, and then alerts once.
        Some(_) => {}
        // Normal for this hour of day only: the daily profile learned it; the all-day
        // baseline does not, or every hour's tail would widen by the busiest hour's mix.
        None if hourly => {}
        None => {
            judged.learn.push((WindowMetric::WorkPerEntry, edge, work));
            for (class, calls) in counts.by_class.top() {
                judged.learn_classes.push((class, edge, thousandths(calls, entries)));
            }
        }
    }
}

/// The finding, attributed to the classes, clients and users behind the excess.
fn finding(
    judging: &Judging<'_>,
    edge: Edge,
    counts: &EdgeWindow,
    calls: u64,
    judgement: Judgement,
    hourly: bool,
) -> Pending {
    let entries = judging.window.entry_requests;
    let work = thousandths(calls, entries);
    let (contributors, top_class) = attribute(counts, edge, entries, judging.store);
    let exemplars = counts.exemplars_of(top_class);
    let leader = contributors.first().map(|c| format!("; {} caused {:.0}% of the excess", c.name, c.share * 100.0));
    let payload = if counts.bytes > 0 {
        format!(" ({} of responses)", edge.to.kind.payload_unit().human(counts.bytes))
    } else {
        String::new()
    };
    Pending {
        kind: AlertKind::AggregateAmplification,
        edge,
        metric: WindowMetric::WorkPerEntry,
        value: work,
        sentence: format!(
            "{} made {} calls to {}{} in {} s for {} entry requests: {:.2} per request",
            edge.from,
            calls,
            edge.to,
            payload,
            judging.seconds(),
            entries,
            work as f64 / 1000.0
        ) + &leader.unwrap_or_default(),
        judgement,
        exemplars,
        contributors,
        top_class,
        fallback: None,
        hourly,
    }
}

/// How far the level usual at one hour of the day may lift an edge's window baseline. A daily
/// rhythm is learned even from windows that alarmed (on its first days it is new), so this
/// bound is what keeps an attack repeated at the same hour from teaching itself: a 10x storm
/// still alarms against a lifted threshold.
pub(super) const MAX_HOURLY_LIFT: f64 = 3.0;

/// Work per entry request judged against the edge's window baseline, scaled to the level
/// usual at the hour of `at` once the edge's daily profile has history for that hour (never
/// below the all-day baseline, at most [`MAX_HOURLY_LIFT`] above it). `true` when lifted.
fn judge_hourly(
    store: &BaselineStore,
    edge: Edge,
    work: u64,
    at: u64,
    rules: &DetectConfig,
) -> (Option<Judgement>, bool) {
    let distribution = store.windows().get(&(WindowMetric::WorkPerEntry, edge));
    let lift = distribution
        .filter(|d| d.samples() >= rules.learning_min_samples)
        .zip(store.seasonal().get(&(WindowMetric::WorkPerEntry, edge)).and_then(|p| p.level_at(at)))
        .map_or(1.0, |(d, level)| (level / (d.quantile(0.5) as f64).max(1.0)).clamp(1.0, MAX_HOURLY_LIFT));
    if lift <= 1.0 {
        return (judge_value(distribution, work, rules), false);
    }
    let scaled = judge_value(distribution, (work as f64 / lift) as u64, rules).map(|j| Judgement {
        expected: j.expected * lift,
        threshold: j.threshold * lift,
        ..j
    });
    (scaled, true)
}

/// Whether an excess of calls is beyond chance. Calls arrive in clumps (one trace makes `c`
/// of them), so the window's count is compound-Poisson: its noise is about `sqrt(E * c)` for
/// `E` expected calls. Four of those is the bar; a rare class whose every request makes many
/// calls needs far more than one lucky extra request to alarm.
fn significant(calls: u64, judgement: &Judgement, entries: u64, counts: &EdgeWindow) -> bool {
    let expected = (judgement.expected * entries as f64 / 1000.0).max(1.0);
    let per_trace = (calls as f64 / counts.traces.max(1) as f64).max(1.0);
    (calls as f64 - expected) >= 4.0 * (expected * per_trace).sqrt()
}
