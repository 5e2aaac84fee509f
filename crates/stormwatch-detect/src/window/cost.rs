//! `cost_amplification` and `egress_amplification` at window level: the time the callee spent
//! **per call** on an edge, and the bytes it returned per call (rows, from a database), far
//! beyond the edge's window baseline.
//!
//! The per-trace detectors need a request to add 20 ms or 1 MB beyond its class's usual; many
//! requests that each add less (a search pattern tuned to cost 10 ms, an export tuned to stay
//! under the limit) multiply the work only together. Per call, because how many calls there
//! are per entry request is `aggregate_amplification`'s to judge (with its guards against a
//! few heavy traces): a window with more calls of the usual cost is not a cost anomaly, and a
//! flash crowd is quiet. Traces a per-trace detector reported are not evidence. An alert also
//! needs an absolute excess of time or bytes in the window (`WindowConfig::min_excess_work_micros`,
//! `min_excess_bytes`, `min_excess_rows`) that stands without the three heaviest traces. Time is judged against
//! thresholds stretched by how much slower than usual the callee answered everyone while the
//! window's traces were counted ([`stormwatch_baseline::Pace`]), and a window in which it was
//! slowed teaches nothing. The alert names the root classes by
//! their share of the window's time or bytes on the edge.

use stormwatch_baseline::{WindowMetric, PACE_SLOWED};
use stormwatch_model::{AlertKind, Contributor, Edge, PayloadUnit};

use super::attribution::share;
use super::{excess, thousandths, EdgeWindow, Judged, Judging, Pending};
use crate::detectors::judge as judge_value;

/// Judges one edge's time and bytes per call in the window.
pub(super) fn judge(judging: &Judging<'_>, edge: Edge, counts: &EdgeWindow, judged: &mut Judged) {
    let work = counts.work_micros;
    // The window's own stretch: its time at the usual pace, as the traces were counted.
    let slowdown = if counts.paced_work_micros > 0 { work as f64 / counts.paced_work_micros as f64 } else { 1.0 };
    judge_one(judging, edge, counts, (WindowMetric::TimePerCall, work, slowdown.max(1.0)), judged);
    let bytes = counts.bytes.saturating_sub(counts.flagged_bytes);
    judge_one(judging, edge, counts, (WindowMetric::BytesPerCall, bytes, 1.0), judged);
}

/// One metric: `amount` (microseconds or bytes) per call, the threshold stretched by
/// `slowdown`.
fn judge_one(
    judging: &Judging<'_>,
    edge: Edge,
    counts: &EdgeWindow,
    (metric, amount, slowdown): (WindowMetric, u64, f64),
    judged: &mut Judged,
) {
    let calls = counts.calls.saturating_sub(counts.flagged_calls);
    if amount == 0 || calls == 0 {
        return;
    }
    let value = thousandths(amount, calls);
    let baseline = judging.store.windows().get(&(metric, edge));
    let judgement = judge_value(baseline, (value as f64 / slowdown) as u64, &judging.rules).map(|mut j| {
        j.expected *= slowdown;
        j.threshold *= slowdown;
        j
    });
    let (least, heaviest) = match metric {
        WindowMetric::TimePerCall => (judging.config.min_excess_work_micros, counts.heaviest_work),
        _ if edge.to.kind.payload_unit() == PayloadUnit::Rows => {
            (judging.config.min_excess_rows, counts.heaviest_bytes)
        }
        _ => (judging.config.min_excess_bytes, counts.heaviest_bytes),
    };
    let heaviest: u64 = heaviest.iter().sum();
    match judgement {
        Some(judgement) if excess(amount, &judgement, calls).saturating_sub(heaviest) >= least => {
            judged.pending.push(finding(judging, edge, counts, (metric, amount, value), judgement, slowdown));
        }
        // Beyond the ratio but too little in absolute terms: not learned either.
        Some(_) => {}
        // A callee slowed for everyone teaches nothing about the edge's usual time.
        None if slowdown > PACE_SLOWED => {}
        None => judged.learn.push((metric, edge, value)),
    }
}

