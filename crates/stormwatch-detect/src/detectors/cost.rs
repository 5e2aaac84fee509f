//! `cost_amplification`: work in time per root request on an edge far beyond its root class's
//! baseline.
//!
//! A call's work is the time its callee spent on it: the caller's client span's duration (the
//! callee's server span's where no client span stands for the call), less the calls the callee
//! made in turn while answering it (`features`). An edge's work in a request is the sum over its
//! calls, so concurrent calls each count in full (work, not wall time). One search whose
//! pattern makes the database scan a table is one call of the usual statement, and 40 ms where
//! 0.7 ms is usual: the call counts see nothing, the work does, on the edge into the database
//! and not on the edges above it (their callees' own time did not change).
//!
//! A request whose calls on the edge each took about the callee's usual time (within `ratio`
//! of it, at its current pace) made *more* calls, not slower ones: that is the call counts' to
//! judge (`request_amplification`, with their own tails), not the time's.
//!
//! The threshold is the per-trace rule (`max(q * ratio, q + min_excess, tail)`) with the
//! absolute excess in time ([`DetectConfig::min_excess_work_ms`]), so latency jitter of a few
//! milliseconds is not an incident. It is stretched by how much slower than usual the callee
//! answers everyone lately ([`stormwatch_baseline::Pace`]): a database slowing down for every
//! caller is a latency incident, not a request class abusing a channel.
//!
//! Only work of at least a quarter of the absolute excess (the *floor*, 5 ms by default) is
//! learned ([`super::judge::judge_floored`]): below it, a request's work cannot move a
//! threshold that is at least the excess above the baseline's quantile, and most requests'
//! work on most edges is far below it (it then costs the engine no table entry at all). The
//! requests under the floor are counted by the same key's calls per request (every request
//! that made the calls).

use stormwatch_baseline::{BaselineStore, PaceLane};
use stormwatch_model::{AlertKind, RootClass};

use super::judge::judge_floored;
use super::wording::Pending;
use super::{Anomalies, DetectConfig};
use crate::features::TraceFeatures;

/// Microseconds per millisecond: work is learned in microseconds, reported in milliseconds.
pub(super) const MICROS_PER_MILLI: f64 = 1_000.0;

/// The per-trace rules with the absolute excess in microseconds.
fn cost_rules(config: &DetectConfig) -> DetectConfig {
    DetectConfig { min_excess: config.min_excess_work_ms * MICROS_PER_MILLI, ..config.clone() }
}

/// Work per request on each edge against the class's baseline for it, the threshold stretched
/// by the callee's slowdown.
pub(super) fn judge_cost(
    features: &TraceFeatures,
    class: RootClass,
    store: &BaselineStore,
    config: &DetectConfig,
    anomalies: &mut Anomalies,
) -> Vec<Pending> {
    let rules = cost_rules(config);
    let mut pending = Vec::new();
    // Every threshold is at least `min_excess` (the baseline's quantile plus it, stretched by a
    // slowdown of at least 1): work within it needs no lookup.
    for edge in features.edges.iter().filter(|e| e.work_micros as f64 > rules.min_excess) {
        let Some(requests) = store.request_edges().get(&(class, edge.edge)) else { continue };
        let callee = PaceLane::of(&edge.edge.to);
        let slowdown = store.slowdown(callee);
        // More calls, each of about the usual cost: the call counts' to judge, not the time's.
        let per_call = edge.work_micros as f64 / edge.calls.max(1) as f64;
        if store.usual_call_micros(callee).is_some_and(|usual| per_call <= usual * slowdown * config.ratio) {
            continue;
        }
        let work = store.request_work().get(&(class, edge.edge));
        let paced = (edge.work_micros as f64 / slowdown) as u64;
        let Some(mut judgement) = judge_floored(requests, work, floor(config), paced, &rules) else { continue };
        judgement.expected *= slowdown;
        judgement.threshold *= slowdown;
        anomalies.request_work.insert(edge.edge);
        pending.push(Pending {
            kind: AlertKind::CostAmplification,
            edge: Some(edge.edge),
            metric: None,
            observed: edge.work_micros,
            unit: "work_ms_per_request",
            scale: MICROS_PER_MILLI,
            allowance: (slowdown >= 1.05).then(|| {
                format!("{} answers every caller {slowdown:.1}x slower than usual lately, allowed for", edge.edge.to)
            }),
            judgement,
        });
    }
    pending
}

/// The work, in microseconds, under which a request's work on an edge is not learned.
fn floor(config: &DetectConfig) -> u64 {
    (config.min_excess_work_ms * MICROS_PER_MILLI / 4.0) as u64
}

/// Learns each edge's work per request (unless judged anomalous, or under the floor) and each
/// callee's pace (always: a callee slowing for everyone must show, whatever the requests were
/// judged).
pub(super) fn learn_cost(
    features: &TraceFeatures,
    class: RootClass,
    store: &mut BaselineStore,
    config: &DetectConfig,
    anomalies: &Anomalies,
) {
    let at = features.end_unix_nano;
    let floor = floor(config);
    for edge in features.edges.iter().filter(|e| e.calls > 0) {
        store.observe_pace(PaceLane::of(&edge.edge.to), edge.work_micros as f64 / edge.calls as f64, at);
        if edge.work_micros >= floor && !anomalies.request_work.contains(&edge.edge) {
            store.observe_request_work(class, edge.edge, edge.work_micros, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_assemble::{CompletedTrace, Completion};
    use stormwatch_model::builder::TraceBuilder;

    use super::*;
    use crate::detectors::judged;
    use crate::features::extract;

    const STATEMENT: &str = "SELECT id, body FROM notes WHERE body LIKE ? LIMIT ?";

    /// gateway `GET /search` -> notes `GET /notes/search` -> one query taking `query_micros`;
    /// the client span to notes lasts as long as the query plus a millisecond (time nests).
    fn search(seed: u64, query_micros: u64) -> TraceFeatures {
        let start = seed * 10_000_000;
        let mut t = TraceBuilder::new(seed, start);
        let root = t.server("gateway", "GET /search", None);
        t.client_last("10.9.0.0/16");
        let call = t.client("gateway", "GET", root);
        t.duration_last((query_micros + 1_000) * 1_000);
        let notes = t.server("notes", "GET /notes/search", Some(call));
        t.duration_last((query_micros + 800) * 1_000);
        t.db("notes", "postgresql", STATEMENT, notes);
        t.duration_last(query_micros * 1_000);
        let spans = t.build();
        extract(&CompletedTrace { trace_id: spans[0].trace_id, spans, completion: Completion::Idle, has_root: true })
    }

    /// 300 to 1,100 µs, and a query of several milliseconds now and then (1 in 250).
    fn ordinary_micros(i: u64) -> u64 {
        if i % 250 == 7 {
            6_000 + i % 3_000
        } else {
            300 + i * 7_919 % 800
        }
    }

    fn trained() -> BaselineStore {
        let mut store = BaselineStore::new(1_000);
        for i in 0..400 {
            assert!(judged(&mut store, &search(i, ordinary_micros(i))).is_empty(), "learning, request {i}");
        }
        store
    }

    #[test]
    fn a_scanning_query_is_one_alert_on_the_edge_where_the_time_went() {
        // The edge into notes carries notes' own time, the same in every request.
        let features = search(1, 40_000);
        let into_notes = features.edges.iter().find(|e| e.edge.to.service.as_str() == "notes").unwrap();
        let into_database = features.edges.iter().find(|e| e.edge.to.operation.as_str() == STATEMENT).unwrap();
        assert_eq!((into_notes.work_micros, into_database.work_micros), (1_000, 40_000));
        let mut store = trained();
        let findings = judged(&mut store, &search(1_000, 40_000));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let finding = &findings[0];
        assert_eq!(finding.kind, AlertKind::CostAmplification);
        let edge = finding.edge.expect("an edge");
        assert_eq!((edge.from.service.as_str(), edge.to.operation.as_str()), ("notes", STATEMENT));
        assert_eq!(finding.unit, "work_ms_per_request");
        assert!((finding.observed - 40.0).abs() < 1e-9, "{}", finding.observed);
        assert!(finding.threshold > 20.0 && finding.threshold < 40.0, "{}", finding.threshold);
        assert!(finding.explanation.contains("spent 40 ms in calls from notes"), "{}", finding.explanation);
        let names: Vec<&str> = finding.contributors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["entry gateway `GET /search`", "clients 10.9.0.0/16"]);
        // Not learned: the same query again is judged the same.
        assert_eq!(judged(&mut store, &search(1_001, 40_000)).len(), 1);
    }

    /// Work under the floor (5 ms) is counted, not learned: the ordinary queries cost no entry,
    /// the few slow ones are the whole table; the median is reported as under the floor.
    #[test]
    fn work_under_the_floor_is_counted_not_learned() {
        let store = trained();
        let work = store.request_work();
        assert_eq!(work.len(), 1, "only the edge with the slow queries has entries");
        let (_, slow) = work.iter().next().unwrap();
        assert_eq!(slow.samples(), 2, "the 2 queries of 6 ms and more among 400");
        let mut store = store;
        let findings = judged(&mut store, &search(1_000, 40_000));
        assert!(findings[0].explanation.contains("(normally under 5, alert above 25)"), "{}", findings[0].explanation);
    }

    /// A class with a tail (a request in 40 makes more queries: 5.2 to 6.7 ms where about 1 ms
    /// is usual): its p99 is above the floor but its p90 under it, so the tail's slope is
    /// unknown and taken as steep as the rule allows (measured from the floor, it would look
    /// light and put the threshold at 26 ms); a 40 ms request is no incident.
    #[test]
    fn a_heavy_tail_whose_p90_is_under_the_floor_is_not_judged_light() {
        let mut store = BaselineStore::new(1_000);
        let heavy = |i: u64| if i % 40 == 3 { 5_200 + i * 7_919 % 1_500 } else { 300 + i * 7_919 % 800 };
        for i in 0..1_000 {
            assert!(judged(&mut store, &search(i, heavy(i))).is_empty(), "learning, request {i}");
        }
        assert!(judged(&mut store, &search(5_000, 40_000)).is_empty());
    }

    /// A request that runs the query 60 times at its usual cost (42 ms in all, where about
    /// 1 ms is usual) made more calls, not slower ones: the counts judge it, not the time.
    #[test]
    fn more_calls_of_the_usual_cost_are_not_a_time_incident() {
        let store = trained();
        let mut t = TraceBuilder::new(6_000, 6_000 * 10_000_000);
        let root = t.server("gateway", "GET /search", None);
        let call = t.client("gateway", "GET", root);
        t.duration_last(44_000_000);
        let notes = t.server("notes", "GET /notes/search", Some(call));
        t.duration_last(43_000_000);
        for _ in 0..60 {
            t.db("notes", "postgresql", STATEMENT, notes);
            t.duration_last(700_000);
        }
        let spans = t.build();
        let features = extract(&CompletedTrace {
            trace_id: spans[0].trace_id,
            spans,
            completion: Completion::Idle,
            has_root: true,
        });
        // Judged on its own (the count detectors, which come first, would speak for it anyway).
        let class = features.root_class.unwrap();
        let pending = judge_cost(&features, class, &store, &DetectConfig::default(), &mut Anomalies::default());
        assert!(pending.is_empty(), "time judged on more calls of the usual cost");
    }

    #[test]
    fn jitter_within_the_absolute_excess_is_not_an_incident() {
        let mut store = trained();
        // Ten times the usual query, but 12 ms: below the 20 ms of excess a request must add.
        for i in 0..20 {
            assert!(judged(&mut store, &search(2_000 + i, 12_000)).is_empty());
        }
    }

    #[test]
    fn a_callee_slowing_for_everyone_is_allowed_for_and_a_scan_during_it_is_not() {
        let mut store = trained();
        // The database slows down over a few hundred requests to 20x its usual pace.
        let mut fired = 0;
        for i in 0..400u64 {
            let factor = 1 + (19 * i / 200).min(19);
            fired += judged(&mut store, &search(3_000 + i, factor * ordinary_micros(i))).len();
        }
        assert_eq!(fired, 0, "a slower database for everyone is not a cost incident");
        let reads = PaceLane {
            callee: stormwatch_model::Sym::new("postgresql"),
            kind: stormwatch_model::NodeKind::Database,
            writes: false,
        };
        assert!(store.slowdown(reads) > 8.0);
        // A scan far beyond what the slower database explains still fires, and says so.
        let findings = judged(&mut store, &search(4_000, 2_000_000));
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].explanation.contains("slower than usual lately, allowed for"),
            "{}",
            findings[0].explanation
        );
    }
}