/// The finding, attributed to the root classes by their share of the edge's time or bytes.
fn finding(
    judging: &Judging<'_>,
    edge: Edge,
    counts: &EdgeWindow,
    (metric, amount, value): (WindowMetric, u64, u64),
    judgement: crate::detectors::Judgement,
    slowdown: f64,
) -> Pending {
    let of = |row: &(stormwatch_model::RootClass, u64, u64)| {
        if metric == WindowMetric::TimePerCall {
            row.1
        } else {
            row.2
        }
    };
    let mut rows = counts.cost_by_class.clone();
    rows.sort_by_key(|row| std::cmp::Reverse(of(row)));
    let contributors: Vec<Contributor> = rows
        .iter()
        .filter(|row| of(row) > 0)
        .take(3)
        .map(|row| Contributor { name: format!("entry {}", row.0), share: share(of(row), amount) })
        .collect();
    let top_class = rows.first().map(|row| row.0);
    let exemplars = counts.exemplars_of(top_class);
    let unit = edge.to.kind.payload_unit();
    let (kind, what) = match metric {
        WindowMetric::TimePerCall => {
            (AlertKind::CostAmplification, format!("spent {:.1} s answering", amount as f64 / 1_000_000.0))
        }
        _ => (AlertKind::EgressAmplification, format!("returned {}", unit.human(amount))),
    };
    let per_call = value as f64 / super::wording::reported_scale(metric, edge);
    let leader = contributors.first().map(|c| format!("; {} caused {:.0}% of it", c.name, c.share * 100.0));
    let slower = (slowdown >= 1.05)
        .then(|| format!("; it answers every caller {slowdown:.1}x slower than usual lately, allowed for"));
    Pending {
        kind,
        edge,
        metric,
        value,
        sentence: format!(
            "{} {what} {} calls from {} in {} s: {per_call:.2} {} per call{}{}",
            edge.to,
            counts.calls.saturating_sub(counts.flagged_calls),
            edge.from,
            judging.seconds(),
            if metric == WindowMetric::TimePerCall { "ms" } else { unit.shown() },
            leader.unwrap_or_default(),
            slower.unwrap_or_default()
        ),
        judgement,
        exemplars,
        contributors,
        top_class,
        fallback: None,
        hourly: false,
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_assemble::{CompletedTrace, Completion};
    use stormwatch_baseline::{BaselineStore, WindowMetric};
    use stormwatch_model::builder::TraceBuilder;

    use super::super::{judge_window, WindowConfig, Windows, NANOS_PER_SEC};
    use crate::detectors::DetectConfig;
    use crate::features::{extract, TraceFeatures};
    use crate::Finding;

    const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;
    const PAGE: &str = "SELECT id, title FROM notes ORDER BY updated DESC LIMIT ? OFFSET ?";

    /// gateway `GET /notes` -> notes `GET /notes` (returning `kilobytes`) -> one page query
    /// taking `query_micros`, returning `rows`.
    fn page(seed: u64, at: u64, query_micros: u64, (kilobytes, rows): (u32, u32)) -> TraceFeatures {
        let mut t = TraceBuilder::new(seed, at);
        let root = t.server("gateway", "GET /notes", None);
        let call = t.client("gateway", "GET", root);
        t.duration_last((query_micros + 900) * 1_000);
        let notes = t.server("notes", "GET /notes", Some(call));
        t.bytes_last(kilobytes * 1_000);
        t.db("notes", "postgresql", PAGE, notes);
        t.duration_last(query_micros * 1_000);
        t.bytes_last(rows);
        let spans = t.build();
        extract(&CompletedTrace { trace_id: spans[0].trace_id, spans, completion: Completion::Idle, has_root: true })
    }

    /// One 10 s window of 100 pages; `slowdown` as the engine's pace would report it.
    fn window(index: u64, query_micros: u64, payload: (u32, u32), slowdown: f64) -> super::super::Window {
        let mut windows = Windows::new(WindowConfig::default());
        for i in 0..100 {
            let at = T0 + index * 10 * NANOS_PER_SEC + i * 99_000_000;
            let jitter = i * 7_919 % 400;
            windows.add_paced(&page(index * 1_000 + i, at, query_micros + jitter, payload), false, &|_| slowdown);
        }
        windows.close_all().remove(0)
    }

    fn judged(store: &mut BaselineStore, window: &super::super::Window) -> Vec<Finding> {
        judge_window(window, store, &DetectConfig::default(), &WindowConfig::default())
    }

    fn trained() -> BaselineStore {
        let mut store = BaselineStore::new(10_000);
        for index in 0..40 {
            assert!(judged(&mut store, &window(index, 600, (20, 20), 1.0)).is_empty(), "training window {index}");
        }
        store
    }

    #[test]
    fn many_requests_each_a_little_slower_are_caught_by_the_window_not_one_by_one() {
        let mut store = trained();
        // 12 ms a page where 0.6-1 ms is usual: under the 20 ms one request must add, but
        // 1.1 s of database time in the window where 0.08 s is usual.
        let findings = judged(&mut store, &window(50, 12_000, (20, 20), 1.0));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let finding = &findings[0];
        assert_eq!(finding.kind, stormwatch_model::AlertKind::CostAmplification);
        assert_eq!(finding.unit, "work_ms_per_call");
        assert_eq!(finding.edge.unwrap().to.operation.as_str(), PAGE);
        assert!(finding.observed > 11.0 && finding.observed < 13.0, "{}", finding.observed);
        assert_eq!(finding.contributors[0].name, "entry gateway `GET /notes`");
        assert!(
            finding.explanation.contains("per call; entry gateway `GET /notes` caused 100% of it"),
            "{}",
            finding.explanation
        );
    }

    #[test]
    fn the_same_time_when_the_callee_is_slower_for_everyone_is_quiet_and_not_learned() {
        let mut store = trained();
        let learned = |store: &BaselineStore, metric: WindowMetric| -> u64 {
            store.windows().iter().filter(|((m, _), _)| *m == metric).map(|(_, d)| d.samples()).sum()
        };
        let before = (learned(&store, WindowMetric::TimePerCall), learned(&store, WindowMetric::WorkPerEntry));
        assert!(judged(&mut store, &window(50, 12_000, (20, 20), 15.0)).is_empty());
        // Calls per entry learned (two edges); the slowed time not.
        assert_eq!(
            (learned(&store, WindowMetric::TimePerCall), learned(&store, WindowMetric::WorkPerEntry)),
            (before.0, before.1 + 2)
        );
    }

    #[test]
    fn pages_returning_far_more_bytes_are_egress_at_window_level() {
        let mut store = trained();
        // 400 kB a page where 20 kB is usual: under the 1 MB one request must add; 38 MB more
        // in the window.
        let findings = judged(&mut store, &window(50, 600, (400, 20), 1.0));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].kind, stormwatch_model::AlertKind::EgressAmplification);
        assert_eq!(findings[0].unit, "kilobytes_per_call");
        assert!((findings[0].observed - 400.0).abs() < 1.0, "{}", findings[0].observed);
        assert!(findings[0].explanation.contains("returned 40.0 MB"), "{}", findings[0].explanation);
    }

    #[test]
    fn pages_reading_far_more_rows_are_egress_at_window_level_in_rows() {
        let mut store = trained();
        // 3,000 rows a page where 20 are usual: under the 10,000 one request must add, but
        // 300,000 rows in the window; the pages' bytes unchanged.
        let findings = judged(&mut store, &window(50, 600, (20, 3_000), 1.0));
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].kind, stormwatch_model::AlertKind::EgressAmplification);
        assert_eq!(findings[0].unit, "rows_per_call");
        assert_eq!(findings[0].edge.unwrap().to.operation.as_str(), PAGE);
        assert!((findings[0].observed - 3_000.0).abs() < 1.0, "{}", findings[0].observed);
        assert!(findings[0].explanation.contains("returned 300000 rows"), "{}", findings[0].explanation);
        assert!(findings[0].explanation.contains("3000.00 rows per call"), "{}", findings[0].explanation);
    }
}
